"""Failed-login throttling per user name and per client address."""

from __future__ import annotations

import pytest

from ttp_console.auth.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_name_is_refused_after_its_failures_until_they_age_out() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60.0, clock=clock)
    for _ in range(3):
        assert not throttle.blocked("alice", "10.0.0.1")
        throttle.failed("alice", "10.0.0.1")
    assert throttle.blocked("alice", "10.0.0.1")
    assert throttle.blocked("ALICE", "10.0.0.2")  # case variants share the count
    assert not throttle.blocked("bob", "10.0.0.2")
    clock.now += 59
    assert throttle.blocked("alice", "10.0.0.9")
    clock.now += 1
    assert not throttle.blocked("alice", "10.0.0.9")


def test_an_address_gets_more_attempts_over_all_names() -> None:
    clock = Clock()
    throttle = LoginThrottle(2, 60.0, address_factor=3, clock=clock)
    for index in range(6):
        assert not throttle.blocked(f"user{index}", "192.0.2.7")
        throttle.failed(f"user{index}", "192.0.2.7")
    assert throttle.blocked("someone-else", "192.0.2.7")
    assert not throttle.blocked("someone-else", "192.0.2.8")


def test_success_clears_the_name_but_not_the_address() -> None:
    throttle = LoginThrottle(2, 60.0, address_factor=2, clock=Clock())
    throttle.failed("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.1")
    assert throttle.blocked("alice", "10.0.0.2")
    throttle.succeeded("alice")
    assert not throttle.blocked("alice", "10.0.0.2")
    throttle.failed("bob", "10.0.0.1")
    throttle.failed("bob", "10.0.0.1")
    assert throttle.blocked("carol", "10.0.0.1")


def test_memory_stays_bounded() -> None:
    throttle = LoginThrottle(5, 60.0, max_keys=100, clock=Clock())
    for index in range(10_000):
        throttle.failed(f"name-{index}" + "x" * 500, f"10.{index % 250}.0.1")
    assert len(throttle._failures) <= 100


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoginThrottle(0, 60.0)
