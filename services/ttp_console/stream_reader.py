"""Reading one JetStream stream through an ephemeral pull consumer that acknowledges nothing.

Both of the console's feeds (tags, rules) read this way: the consumer is created by the
console with ``AckPolicy none`` and an inactivity threshold (the server removes it when the
console is gone), messages come in batches, and the loop yields between batches so page
requests are served while a week of tags loads.

A NATS restart, a lost consumer or a JetStream hiccup never ends the reader: it notices (a
failed fetch, or a consumer that no longer answers to its info request while idle), waits a
little, and creates a new consumer from where it stopped (:meth:`StreamReader.resume_config`
of the last stream sequence handed over). :meth:`stop` ends it and deletes the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ttp_runtime import nats_wire
from ttp_runtime.pull import PullBatches

__all__ = ["FeedProgress", "StreamReader"]

_log = logging.getLogger(__name__)

INACTIVE_THRESHOLD_S: Final = 300.0
"""The server deletes a consumer nobody pulled from for this long (a console that died)."""
FETCH_TIMEOUT_S: Final = 1.0
RETRY_MIN_S: Final = 0.2
RETRY_MAX_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class FeedProgress:
    """Where a feed stands: for the readiness probe and the pages' status line."""

    loaded: int
    """Messages handed to the feed's handler since it started."""
    pending: int | None
    """Messages the consumer still holds for the feed (None: not known yet)."""
    caught_up: bool
    """The feed has read everything the stream held at least once."""
    restarts: int
    """Consumers recreated after a failure (NATS restart, lost consumer)."""
    last_sequence: int
    error: str | None
    """The last failure, while the feed is recovering from it; None when reading."""


class StreamReader:
    """Pulls one stream's messages into ``handle(subject, data)``, batch by batch."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        filter_subject: str,
        first_config: Callable[[], ConsumerConfig],
        handle: Callable[[str, bytes], object],
        name: str,
        batch: int = 512,
        resume_from_sequence: bool = True,
        after_round: Callable[[], object] | None = None,
    ) -> None:
        """``first_config`` gives the deliver policy of the first consumer (called at each
        start); after a failure the new consumer starts after the last sequence handed over
        when ``resume_from_sequence``, else with ``first_config`` again. ``after_round`` is
        called after each pull round and each failure (the feeds update their metrics there,
        once per batch rather than per message)."""
        self._nc = nc
        self._js = nc.jetstream()
        self.stream = stream
        self.filter_subject = filter_subject
        self._first_config = first_config
        self._handle = handle
        self.name = name
        self.batch = batch
        self._resume = resume_from_sequence
        self._after_round = after_round
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._sub: Any = None
        self._consumer: str | None = None
        self._loaded = 0
        self._pending: int | None = None
        self._caught_up = asyncio.Event()
        self._restarts = 0
        self._last_sequence = 0
        self._error: str | None = None

    # ---------------------------------------------------------------------------- control

    def start(self) -> None:
        """Start reading in a task of the running loop (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"ttp-console-{self.name}")

    async def stop(self) -> None:
        """Stop reading and delete the consumer (best effort: it also expires by itself)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drop_consumer()

    @property
    def progress(self) -> FeedProgress:
        return FeedProgress(
            loaded=self._loaded,
            pending=self._pending,
            caught_up=self._caught_up.is_set(),
            restarts=self._restarts,
            last_sequence=self._last_sequence,
            error=self._error,
        )

    async def wait_caught_up(self, timeout: float | None = None) -> bool:
        """True once the feed has caught up (False when ``timeout`` passed first)."""
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def resume_config(self) -> ConsumerConfig:
        """The consumer to create after a failure."""
        if self._resume and self._last_sequence:
            return ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._last_sequence + 1,
            )
        return self._first_config()

    # ---------------------------------------------------------------------------- loop

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        config = self._first_config()
        while not self._stopping.is_set():
            try:
                await self._open(config)
                self._error = None
                delay = RETRY_MIN_S
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: recreate the consumer, never give up
                if self._stopping.is_set() or self._nc.is_closed:
                    return
                self._error = f"{type(exc).__name__}: {exc}"
                _log.warning(
                    "%s: reading %s failed (%s); new consumer in %.1f s",
                    self.name,
                    self.stream,
                    self._error,
                    delay,
                )
                await self._drop_consumer()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(RETRY_MAX_S, delay * 2)
                self._restarts += 1
                self._report()
                config = self.resume_config()

    async def _open(self, config: ConsumerConfig) -> None:
        config.name = f"ttp-console-{uuid.uuid4().hex}"
        config.ack_policy = AckPolicy.NONE
        config.inactive_threshold = INACTIVE_THRESHOLD_S
        config.filter_subject = self.filter_subject
        config.mem_storage = True
        config.num_replicas = 1
        info = await self._js.add_consumer(self.stream, config=config)
        self._consumer = config.name
        self._pending = info.num_pending
        if not info.num_pending:
            self._caught_up.set()
        # An empty stream is caught up now, not when the first pull round expires.
        self._report()

    async def _read(self) -> None:
        """Pull requests of ``batch`` messages, taken off the pull subscription's queue.

        nats-py's ``fetch`` waits for each message of a batch with a task and a timer of its
        own, several times the cost of the message; :class:`PullBatches` reads the queue
        directly. Deliveries are handed over as they come (a live tag reaches the pages
        without waiting for its round to end), and the next request goes out once a batch
        is complete or the server ended the request (no messages before it expired).
        """
        consumer = self._consumer or ""
        self._sub = await self._js.pull_subscribe_bind(consumer=consumer, stream=self.stream)
        pull = PullBatches(self._nc, self._sub)
        loop = asyncio.get_running_loop()
        idle_rounds = 0
        while not self._stopping.is_set():
            await pull.request(self.batch, expires_s=FETCH_TIMEOUT_S)
            # A request lost to a reconnect is never answered: ask again after this.
            deadline = loop.time() + FETCH_TIMEOUT_S + 1.0
            received = 0
            while received < self.batch:
                msgs: list[Msg] = []
                ended = pull.take(self.batch - received, msgs) is not None
                if not msgs and not ended:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    ended = await pull.collect(msgs, 1, remaining) is not None
                    if not msgs and not ended:
                        break  # the request was lost
                for msg in msgs:
                    self._take(msg.subject, msg.reply, msg.data)
                received += len(msgs)
                if ended:
                    break  # no messages (404), expired (408), or a conflict (409)
            if received:
                idle_rounds = 0
            else:
                # Nothing new: the consumer may also be gone (server restarted, or removed
                # while we were cut off), which a pull does not report; ask now and then.
                idle_rounds += 1
                if idle_rounds % 3 == 0:
                    info = await self._js.consumer_info(self.stream, consumer)
                    self._pending = info.num_pending
            if self._pending == 0:
                self._caught_up.set()
            self._report()
            # Let page requests in between batches, however many are waiting.
            await asyncio.sleep(0)

    def _report(self) -> None:
        if self._after_round is not None:
            try:
                self._after_round()
            except Exception:
                # Metrics that cannot be updated are no reason to stop reading.
                _log.exception("%s: updating its metrics failed", self.name)

    def _take(self, subject: str, reply: str, data: bytes) -> None:
        counters = nats_wire.ack_counters(reply)
        if counters is None:
            return  # not a JetStream delivery
        try:
            sequence, pending = int(counters[1]), int(counters[2])
        except ValueError:
            return
        self._last_sequence = sequence
        self._pending = pending
        self._loaded += 1
        try:
            self._handle(subject, data)
        except Exception:
            # The handlers count what they cannot use; one that raises is a bug, not a
            # reason to stop reading.
            _log.exception("%s: handling %s failed", self.name, subject)

    async def _drop_consumer(self) -> None:
        sub, self._sub = self._sub, None
        consumer, self._consumer = self._consumer, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._js.delete_consumer(self.stream, consumer), 2.0)
