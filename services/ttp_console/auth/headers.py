"""Security headers on every response the console sends, errors and static files included."""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "SecurityHeadersMiddleware"]

# Only the console's own files may run or style the page: no inline script or style, no
# plugin, no framing, forms post only back here. Heat-map colours are classes for this reason.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
    " frame-ancestors 'none'"
)
_ALWAYS: Final = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    # Not no-referrer: under it Chromium sends `Origin: null` with the console's own form
    # posts, which the CSRF check must refuse. same-origin still sends nothing elsewhere.
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
)
_HSTS: Final = "max-age=31536000"
STATIC_PREFIX: Final = "/static/"


class SecurityHeadersMiddleware:
    """Adds the CSP and its companions to every HTTP response.

    Pages (everything outside ``/static/``) get ``Cache-Control: no-store``, so a shared
    computer's back button or a cache never shows one user's page to the next; static files
    keep revalidation.

    HSTS is sent on every response when ``public_origin`` (``TTP_CONSOLE_PUBLIC_ORIGIN``) is
    https, else only on a request that arrived over HTTPS. Behind a TLS-terminating proxy
    every request arrives over plain HTTP, and the proxy's ``X-Forwarded-Proto`` is not read
    (uvicorn's proxy-header handling stays off; see ``bootstrap.server_config``): the
    operator's statement of the origin is the one source that needs no trust in the network.
    A browser ignores HSTS received over plain HTTP, so sending it there is harmless.
    """

    def __init__(self, app: ASGIApp, *, public_origin: str | None = None) -> None:
        self.app = app
        self.https_site = public_origin is not None and public_origin.startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_page = not str(scope.get("path", "")).startswith(STATIC_PREFIX)
        is_https = self.https_site or scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _ALWAYS:
                    headers[name] = value
                if is_page:
                    headers["cache-control"] = "no-store"
                elif "cache-control" not in headers:
                    headers["cache-control"] = "no-cache"
                if is_https:
                    headers["strict-transport-security"] = _HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)
