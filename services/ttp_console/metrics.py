"""The console's Prometheus metrics (documented in docs/operations.md).

The tag feed ingests tens of thousands of messages a second while a week of tags loads, so
the store's and the feeds' metrics are not touched per message: :class:`TagStoreMetrics` and
:class:`FeedMetrics` move them to the counts the store and the readers keep anyway, once per
pull round of a feed (a batch of up to 512 messages, or about a second when idle). Logins,
live streams and control requests are rare and counted where they happen.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge
from pydantic import BaseModel

from ttp_console.stream_reader import FeedProgress
from ttp_console.tag_store import DropReason, StoreStats
from ttp_core.contract.control import Endpoint
from ttp_runtime.control_client import ControlClient, ControlClientError

__all__ = [
    "FEEDS",
    "LIVE_REFUSALS",
    "CountedControlClient",
    "FeedMetrics",
    "TagStoreMetrics",
]

FEEDS: Final = ("tags", "rules")
"""The ``feed`` label's values: TTP_TAGS and TTP_RULES."""
LIVE_REFUSALS: Final = ("user_cap", "console_cap", "shutting_down")
"""The ``reason`` label's values of refused live streams: the user already holds its cap of
streams (429), the console holds its cap for everyone (503), or it is stopping (503)."""

TAG_MESSAGES = Counter(
    "ttp_console_tag_messages_total", "Tag messages read from TTP_TAGS into the tag store."
)
TAGS_INGESTED = Counter(
    "ttp_console_tags_ingested_total", "Tags counted into the tag store's windows."
)
TAGS_DROPPED = Counter(
    "ttp_console_tags_dropped_total",
    "Tags the tag store did not count (or not under their attacker), by reason.",
    ["reason"],
)  # reason: the store's DropReason values
ATTACKERS = Gauge("ttp_console_attackers", "Attackers the tag store holds.")
ATTACKERS_EVICTED = Counter(
    "ttp_console_attackers_evicted_total",
    "Attackers the tag store forgot to stay within its cap (least recently seen first).",
)
FEED_CAUGHT_UP = Gauge(
    "ttp_console_feed_caught_up",
    "1 once a feed has read everything its stream held at least once.",
    ["feed"],
)  # feed: tags, rules
FEED_RESTARTS = Counter(
    "ttp_console_feed_restarts_total",
    "Consumers a feed recreated after a failure (NATS restart, lost consumer).",
    ["feed"],
)
LIVE_STREAMS = Gauge("ttp_console_live_streams", "Live-tag streams open to browsers.")
LIVE_STREAMS_REFUSED = Counter(
    "ttp_console_live_streams_refused_total",
    "Live-tag streams refused, by reason.",
    ["reason"],
)  # reason: LIVE_REFUSALS
LIVE_ROWS_DROPPED = Counter(
    "ttp_console_live_rows_dropped_total",
    "Live-tag rows dropped because a browser read its stream too slowly.",
)
LOGINS = Counter(
    "ttp_console_logins_total", "Login attempts, by outcome.", ["outcome"]
)  # outcome: the LoginOutcome values (ok, wrong, throttled, busy, unavailable)
CONTROL_REQUESTS = Counter(
    "ttp_console_control_requests_total",
    "Control requests the console sent to the master, by endpoint and outcome.",
    ["endpoint", "outcome"],
)  # outcome: ok or the error code

for _reason in DropReason:
    TAGS_DROPPED.labels(reason=_reason.value)
for _refusal in LIVE_REFUSALS:
    LIVE_STREAMS_REFUSED.labels(reason=_refusal)
for _feed in FEEDS:
    FEED_CAUGHT_UP.labels(feed=_feed)
    FEED_RESTARTS.labels(feed=_feed)


class TagStoreMetrics:
    """Moves the tag store's metrics to its :class:`StoreStats` (counters by the growth since
    the last update), so ingestion itself never touches a metric."""

    def __init__(self) -> None:
        self._messages = 0
        self._tags = 0
        self._evicted = 0
        self._dropped: dict[str, int] = {}
        self._dropped_children = {r.value: TAGS_DROPPED.labels(reason=r.value) for r in DropReason}

    def update(self, stats: StoreStats) -> None:
        """Bring the metrics up to ``stats`` (of the one store this object follows)."""
        _grow(TAG_MESSAGES, stats.messages - self._messages)
        self._messages = stats.messages
        _grow(TAGS_INGESTED, stats.tags - self._tags)
        self._tags = stats.tags
        _grow(ATTACKERS_EVICTED, stats.attackers_evicted - self._evicted)
        self._evicted = stats.attackers_evicted
        ATTACKERS.set(stats.attackers)
        for reason, count in stats.dropped.items():
            child = self._dropped_children.get(reason)
            if child is not None:
                _grow(child, count - self._dropped.get(reason, 0))
                self._dropped[reason] = count


class FeedMetrics:
    """Moves one feed's metrics (``feed`` = tags or rules) to its reader's progress."""

    def __init__(self, feed: str) -> None:
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}")
        self._caught_up = FEED_CAUGHT_UP.labels(feed=feed)
        self._restarts_counter = FEED_RESTARTS.labels(feed=feed)
        self._restarts = 0

    def update(self, progress: FeedProgress) -> None:
        self._caught_up.set(1 if progress.caught_up else 0)
        _grow(self._restarts_counter, progress.restarts - self._restarts)
        self._restarts = progress.restarts


class CountedControlClient(ControlClient):
    """The control client the pages use, counting each request by endpoint and outcome."""

    async def call(
        self, endpoint: Endpoint, request: BaseModel, *, timeout_s: float | None = None
    ) -> BaseModel:
        try:
            result = await super().call(endpoint, request, timeout_s=timeout_s)
        except ControlClientError as exc:
            CONTROL_REQUESTS.labels(endpoint=endpoint.value, outcome=exc.code.value).inc()
            raise
        CONTROL_REQUESTS.labels(endpoint=endpoint.value, outcome="ok").inc()
        return result


def _grow(counter: Counter, amount: int) -> None:
    # A counter only grows; a count that went down (never expected) is skipped, not raised.
    if amount > 0:
        counter.inc(amount)
