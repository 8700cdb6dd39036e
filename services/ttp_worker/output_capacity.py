"""Whether the streams a worker writes to (TTP_TAGS, TTP_DEADLETTER) still take messages.

Both refuse new messages at their size limit (discard new). The event consumer then holds
its batch and retries in place, so nothing is lost; this probe makes the condition visible:
`/readyz` answers 503 naming the stream, and `ttp_worker_stream_full` is 1, until an
operator frees space (docs/operations.md, "A stream is full").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from ttp_core.contract import subjects
from ttp_runtime.stream_capacity import has_room
from ttp_worker import metrics

_log = logging.getLogger(__name__)

OUTPUT_STREAMS: Final = (subjects.STREAM_TAGS, subjects.STREAM_DEADLETTER)
PROBE_INTERVAL_S: Final = 2.0


class OutputCapacity:
    """Polls the output streams' fill; `problem()` is None while both have room."""

    def __init__(self, js: JetStreamContext, interval_s: float = PROBE_INTERVAL_S) -> None:
        self._js = js
        self._interval_s = interval_s
        self.full: set[str] = set()

    def problem(self) -> str | None:
        """Why tags cannot be stored right now, or None."""
        if not self.full:
            return None
        names = ", ".join(sorted(self.full))
        return f"{names} full: tags cannot be stored; events are held until space is freed"

    async def check(self) -> None:
        """One stream info per output stream; a stream that cannot be read keeps its state."""
        for name in OUTPUT_STREAMS:
            try:
                info = await self._js.stream_info(name)
            except (nats.errors.Error, nats.js.errors.Error, OSError):
                continue
            full = not has_room(info)
            metrics.STREAM_FULL.labels(name).set(int(full))
            if full and name not in self.full:
                self.full.add(name)
                _log.error(
                    "stream %s is full: tags and dead letters are held until space is freed",
                    name,
                    extra={"stream": name},
                )
            elif not full and name in self.full:
                self.full.discard(name)
                _log.info("stream %s has room again", name, extra={"stream": name})

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `interval_s` until `stop`."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception:
                _log.exception("checking the output streams failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
