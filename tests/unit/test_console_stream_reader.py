"""Where a delivery stands, read from its JetStream reply subject (both of its forms)."""

from __future__ import annotations

import pytest

from ttp_console.stream_reader import _ack_metadata


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("$JS.ACK.TTP_TAGS.ttp-console-ab12.1.4711.4700.1733490000000000000.29", (4711, 29)),
        (
            "$JS.ACK.hub.ACCOUNTHASH.TTP_TAGS.ttp-console-ab12.1.4711.4700.1733490000.0.token",
            (4711, 0),
        ),
        ("_INBOX_console.x.y", (None, None)),
        ("", (None, None)),
        ("$JS.ACK.TTP_TAGS.c.1.x.2.3.4", (None, None)),
    ],
)
def test_the_stream_sequence_and_pending_count_of_a_delivery(
    reply: str, expected: tuple[int | None, int | None]
) -> None:
    assert _ack_metadata(reply) == expected
