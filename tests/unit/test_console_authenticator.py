"""Authenticator.login: one password check at a time, a bounded queue, throttling."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

from ttp_console.auth.session import Authenticator, LoginOutcome, safe_next
from ttp_console.auth.throttle import LoginThrottle
from ttp_console.auth.users_file import LocalUser


class SlowUsers:
    """Stands in for LocalUsers: each check takes a while and is counted."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.checks = 0
        self._lock = threading.Lock()

    def verify(self, name: str, password: str) -> LocalUser | None:
        with self._lock:
            self.running += 1
            self.checks += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self._lock:
            self.running -= 1
        return LocalUser(name, "viewer", "h") if password == "right" else None


def _authenticator(users: SlowUsers, max_failures: int = 1000) -> Authenticator:
    return Authenticator(
        "users",
        users=cast(Any, users),
        proxy=None,
        throttle=LoginThrottle(max_failures, 60.0),
        max_age_s=3600,
    )


async def test_checks_run_one_at_a_time_and_the_queue_is_bounded() -> None:
    users = SlowUsers()
    auth = _authenticator(users)
    outcomes = await asyncio.gather(
        *(auth.login(f"user{i}", "right", f"10.0.0.{i}") for i in range(40))
    )
    assert users.most == 1
    assert outcomes.count(LoginOutcome.OK) == users.checks
    assert LoginOutcome.BUSY in outcomes
    assert set(outcomes) == {LoginOutcome.OK, LoginOutcome.BUSY}


async def test_waiting_attempts_see_failures_recorded_meanwhile() -> None:
    users = SlowUsers()
    auth = _authenticator(users, max_failures=2)
    outcomes = await asyncio.gather(*(auth.login("alice", "wrong", "10.0.0.1") for _ in range(6)))
    assert outcomes.count(LoginOutcome.WRONG) == 2
    assert outcomes.count(LoginOutcome.THROTTLED) == 4
    assert users.checks == 2
    assert await auth.login("alice", "right", "10.0.0.2") is LoginOutcome.THROTTLED


def test_safe_next() -> None:
    assert safe_next("/rules?x=1") == "/rules?x=1"
    for target in (None, "", "rules", "//evil", "/\\evil", "https://evil/", "/a\nb", "/" * 3000):
        assert safe_next(target) == "/"
