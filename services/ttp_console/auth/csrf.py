"""CSRF protection: no state change unless the session's token comes with it, from here.

Every session holds a random token (made on the first request); pages put it in each form
(``csrf_token``) and scripts send it as ``X-CSRF-Token``. An unsafe request (POST, PUT,
PATCH, DELETE) is refused with 403 before any endpoint runs when the token is missing or
wrong, or when the browser says it comes from another site (``Origin`` of another host,
``Sec-Fetch-Site`` other than same-origin). The session cookie is also SameSite=Strict:
two independent locks.

"Another host" is judged against ``TTP_CONSOLE_PUBLIC_ORIGIN`` when it is set (the proxy in
front may then forward any ``Host``), else against the request's own ``Host`` header.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ttp_console.auth.errors import ErrorPage

__all__ = ["CSRF_FIELD", "CSRF_HEADER", "CsrfMiddleware", "new_csrf_token", "session_csrf_token"]

_log = logging.getLogger(__name__)

CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"
SESSION_KEY: Final = "csrf"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FORM_BYTES: Final = 64 * 1024
_FORM_TYPES: Final = ("application/x-www-form-urlencoded", "multipart/form-data")
_TOKEN_BYTES: Final = 32


def new_csrf_token() -> str:
    """A fresh random token (43 URL-safe characters)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def session_csrf_token(session: dict[str, Any]) -> str:
    """The session's token, made (and stored in the session) when it has none."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or len(token) < _TOKEN_BYTES:
        token = new_csrf_token()
        session[SESSION_KEY] = token
    return token


def foreign_origin(headers: Mapping[str, str], public_origin: str | None = None) -> str | None:
    """Why the browser's own headers say this request comes from another site, or None.

    ``public_origin`` is the console's origin as browsers write it (``https://host[:port]``,
    see :func:`ttp_console.settings.canonical_origin`); without it the ``Host`` header stands
    for the console.
    """
    site = headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return f"Sec-Fetch-Site is {site!r}"
    origin = headers.get("origin")
    if origin is None:
        return None
    if public_origin is not None:
        # Scheme included: the operator said which one the browser uses.
        if origin.lower() != public_origin:
            return f"Origin {origin[:200]!r} is not TTP_CONSOLE_PUBLIC_ORIGIN {public_origin!r}"
        return None
    host = headers.get("host", "")
    parts = urlsplit(origin)
    # The scheme is not compared: behind a TLS-terminating proxy the console itself is
    # reached over plain HTTP while the browser's origin is https.
    if parts.scheme not in {"http", "https"} or not host or parts.netloc.lower() != host.lower():
        return (
            f"Origin {origin[:200]!r} is not this console's host {host[:200]!r} (behind a proxy"
            " that forwards another Host, set TTP_CONSOLE_PUBLIC_ORIGIN)"
        )
    return None


class CsrfMiddleware:
    """Puts the session's CSRF token on ``request.state.csrf_token``; refuses forged writes."""

    def __init__(
        self, app: ASGIApp, error_page: ErrorPage, public_origin: str | None = None
    ) -> None:
        self.app = app
        self.error_page = error_page
        self.public_origin = public_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        token = session_csrf_token(request.session)
        scope.setdefault("state", {})["csrf_token"] = token
        if scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        problem = foreign_origin(request.headers, self.public_origin)
        if problem is not None:
            await self._refuse(request, scope, receive, send, f"cross-site request: {problem}")
            return
        sent = request.headers.get(CSRF_HEADER)
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if sent is None and content_type in _FORM_TYPES:
            body = await _read_body(receive, MAX_FORM_BYTES)
            if body is None:
                response = self.error_page(request, 413, "That form is too large.")
                await response(scope, receive, send)
                return
            try:
                form = await Request(scope, _replay(body, receive)).form()
                field = form.get(CSRF_FIELD)
                await form.close()
            except Exception:
                response = self.error_page(request, 400, "That form could not be read.")
                await response(scope, receive, send)
                return
            sent = field if isinstance(field, str) else None
            receive = _replay(body, receive)
        if sent is None or not hmac.compare_digest(sent.encode(), token.encode()):
            reason = "no CSRF token" if sent is None else "wrong CSRF token"
            await self._refuse(request, scope, receive, send, reason)
            return
        await self.app(scope, receive, send)

    async def _refuse(
        self, request: Request, scope: Scope, receive: Receive, send: Send, reason: str
    ) -> None:
        client = request.client.host if request.client is not None else None
        _log.warning(
            "console refused a state change: %s",
            reason,
            extra={"method": request.method, "path": request.url.path[:200], "client": client},
        )
        response = self.error_page(
            request, 403, "This request was refused: reload the page and try again."
        )
        await response(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``body`` once, then whatever the client sends next."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
