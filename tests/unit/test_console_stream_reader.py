"""Where a delivery stands, read from its JetStream reply subject (both of its forms)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from nats.js.api import ConsumerConfig

from ttp_console.stream_reader import StreamReader
from ttp_runtime.nats_wire import ack_counters

_NINE_TOKENS = "$JS.ACK.TTP_TAGS.ttp-console-ab12.1.4711.4700.1733490000000000000.29"
_WITH_DOMAIN = "$JS.ACK.hub.ACCOUNTHASH.TTP_TAGS.ttp-console-ab12.3.4711.4700.1733490000.0.token"


class _NoNats:
    """Enough of a NATS client for a reader that is never started."""

    def jetstream(self) -> None:
        return None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (_NINE_TOKENS, (4711, 29)),
        (_WITH_DOMAIN, (4711, 0)),
        ("_INBOX_console.x.y", (None, None)),
        ("", (None, None)),
        ("$JS.ACK.TTP_TAGS.c.1.x.2.3.4", (None, None)),
    ],
)
def test_the_stream_sequence_and_pending_count_of_a_delivery(
    reply: str, expected: tuple[int | None, int | None]
) -> None:
    handled: list[str] = []
    reader = StreamReader(
        cast(Any, _NoNats()),
        stream="TTP_TAGS",
        filter_subject="ttp.tagged.>",
        first_config=ConsumerConfig,
        handle=lambda subject, _data: handled.append(subject),
        name="tags",
    )
    reader._take("ttp.tagged.command", reply, b"{}")
    progress = reader.progress
    if expected == (None, None):
        # Not a delivery: nothing handed over, nothing moved.
        assert handled == []
        assert (progress.loaded, progress.last_sequence, progress.pending) == (0, 0, None)
    else:
        assert handled == ["ttp.tagged.command"]
        assert (progress.last_sequence, progress.pending) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (_NINE_TOKENS, ("1", "4711", "29")),
        (_WITH_DOMAIN, ("3", "4711", "0")),
        ("_INBOX_console.x.y", None),
        ("", None),
        ("$JS.ACK.TTP_TAGS.c.1.2.3", None),
        ("$JS.ACK.hub.HASH.TTP_TAGS.c.1.2.3.4.5", None),
    ],
)
def test_the_delivery_count_stream_sequence_and_pending_of_an_ack_subject(
    reply: str, expected: tuple[str, str, str] | None
) -> None:
    assert ack_counters(reply) == expected
