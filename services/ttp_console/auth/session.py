"""Who is asking: the logged-in user of the session, or the user a trusted proxy names.

:class:`AuthMiddleware` puts a :class:`~ttp_console.context.ConsoleUser` on
``request.state.user`` for every request it lets through (``None`` on the login page and the
static files, which need no login). Without a user, a page (GET) is redirected to the login
page and anything else gets 401. In proxy mode every request must come from the trusted
proxy, whatever its path.

The session (Starlette's signed cookie: HttpOnly, SameSite=Strict, Secure unless turned off)
holds only the user's name, a random session id, a fingerprint of their users-file line, the
login time and the CSRF token; the role is read from the users file on every request, so a
changed role or a removed user applies at once. Logging out (or logging in again) puts the
session id on the process's list of ended sessions (:mod:`ttp_console.auth.revocation`), so a
copy of the cookie stops working too.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from typing import Any, Final
from urllib.parse import quote

from argon2 import PasswordHasher
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ttp_console.auth.csrf import SESSION_KEY as CSRF_SESSION_KEY
from ttp_console.auth.csrf import new_csrf_token
from ttp_console.auth.errors import ErrorPage
from ttp_console.auth.local_users import LocalUsers
from ttp_console.auth.proxy import EMAIL_HEADER, USER_HEADER, ProxyIdentity, ProxyRefusal
from ttp_console.auth.revocation import RevokedSessions
from ttp_console.auth.throttle import LoginThrottle
from ttp_console.context import ConsoleUser
from ttp_console.metrics import LOGINS
from ttp_console.settings import ConsoleAuthMode, ConsoleSettings
from ttp_runtime.nats import RepeatThrottle

__all__ = ["AuthMiddleware", "Authenticator", "LoginOutcome", "safe_next"]

_log = logging.getLogger(__name__)

PUBLIC_PATHS: Final = frozenset({"/login", "/logout"})
SESSION_ID_KEY: Final = "sid"
_SESSION_ID_BYTES: Final = 16
PUBLIC_PREFIXES: Final = ("/static/",)
# One argon2 check takes 64 MiB and about 0.2 s of CPU (argon2-cffi's defaults): a login
# flood must not take the memory or the cores the pages and the feeds need. Checks run one
# at a time, and past a short queue further attempts are turned away at once.
_CONCURRENT_CHECKS: Final = 1
_MAX_WAITING_CHECKS: Final = 16
_LOG_WINDOW_S: Final = 60.0


class LoginOutcome(enum.Enum):
    """What a login attempt came to (the page says only "wrong user or password")."""

    OK = "ok"
    WRONG = "wrong"
    THROTTLED = "throttled"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"


_LOGINS_BY_OUTCOME: Final = {
    outcome: LOGINS.labels(outcome=outcome.value) for outcome in LoginOutcome
}


class Authenticator:
    """The console's login state: users file, proxy trust, throttle and session rules."""

    def __init__(
        self,
        mode: ConsoleAuthMode,
        *,
        users: LocalUsers | None,
        proxy: ProxyIdentity | None,
        throttle: LoginThrottle,
        max_age_s: int,
        revoked: RevokedSessions | None = None,
    ) -> None:
        self.mode = mode
        self.users = users
        self.proxy = proxy
        self.throttle = throttle
        self.max_age_s = max_age_s
        self.revoked = revoked if revoked is not None else RevokedSessions(max_age_s)
        self._checks: asyncio.Semaphore | None = None
        self._waiting = 0
        self._refusals = RepeatThrottle(_LOG_WINDOW_S)

    @classmethod
    def from_settings(
        cls, settings: ConsoleSettings, hasher: PasswordHasher | None = None
    ) -> Authenticator:
        """The authenticator the settings describe."""
        throttle = LoginThrottle(
            settings.console_login_max_failures, settings.console_login_window_s
        )
        if settings.console_auth == "proxy":
            proxy = ProxyIdentity(settings.console_trusted_proxies, settings.is_operator)
            return cls(
                "proxy",
                users=None,
                proxy=proxy,
                throttle=throttle,
                max_age_s=settings.console_session_max_age_s,
            )
        users = LocalUsers(settings.console_users_file, hasher)
        return cls(
            "users",
            users=users,
            proxy=None,
            throttle=throttle,
            max_age_s=settings.console_session_max_age_s,
        )

    def session_user(self, session: dict[str, Any]) -> ConsoleUser | None:
        """The user a users-mode session belongs to, if it is still valid."""
        if self.users is None:
            return None
        name = session.get("user")
        logged_in_at = session.get("at")
        session_id = session.get(SESSION_ID_KEY)
        if (
            not isinstance(name, str)
            or not isinstance(logged_in_at, (int, float))
            # A cookie from before session ids existed cannot be revoked: not honoured.
            or not isinstance(session_id, str)
        ):
            return None
        if not 0 <= time.time() - logged_in_at <= self.max_age_s:
            return None
        if self.revoked.is_revoked(session_id, logged_in_at):
            return None
        user = self.users.get(name)
        if user is None or not LocalUsers.same_fingerprint(user, session.get("fp")):
            return None
        return ConsoleUser(name=user.name, role=user.role)

    async def login(self, name: str, password: str, address: str) -> LoginOutcome:
        """Check a password (in a worker thread), throttled per name and per address."""
        outcome = await self._check(name, password, address)
        _LOGINS_BY_OUTCOME[outcome].inc()
        return outcome

    async def _check(self, name: str, password: str, address: str) -> LoginOutcome:
        users = self.users
        if users is None:
            return LoginOutcome.UNAVAILABLE
        if self.throttle.blocked(name, address):
            return LoginOutcome.THROTTLED
        if self._checks is None:
            self._checks = asyncio.Semaphore(_CONCURRENT_CHECKS)
        if self._waiting >= _MAX_WAITING_CHECKS:
            return LoginOutcome.BUSY
        self._waiting += 1
        try:
            async with self._checks:
                # Again: failures recorded while this attempt waited count too.
                if self.throttle.blocked(name, address):
                    return LoginOutcome.THROTTLED
                user = await run_in_threadpool(users.verify, name, password)
        finally:
            self._waiting -= 1
        if user is None:
            self.throttle.failed(name, address)
            return LoginOutcome.WRONG
        self.throttle.succeeded(name)
        return LoginOutcome.OK

    def start_session(self, session: dict[str, Any], name: str) -> None:
        """Make ``session`` a fresh login of ``name`` (new session id and CSRF token: no
        fixation); a login it replaces ends as by logout."""
        self.end_session(session)
        if self.users is None:
            return
        user = self.users.get(name)
        if user is None:
            return
        session["user"] = user.name
        session[SESSION_ID_KEY] = secrets.token_urlsafe(_SESSION_ID_BYTES)
        session["fp"] = LocalUsers.fingerprint(user)
        session["at"] = int(time.time())
        session[CSRF_SESSION_KEY] = new_csrf_token()

    def end_session(self, session: dict[str, Any]) -> None:
        """Log out: empty ``session`` and refuse its id from now on, in copies of the
        cookie too (in this process, until the session would have expired)."""
        session_id = session.get(SESSION_ID_KEY)
        logged_in_at = session.get("at")
        # Only what this console signed reaches here, so the id is one it made.
        if isinstance(session_id, str) and isinstance(logged_in_at, (int, float)):
            self.revoked.revoke(session_id, logged_in_at)
        session.clear()

    def log_refusal(self, text: str, **extra: object) -> None:
        """Log why a request was refused, once per minute for each distinct reason."""
        held = self._refusals.admit(text)
        if held is not None:
            more = f" (and {held} more like it)" if held else ""
            _log.warning("console refused a request: %s%s", text, more, extra=extra)


def safe_next(target: str | None) -> str:
    """Where to go after login: a path of this site only (no open redirect)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(char) < 0x21 for char in target)
        or len(target) > 2000
    ):
        return "/"
    return target


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthMiddleware:
    """Sets ``request.state.user`` or refuses the request (see the module docstring)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, error_page: ErrorPage) -> None:
        self.app = app
        self.auth = authenticator
        self.error_page = error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        state = scope.setdefault("state", {})
        if self.auth.proxy is not None:
            user = self._proxy_user(request)
            if isinstance(user, ProxyRefusal):
                self.auth.log_refusal(user.reason, path=request.url.path[:200])
                response = self.error_page(
                    request, 403, "This console is reached through its login proxy only."
                )
                await response(scope, receive, send)
                return
            state["user"] = user
            await self.app(scope, receive, send)
            return
        session = request.session
        user_or_none = self.auth.session_user(session)
        if user_or_none is None and "user" in session:
            # Expired, or the user's line changed or went: the session ends here.
            session.clear()
        state["user"] = user_or_none
        if user_or_none is None and not _public(request.url.path):
            if request.method in {"GET", "HEAD"}:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                location = "/login?next=" + quote(safe_next(target), safe="/")
                await RedirectResponse(location, status_code=303)(scope, receive, send)
            else:
                response = self.error_page(request, 401, "Log in first.")
                await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _proxy_user(self, request: Request) -> ConsoleUser | ProxyRefusal:
        assert self.auth.proxy is not None
        peer = request.client.host if request.client is not None else None
        result = self.auth.proxy.user(
            peer, request.headers.get(USER_HEADER), request.headers.get(EMAIL_HEADER)
        )
        if isinstance(result, ConsoleUser):
            session = request.session
            if session.get("proxy_user") != result.name:
                # Another person behind the same browser profile gets another CSRF token.
                session.clear()
                session["proxy_user"] = result.name
                session[CSRF_SESSION_KEY] = new_csrf_token()
        return result
