"""The console wired as its bootstrap wires it, on a NATS connection a test owns, served by
uvicorn on a free port in the test's own loop (proxy login: 127.0.0.1 is the trusted proxy,
so a test names its user in ``X-Forwarded-User``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client
from starlette.applications import Starlette

from ttp_console.app import console_templates, create_app
from ttp_console.bootstrap import ConsoleServer, bind_socket, console_url, server_config
from ttp_console.context import ConsoleContext
from ttp_console.pages import close_live_streams
from ttp_console.rule_feed import RuleFeed
from ttp_console.settings import ConsoleSettings
from ttp_console.tag_feed import TagFeed
from ttp_console.tag_store import TagStore
from ttp_core.attack.catalogue import load_catalogue
from ttp_runtime.control_client import ControlClient

__all__ = ["InProcessConsole", "serve_console_in_process"]

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class InProcessConsole:
    url: str
    """Without a trailing slash."""
    app: Starlette
    control: ControlClient
    store: TagStore
    rules: RuleFeed
    tags: TagFeed


@contextlib.asynccontextmanager
async def serve_console_in_process(
    nc: Client, *, operators: list[str], control_timeout_s: float
) -> AsyncIterator[InProcessConsole]:
    """Serve the console on ``nc`` until the block ends; yields once the rule feed has
    read TTP_RULES (a test waits for the tag feed itself if it needs it)."""
    catalogue = load_catalogue()
    store = TagStore(catalogue)
    rule_feed = RuleFeed(nc)
    tag_feed = TagFeed(nc, store)
    settings = ConsoleSettings(
        console_auth="proxy",
        console_trusted_proxies=["127.0.0.1/32"],
        console_operators=operators,
        console_session_secret="s" * 40,
        console_cookie_secure=False,
    )
    control = ControlClient(nc, timeout_s=control_timeout_s)
    context = ConsoleContext(
        settings=settings,
        control=control,
        tags=store,
        rules=rule_feed,
        catalogue=catalogue,
        templates=console_templates(),
        tag_progress=lambda: tag_feed.progress,
    )
    app = create_app(context)
    rule_feed.start()
    tag_feed.start()
    sock = bind_socket("127.0.0.1", 0)
    server = ConsoleServer(server_config(app, settings))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        assert await rule_feed.wait_caught_up(TIMEOUT_S)
        url = console_url(sock, "127.0.0.1").rstrip("/")
        yield InProcessConsole(url, app, control, store, rule_feed, tag_feed)
    finally:
        close_live_streams(app)
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        await tag_feed.stop()
        await rule_feed.stop()
