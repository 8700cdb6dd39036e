"""Wire the master's adapters to the core and run it (the one bootstrap of ttp-master).

Lifecycle: migrate (or only check the schema, when configured not to migrate), connect,
serve health; then as often as leadership is won: load the catalog, revert expired states,
reconcile the whole rules directory, repair TTP_RULES, and follow the watcher and the outbox
until stopped or the lock is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ttp_core.contract import subjects
from ttp_core.rules.validator import RuleValidator
from ttp_master import metrics
from ttp_master.caller_identity import IdentityPolicy, Role
from ttp_master.control_service import ControlService, LeaderTerm
from ttp_master.db.migrate import require_head, upgrade_to_head
from ttp_master.db.queries import ControlQueries
from ttp_master.db.repository import LeadershipLostError, RuleRepository
from ttp_master.expiry_scheduler import ExpiryScheduler
from ttp_master.fleet_tracker import FleetTracker
from ttp_master.leader import LeaderLock
from ttp_master.mass_delete_guard import MassDeleteGuard, Verdict
from ttp_master.outbox_relay import OutboxRelay, RelayBatch, StreamMessage
from ttp_master.rule_sync import RuleSync, SyncResult
from ttp_master.settings import MasterSettings
from ttp_master.stream_guard import StreamGuard
from ttp_master.stream_usage import StreamUsage
from ttp_master.validation_pool import ValidationPool
from ttp_master.watcher import DirectoryWatcher, WatchBatch
from ttp_runtime.field_catalogue import load_field_catalogue
from ttp_runtime.health import HealthServer
from ttp_runtime.logging import configure_logging
from ttp_runtime.nats import (
    DEFAULT_PUBLISH_TIMEOUT_S,
    MSG_ID_HEADER,
    connect,
    drain,
    ensure_configured_streams,
    publish_js,
)
from ttp_runtime.pubacks import PubAckRounds
from ttp_runtime.service import run_until_signalled
from ttp_runtime.tracing import configure_tracing, get_tracer, inject_headers

_log = logging.getLogger(__name__)

STREAM_CHECK_INTERVAL_S = 5.0
SHUTDOWN_GRACE_S = 8.0
HELD_RECHECK_S = 1.0
MASS_DELETE_SETTLE_S = 1.0


class NatsPublisher:
    """The relay's publisher over a real NATS connection."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._rounds = PubAckRounds(nc)
        self.lock = asyncio.Lock()

    async def publish_stream(
        self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]
    ) -> None:
        await publish_js(self._js, subject, payload, msg_id, headers)

    async def publish_stream_many(
        self, messages: Sequence[StreamMessage]
    ) -> list[BaseException | None]:
        outbound = [
            (subject, payload, {**headers, MSG_ID_HEADER: msg_id})
            for subject, payload, msg_id, headers in messages
        ]
        return await self._rounds.publish(outbound, DEFAULT_PUBLISH_TIMEOUT_S)

    async def close(self) -> None:
        """Stop reading PubAcks (before the connection drains)."""
        await self._rounds.close()

    async def publish_core(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self._nc.publish(subject, payload, headers=inject_headers(headers))


@dataclass
class MasterState:
    """What the probes and metrics read."""

    leader: bool = False
    waiting_because: Callable[[], str] = lambda: "starting"
    publishing: asyncio.Event | None = None
    """The term's relay `caught_up`: set when the outbox is drained, cleared when a pass fails."""
    last_sync: SyncResult | None = None
    terms: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    held: Callable[[], str | None] = lambda: None
    """Rule deletes held back because the rules directory vanished, or None."""

    @property
    def caught_up(self) -> bool:
        return self.leader and self.publishing is not None and self.publishing.is_set()

    def readiness(self) -> tuple[bool, str]:
        if not self.leader:
            return False, f"standby: {self.waiting_because()}"
        if not self.caught_up:
            return False, "leader, outbox not published yet (catching up, or NATS unreachable)"
        held = self.held()
        # Still ready: the master serves the last good rule set, which is what it should do.
        return True, "leader and caught up" if held is None else f"leader and caught up; {held}"


class Master:
    """One master process: adapters wired to the core."""

    def __init__(self, settings: MasterSettings) -> None:
        self.settings = settings
        self.root = settings.rules_dir.absolute()
        self.state = MasterState()
        self._sync_lock = asyncio.Lock()
        # A bad catalogue file stops the start with its location, like any bad setting.
        self.validator = RuleValidator(fields=load_field_catalogue(settings.field_catalogue))
        # One pool for every leadership term: its processes are started once.
        self.validation = ValidationPool(self.validator)
        self.engine: AsyncEngine | None = None
        self.nc: Client | None = None
        self.control: ControlService | None = None

    def request_stop(self) -> None:
        self.state.stop.set()

    async def run(self) -> None:
        settings = self.settings
        # Liveness first: a master waiting for PostgreSQL or NATS is alive, not ready.
        health = HealthServer.from_settings(settings, self.state.readiness)
        await health.start()
        try:
            database = settings.database_target()
            if settings.migrate_at_start:
                await asyncio.to_thread(upgrade_to_head, database)
            else:
                # A DML-only role cannot migrate: the migrate Job did, or the start fails here.
                await asyncio.to_thread(require_head, database)
            self.engine = create_async_engine(
                database.sqlalchemy_url(),
                pool_size=4,
                pool_pre_ping=True,
                # Every rule and outbox row is a JSONB document: msgspec encodes and decodes
                # them several times faster than the json module (same JSON).
                json_serializer=msgspec.json.encode,
                json_deserializer=msgspec.json.decode,
                **database.engine_kwargs(),
            )
            self.nc = await connect(settings, "ttp-master")
        except BaseException:
            await health.stop()
            raise
        js = self.nc.jetstream()
        publisher = NatsPublisher(self.nc, js)
        fleet = FleetTracker()
        await fleet.start(self.nc)
        leader = LeaderLock(database, settings.leader_lock_key)
        self.control = ControlService(
            self.nc,
            fleet,
            postgres_error=lambda: leader.postgres_error,
            max_concurrent=settings.control_max_concurrent,
            clock_skew_s=settings.control_clock_skew_s,
            identity=IdentityPolicy(
                account_roles={
                    account: Role(role) for account, role in settings.control_account_roles.items()
                },
                require_verified=settings.control_require_verified_identity,
            ),
        )
        await self.control.serve_standby()
        _log.info("master started", extra={"rules_dir": str(self.root), "http_port": health.port})
        self.state.waiting_because = lambda: leader.waiting_because
        try:
            while not self.state.stop.is_set():
                if not await leader.acquire(self.state.stop):
                    break
                await self._lead(leader, js, publisher)
                await leader.release()
        finally:
            self.state.leader = False
            metrics.IS_LEADER.set(0)
            await leader.release()
            await self.control.stop()
            await fleet.stop()
            # Its reply subscription has no reader any more: PubAcks left in it would hold
            # the drain up until its timeout.
            await publisher.close()
            await drain(self.nc)
            await health.stop()
            await self.engine.dispose()
            self.validation.close()

    async def _lead(
        self, leader: LeaderLock, js: JetStreamContext, publisher: NatsPublisher
    ) -> None:
        assert self.engine is not None and self.control is not None
        settings = self.settings
        self.state.leader = True
        self.state.terms += 1
        metrics.IS_LEADER.set(1)
        term_stop = asyncio.Event()
        repository = RuleRepository(self.engine, leader.fence)
        sync = RuleSync(self.root, self.validator, repository, self.validation)
        vanish = MassDeleteGuard(self.root, settings.mass_delete_confirm_s)
        self.state.held = vanish.status
        queries = ControlQueries(self.engine)
        scheduler = ExpiryScheduler(queries, repository)
        relay = OutboxRelay(
            self.engine,
            settings.database_target(),
            publisher,
            is_leader=lambda: leader.is_leader,
            poll_interval=settings.relay_poll_interval_s,
            on_batch=self._observe_relay,
            lock=publisher.lock,
        )
        # Each commit's outbox rows go straight to the relay, which publishes them without
        # waiting for the NOTIFY and reading them back.
        relay.follow(repository)
        guard = StreamGuard(
            self.engine, js, publisher, publish_summary=relay.publish_ruleset_revision
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            await ensure_configured_streams(js, settings)
            async with DirectoryWatcher(
                self.root,
                debounce=settings.debounce_ms / 1000,
                rescan_interval=settings.rescan_interval_s,
            ) as watcher:
                await sync.load()
                # Expiries that passed while no master led are reverted before anything else.
                await scheduler.revert_due()
                await self._guarded_sync(sync, vanish, None, "startup")
                async with publisher.lock:
                    metrics.REPUBLISHED.inc(await guard.repair())
                tasks = [
                    asyncio.create_task(leader.watch(term_stop), name="leader-watch"),
                    asyncio.create_task(relay.run(term_stop), name="outbox-relay"),
                    asyncio.create_task(self._follow(watcher, sync, vanish, relay), name="watcher"),
                    asyncio.create_task(
                        self._recheck_held(sync, vanish, term_stop), name="held-deletes"
                    ),
                    asyncio.create_task(self._guard(guard, js, publisher, term_stop), name="guard"),
                    asyncio.create_task(self._track_caught_up(relay, term_stop), name="ready"),
                    asyncio.create_task(scheduler.run(term_stop), name="expiry-scheduler"),
                ]
                await self.control.serve_leader(
                    LeaderTerm(repository, queries, scheduler, relay.ruleset_summary, vanish.status)
                )
                stop_wait = asyncio.create_task(self.state.stop.wait())
                lost_wait = asyncio.create_task(leader.lost.wait())
                done, _ = await asyncio.wait(
                    [stop_wait, lost_wait, *tasks], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task not in (stop_wait, lost_wait) and task.exception() is not None:
                        _log.error(
                            "master task %s failed", task.get_name(), exc_info=task.exception()
                        )
                stop_wait.cancel()
                lost_wait.cancel()
        except LeadershipLostError:
            _log.error("leadership lost while writing; stepping down")
        finally:
            term_stop.set()
            # Not ready from now on: winding the tasks down can take a while when PostgreSQL
            # does not answer (each abandoned statement is cancelled on the server first).
            self.state.leader = False
            sync.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.state.publishing = None
            self.state.held = lambda: None
            metrics.IS_LEADER.set(0)
            metrics.HELD_DELETES.set(0)
            if not self.state.stop.is_set():
                with contextlib.suppress(Exception):
                    await self.control.serve_standby()

    async def _follow(
        self,
        watcher: DirectoryWatcher,
        sync: RuleSync,
        vanish: MassDeleteGuard,
        relay: OutboxRelay,
    ) -> None:
        async for batch in watcher.batches():
            result = await self._apply_batch(sync, vanish, batch)
            if result.cleared and not result.changed:
                relay.summary_changed()

    async def _apply_batch(
        self, sync: RuleSync, vanish: MassDeleteGuard, batch: WatchBatch
    ) -> SyncResult:
        paths = None if batch.full_rescan else batch.paths
        if paths is not None and any(not path.is_file() for path in paths):
            # Some editors move the old file away before writing the new one; give them
            # a moment so a save is not published as a delete followed by a re-add.
            await asyncio.sleep(self.settings.delete_grace_ms / 1000)
        return await self._guarded_sync(sync, vanish, paths, batch.reason)

    async def _guarded_sync(
        self,
        sync: RuleSync,
        vanish: MassDeleteGuard,
        paths: frozenset[Path] | None,
        reason: str,
    ) -> SyncResult:
        """`_sync`, unless the batch would publish deletes the guard holds back."""
        async with self._sync_lock:
            if (
                paths is None
                or vanish.holding is not None
                or any(not path.is_file() for path in paths)
            ):
                verdict = vanish.assess(sync.catalog)
                if verdict is Verdict.SYNC and vanish.missing > vanish.few:
                    # More than a few deletes may be the first part of a bigger one (`rm -rf`
                    # of a large tree takes a while): let the tree settle, then look again.
                    await asyncio.sleep(MASS_DELETE_SETTLE_S)
                    verdict = vanish.assess(sync.catalog)
                if verdict is Verdict.HOLD:
                    return SyncResult()
                if verdict is Verdict.RESCAN:
                    # Batches were skipped while held: only the whole tree says what changed.
                    paths, reason = None, "hold-ended"
            return await self._sync(sync, paths, reason)

    async def _recheck_held(
        self, sync: RuleSync, vanish: MassDeleteGuard, stop: asyncio.Event
    ) -> None:
        """While deletes are held, look again every second: files back, or confirmed."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HELD_RECHECK_S)
            if vanish.holding is not None and not stop.is_set():
                await self._guarded_sync(sync, vanish, None, "held")

    async def _sync(self, sync: RuleSync, paths: frozenset[Path] | None, reason: str) -> SyncResult:
        started = time.perf_counter()
        with get_tracer().start_as_current_span(
            "rules.sync", attributes={"ttp.reason": reason, "ttp.paths": len(paths or ())}
        ):
            result = await sync.sync(paths, trace_headers=inject_headers())
        metrics.RELOAD_DURATION.labels(reason).observe(time.perf_counter() - started)
        metrics.CHANGES.labels("upsert").inc(len(result.upserted))
        metrics.CHANGES.labels("delete").inc(len(result.deleted))
        metrics.REJECTIONS.inc(len(result.rejected))
        self._count_rules(sync)
        self.state.last_sync = result
        if result.changed:
            _log.info(
                "rules synced",
                extra={
                    "reason": reason,
                    "upserted": result.upserted,
                    "deleted": result.deleted,
                    "rejected": result.rejected,
                    "revisions": [result.revisions[0], result.revisions[-1]],
                },
            )
        return result

    def _count_rules(self, sync: RuleSync) -> None:
        live = [k for k in sync.catalog.rules.values() if not k.deleted]
        metrics.RULES.labels("active").set(len(live))
        metrics.RULES.labels("rejected").set(len(sync.catalog.rejections))

    async def _guard(
        self,
        guard: StreamGuard,
        js: JetStreamContext,
        publisher: NatsPublisher,
        stop: asyncio.Event,
    ) -> None:
        settings = self.settings
        usage = StreamUsage(js)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STREAM_CHECK_INTERVAL_S)
            if stop.is_set():
                return
            try:
                await usage.check()
                problem = await guard.check()
                if problem is None:
                    # Not under the publisher's lock: it only reads the stream, and its
                    # answers go through the outbox like any change.
                    metrics.FORGED_RULE_MESSAGES.inc(len(await guard.verify()))
                    continue
                _log.error(
                    "stream %s is %s: rebuilding it from PostgreSQL",
                    subjects.STREAM_RULES,
                    problem,
                )
                await ensure_configured_streams(js, settings)
                async with publisher.lock:
                    metrics.REPUBLISHED.inc(await guard.repair())
            except Exception:
                _log.exception("stream check failed; retrying")

    async def _track_caught_up(self, relay: OutboxRelay, stop: asyncio.Event) -> None:
        assert self.control is not None
        # Not ready before the NATS server holds the leader's control service: whoever sees
        # ready may send a state change at once.
        await self.control.leading.wait()
        self.state.publishing = relay.caught_up
        await relay.caught_up.wait()
        _log.info("master is leader and caught up")
        await stop.wait()

    def _observe_relay(self, batch: RelayBatch) -> None:
        metrics.PUBLISH_LAG.observe(batch.lag_seconds)
        metrics.REVISION.set(batch.last_revision)


def run(settings: MasterSettings | None = None) -> int:
    """Run the master until SIGTERM/SIGINT; returns the process exit code."""
    settings = settings or MasterSettings()
    configure_logging(settings.log_format, settings.log_level)
    configure_tracing("ttp-master")
    master = Master(settings)

    return run_until_signalled(
        "master", master.run, master.state.stop, master.request_stop, SHUTDOWN_GRACE_S
    )
