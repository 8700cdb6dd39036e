"""A batch's publishes and acks as NATS protocol text, handed to nats-py's send buffer at once.

`Client.publish` costs several microseconds a message (subject checks by regular
expression, a header loop with a regular expression per key, a coroutine per call), more
than the rest of a tag's way out. The callers' subjects, reply subjects and header keys
are their own (subjects built from validated tokens, ids from hashes or revisions, trace
context from OpenTelemetry; header values lose line breaks as in nats-py), so a batch is
written as `HPUB`/`PUB` commands in one buffer entry and one flush request (nats-py 2.x
internals, pinned by the lock: `_send_command`, `_flush_pending`). While the connection is
not up (reconnecting, draining, closed) the caller uses `Client.publish`, which knows how
to buffer or refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import nats.errors
from nats.aio.client import Client

# As nats-py does for header values: no line break may end a header early.
_NO_NEWLINES: Final = str.maketrans({"\r": " ", "\n": " "})


def ack_counters(reply: str) -> tuple[str, str, str] | None:
    """``(delivered, stream sequence, pending)`` of a JetStream delivery, read from its reply.

    The reply subject is ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
    seq>.<time>.<pending>`` (9 tokens), or the newer form with a domain and an account hash
    after ``$JS.ACK`` (12 tokens or more); None for any other subject. The counters stay
    text: the worker reads only the delivery count, once per event, and converting all three
    would cost it more than the split. Callers convert what they read with ``int`` and take
    a ``ValueError`` as "not a delivery".
    """
    match reply.split("."):
        case ["$JS", "ACK", _, _, delivered, sequence, _, _, pending]:
            return delivered, sequence, pending
        case ["$JS", "ACK", _, _, _, _, delivered, sequence, _, _, pending, _, *_]:
            return delivered, sequence, pending
    return None


def ready(nc: Client) -> bool:
    """Whether commands can go straight to the send buffer now."""
    return bool(nc.is_connected) and not nc.is_draining_pubs


def hpub(
    subject: str, reply: str, headers: Mapping[str, str], payload: bytes, max_payload: int
) -> bytes:
    """One `HPUB` command (a message with headers and a reply subject).

    Raises `nats.errors.MaxPayloadError` when headers and payload together exceed the
    server's limit, which the server would answer by closing the connection.
    """
    head_text = "NATS/1.0\r\n"
    for key, value in headers.items():
        line = value.translate(_NO_NEWLINES) if "\r" in value or "\n" in value else value
        head_text += f"{key}: {line}\r\n"
    head = f"{head_text}\r\n".encode()
    size = len(head)
    total = size + len(payload)
    if 0 < max_payload < total:
        raise nats.errors.MaxPayloadError
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        size,
        total,
        head,
        payload,
    )


def empty_pub(subject: str) -> bytes:
    """One `PUB` of an empty message (a JetStream ack: an empty body means `+ACK`)."""
    return b"PUB %s 0\r\n\r\n" % subject.encode()


async def send(nc: Client, commands: Sequence[bytes]) -> None:
    """Append the commands to the send buffer as one entry and ask for a flush.

    Each command counts in the client's `out_msgs` (and its bytes in `out_bytes`), as a
    `Client.publish` would, so the connection's statistics still say what it sent.
    """
    data = b"".join(commands)
    if data:
        await nc._send_command(data)
        await nc._flush_pending()
        stats = getattr(nc, "stats", None)
        if isinstance(stats, dict):
            stats["out_msgs"] = stats.get("out_msgs", 0) + len(commands)
            stats["out_bytes"] = stats.get("out_bytes", 0) + len(data)
