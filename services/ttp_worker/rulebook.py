"""What a worker knows about the rules, rebuilt from TTP_RULES messages only (no I/O here).

A :class:`RuleBook` holds the current :class:`Ruleset` (an immutable index plus the revision
it reflects) and, per rule, the newest revision applied, kept apart for definitions and for
operator states: both live on their own subject with their own revision, and a state may
arrive before its rule. A message whose revision is not newer than the one held for its
(kind, rule) is ignored, so duplicates and out-of-order deliveries change nothing.

The index is swapped by replacing one reference (:attr:`RuleBook.current`), so an event
evaluated on the reference it took finishes on that whole index.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal

import msgspec
import pydantic

from ttp_core.contract import subjects
from ttp_core.contract.payloads import RuleReloaded, RuleStateChanged
from ttp_core.engine.compiler import CompiledRule, compile_rule
from ttp_core.engine.index import LifterEvaluator, RuleIndex
from ttp_core.engine.state import RuleState, StateKind
from ttp_core.rules.model import Rule

_log = logging.getLogger(__name__)


class RuleMessageError(ValueError):
    """A TTP_RULES message the worker cannot apply (bad JSON, schema, or rule)."""


class ChangeKind(StrEnum):
    DEFINITION = "definition"
    STATE = "state"


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One decoded rule message.

    DEFINITION: `compiled` is the new rule, or None for a tombstone (remove the rule).
    STATE: `state` is the operator state, or None for `enabled` (no operator state).
    `committed_at`: the message's CloudEvents `time` (POSIX seconds), for the propagation
    metric, when it has a valid one.
    """

    kind: ChangeKind
    rule_id: str
    revision: int
    compiled: CompiledRule | None = None
    state: RuleState | None = None
    committed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Ruleset:
    """An index and the newest revision it reflects; swapped as one reference.

    `kinds`: the source kinds some evaluated rule applies to (built-in rules, and external
    ones whose lifter has an evaluator); an event of any other kind has nothing to match.
    `external`: how many of the index's rules are external (`lifter:`) rules.
    """

    index: RuleIndex
    revision: int
    kinds: frozenset[str] = frozenset()
    external: int = 0

    def applies_to(self, source_kind: str) -> bool:
        return source_kind in self.kinds

    def counts(self, now: float | None = None) -> dict[str, int]:
        """`RuleIndex.counts`, in O(operator states) rather than O(rules): `rules` held,
        `active` (built-in and not disabled now), `external`."""
        moment = time.time() if now is None else now
        rules = self.index.rules
        disabled = 0
        for rule_id, state in self.index.states.items():
            compiled = rules.get(rule_id)
            if (
                compiled is not None
                and not compiled.is_external
                and state.effective(moment) is StateKind.DISABLED
            ):
                disabled += 1
        total = len(rules)
        return {
            "rules": total,
            "active": total - self.external - disabled,
            "external": self.external,
        }


def evaluated_kinds(index: RuleIndex, lifters: Mapping[str, LifterEvaluator]) -> frozenset[str]:
    """The source kinds an index evaluates rules for."""
    return frozenset(_kind_counts(index.rules.values(), lifters))


def _evaluated(compiled: CompiledRule, lifters: Mapping[str, LifterEvaluator]) -> bool:
    return not compiled.is_external or getattr(compiled.rule.match, "lifter", None) in lifters


def _kind_counts(
    rules: Iterable[CompiledRule], lifters: Mapping[str, LifterEvaluator]
) -> Counter[str]:
    """How many evaluated rules apply to each source kind."""
    counts: Counter[str] = Counter()
    for compiled in rules:
        if _evaluated(compiled, lifters):
            counts.update(compiled.kinds)
    return counts


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def event_time(raw: bytes) -> float | None:
    """The CloudEvents `time` of a message as a POSIX timestamp, if it has a valid one."""
    try:
        value = json.loads(raw).get("time")
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
    except (ValueError, AttributeError, RecursionError):
        return None


# The fast path decodes a message in one msgspec pass into these strict mirrors of the
# pydantic models (same fields, same required ones; unknown fields ignored). Strict decoding
# accepts a subset of what pydantic's lax mode does, so anything it refuses goes through the
# pydantic models, which decide as before: the set of accepted messages does not change.


class _ReloadedData(msgspec.Struct, frozen=True):
    rule_id: str
    revision: int
    rule_version: int | None
    content_sha256: str | None
    source_path: str
    deleted: bool = False
    rule: dict[str, Any] | None = None


class _StateData(msgspec.Struct, frozen=True):
    rule_id: str
    revision: int
    state: Literal["enabled", "disabled", "clipped"]
    confidence_max: float | None = None
    expires_at: datetime | None = None
    reason: str | None = None
    set_by: str | None = None
    set_at: datetime | None = None
    cause: Literal["operator", "expired"] = "operator"


class _Reloaded(msgspec.Struct, frozen=True):
    data: _ReloadedData
    time: datetime | None = None


class _State(msgspec.Struct, frozen=True):
    data: _StateData
    time: datetime | None = None


_RELOADED_DECODER: Final = msgspec.json.Decoder(_Reloaded)
_STATE_DECODER: Final = msgspec.json.Decoder(_State)


def decode_rule_message(subject: str, raw: bytes) -> RuleChange | None:
    """The change a TTP_RULES message carries; None for subjects the index does not use.

    Raises :class:`RuleMessageError` when the message cannot be applied.
    """
    if subject.startswith(subjects.RULE_RELOADED_PREFIX + "."):
        try:
            fast = _RELOADED_DECODER.decode(raw)
        except msgspec.DecodeError:
            return _reloaded_change(subject, _validated_reloaded(raw), event_time(raw))
        return _reloaded_change(subject, fast.data, _timestamp(fast.time))
    if subject.startswith(subjects.RULE_STATE_PREFIX + "."):
        try:
            state = _STATE_DECODER.decode(raw)
        except msgspec.DecodeError:
            return _state_change(subject, _validated_state(raw), event_time(raw))
        return _state_change(subject, state.data, _timestamp(state.time))
    return None


def _envelope_data(raw: bytes) -> dict[str, Any]:
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RuleMessageError(f"not JSON: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise RuleMessageError("not a CloudEvents envelope with a data object")
    data: dict[str, Any] = event["data"]
    return data


def _validated_reloaded(raw: bytes) -> RuleReloaded:
    try:
        return RuleReloaded.model_validate(_envelope_data(raw))
    except pydantic.ValidationError as exc:
        raise RuleMessageError(f"invalid ttp.rule.reloaded data: {exc}") from exc


def _validated_state(raw: bytes) -> RuleStateChanged:
    try:
        return RuleStateChanged.model_validate(_envelope_data(raw))
    except pydantic.ValidationError as exc:
        raise RuleMessageError(f"invalid ttp.rule.state data: {exc}") from exc


def _check_subject(subject: str, rule_id: str) -> None:
    if subjects.last_token(subject) != rule_id:
        raise RuleMessageError(f"rule_id {rule_id!r} does not match subject {subject!r}")


def _reloaded_change(
    subject: str, data: _ReloadedData | RuleReloaded, committed_at: float | None
) -> RuleChange:
    _check_subject(subject, data.rule_id)
    if data.deleted:
        return RuleChange(
            ChangeKind.DEFINITION, data.rule_id, data.revision, committed_at=committed_at
        )
    if data.rule is None:
        raise RuleMessageError("a reloaded event that is not a tombstone needs its rule")
    try:
        rule = Rule.model_validate(data.rule)
        # The master's hash, not a recomputed one: the index digest must equal the master's.
        # Its patterns are not checked again (the master's validator did; the check is half
        # of a rule's compile): the index's filters classify them when they compile.
        compiled = compile_rule(rule, sha256=data.content_sha256, check_patterns=False)
    except Exception as exc:  # any failure to build the rule makes the message unprocessable
        raise RuleMessageError(f"rule {data.rule_id} does not compile: {exc}") from exc
    if compiled.rule_id != data.rule_id:
        raise RuleMessageError(f"rule body names {compiled.rule_id}, event names {data.rule_id}")
    return RuleChange(
        ChangeKind.DEFINITION,
        data.rule_id,
        data.revision,
        compiled=compiled,
        committed_at=committed_at,
    )


def _state_change(
    subject: str, data: _StateData | RuleStateChanged, committed_at: float | None
) -> RuleChange:
    _check_subject(subject, data.rule_id)
    if data.state == "enabled":
        # "enabled" is no operator state at all: the master has no row, so neither do we.
        return RuleChange(ChangeKind.STATE, data.rule_id, data.revision, committed_at=committed_at)
    try:
        state = RuleState.of(data.state, data.confidence_max, data.expires_at)
    except ValueError as exc:
        raise RuleMessageError(f"invalid state of {data.rule_id}: {exc}") from exc
    return RuleChange(
        ChangeKind.STATE, data.rule_id, data.revision, state=state, committed_at=committed_at
    )


@dataclass(frozen=True, slots=True)
class BuiltSnapshot:
    """A snapshot's ruleset with the revisions and kind counts that go with it, built but not
    yet installed (:meth:`RuleBook.build_snapshot`)."""

    ruleset: Ruleset
    revisions: dict[ChangeKind, dict[str, int]]
    kinds: Counter[str]


class RuleBook:
    """The worker's rules: the current ruleset and the revisions held per rule."""

    def __init__(self, lifters: Mapping[str, LifterEvaluator] | None = None) -> None:
        self._lifters = dict(lifters or {})
        self.current = Ruleset(RuleIndex.empty(self._lifters), 0)
        self._revisions: dict[ChangeKind, dict[str, int]] = {kind: {} for kind in ChangeKind}
        # Kept up to date change by change: a live change costs O(its rules), not O(all).
        self._kinds: Counter[str] = Counter()

    def held(self, kind: ChangeKind, rule_id: str) -> int:
        """The revision held for a rule's definition or state (0: none)."""
        return self._revisions[kind].get(rule_id, 0)

    def held_definition(self, rule_id: str) -> int:
        return self.held(ChangeKind.DEFINITION, rule_id)

    def held_state(self, rule_id: str) -> int:
        return self.held(ChangeKind.STATE, rule_id)

    def is_newer(self, change: RuleChange) -> bool:
        return change.revision > self.held(change.kind, change.rule_id)

    def load_snapshot(self, changes: Iterable[RuleChange]) -> Ruleset:
        """Replace everything with a snapshot, built as one index (every field compiles once).

        Of several changes for the same (kind, rule) the newest revision wins.
        """
        return self.install(self.build_snapshot(changes))

    def build_snapshot(self, changes: Iterable[RuleChange]) -> BuiltSnapshot:
        """The index of a snapshot, built without touching what this book holds.

        Safe to run in another thread while the book serves its current ruleset: nothing
        here is shared with it but the (read-only) lifters. :meth:`install` swaps it in.
        """
        newest: dict[tuple[ChangeKind, str], RuleChange] = {}
        for change in changes:
            key = (change.kind, change.rule_id)
            held = newest.get(key)
            if held is None or change.revision > held.revision:
                newest[key] = change
        revisions: dict[ChangeKind, dict[str, int]] = {kind: {} for kind in ChangeKind}
        compiled: list[CompiledRule] = []
        states: dict[str, RuleState] = {}
        top = 0
        for (kind, rule_id), change in newest.items():
            revisions[kind][rule_id] = change.revision
            top = max(top, change.revision)
            if change.compiled is not None:
                compiled.append(change.compiled)
            if change.state is not None:
                states[rule_id] = change.state
        index = RuleIndex.build(compiled, states, self._lifters)
        kinds = _kind_counts(index.rules.values(), self._lifters)
        external = sum(1 for c in index.rules.values() if c.is_external)
        return BuiltSnapshot(Ruleset(index, top, frozenset(kinds), external), revisions, kinds)

    def install(self, built: BuiltSnapshot) -> Ruleset:
        """Make a built snapshot the current ruleset (one swap) and its revisions the held
        ones, replacing everything held before."""
        self._revisions = built.revisions
        self._kinds = built.kinds
        self.current = built.ruleset
        return self.current

    def apply(self, changes: Iterable[RuleChange]) -> list[RuleChange]:
        """Apply the changes newer than what is held, as one swap; returns those applied."""
        applied: list[RuleChange] = []
        upserts: dict[str, CompiledRule] = {}
        removals: set[str] = set()
        states: dict[str, RuleState | None] = {}
        for change in changes:
            if not self.is_newer(change):
                continue
            self._revisions[change.kind][change.rule_id] = change.revision
            applied.append(change)
            if change.kind is ChangeKind.STATE:
                states[change.rule_id] = change.state
            elif change.compiled is None:
                upserts.pop(change.rule_id, None)
                removals.add(change.rule_id)
            else:
                removals.discard(change.rule_id)
                upserts[change.rule_id] = change.compiled
        if not applied:
            return applied
        current = self.current
        index = current.index.with_changes(
            upserts=upserts.values(), removals=removals, states=states
        )
        kinds = self._kinds.copy()
        external = current.external
        for rule_id in removals | upserts.keys():
            old = current.index.rule(rule_id)
            if old is not None:
                external -= old.is_external
                if _evaluated(old, self._lifters):
                    kinds.subtract(old.kinds)
        for compiled in upserts.values():
            external += compiled.is_external
            if _evaluated(compiled, self._lifters):
                kinds.update(compiled.kinds)
        kinds = +kinds  # drops the kinds no rule applies to any more
        top = max(current.revision, *(change.revision for change in applied))
        self.current = Ruleset(index, top, frozenset(kinds), external)
        self._kinds = kinds
        return applied
