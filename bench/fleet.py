"""Benchmark of the worker fleet (`ttp-master` and `ttp-worker`s run as real processes).

Run from the repository root:

    .venv/bin/python -m bench.fleet [--quick] [--profile] [--keep] [--cold-only]

It starts its own NATS (JetStream) and PostgreSQL servers from `ttp_runtime.embedded` on
random free ports (never the machine's 4222/5432), one `ttp-master` and several `ttp-worker`
console scripts of this interpreter's environment (`TTP_*` variables, each worker with its
own `TTP_WORKER_ID` and `TTP_HTTP_PORT`, JSON logs to files under a temporary directory), and
stops every process and server it started, also on Ctrl-C, SIGTERM or an error. It prints
human-readable figures and, as the last line of stdout, one JSON object holding every figure.
Targets are printed as PASS/MISS; the exit status is 0 unless the script itself fails.

One NATS server, one database and one master serve the whole run; the master is restarted
over a bigger rules directory when the rule set grows (its startup reconcile publishes the
new rules; bench/master.py measures that part).

What runs is the default deployment: nats-server with the shipped accounts config, the master
logged in as the master role and each worker as the worker role, every setting of theirs at
its default (the ones that are not are printed). This benchmark publishes the events as the
producer role, watches as the consumer role, and reads the shared event consumer's backlog
as the worker role (no lesser role may). The permission violations in the server's log are
printed at the end: any means a grant is missing.

What is measured (the load average is printed at the start of every section)
1. Propagation, the starter pack (84 rules), 4 workers. One rule file is saved (200 times;
   quick: 20) repeatedly like an editor does (temporary file, then `os.replace`), each save
   changing the content hash.
   The clock starts just before the rename and stops when the LAST of the 4 workers has
   published a `ttp.worker.status.<id>` message (published on each applied change) with a
   `revision` at least the revision of the save's `ttp.rule.reloaded` message (a core
   subscription in this process). Each sample is split into save -> reloaded on NATS (the
   master: inotify, debounce, validation, commit, relay) and reloaded -> all 4 swapped (the
   workers: decode, compile, swap, status with the index digest). At the end every worker's
   `index_digest` is compared with the master's `ttp.ruleset.revision` digest. Target:
   p99 <= 20 ms.
2. Throughput: the 4 workers stopped (SIGTERM, exit code and time reported), the whole
   starter pack loaded. N events (inline `fire` examples of the starter pack, one in five a
   harmless command) are published to TTP_EVENTS first; then the worker(s) start, and once
   every one answers `/readyz` 200 the clock runs, over the events not yet acked then, until
   the shared consumer `ttp-workers` has nothing pending and nothing unacknowledged (polled).
   The tag messages stored in TTP_TAGS are counted. Then the same with 2 workers.
   Targets: >= 15,000 events/s with 1 worker, and 2 workers >= 1.8x that.
3. Propagation, 1,000 rules (quick: 300): generated rules added (as bench/master.py generates
   them), the master restarted over them, 4 new workers; the same saves as in 1. Target:
   p99 <= 50 ms.
4. Cold start with 10,000 and then 100,000 rules in TTP_RULES (quick: 2,000 and 5,000). The
   master is stopped and this benchmark, logged in as the master role, publishes the missing
   rule messages straight into TTP_RULES in the master's exact form (bench/rule_messages.py),
   instead of having a master validate 100,000 files (bench/master.py measures that). Then a
   new worker is started (3 times at 10,000, once at 100,000; quick: once): process start ->
   `/readyz` 200 (target <= 1 s at 10,000), from its JSON log the part before 'worker
   started' (imports, connect, streams) and the snapshot part (subscribe -> index built, and
   the build alone), and its resident memory once ready (VmRSS) and at its peak (VmHWM).
   Where PYTHONDONTWRITEBYTECODE is set (a development environment), the workers keep their
   compiled bytecode in the work directory, as the image ships it compiled; one more start
   per size runs in the environment as given (not in the median), which compiles at every
   start whatever has no compiled copy. Each start also reports the CPU time the worker used
   until ready (less noisy than the wall time on a loaded machine). `--cold-only` runs this
   section alone, against NATS only: the streams are created as the master role with their
   default settings, then the rules are seeded as above.
5. With `--profile` (py-spy, in the venv): one more single-worker throughput run with the
   worker started under `py-spy record`; CPU samples summarised by phase and by function.
   Sampling slows the worker, so that run's rate is not the figure of section 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import aiohttp
import nats
import nats.errors
import nats.js.errors
import yaml
from bench.master import (
    BIN_DIR,
    PROFILE_RATE_HZ,
    STARTER_RULES,
    BenchError,
    MasterProcess,
    RuleEditor,
    ServiceProcess,
    Template,
    _frames,
    _short,
    connect_as,
    cpu_seconds,
    generate_rules,
    load_templates,
    machine_figures,
    master_env,
    ms,
    parse_ts,
    percentile,
    precheck,
    report_violations,
    roles_note,
    run_bench,
    section,
    start_nats,
    tuning_note,
    verdict,
)
from bench.rule_messages import MSG_ID_HEADER, rule_messages
from nats.aio.client import Client
from nats.aio.msg import Msg

from ttp_core.contract import subjects
from ttp_core.rules.validator import iter_rule_files
from ttp_runtime.embedded import EmbeddedPostgres
from ttp_runtime.nats import ensure_configured_streams
from ttp_runtime.nats_roles import Role
from ttp_runtime.settings import ServiceSettings

if TYPE_CHECKING:  # annotations only; bench/master.py starts the server (start_nats)
    from harness.nats_roles import RoleNats

WORKER_BIN: Final = BIN_DIR / "ttp-worker"
WORKERS: Final = 4
MEDIUM_SET: Final = 1_000
COLD_SETS: Final = (10_000, 100_000)
QUICK_COLD_SETS: Final = (2_000, 5_000)
TARGET_SMALL_PROPAGATION_P99_MS: Final = 20.0
TARGET_MEDIUM_PROPAGATION_P99_MS: Final = 50.0
TARGET_COLD_START_S: Final = 1.0
TARGET_COLD_START_RULES: Final = 10_000
TARGET_EVENTS_PER_S: Final = 15_000.0
TARGET_TWO_WORKER_SPEEDUP: Final = 1.8
SEED_WINDOW: Final = 1_000
CONSUMER: Final = "ttp-workers"
EDIT_GAP_S: Final = 0.02
EDIT_TIMEOUT_S: Final = 10.0
READY_TIMEOUT_S: Final = 120.0
READY_POLL_S: Final = 0.01
DRAIN_POLL_S: Final = 0.02
DRAIN_TIMEOUT_S: Final = 300.0
STOP_TIMEOUT_S: Final = 12.0
PUBLISH_WINDOW: Final = 2_000
SEED: Final = 20240612
WORKER_IDS: Final = tuple(f"bench-w{i}" for i in range(1, WORKERS + 1))


@dataclass(frozen=True, slots=True)
class Settings:
    """How much work each section does; `--quick` trades precision for a run under ~60 s."""

    saves: int
    warmup: int
    cold_sets: tuple[int, ...]
    cold_starts: int
    events: int
    medium_rules: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                saves=20, warmup=2, cold_sets=QUICK_COLD_SETS, cold_starts=1, events=6_000,
                medium_rules=300,
            )  # fmt: skip
        return cls(
            saves=200, warmup=5, cold_sets=COLD_SETS, cold_starts=3, events=100_000,
            medium_rules=MEDIUM_SET,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Workers as processes
# --------------------------------------------------------------------------------------------


class WorkerProcess(ServiceProcess):
    """One `ttp-worker` process with JSON logs in a file; optionally under py-spy."""

    kind: ClassVar[str] = "worker"
    ready_timeout_s: ClassVar[float] = READY_TIMEOUT_S
    ready_poll_s: ClassVar[float] = READY_POLL_S
    tail_lines: ClassVar[int] = 20
    pycache: ClassVar[Path | None] = None
    """Where the workers keep their compiled bytecode (see :func:`bytecode_env`); None: the
    environment as this benchmark got it."""

    def __init__(
        self,
        worker_id: str,
        bus: RoleNats,
        workdir: Path,
        *,
        profile_to: Path | None = None,
    ) -> None:
        """Logged in as the worker role; every setting at its default."""
        super().__init__(
            WORKER_BIN,
            worker_id,
            workdir / f"worker-{worker_id}.log",
            {**bus.env("worker"), "TTP_WORKER_ID": worker_id, **bytecode_env(self.pycache)},
            profile_to=profile_to,
        )
        self.worker_id = worker_id

    async def wait_ready(self, session: aiohttp.ClientSession) -> float:
        """perf_counter of the first `/readyz` 200."""
        return await self._ready_at(session)

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM (the worker's graceful stop), SIGKILL after `STOP_TIMEOUT_S`."""
        code, seconds, target = self._terminate()
        if self.profile_to is not None and target is not None:
            code = None  # py-spy's own exit code says nothing about the worker's
        return code, seconds


def bytecode_env(pycache: Path | None) -> dict[str, str]:
    """Environment of a worker that caches its compiled bytecode under `pycache`.

    The image (deploy/Dockerfile) ships every module compiled: pip compiles what it installs.
    A development environment run with PYTHONDONTWRITEBYTECODE=1 and a venv installed without
    bytecode instead compiles every module at every start (about a second of CPU here), which
    is no property of a deployed worker. The cache lives in this run's work directory.
    """
    if pycache is None:
        return {}
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(pycache)}


def compile_worker_bytecode(pycache: Path) -> float:
    """Import what a worker imports once, filling `pycache`; seconds taken."""
    started = time.perf_counter()
    env = {**os.environ, **bytecode_env(pycache)}
    code = "import ttp_worker.cli, ttp_worker.bootstrap, ttp_worker.settings"
    subprocess.run([str(BIN_DIR / "python"), "-c", code], env=env, check=True)
    return time.perf_counter() - started


@dataclass(slots=True)
class StatusFeed:
    """Every `ttp.worker.status.*` message: (revision, arrival perf_counter) per worker."""

    seen: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_msg(self, msg: Msg) -> None:
        at = time.perf_counter()
        data = json.loads(msg.data)["data"]
        worker = str(data["worker_id"])
        self.seen.setdefault(worker, []).append((int(data["revision"]), at))
        self.latest[worker] = data
        self.arrived.set()

    def first_at_least(self, worker: str, revision: int, after: float) -> float | None:
        """Arrival of the first status of `worker` after `after` reporting `revision`."""
        found = [a for r, a in self.seen.get(worker, []) if a >= after and r >= revision]
        return min(found) if found else None

    async def all_at_least(
        self, workers: Sequence[str], revision: int, after: float, timeout: float
    ) -> float | None:
        """perf_counter when the last of `workers` reported `revision`, None on timeout."""
        deadline = time.perf_counter() + timeout
        while True:
            times = [self.first_at_least(w, revision, after) for w in workers]
            if all(t is not None for t in times):
                return max(t for t in times if t is not None)
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    def trim(self) -> None:
        for history in self.seen.values():
            del history[:-5]


@dataclass(slots=True)
class ReloadedFeed:
    """Core subscription on one rule's `reloaded` subject: arrival by content hash."""

    waiting: dict[str, asyncio.Future[tuple[int, float]]] = field(default_factory=dict)

    async def on_msg(self, msg: Msg) -> None:
        at = time.perf_counter()
        data = json.loads(msg.data)["data"]
        future = self.waiting.pop(str(data.get("content_sha256")), None)
        if future is not None and not future.done():
            future.set_result((int(data["revision"]), at))


FLEET_BENCH_ROLES: Final[Mapping[str, Role]] = {
    "ttp-master": "master",
    "ttp-workers": "worker",
    "this benchmark's event publisher": "producer",
    "its watcher": "consumer",
    "its backlog probe (the shared event consumer's info, granted to workers only)": "worker",
}


@dataclass(frozen=True, slots=True)
class BenchClients:
    """This benchmark's own NATS connections, each logged in as the least role that can do
    its part."""

    watch: Client
    """consumer: worker statuses, rule messages, TTP_RULES and TTP_TAGS usage."""
    events: Client
    """producer: publishes the events."""
    backlog: Client
    """worker: the shared event consumer's pending and unacknowledged counts (only workers
    may read that consumer's info)."""

    @classmethod
    async def open(cls, bus: RoleNats, name: str) -> BenchClients:
        return cls(
            await connect_as(bus, "consumer", f"{name}-watch"),
            await connect_as(bus, "producer", f"{name}-events"),
            await connect_as(bus, "worker", f"{name}-backlog"),
        )

    async def close(self) -> None:
        for nc in (self.watch, self.events, self.backlog):
            with contextlib.suppress(Exception):
                await nc.close()


async def master_summary(nc: Client) -> dict[str, Any] | None:
    """The data of the last `ttp.ruleset.revision` in TTP_RULES."""
    js = nc.jetstream()
    try:
        msg = await js.get_last_msg(subjects.STREAM_RULES, subjects.RULESET_REVISION)
    except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
        return None
    data: dict[str, Any] = json.loads(msg.data or b"{}")["data"]
    return data


async def wait_master_rules(
    nc: Client, rules: int, timeout: float = READY_TIMEOUT_S
) -> dict[str, Any]:
    """Wait until the master's last summary counts `rules` rules; that summary."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        summary = await master_summary(nc)
        if summary is not None and summary.get("rules") == rules:
            return summary
        await asyncio.sleep(0.05)
    raise BenchError(f"the master did not publish {rules} rules within {timeout:.0f} s")


async def wait_fleet_digest(
    feed: StatusFeed, workers: Sequence[str], digest: str, timeout: float = READY_TIMEOUT_S
) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(feed.latest.get(w, {}).get("index_digest") == digest for w in workers):
            return
        feed.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.arrived.wait(), 0.5)
    got = {w: feed.latest.get(w, {}).get("index_digest") for w in workers}
    raise BenchError(f"workers did not reach the master's digest {digest}: {got}")


# --------------------------------------------------------------------------------------------
# 1/3. Propagation
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PropagationResult:
    rules: int
    workers: int
    target_p99_ms: float
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(save -> reloaded on NATS, save -> last worker swapped), seconds."""
    lost: int = 0
    digests_match: bool = False

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rules": self.rules, "saves": len(self.samples), "lost": self.lost}
        out["digests_match_master"] = self.digests_match
        if not self.samples:
            return out
        total = [s[1] for s in self.samples]
        master = [s[0] for s in self.samples]
        workers = [s[1] - s[0] for s in self.samples]
        out |= {
            "p50_ms": ms(statistics.median(total)),
            "p90_ms": ms(percentile(total, 90)),
            "p99_ms": ms(percentile(total, 99)),
            "max_ms": ms(max(total)),
            "save_to_reloaded_p50_ms": ms(statistics.median(master)),
            "save_to_reloaded_p99_ms": ms(percentile(master, 99)),
            "reloaded_to_all_swapped_p50_ms": ms(statistics.median(workers)),
            "reloaded_to_all_swapped_p99_ms": ms(percentile(workers, 99)),
        }
        out["target"] = {
            "p99_ms_at_most": self.target_p99_ms,
            "pass": out["p99_ms"] <= self.target_p99_ms,
        }
        return out


async def propagation(
    nc: Client,
    feed: StatusFeed,
    workers: Sequence[str],
    rules_dir: Path,
    target: Path,
    rules: int,
    saves: int,
    warmup: int,
    target_p99_ms: float,
) -> PropagationResult:
    result = PropagationResult(rules, len(workers), target_p99_ms)
    editor = RuleEditor(target, target.relative_to(rules_dir).as_posix())
    reloaded = ReloadedFeed()
    sub = await nc.subscribe(subjects.rule_reloaded(target.stem), cb=reloaded.on_msg)
    await nc.flush()
    loop = asyncio.get_running_loop()
    try:
        for n in range(warmup + saves):
            raw, sha = editor.version(n + rules * 1000)
            future: asyncio.Future[tuple[int, float]] = loop.create_future()
            reloaded.waiting[sha] = future
            saved_at = editor.save(raw)
            try:
                revision, on_nats = await asyncio.wait_for(future, EDIT_TIMEOUT_S)
            except TimeoutError:
                reloaded.waiting.pop(sha, None)
                result.lost += 1
                continue
            swapped = await feed.all_at_least(workers, revision, saved_at, EDIT_TIMEOUT_S)
            if swapped is None:
                result.lost += 1
                continue
            if n >= warmup:
                result.samples.append((on_nats - saved_at, swapped - saved_at))
            feed.trim()
            await asyncio.sleep(EDIT_GAP_S)
    finally:
        await sub.unsubscribe()
    summary = await master_summary(nc)
    if summary is not None:
        with contextlib.suppress(BenchError):
            await wait_fleet_digest(feed, workers, str(summary["digest"]), timeout=10.0)
            result.digests_match = True
    return result


def print_propagation(result: PropagationResult) -> None:
    f = result.figures()
    print(
        f"{f['saves']} saves ({f['lost']} lost), {result.rules:,} rules, {len(WORKER_IDS)} workers"
    )
    if not result.samples:
        print("  no samples")
        return
    print(
        f"  save -> all {result.workers} workers swapped: p50 {f['p50_ms']:.1f} ms, "
        f"p90 {f['p90_ms']:.1f}, p99 {f['p99_ms']:.1f}, max {f['max_ms']:.1f}"
    )
    print(
        f"  of which save -> reloaded on NATS (master): p50 {f['save_to_reloaded_p50_ms']:.1f} "
        f"ms (p99 {f['save_to_reloaded_p99_ms']:.1f}); reloaded -> last worker's status "
        f"(workers): p50 {f['reloaded_to_all_swapped_p50_ms']:.1f} ms "
        f"(p99 {f['reloaded_to_all_swapped_p99_ms']:.1f})"
    )
    print(f"  every worker's index digest equals the master's: {result.digests_match}")
    print(
        f"{verdict(f['target']['pass'])}  p99 <= {result.target_p99_ms:.0f} ms "
        f"({result.rules:,} rules): {f['p99_ms']:.1f} ms"
    )


# --------------------------------------------------------------------------------------------
# 2. Throughput
# --------------------------------------------------------------------------------------------


def fire_examples(rules_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in iter_rule_files(rules_dir):
        rule = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in rule.get("tests", []) or []:
            if case.get("expect") == "fire":
                found.append((str(rule["applies_to"][0]), case["event"]))
    if not found:
        raise BenchError("the starter pack has no `fire` examples")
    return found


def make_events(
    examples: Sequence[tuple[str, dict[str, Any]]], count: int, run: str
) -> tuple[list[tuple[str, bytes]], int]:
    """(subject, body) of `count` events, and how many are harmless (never tagged)."""
    rng = random.Random(SEED)
    events: list[tuple[str, bytes]] = []
    harmless = 0
    for number in range(count):
        if number % 5 == 4:
            kind, payload = "command", {"command_text": f"echo harmless {number}"}
            harmless += 1
        else:
            kind, payload = rng.choice(examples)
        event = {
            "source_kind": kind,
            "source_id": f"{run}-{number}",
            "session_id": f"s-{number % 97}",
            "decky_id": f"decky-{number % 7}",
            "payload": payload,
        }
        events.append((subjects.event(kind), json.dumps(event).encode()))
    return events, harmless


async def publish_events(nc: Client, events: Sequence[tuple[str, bytes]]) -> float:
    """Publish to TTP_EVENTS, every PubAck awaited; seconds taken."""
    js = nc.jetstream()
    started = time.perf_counter()
    for start in range(0, len(events), PUBLISH_WINDOW):
        futures = [
            await js.publish_async(subject, body, wait_stall=None)
            for subject, body in events[start : start + PUBLISH_WINDOW]
        ]
        await asyncio.gather(*futures)
    return time.perf_counter() - started


async def tags_stored(nc: Client) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_TAGS)
    return int(info.state.messages)


async def wait_drained(nc: Client, timeout: float = DRAIN_TIMEOUT_S) -> float:
    """perf_counter when the shared consumer has nothing pending nor unacknowledged."""
    js = nc.jetstream()
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            info = await js.consumer_info(subjects.STREAM_EVENTS, CONSUMER)
        except nats.js.errors.NotFoundError:
            return time.perf_counter()  # no consumer yet: nothing was ever pending
        except nats.errors.TimeoutError:
            continue
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return time.perf_counter()
        await asyncio.sleep(DRAIN_POLL_S)
    raise BenchError(f"the events were not all acked within {timeout:.0f} s")


async def backlog_left(nc: Client) -> tuple[float, int]:
    """(perf_counter, events not yet acked) of the shared consumer, read together."""
    js = nc.jetstream()
    while True:
        try:
            info = await js.consumer_info(subjects.STREAM_EVENTS, CONSUMER)
        except nats.errors.TimeoutError:
            continue
        return time.perf_counter(), int(info.num_pending) + int(info.num_ack_pending)


@dataclass(slots=True)
class ThroughputResult:
    workers: int
    published: int
    events: int
    """Events not yet acked when every worker was ready: what the clock measures."""
    seconds: float
    publish_s: float
    tags_stored: int
    tags_expected: int
    cpu_s: dict[str, float]
    stops: list[tuple[int | None, float]]
    problems: list[str]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "published": self.published,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate),
            "publish_events_per_s": round(self.published / max(self.publish_s, 1e-9)),
            "tags_stored": self.tags_stored,
            "tags_expected": self.tags_expected,
            "cpu_s": self.cpu_s,
            "worker_exit_codes": [code for code, _ in self.stops],
            "worker_stop_s": [round(s, 3) for _, s in self.stops],
            "target": {
                "events_per_s_at_least": TARGET_EVENTS_PER_S,
                "pass": self.rate >= TARGET_EVENTS_PER_S,
            },
        }


async def throughput(
    clients: BenchClients,
    bus: RoleNats,
    session: aiohttp.ClientSession,
    examples: Sequence[tuple[str, dict[str, Any]]],
    *,
    workers: int,
    count: int,
    run: str,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    server_pids: Mapping[str, int | None],
    profile_to: Path | None = None,
) -> ThroughputResult:
    events, harmless = make_events(examples, count, run)
    await wait_drained(clients.backlog)  # nothing left over from earlier runs
    tags_before = await tags_stored(clients.watch)
    publish_s = await publish_events(clients.events, events)
    procs = [
        WorkerProcess(f"{run}-{i}", bus, workdir, profile_to=profile_to)
        for i in range(1, workers + 1)
    ]
    servers_before = {k: cpu_seconds(pid, tree=True) for k, pid in server_pids.items()}
    for proc in procs:
        proc.start()
        cleanup.callback(proc.stop)
    await asyncio.gather(*(p.wait_ready(session) for p in procs))
    # The clock starts once every worker is ready, and counts only what was left then: a
    # worker that is up early would otherwise tag part of the batch alone, and the N-worker
    # figure would partly be a 1-worker one.
    cpu_start = {p.worker_id: cpu_seconds(p.pid) for p in procs}
    started, left = await backlog_left(clients.backlog)
    drained = await wait_drained(clients.backlog)
    cpu = {p.worker_id: round(cpu_seconds(p.pid) - cpu_start[p.worker_id], 2) for p in procs}
    cpu |= {
        k: round(cpu_seconds(pid, tree=True) - servers_before[k], 2)
        for k, pid in server_pids.items()
    }
    problems = [line for p in procs for line in p.problems()]
    stops = [p.stop() for p in procs]
    stored = await tags_stored(clients.watch) - tags_before
    return ThroughputResult(
        workers,
        count,
        left,
        drained - started,
        publish_s,
        stored,
        count - harmless,
        cpu,
        stops,
        problems,
    )


def print_throughput(result: ThroughputResult, *, target: bool = True) -> None:
    f = result.figures()
    print(
        f"{result.workers} worker(s): {result.events:,} of {result.published:,} events in "
        f"{result.seconds:.2f} s = "
        f"{f['events_per_s']:,} events/s (all ready -> consumer drained and all acked; the "
        f"events acked before every worker was ready are not counted); published "
        f"beforehand at {f['publish_events_per_s']:,}/s"
    )
    print(
        f"  tag messages stored in TTP_TAGS: {result.tags_stored:,} "
        f"(expected {result.tags_expected:,}: every non-harmless event)"
    )
    cpu = ", ".join(f"{k} {v:.2f} s" for k, v in result.cpu_s.items())
    print(f"  CPU while tagging: {cpu}")
    stops = ", ".join(f"exit {c} in {s:.2f} s" for c, s in result.stops)
    print(f"  SIGTERM afterwards: {stops}")
    for line in result.problems[:5]:
        print(f"  worker log: {line}")
    if target:
        print(
            f"{verdict(f['target']['pass'])}  >= {TARGET_EVENTS_PER_S:,.0f} events/s with "
            f"{result.workers} worker(s): {f['events_per_s']:,}"
        )


def two_worker_speedup(results: Mapping[str, Any]) -> dict[str, Any]:
    """The 2-worker rate over the 1-worker rate, printed against its target."""
    one = results["workers_1"]["events_per_s"]
    two = results["workers_2"]["events_per_s"]
    ratio = round(two / one, 2) if one else 0.0
    ok = ratio >= TARGET_TWO_WORKER_SPEEDUP
    print(
        f"{verdict(ok)}  2 workers >= {TARGET_TWO_WORKER_SPEEDUP}x 1 worker: {ratio}x "
        f"({two:,} vs {one:,} events/s)"
    )
    return {"ratio": ratio, "target": {"at_least": TARGET_TWO_WORKER_SPEEDUP, "pass": ok}}


def print_load() -> list[float]:
    """The load average now (printed): every figure here depends on it."""
    load = [round(v, 2) for v in os.getloadavg()]
    print(f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} ({os.cpu_count()} CPUs)")
    return load


# --------------------------------------------------------------------------------------------
# 4. Cold start
# --------------------------------------------------------------------------------------------


def status_kib(pid: int | None, field_name: str) -> int | None:
    """A `/proc/<pid>/status` size in KiB (`VmRSS`, `VmHWM`), None once it exited."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


@dataclass(frozen=True, slots=True)
class Seeding:
    published: int
    seconds: float


async def create_streams(bus: RoleNats, name: str) -> None:
    """The four streams as a master with every setting at its default creates them, as the
    master role (connection `name`). Pure defaults: no TTP_* variable of this environment
    changes them."""
    nc = await connect_as(bus, "master", name)
    try:
        await ensure_configured_streams(nc.jetstream(), ServiceSettings.model_construct())
    finally:
        await nc.close()


async def seed_rules(
    bus: RoleNats, templates: Sequence[Template], start: int, count: int, first_revision: int
) -> Seeding:
    """Publish `count` generated rule messages (ids from number `start`, revisions from
    `first_revision`) into TTP_RULES as the master role, in the master's form; every PubAck
    awaited. The master must be stopped: to a running master these rules are not in its
    database."""
    nc = await connect_as(bus, "master", "bench-fleet-seed")
    try:
        js = nc.jetstream()
        started = time.perf_counter()
        pending: list[asyncio.Future[Any]] = []
        for message in rule_messages(templates, start, count, first_revision, SEED + start):
            pending.append(
                await js.publish_async(
                    message.subject,
                    message.body,
                    headers={MSG_ID_HEADER: message.msg_id},
                    wait_stall=None,
                )
            )
            if len(pending) >= SEED_WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return Seeding(count, time.perf_counter() - started)
    finally:
        await nc.close()


@dataclass(slots=True)
class ColdStart:
    ready_s: float
    cpu_s: float
    """CPU seconds (user + system) the worker used until its first /readyz 200: unlike the
    wall time, barely moved by the machine's other load."""
    started_log_s: float | None
    snapshot_since_subscribe_ms: float | None
    build_ms: float | None
    messages: int | None
    stop: tuple[int | None, float]
    rss_mib: float | None
    peak_rss_mib: float | None

    def figures(self) -> dict[str, Any]:
        return {
            "ready_s": round(self.ready_s, 3),
            "cpu_s_when_ready": round(self.cpu_s, 3),
            "rss_mib_when_ready": self.rss_mib,
            "peak_rss_mib": self.peak_rss_mib,
            "process_start_to_worker_started_log_s": None
            if self.started_log_s is None
            else round(self.started_log_s, 3),
            "snapshot_subscribe_to_built_ms": self.snapshot_since_subscribe_ms,
            "snapshot_build_ms": self.build_ms,
            "snapshot_messages": self.messages,
            "exit_code": self.stop[0],
            "stop_s": round(self.stop[1], 3),
        }


SNAPSHOT_BUILT: Final = "rule index built from the TTP_RULES snapshot"
LOG_WAIT_S: Final = 5.0


async def cold_start(
    bus: RoleNats,
    session: aiohttp.ClientSession,
    name: str,
    workdir: Path,
    cleanup: contextlib.ExitStack,
) -> ColdStart:
    proc = WorkerProcess(name, bus, workdir)
    proc.start()
    cleanup.callback(proc.stop)
    ready_at = await proc.wait_ready(session)
    cpu = cpu_seconds(proc.pid)
    rss, peak = status_kib(proc.pid, "VmRSS"), status_kib(proc.pid, "VmHWM")
    # The worker answers /readyz as soon as its index is live; its log line about the build
    # can follow a moment later.
    deadline = time.perf_counter() + LOG_WAIT_S
    while True:
        records = proc.log_records()
        built = next((r for r in records if r.get("message") == SNAPSHOT_BUILT), None)
        if built is not None or time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.05)
    stop = proc.stop()
    started_log = next(
        (
            parse_ts(str(r["ts"])) - proc.started_wall
            for r in records
            if r.get("message") == "worker started"
        ),
        None,
    )
    return ColdStart(
        ready_at - proc.started,
        cpu,
        started_log,
        None if built is None else built.get("since_subscribe_ms"),
        None if built is None else built.get("build_ms"),
        None if built is None else built.get("messages"),
        stop,
        mib(rss),
        mib(peak),
    )


async def cold_starts(
    bus: RoleNats,
    session: aiohttp.ClientSession,
    size: int,
    starts: int,
    workdir: Path,
    cleanup: contextlib.ExitStack,
) -> dict[str, Any]:
    """`starts` new workers one after the other over `size` rules; printed, and figures.

    With a bytecode cache in use, one more start without it shows what compiling every
    module costs (not in the median)."""
    colds = []
    uncached: ColdStart | None = None
    compare = WorkerProcess.pycache is not None and size <= TARGET_COLD_START_RULES
    for n in range(starts + compare):
        cache = WorkerProcess.pycache
        if n == starts:
            WorkerProcess.pycache = None
        try:
            cold = await cold_start(bus, session, f"cold{size}-{n}", workdir, cleanup)
        finally:
            WorkerProcess.pycache = cache
        label = f"start {n + 1}"
        if n == starts:
            uncached, label = cold, "in the environment as given (no bytecode cache)"
        else:
            colds.append(cold)
        print(
            f"  {label}: /readyz 200 after {cold.ready_s * 1000:.0f} ms "
            f"({cold.cpu_s * 1000:.0f} ms CPU); "
            f"'worker started' logged at {(cold.started_log_s or 0) * 1000:.0f} ms "
            f"(imports, connect, streams); snapshot subscribe -> index built "
            f"{cold.snapshot_since_subscribe_ms} ms, of which the build "
            f"{cold.build_ms} ms ({cold.messages} messages); RSS when ready {cold.rss_mib} MiB "
            f"(peak {cold.peak_rss_mib}); SIGTERM: exit {cold.stop[0]} in {cold.stop[1]:.2f} s"
        )
    median = statistics.median(c.ready_s for c in colds)
    out: dict[str, Any] = {
        "rules": size,
        "runs": [c.figures() for c in colds],
        "ready_s_median": round(median, 3),
        "cpu_s_when_ready_median": round(statistics.median(c.cpu_s for c in colds), 3),
        "ready_s_max": round(max(c.ready_s for c in colds), 3),
    }
    if uncached is not None:
        out["without_bytecode_cache"] = uncached.figures()
    if size == TARGET_COLD_START_RULES:
        ok = median <= TARGET_COLD_START_S
        print(
            f"{verdict(ok)}  cold start <= {TARGET_COLD_START_S:.0f} s with {size:,} rules: "
            f"median {median * 1000:.0f} ms"
        )
        out["target"] = {"ready_s_at_most": TARGET_COLD_START_S, "pass": ok}
    else:
        note = (
            ""
            if size > TARGET_COLD_START_RULES
            else f" (the target is at {TARGET_COLD_START_RULES:,} rules; a smaller set in --quick)"
        )
        print(f"  cold start with {size:,} rules: median {median * 1000:.0f} ms{note}")
    return out


# --------------------------------------------------------------------------------------------
# 5. Profile
# --------------------------------------------------------------------------------------------

_BUCKETS: Final = (
    ("evaluate (RuleIndex.evaluate)", "evaluate", "index.py"),
    ("parse event (parse_event)", "parse_event", "events.py"),
    ("build tag message (tagged_message)", "tagged_message", "events.py"),
    ("rest of _evaluate (metrics, counters)", "_evaluate", "event_consumer.py"),
    ("publish tags (js.publish_async)", "publish_async", None),
    ("ack events (msg.ack)", "ack", "msg.py"),
    ("rest of process (tracing span, wait)", "process", "event_consumer.py"),
    ("fetch (pull request, wait)", "_fetch", "event_consumer.py"),
    ("nats-py read loop (parse, dispatch)", "_read_loop", None),
    ("nats-py PubAck/inbox handling", "_process_msg", None),
    ("nats-py socket writes (_flusher)", "_flusher", None),
    ("rule snapshot / live applies", "_finish_snapshot", None),
    ("status heartbeat", "publish", "status.py"),
    ("health server (the benchmark polls /readyz)", "_handle_request", None),
    ("logging", "emit", "logging/__init__.py"),
    ("imports", "_find_and_load", None),
    ("event loop (selector bookkeeping)", "select", "selectors.py"),
)
_IDLE: Final = frozenset({"_worker", "EpollSelector.select", "Condition.wait", "select"})


def summarise_profile(raw_path: Path, top: int = 15) -> dict[str, Any]:
    buckets: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in raw_path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if frames and frames[-1][0] in _IDLE and "selectors" in frames[-1][1]:
            idle += count
            continue
        if frames and frames[-1][0] in ("_worker", "Condition.wait"):
            idle += count
            continue
        total += count
        label = "other"
        for name, func, suffix in _BUCKETS:
            if any(
                (f == func or f.endswith("." + func)) and (suffix is None or p.endswith(suffix))
                for f, p in frames
            ):
                label = name
                break
        buckets[label] += count
        if frames:
            func, path = frames[-1]
            own[f"{func} ({_short(path)})"] += count
    return {
        "samples": total,
        "idle_samples_excluded": idle,
        "rate_hz": PROFILE_RATE_HZ,
        "buckets": dict(buckets.most_common()),
        "top_self": dict(own.most_common(top)),
    }


def print_profile(summary: Mapping[str, Any], events: int) -> None:
    total = max(1, int(summary["samples"]))
    rate = int(summary["rate_hz"])
    print(
        f"py-spy: {total:,} CPU samples at {rate} Hz (~{total / rate:.1f} CPU-s); "
        f"{summary['idle_samples_excluded']:,} idle samples (epoll, thread pool) excluded"
    )
    print("  by phase (first matching frame of the stack, top-down order of this list):")
    for label, count in summary["buckets"].items():
        per_event_us = count / rate * 1e6 / max(1, events)
        print(f"    {count / total:6.1%}  {per_event_us:6.1f} us/event  {label}")
    print("  top functions by own samples:")
    for name, count in summary["top_self"].items():
        print(f"    {count / total:6.1%}  {name}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def install_starter(rules_dir: Path, count: int | None) -> list[Path]:
    """Copy the first `count` starter rules (by id; all if None) into `rules_dir`."""
    files = sorted(iter_rule_files(STARTER_RULES), key=lambda p: p.stem)
    placed = []
    for path in files[:count]:
        target = rules_dir / path.relative_to(STARTER_RULES)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        placed.append(target)
    return placed


class Fleet:
    """The master (restartable) and the sets of workers, sharing one NATS and database."""

    def __init__(
        self, bus: RoleNats, database_url: str, rules_dir: Path, workdir: Path,
        cleanup: contextlib.ExitStack,
    ) -> None:  # fmt: skip
        self.bus = bus
        self.database_url = database_url
        self.rules_dir = rules_dir
        self.workdir = workdir
        self.cleanup = cleanup
        self.master: MasterProcess | None = None
        self.masters = 0
        self.workers: list[WorkerProcess] = []

    def stop_master(self) -> None:
        if self.master is not None:
            self.master.stop()
            self.master = None

    async def restart_master(self, session: aiohttp.ClientSession) -> float:
        self.stop_master()
        self.masters += 1
        self.master = MasterProcess(
            f"fleet-{self.masters}",
            master_env(self.bus, self.database_url, self.rules_dir),
            self.workdir,
        )
        self.master.start()
        self.cleanup.callback(self.master.stop)
        return await self.master.wait_ready(session)

    def spawn_workers(self, tag: str) -> None:
        """Start the workers (logs under `workdir/tag`) without waiting for them."""
        self.workers = [WorkerProcess(w, self.bus, self.workdir / tag) for w in WORKER_IDS]
        (self.workdir / tag).mkdir(exist_ok=True)
        for proc in self.workers:
            proc.start()
            self.cleanup.callback(proc.stop)

    async def wait_workers(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(p.wait_ready(session) for p in self.workers))

    async def start_workers(self, session: aiohttp.ClientSession, tag: str) -> None:
        self.spawn_workers(tag)
        await self.wait_workers(session)

    def tuning(self) -> dict[str, dict[str, str]]:
        """The settings of the master and of the workers that are not defaults."""
        found: dict[str, dict[str, str]] = {}
        if self.master is not None:
            found["master"] = self.master.tuning
        if self.workers:
            found["workers"] = self.workers[0].tuning  # all started alike
        return found

    def stop_workers(self) -> list[tuple[int | None, float]]:
        stops = [p.stop() for p in self.workers]
        self.workers = []
        return stops


def use_bytecode_cache(workdir: Path) -> bool:
    """Where PYTHONDONTWRITEBYTECODE is set, give the workers a bytecode cache (printed);
    whether they have one."""
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        WorkerProcess.pycache = workdir / "pycache"
        compile_s = compile_worker_bytecode(WorkerProcess.pycache)
        print(
            f"PYTHONDONTWRITEBYTECODE is set here: the workers keep compiled bytecode under "
            f"{WorkerProcess.pycache} (filled in {compile_s:.1f} s), as the image ships it "
            f"compiled; section 4 also shows one start in the environment as given (no "
            f"bytecode written: modules without a compiled copy compile at every start)"
        )
    return WorkerProcess.pycache is not None


async def cold_start_sections(
    bus: RoleNats,
    session: aiohttp.ClientSession,
    settings: Settings,
    templates: Sequence[Template],
    held: int,
    revision: int,
    loads: dict[str, list[float]],
    workdir: Path,
    cleanup: contextlib.ExitStack,
) -> dict[str, Any]:
    """Section 4: for each size of `settings.cold_sets`, TTP_RULES (holding `held` rules, the
    newest at `revision`) is topped up to that size with seeded rule messages and a worker's
    cold starts are timed; the figures per size. No master may run: the seeded rules are not
    in its database."""
    figures: dict[str, Any] = {}
    for size in settings.cold_sets:
        section(f"4. cold start of a worker with {size:,} rules in TTP_RULES")
        loads[f"cold_start_{size}"] = print_load()
        seeding = await seed_rules(bus, templates, held, size - held, revision + 1)
        held, revision = size, revision + seeding.published
        print(
            f"{seeding.published:,} rule messages published straight into TTP_RULES as "
            f"the master role, in the master's form (no master validated them), in "
            f"{seeding.seconds:.1f} s; {held:,} rules in TTP_RULES"
        )
        # Beyond the target's size one start is enough (100,000 rules take minutes).
        starts = settings.cold_starts if size <= TARGET_COLD_START_RULES else 1
        cold = await cold_starts(bus, session, size, starts, workdir, cleanup)
        cold["seeded"] = {"published": seeding.published, "seconds": round(seeding.seconds, 2)}
        figures[str(size)] = cold
    return figures


async def run_cold_only(
    args: argparse.Namespace, settings: Settings, cleanup: contextlib.ExitStack, workdir: Path
) -> dict[str, Any]:
    """Section 4 alone: NATS only (no PostgreSQL, no master). The streams are created as
    the master role with every setting at its default, as a master would, then the rule
    messages are seeded and the workers started as in the full run."""
    figures: dict[str, Any] = {
        "bench": "fleet",
        "cold_only": True,
        "quick": args.quick,
        "machine": machine_figures(),
    }
    section_s: dict[str, float] = {}
    started = time.perf_counter()
    bus = start_nats(workdir / "nats", cleanup)
    print(f"NATS on {bus.url}", flush=True)
    await create_streams(bus, "bench-fleet-streams")
    section_s["servers_start"] = round(time.perf_counter() - started, 2)
    figures["worker_bytecode_cache"] = use_bytecode_cache(workdir)
    templates = load_templates(STARTER_RULES)
    loads: dict[str, list[float]] = {}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        # An empty TTP_RULES: no rule held, no revision yet.
        figures["cold_start"] = await cold_start_sections(
            bus, session, settings, templates, 0, 0, loads, workdir, cleanup
        )
    section_s["cold_start"] = round(time.perf_counter() - started, 2)
    figures["nats_violations"] = report_violations(bus, "the whole run")
    figures["section_s"] = section_s
    loads["end"] = print_load()
    figures["loadavg"] = loads
    return figures


async def run_all(
    args: argparse.Namespace, settings: Settings, cleanup: contextlib.ExitStack, workdir: Path
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "bench": "fleet",
        "quick": args.quick,
        "machine": machine_figures(),
        "nats_roles": FLEET_BENCH_ROLES,
    }
    section_s: dict[str, float] = {}
    started = time.perf_counter()
    pg = EmbeddedPostgres(data_dir=workdir / "postgres")
    cleanup.callback(pg.close)
    pg.start()
    pg.ensure_database("bench_fleet")
    bus = start_nats(workdir / "nats", cleanup)
    print(f"PostgreSQL on port {pg.port}, NATS on {bus.url}", flush=True)
    if args.quick:
        print(
            f"--quick: {settings.saves} saves per propagation series, {settings.events:,} "
            f"events, {settings.medium_rules:,} rules instead of {MEDIUM_SET:,} in section 3, "
            f"cold starts at {', '.join(f'{n:,}' for n in settings.cold_sets)} rules instead "
            f"of {', '.join(f'{n:,}' for n in COLD_SETS)}: not the targets' sizes",
            flush=True,
        )
    print(roles_note(FLEET_BENCH_ROLES), flush=True)
    servers = {"postgres": pg.pid, "nats": bus.server.pid}
    section_s["servers_start"] = round(time.perf_counter() - started, 2)
    figures["worker_bytecode_cache"] = use_bytecode_cache(workdir)

    rules_dir = workdir / "rules"
    rules_dir.mkdir()
    install_starter(rules_dir, None)
    pack = len(list(iter_rule_files(rules_dir)))
    loads: dict[str, list[float]] = {}
    fleet = Fleet(bus, pg.url_for("bench_fleet"), rules_dir, workdir, cleanup)
    feed = StatusFeed()
    clients = await BenchClients.open(bus, "bench-fleet")
    nc = clients.watch
    try:
        await nc.subscribe(
            subjects.wildcard(subjects.WORKER_STATUS_PREFIX),
            cb=feed.on_msg,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await nc.flush()
        async with aiohttp.ClientSession() as session:
            # ------------------------------------------------------------ 1. starter pack
            section(
                f"1. propagation, the starter pack ({pack} rules), {WORKERS} workers "
                f"({settings.saves} saves)"
            )
            loads["propagation_starter"] = print_load()
            started = time.perf_counter()
            await fleet.restart_master(session)
            summary = await wait_master_rules(nc, pack)
            await fleet.start_workers(session, "small")
            await wait_fleet_digest(feed, WORKER_IDS, str(summary["digest"]))
            tuning = fleet.tuning()
            print(tuning_note(tuning))
            figures["non_default_settings"] = tuning
            target = sorted(iter_rule_files(rules_dir), key=lambda p: p.stem)[0]
            small = await propagation(
                nc, feed, WORKER_IDS, rules_dir, target, pack, settings.saves,
                settings.warmup, TARGET_SMALL_PROPAGATION_P99_MS,
            )  # fmt: skip
            print_propagation(small)
            figures["propagation_starter"] = small.figures()
            stops = fleet.stop_workers()
            print(
                "  workers stopped (SIGTERM): "
                + ", ".join(f"exit {c} in {s:.2f} s" for c, s in stops)
            )
            figures["propagation_starter"]["worker_stops"] = [[c, round(s, 3)] for c, s in stops]
            section_s["propagation_starter"] = round(time.perf_counter() - started, 2)

            # ------------------------------------------------------------ 2. throughput
            section(f"2. throughput, starter pack, {settings.events:,} events")
            loads["throughput"] = print_load()
            started = time.perf_counter()
            install_starter(rules_dir, None)
            pack = len(list(iter_rule_files(rules_dir)))
            await wait_master_rules(nc, pack)
            examples = fire_examples(STARTER_RULES)
            print(f"{pack} starter rules loaded; {len(examples)} fire examples as events")
            results = {}
            for count_workers in (1, 2):
                result = await throughput(
                    clients,
                    bus,
                    session,
                    examples,
                    workers=count_workers,
                    count=settings.events,
                    run=f"tp{count_workers}",
                    workdir=workdir,
                    cleanup=cleanup,
                    server_pids=servers,
                )
                print_throughput(result)
                results[f"workers_{count_workers}"] = result.figures()
            results["two_worker_speedup"] = two_worker_speedup(results)
            figures["throughput"] = results
            section_s["throughput"] = round(time.perf_counter() - started, 2)

            if args.profile:
                section("5. profile of one worker tagging (py-spy; its rate is not a figure)")
                started = time.perf_counter()
                raw = workdir / "worker.pyspy.txt"
                result = await throughput(
                    clients,
                    bus,
                    session,
                    examples,
                    workers=1,
                    count=settings.events,
                    run="profile",
                    workdir=workdir,
                    cleanup=cleanup,
                    server_pids=servers,
                    profile_to=raw,
                )
                print_throughput(result, target=False)
                if raw.is_file():
                    profile = summarise_profile(raw)
                    print_profile(profile, settings.events)
                    figures["profile"] = {"run": result.figures(), **profile}
                    if args.keep:
                        print(f"  raw stacks: {raw}")
                else:
                    print("py-spy wrote no profile")
                section_s["profile"] = round(time.perf_counter() - started, 2)

            # ------------------------------------------------------------ 3. 1,000 rules
            section(f"3. propagation, {settings.medium_rules:,} rules, {WORKERS} workers")
            loads[f"propagation_{settings.medium_rules}"] = print_load()
            started = time.perf_counter()
            templates = load_templates(STARTER_RULES)
            # Generated outside the rules directory, moved in while the master is stopped.
            generated = generate_rules(
                templates, workdir / "generated", settings.medium_rules - pack, 100, SEED
            )
            precheck(generated, len(templates), 100)
            gen_files = sorted(iter_rule_files(generated.root), key=lambda p: p.stem)
            into = rules_dir / "generated"
            into.mkdir()
            fleet.stop_master()
            for path in gen_files:
                os.replace(path, into / path.name)
            ready_s = await fleet.restart_master(session)
            summary = await wait_master_rules(nc, settings.medium_rules)
            medium_n = settings.medium_rules
            print(f"master restarted over {medium_n:,} rules, ready in {ready_s:.2f} s")
            await fleet.start_workers(session, "medium")
            await wait_fleet_digest(feed, WORKER_IDS, str(summary["digest"]))
            target = into / gen_files[0].name
            medium = await propagation(
                nc, feed, WORKER_IDS, rules_dir, target, settings.medium_rules, settings.saves,
                settings.warmup, TARGET_MEDIUM_PROPAGATION_P99_MS,
            )  # fmt: skip
            print_propagation(medium)
            figures[f"propagation_{settings.medium_rules}"] = medium.figures()
            fleet.stop_workers()
            section_s[f"propagation_{medium_n}"] = round(time.perf_counter() - started, 2)

            # ------------------------------------------------------------ 4. cold start
            started = time.perf_counter()
            # The master stops for good: the seeded rules are not in its database.
            if fleet.master is not None:
                problems = fleet.master.problems()
                stop = fleet.master.stop()
                fleet.master = None
                print(f"\nmaster stopped (SIGTERM): exit {stop.exit_code} in {stop.seconds:.2f} s")
                for line in problems[:5]:
                    print(f"  master log: {line}")
            latest = await master_summary(nc)
            revision = int((latest or summary)["revision"])
            figures["cold_start"] = await cold_start_sections(
                bus, session, settings, templates, settings.medium_rules, revision, loads,
                workdir, cleanup,
            )  # fmt: skip
            section_s["cold_start"] = round(time.perf_counter() - started, 2)
    finally:
        await clients.close()
    figures["nats_violations"] = report_violations(bus, "the whole run")
    figures["section_s"] = section_s
    loads["end"] = print_load()
    figures["loadavg"] = loads
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller run (fewer saves and events, smaller rule sets), under ~60 s",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one tagging worker with py-spy"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, rules, profile)"
    )
    parser.add_argument(
        "--cold-only",
        action="store_true",
        help="only section 4 (cold starts), with NATS alone: no PostgreSQL, no master",
    )
    args = parser.parse_args(argv)
    settings = Settings.for_mode(args.quick)
    for binary in (WORKER_BIN, BIN_DIR / "ttp-master"):
        if not binary.is_file():
            print(f"{binary} not found: install the project into this environment")
            return 2
    return run_bench(
        args,
        title="ttp-worker fleet benchmark",
        slug="fleet",
        run=lambda cleanup, workdir: (run_cold_only if args.cold_only else run_all)(
            args, settings, cleanup, workdir
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
