"""The console's ASGI application: pages, login, and the protections every route shares.

Layers, outermost first (each response passes back out through all of them):

1. security headers: CSP and its companions on every response, the error pages of the
   innermost layers and Starlette's own 500 page included (they sit outside even Starlette's
   error handling, so nothing answers without them);
2. the signed session cookie;
3. who is asking (:mod:`ttp_console.auth.session`): login or trusted proxy, else 303/401/403;
4. CSRF (:mod:`ttp_console.auth.csrf`): an unsafe request without the session's token, or
   from another site, is refused before it reaches any endpoint;
5. the routes: ``/login``, ``/logout``, ``/static`` and the pages of
   :func:`ttp_console.pages.page_routes`.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from ttp_console.auth.csrf import CsrfMiddleware
from ttp_console.auth.headers import SecurityHeadersMiddleware
from ttp_console.auth.routes import auth_routes
from ttp_console.auth.session import Authenticator, AuthMiddleware
from ttp_console.context import ConsoleContext
from ttp_console.pages import page_routes
from ttp_console.settings import ConsoleSettings

__all__ = [
    "SESSION_COOKIE",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "console_templates",
    "create_app",
    "error_response",
]

_log = logging.getLogger(__name__)

PACKAGE_DIR: Final = Path(__file__).resolve().parent
TEMPLATES_DIR: Final = PACKAGE_DIR / "templates"
STATIC_DIR: Final = PACKAGE_DIR / "static"
SESSION_COOKIE: Final = "ttp_console_session"
# The console takes only small forms; a large body is refused before it is read whole.
MAX_BODY_BYTES: Final = 1024 * 1024

_STATUS_TEXT: Final = {
    400: "Bad request",
    401: "Not logged in",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Unavailable",
}


def _template_context(request: Request) -> dict[str, Any]:
    # Error pages can render before the auth layer ran (or when it refused): no user then.
    return {
        "user": getattr(request.state, "user", None),
        "csrf_token": getattr(request.state, "csrf_token", ""),
    }


def console_templates(directory: Path = TEMPLATES_DIR) -> Jinja2Templates:
    """The console's Jinja2 templates: autoescaped, with ``user`` and ``csrf_token`` in every
    render (``None`` and ``""`` where the request has none)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=environment, context_processors=[_template_context])


def error_response(request: Request, status: int, message: str) -> Response:
    """The error page: the status and ``message``, nothing from inside the console."""
    templates: Jinja2Templates = request.app.state.console.templates
    title = _STATUS_TEXT.get(status, "Error")
    try:
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": status, "title": title, "message": message},
            status_code=status,
        )
    except Exception:
        # A broken template must not turn into a traceback page.
        _log.exception("console error page could not be rendered")
        return Response(f"{status} {title}\n", status_code=status, media_type="text/plain")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code >= 500:
        return error_response(request, exc.status_code, "The console could not answer that.")
    response = error_response(request, exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    # Logged by the server (uvicorn) with its traceback; the page says nothing of it.
    return error_response(request, 500, "The console could not answer that. It has been logged.")


class ConsoleApp(Starlette):
    """Starlette with the security headers wrapped around its whole stack."""

    def __init__(self, *, public_origin: str | None, **kwargs: Any) -> None:
        self.public_origin = public_origin
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(
            super().build_middleware_stack(), public_origin=self.public_origin
        )


def _session_secret(settings: ConsoleSettings) -> str:
    if settings.console_session_secret is not None:
        return settings.console_session_secret.get_secret_value()
    if settings.console_auth == "users":
        _log.warning(
            "TTP_CONSOLE_SESSION_SECRET is not set: using a random key, so every login ends"
            " when the console restarts (and each replica has its own)"
        )
    return secrets.token_urlsafe(32)


def create_app(context: ConsoleContext) -> Starlette:
    """The console application over ``context`` (kept as ``app.state.console``)."""
    settings = context.settings
    authenticator = Authenticator.from_settings(settings)
    routes: list[BaseRoute] = [
        *auth_routes(),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        *page_routes(),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=_session_secret(settings),
            session_cookie=SESSION_COOKIE,
            max_age=settings.console_session_max_age_s,
            same_site="strict",
            https_only=settings.console_cookie_secure,
        ),
        Middleware(AuthMiddleware, authenticator=authenticator, error_page=error_response),
        Middleware(
            CsrfMiddleware,
            error_page=error_response,
            public_origin=settings.console_public_origin,
        ),
    ]
    app = ConsoleApp(
        public_origin=settings.console_public_origin,
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, 500: _server_error},
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.console = context
    app.state.auth = authenticator
    return app
