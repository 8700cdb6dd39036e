"""Failed-login throttling, per user name and per client address (pure, no I/O).

A name that failed ``max_failures`` times within ``window_s`` is refused until its oldest
failure leaves the window; an address gets ``address_factor`` times as many (one address may
be an office behind NAT). Refused attempts are not checked at all, so guessing stays slow
however fast the requests come. Memory is bounded: at most ``max_keys`` names and addresses
are remembered, the least recently failing forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

__all__ = ["LoginThrottle"]

_MAX_KEY_CHARS: Final = 128


class LoginThrottle:
    """Counts failed logins in a sliding window and says when to refuse more."""

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        *,
        address_factor: int = 4,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window_s <= 0 or address_factor < 1 or max_keys < 1:
            raise ValueError("throttle limits must be positive")
        self._limits = {"user": max_failures, "address": max_failures * address_factor}
        self._window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def blocked(self, name: str, address: str) -> bool:
        """Whether an attempt for ``name`` from ``address`` must be refused unchecked."""
        now = self._clock()
        return any(self._recent(key, now) >= self._limits[key[0]] for key in _keys(name, address))

    def failed(self, name: str, address: str) -> None:
        """Record one failed attempt."""
        now = self._clock()
        for key in _keys(name, address):
            self._recent(key, now)
            times = self._failures.setdefault(key, deque(maxlen=self._limits[key[0]]))
            times.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        """A correct password clears the name's failures (not its address's)."""
        self._failures.pop(("user", _name_key(name)), None)

    def _recent(self, key: tuple[str, str], now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and now - times[0] >= self._window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)


def _name_key(name: str) -> str:
    # Case variants of one name share a count, so they cannot multiply the guesses.
    return name[:_MAX_KEY_CHARS].casefold()


def _keys(name: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("user", _name_key(name)), ("address", address[:_MAX_KEY_CHARS])
