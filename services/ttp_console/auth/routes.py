"""The login and logout pages (users mode; proxy mode leaves login to the proxy)."""

from __future__ import annotations

import logging
from typing import Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ttp_console.auth.session import Authenticator, LoginOutcome, safe_next

__all__ = ["PROXY_SIGN_OUT", "auth_routes"]

_log = logging.getLogger(__name__)

# oauth2-proxy's sign-out path: in proxy mode the login lives there, and so does the logout.
PROXY_SIGN_OUT: Final = "/oauth2/sign_out"
_MAX_NAME_CHARS: Final = 256
_MESSAGES: Final = {
    LoginOutcome.WRONG: "Wrong user or password.",
    LoginOutcome.THROTTLED: "Too many failed attempts: wait a few minutes, then try again.",
    LoginOutcome.BUSY: "Too many logins at once: try again in a moment.",
    LoginOutcome.UNAVAILABLE: "Logging in is not possible right now.",
}
_STATUS: Final = {LoginOutcome.WRONG: 401, LoginOutcome.THROTTLED: 429, LoginOutcome.BUSY: 503}


def _authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def _login_page(
    request: Request, *, status: int = 200, error: str | None = None, target: str | None = None
) -> Response:
    templates = request.app.state.console.templates
    target = safe_next(target if target is not None else request.query_params.get("next"))
    response: Response = templates.TemplateResponse(
        request, "login.html", {"error": error, "next": target}, status_code=status
    )
    return response


async def login_form(request: Request) -> Response:
    """GET /login: the form (already logged in, or proxy mode: straight on)."""
    if _authenticator(request).mode == "proxy" or request.state.user is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    return _login_page(request)


async def login(request: Request) -> Response:
    """POST /login: check the password; the same answer for any wrong name or password."""
    auth = _authenticator(request)
    if auth.mode == "proxy":
        return RedirectResponse("/", status_code=303)
    form = await request.form()
    name = form.get("username")
    password = form.get("password")
    target = form.get("next")
    target_text = target if isinstance(target, str) else None
    if not isinstance(name, str) or not isinstance(password, str):
        return _login_page(
            request, status=400, error=_MESSAGES[LoginOutcome.WRONG], target=target_text
        )
    name = name.strip()[:_MAX_NAME_CHARS]
    client = request.client.host if request.client is not None else "unknown"
    outcome = await auth.login(name, password, client)
    if outcome is not LoginOutcome.OK:
        _log.warning(
            "console login refused",
            extra={"user": name[:64], "client": client, "outcome": outcome.value},
        )
        return _login_page(
            request, status=_STATUS.get(outcome, 503), error=_MESSAGES[outcome], target=target_text
        )
    auth.start_session(request.session, name)
    _log.info("console login", extra={"user": name, "client": client})
    return RedirectResponse(safe_next(target_text), status_code=303)


async def logout(request: Request) -> Response:
    """POST /logout: end the session, copies of its cookie included (in proxy mode, go on
    to the proxy's sign-out)."""
    user = getattr(request.state, "user", None)
    _authenticator(request).end_session(request.session)
    if user is not None:
        _log.info("console logout", extra={"user": user.name})
    if _authenticator(request).mode == "proxy":
        return RedirectResponse(PROXY_SIGN_OUT, status_code=303)
    return RedirectResponse("/login", status_code=303)


def auth_routes() -> list[BaseRoute]:
    """``/login`` (GET, POST) and ``/logout`` (POST)."""
    return [
        Route("/login", login_form, methods=["GET"], name="login_form"),
        Route("/login", login, methods=["POST"], name="login"),
        Route("/logout", logout, methods=["POST"], name="logout"),
    ]
