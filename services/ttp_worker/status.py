"""`ttp.worker.status.<worker_id>` on core NATS: every few seconds and after each change.

A change's status is published by the code that applied it (:meth:`StatusPublisher.
publish_change`), right after the swap, so nothing else runs in between: that message is how
a change is known to be live. Heartbeats, and changes that could not be sent at once (NATS
away), go out from :meth:`StatusPublisher.run`, which coalesces a burst into one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client

from ttp_core.contract import subjects
from ttp_core.contract.payloads import WorkerStatus, encode, envelope, worker_source
from ttp_core.engine.index import RuleIndex
from ttp_runtime.tracing import inject_headers
from ttp_worker.rulebook import Ruleset

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StatusFacts:
    """What a status message reports, read from the worker when it is sent."""

    ruleset: Ruleset
    ready: bool
    events_processed: int
    apply_latency_ms: float | None


class StatusPublisher:
    """Publishes the worker's heartbeat; :meth:`changed` asks for one now."""

    def __init__(
        self,
        nc: Client,
        worker_id: str,
        facts: Callable[[], StatusFacts],
        interval_s: float = 5.0,
    ) -> None:
        self._nc = nc
        self.worker_id = worker_id
        self._subject = subjects.worker_status(worker_id)
        self._source = worker_source(worker_id)
        self._facts = facts
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._digest: tuple[RuleIndex, str] | None = None
        self._counts: tuple[RuleIndex, dict[str, int]] | None = None
        self.published = 0

    def changed(self) -> None:
        self._wake.set()

    def digest(self, index: RuleIndex) -> str:
        """The index digest, computed once per index."""
        cached = self._digest
        if cached is not None and cached[0] is index:
            return cached[1]
        value = index.digest()
        self._digest = (index, value)
        return value

    def counts(self, ruleset: Ruleset, *, fresh: bool = False) -> dict[str, int]:
        """The ruleset's rule counts, computed once per index unless `fresh` (an operator
        state may expire, which changes the active count without a new index)."""
        cached = self._counts
        if not fresh and cached is not None and cached[0] is ruleset.index:
            return cached[1]
        value = ruleset.counts()
        self._counts = (ruleset.index, value)
        return value

    def build(self, *, fresh: bool = True) -> WorkerStatus:
        facts = self._facts()
        counts = self.counts(facts.ruleset, fresh=fresh)
        return WorkerStatus(
            worker_id=self.worker_id,
            revision=facts.ruleset.revision,
            rules=counts["rules"],
            active=counts["active"],
            external=counts["external"],
            ready=facts.ready,
            events_processed=facts.events_processed,
            index_digest=self.digest(facts.ruleset.index),
            apply_latency_ms=facts.apply_latency_ms,
            status_interval_s=self._interval_s,
        )

    async def publish(self, *, fresh: bool = True) -> None:
        status = self.build(fresh=fresh)
        event = envelope(status, source=self._source, subject=self.worker_id)
        await self._nc.publish(self._subject, encode(event), headers=inject_headers())
        self.published += 1

    async def publish_change(self) -> None:
        """Publish the status of a change just applied, now; left to :meth:`run` when NATS
        is away, so the caller (the rule consumer) is never held up by a reconnect."""
        if not self._nc.is_connected:
            self.changed()
            return
        try:
            await self.publish(fresh=False)
        except Exception as exc:
            _log.debug("worker status not published at once: %s", exc)
            self.changed()
            return
        # nats-py's flusher task writes the message to the socket; yielding once lets it run
        # now, before the caller's logs and metrics.
        await asyncio.sleep(0)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                await self.publish()
            except Exception as exc:  # a heartbeat lost while NATS is away is not an error
                _log.debug("worker status not published: %s", exc)
