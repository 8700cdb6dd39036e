"""Benchmark of the worker's event path alone: CPU per event, and a profile.

Run from the repository root:

    .venv/bin/python -m bench.worker_events [--process] [--events N] [--runs K]
                                            [--loop uvloop] [--profile FILE]

It starts its own nats-server (the shipped accounts config, fresh passwords, a random port)
and creates the streams as the master role. No master runs: each run publishes N events as
the producer role (the events of `bench/fleet.py` section 2: the starter pack's `fire`
examples, one in five a harmless command), then tags them until the shared consumer has
nothing pending and nothing unacknowledged. Two modes:

- in-process (default): one `EventConsumer` in this process, over an index of the starter
  pack built here, logged in as the worker role and connected as `ttp-worker` connects.
  `--profile FILE` records the runs with cProfile and prints the top functions.
- `--process`: a real `ttp-worker` process per run (the worker role, every setting at its
  default, bytecode cached as an installed image has it), whose rules this benchmark
  publishes to TTP_RULES as the master role (the starter pack, as the master would). The
  clock and the worker's CPU (from /proc) run from its `/readyz` 200 to drained.
  `--profile FILE` runs each worker under py-spy (raw format, FILE.<run>) and prints where
  its CPU went; sampling slows the worker, so those runs' rates are no figure.

Per run it prints events/s and the worker's CPU seconds per 6,000 events over the same span:
the figure to compare on a noisy machine, since the nats-server's share of the cores does
not count in it. The first run pays for warm-up; the figure is the median of the others.
The last line of stdout is one JSON object. `bench/fleet.py` measures the same path with
the master running and with 2 workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import aiohttp
from bench.fleet import (
    CONSUMER,
    WORKER_BIN,
    fire_examples,
    make_events,
    print_profile,
    publish_events,
    summarise_profile,
    wait_drained,
)
from bench.master import (
    STARTER_RULES,
    ServiceProcess,
    connect_as,
    cpu_seconds,
    machine_figures,
    start_nats,
)
from nats.aio.client import Client

from ttp_core.contract import subjects
from ttp_core.contract.payloads import MASTER_SOURCE, RuleReloaded, encode, envelope
from ttp_core.engine.index import RuleIndex
from ttp_core.rules.validator import RuleReport, RuleValidator
from ttp_runtime.nats import connect, ensure_configured_streams
from ttp_worker.event_consumer import EventConsumer
from ttp_worker.rulebook import Ruleset, evaluated_kinds
from ttp_worker.settings import WorkerSettings

PER: Final = 6_000
"""CPU seconds are quoted per this many events (the quick fleet run's count)."""
STOP_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.005


@dataclass(frozen=True, slots=True)
class Run:
    events: int
    seconds: float
    cpu_s: float
    tagged: int | None
    """Tag messages (None: not known, for a worker process)."""
    messages: dict[str, int] | None = None
    """Messages the worker's connection sent and received over the run (in-process only):
    the server's work per event grows with them."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per(self) -> float:
        return self.cpu_s * PER / max(1, self.events)

    def figures(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate),
            "cpu_s": round(self.cpu_s, 3),
            f"cpu_s_per_{PER}": round(self.cpu_per, 3),
            "tagged": self.tagged,
            "messages": self.messages,
        }


def starter_reports(rules_dir: Path = STARTER_RULES) -> list[RuleReport]:
    return [r for r in RuleValidator().validate_tree(rules_dir) if r.ok and r.rule is not None]


def starter_ruleset(reports: Sequence[RuleReport]) -> Ruleset:
    index = RuleIndex.build(r.compiled for r in reports if r.compiled is not None)
    return Ruleset(index, len(reports), evaluated_kinds(index, {}))


async def publish_rules(master: Client, reports: Sequence[RuleReport]) -> None:
    """The rules as the master publishes them to TTP_RULES (one revision each)."""
    js = master.jetstream()
    for revision, report in enumerate(reports, start=1):
        rule = report.rule
        assert rule is not None
        data = RuleReloaded(
            rule_id=rule.rule_id,
            revision=revision,
            rule_version=rule.rule_version,
            content_sha256=report.content_sha256,
            source_path=report.source,
            rule=rule.normalised(),
        )
        event = envelope(data, source=MASTER_SOURCE, subject=rule.rule_id)
        await js.publish(subjects.rule_reloaded(rule.rule_id), encode(event))


# --------------------------------------------------------------------------------------------
# In this process
# --------------------------------------------------------------------------------------------


async def run_in_process(
    worker_nc: Client,
    ruleset: Ruleset,
    events_count: int,
    profiler: cProfile.Profile | None,
) -> Run:
    consumer = EventConsumer(
        worker_nc, worker_nc.jetstream(), lambda: ruleset, worker_id="bench", fetch_timeout_s=0.2
    )
    stop = asyncio.Event()
    sent0, received0 = worker_nc.stats["out_msgs"], worker_nc.stats["in_msgs"]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    task = asyncio.create_task(consumer.run(stop))
    while consumer.stats.processed < events_count and not task.done():
        await asyncio.sleep(POLL_S)
    drained = await wait_drained(worker_nc)
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
    stop.set()
    await asyncio.wait_for(task, STOP_TIMEOUT_S)
    # The bench's own drain polls (consumer info requests) are on the same connection.
    messages = {
        "sent": worker_nc.stats["out_msgs"] - sent0,
        "received": worker_nc.stats["in_msgs"] - received0,
    }
    return Run(events_count, drained - wall0, cpu, consumer.stats.tagged, messages)


# --------------------------------------------------------------------------------------------
# A worker process
# --------------------------------------------------------------------------------------------


class BenchWorker(ServiceProcess):
    """One `ttp-worker` process logged in as the worker role, settings at their defaults."""

    kind: ClassVar[str] = "worker"
    ready_poll_s: ClassVar[float] = 0.01

    def __init__(
        self, env: dict[str, str], worker_id: str, workdir: Path, profile_to: Path | None
    ) -> None:
        super().__init__(
            WORKER_BIN,
            worker_id,
            workdir / f"{worker_id}.log",
            {**env, "TTP_WORKER_ID": worker_id, **bytecode_env(workdir)},
            profile_to=profile_to,
        )


def bytecode_env(workdir: Path) -> dict[str, str]:
    """Compiled bytecode cached (in the work directory), as an installed image ships it."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}


def compile_bytecode(workdir: Path) -> None:
    """Import what a worker imports once, so no run pays for compiling it."""
    code = "import ttp_worker.cli, ttp_worker.bootstrap, msgspec, uvloop"
    subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **bytecode_env(workdir)}, check=True
    )


async def run_process(
    env: dict[str, str],
    backlog: Client,
    session: aiohttp.ClientSession,
    events_count: int,
    name: str,
    workdir: Path,
    profile_to: Path | None,
    workers: int = 1,
) -> Run:
    """`workers` processes (the first profiled); the clock runs from the first `/readyz`."""
    procs = [
        BenchWorker(env, f"{name}-{n}", workdir, profile_to if n == 1 else None).start()
        for n in range(1, workers + 1)
    ]
    try:
        readies = await asyncio.gather(*(proc._ready_at(session) for proc in procs))
        ready = min(readies)
        if workers > 1:
            offsets = ", ".join(f"{(r - ready) * 1000:.0f}" for r in readies)
            print(f"  /readyz 200 of each worker after the first: {offsets} ms")
        cpu0 = [cpu_seconds(proc.pid) for proc in procs]
        drained = await wait_drained(backlog)
        cpu = sum(cpu_seconds(proc.pid) - c for proc, c in zip(procs, cpu0, strict=True))
    finally:
        stops = [proc._terminate() for proc in procs]
    print("  SIGTERM: " + ", ".join(f"exit {code} in {s:.2f} s" for code, s, _ in stops))
    for proc in procs:
        for line in proc.problems()[:5]:
            print(f"  worker log: {line}")
    return Run(events_count, drained - ready, cpu, None)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    reports = starter_reports()
    examples = fire_examples(STARTER_RULES)
    profiler = cProfile.Profile() if args.profile and not args.process else None
    runs: list[Run] = []
    profiles: list[Path] = []
    with contextlib.ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="ttp-bench-")))
        bus = start_nats(workdir, cleanup)
        env = bus.env("worker")
        ruleset = starter_ruleset(reports)
        settings = WorkerSettings(
            **{k.removeprefix("TTP_").lower(): v for k, v in env.items()}, worker_id="bench"
        )
        master = await connect_as(bus, "master", "bench-streams")
        await ensure_configured_streams(master.jetstream(), settings)
        if args.process:
            await publish_rules(master, reports)
            compile_bytecode(workdir)
        await master.close()
        producer = await connect_as(bus, "producer", "bench-events")
        worker_nc = await connect(settings, "ttp-worker-bench")
        # The shared consumer exists before the first events, as in a running deployment
        # (and so an absent consumer never reads as drained).
        shape = EventConsumer(worker_nc, worker_nc.jetstream(), lambda: ruleset, worker_id="b")
        binding = await worker_nc.jetstream().pull_subscribe(
            subjects.wildcard(subjects.EVENT_PREFIX),
            durable=CONSUMER,
            stream=subjects.STREAM_EVENTS,
            config=shape.consumer_config(),
        )
        await binding.unsubscribe()
        session = aiohttp.ClientSession()
        try:
            for number in range(args.runs):
                events, _ = make_events(examples, args.events, f"r{number}")
                await publish_events(producer, events)
                if args.process:
                    profile_to = None
                    if args.profile:
                        profile_to = Path(f"{args.profile}.{number + 1}")
                        profiles.append(profile_to)
                    run = await run_process(
                        env,
                        worker_nc,
                        session,
                        len(events),
                        f"b{number}",
                        workdir,
                        profile_to,
                        args.workers,
                    )
                else:
                    run = await run_in_process(worker_nc, ruleset, len(events), profiler)
                runs.append(run)
                print(
                    f"run {number + 1}: {run.events:,} events in {run.seconds:.3f} s ="
                    f" {run.rate:,.0f} events/s; worker CPU {run.cpu_s:.3f} s"
                    f" ({run.cpu_per:.3f} s per {PER:,} events)",
                    flush=True,
                )
                if run.messages is not None:
                    print(
                        "  worker connection, per event: "
                        + ", ".join(
                            f"{count / run.events:.3f} {name}"
                            for name, count in run.messages.items()
                        ),
                        flush=True,
                    )
        finally:
            await session.close()
            await producer.close()
            await worker_nc.close()
    figures: dict[str, Any] = {
        "bench": "worker_events",
        "machine": machine_figures(),
        "mode": "process" if args.process else f"in-process ({args.loop})",
        "consumer": CONSUMER,
        "runs": [run.figures() for run in runs],
    }
    steady = runs[1:] or runs
    figures["median_events_per_s"] = round(statistics.median(r.rate for r in steady))
    figures[f"median_cpu_s_per_{PER}"] = round(statistics.median(r.cpu_per for r in steady), 3)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
        figures["profile"] = str(args.profile)
    for path in profiles[1:] or profiles:
        if path.exists():
            print(f"py-spy profile of {path}:")
            summary = summarise_profile(path)
            print_profile(summary, args.events)
            figures.setdefault("profiles", {})[str(path)] = summary
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the worker's event path.")
    parser.add_argument("--process", action="store_true", help="run a ttp-worker per run")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (--process)")
    parser.add_argument("--events", type=int, default=PER, help="events per run")
    parser.add_argument("--runs", type=int, default=4, help="runs (the first is warm-up)")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="in-process loop"
    )
    parser.add_argument("--profile", type=Path, help="profile the runs to this file (prefix)")
    args = parser.parse_args(argv)
    mode = "ttp-worker processes" if args.process else f"in-process, loop {args.loop}"
    print(
        f"worker event path ({mode}): {args.events:,} events x {args.runs} runs,"
        f" load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    if args.loop == "uvloop" and not args.process:
        import uvloop

        figures = uvloop.run(bench(args))
    else:
        figures = asyncio.run(bench(args))
    print(
        f"median of runs 2..: {figures['median_events_per_s']:,} events/s,"
        f" {figures[f'median_cpu_s_per_{PER}']} worker CPU s per {PER:,} events"
    )
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
