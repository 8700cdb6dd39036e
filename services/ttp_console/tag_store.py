"""What the console knows about the tags workers published: pure aggregation, no I/O.

A :class:`TagStore` ingests ``ttp.tagged.<kind>`` messages (one per event, holding that event's
tags) and keeps:

- counts and best confidence per technique in time buckets, read as windows of 1 h (minute
  buckets: exact to the minute), 24 h and 7 d (hour buckets: exact to the hour, the oldest
  bucket counts whole). The time is the tag message's CloudEvents ``time``;
- per attacker (``attacker_uuid``), the techniques observed with their counts and highest
  confidence, for the most recently seen attackers only;
- the latest tags, with their evidence, per technique and per rule;
- live subscribers, each with a filter and a bounded queue.

Memory is bounded by construction, whatever arrives (1,000,000 tags in the window included):

- buckets: at most 61 minute and 170 hour buckets (older ones are dropped as time moves on),
  each holding at most one entry per technique id the catalogue knows (835 in ATT&CK 18.1):
  a tag naming any other technique is dropped and counted, never stored;
- attackers: at most ``max_attackers`` (default 10,000), each with at most
  ``max_techniques_per_attacker`` entries (default 64, further techniques counted, not kept);
  the least recently seen attacker is evicted first, and evictions are counted;
- latest tags: ``latest_per_key`` records (default 20) per known technique and per rule, for
  at most ``max_rules`` rule ids (default 500, least recently seen evicted and counted); a
  record holds at most ``max_evidence_chars`` (default 2,048) of evidence JSON and short,
  capped identifiers, so the records retained are at most
  ``latest_per_key x (known techniques + max_rules)`` of about 3 KiB each in the worst case;
- live subscribers: at most ``max_subscribers`` (default 64), and at most the cap the caller
  names per owner (a console user), each queue at most its capacity; a full queue drops the
  new row and counts it for the subscriber to report.

Nothing here reads a clock: callers pass ``now`` (POSIX seconds), so the windows are testable.
"""

from __future__ import annotations

import json
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, NamedTuple

import msgspec
import pydantic

from ttp_core.attack.catalogue import AttackCatalogue
from ttp_core.contract import subjects
from ttp_core.contract.payloads import EventTagged, decode

__all__ = [
    "WINDOWS",
    "AttackerTechnique",
    "AttackerView",
    "DropReason",
    "LiveFilter",
    "StoreStats",
    "Subscription",
    "TagRecord",
    "TagStore",
    "TechniqueCount",
    "TooManySubscribersError",
    "TooManySubscribersForOwnerError",
    "Window",
    "decode_tagged",
    "parse_window",
    "rollup",
]

MINUTE_S: Final = 60
HOUR_S: Final = 3600
WEEK_S: Final = 7 * 24 * HOUR_S
FUTURE_SKEW_S: Final = 300.0
"""A tag stamped further ahead than this (clocks disagree by less) is dropped as absurd."""

MAX_ID_CHARS: Final = 128
"""Attacker uuids, source ids and the like longer than this are cut (or refused)."""
MAX_TAGS_PER_MESSAGE: Final = 1024
"""Tags of one message beyond this are dropped and counted (a worker emits far fewer)."""


class Window(StrEnum):
    """The observation windows the matrix offers."""

    HOUR = "1h"
    DAY = "24h"
    WEEK = "7d"

    @property
    def seconds(self) -> int:
        return _WINDOW_SECONDS[self]


_WINDOW_SECONDS: Final = {Window.HOUR: HOUR_S, Window.DAY: 24 * HOUR_S, Window.WEEK: WEEK_S}
WINDOWS: Final[tuple[Window, ...]] = tuple(Window)


class DropReason(StrEnum):
    """Why a message or a tag was not counted (:attr:`StoreStats.dropped`)."""

    UNREADABLE = "unreadable_message"
    """Not JSON, or not the contract's ttp.tagged.v1 shape."""
    FUTURE = "time_in_future"
    EXPIRED = "time_outside_window"
    UNKNOWN_TECHNIQUE = "unknown_technique"
    BAD_CONFIDENCE = "bad_confidence"
    BAD_RULE_ID = "bad_rule_id"
    TOO_MANY_TAGS = "too_many_tags_in_message"
    ATTACKER_ID_TOO_LONG = "attacker_id_too_long"
    """The tag is counted, but not under that attacker."""
    ATTACKER_TECHNIQUES_FULL = "attacker_techniques_full"
    """The tag is counted, but the attacker already holds its cap of techniques."""


# --------------------------------------------------------------------------------------------
# Decoding: strict msgspec mirrors of the contract's models, fields the console reads only.
# Anything they refuse goes through the pydantic models, which decide; evidence stays raw
# JSON (never parsed at ingestion, so a huge one costs a slice, not a parse).
# --------------------------------------------------------------------------------------------


class _Tag(msgspec.Struct, frozen=True):
    rule_id: str
    rule_version: int
    tactic: str
    technique_id: str
    sub_technique_id: str | None
    confidence: float
    evidence: msgspec.Raw


class _TaggedData(msgspec.Struct, frozen=True):
    source_kind: str
    source_id: str
    revision: int
    tags: list[_Tag]
    attacker_uuid: str | None = None


class _Tagged(msgspec.Struct, frozen=True):
    time: datetime
    data: _TaggedData


_DECODER: Final = msgspec.json.Decoder(_Tagged)


@dataclass(frozen=True, slots=True)
class _Decoded:
    """One message as the store uses it, from either decoder."""

    time: float
    source_kind: str
    source_id: str
    attacker_uuid: str | None
    tags: list[tuple[str, int, str, str, str | None, float, str]]
    """(rule_id, rule_version, tactic, technique_id, sub_technique_id, confidence,
    evidence JSON)."""


def _posix(when: datetime) -> float:
    # The contract's times carry an offset; one without is read as UTC, like the workers write.
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def decode_tagged(raw: bytes) -> _Decoded | None:
    """A tag message's fields the store needs, or None when it is not a valid one."""
    try:
        fast = _DECODER.decode(raw)
    except msgspec.DecodeError:
        return _decode_lax(raw)
    if not all(bytes(t.evidence).lstrip().startswith(b"{") for t in fast.data.tags):
        # The contract's evidence is an object; the pydantic model refuses anything else.
        return _decode_lax(raw)
    return _decoded(fast.time, fast.data, lambda raw: bytes(raw).decode("utf-8", "replace"))


def _decode_lax(raw: bytes) -> _Decoded | None:
    try:
        message = decode(raw, EventTagged)
    except (pydantic.ValidationError, ValueError, RecursionError):
        return None
    return _decoded(
        message.time,
        message.data,
        lambda evidence: json.dumps(evidence, ensure_ascii=False, default=str),
    )


def _decoded(when: datetime, data: Any, evidence_text: Callable[[Any], str]) -> _Decoded:
    """The store's view of a decoded message's data (msgspec struct or pydantic model, which
    have the same field names; the parity test keeps them so)."""
    return _Decoded(
        time=_posix(when),
        source_kind=data.source_kind,
        source_id=data.source_id,
        attacker_uuid=data.attacker_uuid,
        tags=[
            (
                t.rule_id,
                t.rule_version,
                t.tactic,
                t.technique_id,
                t.sub_technique_id,
                t.confidence,
                evidence_text(t.evidence),
            )
            for t in data.tags
        ],
    )


# --------------------------------------------------------------------------------------------
# What the store hands out
# --------------------------------------------------------------------------------------------


class TagRecord(NamedTuple):
    """One tag as the pages show it (identifiers capped, evidence as capped JSON text).

    A named tuple: a million of them are made while a week of tags loads, and a tuple is
    the cheapest immutable record to build."""

    time: float
    source_kind: str
    source_id: str
    attacker_uuid: str | None
    rule_id: str
    rule_version: int
    tactic: str
    technique: str
    """The sub-technique id when the tag has one, else the technique id."""
    confidence: float
    evidence_json: str
    evidence_truncated: bool

    def evidence_items(self) -> list[tuple[str, str]]:
        """The evidence as (field, value text) pairs; one ("evidence", text) pair when it was
        cut or is not an object."""
        if not self.evidence_truncated:
            try:
                value = json.loads(self.evidence_json)
            except (ValueError, RecursionError):
                value = None
            if isinstance(value, dict):
                return [
                    (str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
                    for k, v in value.items()
                ]
        suffix = " … (cut)" if self.evidence_truncated else ""
        return [("evidence", self.evidence_json + suffix)]


@dataclass(frozen=True, slots=True)
class TechniqueCount:
    """Tags of one technique in a window, and the highest confidence among them."""

    tags: int
    best_confidence: float


@dataclass(frozen=True, slots=True)
class AttackerTechnique:
    technique: str
    tags: int
    best_confidence: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class AttackerView:
    """What one attacker was observed doing (since the store started holding it)."""

    attacker_uuid: str
    first_seen: float
    last_seen: float
    tags: int
    techniques: list[AttackerTechnique]
    techniques_not_kept: int
    """Tags of further techniques, beyond the per-attacker cap."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    messages: int
    tags: int
    """Tags counted into the windows."""
    dropped: dict[str, int]
    attackers: int
    attackers_evicted: int
    rules_tracked: int
    rules_evicted: int
    subscribers: int
    newest: float | None


@dataclass(frozen=True, slots=True)
class LiveFilter:
    """Which tags a live subscriber wants; unset fields match everything.

    A technique without a sub-technique part (``T1059``) also matches its sub-techniques.
    """

    technique: str | None = None
    rule_id: str | None = None
    source_kind: str | None = None
    attacker_uuid: str | None = None

    def matches(self, record: TagRecord) -> bool:
        if self.rule_id is not None and record.rule_id != self.rule_id:
            return False
        if self.source_kind is not None and record.source_kind != self.source_kind:
            return False
        if self.attacker_uuid is not None and record.attacker_uuid != self.attacker_uuid:
            return False
        if self.technique is not None:
            wanted = self.technique
            if record.technique != wanted and not (
                "." not in wanted and record.technique.startswith(wanted + ".")
            ):
                return False
        return True


class TooManySubscribersError(RuntimeError):
    """The store already feeds its cap of live subscribers."""


class TooManySubscribersForOwnerError(RuntimeError):
    """The owner asking (a console user) already holds its cap of live subscribers."""


class Subscription:
    """A live subscriber's bounded queue of tag records.

    The store appends (never blocks); a full queue drops the new record and counts it.
    :meth:`take` returns what is queued and how many were dropped since the last take.
    ``on_ready`` (set by the reader, e.g. an asyncio Event's ``set``) is called after a
    record is queued into an empty queue.
    """

    __slots__ = ("_dropped", "_queue", "capacity", "filter", "on_ready", "owner")

    def __init__(self, live_filter: LiveFilter, capacity: int, owner: str | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.filter = live_filter
        self.capacity = capacity
        self.owner = owner
        self._queue: deque[TagRecord] = deque()
        self._dropped = 0
        self.on_ready: Callable[[], None] | None = None

    def offer(self, record: TagRecord) -> None:
        if not self.filter.matches(record):
            return
        if len(self._queue) >= self.capacity:
            self._dropped += 1
            return
        self._queue.append(record)
        if len(self._queue) == 1 and self.on_ready is not None:
            self.on_ready()

    def take(self) -> tuple[list[TagRecord], int]:
        records = list(self._queue)
        self._queue.clear()
        dropped, self._dropped = self._dropped, 0
        return records, dropped

    def __len__(self) -> int:
        return len(self._queue)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class _Attacker:
    __slots__ = ("first_seen", "last_seen", "not_kept", "tags", "techniques")

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.last_seen = now
        self.tags = 0
        self.not_kept = 0
        # technique -> [tags, best confidence, last seen]
        self.techniques: dict[str, list[float]] = {}


def _cut(text: str, limit: int = MAX_ID_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TagStore:
    """Aggregates of tag messages; see the module docstring for what bounds its memory."""

    def __init__(
        self,
        catalogue: AttackCatalogue,
        *,
        max_attackers: int = 10_000,
        max_techniques_per_attacker: int = 64,
        latest_per_key: int = 20,
        max_rules: int = 500,
        max_evidence_chars: int = 2048,
        max_subscribers: int = 64,
    ) -> None:
        # Canonical id strings of the catalogue: a tag's id is replaced by the catalogue's own
        # string, so millions of tags share one object per technique.
        self._known: dict[str, str] = {t.id: t.id for t in catalogue.techniques()}
        self._tactics: dict[str, str] = {t.id: t.id for t in catalogue.tactics()}
        self.max_attackers = max_attackers
        self.max_techniques_per_attacker = max_techniques_per_attacker
        self.latest_per_key = latest_per_key
        self.max_rules = max_rules
        self.max_evidence_chars = max_evidence_chars
        self.max_subscribers = max_subscribers
        # bucket index -> technique -> [tags, best confidence]
        self._minutes: dict[int, dict[str, list[float]]] = {}
        self._hours: dict[int, dict[str, list[float]]] = {}
        self._attackers: OrderedDict[str, _Attacker] = OrderedDict()
        self._by_technique: dict[str, deque[TagRecord]] = {}
        self._by_rule: OrderedDict[str, deque[TagRecord]] = OrderedDict()
        self._subscribers: list[Subscription] = []
        # owner -> subscribers it holds; an owner leaves when its last one does, so this is
        # never larger than the subscriber list.
        self._owned: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._messages = 0
        self._tags = 0
        self._attackers_evicted = 0
        self._rules_evicted = 0
        self._newest: float | None = None
        self._generation = 0
        # The first bucket index any window still reaches (see _advance).
        self._minute_floor = -1
        self._hour_floor = -1
        self._window_cache: dict[Window, tuple[tuple[int, int], dict[str, TechniqueCount]]] = {}
        self._tokens: dict[str, bool] = {}

    # ---------------------------------------------------------------------------- ingestion

    def ingest(self, raw: bytes, now: float) -> int:
        """Take one tag message's bytes; returns how many of its tags were counted.

        Never raises on the message's content: what cannot be used is counted in
        :attr:`StoreStats.dropped`.
        """
        self._messages += 1
        decoded = decode_tagged(raw)
        if decoded is None:
            self._dropped[DropReason.UNREADABLE] += 1
            return 0
        return self._ingest(decoded, now)

    def _ingest(self, message: _Decoded, now: float) -> int:
        when = message.time
        if not math.isfinite(when) or when > now + FUTURE_SKEW_S:
            self._dropped[DropReason.FUTURE] += max(1, len(message.tags))
            return 0
        self._advance(now)
        if int(when // HOUR_S) < self._hour_floor:
            self._dropped[DropReason.EXPIRED] += max(1, len(message.tags))
            return 0
        tags = message.tags
        if len(tags) > MAX_TAGS_PER_MESSAGE:
            self._dropped[DropReason.TOO_MANY_TAGS] += len(tags) - MAX_TAGS_PER_MESSAGE
            tags = tags[:MAX_TAGS_PER_MESSAGE]
        kind = message.source_kind if self._is_token(message.source_kind) else "?"
        source_id = _cut(message.source_id)
        attacker_id = message.attacker_uuid
        if attacker_id is not None and len(attacker_id) > MAX_ID_CHARS:
            self._dropped[DropReason.ATTACKER_ID_TOO_LONG] += len(tags)
            attacker_id = None
        counted = 0
        for rule_id, version, tactic, technique_id, sub_id, confidence, evidence in tags:
            technique = self._known.get(sub_id if sub_id else technique_id)
            if technique is None or (sub_id and not sub_id.startswith(technique_id + ".")):
                self._dropped[DropReason.UNKNOWN_TECHNIQUE] += 1
                continue
            if not (0.0 <= confidence <= 1.0):  # also refuses NaN
                self._dropped[DropReason.BAD_CONFIDENCE] += 1
                continue
            if not self._is_token(rule_id):
                self._dropped[DropReason.BAD_RULE_ID] += 1
                continue
            truncated = len(evidence) > self.max_evidence_chars
            record = TagRecord(
                time=when,
                source_kind=kind,
                source_id=source_id,
                attacker_uuid=attacker_id,
                rule_id=rule_id,
                rule_version=version,
                tactic=self._tactics.get(tactic, "?"),
                technique=technique,
                confidence=confidence,
                evidence_json=evidence[: self.max_evidence_chars] if truncated else evidence,
                evidence_truncated=truncated,
            )
            self._count(record)
            counted += 1
        if counted:
            self._generation += 1
            if self._newest is None or when > self._newest:
                self._newest = when
        return counted

    def _is_token(self, value: str) -> bool:
        """:func:`subjects.is_token`, remembered: a handful of rule ids and kinds repeat in
        millions of tags (the memo is emptied at 4,096 entries, so forged ids cannot grow
        it)."""
        known = self._tokens.get(value)
        if known is None:
            if len(self._tokens) >= 4096:
                self._tokens.clear()
            known = self._tokens[value] = subjects.is_token(value)
        return known

    def _count(self, record: TagRecord) -> None:
        self._tags += 1
        technique, confidence, when = record.technique, record.confidence, record.time
        minute = int(when // MINUTE_S)
        if minute >= self._minute_floor:  # else older than the hour window: hours only
            _add(self._minutes, minute, technique, confidence)
        _add(self._hours, int(when // HOUR_S), technique, confidence)
        latest = self._by_technique.get(technique)
        if latest is None:
            latest = self._by_technique[technique] = deque(maxlen=self.latest_per_key)
        latest.append(record)
        self._remember_rule(record)
        if record.attacker_uuid is not None:
            self._remember_attacker(record)
        for subscriber in self._subscribers:
            subscriber.offer(record)

    def _remember_rule(self, record: TagRecord) -> None:
        by_rule = self._by_rule
        latest = by_rule.get(record.rule_id)
        if latest is None:
            if len(by_rule) >= self.max_rules:
                by_rule.popitem(last=False)
                self._rules_evicted += 1
            latest = by_rule[record.rule_id] = deque(maxlen=self.latest_per_key)
        else:
            by_rule.move_to_end(record.rule_id)
        latest.append(record)

    def _remember_attacker(self, record: TagRecord) -> None:
        attackers = self._attackers
        uuid = record.attacker_uuid
        assert uuid is not None
        attacker = attackers.get(uuid)
        if attacker is None:
            if len(attackers) >= self.max_attackers:
                attackers.popitem(last=False)
                self._attackers_evicted += 1
            attacker = attackers[uuid] = _Attacker(record.time)
        else:
            attackers.move_to_end(uuid)
        attacker.tags += 1
        attacker.last_seen = max(attacker.last_seen, record.time)
        attacker.first_seen = min(attacker.first_seen, record.time)
        entry = attacker.techniques.get(record.technique)
        if entry is None:
            if len(attacker.techniques) >= self.max_techniques_per_attacker:
                attacker.not_kept += 1
                self._dropped[DropReason.ATTACKER_TECHNIQUES_FULL] += 1
                return
            attacker.techniques[record.technique] = [1, record.confidence, record.time]
            return
        entry[0] += 1
        entry[1] = max(entry[1], record.confidence)
        entry[2] = max(entry[2], record.time)

    def _advance(self, now: float) -> None:
        """Drop the buckets no window reaches any more (only when ``now`` enters a new
        minute: the cost is per minute, not per message)."""
        oldest_minute = int((now - HOUR_S) // MINUTE_S)
        if oldest_minute <= self._minute_floor:
            return
        self._minute_floor = oldest_minute
        for index in [i for i in self._minutes if i < oldest_minute]:
            del self._minutes[index]
        self._hour_floor = int((now - WEEK_S) // HOUR_S)
        for index in [i for i in self._hours if i < self._hour_floor]:
            del self._hours[index]

    # ---------------------------------------------------------------------------- reading

    def observed(self, window: Window, now: float) -> dict[str, TechniqueCount]:
        """Tags and best confidence per technique (sub-techniques on their own) in ``window``.

        Cached until a tag is counted or the window's first bucket changes, so repeated
        page loads cost a dictionary lookup.
        """
        self._advance(now)
        if window is Window.HOUR:
            buckets, first = self._minutes, int((now - HOUR_S) // MINUTE_S)
        else:
            buckets, first = self._hours, int((now - window.seconds) // HOUR_S)
        key = (first, self._generation)
        cached = self._window_cache.get(window)
        if cached is not None and cached[0] == key:
            return cached[1]
        totals: dict[str, list[float]] = {}
        for index, bucket in buckets.items():
            if index < first:
                continue
            for technique, (tags, best) in bucket.items():
                entry = totals.get(technique)
                if entry is None:
                    totals[technique] = [tags, best]
                else:
                    entry[0] += tags
                    entry[1] = max(entry[1], best)
        result = {t: TechniqueCount(int(v[0]), v[1]) for t, v in totals.items()}
        self._window_cache[window] = (key, result)
        return result

    def latest_for_technique(self, technique: str, limit: int | None = None) -> list[TagRecord]:
        """The newest tags of a technique, newest first; a technique id without a
        sub-technique part includes its sub-techniques' tags."""
        found: list[TagRecord] = list(self._by_technique.get(technique, ()))
        if "." not in technique:
            prefix = technique + "."
            for key, records in self._by_technique.items():
                if key.startswith(prefix):
                    found.extend(records)
        found.sort(key=lambda r: r.time, reverse=True)
        return found[: limit or self.latest_per_key]

    def latest_for_rule(self, rule_id: str) -> list[TagRecord]:
        """The newest tags of a rule, newest first."""
        return sorted(self._by_rule.get(rule_id, ()), key=lambda r: r.time, reverse=True)

    def attacker(self, attacker_uuid: str) -> AttackerView | None:
        """The techniques observed for one attacker, most tags first; None if not held."""
        held = self._attackers.get(attacker_uuid)
        if held is None:
            return None
        techniques = [
            AttackerTechnique(technique, int(v[0]), v[1], v[2])
            for technique, v in held.techniques.items()
        ]
        techniques.sort(key=lambda t: (-t.tags, t.technique))
        return AttackerView(
            attacker_uuid=attacker_uuid,
            first_seen=held.first_seen,
            last_seen=held.last_seen,
            tags=held.tags,
            techniques=techniques,
            techniques_not_kept=held.not_kept,
        )

    def recent_attackers(self, limit: int = 50) -> list[str]:
        """The most recently seen attackers, newest first."""
        out: list[str] = []
        for uuid in reversed(self._attackers):
            out.append(uuid)
            if len(out) >= limit:
                break
        return out

    def stats(self) -> StoreStats:
        return StoreStats(
            messages=self._messages,
            tags=self._tags,
            dropped=dict(self._dropped),
            attackers=len(self._attackers),
            attackers_evicted=self._attackers_evicted,
            rules_tracked=len(self._by_rule),
            rules_evicted=self._rules_evicted,
            subscribers=len(self._subscribers),
            newest=self._newest,
        )

    # ---------------------------------------------------------------------------- live

    def refusal(
        self, owner: str | None = None, max_per_owner: int | None = None
    ) -> TooManySubscribersError | TooManySubscribersForOwnerError | None:
        """Why :meth:`subscribe` would refuse a subscriber now (the error it would raise), or
        None. The owner's cap is checked first: that refusal is the one its owner can act on.
        """
        if owner is not None and max_per_owner is not None:
            held = self._owned[owner]
            if held >= max_per_owner:
                return TooManySubscribersForOwnerError(
                    f"{held} live subscribers of this owner already (the cap is {max_per_owner})"
                )
        if len(self._subscribers) >= self.max_subscribers:
            return TooManySubscribersError(
                f"already {len(self._subscribers)} live subscribers (the cap)"
            )
        return None

    def subscribe(
        self,
        live_filter: LiveFilter,
        capacity: int = 500,
        *,
        owner: str | None = None,
        max_per_owner: int | None = None,
    ) -> Subscription:
        """A new live subscriber, held by ``owner`` when given.

        Raises :class:`TooManySubscribersForOwnerError` when ``owner`` already holds
        ``max_per_owner`` subscribers, and :class:`TooManySubscribersError` at the store's own
        cap (see :meth:`refusal`).
        """
        refused = self.refusal(owner, max_per_owner)
        if refused is not None:
            raise refused
        subscription = Subscription(live_filter, capacity, owner)
        self._subscribers.append(subscription)
        if owner is not None:
            self._owned[owner] += 1
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscriber and free its slots; removing one already gone does nothing."""
        if subscription not in self._subscribers:
            return
        self._subscribers.remove(subscription)
        owner = subscription.owner
        if owner is not None:
            self._owned[owner] -= 1
            if self._owned[owner] <= 0:
                del self._owned[owner]

    def subscribers_of(self, owner: str) -> int:
        """How many live subscribers ``owner`` holds."""
        return self._owned.get(owner, 0)

    def subscriptions(self) -> Iterator[Subscription]:
        return iter(tuple(self._subscribers))


def _add(
    buckets: dict[int, dict[str, list[float]]], index: int, technique: str, confidence: float
) -> None:
    bucket = buckets.get(index)
    if bucket is None:
        bucket = buckets[index] = {}
    entry = bucket.get(technique)
    if entry is None:
        bucket[technique] = [1, confidence]
    else:
        entry[0] += 1
        entry[1] = max(entry[1], confidence)


def rollup(counts: dict[str, TechniqueCount], parents: Iterable[str]) -> dict[str, TechniqueCount]:
    """Counts per parent technique, each including its sub-techniques' tags."""
    wanted = set(parents)
    out: dict[str, list[float]] = {}
    for technique, count in counts.items():
        parent = technique.split(".", 1)[0]
        if parent not in wanted:
            continue
        entry = out.setdefault(parent, [0, 0.0])
        entry[0] += count.tags
        entry[1] = max(entry[1], count.best_confidence)
    return {t: TechniqueCount(int(v[0]), v[1]) for t, v in out.items()}


def parse_window(value: str | None, default: Window = Window.DAY) -> Window:
    """The window named by a query parameter; anything unknown is ``default``."""
    try:
        return Window(value) if value else default
    except ValueError:
        return default
