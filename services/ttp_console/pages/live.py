"""Live tags: a page with a filter form, and its Server-Sent Events stream.

Each open stream is one :class:`~ttp_console.tag_store.Subscription` of the tag store with a
bounded queue: a browser that reads slowly loses rows (the stream tells it how many in a
``dropped`` event) and never holds up ingestion. Heartbeat comments keep proxies from closing
an idle stream; a stream ends after :data:`MAX_STREAM_S` (the browser's EventSource
reconnects by itself) and at once when :func:`close_live_streams` is called at shutdown.

A user holds at most ``TTP_CONSOLE_LIVE_STREAMS_PER_USER`` streams (a further one is refused
with 429), and the store at most its cap for everyone (503), so one viewer cannot take every
stream. A stream's slot is freed however it ends: renewal, shutdown, or the browser going
away. A HEAD request opens nothing and answers the status a GET would get now, so the page's
script can tell why its stream was refused.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ttp_console import metrics
from ttp_console.pages.common import Formatter, console, render, user_of
from ttp_console.tag_store import (
    MAX_ID_CHARS,
    LiveFilter,
    Subscription,
    TagRecord,
    TagStore,
    TooManySubscribersError,
    TooManySubscribersForOwnerError,
)
from ttp_core.attack.catalogue import AttackCatalogue
from ttp_core.contract import subjects

__all__ = ["LiveStreams", "close_live_streams", "live_filter", "live_page", "live_stream"]

HEARTBEAT_S: Final = 15.0
MAX_STREAM_S: Final = 30 * 60.0
QUEUE_CAPACITY: Final = 500
"""Rows held for one browser between two writes; more are dropped and counted."""
MAX_EVIDENCE_VALUE: Final = 300
_TECHNIQUE: Final = re.compile(r"T\d{4}(?:\.\d{3})?")
RETRY_AFTER_S: Final = 30
_STREAM_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class LiveStreams:
    """The open streams of one app, so shutdown can end them all at once."""

    def __init__(self) -> None:
        self.closing = False
        self._wakers: set[asyncio.Event] = set()

    def add(self, waker: asyncio.Event) -> None:
        self._wakers.add(waker)

    def discard(self, waker: asyncio.Event) -> None:
        self._wakers.discard(waker)

    def __len__(self) -> int:
        return len(self._wakers)

    def close(self) -> None:
        self.closing = True
        for waker in self._wakers:
            waker.set()


def live_streams(app: Starlette) -> LiveStreams:
    streams = getattr(app.state, "ttp_console_live_streams", None)
    if not isinstance(streams, LiveStreams):
        streams = LiveStreams()
        app.state.ttp_console_live_streams = streams
    return streams


def close_live_streams(app: Starlette) -> None:
    """End every open live stream of ``app`` now (call at shutdown, before the server
    waits for its connections to finish)."""
    live_streams(app).close()


def live_filter(params: QueryParams) -> tuple[LiveFilter, list[str]]:
    """The filter the query asks for, and what was ignored because it is not valid."""
    ignored = []

    def value(name: str) -> str | None:
        text = params.get(name, "").strip()
        return text or None

    technique = value("technique")
    if technique is not None:
        technique = technique.upper()
        if _TECHNIQUE.fullmatch(technique) is None:
            ignored.append("technique")
            technique = None
    rule_id = value("rule")
    if rule_id is not None and not subjects.is_token(rule_id):
        ignored.append("rule")
        rule_id = None
    kind = value("kind")
    if kind is not None and not subjects.is_token(kind):
        ignored.append("kind")
        kind = None
    attacker = value("attacker")
    if attacker is not None and len(attacker) > MAX_ID_CHARS:
        ignored.append("attacker")
        attacker = None
    return LiveFilter(technique, rule_id, kind, attacker), ignored


def record_json(record: TagRecord, catalogue: AttackCatalogue, fmt: Formatter) -> dict[str, Any]:
    """One row of the live table (what live.js shows; it writes text, never HTML)."""
    technique = catalogue.technique(record.technique)
    return {
        "time": fmt.utc(record.time),
        "technique": record.technique,
        "technique_name": technique.name if technique else "",
        "tactic": record.tactic,
        "rule_id": record.rule_id,
        "rule_version": record.rule_version,
        "confidence": round(record.confidence, 3),
        "source_kind": record.source_kind,
        "source_id": record.source_id,
        "attacker_uuid": record.attacker_uuid,
        "evidence": [
            [name, text[:MAX_EVIDENCE_VALUE]] for name, text in record.evidence_items()[:16]
        ],
    }


def _initial(request: Request, live: LiveFilter) -> list[TagRecord]:
    """The latest matching tags the store holds, so the table does not start empty."""
    store = console(request).tags
    if live.technique is not None:
        found = store.latest_for_technique(live.technique)
    elif live.rule_id is not None:
        found = store.latest_for_rule(live.rule_id)
    else:
        return []
    return [r for r in found if live.matches(r)]


async def live_page(request: Request) -> Response:
    """``/live``: the filter form and the table that ``static/live.js`` fills."""
    live, ignored = live_filter(request.query_params)
    return render(
        request,
        "live.html",
        {
            "filter": live,
            "ignored": ignored,
            "initial": _initial(request, live),
            # The stream is asked for what the filter kept, never the query as it came.
            "query": _stream_query(live),
        },
        active_nav="live",
    )


def _stream_query(live: LiveFilter) -> str:
    """The query string of ``/live/stream`` for ``live``: its valid fields only."""
    fields = {
        "technique": live.technique,
        "rule": live.rule_id,
        "kind": live.source_kind,
        "attacker": live.attacker_uuid,
    }
    return urlencode({name: value for name, value in fields.items() if value is not None})


def _event(name: str, data: object) -> str:
    # json.dumps escapes newlines, so one data line carries the whole value.
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class _LiveSlot:
    """One stream's hold on the store and on the app's open streams, freed once."""

    def __init__(self, store: TagStore, subscription: Subscription, streams: LiveStreams) -> None:
        self.store = store
        self.subscription = subscription
        self.streams = streams
        self.waker = asyncio.Event()
        subscription.on_ready = self.waker.set
        streams.add(self.waker)
        metrics.LIVE_STREAMS.inc()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        metrics.LIVE_STREAMS.dec()
        self.store.unsubscribe(self.subscription)
        self.streams.discard(self.waker)


class _LiveStreamResponse(StreamingResponse):
    """The event stream, freeing its slot when the response ends however it ends.

    The body's own ``finally`` runs only if the body generator is closed; a browser that
    goes away while the server waits to write to it leaves the generator suspended, so the
    slot is freed here as well (releasing twice does nothing)."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=_STREAM_HEADERS)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _refusal_reason(
    refused: TooManySubscribersError | TooManySubscribersForOwnerError,
) -> str:
    """The :data:`metrics.LIVE_REFUSALS` value of the store's refusal."""
    return "user_cap" if isinstance(refused, TooManySubscribersForOwnerError) else "console_cap"


def _refusal(reason: str, per_user: int) -> PlainTextResponse:
    """The answer refusing a new stream, for one of :data:`metrics.LIVE_REFUSALS`."""
    if reason == "user_cap":
        return PlainTextResponse(
            f"You already have {per_user} live tag streams open, the most one user may hold:"
            " close a Live tags page (another tab or window), then reload this one.",
            status_code=429,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if reason == "console_cap":
        return PlainTextResponse(
            "Too many live tag viewers at once; try again later.",
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return PlainTextResponse(
        "The console is shutting down; reload the page in a moment.",
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def live_stream(request: Request) -> Response:
    """``/live/stream?technique=&rule=&kind=&attacker=``: ``text/event-stream`` of ``tag``
    events (JSON rows), ``dropped`` events ({"count": n}) and heartbeat comments; 429 when the
    user already holds their cap of streams, 503 at the console's cap or while it stops."""
    context = console(request)
    live, _ignored = live_filter(request.query_params)
    streams = live_streams(request.app)
    per_user = context.settings.console_live_streams_per_user
    user = user_of(request)
    # Every route but the login page has a user; without one (an app wired without the
    # auth middleware) only the console's cap applies.
    owner = user.name if user is not None else None
    if request.method == "HEAD":
        # Its body would never end: a HEAD request opens nothing, and gets the status a GET
        # would get now (the page's script asks this to say why its stream was refused).
        refused = context.tags.refusal(owner, per_user)
        reason = None if refused is None else _refusal_reason(refused)
        if streams.closing:
            reason = "shutting_down"
        if reason is not None:
            answer = _refusal(reason, per_user)
            return Response(
                status_code=answer.status_code,
                headers={"Retry-After": answer.headers["Retry-After"]},
            )
        return Response(media_type="text/event-stream", headers={"Cache-Control": "no-store"})
    if streams.closing:
        metrics.LIVE_STREAMS_REFUSED.labels(reason="shutting_down").inc()
        return _refusal("shutting_down", per_user)
    try:
        subscription = context.tags.subscribe(
            live, capacity=QUEUE_CAPACITY, owner=owner, max_per_owner=per_user
        )
    except (TooManySubscribersError, TooManySubscribersForOwnerError) as refused_now:
        reason = _refusal_reason(refused_now)
        metrics.LIVE_STREAMS_REFUSED.labels(reason=reason).inc()
        return _refusal(reason, per_user)
    slot = _LiveSlot(context.tags, subscription, streams)
    return _LiveStreamResponse(_events(slot, context.catalogue), slot.release)


async def _events(slot: _LiveSlot, catalogue: AttackCatalogue) -> AsyncIterator[str]:
    """The stream's body, until it is due for renewal or the console stops."""
    streams, waker, subscription = slot.streams, slot.waker, slot.subscription
    fmt = Formatter(0.0)
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + MAX_STREAM_S
    try:
        yield "retry: 5000\n: connected\n\n"
        while not streams.closing:
            left = ends_at - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(waker.wait(), min(HEARTBEAT_S, left))
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            waker.clear()
            if streams.closing:
                break
            records, dropped = subscription.take()
            if dropped:
                metrics.LIVE_ROWS_DROPPED.inc(dropped)
                yield _event("dropped", {"count": dropped})
            if records:
                yield "".join(_event("tag", record_json(r, catalogue, fmt)) for r in records)
        # Freed before the goodbye is written: the browser may reconnect as soon as it reads it.
        slot.release()
        yield _event("bye", {"reason": "closing" if streams.closing else "renew"})
    finally:
        slot.release()
