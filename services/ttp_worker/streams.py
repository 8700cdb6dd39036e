"""The streams a worker needs before it consumes: create the missing ones, or wait for them.

The master owns the streams' configuration (it creates or updates them at start). On an open
server a worker that starts first creates the missing streams with the same defaults, so it
can start consuming. A worker that logs in (a NATS user, token or creds file) runs under
accounts such as the shipped ones (ttp_runtime/nats_accounts.conf), where only the master
may create streams: it does not try, and waits for the master. Should a creation be refused
anyway, the server reports a permissions violation, which the client passes only to its
error callback while the request itself would just time out: :class:`StreamWait` hears that
refusal at once and waits for the master too. Waiting, it looks the streams up once a second
until they all exist, and says plainly what it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Final

import nats.js.errors
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from ttp_runtime.nats import ensure_stream

__all__ = ["StreamWait"]

_log = logging.getLogger(__name__)

_CREATE_REFUSED: Final = re.compile(
    r"permissions violation for publish to .*\.stream\.create\.", re.IGNORECASE
)
"""How nats-py reports the server's refusal of a stream-create request (to ``error_cb``)."""


class StreamWait:
    """Make sure every stream of `configs` exists; create it or wait for the master."""

    def __init__(
        self,
        js: JetStreamContext,
        configs: Sequence[StreamConfig],
        *,
        may_create: bool,
        retry_s: float = 1.0,
    ) -> None:
        self._js = js
        self._configs = list(configs)
        self._retry_s = retry_s
        self._may_create = may_create
        self._refused = asyncio.Event()

    @property
    def creation_refused(self) -> bool:
        """The server refused this worker the creation of a stream."""
        return self._refused.is_set()

    def note_error(self, error: Exception) -> bool:
        """Hear a refusal of stream creation among the client's asynchronous errors; True if
        `error` was one (give it every error the client's ``error_cb`` receives)."""
        if _CREATE_REFUSED.search(str(error)) is None:
            return False
        self._refused.set()
        return True

    async def run(self, stop: asyncio.Event) -> bool:
        """Return True once every stream exists, False if `stop` was set first."""
        waiting_for: list[str] = []
        while not stop.is_set():
            try:
                missing = await self._missing()
                if not missing:
                    if waiting_for:
                        _log.info("the master created the JetStream streams; starting")
                    return True
                if self._may_create and not self.creation_refused:
                    await self._create(missing[0])
                    continue
                names = [c.name or "" for c in missing]
                if names != waiting_for:
                    why = (
                        "the server refused this worker stream creation"
                        if self.creation_refused
                        else "this worker logs in as a NATS user and leaves stream creation to"
                        " the master"
                    )
                    _log.warning(
                        "%s; waiting for the master to create %s",
                        why,
                        ", ".join(names),
                        extra={"streams": names},
                    )
                    waiting_for = names
            except Exception as exc:
                _log.warning("cannot check the JetStream streams (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._retry_s)
        return False

    async def _missing(self) -> list[StreamConfig]:
        missing = []
        for config in self._configs:
            assert config.name is not None
            try:
                await self._js.stream_info(config.name)
            except nats.js.errors.NotFoundError:
                missing.append(config)
        return missing

    async def _create(self, config: StreamConfig) -> None:
        """Create one stream; give up at once (no request timeout) if the server refuses."""
        create = asyncio.ensure_future(ensure_stream(self._js, config))
        refused = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({create, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            if not create.done():
                create.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await create
        if not create.cancelled():
            create.result()
