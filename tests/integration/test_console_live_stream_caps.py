"""Live-tag streams over real HTTP, from the console served in-process on a real NATS: one
user cannot take every stream. A user at ``TTP_CONSOLE_LIVE_STREAMS_PER_USER`` streams gets a
429 that says what to do while another user still gets a stream; a stream the browser closes
frees its slot for the next one; the console's own cap still holds for users under theirs.

Proxy login mode: each test names its user in ``X-Forwarded-User`` (127.0.0.1 is the trusted
proxy). No master is needed: the streams read the tag store only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
import pytest
from prometheus_client import REGISTRY

from harness.console_in_process import InProcessConsole, serve_console_in_process
from harness.waiting import eventually
from ttp_console.context import ConsoleContext
from ttp_runtime.nats import ensure_streams

TIMEOUT_S = 30.0


@pytest.fixture
async def served(private_nats: Any) -> AsyncIterator[InProcessConsole]:
    nc = await nats.connect(private_nats.url)
    try:
        await ensure_streams(nc.jetstream(), 1, 3600.0, -1, 3600.0)
        async with serve_console_in_process(nc, operators=[], control_timeout_s=1.0) as console:
            yield console
    finally:
        await nc.close()


def client(console: InProcessConsole, user: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=console.url, headers={"X-Forwarded-User": user})


def per_user_cap(console: InProcessConsole) -> int:
    context: ConsoleContext = console.app.state.console
    return context.settings.console_live_streams_per_user


def refused(reason: str) -> float:
    # The console runs in this process: its metrics are in this registry.
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("ttp_console_live_streams_refused_total", labels) or 0.0


async def open_stream(
    streams: contextlib.AsyncExitStack, http: aiohttp.ClientSession
) -> aiohttp.ClientResponse:
    """A live stream held open until ``streams`` closes (the browser leaving)."""
    response = await streams.enter_async_context(http.get("/live/stream", allow_redirects=False))
    assert response.status == 200, await response.text()
    first = await asyncio.wait_for(response.content.readline(), TIMEOUT_S)
    assert first.startswith(b"retry:")
    return response


async def refusal(http: aiohttp.ClientSession, method: str = "GET") -> tuple[int, str, str]:
    """The status, Retry-After and text of a stream request that must be refused."""
    async with http.request(method, "/live/stream", allow_redirects=False) as response:
        text = await asyncio.wait_for(response.text(), TIMEOUT_S)
        return response.status, response.headers.get("Retry-After", ""), text


async def test_a_user_at_the_stream_cap_is_refused_while_another_user_still_streams(
    served: InProcessConsole,
) -> None:
    cap = per_user_cap(served)
    refused_before = refused("user_cap")
    async with client(served, "alice") as alice, client(served, "bob") as bob:
        async with contextlib.AsyncExitStack() as alices_streams:
            for _ in range(cap):
                await open_stream(alices_streams, alice)

            status, retry_after, text = await refusal(alice)
            assert (status, retry_after) == (429, "30")
            assert f"You already have {cap} live tag streams open" in text
            assert "close a Live tags page" in text
            assert await refusal(alice, "HEAD") == (429, "30", "")  # asked, nothing opened
            assert refused("user_cap") == refused_before + 1

            async with contextlib.AsyncExitStack() as bobs_streams:
                await open_stream(bobs_streams, bob)
                assert served.store.subscribers_of("bob") == 1
            assert served.store.subscribers_of("alice") == cap
        await eventually(lambda: served.store.stats().subscribers == 0, "the streams to end")


async def test_a_stream_the_browser_closes_frees_its_slot_for_the_next(
    served: InProcessConsole,
) -> None:
    cap = per_user_cap(served)
    async with client(served, "alice") as alice, contextlib.AsyncExitStack() as held:
        for _ in range(cap - 1):
            await open_stream(held, alice)
        for _ in range(3):  # the same slot, taken and freed again and again
            async with contextlib.AsyncExitStack() as last:
                await open_stream(last, alice)
                assert (await refusal(alice))[0] == 429
            await eventually(
                lambda: served.store.subscribers_of("alice") == cap - 1, "the slot to be freed"
            )
        await open_stream(held, alice)
        assert served.store.subscribers_of("alice") == cap


async def test_the_console_cap_still_holds_for_users_under_their_own(
    served: InProcessConsole,
) -> None:
    served.store.max_subscribers = 2  # the console's cap, as if 64 were open
    refused_before = refused("console_cap")
    async with (
        client(served, "alice") as alice,
        client(served, "bob") as bob,
        client(served, "carol") as carol,
        contextlib.AsyncExitStack() as held,
    ):
        await open_stream(held, alice)
        async with contextlib.AsyncExitStack() as bobs:
            await open_stream(bobs, bob)
            status, retry_after, text = await refusal(carol)
            assert (status, retry_after) == (503, "30")
            assert "Too many live tag viewers at once" in text
            assert (await refusal(carol, "HEAD"))[0] == 503
            assert refused("console_cap") == refused_before + 1
        await eventually(lambda: served.store.stats().subscribers == 1, "bob's slot to be freed")
        await open_stream(held, carol)
