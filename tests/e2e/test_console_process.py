"""The `ttp-console` process: starts from the environment, logs its URL, becomes ready once
its feeds have read the streams, serves the login-protected UI, and stops cleanly on SIGTERM
with a live-tag stream open."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from harness.console import ConsoleUser, console_environment, log_records, write_test_users
from harness.nats_roles import RoleNats
from ttp_console.auth.headers import CONTENT_SECURITY_POLICY
from ttp_runtime.nats import connect, drain, ensure_configured_streams
from ttp_runtime.settings import ServiceSettings

TIMEOUT_S = 30.0
PASSWORD = "operator-password"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class ConsoleProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log_path = log

    def records(self) -> list[dict[str, Any]]:
        return log_records(self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def wait_record(self, message_start: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for record in self.records():
                if str(record.get("message", "")).startswith(message_start):
                    return record
            if self.proc.poll() is not None:
                raise AssertionError(f"ttp-console exited {self.proc.returncode}:\n{self.log()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {message_start!r} in the console's log:\n{self.log()}")


@contextlib.contextmanager
def running_console(tmp_path: Path, **env: str) -> Iterator[ConsoleProcess]:
    """`ttp-console` with an operator `olga`, logging to ``console.log``; killed at the end."""
    users = write_test_users(tmp_path / "users.txt", [ConsoleUser("olga", "operator", PASSWORD)])
    full_env = console_environment(users, **env)
    log = tmp_path / "console.log"
    with log.open("ab") as out:
        # `python -m` rather than the console script: the same entry point (cli.main).
        proc = subprocess.Popen(
            [sys.executable, "-m", "ttp_console.cli"],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield ConsoleProcess(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _make_streams(settings: ServiceSettings) -> None:
    nc = await connect(settings, "test-streams")
    try:
        await ensure_configured_streams(nc.jetstream(), settings)
    finally:
        await drain(nc)


async def _until_ready(http: aiohttp.ClientSession, console: ConsoleProcess) -> None:
    health = await console.wait_record("health server listening")
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        async with http.get(f"http://127.0.0.1:{health['port']}/readyz") as response:
            if response.status == 200:
                return
            reason = await response.text()
        assert time.monotonic() < deadline, f"never ready: {reason}\n{console.log()}"
        await asyncio.sleep(0.1)


async def _stop(console: ConsoleProcess) -> None:
    console.proc.send_signal(signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, console.proc.wait, 10)
    assert code == 0, console.log()
    assert any(r.get("message") == "console stopped" for r in console.records())


async def _metrics_show_what_happened(http: aiohttp.ClientSession, console: ConsoleProcess) -> None:
    """The console's own metrics on /metrics: both feeds caught up, one good login, the
    live stream open."""
    health = await console.wait_record("health server listening")
    async with http.get(f"http://127.0.0.1:{health['port']}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values[("ttp_console_feed_caught_up", (("feed", "tags"),))] == 1
    assert values[("ttp_console_feed_caught_up", (("feed", "rules"),))] == 1
    assert values[("ttp_console_feed_restarts_total", (("feed", "tags"),))] == 0
    assert values[("ttp_console_logins_total", (("outcome", "ok"),))] == 1
    assert values[("ttp_console_live_streams", ())] == 1
    assert values[("ttp_console_tag_messages_total", ())] == 0
    assert ("ttp_console_tags_dropped_total", (("reason", "unreadable_message"),)) in values


async def test_console_runs_serves_and_stops_on_sigterm(private_nats: Any, tmp_path: Path) -> None:
    await _make_streams(ServiceSettings(nats_url=private_nats.url))
    with running_console(tmp_path, TTP_NATS_URL=private_nats.url) as console:
        started = await console.wait_record("console started")
        url = str(started["url"]).rstrip("/")
        assert any(
            "TTP_CONSOLE_SESSION_SECRET is not set" in str(r.get("message"))
            for r in console.records()
        )
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _until_ready(http, console)
            async with http.get(f"{url}/", allow_redirects=False) as response:
                assert response.status == 303
                assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            async with http.get(f"{url}/login") as response:
                match = _TOKEN.search(await response.text())
            assert match is not None
            form = {"username": "olga", "password": PASSWORD, "csrf_token": match.group(1)}
            async with http.post(f"{url}/login", data=form, allow_redirects=False) as response:
                assert response.status == 303

            # A live-tag stream stays open until the console ends it at shutdown.
            stream = await http.get(f"{url}/live/stream", timeout=aiohttp.ClientTimeout(total=20))
            assert stream.status == 200
            assert await stream.content.readline()
            await _metrics_show_what_happened(http, console)
            stopping = asyncio.ensure_future(_stop(console))
            # The console ends the stream (end of body, or the connection closed under it).
            with contextlib.suppress(aiohttp.ClientError):
                while await stream.content.readline():
                    pass
            stream.release()
            await stopping


async def test_console_runs_as_its_nats_role(roles: RoleNats, tmp_path: Path) -> None:
    # The streams are the master's to make; the console only reads them, under its grants
    # (the `roles` fixture fails the test on any permission violation).
    await _make_streams(roles.credentials["master"].client_settings(roles.url))
    with running_console(tmp_path, **roles.env("console")) as console:
        started = await console.wait_record("console started")
        async with aiohttp.ClientSession() as http:
            await _until_ready(http, console)
            async with http.get(f"{started['url']}login") as response:
                assert response.status == 200
        await _stop(console)
