"""Leadership: a PostgreSQL advisory lock held on a dedicated connection (see docs/operations.md).

A standby polls for the lock every `poll_interval` seconds, so it takes over within about
that long after the leader's session ends. The leader probes its own connection just as
often; when the probe fails the lock is gone with the session, and `lost` is set so that
every writer and the relay stop at once (writes are fenced in PostgreSQL as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from pydantic import SecretStr

from ttp_master.bounded import within
from ttp_master.db.repository import LeaderFence
from ttp_master.db.target import DatabaseTarget

_log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
"""Longest wait for a new lock connection (libpq waits forever by default)."""


class LeaderLock:
    """Acquire, hold and watch the leader lock."""

    def __init__(
        self,
        database: DatabaseTarget | SecretStr | str,
        key: int,
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self._database = DatabaseTarget.of(database)
        self._key = key
        self._poll = poll_interval
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self.lost = asyncio.Event()
        self.fence: LeaderFence | None = None
        self.waiting_because = "starting"
        """Why this master does not lead right now (for readiness and logs)."""
        self.postgres_error: str | None = None
        """Why the last attempt to reach PostgreSQL failed; None once one succeeds."""

    @property
    def is_leader(self) -> bool:
        return self.fence is not None and not self.lost.is_set()

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process leads (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                acquired = await self._try_acquire()
                self.postgres_error = None
                if acquired:
                    _log.info("leader lock acquired", extra={"lock_key": self._key})
                    return True
                self.waiting_because = "another master leads"
                if not announced:
                    _log.info("another master leads; waiting as hot standby")
                    announced = True
            except psycopg.Error as exc:
                self.postgres_error = type(exc).__name__
                self.waiting_because = f"PostgreSQL unreachable ({type(exc).__name__})"
                _log.warning("leader lock attempt failed: %s", exc)
                await self._close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll)
        return False

    async def _try_acquire(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._database.libpq_conninfo(),
                autocommit=True,
                **self._database.psycopg_kwargs(),
                application_name="ttp-master-leader",
                connect_timeout=CONNECT_TIMEOUT_S,
            )
        try:
            cur = await within(
                self._conn.execute(
                    "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (self._key,)
                ),
                max(self._poll, 2.0),
            )
        except TimeoutError as exc:
            raise psycopg.OperationalError(f"lock attempt: {exc}") from exc
        row = await cur.fetchone()
        if row is None or not row[0]:
            return False
        self.lost = asyncio.Event()
        self.fence = LeaderFence(backend_pid=int(str(row[1])), lock_key=self._key)
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Probe the lock connection until it fails (sets `lost`) or `stop` is set."""
        while not stop.is_set() and not self.lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll)
            if stop.is_set():
                return
            try:
                assert self._conn is not None
                # Not wait_for: it would also wait for psycopg to cancel the statement on a
                # server that does not answer (about 10 s), and this master would go on
                # looking like the leader meanwhile.
                await within(self._conn.execute("SELECT 1"), max(self._poll, 2.0))
            except (psycopg.Error, TimeoutError, AssertionError) as exc:
                self.postgres_error = type(exc).__name__
                self.waiting_because = f"leader connection lost ({type(exc).__name__})"
                _log.error("leader connection lost (%s): stepping down", exc)
                self.lost.set()
                self.fence = None
                await self._close()

    async def release(self) -> None:
        """Give up the lock (closing the session releases it)."""
        self.fence = None
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
