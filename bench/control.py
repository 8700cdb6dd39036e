"""Benchmark of the operator control plane: `ttp.ctl.*` against a real fleet.

Run from the repository root:

    .venv/bin/python -m bench.control [--quick] [--profile] [--keep]

It starts its own NATS (JetStream) and PostgreSQL servers from `ttp_runtime.embedded` on
random free ports (never the machine's 4222/5432), one `ttp-master` over a copy of the
starter pack (`rules/`) and 4 `ttp-worker` processes (the machinery of bench/master.py and
bench/fleet.py), and stops every process and server it started, also on Ctrl-C, SIGTERM or
an error. The workers are started first, right after NATS (they wait for the master to
create the streams), so that their start overlaps PostgreSQL's initdb and the master's;
they follow the master's initial sync live, and every measurement starts once all 4 report
the master's digest. Requests go through `ttpctl`'s own `ControlClient` (request/reply on
`ttp.ctl.<endpoint>`, typed models both ways) over a connection made as ttpctl makes it
(`open_nats`), exactly as the CLI sends them. It prints human-readable figures and, as the
last line of stdout, one JSON object holding every figure. Targets are printed as PASS/MISS;
the exit status is 0 unless the script fails.

What runs is the default deployment: nats-server with the shipped accounts config, the master
logged in as the master role (serving control requests only with the caller identity the
server stamps on them, its default), the workers as the worker role, every setting of theirs
at its default (the ones that are not are printed). The requests are sent as the operator
role (the server names it to the master: actor `OPERATORS/operator`; the requests name no
user they act for, which only the console role may), and this benchmark watches as the
consumer role. The
permission violations in the server's log are printed at the end: any means a grant is
missing.

What is measured
1. State change -> every worker applied it: 100 changes (quick: 20) after 3 warm-up ones,
   cycling disable / clip 0.5 / clear over 3 starter rules (every request is a real change).
   The clock starts just before the `state.set` / `state.clear` request is sent and stops
   when the LAST of the 4 workers has published a `ttp.worker.status.<id>` (published on
   each applied change) with a `revision` at least the revision of the reply. Each sample is
   split into request -> reply (the master: validate, commit) and reply -> all
   applied (relay to NATS, the workers' apply and status); the arrival of the change's
   `ttp.rule.state.<rule_id>` (a core subscription here) splits it further into request ->
   on NATS (commit and outbox relay) and on NATS -> all applied (the workers alone). At the
   end every worker's `index_digest` is compared with the digest of the master's last
   `ttp.ruleset.revision`, and the `fleet` endpoint is asked whether it says converged.
2. Expiry precision: 10 states (quick: 3) set on other starter rules in a burst, the i-th
   with `expires_at` = now + 1.5 s + i x 0.25 s (staggered, so each revert is its own). Per
   state: `expires_at` -> arrival of its `ttp.rule.state.<rule_id>` with `cause: expired`
   (the master's revert, on NATS), and `expires_at` -> the last of the 4 workers reporting
   that revert's revision. Wall clock on both sides (one machine, one clock). The target
   ("reverted within 1 s") is judged on the stricter figure, every worker applied.
3. Control read latency: 50 (quick: 20) `fleet` and 50 `rules.list` requests, one at a
   time after 2 warm-up ones, request -> decoded reply (as `ttpctl fleet` / `rules list`).

With `--profile` (py-spy: `.venv/bin/pip install py-spy`), py-spy is attached to the master
for section 1 only and PostgreSQL logs every statement of the master's sessions; the section
then also prints where the master's CPU went (bench/master.py's summary) and the statements
per change. Sampling and statement logging slow the run: its timings are not the figures of
an unprofiled run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from bench.fleet import (
    WORKER_BIN,
    WORKER_IDS,
    Fleet,
    StatusFeed,
    install_starter,
    master_summary,
    wait_fleet_digest,
    wait_master_rules,
)
from bench.master import (
    MASTER_BIN,
    PG_SETTINGS,
    AttachedProfiler,
    BenchError,
    connect_as,
    cpu_seconds,
    distribution,
    log_all_statements,
    machine_figures,
    ms,
    percentile,
    pg_statements,
    print_profile,
    print_statements,
    report_violations,
    roles_note,
    run_bench,
    section,
    start_nats,
    statement_figures,
    summarise_profile,
    tuning_note,
    verdict,
)
from nats.aio.client import Client
from nats.aio.msg import Msg

from ttp_core.contract import subjects
from ttp_core.contract.control import (
    RulesListRequest,
    StateChanged,
    StateClearRequest,
    StateSetRequest,
)
from ttp_core.rules.validator import iter_rule_files
from ttp_runtime.control_client import ControlClient
from ttp_runtime.embedded import EmbeddedPostgres
from ttp_runtime.nats_roles import Role
from ttp_runtime.settings import ServiceSettings
from ttpctl.nats_session import open_nats

if TYPE_CHECKING:  # annotations only; bench/master.py starts the server (start_nats)
    from harness.nats_roles import RoleNats

DATABASE: Final = "bench_control"
TARGET_APPLY_P99_MS: Final = 20.0
TARGET_REVERT_S: Final = 1.0
CHANGE_RULES: Final = 3
CHANGE_GAP_S: Final = 0.02
CHANGE_TIMEOUT_S: Final = 10.0
EXPIRY_AFTER_S: Final = 1.5
EXPIRY_STAGGER_S: Final = 0.25
EXPIRY_TIMEOUT_S: Final = 15.0
READ_WARMUP: Final = 2
# (state, confidence_max) per step of the cycle; None is `state.clear`.
CYCLE: Final[tuple[tuple[str, float | None] | None, ...]] = (
    ("disabled", None),
    ("clipped", 0.5),
    None,
)


@dataclass(frozen=True, slots=True)
class Settings:
    """How much work each section does; `--quick` trades precision for a run under 30 s."""

    changes: int
    warmup: int
    expiries: int
    reads: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(changes=20, warmup=3, expiries=3, reads=20)
        return cls(changes=100, warmup=3, expiries=10, reads=50)


def _distribution(values: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50/p90/p99/max in ms of seconds."""
    if not values:
        return {}
    return {
        f"{prefix}p50_ms": ms(statistics.median(values)),
        f"{prefix}p90_ms": ms(percentile(values, 90)),
        f"{prefix}p99_ms": ms(percentile(values, 99)),
        f"{prefix}max_ms": ms(max(values)),
    }


@dataclass(slots=True)
class StateFeed:
    """Every `ttp.rule.state.*` message: arrival (perf_counter, wall) by revision."""

    by_revision: dict[int, tuple[float, float]] = field(default_factory=dict)
    expired: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    """rule_id -> (revision, perf_counter, wall) of its latest `cause: expired` message."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_msg(self, msg: Msg) -> None:
        at, wall = time.perf_counter(), time.time()
        data = json.loads(msg.data)["data"]
        revision = int(data["revision"])
        self.by_revision[revision] = (at, wall)
        if data.get("cause") == "expired":
            self.expired[str(data["rule_id"])] = (revision, at, wall)
        self.arrived.set()

    async def wait_expired(self, rule_ids: Sequence[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not all(r in self.expired for r in rule_ids):
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)


@dataclass(slots=True)
class StampFeed:
    """Every `ttp.worker.status.*` message: (revision, CloudEvents `time`) per worker.

    The `time` is stamped by the worker as it publishes the status, on the machine's clock:
    a measure of "every worker applied it" that does not depend on when this process's
    loop gets round to the message (the outside measurement the in-process one is checked
    against)."""

    seen: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    async def on_msg(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        data = event["data"]
        stamped = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()
        self.seen.setdefault(str(data["worker_id"]), []).append((int(data["revision"]), stamped))

    def last_stamp(self, workers: Sequence[str], revision: int, after: float) -> float | None:
        """The latest of the workers' first status stamps reporting `revision` after the
        wall time `after`; None if a worker has none (yet)."""
        firsts = []
        for worker in workers:
            found = [t for r, t in self.seen.get(worker, []) if t >= after and r >= revision]
            if not found:
                return None
            firsts.append(min(found))
        return max(firsts)

    def trim(self) -> None:
        for history in self.seen.values():
            del history[:-5]


CONTROL_BENCH_ROLES: Final[Mapping[str, Role]] = {
    "ttp-master": "master",
    "ttp-workers": "worker",
    "this benchmark's control requests": "operator",
    "its watcher": "consumer",
}


def operator_settings(bus: RoleNats) -> ServiceSettings:
    """The client settings of the operator's credentials file (`TTP_NATS_*`), which ttpctl
    connects with; nothing else of this process's environment."""
    return bus.credentials["operator"].client_settings(bus.url)


def perf_to_wall(perf: float) -> float:
    """Wall-clock time of a perf_counter reading (the offset is read now)."""
    return perf + (time.time() - time.perf_counter())


# --------------------------------------------------------------------------------------------
# 1. State change -> all workers applied
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ApplyResult:
    workers: int
    rules: list[str]
    samples: list[tuple[float, float | None, float]] = field(default_factory=list)
    """(request -> reply, request -> on NATS or None, request -> last worker applied), s."""
    stamped: list[tuple[float, float]] = field(default_factory=list)
    """(request -> last worker's status as the workers stamped it, request -> last worker
    applied as this process received it), s, for the samples whose stamps arrived."""
    lost: int = 0
    unchanged: int = 0
    digests_match: bool = False
    fleet_converged: bool | None = None
    cpu_per_change_ms: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "changes": len(self.samples),
            "rules": self.rules,
            "workers": self.workers,
            "lost": self.lost,
            "unchanged_replies": self.unchanged,
            "digests_match_master": self.digests_match,
            "fleet_endpoint_converged": self.fleet_converged,
            "cpu_per_change_ms": self.cpu_per_change_ms,
        }
        if not self.samples:
            return out
        out |= _distribution([s[2] for s in self.samples])
        out |= _distribution([s[0] for s in self.samples], "request_to_reply_")
        out |= _distribution([s[2] - s[0] for s in self.samples], "reply_to_all_applied_")
        on_nats = [(s[1], s[2]) for s in self.samples if s[1] is not None]
        out["on_nats_seen"] = len(on_nats)
        out |= _distribution([n for n, _ in on_nats], "request_to_on_nats_")
        out |= _distribution([a - n for n, a in on_nats], "on_nats_to_all_applied_")
        if self.stamped:
            out["stamped_seen"] = len(self.stamped)
            out |= _distribution([s for s, _ in self.stamped], "stamped_by_workers_")
            out |= _distribution([r - s for s, r in self.stamped], "received_after_stamp_")
        out["target"] = {
            "p99_ms_below": TARGET_APPLY_P99_MS,
            "pass": out["p99_ms"] < TARGET_APPLY_P99_MS,
        }
        return out


def change_request(step: int, rule_id: str) -> StateSetRequest | StateClearRequest:
    action = CYCLE[step % len(CYCLE)]
    if action is None:
        return StateClearRequest(rule_id=rule_id, reason=f"bench clear {step}")
    state, confidence_max = action
    return StateSetRequest(
        rule_id=rule_id,
        state=state,  # type: ignore[arg-type]
        confidence_max=confidence_max,
        reason=f"bench {state} {step}",
    )


async def send(client: ControlClient, request: StateSetRequest | StateClearRequest) -> StateChanged:
    if isinstance(request, StateClearRequest):
        return await client.state_clear(request)
    return await client.state_set(request)


async def apply_latency(
    nc: Client,
    client: ControlClient,
    feed: StatusFeed,
    stamps: StampFeed,
    states: StateFeed,
    rules: Sequence[str],
    settings: Settings,
    pids: dict[str, list[int | None]],
) -> ApplyResult:
    result = ApplyResult(len(WORKER_IDS), list(rules))
    cpu_before: dict[str, float] = {}
    for n in range(settings.warmup + settings.changes):
        if n == settings.warmup:
            cpu_before = {k: sum(cpu_seconds(p, tree=True) for p in v) for k, v in pids.items()}
        # Rule (n // 3) gets disable, clip, clear in turn: every request changes something.
        request = change_request(n, rules[(n // len(CYCLE)) % len(rules)])
        sent_wall = time.time()
        sent = time.perf_counter()
        reply = await send(client, request)
        replied = time.perf_counter()
        if not reply.changed:
            result.unchanged += 1
            continue
        applied = await feed.all_at_least(WORKER_IDS, reply.revision, sent, CHANGE_TIMEOUT_S)
        if applied is None:
            result.lost += 1
            continue
        if n >= settings.warmup:
            on_nats = states.by_revision.get(reply.revision)
            result.samples.append(
                (
                    replied - sent,
                    None if on_nats is None else on_nats[0] - sent,
                    applied - sent,
                )
            )
            stamp = stamps.last_stamp(WORKER_IDS, reply.revision, sent_wall)
            if stamp is not None:
                result.stamped.append((stamp - sent_wall, applied - sent))
        feed.trim()
        stamps.trim()
        await asyncio.sleep(CHANGE_GAP_S)
    changes = max(1, len(result.samples))
    result.cpu_per_change_ms = {
        k: round(
            (sum(cpu_seconds(p, tree=True) for p in v) - cpu_before.get(k, 0.0)) * 1000 / changes,
            2,
        )
        for k, v in pids.items()
    }
    summary = await master_summary(nc)
    if summary is not None:
        with contextlib.suppress(BenchError):
            await wait_fleet_digest(feed, WORKER_IDS, str(summary["digest"]), timeout=10.0)
            result.digests_match = True
    with contextlib.suppress(Exception):
        result.fleet_converged = (await client.fleet()).converged
    return result


def print_apply(result: ApplyResult) -> None:
    f = result.figures()
    print(
        f"{f['changes']} changes ({f['lost']} lost, {f['unchanged_replies']} unchanged) on "
        f"{', '.join(result.rules)}, {result.workers} workers"
    )
    if not result.samples:
        print("  no samples")
        return
    print(
        f"  request -> all {result.workers} workers applied: p50 {f['p50_ms']:.1f} ms, "
        f"p90 {f['p90_ms']:.1f}, p99 {f['p99_ms']:.1f}, max {f['max_ms']:.1f}"
    )
    print(
        f"  of which request -> reply (master: validate, commit): p50 "
        f"{f['request_to_reply_p50_ms']:.1f} ms (p99 {f['request_to_reply_p99_ms']:.1f}); "
        f"reply -> all applied: p50 {f['reply_to_all_applied_p50_ms']:.1f} ms "
        f"(p99 {f['reply_to_all_applied_p99_ms']:.1f})"
    )
    if "request_to_on_nats_p50_ms" in f:
        print(
            f"  request -> ttp.rule.state on NATS (commit + outbox relay): p50 "
            f"{f['request_to_on_nats_p50_ms']:.1f} ms (p99 {f['request_to_on_nats_p99_ms']:.1f});"
            f" on NATS -> last worker's status (workers): p50 "
            f"{f['on_nats_to_all_applied_p50_ms']:.1f} ms "
            f"(p99 {f['on_nats_to_all_applied_p99_ms']:.1f})"
        )
    if "stamped_by_workers_p50_ms" in f:
        print(
            f"  cross-check, request -> the last worker's status as the workers stamped it "
            f"(CloudEvents time, not this process's receive): p50 "
            f"{f['stamped_by_workers_p50_ms']:.1f} ms, p99 {f['stamped_by_workers_p99_ms']:.1f}; "
            f"this process received it {f['received_after_stamp_p50_ms']:.1f} ms later (p50, "
            f"p99 {f['received_after_stamp_p99_ms']:.1f})"
        )
    cpu = ", ".join(f"{k} {v:.1f} ms" for k, v in result.cpu_per_change_ms.items())
    print(f"  CPU per change: {cpu}")
    print(
        f"  every worker's index digest equals the master's: {result.digests_match}; "
        f"fleet endpoint says converged: {result.fleet_converged}"
    )
    print(
        f"{verdict(f['target']['pass'])}  state change -> all workers applied, p99 < "
        f"{TARGET_APPLY_P99_MS:.0f} ms: {f['p99_ms']:.1f} ms"
    )


# --------------------------------------------------------------------------------------------
# 2. Expiry precision
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ExpiryResult:
    states: int
    on_nats_s: list[float] = field(default_factory=list)
    """expires_at -> the `cause: expired` message on NATS, seconds."""
    applied_s: list[float] = field(default_factory=list)
    """expires_at -> the last worker reported the revert's revision, seconds."""
    missing: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "states": self.states,
            "expires_after_s": EXPIRY_AFTER_S,
            "stagger_s": EXPIRY_STAGGER_S,
            "missing": self.missing,
        }
        if self.on_nats_s:
            out["expiry_to_on_nats_p50_ms"] = ms(statistics.median(self.on_nats_s))
            out["expiry_to_on_nats_max_ms"] = ms(max(self.on_nats_s))
        if self.applied_s:
            out["expiry_to_all_applied_p50_ms"] = ms(statistics.median(self.applied_s))
            out["expiry_to_all_applied_max_ms"] = ms(max(self.applied_s))
        ok = not self.missing and bool(self.applied_s) and max(self.applied_s) < TARGET_REVERT_S
        out["target"] = {"revert_and_applied_within_s": TARGET_REVERT_S, "pass": ok}
        return out


async def expiry_precision(
    client: ControlClient, feed: StatusFeed, states: StateFeed, rules: Sequence[str]
) -> ExpiryResult:
    result = ExpiryResult(len(rules))
    base = datetime.now(UTC) + timedelta(seconds=EXPIRY_AFTER_S)
    expires: dict[str, datetime] = {}
    for i, rule_id in enumerate(rules):
        expires_at = base + timedelta(seconds=i * EXPIRY_STAGGER_S)
        reply = await client.state_set(
            StateSetRequest(
                rule_id=rule_id,
                state="disabled",
                expires_at=expires_at,
                reason="bench expiry",
            )
        )
        if not reply.changed:
            raise BenchError(f"state.set on {rule_id} changed nothing")
        expires[rule_id] = expires_at
    set_done = time.perf_counter()
    last = max(expires.values())
    wait_s = (last - datetime.now(UTC)).total_seconds() + EXPIRY_TIMEOUT_S
    await states.wait_expired(rules, wait_s)
    for rule_id in rules:
        seen = states.expired.get(rule_id)
        if seen is None:
            result.missing.append(rule_id)
            continue
        revision, _at, wall = seen
        due = expires[rule_id].timestamp()
        result.on_nats_s.append(wall - due)
        applied = await feed.all_at_least(WORKER_IDS, revision, set_done, CHANGE_TIMEOUT_S)
        if applied is None:
            result.missing.append(f"{rule_id} (workers)")
            continue
        result.applied_s.append(perf_to_wall(applied) - due)
    return result


def print_expiry(result: ExpiryResult) -> None:
    f = result.figures()
    print(
        f"{result.states} states expiring {EXPIRY_AFTER_S:g} s after being set, "
        f"{EXPIRY_STAGGER_S:g} s apart; missing: {result.missing or 'none'}"
    )
    if result.on_nats_s:
        print(
            f"  expires_at -> `cause: expired` on NATS: p50 "
            f"{f['expiry_to_on_nats_p50_ms']:.1f} ms, max {f['expiry_to_on_nats_max_ms']:.1f}"
        )
    if result.applied_s:
        print(
            f"  expires_at -> all {len(WORKER_IDS)} workers applied the revert: p50 "
            f"{f['expiry_to_all_applied_p50_ms']:.1f} ms, "
            f"max {f['expiry_to_all_applied_max_ms']:.1f}"
        )
    worst = f.get("expiry_to_all_applied_max_ms", float("nan"))
    print(
        f"{verdict(f['target']['pass'])}  revert (on every worker) within "
        f"{TARGET_REVERT_S:g} s of expires_at: max {worst:.1f} ms"
    )


# --------------------------------------------------------------------------------------------
# 3. Read latency
# --------------------------------------------------------------------------------------------


async def read_latency(call: Callable[[], Awaitable[Any]], count: int) -> tuple[list[float], Any]:
    """Seconds of `count` sequential calls (after `READ_WARMUP`), and the last result."""
    last: Any = None
    for _ in range(READ_WARMUP):
        last = await call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        last = await call()
        samples.append(time.perf_counter() - started)
    return samples, last


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def run_all(
    args: argparse.Namespace, settings: Settings, cleanup: contextlib.ExitStack, workdir: Path
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "bench": "control",
        "quick": args.quick,
        "machine": machine_figures(),
        "client": "ttp_runtime.control_client.ControlClient, as the operator role",
        "nats_roles": CONTROL_BENCH_ROLES,
    }
    section_s: dict[str, float] = {}
    started = time.perf_counter()
    bus = start_nats(workdir / "nats", cleanup)
    rules_dir = workdir / "rules"
    rules_dir.mkdir()
    install_starter(rules_dir, None)
    pack = len(list(iter_rule_files(rules_dir)))
    # The workers need only NATS (they wait there for the master to create the streams):
    # started now, their imports overlap PostgreSQL's initdb and the master's start.
    fleet = Fleet(bus, "", rules_dir, workdir, cleanup)
    fleet.spawn_workers("workers")
    # --profile: every statement of the master's sessions is logged (with epoch stamps).
    pg = EmbeddedPostgres(
        data_dir=workdir / "postgres", settings=PG_SETTINGS if args.profile else None
    )
    cleanup.callback(pg.close)
    pg.start()
    pg.ensure_database(DATABASE)
    if args.profile:
        log_all_statements(pg, DATABASE)
    fleet.database_url = pg.url_for(DATABASE)
    print(f"PostgreSQL on port {pg.port}, NATS on {bus.url}", flush=True)
    print(roles_note(CONTROL_BENCH_ROLES), flush=True)
    section_s["servers_start"] = round(time.perf_counter() - started, 2)

    feed = StatusFeed()
    stamps = StampFeed()
    states = StateFeed()
    nc = await connect_as(bus, "consumer", "bench-control-watch")
    try:
        for subject, callback in (
            (subjects.wildcard(subjects.WORKER_STATUS_PREFIX), feed.on_msg),
            (subjects.wildcard(subjects.WORKER_STATUS_PREFIX), stamps.on_msg),
            (f"{subjects.RULE_STATE_PREFIX}.>", states.on_msg),
        ):
            await nc.subscribe(subject, cb=callback, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()
        async with (
            open_nats(
                None,
                settings=operator_settings(bus),
                name="bench-control",
                announce_reconnects=False,
            ) as operator,
            aiohttp.ClientSession() as session,
        ):
            client = ControlClient(operator.nc)
            started = time.perf_counter()
            ready_s = await fleet.restart_master(session)
            summary = await wait_master_rules(nc, pack)
            await fleet.wait_workers(session)
            await wait_fleet_digest(feed, WORKER_IDS, str(summary["digest"]))
            print(
                f"master ready {ready_s:.2f} s after its start, over {pack} starter rules; "
                f"{len(WORKER_IDS)} workers (started first) at its digest"
            )
            tuning = fleet.tuning()
            print(tuning_note(tuning))
            figures["non_default_settings"] = tuning
            section_s["fleet_start"] = round(time.perf_counter() - started, 2)
            listed = await client.rules_list(RulesListRequest(status="active"))
            active = sorted(r.rule_id for r in listed.rules)
            if len(active) < CHANGE_RULES + settings.expiries:
                raise BenchError(f"only {len(active)} active rules in the starter pack")
            change_rules = active[:CHANGE_RULES]
            expiry_rules = active[CHANGE_RULES : CHANGE_RULES + settings.expiries]
            assert fleet.master is not None
            pids: dict[str, list[int | None]] = {
                "master": [fleet.master.pid],
                "workers": [w.pid for w in fleet.workers],
                "postgres": [pg.pid],
                "nats": [bus.server.pid],
            }

            # ------------------------------------------------------------ 1. apply
            section(
                f"1. state change -> all {len(WORKER_IDS)} workers applied "
                f"({settings.changes} changes)"
            )
            started = time.perf_counter()
            window_start = time.time()
            profiler: AttachedProfiler | None = None
            raw_profile = workdir / "master-state-change.raw"
            if args.profile and fleet.master.pid is not None:
                # Attached only now: the profile shows the state changes, not the start-up.
                profiler = AttachedProfiler(fleet.master.pid, raw_profile, workdir)
                cleanup.callback(profiler.stop)
            applied = await apply_latency(
                nc, client, feed, stamps, states, change_rules, settings, pids
            )
            window = (window_start, time.time())
            if profiler is not None:
                profiler.stop()
            print_apply(applied)
            figures["state_change"] = applied.figures()
            if profiler is not None:
                if raw_profile.is_file():
                    print("  (profiled run: py-spy's sampling inflates the timings above)")
                    profile = summarise_profile(raw_profile, top=25)
                    print_profile(profile, settings.warmup + settings.changes, "change")
                    figures["profile"] = profile
                    statements = pg_statements(pg.log_path, window, top=20)
                    print_statements(statements, settings.warmup + settings.changes, "change")
                    profile["postgres_per_change"] = statement_figures(
                        statements, settings.warmup + settings.changes
                    )
                else:
                    print("py-spy wrote no profile")
            section_s["state_change"] = round(time.perf_counter() - started, 2)

            # ------------------------------------------------------------ 2. expiry
            section(f"2. expiry precision ({settings.expiries} states)")
            started = time.perf_counter()
            expiry = await expiry_precision(client, feed, states, expiry_rules)
            print_expiry(expiry)
            figures["expiry"] = expiry.figures()
            section_s["expiry"] = round(time.perf_counter() - started, 2)

            # ------------------------------------------------------------ 3. reads
            section(f"3. control read latency ({settings.reads} requests each)")
            started = time.perf_counter()
            reads: dict[str, Any] = {}
            fleet_samples, info = await read_latency(client.fleet, settings.reads)
            reads["fleet"] = distribution(fleet_samples) | {"workers": len(info.workers)}
            list_samples, listing = await read_latency(client.rules_list, settings.reads)
            reads["rules_list"] = distribution(list_samples) | {"rules": len(listing.rules)}
            for name, f in reads.items():
                print(
                    f"  {name}: p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, "
                    f"max {f['max_ms']:.2f} ms ({f['requests']} requests)"
                )
            figures["reads"] = reads
            section_s["reads"] = round(time.perf_counter() - started, 2)

            stops = fleet.stop_workers()
            master = fleet.master
            problems = master.problems() if master is not None else []
            stop = master.stop() if master is not None else None
            fleet.master = None
            print(
                "\nworkers stopped (SIGTERM): "
                + ", ".join(f"exit {c} in {s:.2f} s" for c, s in stops)
            )
            if stop is not None:
                print(f"master stopped (SIGTERM): exit {stop.exit_code} in {stop.seconds:.2f} s")
            for line in problems[:5]:
                print(f"  master log: {line}")
            figures["stops"] = {
                "workers": [[c, round(s, 3)] for c, s in stops],
                "master": None if stop is None else [stop.exit_code, round(stop.seconds, 3)],
            }
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    figures["nats_violations"] = report_violations(bus, "the whole run")
    figures["section_s"] = section_s
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller run, under 30 s")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, rules, server data)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the master with py-spy during the state changes (section 1)",
    )
    args = parser.parse_args(argv)
    settings = Settings.for_mode(args.quick)
    for binary in (WORKER_BIN, MASTER_BIN):
        if not binary.is_file():
            print(f"{binary} not found: install the project into this environment")
            return 2
    return run_bench(
        args,
        title="ttp-ctl control plane benchmark",
        slug="control",
        run=lambda cleanup, workdir: run_all(args, settings, cleanup, workdir),
    )


if __name__ == "__main__":
    raise SystemExit(main())
