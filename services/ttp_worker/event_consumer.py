"""Tag honeypot events from TTP_EVENTS into TTP_TAGS (docs/operations.md, "Poison events").

All workers pull from one shared durable consumer, so each event goes to one worker. Per
fetched batch: every event is parsed and evaluated on the index reference taken once for that
event, the tag (or dead-letter) publishes of the whole batch are awaited concurrently, and
each event is acked only after its own publish was acked.

Every event ends as a tag, a no-match ack or a dead letter, on its own:

- anything that goes wrong while evaluating one event or building its message dead-letters
  that event (`evaluation_error`) and the rest of its batch carries on;
- a failed publish is retried in place (the event is kept with `in_progress`, which does not
  count as a delivery) until it succeeds or the worker stops, so an outage of the tag stream
  holds the batch rather than burning through its deliveries;
- an event is delivered again only when a worker died or stopped while holding it; one that
  arrives for the `max_deliveries + 1`-th time is dead-lettered (`max_deliveries`) without
  being processed again, so an event that kills every worker that takes it stops doing so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode

from ttp_core.contract import subjects
from ttp_core.contract.events import DeadLetterReason, MalformedEventError
from ttp_core.contract.payloads import worker_source
from ttp_core.engine.tags import Tag
from ttp_runtime import nats_wire as wire
from ttp_runtime.nats import MSG_ID_HEADER
from ttp_runtime.pubacks import Outbound, PubAckRounds, Round
from ttp_runtime.pull import PullBatches
from ttp_runtime.tracing import (
    get_tracer,
    inject_headers,
    open_producer_span,
    start_consumer_span,
    subject_template,
)
from ttp_worker import metrics
from ttp_worker.events import (
    Outgoing,
    cloudevents_time,
    deadletter_message,
    parse_event,
    tagged_message,
)
from ttp_worker.rulebook import Ruleset

_log = logging.getLogger(__name__)

_PUBLISH_TIMEOUT_S: Final = 5.0
_NAK_DELAY_S: Final = 1.0
# Pauses between attempts to publish a batch's messages again (the last one repeats).
_RETRY_PAUSES_S: Final = (0.25, 0.5, 1.0, 2.0)
_ERROR_TEXT_CAP: Final = 500
_DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
_ERROR_PAUSE_S: Final = 0.5
# How long a fetch waits for more events once one is in hand.
_TOP_UP_S: Final = 0.02
# Longest a stopping worker waits for late deliveries to release.
_RELEASE_GRACE_S: Final = 2.0


@dataclass
class EventStats:
    """Totals this worker reports in its status."""

    processed: int = 0
    tagged: int = 0
    tags: int = 0
    dead_letters: int = 0
    no_rules: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Item:
    msg: Msg
    out: Outgoing | None = None
    published: bool = True
    span: Span | None = None
    """The tag publish's PRODUCER span, for events that arrived with a trace context."""
    headers: dict[str, str] | None = None
    kind: str | None = None
    """The event's source kind once parsed."""
    settled: bool = False
    """Acked or nak'ed."""


@dataclass(slots=True)
class _Batch:
    """One fetched batch between evaluation and its last ack."""

    items: list[_Item]
    counts: Counter[tuple[str, str]]
    span: Span
    headers: dict[str, str]
    waiting: list[_Item]
    """The items with a message to publish."""
    started: float
    round: Round | None = None


class EventConsumer:
    """The pull loop over the shared durable consumer `ttp-workers`."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        current: Callable[[], Ruleset],
        *,
        worker_id: str,
        consumer_name: str = "ttp-workers",
        batch: int = 256,
        fetch_timeout_s: float = 1.0,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 20_000,
        max_event_bytes: int = 1024 * 1024,
        deadletter_text_cap: int = 64 * 1024,
        max_deliveries: int = 5,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._current = current
        self.worker_id = worker_id
        self._source = worker_source(worker_id)
        self._consumer_name = consumer_name
        self._batch = batch
        self._fetch_timeout_s = fetch_timeout_s
        self._ack_wait_s = ack_wait_s
        self._max_ack_pending = max_ack_pending
        self._max_event_bytes = max_event_bytes
        self._text_cap = deadletter_text_cap
        self._max_deliveries_setting = self._max_deliveries = max_deliveries
        # Longest wait for PubAcks, and between two publish attempts: a quarter of ack_wait
        # at most, so events held across failed publishes get `in_progress` in time.
        self._hold_s = min(_PUBLISH_TIMEOUT_S, ack_wait_s / 4)
        self._on_batch = on_batch
        self._pubacks = PubAckRounds(nc)
        self._pull: PullBatches | None = None
        self._prefetching = False
        """Whether a request for the next batch is out (the last fetch filled a batch)."""
        # Batches evaluated and not finished yet (two at most: see `run`).
        self._holding: list[_Batch] = []
        # This batch's evaluate times, observed together at its end.
        self._evaluate_times: list[float] = []
        self._sub: Any = None
        # Bumped by `resubscribe`: a bind that was in flight when it was asked for is stale.
        self._binding = 0
        self._stop: asyncio.Event | None = None
        self.stats = EventStats()

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self._consumer_name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_ack_pending=self._max_ack_pending,
            filter_subject=subjects.wildcard(subjects.EVENT_PREFIX),
        )

    async def _subscribe(self) -> None:
        binding = self._binding
        sub = await self._js.pull_subscribe(
            subjects.wildcard(subjects.EVENT_PREFIX),
            durable=self._consumer_name,
            stream=subjects.STREAM_EVENTS,
            config=self.consumer_config(),
        )
        await self._adopt_consumer_limits()
        # A reconnect during the awaits above asked for a fresh bind: leave `_sub` unset so
        # the loop binds again instead of fetching on what may be a lost consumer.
        if binding == self._binding:
            self._sub = sub

    async def _adopt_consumer_limits(self) -> None:
        """Follow the limits of the consumer as it exists, which may predate this worker.

        Binding to an existing durable consumer does not change its configuration, so its
        `ack_wait` may differ from `TTP_ACK_WAIT_S`: events held across failed publishes are
        kept with `in_progress` well within the consumer's own. And the worker creates the
        consumer without `max_deliver` (it counts deliveries itself, see the module
        docstring), but one made by hand or by other tooling may have one: the server then
        never delivers an event again after that many deliveries, so the last of them must
        be the one that dead-letters it, or the event would be dropped silently.
        """
        try:
            info = await self._js.consumer_info(subjects.STREAM_EVENTS, self._consumer_name)
        except Exception as exc:
            _log.warning("cannot read the consumer's configuration (%s); using the settings", exc)
            return
        ack_wait = info.config.ack_wait
        if ack_wait:
            self._hold_s = min(_PUBLISH_TIMEOUT_S, ack_wait / 4)
        self._max_deliveries = self._max_deliveries_setting
        server_limit = info.config.max_deliver or -1
        # With 1, every delivery is the last: dead-lettering it would tag nothing.
        if server_limit >= 2 and server_limit - 1 < self._max_deliveries:
            _log.warning(
                "the consumer %s has max_deliver=%d: events are dead-lettered after %d"
                " deliveries instead of %d",
                self._consumer_name,
                server_limit,
                server_limit - 1,
                self._max_deliveries,
            )
            self._max_deliveries = server_limit - 1

    def resubscribe(self) -> None:
        """Bind the consumer again before the next fetch (after a NATS restart)."""
        self._sub = None
        self._binding += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, tag, publish, ack until `stop` is set; the batch in hand is finished first."""
        self._stop = stop
        finishing: asyncio.Future[None] | None = None
        while not stop.is_set():
            try:
                if self._sub is None:
                    await self._subscribe()
                sub = self._sub
                if sub is None:
                    continue
                msgs = await self._fetch(sub)
            except TimeoutError:
                continue
            except Exception as exc:
                # Whatever goes wrong while binding or fetching (a NATS error, a lost
                # connection, a library surprise), the loop must outlive it: a dead loop
                # would leave the worker ready while it tags nothing.
                if stop.is_set():
                    break
                expected = isinstance(exc, nats.errors.Error | nats.js.errors.Error | OSError)
                _log.log(
                    logging.WARNING if expected else logging.ERROR,
                    "fetching events failed (%s); rebinding the consumer",
                    exc or type(exc).__name__,
                    exc_info=not expected,
                )
                self._sub = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _ERROR_PAUSE_S)
                continue
            if not msgs:
                continue
            # Not cancelled by `stop`: a batch in hand is always published and acked.
            try:
                batch = await self._start(msgs)
            except Exception:
                _log.exception("event batch failed; unacked events will be redelivered")
                continue
            # Pipelined: this batch's tags are stored by the server while the next batch is
            # fetched and evaluated. At most two batches are in hand: the previous one must
            # be finished before the next is taken.
            await _finished(finishing)
            finishing = asyncio.ensure_future(self._finish(batch))
        await _finished(finishing)
        await self._pubacks.close()
        if self._sub is not None:
            await self._release_leftovers()
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _release_leftovers(self) -> None:
        """Nak the events delivered after the last fetch returned and not handed out yet.

        A fetch can return while the server is still sending the rest of its batch; nats-py
        queues such late deliveries for the next fetch. A stopping worker has no next fetch,
        and unsubscribing would leave them pending until `ack_wait` expires. So the queue is
        emptied until it stays quiet across a round trip to the server, and every event in it
        is nak'ed: another worker gets it at once.
        """
        queue = getattr(getattr(self._sub, "_sub", None), "_pending_queue", None)
        if queue is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RELEASE_GRACE_S
        released = quiet = 0
        while quiet < 2 and loop.time() < deadline:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=1)
            await asyncio.sleep(_TOP_UP_S)
            if queue.empty():
                quiet += 1
                continue
            quiet = 0
            while not queue.empty():
                msg = queue.get_nowait()
                queue.task_done()
                if not msg.reply:  # a pull status (no more messages, timeout): nothing to nak
                    continue
                with contextlib.suppress(Exception):
                    await msg.nak()
                    released += 1
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=1)
        if released:
            _log.info("released %d fetched but unprocessed events on stop", released)

    async def _fetch(self, sub: Any) -> list[Msg]:
        """Wait for one event, then take what else is there right now (up to the batch).

        One request for the whole batch would hold the first event until the batch fills or
        the request expires: a second of latency under a light load. Events delivered after
        the previous batch was complete come first. Under a backlog (the previous batch was
        full) the next whole batch was already asked for when the previous one came in, so
        the server sends it while that one is evaluated; if it finds nothing, the wait for
        one event follows.
        """
        pull = self._pull
        if pull is None or pull.subscription is not sub:
            pull = self._pull = PullBatches(self._nc, sub)
            self._prefetching = False
        msgs: list[Msg] = []
        ended = False
        while pull.take(self._batch, msgs) is not None:
            ended = True  # a status ended a request: the prefetch, if one is out
        topped_up = False
        if self._prefetching:
            self._prefetching = False
            topped_up = True
            if not ended:
                await pull.collect(msgs, self._batch, _TOP_UP_S)
        if not msgs:
            await pull.request(1, expires_s=self._fetch_timeout_s)
            await pull.collect(msgs, 1, self._fetch_timeout_s)
            if not msgs:
                raise TimeoutError
            topped_up = False
        if len(msgs) < self._batch and not topped_up:
            await pull.request(self._batch - len(msgs))
            await pull.collect(msgs, self._batch, _TOP_UP_S)
        if len(msgs) >= self._batch:
            # A backlog: ask for the next batch now (at most one batch ahead).
            await pull.request(self._batch)
            self._prefetching = True
        return msgs

    async def process(self, msgs: list[Msg]) -> None:
        """Tag one batch: evaluate, publish at once, ack each after its own PubAck."""
        await self._finish(await self._start(msgs))

    async def _start(self, msgs: list[Msg]) -> _Batch:
        """Evaluate a batch and send its messages; `_finish` collects their PubAcks."""
        span = get_tracer().start_span(
            "process ttp.event.{source_kind} batch",
            attributes={"messaging.batch.message_count": len(msgs)},
        )
        try:
            with trace.use_span(span, end_on_exit=False):
                items, counts = self._evaluate(msgs)
                headers = inject_headers()
            waiting = [item for item in items if item.out is not None]
            batch = _Batch(items, counts, span, headers, waiting, time.perf_counter())
            batch.round = await self._send(waiting, headers)
        except BaseException:
            span.end()
            raise
        self._holding.append(batch)
        return batch

    async def _finish(self, batch: _Batch) -> None:
        """Ack each event whose message was stored, retrying the others in place."""
        try:
            failed = await self._publish_until_done(batch)
            known = self._current().kinds
            for (kind, outcome), count in batch.counts.items():
                # Kinds no rule applies to come from producers, not from us: one label for
                # all of them keeps the metric's cardinality bounded by the rule set.
                label = kind if kind in known else "other"
                metrics.EVENTS.labels(label, outcome).inc(count)
            batch.span.set_attribute("ttp.publish_failures", failed)
            with contextlib.suppress(Exception):
                metrics.CONSUMER_PENDING.set(batch.items[-1].msg.metadata.num_pending)
        finally:
            batch.span.end()
            self._holding.remove(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch.items))
        _log.debug(
            "event batch done",
            extra={
                "events": len(batch.items),
                "ms": round((time.perf_counter() - batch.started) * 1000, 3),
            },
        )

    async def _publish_until_done(self, batch: _Batch) -> int:
        """Collect the batch's PubAcks; retry the failed ones in place until the worker stops.

        Each event is acked as soon as its own message is stored (or right away when it has
        none). Between attempts each held event gets `in_progress` (its ack timer restarts,
        and the server does not count it as a new delivery), so an outage of TTP_TAGS never
        pushes events towards their delivery limit; what is still unpublished when the
        worker stops is given back (nak). Returns how many publishes failed in all.
        """
        assert batch.round is not None
        failures = await self._collect(batch.waiting, batch.round)
        await self._settle(batch.items, unpublished=False)
        failed = len(failures)
        attempt = 0
        while failures:
            metrics.PUBLISH_FAILURES.inc(len(failures))
            stop = self._stop
            if stop is None or stop.is_set():
                break
            if attempt == 0 or attempt % 10 == 0:
                _log.warning(
                    "publishing failed for %d events; retrying (attempt %d)",
                    len(failures),
                    attempt + 1,
                    extra={"error": repr(failures[0])},
                )
            # Well inside ack_wait, so the held events' timers never run out between rounds.
            pause = min(_RETRY_PAUSES_S[min(attempt, len(_RETRY_PAUSES_S) - 1)], self._hold_s)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                break
            pending = [item for item in batch.waiting if not item.published]
            for item in pending:
                item.published = True
            # Every other event held is kept too: those of the next batch in hand, and late
            # deliveries waiting for the next fetch; they would otherwise expire while this
            # batch waits, and come back as one more delivery.
            for msg in [*(item.msg for item in pending), *self._held_elsewhere(batch)]:
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            failures = await self._collect(pending, await self._send(pending, batch.headers))
            await self._settle(pending, unpublished=False)
            failed += len(failures)
        await self._settle(batch.items, unpublished=True)
        if attempt and not failures:
            _log.info("publishing succeeded after %d retries", attempt)
        return failed

    def _held_elsewhere(self, batch: _Batch) -> list[Msg]:
        """Unsettled events of the other batches in hand, and late deliveries."""
        held = [
            item.msg
            for other in self._holding
            if other is not batch
            for item in other.items
            if not item.settled
        ]
        return [*held, *self._late_deliveries()]

    def _late_deliveries(self) -> list[Msg]:
        """Events delivered after the last fetch returned, queued in nats-py for the next."""
        queue = getattr(getattr(self._sub, "_sub", None), "_pending_queue", None)
        queued = getattr(queue, "_queue", None) or ()
        return [msg for msg in list(queued) if getattr(msg, "reply", None)]

    async def _settle(self, items: list[_Item], *, unpublished: bool) -> None:
        """Ack the published items not settled yet; with `unpublished`, give back (nak) the
        others, for another worker. The acks go out together, in one write."""
        acks: list[Msg] = []
        naks: list[Msg] = []
        for item in items:
            if item.settled or (not item.published and not unpublished):
                continue
            item.settled = True
            (acks if item.published else naks).append(item.msg)
        lost = 0
        if acks and wire.ready(self._nc):
            try:
                await wire.send(self._nc, [wire.empty_pub(msg.reply) for msg in acks])
            except Exception:
                lost += len(acks)
            for msg in acks:
                msg._ackd = True
        else:
            for msg in acks:
                try:
                    await msg.ack()
                except Exception:
                    lost += 1
        for msg in naks:
            try:
                await msg.nak(delay=_NAK_DELAY_S)
            except Exception:
                lost += 1
        if lost:
            # The connection is gone: the server redelivers after ack_wait.
            _log.warning("could not ack or nak %d events; they will be redelivered", lost)

    def _evaluate(self, msgs: list[Msg]) -> tuple[list[_Item], Counter[tuple[str, str]]]:
        """Decide each event's outcome; one event's failure never touches another's."""
        counts: Counter[tuple[str, str]] = Counter()
        tag_counts: Counter[str] = Counter()
        items: list[_Item] = []
        now_text = cloudevents_time()
        stats = self.stats
        max_output = self._max_output_bytes()
        for msg in msgs:
            item = _Item(msg)
            items.append(item)
            stats.processed += 1
            raw = msg.data or b""
            deliveries = _deliveries(msg)
            if deliveries > self._max_deliveries:
                # Its earlier deliveries never finished: the worker holding it died or
                # stopped each time. Processing it again could do the same.
                self._dead_letter(
                    item,
                    raw,
                    MalformedEventError(
                        DeadLetterReason.MAX_DELIVERIES,
                        f"delivered {deliveries} times; processing never finished"
                        f" (the limit is {self._max_deliveries})",
                        _subject_kind(msg.subject),
                    ),
                    deliveries,
                    counts,
                )
                # Rare, and a sign of crashing workers: worth a line (the event's text is in
                # the dead letter, found by its id).
                _log.warning(
                    "event dead-lettered after %d deliveries that never finished",
                    deliveries,
                    extra={"subject": msg.subject, "deadletter_id": _deadletter_id(msg)},
                )
                continue
            try:
                event = parse_event(raw, self._max_event_bytes)
            except MalformedEventError as error:
                self._dead_letter(item, raw, error, deliveries, counts)
                continue
            try:
                outcome, tags = self._tag(item, event, now_text, max_output)
            except Exception as exc:
                self._evaluation_failed(item, raw, event, exc, deliveries, counts)
                continue
            kind = event["source_kind"]
            counts[(kind, outcome)] += 1
            if outcome == "no_rules":
                stats.no_rules += 1
            elif tags:
                stats.tagged += 1
                stats.tags += len(tags)
                tag_counts[kind] += len(tags)
        metrics.observe_all(metrics.EVALUATE_SECONDS, self._evaluate_times)
        self._evaluate_times.clear()
        for kind, count in tag_counts.items():
            metrics.TAGS.labels(kind).inc(count)
        return items, counts

    def _tag(
        self, item: _Item, event: dict[str, Any], now_text: str, max_output: int
    ) -> tuple[str, list[Tag]]:
        """Evaluate one event and build its tag message: (outcome, tags). May raise."""
        msg = item.msg
        kind: str = event["source_kind"]
        item.kind = kind
        ruleset = self._current()  # one reference per event: one whole index
        if kind not in ruleset.kinds:
            return "no_rules", []
        headers = msg.headers
        if headers and "traceparent" in headers:
            return self._tag_traced(item, event, ruleset, now_text, max_output)
        # Untraced events (nearly all) cost no span and no context manager.
        t0 = time.perf_counter()
        tags = ruleset.index.evaluate(event)
        self._evaluate_times.append(time.perf_counter() - t0)
        if not tags:
            return "untagged", tags
        item.out = self._checked(
            tagged_message(event, tags, ruleset.revision, self._source, now_text), max_output
        )
        return "tagged", tags

    def _tag_traced(
        self, item: _Item, event: dict[str, Any], ruleset: Ruleset, now_text: str, max_output: int
    ) -> tuple[str, list[Tag]]:
        """`_tag` of an event that carries a trace context: its own spans (consume,
        evaluate, tag publish) continue the producer's trace."""
        msg = item.msg
        template = subject_template(msg.subject)
        with start_consumer_span(template, msg.headers, subject=msg.subject):
            t0 = time.perf_counter()
            with get_tracer().start_as_current_span(f"evaluate {template}"):
                tags = ruleset.index.evaluate(event)
            self._evaluate_times.append(time.perf_counter() - t0)
            if not tags:
                return "untagged", tags
            out = tagged_message(event, tags, ruleset.revision, self._source, now_text)
            item.out = self._checked(out, max_output)
            item.span, item.headers = open_producer_span(subject_template(out.subject), out.subject)
        return "tagged", tags

    @staticmethod
    def _checked(out: Outgoing, max_output: int) -> Outgoing:
        if len(out.payload) > max_output:
            raise OutputTooLargeError(
                f"its tag message is {len(out.payload)} bytes, more than the"
                f" {max_output} the server accepts"
            )
        return out

    def _evaluation_failed(
        self,
        item: _Item,
        raw: bytes,
        event: dict[str, Any],
        exc: Exception,
        deliveries: int,
        counts: Counter[tuple[str, str]],
    ) -> None:
        item.out = None
        item.headers = None
        if item.span is not None:
            item.span.end()
            item.span = None
        detail = f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT_CAP]
        # Logged with its traceback: unlike a malformed event, this is a defect to fix (or an
        # output too large for the server), and the event itself is in the dead letter.
        _log.warning(
            "evaluating an event failed; it is dead-lettered",
            exc_info=not isinstance(exc, OutputTooLargeError),
            extra={"source_kind": event["source_kind"], "error": detail},
        )
        error = MalformedEventError(DeadLetterReason.EVALUATION_ERROR, detail, item.kind)
        self._dead_letter(item, raw, error, deliveries, counts)

    def _dead_letter(
        self,
        item: _Item,
        raw: bytes,
        error: MalformedEventError,
        deliveries: int,
        counts: Counter[tuple[str, str]],
    ) -> None:
        item.out = deadletter_message(
            raw,
            error,
            worker_id=self.worker_id,
            source=self._source,
            text_cap=self._text_cap,
            msg_id=_deadletter_id(item.msg),
            deliveries=deliveries,
        )
        stats = self.stats
        stats.dead_letters += 1
        stats.dead_letter_reasons[error.reason.value] += 1
        metrics.DEAD_LETTERS.labels(error.reason.value).inc()
        counts[(error.deadletter_kind, "deadletter")] += 1

    def _max_output_bytes(self) -> int:
        # The server's limit on one message (1 MiB by default); learned when connecting.
        limit = getattr(self._nc, "max_payload", 0)
        return limit if isinstance(limit, int) and limit > 0 else _DEFAULT_MAX_PAYLOAD

    async def _send(self, items: list[_Item], headers: dict[str, str]) -> Round:
        """Publish every item's message at once, each with its own `Nats-Msg-Id`."""
        messages: list[Outbound] = []
        for item in items:
            out = item.out
            assert out is not None
            extra = item.headers if item.headers is not None else headers
            message_headers = (
                {**extra, MSG_ID_HEADER: out.msg_id} if extra else {MSG_ID_HEADER: out.msg_id}
            )
            messages.append((out.subject, out.payload, message_headers))
        return await self._pubacks.send(messages)

    async def _collect(self, items: list[_Item], round_: Round) -> list[BaseException]:
        """Wait for a round's PubAcks; mark the items whose message was not stored."""
        if not items:
            return []
        results = await self._pubacks.results(round_, self._hold_s)
        answered = round_.answered_at or time.perf_counter()
        metrics.PUBLISH_SECONDS.observe(answered - round_.sent_at)
        failures: list[BaseException] = []
        for item, error in zip(items, results, strict=True):
            if error is not None:
                item.published = False
                failures.append(error)
        for item in items:
            if item.span is not None:
                if not item.published:
                    item.span.set_status(StatusCode.ERROR, "no PubAck")
                item.span.end()
                item.span = None
        return failures


class OutputTooLargeError(ValueError):
    """A tag message larger than the server accepts in one message."""


def _deliveries(msg: Msg) -> int:
    """How many times the server has delivered this message (1 the first time)."""
    # Read from the ack subject without building nats-py's metadata object (a datetime and
    # two dataclasses per event); a subject of another form goes the long way.
    counters = wire.ack_counters(getattr(msg, "reply", None) or "")
    if counters is not None:
        try:
            return int(counters[0])
        except ValueError:
            pass
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # not a JetStream message (cannot happen on a pull consumer)
        return 1


def _subject_kind(subject: str) -> str:
    """The source kind named by an event's subject (`ttp.event.<kind>`), unparsed."""
    return subject.rpartition(".")[2]


async def _finished(batch: asyncio.Future[None] | None) -> None:
    """Wait for a batch's `_finish`; its failure is logged, never raised."""
    if batch is None:
        return
    try:
        await batch
    except Exception:
        # Not expected (each event is isolated); whatever was not acked is redelivered
        # after ack_wait: nothing is lost.
        _log.exception("event batch failed; unacked events will be redelivered")


def _deadletter_id(msg: Msg) -> str:
    """The same id on redelivery: the event's stream and sequence."""
    try:
        meta = msg.metadata
    except Exception:  # not a JetStream message (cannot happen on a pull consumer)
        return f"ttp-dl-{time.time_ns()}"
    return f"ttp-dl-{meta.stream}-{meta.sequence.stream}"
