"""Wire the worker's adapters to the core and run it (the one bootstrap of ttp-worker).

Lifecycle: connect (reconnecting forever), make sure the streams exist (creating them, or
waiting for the master where this worker may not: ttp_worker/streams.py), serve health, load
the lifter evaluators, then run three tasks until stopped: the rule consumer (snapshot, then
live), the event consumer (tagging) and the status heartbeat. On SIGTERM the event consumer
stops fetching and finishes the batch in hand, then NATS is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Final

import nats.errors
from nats.aio.client import Client

from ttp_core.engine.index import LifterEvaluator
from ttp_runtime.health import HealthServer
from ttp_runtime.logging import configure_logging
from ttp_runtime.nats import configured_streams, connect, drain
from ttp_runtime.service import first_completed, run_until_signalled
from ttp_runtime.tracing import configure_tracing
from ttp_worker import metrics
from ttp_worker.event_consumer import EventConsumer
from ttp_worker.output_capacity import OutputCapacity
from ttp_worker.rule_consumer import Applied, RuleConsumer
from ttp_worker.rulebook import RuleBook
from ttp_worker.settings import WorkerSettings
from ttp_worker.status import StatusFacts, StatusPublisher
from ttp_worker.streams import StreamWait

_log = logging.getLogger(__name__)

LIFTER_GROUP: Final = "ttp_rulebus.lifters"
SHUTDOWN_GRACE_S: Final = 9.0
_STREAM_RETRY_S: Final = 1.0


def load_lifters(group: str = LIFTER_GROUP) -> dict[str, LifterEvaluator]:
    """Evaluators of external rules registered as entry points (name = the lifter name)."""
    lifters: dict[str, LifterEvaluator] = {}
    for point in entry_points(group=group):
        try:
            evaluator = point.load()
        except Exception:
            _log.exception("cannot load lifter evaluator %s (%s)", point.name, point.value)
            continue
        if not callable(evaluator):
            _log.error("lifter entry point %s is not callable; ignored", point.name)
            continue
        lifters[point.name] = evaluator
        _log.info("lifter evaluator loaded", extra={"lifter": point.name, "target": point.value})
    return lifters


@dataclass
class WorkerState:
    """What probes, status and tests read."""

    ready: bool = False
    last_apply_ms: float | None = None
    applied: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    applied_event: asyncio.Event = field(default_factory=asyncio.Event)
    output_problem: Callable[[], str | None] = lambda: None
    """Why tags cannot be stored (an output stream is full), or None."""

    def readiness(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "waiting for the TTP_RULES snapshot"
        problem = self.output_problem()
        if problem is not None:
            return False, problem
        return True, "index built from the TTP_RULES snapshot"


class Worker:
    """One worker process: adapters wired to the core."""

    def __init__(
        self, settings: WorkerSettings, lifters: dict[str, LifterEvaluator] | None = None
    ) -> None:
        self.settings = settings
        self.state = WorkerState()
        self.lifters = load_lifters() if lifters is None else lifters
        self.book = RuleBook(self.lifters)
        self.nc: Client | None = None
        self.rules: RuleConsumer | None = None
        self.events: EventConsumer | None = None
        self.status: StatusPublisher | None = None
        self.health: HealthServer | None = None
        self.streams: StreamWait | None = None
        self.started = asyncio.Event()

    def request_stop(self) -> None:
        self.state.stop.set()
        if self.status is not None:
            self.status.changed()

    async def _on_applied(self, applied: Applied) -> None:
        state = self.state
        state.ready = True
        state.applied += applied.changes
        state.last_apply_ms = round(applied.seconds * 1000, 3)
        if self.status is not None:
            # First: this message is how the change is known to be live.
            await self.status.publish_change()
        state.applied_event.set()
        metrics.READY.set(1)
        metrics.REVISION.set(applied.ruleset.revision)
        ruleset = applied.ruleset
        counts = ruleset.counts() if self.status is None else self.status.counts(ruleset)
        metrics.RULES.labels("total").set(counts["rules"])
        metrics.RULES.labels("active").set(counts["active"])
        metrics.RULES.labels("external").set(counts["external"])

    def _facts(self) -> StatusFacts:
        return StatusFacts(
            ruleset=self.book.current,
            ready=self.state.ready,
            events_processed=self.events.stats.processed if self.events is not None else 0,
            apply_latency_ms=self.state.last_apply_ms,
        )

    async def _error_cb(self, error: Exception) -> None:
        if self.streams is not None and self.streams.note_error(error):
            return
        if isinstance(error, nats.errors.SlowConsumerError) and self.rules is not None:
            self.rules.on_slow_consumer(error.sub)

    async def _reconnected_cb(self) -> None:
        # A restarted server may have lost ephemeral consumers and missed nothing or a lot:
        # take a fresh snapshot, and bind the event consumer again.
        if self.rules is not None:
            self.rules.request_resync("reconnect")
        if self.events is not None:
            self.events.resubscribe()

    async def run(self) -> None:
        settings = self.settings
        metrics.READY.set(0)
        self.health = HealthServer.from_settings(settings, self.state.readiness)
        await self.health.start()
        self.nc = nc = await connect(
            settings,
            f"ttp-worker-{settings.worker_id}",
            error_cb=self._error_cb,
            reconnected_cb=self._reconnected_cb,
        )
        js = nc.jetstream()
        stop = self.state.stop
        tasks: list[asyncio.Task[None]] = []
        try:
            self.streams = StreamWait(
                js,
                configured_streams(settings),
                may_create=not settings.logs_in(),
                retry_s=_STREAM_RETRY_S,
            )
            await self.streams.run(stop)
            self.rules = RuleConsumer(
                nc,
                js,
                self.book,
                self._on_applied,
                backoff_max_s=settings.resync_backoff_max_s,
            )
            self.events = EventConsumer(
                nc,
                js,
                lambda: self.book.current,
                worker_id=settings.worker_id,
                consumer_name=settings.consumer_name,
                batch=settings.fetch_batch,
                fetch_timeout_s=settings.fetch_timeout_s,
                ack_wait_s=settings.ack_wait_s,
                max_ack_pending=settings.max_ack_pending,
                max_event_bytes=settings.max_event_bytes,
                deadletter_text_cap=settings.deadletter_text_cap,
                max_deliveries=settings.max_deliveries,
            )
            capacity = OutputCapacity(js)
            self.state.output_problem = capacity.problem
            self.status = StatusPublisher(
                nc, settings.worker_id, self._facts, settings.status_interval_s
            )
            _log.info(
                "worker started",
                extra={
                    "worker_id": settings.worker_id,
                    "http_port": self.health.port,
                    "lifters": sorted(self.lifters),
                },
            )
            rule_task = asyncio.create_task(self.rules.run(stop), name="rule-consumer")
            tasks.append(rule_task)
            tasks.append(asyncio.create_task(self.status.run(stop), name="status"))
            tasks.append(asyncio.create_task(capacity.run(stop), name="output-capacity"))
            self.started.set()
            # Tag only with a whole rule set: events wait until the snapshot is applied.
            await first_completed(self.rules.ready.wait(), stop.wait(), rule_task)
            if not stop.is_set():
                tasks.append(asyncio.create_task(self.events.run(stop), name="event-consumer"))
            await first_completed(stop.wait(), *tasks)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    _log.error("worker task %s failed", task.get_name(), exc_info=task.exception())
        finally:
            stop.set()
            if self.status is not None:
                self.status.changed()
            # The event consumer finishes the batch in hand (its publishes and acks) first.
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, SHUTDOWN_GRACE_S / 2)
            self.state.ready = False
            metrics.READY.set(0)
            await drain(nc)
            await self.health.stop()
            _log.info("worker stopped", extra={"worker_id": settings.worker_id})


def run(settings: WorkerSettings | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT; returns the process exit code."""
    settings = settings or WorkerSettings()
    configure_logging(settings.log_format, settings.log_level)
    configure_tracing("ttp-worker", resource_attributes={"service.instance.id": settings.worker_id})
    worker = Worker(settings)

    return run_until_signalled(
        "worker", worker.run, worker.state.stop, worker.request_stop, SHUTDOWN_GRACE_S
    )
