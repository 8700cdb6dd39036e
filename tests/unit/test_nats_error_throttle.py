"""Repeated NATS errors (a full stream refuses every publish alike) log once per window."""

from __future__ import annotations

from ttp_runtime.nats import RepeatThrottle


def test_a_repeated_text_passes_once_per_window_with_the_count_held_back() -> None:
    now = [0.0]
    throttle = RepeatThrottle(10.0, clock=lambda: now[0])
    assert throttle.admit("maximum bytes exceeded") == 0
    assert [throttle.admit("maximum bytes exceeded") for _ in range(3)] == [None] * 3
    assert throttle.admit("another error") == 0
    now[0] = 10.0
    assert throttle.admit("maximum bytes exceeded") == 3
    assert throttle.admit("maximum bytes exceeded") is None
