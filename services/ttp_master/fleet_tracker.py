"""Follow `ttp.worker.status.*` and judge the fleet's convergence."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pydantic
from nats.aio.client import Client
from nats.aio.msg import Msg

from ttp_core.contract import subjects
from ttp_core.contract.control import FleetInfo, WorkerView
from ttp_core.contract.payloads import WorkerStatus, decode

_log = logging.getLogger(__name__)

DEFAULT_STATUS_INTERVAL_S: Final = 5.0
"""Assumed for a worker whose status does not say its interval."""
GONE_AFTER_INTERVALS: Final = 3
FORGET_AFTER_S: Final = 3600.0
"""A gone worker stays listed (as gone) this long, so an operator sees what left."""


@dataclass(frozen=True, slots=True)
class _Sighting:
    status: WorkerStatus
    seen_at: float
    """Monotonic clock: immune to wall-clock steps."""
    seen_wall: datetime


class FleetTracker:
    """The last status of every worker, as heard on core NATS."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._workers: dict[str, _Sighting] = {}
        self._sub: Any = None

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe(
            subjects.wildcard(subjects.WORKER_STATUS_PREFIX), cb=self._on_message
        )

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection is closing anyway
                _log.debug("status subscription not removed: %s", exc)
            self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        try:
            status = decode(msg.data, WorkerStatus).data
        except (pydantic.ValidationError, ValueError) as exc:
            _log.warning(
                "unreadable worker status ignored",
                extra={"subject": msg.subject, "error": str(exc)[:300]},
            )
            return
        self.observe(status)

    def observe(self, status: WorkerStatus) -> None:
        self._workers[status.worker_id] = _Sighting(status, self._clock(), datetime.now(UTC))

    def view(self, revision: int, digest: str) -> FleetInfo:
        """Every known worker against the master's published `revision` and `digest`."""
        now = self._clock()
        workers: list[WorkerView] = []
        longest_interval = DEFAULT_STATUS_INTERVAL_S
        for worker_id, seen in sorted(self._workers.items()):
            status = seen.status
            interval = status.status_interval_s or DEFAULT_STATUS_INTERVAL_S
            longest_interval = max(longest_interval, interval)
            age = now - seen.seen_at
            if age > FORGET_AFTER_S:
                del self._workers[worker_id]
                continue
            workers.append(
                WorkerView(
                    worker_id=worker_id,
                    revision=status.revision,
                    ready=status.ready,
                    lag=max(0, revision - status.revision),
                    digest_matches=(
                        None if status.index_digest is None else status.index_digest == digest
                    ),
                    digest=status.index_digest,
                    rules=status.rules,
                    active=status.active,
                    external=status.external,
                    events_processed=status.events_processed,
                    last_seen=seen.seen_wall,
                    age_s=round(age, 3),
                    gone=age > GONE_AFTER_INTERVALS * interval,
                )
            )
        live = [w for w in workers if not w.gone]
        converged = bool(live) and all(
            w.ready and w.lag == 0 and w.digest_matches is not False for w in live
        )
        return FleetInfo(
            revision=revision,
            digest=digest,
            status_interval_s=longest_interval,
            workers=workers,
            converged=converged,
        )
