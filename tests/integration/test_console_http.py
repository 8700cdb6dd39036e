"""The console's login, roles and protections over real HTTP (uvicorn on a free port).

Each test serves :func:`ttp_console.app.create_app` the way the bootstrap does (the same
uvicorn server class and socket), plus a few routes of its own: a page any user may see, an
operator-only POST and an endpoint that fails. The NATS-side adapters are not needed: every
request here is answered (or refused) before a page would reach them.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from argon2 import PasswordHasher
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from yarl import URL

from ttp_console.app import SESSION_COOKIE, console_templates, create_app
from ttp_console.auth.headers import CONTENT_SECURITY_POLICY
from ttp_console.auth.roles import current_user, require_operator
from ttp_console.auth.users_file import LocalUser, write_users
from ttp_console.bootstrap import ConsoleServer, bind_socket, console_url, server_config
from ttp_console.context import ConsoleContext
from ttp_console.settings import ConsoleSettings

# Cheap parameters: these tests check the login flow, not argon2's cost.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORDS = {"alice": "alice-password-1", "victor": "victor-password-1"}
SECRET_MESSAGE = "internal detail that must not leak"


def _users_file(path: Path, roles: dict[str, str] | None = None) -> Path:
    roles = roles or {"alice": "operator", "victor": "viewer"}
    users = {
        name: LocalUser(name, cast(Any, role), FAST_HASHER.hash(PASSWORDS.get(name, "x" * 12)))
        for name, role in roles.items()
    }
    write_users(path, users)
    return path


async def _whoami(request: Request) -> Response:
    user = current_user(request)
    return PlainTextResponse(f"{user.name} {user.role} {user.email or '-'}")


async def _operate(request: Request) -> Response:
    user = require_operator(request)
    return PlainTextResponse(f"done by {user.name}")


async def _boom(_request: Request) -> Response:
    raise RuntimeError(SECRET_MESSAGE)


@dataclass
class Served:
    url: str
    settings: ConsoleSettings

    def client(self, **headers: str) -> aiohttp.ClientSession:
        # unsafe=True: the jar keeps cookies of an IP-address host (127.0.0.1).
        return aiohttp.ClientSession(
            base_url=self.url,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers=headers,
        )


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServeFactory]:
    servers: list[tuple[ConsoleServer, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> Served:
        values: dict[str, Any] = {
            "console_users_file": tmp_path / "users.txt",
            "console_cookie_secure": False,
            "console_session_secret": "s" * 40,
        }
        values.update(overrides)
        settings = ConsoleSettings(**values)
        context = ConsoleContext(
            settings=settings,
            control=cast(Any, None),
            tags=cast(Any, None),
            rules=cast(Any, None),
            catalogue=cast(Any, None),
            templates=console_templates(),
            tag_progress=lambda: None,
        )
        app = create_app(context)
        app.router.routes.extend(
            [
                Route("/t/whoami", _whoami),
                Route("/t/operate", _operate, methods=["POST"]),
                Route("/t/boom", _boom),
            ]
        )
        sock = bind_socket("127.0.0.1", 0)
        server = ConsoleServer(server_config(app, settings))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        servers.append((server, task))
        return Served(console_url(sock, "127.0.0.1").rstrip("/"), settings)

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


async def _csrf_token(
    http: aiohttp.ClientSession, path: str = "/login", status: int = 200, **headers: str
) -> str:
    """The CSRF token of the form on ``path`` (every page carries one, a 404 page too)."""
    async with http.get(path, allow_redirects=False, headers=headers) as response:
        assert response.status == status
        match = _TOKEN.search(await response.text())
    assert match is not None
    return match.group(1)


async def _login(
    http: aiohttp.ClientSession, name: str, password: str, **extra: str
) -> aiohttp.ClientResponse:
    token = await _csrf_token(http)
    form = {"username": name, "password": password, "csrf_token": token, **extra}
    async with http.post("/login", data=form, allow_redirects=False) as response:
        await response.read()
        return response


async def test_login_sets_a_strict_session_and_the_user_sees_pages(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        async with http.get("/t/whoami", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/login?next=/t/whoami"

        response = await _login(http, "alice", PASSWORDS["alice"], next="/t/whoami")
        assert response.status == 303
        assert response.headers["Location"] == "/t/whoami"
        cookie = next(v for v in response.headers.getall("Set-Cookie") if SESSION_COOKIE in v)
        attributes = cookie.lower()
        assert "httponly" in attributes
        assert "samesite=strict" in attributes
        assert f"max-age={served.settings.console_session_max_age_s}" in attributes
        assert "secure" not in attributes  # turned off for this plain-HTTP test

        async with http.get("/t/whoami") as response:
            assert response.status == 200
            assert await response.text() == "alice operator -"


async def test_the_session_cookie_is_secure_by_default(serve: ServeFactory, tmp_path: Path) -> None:
    served = await serve(
        console_users_file=_users_file(tmp_path / "users.txt"), console_cookie_secure=True
    )
    async with served.client() as http, http.get("/login") as response:
        cookie = next(v for v in response.headers.getall("Set-Cookie") if SESSION_COOKIE in v)
        assert "secure" in cookie.lower().split("; ")


async def test_wrong_password_and_unknown_user_get_the_same_answer(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    answers = []
    async with served.client() as http:
        for name, password in (("alice", "not-her-password"), ("mallory", "whatever-1")):
            token = await _csrf_token(http)
            form = {"username": name, "password": password, "csrf_token": token}
            async with http.post("/login", data=form, allow_redirects=False) as response:
                body = await response.text()
                answers.append(response.status)
                assert "Wrong user or password." in body
                assert name not in body.replace('value="' + name, "")
        async with http.get("/t/whoami", allow_redirects=False) as response:
            assert response.status == 303
    assert answers == [401, 401]


async def test_failed_logins_are_throttled_even_for_the_right_password(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(
        console_users_file=_users_file(tmp_path / "users.txt"), console_login_max_failures=2
    )
    async with served.client() as http:
        for _ in range(2):
            assert (await _login(http, "alice", "wrong-password")).status == 401
        response = await _login(http, "alice", PASSWORDS["alice"])
        assert response.status == 429
        # Another name from the same address still gets its own attempts.
        assert (await _login(http, "victor", PASSWORDS["victor"])).status == 303


async def test_forged_posts_are_refused_before_the_endpoint(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        assert (await _login(http, "alice", PASSWORDS["alice"])).status == 303
        token = await _csrf_token(http, "/t/missing", 404)  # every page carries the token

        async def post(**kwargs: Any) -> tuple[int, str]:
            async with http.post("/t/operate", allow_redirects=False, **kwargs) as response:
                return response.status, await response.text()

        assert (await post(data={"x": "1"}))[0] == 403
        assert (await post(data={"csrf_token": "A" * 43}))[0] == 403
        assert (await post(headers={"X-CSRF-Token": token[:-1] + "x"}))[0] == 403
        status, body = await post(
            data={"csrf_token": token}, headers={"Origin": "https://evil.example"}
        )
        assert status == 403
        assert "done" not in body
        assert (await post(data={"csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}))[
            0
        ] == 403
        assert await post(data={"csrf_token": token}) == (200, "done by alice")
        assert await post(headers={"X-CSRF-Token": token}) == (200, "done by alice")
        host = served.url.removeprefix("http://")
        assert await post(data={"csrf_token": token}, headers={"Origin": f"http://{host}"}) == (
            200,
            "done by alice",
        )
        # What Chromium sends with the console's own form post (its Referrer-Policy decides
        # whether the Origin is real or "null"); an opaque origin stays refused.
        same_site = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        assert await post(data={"csrf_token": token}, headers=same_site) == (200, "done by alice")
        opaque = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
        assert (await post(data={"csrf_token": token}, headers=opaque))[0] == 403


async def test_with_a_public_origin_a_post_must_come_from_it_whatever_the_host(
    serve: ServeFactory, tmp_path: Path
) -> None:
    public = "https://console.example.com"
    users = _users_file(tmp_path / "users.txt")
    # The Host a reverse proxy forwards when it rewrites it (nginx's default `$proxy_host`),
    # with what a browser at the public origin sends along.
    upstream = {"Host": "ttp-console:8090"}
    from_browser = {"Origin": public, "Sec-Fetch-Site": "same-origin"}

    async def log_in(http: aiohttp.ClientSession) -> int:
        token = await _csrf_token(http)
        form = {"username": "alice", "password": PASSWORDS["alice"], "csrf_token": token}
        async with http.post(
            "/login", data=form, headers=from_browser, allow_redirects=False
        ) as response:
            return response.status

    host_compared = await serve(console_users_file=users)
    async with host_compared.client(**upstream) as http:
        assert await log_in(http) == 403  # the Origin is not the Host: every POST fails

    served = await serve(console_users_file=users, console_public_origin=public)
    async with served.client(**upstream) as http:
        assert await log_in(http) == 303
        token = await _csrf_token(http, "/t/missing", 404)

        async def post(headers: dict[str, str], form: dict[str, str] | None = None) -> int:
            data = {"csrf_token": token} if form is None else form
            async with http.post("/t/operate", data=data, headers=headers) as response:
                return response.status

        assert await post(from_browser) == 200
        assert await post({"Origin": public}) == 200
        assert await post({}) == 200  # no Origin at all: the token decides, as before
        socket_origin = served.url  # what the Host-derived check would have accepted
        for origin in (
            "https://evil.example",
            "http://console.example.com",
            "https://console.example.com:8443",
            "https://console.example.com.evil.example",
            socket_origin,
            "null",
        ):
            assert await post({**from_browser, "Origin": origin}) == 403, origin
        assert await post({**from_browser, "Sec-Fetch-Site": "cross-site"}) == 403
        assert await post(from_browser, form={"csrf_token": "A" * 43}) == 403
        assert await post(from_browser, form={}) == 403


async def test_login_itself_needs_the_csrf_token(serve: ServeFactory, tmp_path: Path) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        form = {"username": "alice", "password": PASSWORDS["alice"]}
        async with http.post("/login", data=form, allow_redirects=False) as response:
            assert response.status == 403
        async with http.get("/t/whoami", allow_redirects=False) as response:
            assert response.status == 303


async def test_a_viewer_cannot_post_to_an_operator_endpoint(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        assert (await _login(http, "victor", PASSWORDS["victor"])).status == 303
        token = await _csrf_token(http, "/t/missing", 404)
        async with http.post("/t/operate", data={"csrf_token": token}) as response:
            assert response.status == 403
            assert "Only operators may change rule state." in await response.text()


async def test_without_a_login_a_post_gets_401(serve: ServeFactory, tmp_path: Path) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http, http.post("/t/operate", data={}) as response:
        assert response.status == 401


async def test_a_changed_or_removed_user_line_ends_the_session(
    serve: ServeFactory, tmp_path: Path
) -> None:
    path = _users_file(tmp_path / "users.txt")
    served = await serve(console_users_file=path)
    alice, victor = served.client(), served.client()
    async with alice, victor:
        assert (await _login(alice, "alice", PASSWORDS["alice"])).status == 303
        assert (await _login(victor, "victor", PASSWORDS["victor"])).status == 303
        async with alice.get("/t/whoami") as response:
            assert await response.text() == "alice operator -"
        # alice's line changes (a new hash and role), victor's goes.
        _users_file(path, {"alice": "viewer"})
        for http in (alice, victor):
            async with http.get("/t/whoami", allow_redirects=False) as response:
                assert response.status == 303
        assert (await _login(alice, "alice", PASSWORDS["alice"])).status == 303
        async with alice.get("/t/whoami") as response:
            assert await response.text() == "alice viewer -"


async def test_a_cookie_copied_before_logout_is_refused_after_it(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    laptop, phone = served.client(), served.client()
    async with laptop, phone:
        assert (await _login(laptop, "alice", PASSWORDS["alice"])).status == 303
        assert (await _login(phone, "alice", PASSWORDS["alice"])).status == 303
        token = await _csrf_token(laptop, "/t/missing", 404)
        copied = laptop.cookie_jar.filter_cookies(URL(served.url))[SESSION_COOKIE].value
        # Someone else holding a copy of the laptop's cookie (and its CSRF token).
        thief_headers = {"Cookie": f"{SESSION_COOKIE}={copied}", "X-CSRF-Token": token}

        async def as_thief(method: str, path: str) -> aiohttp.ClientResponse:
            async with (
                served.client() as thief,
                thief.request(method, path, headers=thief_headers, allow_redirects=False) as r,
            ):
                await r.read()
                return r

        assert (await as_thief("GET", "/t/whoami")).status == 200
        assert (await as_thief("POST", "/t/operate")).status == 200

        async with laptop.post(
            "/logout", data={"csrf_token": token}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/login"

        refused_page = await as_thief("GET", "/t/whoami")
        assert refused_page.status == 303
        assert refused_page.headers["Location"] == "/login?next=/t/whoami"
        assert (await as_thief("POST", "/t/operate")).status == 401
        async with laptop.get("/t/whoami", allow_redirects=False) as response:
            assert response.status == 303
        # The same user's other session goes on.
        async with phone.get("/t/whoami") as response:
            assert response.status == 200
            assert await response.text() == "alice operator -"
        # And logging in again on the laptop gives a session that works.
        assert (await _login(laptop, "alice", PASSWORDS["alice"])).status == 303
        async with laptop.get("/t/whoami") as response:
            assert await response.text() == "alice operator -"


async def test_security_headers_on_every_response(serve: ServeFactory, tmp_path: Path) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        seen: list[tuple[str, int]] = []

        async def check(method: str, path: str, **kwargs: Any) -> None:
            async with http.request(method, path, allow_redirects=False, **kwargs) as response:
                body = await response.text()
                headers = response.headers
                seen.append((path, response.status))
                assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert headers["X-Frame-Options"] == "DENY"
                assert headers["Referrer-Policy"] == "same-origin"
                assert "camera=()" in headers["Permissions-Policy"]
                assert "Strict-Transport-Security" not in headers  # plain HTTP here
                if path.startswith("/static/"):
                    assert headers["Cache-Control"] != "no-store"
                else:
                    assert headers["Cache-Control"] == "no-store"
                assert SECRET_MESSAGE not in body
                assert "Traceback" not in body

        await check("GET", "/login")
        await check("GET", "/static/console.css")
        await check("GET", "/static/nothing-here.css")
        await check("GET", "/t/whoami")  # redirect to the login
        await check("POST", "/t/operate")  # 401
        await check("POST", "/login", data={"username": "x"})  # 403: no token
        assert (await _login(http, "alice", PASSWORDS["alice"])).status == 303
        await check("GET", "/t/missing")
        await check("DELETE", "/t/whoami", headers={"X-CSRF-Token": "x"})
        await check("GET", "/t/boom")
    assert [status for _, status in seen] == [200, 200, 404, 303, 401, 403, 404, 403, 500]


async def test_an_https_public_origin_gets_hsts_though_the_console_is_reached_over_http(
    serve: ServeFactory, tmp_path: Path
) -> None:
    users = _users_file(tmp_path / "users.txt")
    https_site = await serve(
        console_users_file=users, console_public_origin="https://console.example.com"
    )
    http_site = await serve(
        console_users_file=users, console_public_origin="http://console.example.com:8090"
    )
    requests: list[tuple[str, str, int]] = [
        ("GET", "/login", 200),
        ("GET", "/static/console.css", 200),
        ("GET", "/t/whoami", 303),
        ("POST", "/t/operate", 401),
    ]
    for served, hsts in ((https_site, "max-age=31536000"), (http_site, None)):
        async with served.client() as http:
            for method, path, status in requests:
                async with http.request(method, path, allow_redirects=False) as response:
                    assert response.status == status
                    assert response.headers.get("Strict-Transport-Security") == hsts, path


async def test_the_error_page_leaks_nothing(serve: ServeFactory, tmp_path: Path) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        assert (await _login(http, "alice", PASSWORDS["alice"])).status == 303
        async with http.get("/t/boom") as response:
            body = await response.text()
            assert response.status == 500
            assert response.headers["Content-Type"].startswith("text/html")
    assert SECRET_MESSAGE not in body
    assert "RuntimeError" not in body
    assert "Something went wrong" in body


async def test_static_styles_need_no_login_and_templates_have_no_inline_code(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        async with http.get("/static/console.css") as response:
            assert response.status == 200
            css = await response.text()
        async with http.get("/login") as response:
            page = await response.text()
    for level in range(6):
        assert f".heat-{level} " in css
    assert "<script>" not in page
    assert "style=" not in page
    assert "<style" not in page


async def test_a_hostile_users_file_refuses_logins_without_crashing(
    serve: ServeFactory, tmp_path: Path
) -> None:
    path = tmp_path / "users.txt"
    path.write_bytes(b"alice:operator:\xff\xfe\x00garbage\n" * 3)
    path.chmod(0o600)
    served = await serve(console_users_file=path)
    async with served.client() as http:
        response = await _login(http, "alice", PASSWORDS["alice"])
        assert response.status == 401
    _users_file(path)
    async with served.client() as http:
        assert (await _login(http, "alice", PASSWORDS["alice"])).status == 303


async def test_a_users_file_others_may_read_is_not_used(
    serve: ServeFactory, tmp_path: Path
) -> None:
    path = _users_file(tmp_path / "users.txt")
    os.chmod(path, 0o644)
    served = await serve(console_users_file=path)
    async with served.client() as http:
        assert (await _login(http, "alice", PASSWORDS["alice"])).status == 401


async def test_the_next_parameter_cannot_leave_the_site(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        async with served.client() as http:
            response = await _login(http, "alice", PASSWORDS["alice"], next=target)
            assert response.status == 303
            assert response.headers["Location"] == "/"


# ---------------------------------------------------------------------------- proxy mode


async def test_proxy_headers_are_trusted_from_the_trusted_range(serve: ServeFactory) -> None:
    served = await serve(
        console_auth="proxy",
        console_trusted_proxies="127.0.0.0/8",
        console_operators="ops@example.org",
    )
    async with served.client(**{"X-Forwarded-User": "u-123"}) as http:
        async with http.get("/t/whoami") as response:
            assert await response.text() == "u-123 viewer -"
        async with http.get("/login", allow_redirects=False) as response:
            assert response.status == 303  # proxy mode has no login page of its own
    operator_headers = {"X-Forwarded-User": "u-9", "X-Forwarded-Email": "Ops@Example.org"}
    async with served.client(**operator_headers) as http:
        async with http.get("/t/whoami") as response:
            assert await response.text() == "u-9 operator Ops@Example.org"
            token = await _csrf_token(http, "/t/missing", 404)
        async with http.post("/t/operate", data={"csrf_token": token}) as response:
            assert await response.text() == "done by u-9"


async def test_proxy_headers_from_elsewhere_are_refused(
    serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve(
        console_auth="proxy",
        console_trusted_proxies="10.0.0.0/8, ::ffff:10.0.0.0/104",
        console_operators="admin",
    )
    headers = {
        "X-Forwarded-User": "admin",
        "X-Forwarded-For": "10.1.2.3",
        "X-Real-IP": "10.1.2.3",
        "Forwarded": "for=10.1.2.3",
    }
    async with served.client(**headers) as http:
        for path in ("/t/whoami", "/login", "/static/console.css"):
            async with http.get(path, allow_redirects=False) as response:
                assert response.status == 403
                body = await response.text()
                assert "admin" not in body
    assert any("TTP_CONSOLE_TRUSTED_PROXIES" in record.getMessage() for record in caplog.records)


async def test_a_trusted_proxy_that_names_nobody_is_refused(serve: ServeFactory) -> None:
    served = await serve(console_auth="proxy", console_trusted_proxies="127.0.0.1/32")
    async with served.client() as http, http.get("/t/whoami") as response:
        assert response.status == 403
    named_badly = served.client(**{"X-Forwarded-User": "two words"})
    async with named_badly as http, http.get("/t/whoami") as response:
        assert response.status == 403


async def test_a_new_proxy_user_gets_a_new_csrf_token(serve: ServeFactory) -> None:
    served = await serve(
        console_auth="proxy", console_trusted_proxies="127.0.0.1/32", console_operators="a,b"
    )
    async with served.client() as http:
        token = await _csrf_token(http, "/t/missing", 404, **{"X-Forwarded-User": "a"})
        form = {"csrf_token": token}
        async with http.post("/t/operate", data=form, headers={"X-Forwarded-User": "b"}) as r:
            assert r.status == 403


async def test_oversized_and_unreadable_bodies_are_refused(
    serve: ServeFactory, tmp_path: Path
) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    async with served.client() as http:
        assert (await _login(http, "alice", PASSWORDS["alice"])).status == 303
        token = await _csrf_token(http, "/t/missing", 404)
        large_form = {"csrf_token": token, "note": "x" * 100_000}
        async with http.post("/t/operate", data=large_form) as response:
            assert response.status == 413
        huge = b"a=" + b"x" * (2 * 1024 * 1024)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": token}
        async with http.post("/t/operate", data=huge, headers=headers) as response:
            assert response.status == 413  # over the app's limit, whatever the token
        broken = b'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\nabc'
        multipart = {"Content-Type": "multipart/form-data; boundary=b"}
        async with http.post("/t/operate", data=broken, headers=multipart) as response:
            assert response.status == 403  # a cut-off part: its token is wrong
        no_boundary = {"Content-Type": "multipart/form-data"}
        async with http.post("/t/operate", data=b"\x00\xff" * 10, headers=no_boundary) as response:
            assert response.status == 400
        async with http.get("/t/whoami") as response:
            assert response.status == 200


async def test_the_pages_state_controls_refuse_viewers_and_forgeries(
    serve: ServeFactory, tmp_path: Path
) -> None:
    # Refused before the page would call the master (this console has no NATS at all).
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    form = {"action": "disable", "reason": "noisy", "duration": "1h"}
    for path in ("/rules/r-1/state", "/rules/r-1/state/clear"):
        async with served.client() as http:
            assert (await _login(http, "victor", PASSWORDS["victor"])).status == 303
            token = await _csrf_token(http, "/t/missing", 404)
            async with http.post(path, data={**form, "csrf_token": token}) as response:
                assert response.status == 403
        async with served.client() as http:
            assert (await _login(http, "alice", PASSWORDS["alice"])).status == 303
            async with http.post(path, data=form, allow_redirects=False) as response:
                assert response.status == 403
            async with http.post(
                path, data={**form, "csrf_token": "forged"}, allow_redirects=False
            ) as response:
                assert response.status == 403


async def test_headers_on_the_pages_scripts(serve: ServeFactory, tmp_path: Path) -> None:
    served = await serve(console_users_file=_users_file(tmp_path / "users.txt"))
    static = Path(__file__).parents[2] / "services" / "ttp_console" / "static"
    names = sorted(p.name for p in static.iterdir() if p.suffix in {".js", ".css"})
    assert "console.css" in names
    async with served.client() as http:
        for name in names:
            async with http.get(f"/static/{name}") as response:
                assert response.status == 200
                assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert response.headers["X-Content-Type-Options"] == "nosniff"
