"""Chaos benchmark: faults injected from outside into real processes and servers.

Run from the repository root:

    .venv/bin/python -m bench.chaos [--quick] [--scenario NAME] [--keep]

Each scenario starts its own embedded NATS (JetStream) and PostgreSQL servers on random free
ports, runs real `ttp-master` / `ttp-worker` processes of this environment, injects its faults
from outside (SIGKILL, server kills and restarts, a TCP proxy cut between a process and a
server) and then counts, from outside the processes, what was lost and what was duplicated.
The scenarios are the ones the tests in tests/chaos run with smaller sizes (the scenario code
lives in tests/harness, shared by both); here every row is printed, whatever it shows.

Columns: scenario; faults injected; edits (rule files created, changed or deleted); events
(honeypot events acknowledged by TTP_EVENTS, or, in the scenarios without them, the rule
change events TTP_RULES stored); lost; duplicated; recovery time (the longest, over the
scenario's faults, from the fault healed to the system whole again; each scenario's docstring
in tests/harness/chaos*.py says exactly what it measures). The last line of stdout is one JSON
object with every row and its details. `--quick` runs smaller sizes (all scenarios in a few
minutes); `--scenario NAME` runs one.

Adding a scenario: write `async def name(run: ScenarioRun) -> ChaosRow` below and decorate it
with `@scenario("name")`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.master import machine_figures, run_bench

# The scenarios live with the test harnesses, so a test and its bench row are the same code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness.chaos import ChaosRow, own_servers, starter_pack_in
from harness.chaos_cluster import cluster_node_loss
from harness.chaos_master import master_kill_storm, postgres_outage
from harness.chaos_nats import nats_restart
from harness.chaos_rules_vanish import rules_vanish
from harness.chaos_storage import storage_full
from harness.chaos_workers import worker_kill_flood
from harness.nats_cluster import nats_cluster
from ttp_runtime.embedded import EmbeddedPostgres


@dataclass(frozen=True)
class ScenarioRun:
    """What a scenario function gets: the size to run at and a directory of its own."""

    quick: bool
    workdir: Path
    cleanup: contextlib.ExitStack


Scenario = Callable[[ScenarioRun], Awaitable[ChaosRow]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario function under `name` (the table's row order is registration's)."""

    def register(function: Scenario) -> Scenario:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name} registered twice")
        SCENARIOS[name] = function
        return function

    return register


# ---------------------------------------------------------------------------- the scenarios


@scenario("master-kill-storm")
async def kill_storm_restarted(run: ScenarioRun) -> ChaosRow:
    """kill -9 of the master during rule edits; a supervisor restarts it."""
    with own_servers() as servers:
        return await master_kill_storm(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            edits=300 if run.quick else 400,
            kills=3 if run.quick else 5,
        )


@scenario("master-kill-storm-standby")
async def kill_storm_standby(run: ScenarioRun) -> ChaosRow:
    """kill -9 of the leading master during rule edits; a hot standby takes over."""
    with own_servers() as servers:
        return await master_kill_storm(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            edits=300 if run.quick else 400,
            kills=3 if run.quick else 5,
            standby=True,
        )


@scenario("nats-restart")
async def nats_restarted(run: ScenarioRun) -> ChaosRow:
    """NATS killed and restarted during event flow and rule edits."""
    with own_servers() as servers:
        return await nats_restart(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            events=3_000 if run.quick else 6_000,
            restarts=2,
        )


@scenario("postgres-outage")
async def postgres_cut(run: ScenarioRun) -> ChaosRow:
    """The master's path to PostgreSQL cut while edits and state requests arrive."""
    with own_servers() as servers:
        return await postgres_outage(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            outage_s=5.0 if run.quick else 15.0,
            edits=8 if run.quick else 20,
            state_requests=3 if run.quick else 6,
        )


@scenario("postgres-frozen")
async def postgres_frozen(run: ScenarioRun) -> ChaosRow:
    """The master's path to PostgreSQL frozen (packets silently dropped) meanwhile."""
    with own_servers() as servers:
        return await postgres_outage(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            outage_s=8.0 if run.quick else 20.0,
            edits=8 if run.quick else 20,
            state_requests=3 if run.quick else 6,
            freeze=True,
        )


@scenario("worker-kill-flood")
async def worker_flood(run: ScenarioRun) -> ChaosRow:
    """kill -9 of one of two workers during an event flood."""
    with own_servers() as servers:
        return await worker_kill_flood(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            events=6_000 if run.quick else 20_000,
        )


@scenario("nats-cluster-node-loss")
async def cluster_node_lost(run: ScenarioRun) -> ChaosRow:
    """kill -9 of the node leading TTP_EVENTS in a three-node JetStream cluster (R3)."""
    with nats_cluster(run.workdir / "nats") as cluster, EmbeddedPostgres() as postgres:
        postgres.ensure_database("ttp_chaos")
        return await cluster_node_loss(
            cluster,
            postgres.url_for("ttp_chaos"),
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            events=2_000 if run.quick else 6_000,
        )


@scenario("storage-full")
async def streams_full(run: ScenarioRun) -> ChaosRow:
    """TTP_TAGS, then TTP_EVENTS, at their (small) limits; then space freed."""
    with own_servers() as servers:
        return await storage_full(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            events=300 if run.quick else 1_000,
        )


@scenario("rules-vanish")
async def rules_directory_vanishes(run: ScenarioRun) -> ChaosRow:
    """The rules directory removed, restored, then emptied until the deletes are confirmed."""
    with own_servers() as servers:
        return await rules_vanish(
            servers,
            starter_pack_in(run.workdir / "rules"),
            run.workdir,
            confirm_s=3.0,
            events=300 if run.quick else 1_000,
        )


# ---------------------------------------------------------------------------- the table

COLUMNS = (
    ("scenario", 26),
    ("faults injected", 34),
    ("edits", 6),
    ("events", 7),
    ("lost", 5),
    ("dup", 4),
    ("recovery", 9),
)


def table_line(cells: Sequence[str]) -> str:
    return "  ".join(
        cell.ljust(width) if i < 2 else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def row_cells(row: ChaosRow) -> list[str]:
    recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.2f} s"
    return [
        row.scenario,
        row.faults,
        str(row.edits),
        str(row.events),
        str(row.lost),
        str(row.duplicated),
        recovery,
    ]


def print_table(rows: Sequence[ChaosRow]) -> None:
    print()
    print(table_line([name for name, _ in COLUMNS]))
    print(table_line(["-" * width for _, width in COLUMNS]))
    for row in rows:
        print(table_line(row_cells(row)))


async def run_all(
    names: Sequence[str], quick: bool, cleanup: contextlib.ExitStack, workdir: Path
) -> dict[str, Any]:
    rows: list[ChaosRow] = []
    section_s: dict[str, float] = {}
    for name in names:
        started = time.perf_counter()
        print(f"-- {name}", flush=True)
        scenario_dir = workdir / name
        scenario_dir.mkdir()
        with contextlib.ExitStack() as own_cleanup:
            row = await SCENARIOS[name](ScenarioRun(quick, scenario_dir, own_cleanup))
        section_s[name] = round(time.perf_counter() - started, 2)
        print(f"   {row.faults}: lost {row.lost}, duplicated {row.duplicated}", flush=True)
        rows.append(row)
    print_table(rows)
    return {
        "machine": machine_figures(),
        "quick": quick,
        "rows": [row.as_json() for row in rows],
        "section_s": section_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="run only this scenario")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    args.profile = False
    names = [args.scenario] if args.scenario else list(SCENARIOS)
    return run_bench(
        args,
        title="ttp-rulebus chaos benchmark",
        slug="chaos",
        run=lambda cleanup, workdir: run_all(names, args.quick, cleanup, workdir),
    )


if __name__ == "__main__":
    raise SystemExit(main())
