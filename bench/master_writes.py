"""Benchmark of the master's own cost per write: one saved rule file, one operator state change.

Run from the repository root:

    .venv/bin/python -m bench.master_writes [--count N] [--general]

It starts its own PostgreSQL (`ttp_runtime.embedded`, random free port, temporary directory),
migrates it, takes the leader lock as a master does and writes through `RuleRepository`
with an engine configured as the master's (pool of 4, pre-ping, msgspec JSON). Nothing else
runs: no NATS, no relay, no workers, so the figures are the master's share of "save -> all
workers" and "state change -> all workers" only.

What is measured
1. PostgreSQL round trips of one call: the engine talks to PostgreSQL through a loopback
   proxy that counts the server's answers (the protocol is request then answer, so each
   answer is one wait), and the statements SQLAlchemy sent are listed.
2. CPU (process time) and wall time around each call, over `--count` calls (default 200)
   after 20 warm-up ones, straight to PostgreSQL: a save is `apply_changes` of one upsert
   (84 rules, each written again with a new version); a state change is the control
   service's read (`state_and_known`) then `apply_changes` of one state write, cycling
   disabled / clipped / enabled over the same 84 rules. Medians and p90/p99 are printed.

`--general` sends every change through the general change-set transaction (the path a
batch takes), for a before/after comparison in one checkout. The machine's load shows in
the wall figures; compare CPU figures, and interleave runs of both modes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness.master import rule_upsert
from ttp_master.db import repository as repository_module
from ttp_master.db.migrate import upgrade_to_head
from ttp_master.db.queries import ControlQueries
from ttp_master.db.repository import ChangeSet, RuleRepository, StateWrite
from ttp_master.leader import LeaderLock
from ttp_runtime.embedded import EmbeddedPostgres

RULES = 84
WARM_UP = 20
STATES = ("disabled", "clipped", "enabled")


def _engine(url: str) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=4,
        pool_pre_ping=True,
        json_serializer=msgspec.json.encode,
        json_deserializer=msgspec.json.decode,
    )


@dataclass
class _Changes:
    """Every change a run writes, built (and validated) before anything is timed."""

    saves: list[ChangeSet]
    states: list[StateWrite]

    @classmethod
    def of(cls, count: int) -> _Changes:
        steps = range(count)
        return cls([_save(step) for step in steps], [_state(step) for step in steps])


def _save(step: int) -> ChangeSet:
    return ChangeSet(upserts=[rule_upsert(f"TTP-{8000 + step % RULES}", 1 + step // RULES)])


def _state(step: int) -> StateWrite:
    return StateWrite(
        rule_id=f"TTP-{8000 + step % RULES}",
        state=STATES[step % len(STATES)],  # type: ignore[arg-type]
        set_by="bench",
        reason=f"step {step}",
        confidence_max=0.5 if STATES[step % len(STATES)] == "clipped" else None,
    )


def _calls(
    repository: RuleRepository, queries: ControlQueries, changes: _Changes
) -> dict[str, Callable[[int], Awaitable[None]]]:
    async def save(step: int) -> None:
        await repository.apply_changes(changes.saves[step], actor="bench")

    async def state(step: int) -> None:
        write = changes.states[step]
        await queries.state_and_known(write.rule_id)
        await repository.apply_changes(ChangeSet(state_writes=[write]), actor="bench")

    return {"save": save, "state change": state}


class _CountingProxy:
    """Loopback proxy to PostgreSQL that counts what the client sends: the protocol is
    request then answer, so each chunk the client writes is one round trip."""

    def __init__(self, port: int) -> None:
        self._target_port = port
        self.sent = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        for pump in (self._pump(reader, server_w, True), self._pump(server_r, writer, False)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counted: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                self.sent += counted
                writer.write(data)
                await writer.drain()
        writer.close()


async def _round_trips(url: str, port: int, fence: Any, changes: _Changes) -> None:
    proxy = _CountingProxy(port)
    proxy_port = await proxy.start()
    engine = _engine(url.replace(f":{port}/", f":{proxy_port}/"))
    sent: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: sent.append(" ".join(statement.split())[:60]),
    )
    calls = _calls(RuleRepository(engine, fence), ControlQueries(engine), changes)
    try:
        for name, call in calls.items():
            # Steady state: the pool holds its connection, psycopg has prepared the statements
            # it runs often (its prepare_threshold, 5), which costs one more round trip once.
            for step in range(12):
                proxy.sent = 0
                sent.clear()
                await call(step)
            print(f"{name}: {proxy.sent} round trips, {len(sent)} statements")
            for statement in sent:
                print(f"    {statement}")
    finally:
        await engine.dispose()
        await proxy.close()


def _figures(samples: Sequence[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"median {statistics.median(ordered):.3f} p90 {at(0.9):.3f} p99 {at(0.99):.3f} ms"


async def _timed(call: Callable[[int], Awaitable[None]], count: int) -> tuple[list[float], ...]:
    cpu: list[float] = []
    wall: list[float] = []
    for step in range(count + WARM_UP):
        cpu_0, wall_0 = time.process_time(), time.perf_counter()
        await call(step)
        cpu_1, wall_1 = time.process_time(), time.perf_counter()
        if step >= WARM_UP:
            cpu.append((cpu_1 - cpu_0) * 1e3)
            wall.append((wall_1 - wall_0) * 1e3)
    return cpu, wall


async def run(count: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        os.chmod(scratch, 0o755)  # PostgreSQL may run as another account
        with EmbeddedPostgres(data_dir=Path(scratch) / "postgres") as postgres:
            postgres.ensure_database("bench")
            url = postgres.url_for("bench")
            await asyncio.to_thread(upgrade_to_head, url)
            lock = LeaderLock(url, 0x7474_7062)
            assert await lock.acquire(asyncio.Event())
            changes = _Changes.of(count + WARM_UP)
            try:
                await _round_trips(url, postgres.port, lock.fence, changes)
                engine = _engine(url)
                try:
                    calls = _calls(
                        RuleRepository(engine, lock.fence), ControlQueries(engine), changes
                    )
                    for name, call in calls.items():
                        cpu, wall = await _timed(call, count)
                        print(f"{name} x{count}: CPU {_figures(cpu)} | wall {_figures(wall)}")
                finally:
                    await engine.dispose()
            finally:
                await lock.release()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="timed calls per kind")
    parser.add_argument(
        "--general", action="store_true", help="every change through the general transaction"
    )
    args = parser.parse_args(argv)
    if args.general:
        repository_module._is_single_save = lambda _: False  # type: ignore[assignment]
        repository_module._is_single_state_write = lambda _: False  # type: ignore[assignment]
    print(f"mode: {'general transaction' if args.general else 'single-change statements'}")
    asyncio.run(run(args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
