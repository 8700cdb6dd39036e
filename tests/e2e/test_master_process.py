"""`ttp-master` as real processes: crashes between commit and publish and right after
publish lose and duplicate nothing, two masters elect one leader and fail over on `kill -9`,
SIGTERM exits 0 promptly, `ttp-master migrate` is safe to run concurrently.

The crashes are injected from outside: the master reaches NATS or PostgreSQL through a
`TcpProxy` that the test cuts at the right moment, then the test sends SIGKILL.

Every process is configured only through `TTP_*` variables (its NATS identity is the master
role's), serves /readyz on a port of its own, and writes its JSON log to a file in the test's
tmp_path (shown when a test fails). The fixture kills, by PID, whatever a test left running.
The test watches the bus as the consumer role, which may read the rule subjects and streams.
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
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.master import (
    STARTER_RULES,
    BusRecorder,
    StoredLog,
    check_reloaded,
    db_events,
    db_rules,
    install,
    query,
    rule_text,
    stream_last,
    wait_until,
    with_version,
)
from harness.nats_roles import RoleNats
from harness.processes import ReloadedRecorder
from harness.tcp_proxy import proxy_to, via
from ttp_core.contract import subjects
from ttp_runtime.embedded import free_port

MASTER_BIN = Path(sys.executable).parent / "ttp-master"
START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
SIGTERM_BUDGET_S = 10.0
"""SIGTERM drains and exits 0 within 10 s (docs/operations.md)."""
TAKEOVER_TIMEOUT_S = 30.0
"""Generous; the standby polls the lock every second."""
PUBACK_OF_RULES = re.compile(rb'\{"stream":\s*"' + subjects.STREAM_RULES.encode() + rb'",\s*"seq"')
"""The start of a JetStream PubAck from TTP_RULES, as it crosses the wire to the master."""


@dataclass
class MasterProcess:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readyz(self) -> tuple[int | None, dict[str, Any] | None]:
        """(HTTP status, body) of /readyz; (None, None) while nothing answers."""
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None, None

    async def wait_readyz(self, status: int, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            code, body = await asyncio.to_thread(self.readyz)
            if code == status:
                assert body is not None
                return body
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} /readyz is {code} {body}, not {status}, after {timeout} s:\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout} s:\n{self.log_tail()}"
            ) from None

    def messages(self) -> list[str]:
        """The `message` of every JSON log line so far."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line).get("message", ""))
        return found

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Launcher:
    """Starts `ttp-master` processes for one test, as the master role; kills the survivors
    afterwards."""

    roles: RoleNats
    database_url: str
    rules: Path
    logs: Path
    started: list[MasterProcess] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        return self.roles.url

    def environment(
        self, port: int, nats_url: str | None = None, database_url: str | None = None
    ) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TTP_", "OTEL_"))  # hermetic: only what the test sets
        }
        env.update(self.roles.env("master"))
        env.update(
            TTP_NATS_URL=nats_url or self.nats_url,
            TTP_DATABASE_URL=database_url or self.database_url,
            TTP_RULES_DIR=str(self.rules),
            TTP_HTTP_HOST="127.0.0.1",
            TTP_HTTP_PORT=str(port),
            TTP_DEBOUNCE_MS="30",
            TTP_LOG_FORMAT="json",
            TTP_SECRETS_DIR=str(self.logs / "no-secrets"),
        )
        return env

    def start(
        self, name: str, *, nats_url: str | None = None, database_url: str | None = None
    ) -> MasterProcess:
        """A master; `nats_url` / `database_url` replace the servers' (to go through a proxy)."""
        port = free_port()
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(MASTER_BIN)],
                env=self.environment(port, nats_url, database_url),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = MasterProcess(name, proc, port, log)
        self.started.append(process)
        return process

    def cleanup(self) -> None:
        for process in self.started:
            if process.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.proc.wait(10)


@pytest.fixture
def launcher(roles: RoleNats, database_url: str, tmp_path: Path) -> Iterator[Launcher]:
    rules = tmp_path / "rules"
    rules.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    launcher = Launcher(roles, database_url, rules, logs)
    try:
        yield launcher
    finally:
        launcher.cleanup()
        for process in launcher.started:  # pytest shows this only for a failed test
            print(f"--- {process.name} (exit {process.proc.returncode}) ---")
            print(process.log_tail(80))


@pytest.fixture
async def bus(roles: RoleNats) -> AsyncIterator[BusRecorder]:
    async with roles.client("consumer") as nc:
        yield await ReloadedRecorder(nc).start()


async def lock_sessions(dsn: str) -> list[dict[str, Any]]:
    return await query(
        dsn,
        "SELECT a.pid, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
        "AND l.locktype = 'advisory' AND l.granted) AS holds "
        "FROM pg_stat_activity a WHERE a.application_name = 'ttp-master-leader' "
        "AND a.datname = current_database()",
    )


async def wait_exit_code(process: MasterProcess, expected: int, timeout: float) -> None:
    code = await process.wait_exit(timeout)
    assert code == expected, f"{process.name} exited {code}:\n{process.log_tail()}"


async def event_row(dsn: str, rule_id: str, version: int) -> dict[str, Any] | None:
    for row in await db_events(dsn, rule_id):
        if row["payload"]["data"].get("rule_version") == version:
            return row
    return None


async def kill_9(process: MasterProcess) -> None:
    os.kill(process.pid, signal.SIGKILL)
    await wait_exit_code(process, -signal.SIGKILL, EXIT_TIMEOUT_S)


async def sigterm(process: MasterProcess) -> None:
    """SIGTERM: the process must exit 0 within 10 s (docs/operations.md, shutdown)."""
    process.proc.send_signal(signal.SIGTERM)
    await wait_exit_code(process, 0, SIGTERM_BUDGET_S)


# --------------------------------------------------------------------------------------------


async def test_sigterm_exits_zero_promptly(launcher: Launcher, database_dsn: str) -> None:
    install(launcher.rules, ["R0001", "R0023"])
    leader = launcher.start("leader")
    await leader.wait_readyz(200)
    standby = launcher.start("standby")
    body = await standby.wait_readyz(503)
    assert "standby" in body["reason"]
    await wait_until(lambda: _two_contend(database_dsn), "both processes to contend for the lock")
    await sigterm(standby)
    await sigterm(leader)
    assert await lock_sessions(database_dsn) == []  # the lock went with it


async def _two_contend(dsn: str) -> bool:
    sessions = await lock_sessions(dsn)
    return len(sessions) == 2 and sum(s["holds"] for s in sessions) == 1


async def test_crash_between_commit_and_publish_publishes_exactly_once(
    launcher: Launcher, database_dsn: str, bus: BusRecorder
) -> None:
    placed = install(launcher.rules, ["R0001", "R0023"])
    path = placed["R0023"]
    with proxy_to(launcher.nats_url, 4222) as nats_path:
        crashing = launcher.start("crash-after-commit", nats_url=via(launcher.nats_url, nats_path))
        await crashing.wait_readyz(200)  # the startup reconcile is published
        js = bus.nc.jetstream()
        stored = await StoredLog(js).start()  # sees every message TTP_RULES stores from now
        before = await stream_last(js, subjects.rule_reloaded("R0023"))
        assert before is not None

        # The master loses NATS; the edit commits (rule and outbox row in one transaction)
        # and cannot be published; then the process dies.
        nats_path.cut()
        path.write_text(with_version(rule_text("R0023"), 2))
        await wait_until(
            lambda: _committed(database_dsn, "R0023", 2), "the edit to commit", EXIT_TIMEOUT_S
        )
        await kill_9(crashing)
    row = await event_row(database_dsn, "R0023", 2)
    assert row is not None and row["published_at"] is None
    assert (await db_rules(database_dsn))["R0023"]["revision"] == row["revision"]
    assert await stream_last(js, subjects.rule_reloaded("R0023")) == before

    restarted = launcher.start("restarted")
    await restarted.wait_readyz(200)  # ready = leader and outbox caught up
    row = await event_row(database_dsn, "R0023", 2)
    assert row is not None and row["published_at"] is not None
    entries = await stored.complete()
    copies = [e for e in entries if e.subject == subjects.rule_reloaded("R0023")]
    assert [(e.revision, e.msg_id) for e in copies] == [
        (row["revision"], f"ttp-rev-{row['revision']}")
    ]
    held = await stream_last(js, subjects.rule_reloaded("R0023"))
    assert held == row["payload"]
    # What a subscriber got is the right event, trace context included (from the batch
    # that wrote it, kept in the outbox row across the crash).
    index = await bus.wait_for(
        lambda m: (
            m.subject == subjects.rule_reloaded("R0023") and m.data["revision"] == row["revision"]
        )
    )
    check_reloaded(
        bus.messages[index],
        launcher.rules,
        "execution/R0023.yaml",
        (await db_rules(database_dsn))["R0023"],
        traced=True,
    )
    await sigterm(restarted)


async def test_crash_after_publish_is_deduplicated(
    launcher: Launcher, database_dsn: str, bus: BusRecorder
) -> None:
    placed = install(launcher.rules, ["R0001", "R0023"])
    path = placed["R0023"]
    # A first, normal run publishes everything, so the faulty run has nothing at startup.
    first = launcher.start("first")
    await first.wait_readyz(200)
    await sigterm(first)

    js = bus.nc.jetstream()
    with (
        proxy_to(launcher.nats_url, 4222) as nats_path,
        proxy_to(launcher.database_url, 5432) as db_path,
    ):
        crashing = launcher.start(
            "crash-after-publish",
            nats_url=via(launcher.nats_url, nats_path),
            database_url=via(launcher.database_url, db_path),
        )
        await crashing.wait_readyz(200)
        stored = await StoredLog(js).start()
        # The master loses PostgreSQL in the instant the PubAck of the edit's event reaches
        # it, so it cannot mark the row published; then the process dies.
        acked = threading.Event()

        def cut_db_on_puback(data: bytes) -> None:
            if not acked.is_set() and PUBACK_OF_RULES.search(data):
                db_path.cut()
                acked.set()

        nats_path.on_reply = cut_db_on_puback
        path.write_text(with_version(rule_text("R0023"), 2))
        await wait_until(_is_set(acked), "the PubAck of the edit's event", EXIT_TIMEOUT_S)
        await kill_9(crashing)
    # Published (the PubAck came back) but the crash came before it was marked published.
    row = await event_row(database_dsn, "R0023", 2)
    assert row is not None and row["published_at"] is None
    held = await stream_last(js, subjects.rule_reloaded("R0023"))
    assert held == row["payload"]

    restarted = launcher.start("restarted")
    await restarted.wait_readyz(200)
    # The relay published the row again (it marks a row only after a PubAck) ...
    row = await event_row(database_dsn, "R0023", 2)
    assert row is not None and row["published_at"] is not None
    subject = subjects.rule_reloaded("R0023")
    revision = row["revision"]

    def the_event(m: Any) -> bool:
        return m.subject == subject and m.data["revision"] == revision

    # ... a core subscriber saw both publishes ...
    await bus.wait_for(the_event, after=await bus.wait_for(the_event) + 1)
    # ... and the stream stored it once: JetStream dropped the copy by its Nats-Msg-Id.
    entries = await stored.complete()
    copies = [e for e in entries if e.subject == subject]
    assert [(e.revision, e.msg_id) for e in copies] == [
        (row["revision"], f"ttp-rev-{row['revision']}")
    ]
    await sigterm(restarted)


async def test_two_processes_one_leader_and_failover_on_kill(
    launcher: Launcher, database_dsn: str, bus: BusRecorder
) -> None:
    placed = install(launcher.rules, ["R0001", "R0023"])
    path = placed["R0023"]
    first = launcher.start("first")
    await first.wait_readyz(200)
    second = launcher.start("second")
    await wait_until(lambda: _two_contend(database_dsn), "both processes to contend")
    assert (await second.wait_readyz(503))["ready"] is False
    assert (await first.wait_readyz(200))["ready"] is True

    js = bus.nc.jetstream()
    stored = await StoredLog(js).start()
    outbox = len(await db_events(database_dsn))
    path.write_text(with_version(rule_text("R0023"), 2))
    await wait_until(lambda: _published(database_dsn, "R0023", 2), "the edit to be published")
    # One writer: one new outbox row, one stored message, and only the leader synced.
    assert len(await db_events(database_dsn)) == outbox + 1
    entries = await stored.complete()
    assert [e.revision for e in entries if e.subject == subjects.rule_reloaded("R0023")] == [
        (await db_rules(database_dsn))["R0023"]["revision"]
    ]
    assert "rules synced" in first.messages()
    assert "rules synced" not in second.messages()
    assert "leader lock acquired" not in second.messages()

    killed_at = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    await wait_exit_code(first, -signal.SIGKILL, EXIT_TIMEOUT_S)
    await second.wait_readyz(200, timeout=TAKEOVER_TIMEOUT_S)
    print(f"standby ready {time.monotonic() - killed_at:.2f} s after kill -9 of the leader")

    path.write_text(with_version(rule_text("R0023"), 3))
    await wait_until(lambda: _published(database_dsn, "R0023", 3), "the new leader to publish")
    assert len(await db_events(database_dsn)) == outbox + 2
    entries = await stored.complete()
    rows = await db_events(database_dsn, "R0023")
    assert [e.revision for e in entries if e.subject == subjects.rule_reloaded("R0023")] == [
        r["revision"] for r in rows[-2:]
    ]
    assert "rules synced" in second.messages()
    await sigterm(second)


async def _committed(dsn: str, rule_id: str, version: int) -> bool:
    return await event_row(dsn, rule_id, version) is not None


def _is_set(event: threading.Event) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return event.is_set()

    return check


async def _published(dsn: str, rule_id: str, version: int) -> bool:
    row = await event_row(dsn, rule_id, version)
    return row is not None and row["published_at"] is not None


def test_migrate_command_runs_concurrently(launcher: Launcher, database_url: str) -> None:
    """`ttp-master migrate` (the Kubernetes Job) started three times at once."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from ttp_master.db.schema import metadata

    procs = [
        subprocess.Popen(
            [str(MASTER_BIN), "migrate"],
            env=launcher.environment(free_port()),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    try:
        outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert context.get_current_revision() is not None
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`: the pool's processes are the forkserver's children."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: rules are validated in-process")
async def test_validation_processes_end_with_a_killed_master(launcher: Launcher) -> None:
    for path in STARTER_RULES.rglob("*.yaml"):  # enough files for the validation pool
        (launcher.rules / path.name).write_bytes(path.read_bytes())
    master = launcher.start("pooled")
    await master.wait_readyz(200)
    pool = _descendants(master.pid)
    # The forkserver and the pool's processes (the starter pack is enough to use it).
    assert len(pool) >= 2, "the master validated the starter pack without its process pool"
    await kill_9(master)

    async def orphans_gone() -> bool:
        return not _alive(pool)

    await wait_until(orphans_gone, "the validation processes of the killed master to exit")
