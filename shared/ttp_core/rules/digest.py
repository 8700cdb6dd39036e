"""One digest of a rule set, computed alike by the master (from PostgreSQL) and by each
worker (from its index), so `ttpctl fleet status` can tell whether they hold the same rules.

The digest is SHA-256 over one line per live rule, sorted by rule_id, then one line per
operator state, sorted by rule_id. :class:`DigestLedger` keeps those lines between changes,
so a change among 10,000 rules costs one hash of the joined lines, not a read of every rule.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from typing import Any


def rule_line(rule_id: str, content_sha256: str) -> bytes:
    """A rule's line of the digest."""
    return f"r|{rule_id}|{content_sha256}\n".encode()


def state_line(
    rule_id: str, state: str, confidence_max: float | None, expires_at: float | None
) -> bytes:
    """An operator state's line of the digest (`expires_at` in epoch seconds)."""
    return f"s|{rule_id}|{state}|{confidence_max}|{expires_at}\n".encode()


def ruleset_digest(
    rules: Iterable[tuple[str, str]],
    states: Iterable[tuple[str, str, float | None, float | None]],
) -> str:
    """SHA-256 over sorted `(rule_id, content_sha256)` and `(rule_id, state, max, expires)`."""
    h = hashlib.sha256()
    for rule_id, sha in sorted(rules):
        h.update(rule_line(rule_id, sha))
    for rule_id, state, confidence_max, expires_at in sorted(states, key=lambda s: s[0]):
        h.update(state_line(rule_id, state, confidence_max, expires_at))
    return h.hexdigest()


class _SortedLines:
    """Lines kept in rule_id order: a change is a bisect, and the joined lines one join."""

    __slots__ = ("ids", "lines")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lines: list[bytes] = []
        """The line of `ids[i]` at `lines[i]`."""

    def put(self, rule_id: str, line: bytes) -> bool:
        """Set the line of `rule_id`; True if that changed anything."""
        i = bisect.bisect_left(self.ids, rule_id)
        if i < len(self.ids) and self.ids[i] == rule_id:
            if self.lines[i] == line:
                return False
            self.lines[i] = line
            return True
        self.ids.insert(i, rule_id)
        self.lines.insert(i, line)
        return True

    def drop(self, rule_id: str) -> bool:
        """Remove `rule_id`; True if it was there."""
        i = bisect.bisect_left(self.ids, rule_id)
        if i == len(self.ids) or self.ids[i] != rule_id:
            return False
        del self.ids[i], self.lines[i]
        return True

    def joined(self) -> bytes:
        return b"".join(self.lines)


class DigestLedger:
    """The :func:`ruleset_digest` of a rule set kept up to date change by change.

    Equal to `ruleset_digest` over the same rules and states after any sequence of changes.
    Rule lines are hashed again only after a rule changed (a state change hashes a copy of
    the rules' hash state with the state lines).
    """

    __slots__ = ("_rules", "_rules_hash", "_states")

    def __init__(self) -> None:
        self._rules = _SortedLines()
        self._states = _SortedLines()
        self._rules_hash: Any = None
        """SHA-256 state after the rule lines; None once a rule changed."""

    def put_rule(self, rule_id: str, content_sha256: str) -> None:
        if self._rules.put(rule_id, rule_line(rule_id, content_sha256)):
            self._rules_hash = None

    def drop_rule(self, rule_id: str) -> None:
        if self._rules.drop(rule_id):
            self._rules_hash = None

    def put_state(
        self, rule_id: str, state: str, confidence_max: float | None, expires_at: float | None
    ) -> None:
        self._states.put(rule_id, state_line(rule_id, state, confidence_max, expires_at))

    def drop_state(self, rule_id: str) -> None:
        self._states.drop(rule_id)

    def digest(self) -> str:
        if self._rules_hash is None:
            self._rules_hash = hashlib.sha256(self._rules.joined())
        h = self._rules_hash.copy()
        h.update(self._states.joined())
        return str(h.hexdigest())
