"""JetStream publishes of a whole batch at once, with their PubAcks matched here.

nats-py's `js.publish` makes each message a request of its own: a semaphore wait, a future
with a done callback, a random token and a JSON parse of every PubAck into a dataclass. A
process publishing a batch (the worker's tags, the master's outbox relay) needs none of
that per message: every message of a round goes out with the reply subject
`<inbox>.<round>.<index>`, one subscription on `<inbox>.*.*` (under the connection's inbox
prefix, which is all a role may subscribe to) reads the PubAcks, and the round is over when
each message has its answer or the time is up. A PubAck arriving after its round gave up is
ignored: the message is published again in a later round, with the same `Nats-Msg-Id`, so
the stream keeps one copy.

The subscription has no callback: whoever waits for a round reads its queue (nats-py 2.x
internals, pinned by the lock: `_pending_queue`, `_pending_size`), which spares a task
switch and a coroutine per PubAck; answers to other rounds found there are settled too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ttp_runtime import nats_wire as wire

_STATUS_HEADER: Final = "Status"
_NO_RESPONDERS: Final = "503"


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class _PubAck(msgspec.Struct):
    """A PubAck (`stream`, `seq`, maybe `duplicate`) or a JetStream error; more is ignored."""

    stream: str | None = None
    seq: int | None = None
    error: _ApiError | None = None


_PUBACK: Final = msgspec.json.Decoder(_PubAck)

Outbound = tuple[str, bytes, dict[str, str]]
"""(subject, payload, headers) of one message."""


class NoPubAckError(TimeoutError):
    """The server did not answer a publish in time."""


# A message of a round whose PubAck has not come (yet).
_WAITING: Final = NoPubAckError("no PubAck in time")


class Round:
    """The publishes of one round and their answers as they come."""

    __slots__ = ("answered_at", "done", "name", "remaining", "results", "sent_at")

    def __init__(self, name: str, size: int, done: asyncio.Future[None]) -> None:
        self.name = name
        self.results: list[BaseException | None] = [_WAITING] * size
        self.remaining = size
        self.done = done
        self.sent_at = time.perf_counter()
        self.answered_at: float | None = None
        """When the last answer came (None: not all did)."""

    def settle(self, index: int, error: BaseException | None) -> None:
        if self.results[index] is not _WAITING:
            return  # answered already (a reply cannot come twice, but be sure)
        self.results[index] = error
        self.remaining -= 1
        if self.remaining == 0:
            self.answered_at = time.perf_counter()
            if not self.done.done():
                self.done.set_result(None)


class PubAckRounds:
    """Publishes rounds of JetStream messages on one connection and collects their PubAcks."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._sub: Subscription | None = None
        self._prefix = ""
        self._rounds: dict[str, Round] = {}
        self._next = 0

    async def _subscribe(self) -> None:
        # nats-py subscribes again after a reconnect, so one subscription lasts.
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._prefix}.*.*")

    async def publish(
        self, messages: Sequence[Outbound], timeout: float
    ) -> list[BaseException | None]:
        """Publish every message; per message None once its PubAck said stored (or a
        duplicate), else why not (an error from the server, or no answer within `timeout`).
        """
        return await self.results(await self.send(messages), timeout)

    async def send(self, messages: Sequence[Outbound]) -> Round:
        """Publish every message; their answers are collected from now on (see `results`)."""
        if self._sub is None and messages:
            await self._subscribe()
        self._next += 1
        name = str(self._next)
        round_ = Round(name, len(messages), asyncio.get_running_loop().create_future())
        if not messages:
            round_.done.set_result(None)
            return round_
        self._rounds[name] = round_
        reply_base = f"{self._prefix}.{name}."
        nc = self._nc
        if not wire.ready(nc):
            # Reconnecting or stopping: nats-py buffers or refuses each message.
            for index, (subject, payload, headers) in enumerate(messages):
                reply = f"{reply_base}{index}"
                try:
                    await nc.publish(subject, payload, reply=reply, headers=headers)
                except Exception as exc:
                    round_.settle(index, exc)
            return round_
        limit = nc.max_payload
        commands: list[bytes] = []
        for index, (subject, payload, headers) in enumerate(messages):
            try:
                commands.append(wire.hpub(subject, f"{reply_base}{index}", headers, payload, limit))
            except nats.errors.MaxPayloadError as exc:
                round_.settle(index, exc)
        try:
            await wire.send(nc, commands)
        except Exception as exc:
            for index in range(len(messages)):
                round_.settle(index, exc)
        return round_

    async def results(self, round_: Round, timeout: float) -> list[BaseException | None]:
        """Per message of a sent round: None once its PubAck said stored (or a duplicate),
        else why not (an error from the server, or no answer within `timeout` from now).
        Answers coming later are ignored."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                self._read_queued()
                left = deadline - loop.time()
                if not round_.remaining or left <= 0:
                    break
                await self._wait(round_, left)
        finally:
            self._rounds.pop(round_.name, None)
        results = round_.results
        if round_.remaining:
            for index, result in enumerate(results):
                if result is _WAITING:
                    results[index] = NoPubAckError("no PubAck in time")
        return results

    def _read_queued(self) -> None:
        sub: Any = self._sub
        if sub is None:
            return
        queue = sub._pending_queue
        while not queue.empty():
            msg = queue.get_nowait()
            self._taken(sub, msg)

    async def _wait(self, round_: Round, timeout: float) -> None:
        """Until something is queued, the round is settled (by another waiter) or `timeout`."""
        sub: Any = self._sub
        queue: asyncio.Queue[Msg] = sub._pending_queue
        getter = asyncio.ensure_future(queue.get())
        waits: list[asyncio.Future[Any]] = [getter, round_.done]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if getter.done() and not getter.cancelled():
                self._taken(sub, getter.result())
            else:
                # A cancelled get leaves its message in the queue, for the next read.
                getter.cancel()

    def _taken(self, sub: Any, msg: Msg) -> None:
        # nats-py counts queued bytes against the subscription's limit until read, and its
        # drain (on shutdown) waits until every queued message was marked done.
        sub._pending_size -= len(msg.data)
        sub._pending_queue.task_done()
        self._on_reply(msg)

    async def close(self) -> None:
        """Unsubscribe from the replies (rounds still waiting get no more answers)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _on_reply(self, msg: Msg) -> None:
        name, _, index_text = msg.subject[len(self._prefix) + 1 :].partition(".")
        round_ = self._rounds.get(name)
        if round_ is None:
            return  # a round that gave up: its messages are published again
        try:
            index = int(index_text)
        except ValueError:
            return
        if 0 <= index < len(round_.results):
            round_.settle(index, _error_of(msg))


def _error_of(msg: Msg) -> BaseException | None:
    """None if `msg` is a PubAck, else the error it stands for."""
    headers = msg.headers
    if headers and headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
        return nats.js.errors.NoStreamResponseError()
    try:
        ack = _PUBACK.decode(msg.data)
    except msgspec.DecodeError:
        return nats.js.errors.APIError(description=f"not a PubAck: {msg.data[:200]!r}")
    if ack.error is not None:
        error = ack.error
        return nats.js.errors.APIError(
            code=error.code, description=error.description, err_code=error.err_code
        )
    if ack.stream is None or ack.seq is None:
        return nats.js.errors.APIError(description=f"not a PubAck: {msg.data[:200]!r}")
    return None
