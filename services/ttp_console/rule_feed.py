"""TTP_RULES into the latest definition and operator state of each rule (for coverage).

One ephemeral pull consumer (``AckPolicy none``, deliver ``last_per_subject``, filter
``ttp.rule.>``) gives the newest message of every rule subject, then every change live. Each
message is decoded with the contract's models (:mod:`ttp_core.contract.payloads`); a message
whose revision is not newer than the one held for its rule changes nothing, so replays after a
reconnect are harmless. Only what the pages need is kept per rule (name, file, version,
emits), not the whole definition: the rule page asks the master (``rules.show``) for that.

Memory: one small entry per rule id the master published (the stream holds one message per
subject), plus one state per rule with an operator state.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pydantic
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from ttp_console.metrics import FeedMetrics
from ttp_console.stream_reader import FeedProgress, StreamReader
from ttp_core.attack.navigator import CoverageEntry, rule_entries
from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    RuleReloaded,
    RulesetRevision,
    RuleStateChanged,
    decode,
)
from ttp_core.engine.state import ENABLED, RuleState, StateKind
from ttp_core.rules.model import LIFTER_PREFIX, Emit

__all__ = ["RuleDefinition", "RuleEmit", "RuleFeed"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RuleEmit:
    tactic: str
    technique_id: str
    sub_technique_id: str | None
    confidence: float

    @property
    def technique(self) -> str:
        """The sub-technique id when there is one, else the technique id."""
        return self.sub_technique_id or self.technique_id


@dataclass(frozen=True, slots=True)
class RuleDefinition:
    """What the console keeps of a rule's latest published definition."""

    rule_id: str
    revision: int
    rule_version: int | None
    name: str
    source_path: str
    external: bool
    emits: tuple[RuleEmit, ...]


def _definition(data: RuleReloaded) -> RuleDefinition:
    rule = data.rule or {}
    match = rule.get("match")
    kind = match.get("kind") if isinstance(match, dict) else None
    emits = []
    for raw in rule.get("emits") or ():
        emit = Emit.model_validate(raw)
        emits.append(
            RuleEmit(emit.tactic, emit.technique_id, emit.sub_technique_id, emit.confidence)
        )
    name = rule.get("name")
    return RuleDefinition(
        rule_id=data.rule_id,
        revision=data.revision,
        rule_version=data.rule_version,
        name=name if isinstance(name, str) else data.rule_id,
        source_path=data.source_path,
        external=isinstance(kind, str) and kind.startswith(LIFTER_PREFIX),
        emits=tuple(emits),
    )


class RuleFeed:
    """The rules as TTP_RULES tells them; :meth:`apply` is pure, :meth:`start` reads NATS."""

    def __init__(self, nc: Client | None = None, *, batch: int = 512) -> None:
        """Without ``nc`` the feed only takes what :meth:`apply` is given (tests)."""
        self._definitions: dict[str, RuleDefinition] = {}
        self._definition_revisions: dict[str, int] = {}
        self._states: dict[str, tuple[RuleStateChanged, RuleState]] = {}
        """Each rule's latest operator state message, and the state it names as the workers
        apply it."""
        self.ruleset: RulesetRevision | None = None
        self.unreadable: Counter[str] = Counter()
        """Messages that could not be used, by subject prefix."""
        self._metrics = FeedMetrics("rules")
        self._reader = (
            None
            if nc is None
            else StreamReader(
                nc,
                stream=subjects.STREAM_RULES,
                filter_subject="ttp.rule.>",
                first_config=lambda: ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
                handle=self.apply,
                name="rule-feed",
                batch=batch,
                # After a failure: the last message of every subject again (idempotent here),
                # which also survives a stream whose sequence started over.
                resume_from_sequence=False,
                after_round=self.update_metrics,
            )
        )

    # ---------------------------------------------------------------------------- ingestion

    def apply(self, subject: str, raw: bytes) -> bool:
        """Take one TTP_RULES message; False when it changed nothing or was unusable."""
        try:
            if subject.startswith(subjects.RULE_RELOADED_PREFIX + "."):
                return self._reloaded(subject, decode(raw, RuleReloaded).data)
            if subject.startswith(subjects.RULE_STATE_PREFIX + "."):
                return self._state(subject, decode(raw, RuleStateChanged).data)
            if subject == subjects.RULESET_REVISION:
                revision = decode(raw, RulesetRevision).data
                if self.ruleset is None or revision.revision > self.ruleset.revision:
                    self.ruleset = revision
                    return True
                return False
        except (pydantic.ValidationError, ValueError, RecursionError) as exc:
            self.unreadable[subject.rsplit(".", 1)[0]] += 1
            _log.warning("unusable rule message on %s: %s", subject, str(exc)[:200])
        return False

    def _reloaded(self, subject: str, data: RuleReloaded) -> bool:
        if subjects.last_token(subject) != data.rule_id:
            raise ValueError(f"rule_id {data.rule_id!r} does not match the subject")
        if data.revision <= self._definition_revisions.get(data.rule_id, 0):
            return False
        definition = None if data.deleted or data.rule is None else _definition(data)
        self._definition_revisions[data.rule_id] = data.revision
        if definition is None:
            self._definitions.pop(data.rule_id, None)
        else:
            self._definitions[data.rule_id] = definition
        return True

    def _state(self, subject: str, data: RuleStateChanged) -> bool:
        if subjects.last_token(subject) != data.rule_id:
            raise ValueError(f"rule_id {data.rule_id!r} does not match the subject")
        held = self._states.get(data.rule_id)
        if held is not None and data.revision <= held[0].revision:
            return False
        # As on the workers: a state naming no usable state (a clip without a confidence_max
        # in (0, 1]) is refused, and the one held stays in force.
        self._states[data.rule_id] = (
            data,
            RuleState.of(data.state, data.confidence_max, data.expires_at),
        )
        return True

    # ---------------------------------------------------------------------------- reading

    def definitions(self) -> dict[str, RuleDefinition]:
        """Every rule with a live definition, by id."""
        return dict(self._definitions)

    def definition(self, rule_id: str) -> RuleDefinition | None:
        return self._definitions.get(rule_id)

    def _rule_state(self, rule_id: str) -> RuleState:
        held = self._states.get(rule_id)
        return ENABLED if held is None else held[1]

    def state(self, rule_id: str, now: float | None = None) -> RuleStateChanged | None:
        """The rule's operator state in force (None: enabled; an expired one is over)."""
        held = self._states.get(rule_id)
        if held is None:
            return None
        moment = time.time() if now is None else now
        return None if held[1].effective(moment) is StateKind.ENABLED else held[0]

    def in_play(self, rule_id: str, now: float | None = None) -> bool:
        """Defined, built-in (not a lifter's) and not disabled: its tags can appear."""
        definition = self._definitions.get(rule_id)
        if definition is None or definition.external:
            return False
        moment = time.time() if now is None else now
        return self._rule_state(rule_id).effective(moment) is not StateKind.DISABLED

    def coverage(self, now: float | None = None) -> list[CoverageEntry]:
        """What every built-in rule covers at `now`, as the workers apply its state
        (:func:`ttp_core.attack.navigator.rule_entries`)."""
        moment = time.time() if now is None else now
        entries = []
        for rule_id, definition in sorted(self._definitions.items()):
            if not definition.external:
                entries += rule_entries(
                    rule_id, definition.emits, self._rule_state(rule_id), moment
                )
        return entries

    def rules_for(self, technique: str) -> list[RuleDefinition]:
        """Rules emitting ``technique``; a technique id without a sub-technique part also
        finds the rules emitting one of its sub-techniques."""
        return [
            d
            for _, d in sorted(self._definitions.items())
            if any(_names(emit, technique) for emit in d.emits)
        ]

    # ---------------------------------------------------------------------------- reading NATS

    def update_metrics(self) -> None:
        """Bring the rule feed's metrics up to its reader (after each pull round)."""
        self._metrics.update(self.progress)

    def start(self) -> None:
        """Start reading TTP_RULES in a task of the running loop."""
        if self._reader is not None:
            self._reader.start()

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.stop()

    @property
    def progress(self) -> FeedProgress:
        if self._reader is None:
            return FeedProgress(len(self._definitions), 0, True, 0, 0, None)
        return self._reader.progress

    @property
    def caught_up(self) -> bool:
        return self.progress.caught_up

    async def wait_caught_up(self, timeout: float | None = None) -> bool:
        return True if self._reader is None else await self._reader.wait_caught_up(timeout)


def _names(emit: RuleEmit, technique: str) -> bool:
    return bool(technique in (emit.technique, emit.technique_id))


def covered_techniques(entries: Iterable[CoverageEntry]) -> dict[str, tuple[float, list[str]]]:
    """Best confidence and rule ids (in first-seen order) per technique, sub-techniques on
    their own."""
    best: dict[str, float] = {}
    rules: dict[str, dict[str, None]] = {}
    for entry in entries:
        key = entry.sub_technique_id or entry.technique_id
        best[key] = max(best.get(key, 0.0), entry.confidence)
        rules.setdefault(key, {})[entry.rule_id] = None
    return {key: (best[key], list(rules[key])) for key in best}


__all__ += ["covered_techniques"]
