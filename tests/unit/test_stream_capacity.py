"""How full a stream is, from its info: what probes and metrics report."""

from __future__ import annotations

from nats.js.api import StreamConfig, StreamInfo, StreamState

from ttp_runtime.stream_capacity import ROOM_BYTES, has_room, usage


def info(max_bytes: int, used: int, *, max_msgs: int = -1, messages: int = 0) -> StreamInfo:
    state = StreamState(
        messages=messages, bytes=used, first_seq=1, last_seq=messages, consumer_count=0
    )
    return StreamInfo(config=StreamConfig(max_bytes=max_bytes, max_msgs=max_msgs), state=state)


def test_an_unlimited_stream_always_has_room_and_no_usage() -> None:
    assert has_room(info(-1, 10**12))
    assert usage(info(-1, 10**12)) == 0.0


def test_a_stream_is_full_once_less_than_the_margin_is_left() -> None:
    limit = 100 * ROOM_BYTES
    assert has_room(info(limit, limit - ROOM_BYTES - 1))
    assert not has_room(info(limit, limit - ROOM_BYTES))
    assert usage(info(limit, limit // 4)) == 0.25


def test_small_limits_keep_a_tenth_as_margin_and_message_limits_count_too() -> None:
    assert has_room(info(1000, 899))
    assert not has_room(info(1000, 900))
    assert not has_room(info(-1, 0, max_msgs=10, messages=10))
    assert usage(info(1000, 100, max_msgs=10, messages=5)) == 0.5
