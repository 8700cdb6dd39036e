"""Follow TTP_RULES: snapshot first, then live changes (see docs/contract.md).

An ordered push consumer with DeliverPolicy last-per-subject delivers the newest message of
every rule subject (the snapshot) and then follows new messages. Snapshot messages are
decoded as they arrive and built into ONE index when the consumer reports nothing pending
(`num_pending == 0`), or at once when the stream is empty; after that each message is
applied and swapped on its own.

Each swap is handed to `on_applied` at once, before any logging or metrics, so the worker's
status (how a change is known to be live) goes out first.

A fresh snapshot (a new consumer, a new index) is taken after a NATS reconnect, a gap in the
consumer sequence, a slow-consumer drop, or a message that cannot be applied; such a resync
is logged at ERROR and counted, never silent, and repeated failures back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from ttp_core.contract import subjects
from ttp_runtime.tracing import get_tracer, start_consumer_span, subject_template
from ttp_worker import metrics
from ttp_worker.rulebook import (
    RuleBook,
    RuleChange,
    RuleMessageError,
    Ruleset,
    decode_rule_message,
)

_log = logging.getLogger(__name__)

RULE_SUBJECTS = (
    subjects.wildcard(subjects.RULE_RELOADED_PREFIX),
    subjects.wildcard(subjects.RULE_STATE_PREFIX),
)
_HEARTBEAT_S = 2.0
_RETRY_S = 0.5
_THREADED_BUILD_MIN = 1_000
"""Snapshots of fewer changes build inline: their build is shorter than a probe's patience."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one swap did: for status, metrics and tests."""

    ruleset: Ruleset
    changes: int
    snapshot: bool
    seconds: float


class _Generation:
    """One consumer's life: its subscription and where its snapshot stands."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.sub: Any = None
        self.snapshot: list[RuleChange] | None = []
        """The snapshot's changes, decoded as they arrive; None once it is built."""
        self.decode_seconds = 0.0
        self.collector: _CollectorPause | None = None
        self.received = 0
        self.last_consumer_seq = 0
        self.last_stream_seq = 0
        self.started = time.perf_counter()


class RuleConsumer:
    """Keeps a :class:`RuleBook` equal to TTP_RULES, swapping its index as messages arrive."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        book: RuleBook,
        on_applied: Callable[[Applied], Awaitable[None]],
        *,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._nc = nc
        self._js = js
        self.book = book
        self._on_applied = on_applied
        self._backoff_max_s = backoff_max_s
        self._generation = _Generation(0)
        self._resync = asyncio.Event()
        self._resync_reason = "start"
        self._failures = 0
        self._building = asyncio.Lock()
        self.ready = asyncio.Event()
        """Set once the first snapshot is applied; stays set across resyncs."""
        self.snapshots = 0

    # -- control ------------------------------------------------------------------------------

    def request_resync(self, reason: str) -> None:
        """Take a fresh snapshot as soon as possible (a reconnect, a gap, a bad message)."""
        if not self._resync.is_set():
            self._resync_reason = reason
            self._resync.set()

    def on_slow_consumer(self, sub: Any) -> None:
        """nats-py dropped messages of a subscription: if it is ours, a gap."""
        if sub is not None and sub is self._generation.sub:
            self._gap("slow consumer: nats-py dropped rule messages")

    async def run(self, stop: asyncio.Event) -> None:
        """Follow TTP_RULES until `stop` is set, resubscribing on every resync."""
        self._resync.set()
        while not stop.is_set():
            if self._resync.is_set():
                self._resync.clear()
                reason = self._resync_reason
                await self._close_generation()
                if self._failures:
                    delay = min(self._backoff_max_s, _RETRY_S * 2 ** min(self._failures, 10))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                try:
                    await self._open_generation(reason)
                except Exception as exc:
                    self._failures += 1
                    _log.warning(
                        "cannot start the TTP_RULES consumer (%s); retrying",
                        exc or type(exc).__name__,
                    )
                    self._resync_reason = reason
                    self._resync.set()
                    continue
            waiter = asyncio.create_task(self._resync.wait())
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
        await self._close_generation()

    # -- subscription -------------------------------------------------------------------------

    async def _open_generation(self, reason: str) -> None:
        generation = _Generation(self._generation.number + 1)
        self._generation = generation
        if generation.number > 1:
            metrics.RESYNCS.labels(reason).inc()
            _log.log(
                logging.INFO if reason == "reconnect" else logging.ERROR,
                "rebuilding the rule index from a fresh TTP_RULES snapshot",
                extra={"reason": reason, "generation": generation.number},
            )

        async def on_message(msg: Msg) -> None:
            await self._on_message(generation, msg)

        generation.sub = await self._js.subscribe(
            RULE_SUBJECTS[0],
            stream=subjects.STREAM_RULES,
            cb=on_message,
            ordered_consumer=True,
            idle_heartbeat=_HEARTBEAT_S,
            config=ConsumerConfig(
                filter_subjects=list(RULE_SUBJECTS),
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ),
        )
        info = await generation.sub.consumer_info()
        if (
            generation is self._generation
            and generation.snapshot is not None
            and generation.received == 0
            and info.num_pending == 0
            and (info.delivered is None or not info.delivered.consumer_seq)
        ):
            await self._finish_snapshot(generation)

    async def _close_generation(self) -> None:
        generation = self._generation
        sub, generation.sub = generation.sub, None
        generation.snapshot = None
        if generation.collector is not None:
            generation.collector.end(freeze=False)  # a snapshot left unfinished
            generation.collector = None
        if sub is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- messages -----------------------------------------------------------------------------

    async def _on_message(self, generation: _Generation, msg: Msg) -> None:
        if generation is not self._generation or generation.sub is None:
            return  # a message of a consumer already replaced
        meta = msg.metadata
        consumer_seq, stream_seq = meta.sequence.consumer, meta.sequence.stream
        if stream_seq <= generation.last_stream_seq:
            return  # nats-py restarted the consumer behind us: already seen
        if consumer_seq not in (generation.last_consumer_seq + 1, 1):
            self._gap(
                f"consumer sequence jumped from {generation.last_consumer_seq} to {consumer_seq}"
            )
            return
        generation.last_consumer_seq = consumer_seq
        generation.last_stream_seq = stream_seq
        generation.received += 1
        if generation.snapshot is not None:
            self._snapshot_message(generation, msg.subject, msg.data, stream_seq)
            if meta.num_pending == 0:
                await self._finish_snapshot(generation, in_callback=True)
            return
        started = time.perf_counter()
        with start_consumer_span(
            f"apply {subject_template(msg.subject)}",
            msg.headers,
            {"nats.stream_sequence": stream_seq},
            subject=msg.subject,
        ):
            try:
                change = decode_rule_message(msg.subject, msg.data)
            except RuleMessageError as exc:
                self._unprocessable(msg.subject, stream_seq, exc)
                self._failures += 1
                self.request_resync("unprocessable message")
                return
            if change is None:
                return
            applied = self.book.apply([change])
            if not applied:
                metrics.RULE_MESSAGES.labels("ignored").inc()
                _log.info(
                    "rule message ignored: revision not newer",
                    extra={
                        "rule_id": change.rule_id,
                        "kind": change.kind.value,
                        "revision": change.revision,
                        "held": self.book.held(change.kind, change.rule_id),
                    },
                )
                return
            seconds = time.perf_counter() - started
            await self._on_applied(Applied(self.book.current, 1, False, seconds))
            metrics.RULE_MESSAGES.labels("applied").inc()
            metrics.APPLY_SECONDS.labels("live").observe(seconds)
            if change.committed_at is not None:
                metrics.PROPAGATION_SECONDS.observe(max(0.0, time.time() - change.committed_at))
            self._failures = 0
            _log.info(
                "rule change applied",
                extra={
                    "rule_id": change.rule_id,
                    "kind": change.kind.value,
                    "revision": change.revision,
                    "deleted": change.kind.value == "definition" and change.compiled is None,
                    "apply_ms": round(seconds * 1000, 3),
                },
            )

    def _unprocessable(self, subject: str, stream_seq: int, error: Exception) -> None:
        metrics.RULE_MESSAGES.labels("error").inc()
        _log.error(
            "unprocessable rule message",
            extra={"subject": subject, "stream_seq": stream_seq, "error": str(error)},
        )

    def _snapshot_message(
        self, generation: _Generation, subject: str, data: bytes, stream_seq: int
    ) -> None:
        """Decode a snapshot message as it arrives: decoding overlaps the delivery of the
        rest, and the loop is free between messages (/livez, NATS pings, heartbeats). The
        decode of one message (~70 us) keeps the callback quick enough for nats-py to send
        the flow-control replies at once."""
        if generation.collector is None and not self.ready.is_set():
            # Only at start: later, the event consumer runs between messages, and its
            # garbage must stay collectable.
            generation.collector = _CollectorPause()
        started = time.perf_counter()
        try:
            change = decode_rule_message(subject, data)
        except RuleMessageError as exc:
            # A resync would read the same message again: leave the rule out, loudly.
            self._unprocessable(subject, stream_seq, exc)
            change = None
        if change is not None and generation.snapshot is not None:
            generation.snapshot.append(change)
        generation.decode_seconds += time.perf_counter() - started

    async def _finish_snapshot(self, generation: _Generation, *, in_callback: bool = False) -> None:
        """Build the snapshot's index and install it.

        A big snapshot is built in a thread, so the loop keeps answering /livez, NATS pings
        and heartbeats meanwhile (the build takes seconds at 100,000 rules). Only from this
        consumer's message callback: nats-py awaits it before handing over the next message,
        so no live change is applied to the index being replaced. From anywhere else (the
        empty stream at subscribe) the build runs inline and nothing interleaves.
        """
        changes = generation.snapshot or []
        generation.snapshot = None
        started = time.perf_counter()
        with get_tracer().start_as_current_span(
            "apply ttp.rule snapshot", attributes={"ttp.messages": len(changes)}
        ):
            try:
                if in_callback and len(changes) >= _THREADED_BUILD_MIN:
                    # One build at a time: a resync may start a generation meanwhile.
                    async with self._building:
                        built = await asyncio.to_thread(self.book.build_snapshot, changes)
                        if generation is not self._generation or generation.sub is None:
                            # Replaced while building: the new generation builds its own
                            # snapshot, and the book keeps what it holds.
                            return
                        ruleset = self.book.install(built)
                else:
                    ruleset = self.book.load_snapshot(changes)
            finally:
                if generation.collector is not None:
                    generation.collector.end(freeze=True)
                    generation.collector = None
        seconds = generation.decode_seconds + time.perf_counter() - started
        self.ready.set()
        await self._on_applied(Applied(ruleset, len(changes), True, seconds))
        metrics.APPLY_SECONDS.labels("snapshot").observe(seconds)
        metrics.RULE_MESSAGES.labels("applied").inc(len(changes))
        self.snapshots += 1
        self._failures = 0
        counts = ruleset.counts()
        _log.info(
            "rule index built from the TTP_RULES snapshot",
            extra={
                "messages": len(changes),
                "revision": ruleset.revision,
                **counts,
                "build_ms": round(seconds * 1000, 3),
                "since_subscribe_ms": round((time.perf_counter() - generation.started) * 1000, 3),
            },
        )

    def _gap(self, detail: str) -> None:
        metrics.RULE_MESSAGES.labels("error").inc()
        _log.error("gap in the TTP_RULES consumer: %s", detail)
        self.request_resync("gap")


class _CollectorPause:
    """No cyclic garbage collection while the first snapshot is decoded and built; then
    everything alive is frozen out of the collector's sight (:func:`gc.freeze`).

    Decoding allocates many young objects that all stay alive (the rules), so every
    generation-0 pass is wasted work: 10-20 % of decoding 10,000 rules. Re-enabling alone
    would only defer the cost: the next full collection walks every rule (0.45 s at 10,000
    rules, and again at every later full collection, stalling the tagging). The rules, like
    the imported modules, live long, so they are frozen instead: a replaced index is still
    freed by reference counting, and leaves only a few hundred objects in cycles (measured:
    358 for 2,000 rules), which stay frozen. A snapshot left unfinished (a resync) only
    re-enables the collector.
    """

    def __init__(self) -> None:
        self._enabled = gc.isenabled()
        gc.disable()

    def end(self, *, freeze: bool) -> None:
        if freeze:
            gc.freeze()
        if self._enabled:
            gc.enable()
