"""The worker's batch transport without a server: PubAck matching and pull-batch collection.

A fake connection answers publishes the way JetStream does (PubAck, duplicate, API error, no
responders, nothing) and queues deliveries the way nats-py does, so every path of
`PubAckRounds` and `PullBatches` runs here; tests/integration/test_worker_flow.py runs them
against a real server.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from ttp_runtime.pubacks import NoPubAckError, PubAckRounds
from ttp_runtime.pull import PullBatches

# --------------------------------------------------------------------------------------------
# PubAck rounds
# --------------------------------------------------------------------------------------------


class AnsweringNats:
    """Publishes are answered according to their payload, on the next loop turn.

    Not connected: every message goes through `publish`, as while nats-py reconnects.
    """

    is_connected = False
    is_draining_pubs = False

    def __init__(self) -> None:
        self.sub = SimpleNamespace(_pending_queue=asyncio.Queue(), _pending_size=0)
        self.subscribed: list[str] = []
        self.sent: list[tuple[str, bytes, str, dict[str, str] | None]] = []
        self.held: list[Any] = []

    def new_inbox(self) -> str:
        return "_INBOX_worker.abc"

    async def subscribe(self, subject: str) -> SimpleNamespace:
        self.subscribed.append(subject)
        return self.sub

    def deliver(self, msg: SimpleNamespace) -> None:
        """A reply arrives: nats-py queues it for the subscription."""
        self.sub._pending_size += len(msg.data)
        self.sub._pending_queue.put_nowait(msg)

    async def publish(
        self, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None
    ) -> None:
        if payload == b"raise":
            raise ConnectionError("link down")
        self.sent.append((subject, payload, reply, headers))
        answers: dict[bytes, tuple[bytes, dict[str, str] | None]] = {
            b"ok": (b'{"stream":"TTP_TAGS","seq":1}', None),
            b"dup": (b'{"stream":"TTP_TAGS","seq":1,"duplicate":true}', None),
            b"full": (
                b'{"error":{"code":503,"err_code":10077,"description":"maximum bytes exceeded"}}',
                None,
            ),
            b"nostream": (b"", {"Status": "503"}),
            b"garbage": (b"<html>", None),
        }
        if payload == b"late":
            ack = b'{"stream":"TTP_TAGS","seq":2}'
            self.held.append(SimpleNamespace(subject=reply, data=ack, headers=None))
            return
        if payload in answers:
            data, headers_back = answers[payload]
            msg = SimpleNamespace(subject=reply, data=data, headers=headers_back)
            asyncio.get_running_loop().call_soon(self.deliver, msg)


async def test_a_round_reports_each_message_by_its_own_puback() -> None:
    nc = AnsweringNats()
    rounds = PubAckRounds(nc)  # type: ignore[arg-type]
    payloads = [b"ok", b"dup", b"full", b"nostream", b"garbage", b"raise", b"silent"]
    results = await rounds.publish(
        [("ttp.tagged.c", p, {"Nats-Msg-Id": f"id-{i}"}) for i, p in enumerate(payloads)], 0.2
    )
    assert results[0] is None and results[1] is None  # stored, and dropped as a duplicate
    assert isinstance(results[2], nats.js.errors.APIError)
    assert results[2].err_code == 10077
    assert isinstance(results[3], nats.js.errors.NoStreamResponseError)
    assert isinstance(results[4], nats.js.errors.APIError)
    assert isinstance(results[5], ConnectionError)
    assert isinstance(results[6], NoPubAckError)
    # One subscription under the role's inbox prefix; each message its own reply subject.
    assert nc.subscribed == ["_INBOX_worker.abc.*.*"]
    replies = [reply for _, _, reply, _ in nc.sent]
    assert replies == [f"_INBOX_worker.abc.1.{i}" for i in (0, 1, 2, 3, 4, 6)]
    assert nc.sent[0][3] == {"Nats-Msg-Id": "id-0"}


async def test_a_puback_after_its_round_gave_up_changes_nothing() -> None:
    nc = AnsweringNats()
    rounds = PubAckRounds(nc)  # type: ignore[arg-type]
    [result] = await rounds.publish([("ttp.tagged.c", b"late", {})], 0.01)
    assert isinstance(result, NoPubAckError)
    again = asyncio.ensure_future(rounds.publish([("ttp.tagged.c", b"late", {})], 5.0))
    while len(nc.held) < 2:
        await asyncio.sleep(0)
    # The first round's answer comes while the second round waits: it is not the second's.
    nc.deliver(nc.held[0])
    nc.deliver(SimpleNamespace(subject="_INBOX_worker.abc.x.y", data=b"{}", headers=None))
    nc.deliver(SimpleNamespace(subject="_INBOX_worker.abc.2.7", data=b"{}", headers=None))
    await asyncio.sleep(0)
    assert not again.done()
    nc.deliver(nc.held[1])
    assert await again == [None]
    replies = [reply for _, _, reply, _ in nc.sent]
    assert replies == ["_INBOX_worker.abc.1.0", "_INBOX_worker.abc.2.0"]
    assert nc.sub._pending_size == 0 and nc.sub._pending_queue.empty()
    # Every answer read is marked done: nats-py's drain on shutdown waits for that.
    await asyncio.wait_for(nc.sub._pending_queue.join(), 1.0)


async def test_rounds_waited_for_together_each_get_their_answers() -> None:
    nc = AnsweringNats()
    rounds = PubAckRounds(nc)  # type: ignore[arg-type]
    first = await rounds.send([("ttp.tagged.c", b"late", {}), ("ttp.tagged.c", b"ok", {})])
    second = await rounds.send([("ttp.tagged.c", b"late", {})])
    waits = asyncio.gather(rounds.results(first, 5.0), rounds.results(second, 5.0))
    await asyncio.sleep(0.01)
    # Both answers of the late ones come at once: whichever waiter reads them settles both.
    nc.deliver(nc.held[1])
    nc.deliver(nc.held[0])
    assert await asyncio.wait_for(waits, 1.0) == [[None, None], [None]]


async def test_an_empty_round_publishes_nothing() -> None:
    nc = AnsweringNats()
    assert await PubAckRounds(nc).publish([], 1.0) == []  # type: ignore[arg-type]
    assert nc.sent == [] and nc.subscribed == []


class WritingNats(AnsweringNats):
    """Connected: a round is written as protocol commands into the send buffer."""

    is_connected = True
    max_payload = 1200

    def __init__(self) -> None:
        super().__init__()
        self.buffer: list[bytes] = []
        self.flushes = 0

    async def _send_command(self, data: bytes) -> None:
        self.buffer.append(data)

    async def _flush_pending(self) -> None:
        self.flushes += 1


async def test_a_connected_round_is_one_buffer_entry_of_hpub_commands() -> None:
    nc = WritingNats()
    rounds = PubAckRounds(nc)  # type: ignore[arg-type]
    round_ = await rounds.send(
        [
            ("ttp.tagged.c", b'{"a":1}', {"Nats-Msg-Id": "id-0", "traceparent": "00-x\r\nX: y"}),
            ("ttp.tagged.c", b"x" * 1200, {"Nats-Msg-Id": "id-1"}),  # over max_payload
        ]
    )
    assert nc.sent == [] and nc.flushes == 1
    [data] = nc.buffer
    head = b"NATS/1.0\r\nNats-Msg-Id: id-0\r\ntraceparent: 00-x  X: y\r\n\r\n"
    assert data == b'HPUB ttp.tagged.c _INBOX_worker.abc.1.0 %d %d\r\n%s{"a":1}\r\n' % (
        len(head),
        len(head) + 7,
        head,
    )
    nc.deliver(
        SimpleNamespace(
            subject="_INBOX_worker.abc.1.0", data=b'{"stream":"T","seq":1}', headers=None
        )
    )
    ok, too_large = await rounds.results(round_, 1.0)
    assert ok is None
    assert isinstance(too_large, nats.errors.MaxPayloadError)


# --------------------------------------------------------------------------------------------
# Pull batches
# --------------------------------------------------------------------------------------------


def event(n: int) -> SimpleNamespace:
    return SimpleNamespace(
        data=b'{"n":%d}' % n, headers=None, reply=f"$JS.ACK.TTP_EVENTS.w.1.{n}.{n}.0.0"
    )


def status(code: str) -> SimpleNamespace:
    return SimpleNamespace(data=b"", headers={"Status": code, "Description": "x"}, reply="")


class PullServer:
    """A pull subscription whose requests are answered from a list of ready events."""

    def __init__(self, ready: int) -> None:
        self.ready = [event(n) for n in range(ready)]
        self.requests: list[dict[str, Any]] = []
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.sub = SimpleNamespace(
            _nms="$JS.API.CONSUMER.MSG.NEXT.TTP_EVENTS.w",
            _deliver="_INBOX_worker.d",
            _sub=SimpleNamespace(_pending_queue=queue, _pending_size=0),
        )

    def deliver(self, msg: SimpleNamespace) -> None:
        self.sub._sub._pending_size += len(msg.data)
        self.sub._sub._pending_queue.put_nowait(msg)

    async def publish(self, subject: str, payload: bytes, reply: str) -> None:
        assert (subject, reply) == (self.sub._nms, self.sub._deliver)
        request = json.loads(payload)
        self.requests.append(request)
        batch, self.ready = self.ready[: request["batch"]], self.ready[request["batch"] :]
        for msg in batch:
            self.deliver(msg)
        if len(batch) < request["batch"] and request.get("no_wait"):
            self.deliver(status("404"))


async def test_a_no_wait_request_collects_what_is_there_and_stops_at_its_404() -> None:
    server = PullServer(ready=3)
    pull = PullBatches(server, server.sub)  # type: ignore[arg-type]
    msgs: list[Any] = []
    await pull.request(10)
    assert await pull.collect(msgs, 10, 1.0) == "404"
    assert [m.data for m in msgs] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert server.requests == [{"batch": 10, "no_wait": True}]
    assert server.sub._sub._pending_size == 0  # what was read no longer counts as pending
    await asyncio.wait_for(server.sub._sub._pending_queue.join(), 1.0)  # and is marked done


async def test_collect_stops_at_the_limit_and_leaves_the_rest_queued() -> None:
    server = PullServer(ready=0)
    pull = PullBatches(server, server.sub)  # type: ignore[arg-type]
    for n in range(5):
        server.deliver(event(n))
    server.deliver(status("100"))  # an idle heartbeat is skipped
    msgs: list[Any] = []
    assert await pull.collect(msgs, 3, 1.0) is None
    assert len(msgs) == 3 and server.sub._sub._pending_queue.qsize() == 3
    assert pull.take(10, msgs) is None and len(msgs) == 5


async def test_collect_waits_for_late_deliveries_until_its_timeout() -> None:
    server = PullServer(ready=0)
    pull = PullBatches(server, server.sub)  # type: ignore[arg-type]
    msgs: list[Any] = []
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, server.deliver, event(1))
    assert await pull.collect(msgs, 2, 0.1) is None
    assert len(msgs) == 1
    await pull.request(1, expires_s=1.0)
    assert server.requests[-1] == {"batch": 1, "expires": 999_900_000}


async def test_an_unexpected_status_raises_for_the_caller_to_bind_again() -> None:
    server = PullServer(ready=0)
    pull = PullBatches(server, server.sub)  # type: ignore[arg-type]
    server.deliver(status("400"))
    with pytest.raises(nats.js.errors.APIError):
        pull.take(5, [])
