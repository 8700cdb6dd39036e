"""Hostile requests against every route of the console, over real HTTP, against a real
master, NATS and PostgreSQL.

Logged in as a viewer and as an operator (proxy login mode: ``X-Forwarded-User``), each
test throws hostile path segments, query strings, forms, methods and bodies at the pages.
Every answer must be a page (2xx/3xx) or a 4xx that says why, never a 5xx or a hang; no
payload comes back as live markup; nothing the console should refuse itself reaches the
master (its audit is unchanged); and neither the console nor the master logs a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from harness.console_in_process import serve_console_in_process
from harness.master import install, master_role_settings, running_master
from harness.nats_roles import role_nats
from ttp_console.tag_store import TagStore
from ttp_core.contract.control import AuditRequest
from ttp_runtime.control_client import ControlClient

TIMEOUT_S = 30.0
OPERATOR = "olga"
VIEWER = "victor"
USERS = (VIEWER, OPERATOR, '"><img src=x onerror=alert(1)>')
"""The last is a viewer whose name (from the trusted proxy) is markup."""
MARKUP = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
"""Payloads that must never come back unescaped."""
_ENCODED_MARKUP = (
    "%3Cscript%3Ealert(1)%3C/script%3E",
    "%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E",
)


class _Tracebacks(logging.Handler):
    """Every log record carrying an exception (a traceback in the server log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None or record.levelno >= logging.ERROR:
            self.records.append(record)


@contextlib.contextmanager
def tracebacks_logged() -> Iterator[_Tracebacks]:
    handler = _Tracebacks()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@dataclass
class Console:
    url: str
    control: ControlClient
    store: TagStore

    def client(self, user: str, **headers: str) -> aiohttp.ClientSession:
        # Generous: a hang is a failure of its own, not a slow answer.
        return aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"X-Forwarded-User": user, **headers},
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        )

    def raw(self, path_and_query: str) -> URL:
        """``path_and_query`` sent as written: no normalising of ``..``, no re-encoding."""
        return URL(self.url + path_and_query, encoded=True)

    async def audit_size(self) -> int:
        return len((await self.control.audit(AuditRequest(limit=10_000))).entries)


@pytest.fixture
async def console(database_url: str, tmp_path: Path) -> AsyncIterator[Console]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    install(rules_dir, ["R0019", "R0020"])
    with role_nats(tmp_path) as roles, tracebacks_logged() as logged:
        async with (
            running_master(master_role_settings(roles, database_url, rules_dir)),
            roles.client("console") as nc,
            serve_console_in_process(nc, operators=[OPERATOR], control_timeout_s=5.0) as served,
        ):
            yield Console(served.url, served.control, served.store)
        assert roles.unexpected_violations() == []
    assert [(r.name, r.getMessage()[:300]) for r in logged.records] == [], (
        "a traceback or error in the log"
    )


_TOKEN = re.compile(r'name="csrf-token" content="([^"]+)"')


async def csrf_token(http: aiohttp.ClientSession, console: Console) -> str:
    async with http.get(console.raw("/rules/R0019")) as response:
        match = _TOKEN.search(await response.text())
    assert match is not None
    return match.group(1)


def assert_answered(what: object, status: int, body: str) -> None:
    """A page or redirect, or a refusal that says why; no payload as live markup."""
    assert status < 500, (what, status, body[:500])
    if status >= 400:
        assert body.strip(), (what, status, "an empty refusal")
    for payload in MARKUP:
        assert payload not in body, (what, status, payload)
    assert "<img src=x" not in body, what
    assert "Traceback" not in body, what


async def fetch(
    http: aiohttp.ClientSession, method: str, url: URL, **kwargs: object
) -> tuple[int, str]:
    async with http.request(method, url, allow_redirects=False, **kwargs) as response:  # type: ignore[arg-type]
        body = (await response.read()).decode("utf-8", "replace")
        return response.status, body


# --------------------------------------------------------------------------------------------
# Paths and query strings
# --------------------------------------------------------------------------------------------

LONG = "A" * 10_000
HOSTILE_TECHNIQUES = [
    "T1059/../../x",
    "T1059%2F..%2F..%2Fx",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "T1059%00",
    "T" + "1" * 10_000,
    LONG,
    "T%E2%80%AE1059",
    "%ED%A0%80",
    "%FF%FE",
    "T9999",
    "T1059.004",
    "t1059.004",
    "T1059.4",
    "T1059.0040",
    "T1059.",
    "T1059..004",
    "T1059.004.001",
    "TA0002",
    *_ENCODED_MARKUP,
]
HOSTILE_ATTACKERS = [
    "not-a-uuid",
    "00000000-0000-0000-0000-00000000000g",
    "../../etc/passwd",
    "..%2F..%2Fetc",
    "%00",
    "a%0D%0ASet-Cookie:%20x=1",
    LONG,
    "%ED%A0%80",
    "%E2%80%AE%F0%9F%92%A3",
    "a/b/c/",
    *_ENCODED_MARKUP,
]
HOSTILE_RULE_IDS = [
    "R" * 65,
    LONG,
    "R0019%00",
    "R0019%0A",
    "R0019.yaml",
    "R%20019",
    "..%2FR0019",
    "R0019/../R0020",
    "%C3%A9",
    "%ED%A0%80",
    *_ENCODED_MARKUP,
]
WINDOWS = ["999d", "-1h", "", "1h&window=7d", "%00", "1h%0D%0A", LONG, *_ENCODED_MARKUP]
CONTROL = "%00%01%1B%7F%0D%0A"
BIG = "x" * 100_000
FILTER_QUERIES = [
    f"technique={CONTROL}T1059&rule={CONTROL}&kind={CONTROL}&attacker={CONTROL}",
    f"technique={_ENCODED_MARKUP[0]}&rule={_ENCODED_MARKUP[1]}&attacker={_ENCODED_MARKUP[1]}",
    f"attacker={_ENCODED_MARKUP[0]}&kind=%ED%A0%80",
    "technique=T1059&technique=T1105&rule=R0019&rule=R0020",
    "unknown=1&heat=covered&%00=%00&=&&&",
    f"technique={BIG[:30_000]}",
    f"attacker={BIG[:30_000]}",
    f"rule={BIG}",
    f"technique={BIG}&rule={BIG}&attacker={BIG}",
]


def _get_targets() -> list[str]:
    targets = [f"/techniques/{t}" for t in HOSTILE_TECHNIQUES]
    targets += [f"/attackers/{a}" for a in HOSTILE_ATTACKERS]
    targets += [f"/rules/{r}" for r in HOSTILE_RULE_IDS]
    targets += [f"/?window={w}" for w in WINDOWS]
    targets += [f"/layers/observed.json?window={w}" for w in WINDOWS]
    targets += ["/?heat=%3Cscript%3E&unknown=%00", "/?heat=covered&heat=observed"]
    targets += [f"/live?{q}" for q in FILTER_QUERIES]
    targets += ["/techniques/%ZZ", "/rules/%", "/attackers/%", "/attackers/" + "x" * 100_000]
    targets.append("/?" + "&".join(f"p{i}=%00" for i in range(5_000)))
    for plain in ("/rules", "/fleet", "/fleet/fragment", "/attackers", "/layers/coverage.json"):
        targets.append(f"{plain}?unknown={_ENCODED_MARKUP[0]}&window=-1h")
    return targets


async def test_hostile_paths_and_queries_are_answered_with_pages_or_located_refusals(
    console: Console,
) -> None:
    audited = await console.audit_size()
    for user in USERS:
        async with console.client(user) as http:
            for target in _get_targets():
                status, body = await fetch(http, "GET", console.raw(target))
                assert_answered(target, status, body)
            if user not in {VIEWER, OPERATOR}:
                # The proxy's user name is refused as a name; the refusal did not echo it.
                assert (await fetch(http, "GET", console.raw("/")))[0] == 403
                continue
            # Known ids in unusual forms still find their page.
            assert (await fetch(http, "GET", console.raw("/techniques/t1059.004")))[0] == 200
            assert (await fetch(http, "GET", console.raw("/techniques/T9999")))[0] == 404
            assert (await fetch(http, "GET", console.raw("/rules/R" + "0" * 64)))[0] == 404
    assert await console.audit_size() == audited


async def test_hostile_live_stream_filters_open_a_stream_or_are_refused(
    console: Console,
) -> None:
    async with console.client(VIEWER) as http:
        for query in FILTER_QUERIES:
            url = console.raw(f"/live/stream?{query}")
            async with http.get(url, allow_redirects=False) as response:
                if response.status == 200:
                    assert response.headers["Content-Type"].startswith("text/event-stream")
                    first = await asyncio.wait_for(response.content.readline(), TIMEOUT_S)
                    assert first.startswith(b"retry:"), query
                else:
                    assert_answered(query, response.status, await response.text())


async def test_head_requests_answer_without_a_body_and_hold_nothing_open(
    console: Console,
) -> None:
    paths = [
        "/",
        "/?window=-1h",
        "/techniques/T1059",
        "/techniques/%00",
        "/rules",
        "/rules/R0019",
        "/rules/%3Cscript%3E",
        "/fleet",
        "/fleet/fragment",
        "/live",
        "/live/stream",
        "/attackers",
        "/attackers/x",
        "/layers/coverage.json",
        "/layers/observed.json?window=999d",
    ]
    async with console.client(VIEWER) as http:
        for path in paths:
            async with http.head(console.raw(path), allow_redirects=False) as response:
                assert response.status < 500, (path, response.status)
                assert await response.read() == b""
    assert console.store.stats().subscribers == 0  # no live stream was left open


async def test_methods_a_route_does_not_take_are_refused(console: Console) -> None:
    gets = ["/", "/techniques/T1059", "/rules", "/rules/R0019", "/fleet", "/live"]
    gets += ["/live/stream", "/attackers", "/attackers/x", "/layers/observed.json"]
    audited = await console.audit_size()
    async with console.client(OPERATOR) as http:
        token = await csrf_token(http, console)
        headers = {"X-CSRF-Token": token}
        for path in gets:
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                status, body = await fetch(http, method, console.raw(path), headers=headers)
                assert status == 405, (method, path, status)
                assert_answered((method, path), status, body)
        for path in ("/rules/R0019/state", "/rules/R0019/state/clear"):
            for method in ("GET", "PUT", "DELETE", "OPTIONS", "TRACE"):
                status, body = await fetch(http, method, console.raw(path), headers=headers)
                assert 400 <= status < 500, (method, path, status)
                assert_answered((method, path), status, body)
    assert await console.audit_size() == audited


# --------------------------------------------------------------------------------------------
# Forms on the state endpoints
# --------------------------------------------------------------------------------------------

REFUSED_FORMS: list[dict[str, str]] = [
    {},
    {"action": "disable"},
    {"reason": "x"},
    {"action": "enable", "reason": "x"},
    {"action": "clip", "reason": "x"},
    {"action": "disable", "reason": "   "},
    *(
        {"action": "clip", "reason": "x", "confidence_max": value}
        for value in ("nan", "NaN", "inf", "-inf", "-0", "0", "1e309", "1.0000001", "", "0x1p-2")
    ),
    *(
        {"action": "disable", "reason": "x", "duration": value}
        for value in ("0s", "0m", "-5m", "99999999d", "366d", "garbage", "5", "1h%", "\x00")
    ),
    {"action": "disable", "reason": "x" * 2_000},
    {"action": "disable", "reason": "before\x00after"},
    {"action": "disable", "reason": MARKUP[0], "duration": MARKUP[1]},
    {"action": "clip", "reason": "x", "confidence_max": MARKUP[0]},
    {"action": MARKUP[0], "reason": "x"},
]


async def _post_form(
    http: aiohttp.ClientSession, url: URL, form: dict[str, str], token: str
) -> tuple[int, str]:
    return await fetch(http, "POST", url, data={**form, "csrf_token": token})


async def _flash_page(http: aiohttp.ClientSession, console: Console) -> str:
    status, body = await fetch(http, "GET", console.raw("/rules/R0019"))
    assert status == 200
    assert_answered("the flash message", status, body)
    return body


async def test_hostile_state_forms_are_refused_by_the_console_with_a_message(
    console: Console,
) -> None:
    audited = await console.audit_size()
    set_url = console.raw("/rules/R0019/state")
    async with console.client(OPERATOR) as http:
        token = await csrf_token(http, console)
        for form in REFUSED_FORMS:
            status, body = await _post_form(http, set_url, form, token)
            assert status == 303, (form.keys(), status, body[:300])
            page = await _flash_page(http, console)
            assert "R0019 was not changed:" in page, {k: v[:40] for k, v in form.items()}
        # The clear form with a reason the master could not store.
        for reason in ("before\x00after", "x" * 2_000):
            status, body = await _post_form(
                http, console.raw("/rules/R0019/state/clear"), {"reason": reason}, token
            )
            assert status == 303
            assert "R0019 was not cleared:" in await _flash_page(http, console)
        # A form beyond what any of the console's forms can hold: refused whole, by size.
        status, body = await _post_form(
            http, set_url, {"action": "disable", "reason": "x" * 100_000}, token
        )
        assert status == 413
        assert_answered("100 KB reason", status, body)
        # Raw bodies a browser would not send: NUL, a lone surrogate as UTF-8 bytes,
        # broken escapes, duplicated fields.
        raw_bodies = [
            b"action=disable&reason=%00&csrf_token=" + token.encode(),
            b"action=disable&reason=%ED%A0%80%00&duration=%FF&csrf_token=" + token.encode(),
            b"action=clip&action=disable&reason=x&confidence_max=nan&confidence_max=inf"
            b"&csrf_token=" + token.encode(),
            b"action=disable&reason=x&duration=0s&duration=2h&csrf_token=" + token.encode(),
            b"%%%&&&==&action=%ZZ&csrf_token=" + token.encode(),
        ]
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        for raw in raw_bodies:
            status, body = await fetch(http, "POST", set_url, data=raw, headers=form_type)
            assert_answered(raw[:60], status, body)
            assert status in {303, 400}, (raw[:60], status)
            if status == 303:
                assert "R0019 was not changed:" in await _flash_page(http, console), raw[:60]
        # Another content type, with the token in its header: no form to read.
        for content_type, raw in (
            ("application/json", b'{"action": "disable", "reason": "x"}'),
            ("text/plain", b"action=disable&reason=x"),
            ("multipart/form-data", b"--nope\r\n"),
            ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n"),
            ("application/x-www-form-urlencoded; charset=utf-16", "action=x".encode("utf-16")),
        ):
            headers = {"Content-Type": content_type, "X-CSRF-Token": token}
            status, body = await fetch(http, "POST", set_url, data=raw, headers=headers)
            assert_answered(content_type, status, body)
            assert status in {303, 400, 413, 415}, (content_type, status)
        # Multipart: the reason as a file, then more fields than any form has.
        upload = aiohttp.FormData()
        upload.add_field("csrf_token", token)
        upload.add_field("action", "disable")
        upload.add_field("reason", b"from a file", filename="reason.txt")
        status, body = await fetch(http, "POST", set_url, data=upload)
        assert status == 303
        assert "R0019 was not changed:" in await _flash_page(http, console)
        crowd = aiohttp.FormData()
        crowd.add_field("csrf_token", token)
        for number in range(1_500):
            crowd.add_field(f"f{number}", "x")
        crowd.add_field("force", "x")  # multipart even without a file
        crowd.add_field("file", b"", filename="x")
        status, body = await fetch(http, "POST", set_url, data=crowd)
        assert_answered("1,500 fields", status, body)
        assert status in {400, 413}, status
        # A body far beyond any form: refused before it is read whole.
        for headers in ({"X-CSRF-Token": token}, {}):
            status, body = await fetch(
                http,
                "POST",
                set_url,
                data=b"reason=" + b"x" * (10 * 1024 * 1024),
                headers={**form_type, **headers},
            )
            assert status in {400, 413}, (headers, status)
            assert_answered("10 MB", status, body)
    assert await console.audit_size() == audited
    assert console.control is not None


async def test_a_viewer_is_refused_every_hostile_state_form_and_nothing_reaches_the_master(
    console: Console,
) -> None:
    audited = await console.audit_size()
    async with console.client(VIEWER) as http:
        token = await csrf_token(http, console)
        for path in ("/rules/R0019/state", "/rules/R0019/state/clear", "/rules/%00/state"):
            for form in [*REFUSED_FORMS[:4], {"action": "disable", "reason": "fine"}]:
                status, body = await _post_form(http, console.raw(path), form, token)
                assert status in {403, 404}, (path, status)
                assert_answered(path, status, body)
    assert await console.audit_size() == audited


async def test_hostile_rule_ids_on_the_state_endpoints_are_refused_before_the_master(
    console: Console,
) -> None:
    audited = await console.audit_size()
    async with console.client(OPERATOR) as http:
        token = await csrf_token(http, console)
        for rule_id in HOSTILE_RULE_IDS:
            for suffix in ("/state", "/state/clear"):
                path = f"/rules/{rule_id}{suffix}"
                status, body = await _post_form(
                    http, console.raw(path), {"action": "disable", "reason": "x"}, token
                )
                assert status in {303, 404, 405}, (path[:80], status)
                assert_answered(path[:80], status, body)
    assert await console.audit_size() == audited


async def test_a_strange_but_valid_reason_is_stored_and_shown_escaped(console: Console) -> None:
    async with console.client(OPERATOR) as http:
        token = await csrf_token(http, console)
        reason = f"{MARKUP[0]} {MARKUP[1]} \u202e\U0001f4a3"
        status, _body = await _post_form(
            http,
            console.raw("/rules/R0019/state"),
            {"action": "clip", "reason": reason, "confidence_max": "0.5", "duration": "1d"},
            token,
        )
        assert status == 303
        page = await _flash_page(http, console)
        assert "R0019 clipped until" in page
        for path in ("/rules", "/rules/R0019"):
            status, body = await fetch(http, "GET", console.raw(path))
            assert status == 200
            assert_answered(path, status, body)
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


async def test_the_live_page_streams_only_the_filter_it_kept(console: Console) -> None:
    query = f"technique=t1059&rule={BIG}&kind={CONTROL}&attacker={BIG[:300]}&{_ENCODED_MARKUP[0]}=1"
    async with console.client(VIEWER) as http:
        status, body = await fetch(http, "GET", console.raw(f"/live?{query}"))
    assert status == 200
    assert_answered("/live", status, body)
    assert 'data-stream="/live/stream?technique=T1059"' in body
    assert "Ignored (not valid): rule, kind, attacker." in body
    assert BIG[:300] not in body  # neither the 100 KB value nor the long attacker come back
