"""Revert operator states when their `expires_at` passes (see docs/operations.md).

The schedule is PostgreSQL itself: the scheduler sleeps until the earliest `expires_at`
in `ttp_rule_state`, reverts what is due, and looks again. Any state write wakes it, so an
extended or cleared expiry is never reverted (the revert is also conditional in SQL), and
expiries that passed while the master was down are reverted on the first pass of a term.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from ttp_master import metrics
from ttp_master.db.queries import ControlQueries
from ttp_master.db.repository import ChangeSet, LeadershipLostError, RuleRepository, StateRevert

_log = logging.getLogger(__name__)

_LONGEST_SLEEP_S: Final = 30.0
"""A backstop: even without a wake-up, the table is looked at this often."""
_RETRY_S: Final = 1.0


class ExpiryScheduler:
    """Sleeps until the next expiry, reverts it with `cause: expired`."""

    def __init__(
        self,
        queries: ControlQueries,
        repository: RuleRepository,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._queries = queries
        self._repository = repository
        self._clock = clock
        self._wake = asyncio.Event()
        self._sleeping_until: datetime | None = None
        """When the sleep between passes ends; None while a pass runs (or before the first)."""
        self.reverted = 0

    def expiry_written(self, expires_at: datetime | None) -> None:
        """A state was written with this expiry: look again only if it may fall due before
        the planned wake-up. A write without an expiry can only remove one, and the pass at
        the planned time finds nothing due (the revert is conditional), so it changes
        nothing; while a pass runs (it may have read the table before this write) or
        before the first one, look again."""
        if expires_at is None:
            return
        until = self._sleeping_until
        if until is None or expires_at < until:
            self._wake.set()

    async def revert_due(self) -> list[str]:
        """Revert every state whose expiry has passed; returns the rule_ids reverted."""
        due_at = await self._queries.expired(self._clock())
        if not due_at:
            return []
        due = [rule_id for rule_id, _ in due_at]
        revisions = await self._repository.apply(
            ChangeSet(state_reverts=[StateRevert(rule_id) for rule_id in due]), actor="ttp-master"
        )
        if revisions:
            self.reverted += len(revisions)
            metrics.STATE_EXPIRIES.inc(len(revisions))
            now = self._clock()
            for _, expires_at in due_at:
                metrics.EXPIRY_DELAY.observe(max(0.0, (now - expires_at).total_seconds()))
            _log.info(
                "operator states expired and reverted to enabled",
                extra={"rules": due, "revisions": revisions},
            )
        return due

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; a lost leadership ends the term (the error propagates)."""
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.revert_due()
                upcoming = await self._queries.next_expiry()
                delay = _LONGEST_SLEEP_S
                if upcoming is not None:
                    delay = min(delay, max(0.0, (upcoming - self._clock()).total_seconds()))
            except LeadershipLostError:
                raise
            except Exception as exc:
                _log.warning("expiry check failed (%s); retrying", exc or type(exc).__name__)
                delay = _RETRY_S
            wake = asyncio.ensure_future(self._wake.wait())
            halt = asyncio.ensure_future(stop.wait())
            self._sleeping_until = self._clock() + timedelta(seconds=delay)
            try:
                await asyncio.wait({wake, halt}, timeout=delay, return_when="FIRST_COMPLETED")
            finally:
                self._sleeping_until = None
                for waiter in (wake, halt):
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
