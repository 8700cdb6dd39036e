"""Batches of messages from a pull consumer, read straight off the subscription queue.

The worker takes events from the shared durable consumer this way, the console its feeds
from its own ephemeral consumers.

nats-py's `PullSubscription.fetch` waits for each message of a batch on its own: a uuid, a
task and a `wait_for` timer per message, several times the cost of the message itself. A
batch needs one pull request and one wait for what is not there yet, so this reads the
queue the pull subscription's deliveries land in (nats-py 2.x internals, pinned by the
lock: `_nms`, `_deliver`, `_sub._pending_queue`, `_sub._pending_size`) with the request
protocol nats-py uses (`batch`, `expires`, `no_wait`).

What is queued but not handed out yet (deliveries that came after a batch was complete)
stays queued for the next batch, where the caller's leftover handling finds it too.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

_STATUS: Final = "Status"
_DESCRIPTION: Final = "Description"
# No messages (404), request timeout (408) and conflicts (409, e.g. the request was replaced
# or the consumer's limits were met) end a request; 100 is an idle heartbeat.
_ENDS_REQUEST: Final = frozenset({"404", "408", "409"})
_HEARTBEAT: Final = "100"
_REQUEST: Final = msgspec.json.Encoder()


class PullBatches:
    """Pull requests and batch collection over one nats-py pull subscription."""

    def __init__(self, nc: Client, sub: Any) -> None:
        self._nc = nc
        self.subscription = sub
        self._inner = sub._sub
        self._queue: asyncio.Queue[Msg] = self._inner._pending_queue

    def take(self, limit: int, into: list[Msg]) -> str | None:
        """Move queued messages into `into` (up to `limit` in all); the status that ended a
        request if one was met on the way (it is consumed), else None."""
        queue = self._queue
        while len(into) < limit and not queue.empty():
            status = self._accept(queue.get_nowait(), into)
            if status is not None:
                return status
        return None

    async def request(self, batch: int, *, expires_s: float | None = None) -> None:
        """Ask for up to `batch` messages: waiting up to `expires_s` for the first, or (None)
        only those there right now (`no_wait`: the server ends the request with a 404)."""
        body: dict[str, Any] = {"batch": batch}
        if expires_s is None:
            body["no_wait"] = True
        else:
            # Expire just before the caller stops waiting, as nats-py does.
            body["expires"] = max(1, int(expires_s * 1_000_000_000) - 100_000)
        await self._nc.publish(
            self.subscription._nms, _REQUEST.encode(body), self.subscription._deliver
        )

    async def collect(self, into: list[Msg], limit: int, timeout: float) -> str | None:
        """Add messages to `into` until it holds `limit`, a request ends (its status is
        returned) or `timeout` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(into) < limit:
            status = self.take(limit, into)
            if status is not None or len(into) >= limit:
                return status
            try:
                msg = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
            except TimeoutError:
                return None
            status = self._accept(msg, into)
            if status is not None:
                return status
        return None

    def _accept(self, msg: Msg, into: list[Msg]) -> str | None:
        # nats-py counts queued bytes against the subscription's limit until read, and its
        # drain waits until every queued message was marked done.
        self._inner._pending_size -= len(msg.data)
        self._queue.task_done()
        status = _status(msg)
        if status is None:
            into.append(msg)
            return None
        if status == _HEARTBEAT:
            return None
        if status not in _ENDS_REQUEST:
            # Not a normal end of a request (a bad request, a deleted consumer ...): the
            # caller binds the consumer again, as it does for nats-py's fetch errors.
            description = (msg.headers or {}).get(_DESCRIPTION)
            code = int(status) if status.isdigit() else None
            raise nats.js.errors.APIError(code=code, description=description)
        return status


def _status(msg: Msg) -> str | None:
    headers = msg.headers
    if headers is None or msg.data:
        return None
    return headers.get(_STATUS)
