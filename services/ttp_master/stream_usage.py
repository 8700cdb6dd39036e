"""How full each stream is, as metrics and one log line per change (docs/operations.md).

Every stream refuses new messages at its limit (discard new): producers and workers get an
error rather than losing data silently. The master, which owns the streams' configuration,
is where an operator reads how close each one is to that limit.
"""

from __future__ import annotations

import logging
from typing import Final

import nats.js.errors
from nats.js.client import JetStreamContext

from ttp_core.contract import subjects
from ttp_master import metrics
from ttp_runtime.stream_capacity import has_room, usage

_log = logging.getLogger(__name__)

STREAMS: Final = (
    subjects.STREAM_RULES,
    subjects.STREAM_EVENTS,
    subjects.STREAM_TAGS,
    subjects.STREAM_DEADLETTER,
)


class StreamUsage:
    """Reads the four streams' fill and reports it; remembers which ones are full."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.full: set[str] = set()

    async def check(self) -> None:
        """One stream info per stream: set the gauges, log each stream that fills or frees."""
        for name in STREAMS:
            try:
                info = await self._js.stream_info(name)
            except nats.js.errors.NotFoundError:
                continue
            metrics.STREAM_USAGE.labels(name).set(round(usage(info), 4))
            full = not has_room(info)
            metrics.STREAM_FULL.labels(name).set(int(full))
            if full and name not in self.full:
                self.full.add(name)
                _log.error(
                    "stream %s is full (%d bytes, %d messages; limits %s bytes, %s messages):"
                    " publishes to it are refused until an operator frees space",
                    name,
                    info.state.bytes,
                    info.state.messages,
                    info.config.max_bytes,
                    info.config.max_msgs,
                    extra={"stream": name},
                )
            elif not full and name in self.full:
                self.full.discard(name)
                _log.info("stream %s has room again", name, extra={"stream": name})
