"""A live-tag stream holds one slot of its user's cap and of the console's, and frees it
however the stream ends: renewal, shutdown, or the browser going away even while the server
waits to write to it. Past a cap the stream is refused with a status that says which cap (429
for the user's, 503 for the console's or while it stops), and a HEAD request answers that
status without opening anything.

The handler is called directly on an app holding only what it reads (the tag store, the
catalogue and the settings); the user is what the auth middleware would have put on the
request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message

from ttp_console.context import ConsoleUser
from ttp_console.pages import close_live_streams
from ttp_console.pages import live as live_module
from ttp_console.pages.live import live_stream
from ttp_console.settings import ConsoleSettings
from ttp_console.tag_store import TagStore
from ttp_core.attack.catalogue import load_catalogue

PER_USER = 2
TIMEOUT_S = 10.0


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def refused(reason: str) -> float:
    return sample("ttp_console_live_streams_refused_total", reason=reason)


@pytest.fixture
async def app() -> AsyncIterator[Starlette]:
    app = Starlette()
    app.state.console = SimpleNamespace(
        tags=TagStore(load_catalogue(), max_subscribers=3),
        catalogue=load_catalogue(),
        settings=ConsoleSettings(console_live_streams_per_user=PER_USER),
    )
    app.state.opened = []
    yield app
    # Streams a test opened but never served: served to a browser already gone, which frees
    # their slots (the open-streams gauge is process-wide).
    close_live_streams(app)
    for response in app.state.opened:
        with contextlib.suppress(ClientDisconnect):
            await response(scope(app, "-"), _silent, _gone)


async def _silent() -> Message:
    await asyncio.Event().wait()  # the request has no body; the browser says nothing
    raise AssertionError("not reached")


async def _gone(message: Message) -> None:
    if message["type"] == "http.response.body":
        raise OSError("connection reset by peer")


def store_of(app: Starlette) -> TagStore:
    return cast(TagStore, app.state.console.tags)


def scope(app: Starlette, user: str, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "method": method,
        "path": "/live/stream",
        "query_string": b"",
        "headers": [],
        "app": app,
        "state": {"user": ConsoleUser(user, "viewer")},
    }


async def open_stream(app: Starlette, user: str) -> Response:
    response = await live_stream(Request(scope(app, user)))
    if isinstance(response, StreamingResponse):
        app.state.opened.append(response)
    return response


def body_of(response: Response) -> AsyncIterator[str]:
    assert isinstance(response, StreamingResponse), response
    return cast(AsyncIterator[str], response.body_iterator)


async def test_a_user_at_the_cap_gets_429_while_another_still_gets_a_stream(
    app: Starlette,
) -> None:
    refused_before = refused("user_cap")
    held = [await open_stream(app, "alice") for _ in range(PER_USER)]
    assert all(isinstance(r, StreamingResponse) for r in held)

    third = await open_stream(app, "alice")
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "30"
    assert b"You already have 2 live tag streams open" in third.body
    assert refused("user_cap") == refused_before + 1
    assert isinstance(await open_stream(app, "bob"), StreamingResponse)
    assert store_of(app).subscribers_of("alice") == PER_USER


async def test_the_console_cap_holds_for_users_under_their_own_with_503(
    app: Starlette,
) -> None:
    refused_before = refused("console_cap")
    for user in ("alice", "bob", "carol"):  # the store holds 3
        assert isinstance(await open_stream(app, user), StreamingResponse)
    fourth = await open_stream(app, "dave")
    assert fourth.status_code == 503
    assert b"Too many live tag viewers" in fourth.body
    assert refused("console_cap") == refused_before + 1


async def test_head_answers_what_a_get_would_get_and_opens_nothing(app: Starlette) -> None:
    async def head(user: str) -> Response:
        return await live_stream(Request(scope(app, user, "HEAD")))

    refused_before = refused("user_cap")
    assert (await head("alice")).status_code == 200
    for _ in range(PER_USER):
        await open_stream(app, "alice")
    at_cap = await head("alice")
    assert (at_cap.status_code, at_cap.headers["Retry-After"], at_cap.body) == (429, "30", b"")
    assert refused("user_cap") == refused_before  # a question, not a refused stream
    await open_stream(app, "bob")
    assert (await head("carol")).status_code == 503  # the console's cap of 3
    assert store_of(app).stats().subscribers == 3

    close_live_streams(app)
    assert (await head("carol")).status_code == 503


async def test_a_renewed_stream_frees_its_slot_before_saying_goodbye(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_module, "MAX_STREAM_S", 0.0)
    open_before = sample("ttp_console_live_streams")
    body = body_of(await open_stream(app, "alice"))
    assert sample("ttp_console_live_streams") == open_before + 1
    assert (await body.__anext__()).startswith("retry:")

    bye = await asyncio.wait_for(body.__anext__(), TIMEOUT_S)
    assert bye.startswith("event: bye") and '"renew"' in bye
    # The browser reconnects as soon as it reads the goodbye: the slot is already free.
    assert store_of(app).subscribers_of("alice") == 0
    assert sample("ttp_console_live_streams") == open_before
    async for _rest in body:
        pass
    assert sample("ttp_console_live_streams") == open_before  # freed once, not twice


async def test_shutdown_ends_every_stream_frees_its_slot_and_refuses_new_ones(
    app: Starlette,
) -> None:
    bodies = [body_of(await open_stream(app, user)) for user in ("alice", "bob")]
    for body in bodies:
        assert (await body.__anext__()).startswith("retry:")
    refused_before = refused("shutting_down")

    close_live_streams(app)
    for body in bodies:
        bye = await asyncio.wait_for(body.__anext__(), TIMEOUT_S)
        assert '"closing"' in bye
    assert store_of(app).stats().subscribers == 0
    late = await open_stream(app, "carol")
    assert (late.status_code, late.headers["Retry-After"]) == (503, "5")
    assert refused("shutting_down") == refused_before + 1


async def test_a_browser_gone_while_the_server_writes_frees_its_slot(app: Starlette) -> None:
    # The connection fails on the first write of the body: the body generator is left
    # suspended at its first yield (this test holds it, so nothing collects it), and the
    # slot must be freed all the same.
    open_before = sample("ttp_console_live_streams")
    response = await open_stream(app, "alice")
    assert store_of(app).subscribers_of("alice") == 1
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        await _gone(message)

    with pytest.raises(ClientDisconnect):
        await asyncio.wait_for(response(scope(app, "alice"), _silent, send), TIMEOUT_S)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert store_of(app).subscribers_of("alice") == 0
    assert store_of(app).stats().subscribers == 0
    assert sample("ttp_console_live_streams") == open_before
    assert isinstance(await open_stream(app, "alice"), StreamingResponse)
