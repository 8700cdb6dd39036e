"""The ruleset summary's rule set, kept in the master between summaries.

Read in full once per leadership term (and again after any failed read), then kept up to
date from the rule ids of the outbox rows the relay publishes: every change of `ttp_rule`
or `ttp_rule_state` commits with an outbox row naming its rule, so after a save only the
saved rules are read again, not all 10,000. The totals and digest are those of a full read
of the same rows (`tests/unit/test_ruleset_ledger.py` checks that after random changes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from ttp_core.rules.digest import DigestLedger
from ttp_master.db.schema import rule, rule_state

_IDS: Final = bindparam("ids", type_=ARRAY(String))
_ALL_RULES: Final = select(rule.c.rule_id, rule.c.content_sha256, rule.c.is_external).where(
    rule.c.deleted.is_(False)
)
_ALL_STATES: Final = select(
    rule_state.c.rule_id, rule_state.c.state, rule_state.c.confidence_max, rule_state.c.expires_at
)
# Deleted rows too: a rule deleted since the last read leaves the set.
_SOME_RULES: Final = select(
    rule.c.rule_id, rule.c.content_sha256, rule.c.is_external, rule.c.deleted
).where(rule.c.rule_id == any_(_IDS))
_SOME_STATES: Final = _ALL_STATES.where(rule_state.c.rule_id == any_(_IDS))


@dataclass(frozen=True, slots=True)
class _State:
    disabled: bool
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class RulesetCounts:
    """The summary's totals of the live rules."""

    rules: int
    active: int
    external: int


class RulesetLedger:
    """Live rules and operator states as the summary needs them, with their digest."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._loaded = False
        self._touched: set[str] = set()
        """Rule ids whose rows changed since they were last read."""
        self._reset()

    def _reset(self) -> None:
        self._digest = DigestLedger()
        self._external: dict[str, bool] = {}
        """rule_id -> is_external, of the live rules."""
        self._states: dict[str, _State] = {}
        self._external_count = 0

    def touched(self, rule_ids: Iterable[str | None]) -> None:
        """These rules' rows changed (their outbox rows were published): read them again."""
        self._touched.update(r for r in rule_ids if r is not None)

    def invalidate(self) -> None:
        """Read everything again at the next refresh."""
        self._loaded = False

    async def refresh(self, conn: AsyncConnection) -> None:
        """Bring the ledger up to date with PostgreSQL: in full the first time (or after a
        failure), else the touched rules only."""
        async with self._lock:
            # Taken before the reads: a rule published meanwhile is read again next time.
            ids, self._touched = self._touched, set()
            try:
                # Everything is read before anything changes: a summary computed meanwhile
                # (no await between a refresh and its use) never sees a half-applied ledger.
                if not self._loaded:
                    rules = (await conn.execute(_ALL_RULES)).all()
                    states = (await conn.execute(_ALL_STATES)).all()
                    self._reset()
                    self._apply_rules(
                        (r.rule_id, r.content_sha256, r.is_external, False) for r in rules
                    )
                    self._apply_states((), states)
                    self._loaded = True
                elif ids:
                    wanted = {"ids": sorted(ids)}
                    rows = (await conn.execute(_SOME_RULES, wanted)).all()
                    states = (await conn.execute(_SOME_STATES, wanted)).all()
                    seen = {r.rule_id for r in rows}
                    # A rule id with no row at all (a state of an unknown rule) is no rule.
                    self._apply_rules(
                        [(r.rule_id, r.content_sha256, r.is_external, r.deleted) for r in rows]
                        + [(rule_id, "", False, True) for rule_id in ids - seen]
                    )
                    self._apply_states(ids, states)
            except BaseException:
                self._loaded = False
                raise

    def _apply_rules(self, rows: Iterable[tuple[str, str, bool, bool]]) -> None:
        external, digest = self._external, self._digest
        for rule_id, sha, is_external, deleted in rows:
            was = external.pop(rule_id, None)
            if was:
                self._external_count -= 1
            if deleted:
                digest.drop_rule(rule_id)
                continue
            external[rule_id] = is_external
            if is_external:
                self._external_count += 1
            digest.put_rule(rule_id, sha)

    def _apply_states(self, ids: Iterable[str], rows: Iterable[Any]) -> None:
        """Replace the states of `ids` (all of them gone unless in `rows`) by `rows`."""
        for rule_id in ids:
            if self._states.pop(rule_id, None) is not None:
                self._digest.drop_state(rule_id)
        for row in rows:
            expires = _epoch(row.expires_at)
            self._states[row.rule_id] = _State(row.state == "disabled", expires)
            self._digest.put_state(row.rule_id, row.state, row.confidence_max, expires)

    def counts(self, now: float | None = None) -> RulesetCounts:
        """`rules` live, `active` (built in and not disabled at `now`), `external`."""
        moment = time.time() if now is None else now
        external = self._external
        # Operator states are few (one per rule an operator acted on): counted each time,
        # as an expiry passing changes `active` without any row changing.
        disabled = sum(
            1
            for rule_id, state in self._states.items()
            if state.disabled
            and external.get(rule_id) is False
            and (state.expires_at is None or state.expires_at > moment)
        )
        live = len(external)
        return RulesetCounts(live, live - self._external_count - disabled, self._external_count)

    def digest(self) -> str:
        return self._digest.digest()


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None
