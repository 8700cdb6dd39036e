"""Real `ttp-master` / `ttp-worker` processes for end-to-end tests, and ways to watch them.

Each process logs to a file under the test's tmp dir; `Procs` kills whatever is still
running when the test ends. On a roles-secured server (`harness.nats_roles.role_nats`) every
process runs as the role it is started with, with that role's credentials alone.
`start_fleet` brings up a master on the starter pack and the named workers and waits until
every worker holds the master's digest.
"""

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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from harness.master import STARTER_RULES, BusRecorder
from harness.nats_roles import RoleNats
from ttp_core.contract import subjects
from ttp_runtime.nats_roles import Role

BIN = Path(sys.executable).parent
TIMEOUT_S = 30.0
WORKER_ENV = {
    "TTP_STATUS_INTERVAL_S": "0.3",
    "TTP_FETCH_TIMEOUT_S": "0.3",
    "TTP_ACK_WAIT_S": "3",
    "TTP_NATS_PING_INTERVAL_S": "1",
}


class Procs:
    """The processes of one test, all killed at the end whatever happened.

    With `roles`, each process connects as the role it is started with; without, to an open
    server (`nats_url`) as nobody in particular.
    """

    def __init__(
        self,
        tmp: Path,
        nats_url: str,
        database_url: str,
        rules: Path,
        roles: RoleNats | None = None,
    ) -> None:
        self.tmp = tmp
        self.roles = roles
        self.base_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TTP_")},
            "TTP_NATS_URL": nats_url,
            "TTP_DATABASE_URL": database_url,
            "TTP_RULES_DIR": str(rules),
            "TTP_HTTP_HOST": "127.0.0.1",
            "TTP_HTTP_PORT": "0",
            "TTP_LOG_FORMAT": "json",
            "TTP_DEBOUNCE_MS": "10",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, role: Role | None, **env: str) -> dict[str, str]:
        """The environment of a program run as `role` (None: only on an open server)."""
        if self.roles is None:
            return {**self.base_env, **env}
        if role is None:
            raise ValueError("on a roles-secured server every program needs its role")
        return {**self.base_env, **self.roles.env(role), **env}

    def start(
        self, name: str, program: str, *, role: Role | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start `program` as `role`; its output goes to ``<name>.log``."""
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [str(BIN / program)],
                env=self.env(role, **env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def worker(self, worker_id: str, **env: str) -> subprocess.Popen[bytes]:
        return self.start(
            worker_id, "ttp-worker", role="worker", TTP_WORKER_ID=worker_id, **{**WORKER_ENV, **env}
        )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def check_alive(self, *names: str) -> None:
        for name in names:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log(name)}")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def until(
    what: str,
    check: Callable[[], Awaitable[Any]],
    procs: Procs,
    *alive: str,
    timeout: float = TIMEOUT_S,
) -> Any:
    """Poll `check` until it returns something true; fail if a process in `alive` died."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
            last = await check()
            if last:
                return last
        procs.check_alive(*alive)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last})")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def status_feed(nc: Client) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """The newest `ttp.worker.status` data of each worker."""
    latest: dict[str, dict[str, Any]] = {}

    async def on_status(msg: Msg) -> None:
        data = json.loads(msg.data)["data"]
        latest[data["worker_id"]] = data

    sub = await nc.subscribe(subjects.wildcard(subjects.WORKER_STATUS_PREFIX), cb=on_status)
    try:
        yield latest
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class ReloadedRecorder(BusRecorder):
    """A :class:`BusRecorder` of ``ttp.rule.reloaded.*`` alone, which a consumer may read:
    no role may subscribe to all of ``ttp.>`` (honeypot events included)."""

    async def start(self) -> ReloadedRecorder:
        self._sub = await self.nc.subscribe(
            subjects.wildcard(subjects.RULE_RELOADED_PREFIX), cb=self._on_message
        )
        await self.nc.flush()
        return self


async def master_summary(nc: Client) -> dict[str, Any] | None:
    """The master's last `ttp.ruleset.revision` data, as TTP_RULES holds it."""
    try:
        msg = await nc.jetstream().get_last_msg(subjects.STREAM_RULES, subjects.RULESET_REVISION)
    except nats.js.errors.NotFoundError:
        return None
    data: dict[str, Any] = json.loads(msg.data or b"{}")["data"]
    return data


def fleet_matches(
    statuses: dict[str, dict[str, Any]], summary: dict[str, Any], workers: tuple[str, ...]
) -> bool:
    return all(
        statuses.get(w, {}).get("ready") is True
        and statuses[w].get("index_digest") == summary["digest"]
        and statuses[w].get("revision") == summary["revision"]
        for w in workers
    )


async def start_fleet(
    procs: Procs,
    nc: Client,
    statuses: dict[str, dict[str, Any]],
    workers: tuple[str, ...],
    **worker_env: str,
) -> dict[str, Any]:
    """Master and workers running, the workers on the master's digest; the summary."""
    procs.start("master", "ttp-master", role="master")
    rule_count = len(list(STARTER_RULES.rglob("*.yaml")))

    async def loaded() -> dict[str, Any] | None:
        summary = await master_summary(nc)
        return summary if summary is not None and summary["rules"] == rule_count else None

    summary: dict[str, Any] = await until("the master's starter pack", loaded, procs, "master")
    for worker in workers:
        procs.worker(worker, **worker_env)

    async def converged() -> bool:
        return fleet_matches(statuses, summary, workers)

    await until("every worker on the master's digest", converged, procs, "master", *workers)
    return summary


async def ttpctl(procs: Procs, role: Role, *args: str) -> tuple[int, str, str]:
    """Run the real `ttpctl` console script as `role`; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "ttpctl"),
        *args,
        env=procs.env(role),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def released_on_stop(procs: Procs, name: str) -> int:
    """Events a stopping worker logged as fetched but handed back unprocessed."""
    found = re.findall(r"released (\d+) fetched but unprocessed events", procs.log(name))
    return sum(int(n) for n in found)


async def stop(proc: subprocess.Popen[bytes], name: str, procs: Procs) -> float:
    """SIGTERM; asserts exit 0 within 10 s; seconds taken."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    try:
        code = await loop.run_in_executor(None, proc.wait, 10)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{name} still running 10 s after SIGTERM:\n{procs.log(name)}"
        ) from None
    assert code == 0, procs.log(name)
    return time.monotonic() - started
