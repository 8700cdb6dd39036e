"""Benchmark of the worker's event path alone, in this process: CPU per event, and a profile.

Run from the repository root:

    .venv/bin/python -m bench.worker_events [--events N] [--runs K] [--loop uvloop]
                                            [--profile out.prof]

It starts its own nats-server (the shipped accounts config, fresh passwords, a random port),
creates the streams as the master role, loads the starter pack into an index in this process
(no master, no rule stream), and for each run publishes N events as the producer role (the
same events as `bench/fleet.py` section 2: the starter pack's `fire` examples, one in five a
harmless command), then runs one `EventConsumer` logged in as the worker role, connected as
`ttp-worker` connects, until the shared consumer has nothing pending and nothing
unacknowledged.

Per run it prints events/s (wall clock, from the consumer's start to drained) and this
process's CPU seconds per 6,000 events over the same span: the figure to compare under a
noisy machine, since the nats-server's share of the cores does not count in it. With
`--profile` the runs are recorded by cProfile and the top functions are printed; the profile
slows the worker, so its rates are no figure. The last line of stdout is one JSON object.

`bench/fleet.py` measures the same path with real worker processes (and 2 workers).
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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.fleet import CONSUMER, fire_examples, make_events, publish_events, wait_drained
from bench.master import STARTER_RULES, connect_as, machine_figures, start_nats
from nats.aio.client import Client

from ttp_core.engine.index import RuleIndex
from ttp_core.rules.validator import RuleValidator
from ttp_runtime.nats import connect, ensure_configured_streams
from ttp_worker.event_consumer import EventConsumer
from ttp_worker.rulebook import Ruleset, evaluated_kinds
from ttp_worker.settings import WorkerSettings

PER: Final = 6_000
"""CPU seconds are quoted per this many events (the quick fleet run's count)."""
STOP_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Run:
    events: int
    seconds: float
    cpu_s: float
    tagged: int
    dead_letters: int

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
            "dead_letters": self.dead_letters,
        }


def starter_ruleset(rules_dir: Path = STARTER_RULES) -> Ruleset:
    reports = RuleValidator().validate_tree(rules_dir)
    compiled = [r.compiled for r in reports if r.ok and r.compiled is not None]
    index = RuleIndex.build(compiled)
    return Ruleset(index, 1, evaluated_kinds(index, {}))


async def one_run(
    worker_nc: Client,
    producer: Client,
    ruleset: Ruleset,
    events: Sequence[tuple[str, bytes]],
    profiler: cProfile.Profile | None,
) -> Run:
    await publish_events(producer, events)
    consumer = EventConsumer(
        worker_nc, worker_nc.jetstream(), lambda: ruleset, worker_id="bench", fetch_timeout_s=0.2
    )
    stop = asyncio.Event()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    task = asyncio.create_task(consumer.run(stop))
    while consumer.stats.processed < len(events) and not task.done():
        await asyncio.sleep(0.005)
    drained = await wait_drained(worker_nc)
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.disable()
    stop.set()
    await asyncio.wait_for(task, STOP_TIMEOUT_S)
    stats = consumer.stats
    return Run(len(events), drained - wall0, cpu, stats.tagged, stats.dead_letters)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ruleset = starter_ruleset()
    examples = fire_examples(STARTER_RULES)
    profiler = cProfile.Profile() if args.profile else None
    runs: list[Run] = []
    with contextlib.ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="ttp-bench-")))
        bus = start_nats(workdir, cleanup)
        settings = WorkerSettings(
            **{k.removeprefix("TTP_").lower(): v for k, v in bus.env("worker").items()},
            worker_id="bench",
        )
        master = await connect_as(bus, "master", "bench-streams")
        await ensure_configured_streams(master.jetstream(), settings)
        await master.close()
        producer = await connect_as(bus, "producer", "bench-events")
        worker_nc = await connect(settings, "ttp-worker-bench")
        try:
            for number in range(args.runs):
                events, _ = make_events(examples, args.events, f"r{number}")
                run = await one_run(worker_nc, producer, ruleset, events, profiler)
                runs.append(run)
                print(
                    f"run {number + 1}: {run.events:,} events in {run.seconds:.3f} s ="
                    f" {run.rate:,.0f} events/s; CPU {run.cpu_s:.3f} s"
                    f" ({run.cpu_per:.3f} s per {PER:,} events); tagged {run.tagged:,},"
                    f" dead letters {run.dead_letters}",
                    flush=True,
                )
        finally:
            await producer.close()
            await worker_nc.close()
    figures: dict[str, Any] = {
        "bench": "worker_events",
        "machine": machine_figures(),
        "loop": args.loop,
        "consumer": CONSUMER,
        "runs": [run.figures() for run in runs],
    }
    # The first run pays for warm-up (imports, first binds); the median of the rest is the figure.
    steady = runs[1:] or runs
    figures["median_events_per_s"] = round(statistics.median(r.rate for r in steady))
    figures[f"median_cpu_s_per_{PER}"] = round(statistics.median(r.cpu_per for r in steady), 3)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
        figures["profile"] = str(args.profile)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the worker's event path in-process.")
    parser.add_argument("--events", type=int, default=PER, help="events per run")
    parser.add_argument("--runs", type=int, default=4, help="runs (the first is warm-up)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--profile", type=Path, help="record the runs with cProfile to this file")
    args = parser.parse_args(argv)
    print(
        f"worker event path: {args.events:,} events x {args.runs} runs, loop {args.loop},"
        f" load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    if args.loop == "uvloop":
        import uvloop

        figures = uvloop.run(bench(args))
    else:
        figures = asyncio.run(bench(args))
    print(
        f"median of runs 2..: {figures['median_events_per_s']:,} events/s,"
        f" {figures[f'median_cpu_s_per_{PER}']} CPU s per {PER:,} events"
    )
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
