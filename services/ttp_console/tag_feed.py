"""TTP_TAGS into the :class:`~ttp_console.tag_store.TagStore`: the last 7 days, then live.

One ephemeral pull consumer per console process (``AckPolicy none``, filter ``ttp.tagged.>``,
deliver by start time = now - 7 d), read in batches by a
:class:`~ttp_console.stream_reader.StreamReader`; after a NATS restart the new consumer starts
after the last stream sequence the store received, so nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from ttp_console.metrics import FeedMetrics, TagStoreMetrics
from ttp_console.stream_reader import FeedProgress, StreamReader
from ttp_console.tag_store import WEEK_S, TagStore
from ttp_core.contract import subjects

__all__ = ["TagFeed"]


class TagFeed:
    """Feeds a :class:`TagStore` from TTP_TAGS; :meth:`start` once, :meth:`stop` at the end."""

    def __init__(
        self,
        nc: Client,
        store: TagStore,
        *,
        window_s: float = WEEK_S,
        batch: int = 512,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._clock = clock
        self._window_s = window_s
        self._feed_metrics = FeedMetrics("tags")
        self._store_metrics = TagStoreMetrics()
        self._reader = StreamReader(
            nc,
            stream=subjects.STREAM_TAGS,
            filter_subject=f"{subjects.TAGGED_PREFIX}.>",
            first_config=self._from_window_start,
            handle=self._handle,
            name="tag-feed",
            batch=batch,
            after_round=self.update_metrics,
        )

    def _from_window_start(self) -> ConsumerConfig:
        return ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(self._clock() - self._window_s, UTC),
        )

    def _handle(self, _subject: str, data: bytes) -> None:
        self.store.ingest(data, self._clock())

    def update_metrics(self) -> None:
        """Bring the console's tag and feed metrics up to the store and the reader (after
        each pull round)."""
        self._feed_metrics.update(self._reader.progress)
        self._store_metrics.update(self.store.stats())

    def start(self) -> None:
        """Start reading in a task of the running loop."""
        self._reader.start()

    async def stop(self) -> None:
        """Stop reading and delete the consumer."""
        await self._reader.stop()

    @property
    def progress(self) -> FeedProgress:
        return self._reader.progress

    @property
    def caught_up(self) -> bool:
        """Everything TTP_TAGS held in the window has been read once."""
        return self._reader.progress.caught_up

    async def wait_caught_up(self, timeout: float | None = None) -> bool:
        return await self._reader.wait_caught_up(timeout)
