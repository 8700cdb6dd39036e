"""Wire the console's adapters and run it (the one bootstrap of ttp-console).

Lifecycle: serve health, connect to NATS as the console role (reconnecting forever), build
the control client, the tag store and the two feeds (TTP_TAGS, TTP_RULES), the app, then
serve the UI with uvicorn inside this same event loop. Ready once NATS is connected and both
feeds have caught up with their streams once. On SIGTERM: the UI stops taking connections,
open pages (live-tag streams included) get a short grace and are then closed, the feeds stop,
NATS is drained, and the process exits 0 well within 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import uvicorn
from nats.aio.client import Client
from starlette.applications import Starlette

from ttp_console.app import console_templates, create_app
from ttp_console.context import ConsoleContext
from ttp_console.metrics import CountedControlClient
from ttp_console.pages import close_live_streams
from ttp_console.rule_feed import RuleFeed
from ttp_console.settings import ConsoleSettings
from ttp_console.tag_feed import TagFeed
from ttp_console.tag_store import TagStore
from ttp_core.attack.catalogue import load_catalogue
from ttp_runtime.health import HealthServer, local_url
from ttp_runtime.logging import configure_logging
from ttp_runtime.nats import connect, drain
from ttp_runtime.service import first_completed, run_until_signalled
from ttp_runtime.tracing import configure_tracing

__all__ = ["SHUTDOWN_GRACE_S", "Console", "ConsoleServer", "run"]

_log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S: Final = 9.0
# How long open responses (a live-tag stream never ends by itself) may go on after SIGTERM.
_HTTP_GRACE_S: Final = 2
_FEED_STOP_S: Final = 2.0


class ConsoleServer(uvicorn.Server):
    """uvicorn's server without its own signal handlers: the service's (see
    :func:`ttp_runtime.service.run_until_signalled`) stop everything in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_config(app: object, settings: ConsoleSettings) -> uvicorn.Config:
    """uvicorn's configuration for the console UI.

    ``proxy_headers=False``: the peer address must be the socket's, never one an
    ``X-Forwarded-For`` header claims, since proxy mode trusts user headers by that address.
    """
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.console_host,
        port=settings.console_port,
        proxy_headers=False,
        server_header=False,
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=_HTTP_GRACE_S,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """The UI's listening socket; ``OSError`` when the address is taken or wrong.

    Bound here rather than by uvicorn, which exits the whole process on a bind error.
    """
    family, kind, proto, _name, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def console_url(sock: socket.socket, host: str) -> str:
    """The URL the UI is reached at on this machine (the bound port when 0 was asked)."""
    return f"{local_url(host, sock.getsockname()[1])}/"


async def _freeze_once_caught_up(tag_feed: TagFeed, rule_feed: RuleFeed) -> None:
    """Once the feeds have read what the streams held, move it all out of the cyclic
    collector's sight (:func:`gc.freeze`).

    The week of tags read at start lives until its windows age out; every full collection
    walked all of it (50-180 ms of CPU, the matrix pages' p99 tail with 1,000,000 tags).
    Frozen objects are still freed by reference counting when the store evicts them."""
    await tag_feed.wait_caught_up()
    await rule_feed.wait_caught_up()
    gc.collect()
    gc.freeze()
    _log.info("feeds caught up", extra={"frozen_objects": gc.get_freeze_count()})


@dataclass
class ConsoleState:
    """What probes and tests read."""

    nc: Client | None = None
    tag_feed: TagFeed | None = None
    rule_feed: RuleFeed | None = None
    caught_up_once: bool = False
    url: str | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def readiness(self) -> tuple[bool, str]:
        if self.nc is None or not self.nc.is_connected:
            return False, "not connected to NATS"
        if not self.caught_up_once:
            feeds = (self.tag_feed, self.rule_feed)
            if any(feed is None or not feed.caught_up for feed in feeds):
                return False, "reading TTP_TAGS and TTP_RULES"
            self.caught_up_once = True
        return True, "connected, tags and rules read"


class Console:
    """One console process: adapters wired to the app."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.state = ConsoleState()
        self.server: ConsoleServer | None = None

    def request_stop(self) -> None:
        self.state.stop.set()

    def _build_app(self, nc: Client) -> Starlette:
        """The app over the console's adapters (feeds made, not started)."""
        catalogue = load_catalogue()
        tags = TagStore(catalogue)
        tag_feed = self.state.tag_feed = TagFeed(nc, tags)
        self.state.rule_feed = RuleFeed(nc)
        context = ConsoleContext(
            settings=self.settings,
            control=CountedControlClient(nc),
            tags=tags,
            rules=self.state.rule_feed,
            catalogue=catalogue,
            templates=console_templates(),
            tag_progress=lambda: tag_feed.progress,
        )
        return create_app(context)

    @staticmethod
    async def _stop_http(
        server: ConsoleServer, app: Starlette, serving: asyncio.Task[None]
    ) -> None:
        # Stop taking connections; live streams never end by themselves, so they are ended
        # now, and whatever else is still open is closed after the grace.
        server.should_exit = True
        close_live_streams(app)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(serving), _HTTP_GRACE_S + 2)
        if not serving.done():
            server.force_exit = True
            serving.cancel()

    async def run(self) -> None:
        settings = self.settings
        state = self.state
        health = HealthServer.from_settings(settings, state.readiness)
        await health.start()
        nc: Client | None = None
        app: Starlette | None = None
        serving: asyncio.Task[None] | None = None
        try:
            connecting = asyncio.ensure_future(connect(settings, "ttp-console"))
            await first_completed(connecting, state.stop.wait())
            if not connecting.done():
                # Stopped while NATS was still out of reach.
                connecting.cancel()
                return
            nc = state.nc = connecting.result()
            app = self._build_app(nc)
            sock = bind_socket(settings.console_host, settings.console_port)
            assert state.rule_feed is not None and state.tag_feed is not None
            self.server = server = ConsoleServer(server_config(app, settings))
            state.rule_feed.start()
            state.tag_feed.start()
            serving = asyncio.create_task(server.serve(sockets=[sock]), name="console-http")
            while not server.started and not serving.done():
                await asyncio.sleep(0.05)
            if serving.done():
                serving.result()
                raise RuntimeError("the console's HTTP server stopped at start")
            state.url = console_url(sock, settings.console_host)
            _log.info(
                "console started: %s",
                state.url,
                extra={
                    "url": state.url,
                    "auth": settings.console_auth,
                    "http_port": health.port,
                },
            )
            state.started.set()
            freezing = asyncio.create_task(
                _freeze_once_caught_up(state.tag_feed, state.rule_feed), name="console-gc-freeze"
            )
            try:
                await first_completed(serving, state.stop.wait())
            finally:
                freezing.cancel()
        finally:
            state.stop.set()
            if self.server is not None and serving is not None and app is not None:
                await self._stop_http(self.server, app, serving)
            for feed in (state.tag_feed, state.rule_feed):
                if feed is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(feed.stop(), _FEED_STOP_S)
            if nc is not None:
                await drain(nc)
            await health.stop()
            _log.info("console stopped")


class _NoColourCopy(logging.Filter):
    """Drops uvicorn's ``color_message`` (the message again, with terminal colour codes),
    which the JSON log format would otherwise print as an extra field."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def run(settings: ConsoleSettings | None = None) -> int:
    """Run the console until SIGTERM/SIGINT; returns the process exit code."""
    settings = settings or ConsoleSettings()
    configure_logging(settings.log_format, settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_NoColourCopy())
    configure_tracing("ttp-console")
    console = Console(settings)
    return run_until_signalled(
        "console", console.run, console.state.stop, console.request_stop, SHUTDOWN_GRACE_S
    )
