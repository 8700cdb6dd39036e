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

Adding a scenario: add a `Scenario` row to `SCENARIOS` below, naming its function in
tests/harness and the keyword arguments that differ between `--quick` and a full run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.master import machine_figures, run_bench

# The scenarios live with the test harnesses, so a test and its bench row are the same code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness.chaos import ChaosRow, own_servers
from harness.chaos_cluster import cluster_node_loss
from harness.chaos_master import master_kill_storm, postgres_outage
from harness.chaos_nats import nats_restart
from harness.chaos_rules_vanish import rules_vanish
from harness.chaos_storage import storage_full
from harness.chaos_workers import worker_kill_flood
from harness.master import starter_pack_in
from harness.nats_cluster import nats_cluster
from ttp_runtime.embedded import EmbeddedPostgres

ServerArgs = Callable[[Path], contextlib.AbstractContextManager[tuple[Any, ...]]]
"""Given the scenario's directory: the servers a scenario function takes before `rules`."""


@contextlib.contextmanager
def one_nats_and_postgres(workdir: Path) -> Iterator[tuple[Any, ...]]:
    """One embedded NATS server and one PostgreSQL database (a `ChaosServers`)."""
    with own_servers() as servers:
        yield (servers,)


@contextlib.contextmanager
def three_node_cluster_and_postgres(workdir: Path) -> Iterator[tuple[Any, ...]]:
    """A three-node JetStream cluster, and the URL of a PostgreSQL database."""
    with nats_cluster(workdir / "nats") as cluster, EmbeddedPostgres() as postgres:
        postgres.ensure_database("ttp_chaos")
        yield cluster, postgres.url_for("ttp_chaos")


@dataclass(frozen=True)
class Scenario:
    """One row of the table: a scenario function of tests/harness, what it is called with.

    The function is called as `function(*servers, rules, workdir, **fixed, **sizes)`, where
    `rules` is a fresh copy of the starter pack and each size is the first of its pair with
    `--quick`, the second without."""

    name: str
    about: str
    function: Callable[..., Awaitable[ChaosRow]]
    sizes: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    servers: ServerArgs = one_nats_and_postgres

    async def run(self, quick: bool, workdir: Path) -> ChaosRow:
        """Run the scenario in `workdir` (its own directory) at the chosen sizes."""
        sizes = {key: pair[0] if quick else pair[1] for key, pair in self.sizes.items()}
        with self.servers(workdir) as servers:
            rules = starter_pack_in(workdir / "rules")
            return await self.function(*servers, rules, workdir, **self.fixed, **sizes)


# ---------------------------------------------------------------------------- the scenarios

_KILL_STORM_SIZES = {"edits": (300, 400), "kills": (3, 5)}
_POSTGRES_SIZES = {"edits": (8, 20), "state_requests": (3, 6)}

SCENARIOS: dict[str, Scenario] = {
    s.name: s  # the table's row order is this list's
    for s in (
        Scenario(
            "master-kill-storm",
            "kill -9 of the master during rule edits; a supervisor restarts it",
            master_kill_storm,
            _KILL_STORM_SIZES,
        ),
        Scenario(
            "master-kill-storm-standby",
            "kill -9 of the leading master during rule edits; a hot standby takes over",
            master_kill_storm,
            _KILL_STORM_SIZES,
            fixed={"standby": True},
        ),
        Scenario(
            "nats-restart",
            "NATS killed and restarted during event flow and rule edits",
            nats_restart,
            {"events": (3_000, 6_000)},
            fixed={"restarts": 2},
        ),
        Scenario(
            "postgres-outage",
            "the master's path to PostgreSQL cut while edits and state requests arrive",
            postgres_outage,
            {"outage_s": (5.0, 15.0), **_POSTGRES_SIZES},
        ),
        Scenario(
            "postgres-frozen",
            "the same path frozen instead (packets silently dropped)",
            postgres_outage,
            {"outage_s": (8.0, 20.0), **_POSTGRES_SIZES},
            fixed={"freeze": True},
        ),
        Scenario(
            "worker-kill-flood",
            "kill -9 of one of two workers during an event flood",
            worker_kill_flood,
            {"events": (6_000, 20_000)},
        ),
        Scenario(
            "nats-cluster-node-loss",
            "kill -9 of the node leading TTP_EVENTS in a three-node JetStream cluster (R3)",
            cluster_node_loss,
            {"events": (2_000, 6_000)},
            servers=three_node_cluster_and_postgres,
        ),
        Scenario(
            "storage-full",
            "TTP_TAGS, then TTP_EVENTS, at their (small) limits; then space freed",
            storage_full,
            {"events": (300, 1_000)},
        ),
        Scenario(
            "rules-vanish",
            "the rules directory removed, restored, then emptied until the deletes are confirmed",
            rules_vanish,
            {"events": (300, 1_000)},
            fixed={"confirm_s": 3.0},
        ),
    )
}


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
        row = await SCENARIOS[name].run(quick, scenario_dir)
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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="scenarios:\n" + "\n".join(f"  {s.name}: {s.about}" for s in SCENARIOS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="run only this scenario")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    names = [args.scenario] if args.scenario else list(SCENARIOS)
    return run_bench(
        args,
        title="ttp-rulebus chaos benchmark",
        slug="chaos",
        run=lambda cleanup, workdir: run_all(names, args.quick, cleanup, workdir),
    )


if __name__ == "__main__":
    raise SystemExit(main())
