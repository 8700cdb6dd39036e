"""SecurityHeadersMiddleware at the ASGI level: HSTS over HTTPS or for an https public
origin, caching by path."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from ttp_console.auth.headers import CONTENT_SECURITY_POLICY, SecurityHeadersMiddleware


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    # An endpoint that tries to loosen the policy: the middleware's values win.
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-security-policy", b"default-src *"),
                (b"cache-control", b"public, max-age=3600"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _headers(scheme: str, path: str, public_origin: str | None = None) -> dict[str, str]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "scheme": scheme, "path": path, "headers": []}
    await SecurityHeadersMiddleware(_inner, public_origin=public_origin)(scope, receive, send)
    start = sent[0]
    headers = [(k.decode(), v.decode()) for k, v in start["headers"]]
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), "a header was sent twice"
    return dict(headers)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_hsts_only_over_https(scheme: str) -> None:
    headers = await _headers(scheme, "/rules")
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    if scheme == "https":
        assert headers["strict-transport-security"] == "max-age=31536000"
    else:
        assert "strict-transport-security" not in headers


async def test_static_files_keep_their_own_caching() -> None:
    headers = await _headers("https", "/static/console.css")
    assert headers["cache-control"] == "public, max-age=3600"
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("path", ["/rules", "/static/console.css"])
async def test_hsts_for_an_https_public_origin_whatever_the_socket(path: str) -> None:
    # Behind a TLS-terminating proxy the console's own socket is plain HTTP.
    for scheme in ("http", "https"):
        headers = await _headers(scheme, path, "https://console.example.com")
        assert headers["strict-transport-security"] == "max-age=31536000"
    headers = await _headers("http", path, "http://console.example.com")
    assert "strict-transport-security" not in headers
