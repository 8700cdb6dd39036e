"""Sessions ended by logout before their time (pure, no I/O).

The session is a signed cookie, valid by itself until its max-age: a copy taken before the
user logged out would go on working. So every login gets a random session id inside the
cookie, and logging out puts that id here until the session would have expired anyway.

Memory is bounded whatever the rate of logins and logouts: past ``max_entries`` ids the one
of the oldest login is forgotten, and in its place every session that logged in at or before
that moment is refused (``refused_up_to``). A revoked session therefore never works again;
the price of a flood of logouts is that the oldest other sessions must log in again, which is
logged.

Per process and in memory: a restart forgets the ids (a restarted console with the same
session secret honours a copied cookie again), and each replica has its own.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable
from typing import Final

from ttp_runtime.nats import RepeatThrottle

__all__ = ["DEFAULT_MAX_REVOKED", "RevokedSessions"]

_log = logging.getLogger(__name__)

# About 200 bytes each (id, login time, heap entry): 50,000 ids are about 10 MiB. Logins are
# one argon2 check at a time (about 0.2 s each), so filling it takes hours of logging in.
DEFAULT_MAX_REVOKED: Final = 50_000
_LOG_WINDOW_S: Final = 60.0


class RevokedSessions:
    """Session ids that must not be honoured again, each until its session's max-age ends."""

    def __init__(
        self,
        max_age_s: float,
        *,
        max_entries: int = DEFAULT_MAX_REVOKED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_age_s <= 0 or max_entries < 1:
            raise ValueError("the session max-age and the revocation cap must be positive")
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        # Wall-clock time, like the login time the cookie carries (it outlives the process).
        self._clock = clock
        self._login_times: dict[str, float] = {}
        self._oldest_first: list[tuple[float, str]] = []
        self.refused_up_to = -math.inf
        """Sessions that logged in at or before this time are refused (raised on overflow)."""
        self._overflow_logs = RepeatThrottle(_LOG_WINDOW_S, clock)

    def __len__(self) -> int:
        return len(self._login_times)

    def revoke(self, session_id: str, logged_in_at: float) -> None:
        """Refuse the session ``session_id`` (logged in at ``logged_in_at``) from now on."""
        now = self._clock()
        self._forget_expired(now)
        if session_id in self._login_times or self.is_revoked(session_id, logged_in_at):
            return
        if now - logged_in_at > self._max_age_s:
            return  # Expired already: refused anyway.
        while len(self._login_times) >= self._max_entries:
            oldest_at, oldest_id = heapq.heappop(self._oldest_first)
            del self._login_times[oldest_id]
            self.refused_up_to = max(self.refused_up_to, oldest_at)
            self._log_overflow()
        self._login_times[session_id] = logged_in_at
        heapq.heappush(self._oldest_first, (logged_in_at, session_id))

    def is_revoked(self, session_id: str, logged_in_at: float) -> bool:
        """Whether the session must be refused although its cookie is genuine and in time."""
        return logged_in_at <= self.refused_up_to or session_id in self._login_times

    def _forget_expired(self, now: float) -> None:
        # An id whose session is past its max-age is refused by its age alone.
        heap = self._oldest_first
        while heap and now - heap[0][0] > self._max_age_s:
            _, session_id = heapq.heappop(heap)
            del self._login_times[session_id]

    def _log_overflow(self) -> None:
        if self._overflow_logs.admit("overflow") is None:
            return
        _log.warning(
            "console remembers %d logged-out sessions, its limit: sessions that logged in"
            " before %s must log in again (a flood of logins and logouts?)",
            self._max_entries,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.refused_up_to)),
        )
