"""A real `ttp-console` process for end-to-end tests, and the browser that drives it.

:func:`start_console` runs the ``ttp-console`` console script as the NATS role ``console``
among a test's other processes (:class:`harness.processes.Procs` kills it with them), with
a users file of its own, and :func:`wait_console_ready` returns its URL once ``/readyz``
says both feeds have read the streams.

The browser tests drive Debian's ``chromium`` through Playwright (whose own browser
downloads are not reachable from every machine). :func:`chromium_verdict` is the rule for
when that browser is missing: CI fails (``.ci/run`` installs the package, so a missing
browser there is a broken CI machine), anywhere else the browser tests are skipped and the
run says so loudly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from argon2 import PasswordHasher

from harness.processes import BIN, Procs
from ttp_console.auth.users_file import LocalUser, write_users
from ttp_console.context import ConsoleRole

__all__ = [
    "CHROMIUM_VARIABLE",
    "ChromiumVerdict",
    "ConsoleUser",
    "chromium_verdict",
    "console_environment",
    "log_records",
    "start_console",
    "wait_console_ready",
    "write_test_users",
]

TIMEOUT_S = 60.0

CHROMIUM_VARIABLE = "TTP_TEST_CHROMIUM"
"""Path of the Chromium to drive; unset: ``chromium`` on the PATH (Debian's package)."""

INSTALL_HINT = "apt-get install chromium (Debian's package; .ci/run installs it in CI)"

# Argon2 at its cheapest: the tests log in often, and the cost of a real hash proves nothing
# here (the users-file tests check the real parameters).
_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass(frozen=True)
class ConsoleUser:
    """A login of the test console's users file."""

    name: str
    role: ConsoleRole
    password: str


@dataclass(frozen=True)
class ChromiumVerdict:
    """What the browser tests do: run with ``executable``, skip, or fail, and why."""

    action: Literal["run", "skip", "fail"]
    executable: str | None
    reason: str


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def chromium_verdict(environ: Mapping[str, str]) -> ChromiumVerdict:
    """Run the browser tests with the Chromium found, else fail under CI and skip elsewhere.

    ``TTP_TEST_CHROMIUM`` names the browser; unset, it is ``chromium`` on the PATH. A named
    file that is not executable counts as no browser (never a silent fallback to another).
    """
    named = environ.get(CHROMIUM_VARIABLE)
    if named:
        found = named if os.path.isfile(named) and os.access(named, os.X_OK) else None
        missing = f"{CHROMIUM_VARIABLE}={named} is not an executable file"
    else:
        found = shutil.which("chromium", path=environ.get("PATH", os.defpath))
        missing = "no chromium on the PATH"
    if found is not None:
        return ChromiumVerdict("run", found, f"Chromium at {found}")
    if _truthy(environ.get("CI")):
        return ChromiumVerdict(
            "fail", None, f"{missing}, and CI must run the browser tests: {INSTALL_HINT}"
        )
    return ChromiumVerdict(
        "skip", None, f"{missing}: the console's browser tests did not run; {INSTALL_HINT}"
    )


def write_test_users(path: Path, users: list[ConsoleUser]) -> Path:
    """The users file of `users` (mode 0600, as the console requires)."""
    write_users(path, {u.name: LocalUser(u.name, u.role, _HASHER.hash(u.password)) for u in users})
    return path


def console_environment(users_file: Path, **env: str) -> dict[str, str]:
    """A console's environment: this process's without its ``TTP_`` variables, the UI and
    probes on free loopback ports, users mode with ``users_file``, the cookie over plain HTTP
    and JSON logs; ``env`` adds to it or overrides it."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TTP_")},
        "TTP_HTTP_HOST": "127.0.0.1",
        "TTP_HTTP_PORT": "0",
        "TTP_CONSOLE_HOST": "127.0.0.1",
        "TTP_CONSOLE_PORT": "0",
        "TTP_CONSOLE_USERS_FILE": str(users_file),
        "TTP_CONSOLE_COOKIE_SECURE": "false",
        "TTP_LOG_FORMAT": "json",
        **env,
    }


def start_console(
    procs: Procs, users: list[ConsoleUser], name: str = "console", **env: str
) -> subprocess.Popen[bytes]:
    """`ttp-console` as the NATS role ``console``, logging to ``<name>.log`` in JSON.

    Only the variables a console has: no database URL, no rules directory (it reads the
    rules from the bus). The UI and the probes listen on free loopback ports, the session
    cookie goes over plain HTTP.
    """
    if procs.roles is None:
        raise ValueError("the console runs as its NATS role: start the processes with roles")
    users_file = write_test_users(procs.tmp / f"{name}-users.txt", users)
    full_env = console_environment(
        users_file,
        **procs.roles.env("console"),
        TTP_CONSOLE_SESSION_SECRET="browser-test-session-secret-0123456789",
        **env,
    )
    with (procs.tmp / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "ttp-console")],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs.procs[name] = proc
    return proc


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a service's log file; lines that are not one are passed over."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


async def wait_console_ready(procs: Procs, name: str = "console") -> str:
    """The console's UI URL (no trailing slash) once its ``/readyz`` answers 200."""
    log = procs.tmp / f"{name}.log"
    deadline = time.monotonic() + TIMEOUT_S
    started: dict[str, Any] | None = None
    last = "not started yet"
    while True:
        procs.check_alive(name)
        if started is None:
            started = next(
                (
                    r
                    for r in log_records(log)
                    if str(r.get("message")).startswith("console started")
                ),
                None,
            )
        if started is not None:
            status, last = await asyncio.to_thread(_readyz, int(started["http_port"]))
            if status == 200:
                return str(started["url"]).rstrip("/")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name} not ready within {TIMEOUT_S} s ({last}):\n{procs.log(name)}"
            )
        await asyncio.sleep(0.1)
