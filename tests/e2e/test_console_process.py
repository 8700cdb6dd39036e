"""The `ttp-console` process: starts from the environment, logs its URL, becomes ready once
its feeds have read the streams, serves the login-protected UI, and stops cleanly on SIGTERM
with a live-tag stream open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher

from ttp_console.auth.headers import CONTENT_SECURITY_POLICY
from ttp_console.auth.users_file import LocalUser, write_users
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
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

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


@pytest.fixture
def console_process(private_nats: Any, tmp_path: Path) -> Iterator[ConsoleProcess]:
    users = tmp_path / "users.txt"
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    write_users(users, {"olga": LocalUser("olga", "operator", hasher.hash(PASSWORD))})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TTP_")},
        "TTP_NATS_URL": private_nats.url,
        "TTP_HTTP_HOST": "127.0.0.1",
        "TTP_HTTP_PORT": "0",
        "TTP_CONSOLE_HOST": "127.0.0.1",
        "TTP_CONSOLE_PORT": "0",
        "TTP_CONSOLE_USERS_FILE": str(users),
        "TTP_CONSOLE_COOKIE_SECURE": "false",
        "TTP_LOG_FORMAT": "json",
    }
    log = tmp_path / "console.log"
    asyncio.run(_make_streams(private_nats.url))
    with log.open("ab") as out:
        # `python -m` rather than the console script: the same entry point (cli.main).
        proc = subprocess.Popen(
            [sys.executable, "-m", "ttp_console.cli"],
            env=env,
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


async def _make_streams(url: str) -> None:
    settings = ServiceSettings(nats_url=url)
    nc = await connect(settings, "test-streams")
    try:
        await ensure_configured_streams(nc.jetstream(), settings)
    finally:
        await drain(nc)


async def test_console_runs_serves_and_stops_on_sigterm(console_process: ConsoleProcess) -> None:
    started = await console_process.wait_record("console started")
    url = str(started["url"]).rstrip("/")
    health = await console_process.wait_record("health server listening")
    health_url = f"http://127.0.0.1:{health['port']}"
    assert any(
        "TTP_CONSOLE_SESSION_SECRET is not set" in str(r.get("message"))
        for r in console_process.records()
    )

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            async with http.get(f"{health_url}/readyz") as response:
                if response.status == 200:
                    break
                reason = await response.text()
            assert time.monotonic() < deadline, f"never ready: {reason}"
            await asyncio.sleep(0.1)

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

        stopping = time.monotonic()
        console_process.proc.send_signal(signal.SIGTERM)
        # The console ends the stream (end of body, or the connection closed under it).
        with contextlib.suppress(aiohttp.ClientError):
            while await stream.content.readline():
                pass
        stream.release()

    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, console_process.proc.wait, 10)
    assert code == 0, console_process.log()
    assert time.monotonic() - stopping < 10
    assert any(r.get("message") == "console stopped" for r in console_process.records())
