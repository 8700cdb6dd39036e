"""Benchmark of the master (`ttp-master` run as a real process, as operators run it).

Run from the repository root:

    .venv/bin/python -m bench.master [--quick] [--profile] [--durable] [--keep]

It starts its own NATS (JetStream) and PostgreSQL servers from `ttp_runtime.embedded` on
random free ports (never the machine's 4222/5432), runs the `ttp-master` console script of
this interpreter's environment with `TTP_*` variables and `TTP_LOG_FORMAT=json` (stdout to a
file under a temporary directory), and stops every process it started, also on Ctrl-C,
SIGTERM or an error. It prints human-readable figures and, as the last line of stdout, one
JSON object holding every figure. Targets are printed as PASS/MISS; the exit status is 0
unless the script itself fails.

What runs is the default deployment: nats-server with the shipped accounts config
(`ttp_runtime/nats_accounts.conf`, fresh passwords), the master logged in as the master role
(so it serves control requests only with a verified caller identity, its default), this
benchmark's subscriptions as the consumer role. Every master setting is at its default
except where a series says otherwise (printed with each series). The permission violations
in the server's log are printed at the end of each section: any means a grant is missing.

What is measured
1. Save-to-PubAck latency. A copy of the starter pack is served; once `/readyz` says 200, one
   rule file is saved repeatedly like an editor does (whole content to a hidden temporary
   name in the same directory, then `os.replace` onto the rule file), each save changing the
   description and the confidence so the content hash changes. The clock starts just before
   the rename and stops when a core NATS subscription on `ttp.rule.reloaded.<rule_id>` in
   this process receives the message carrying the new `content_sha256`. JetStream routes a
   message to core subscribers when it stores it and answers the PubAck at the same moment,
   so this is the save-to-PubAck time within microseconds (it leaves out the PubAck's trip
   back into the master, and adds this process's callback dispatch, both well under 1 ms).
   The CloudEvents `time` of the message is stamped by the master inside its write
   transaction (after the fence and revision queries), which splits each sample into
   "save -> commit start" (inotify, validation, first queries; a rename into place is
   handed out without the debounce, which only waits for files written in place) and
   "commit start -> on NATS" (writes, commit, the rows handed to the outbox relay, publish).
   Also reported: save -> the
   following `ttp.ruleset.revision`, which the relay publishes after marking the row
   published, and CPU per save of the master, PostgreSQL, NATS, this process and all other
   processes of the machine (a shared machine makes the figures noisy; this shows how much).
   Each save waits for the previous one's `ttp.ruleset.revision` plus 20 ms. Two series:
   the default debounce (10 ms) and `TTP_DEBOUNCE_MS=5` (same database and NATS, the master
   restarted), to show how much of the latency is debounce.
2. Startup reconcile of many new rules. Rules are generated from the starter pack (new
   rule_ids `BENCH-00000`..., file stem = rule_id, spread over the pack's 12 directories,
   varied name, description, rule_version and confidence, and every regex `pattern` and
   `in` list extended by a unique keyword, so no two rules are equal); inline tests are kept
   in 1 file in 100 only, because inline tests cost validation time. A sample of them is
   validated in this process first. The master then starts against an empty database and
   a fresh NATS. Reported: process start -> `/readyz` 200 (migrated, reconciled, all
   published), process start -> all `reloaded` messages present in TTP_RULES (stream
   message count polled; checked at the end by listing the stream's subjects), the phase
   breakdown from the master's JSON logs, the first message's CloudEvents time and the
   first/last message seen by a core subscription, CPU seconds of every process, and the
   master's peak RSS (`VmHWM`). Full run only: the master is then restarted over the same
   rules and database (nothing changed, as on every deploy), its time to ready is reported,
   and 50 saves of one generated rule are timed with all those rules loaded.
3. With `--profile` (py-spy: `.venv/bin/pip install py-spy`): one more debounce-5 series with
   py-spy attached to the master after it became ready, and one more cold reconcile
   (fresh database and NATS) with the master started under py-spy. CPU samples are
   summarised by phase and by function (samples of threads blocked in epoll or the thread
   pool's queue, which py-spy cannot tell from running ones here, are left out), and
   PostgreSQL logs every statement of those runs (`log_min_duration_statement = 0` on
   their databases) to count statements and server time per save and per rule. Sampling
   slows the master, so the profiled runs' timings are not the figures of sections 1-2.

PostgreSQL runs with fsync off (like the test servers) unless `--durable` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ctypes
import dataclasses
import functools
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Final, Self

import aiohttp
import nats
import nats.js.errors
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg

from ttp_core.contract import subjects
from ttp_core.rules.validator import RuleValidator, iter_rule_files
from ttp_master.settings import MasterSettings
from ttp_runtime.embedded import EmbeddedPostgres, free_port
from ttp_runtime.nats_roles import Role

# The roles-secured nats-server the tests use (the shipped accounts config), so the figures
# are those of the default deployment, not of an open server.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness.nats_roles import RoleNats, role_nats

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
STARTER_RULES: Final = REPO_ROOT / "rules"
BIN_DIR: Final = Path(sys.executable).parent  # not resolved: the virtualenv's bin/
MASTER_BIN: Final = BIN_DIR / "ttp-master"

TARGET_P99_MS: Final = 20.0
TARGET_READY_S: Final = 10.0
TARGET_PEAK_RSS_MIB: Final = 300.0
DEFAULT_DEBOUNCE_MS: Final[int] = MasterSettings.model_fields["debounce_ms"].default
FAST_DEBOUNCE_MS: Final = 5
EDIT_GAP_S: Final = 0.02
"""Pause between two saves once the previous one is fully published (nobody saves faster)."""
EDIT_TIMEOUT_S: Final = 10.0
READY_TIMEOUT_S: Final = 300.0
READY_POLL_S: Final = 0.025
"""Each probe costs the master CPU (aiohttp); 40 probes/s cost it about 1-2 %."""
STREAM_POLL_S: Final = 0.025
STOP_TIMEOUT_S: Final = 12.0
PROFILE_RATE_HZ: Final = 200
GEN_PREFIX: Final = "BENCH-"
SEED: Final = 20240611

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


PLACEMENT: Final = frozenset(
    {
        "TTP_NATS_URL", "TTP_NATS_USER", "TTP_NATS_PASSWORD", "TTP_NATS_INBOX_PREFIX",
        "TTP_DATABASE_URL", "TTP_RULES_DIR", "TTP_HTTP_HOST", "TTP_HTTP_PORT",
        "TTP_LOG_FORMAT", "TTP_WORKER_ID",
    }
)  # fmt: skip
"""Settings that say where a process finds its servers, who it is and where it listens
(and JSON logs, the default, named because the benchmark reads them): no tuning."""


class BenchError(RuntimeError):
    """The benchmark could not run (a server or the master failed)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How much work each section does; `--quick` trades precision for a run under 30 s."""

    edits: int
    warmup: int
    rules: int
    tests_every: int
    big_set_saves: int
    """Saves timed with the generated rule set loaded (the master restarted over it)."""

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(edits=30, warmup=3, rules=2_000, tests_every=100, big_set_saves=0)
        return cls(edits=200, warmup=5, rules=10_000, tests_every=100, big_set_saves=50)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def section(title: str) -> None:
    print()
    print(f"== {title} " + "=" * max(0, 92 - len(title)), flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def distribution(samples: Sequence[float]) -> dict[str, Any]:
    """Count, p50, p99 and max in ms of seconds (nearest-rank p99: of 100 samples the second
    worst, of 50 or fewer the worst); only the count when there is no sample."""
    if not samples:
        return {"requests": 0}
    return {
        "requests": len(samples),
        "p50_ms": ms(statistics.median(samples)),
        "p99_ms": ms(percentile(samples, 99)),
        "max_ms": ms(max(samples)),
    }


def parse_ts(value: str) -> float:
    """Epoch seconds of an ISO-8601 timestamp (`...Z` accepted, as the logs and events use)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def dump_yaml(doc: Mapping[str, Any]) -> bytes:
    """YAML text of a rule, with libyaml's emitter when PyYAML has it (5x faster)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(dict(doc), Dumper=dumper, sort_keys=False, allow_unicode=True, width=4096)
    return text.encode()


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is field 3, `state`)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _proc_stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def cpu_seconds(pid: int | None, *, tree: bool = False) -> float:
    """CPU seconds (user + system) of `pid`, all its threads; with `tree` also of its live
    descendants and of the children it already reaped (PostgreSQL backends)."""
    if pid is None:
        return 0.0
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of /proc/<pid>/stat.
    ticks = int(fields[11]) + int(fields[12])
    if tree:
        ticks += int(fields[13]) + int(fields[14])
        for child in _descendants(pid):
            if (sub := _proc_stat(child)) is not None:
                ticks += int(sub[11]) + int(sub[12])
    return ticks / _CLK_TCK


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine spent busy (/proc/stat, every CPU)."""
    with Path("/proc/stat").open(encoding="ascii") as handle:
        fields = handle.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def own_cpu_seconds() -> float:
    """CPU seconds of this benchmark process (all threads)."""
    return time.process_time()


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size of `pid` in KiB (`VmHWM`), None once it exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to SIGTERM the child when this process dies (SIGKILL of
    the benchmark must not leave a master running)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


# --------------------------------------------------------------------------------------------
# The master as a process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StopResult:
    exit_code: int | None
    seconds: float


class ServiceProcess:
    """One console-script process of this environment (`ttp-master`, `ttp-worker`,
    `ttp-console`) with JSON logs in a file and an HTTP port of its own; optionally under
    py-spy."""

    kind: ClassVar[str] = "service"
    """Names the process in `BenchError` messages."""
    ready_timeout_s: ClassVar[float] = READY_TIMEOUT_S
    ready_poll_s: ClassVar[float] = READY_POLL_S
    tail_lines: ClassVar[int] = 30
    stop_timeout_s: ClassVar[float] = STOP_TIMEOUT_S
    """How long a SIGTERM is given before SIGKILL."""

    def __init__(
        self,
        binary: Path,
        label: str,
        log_path: Path,
        env: Mapping[str, str],
        *,
        profile_to: Path | None = None,
    ) -> None:
        """`env` (NATS, database, tuning) goes beside the HTTP and log settings."""
        self.binary = binary
        self.label = label
        self.http_port = free_port()
        self.log_path = log_path
        self.profile_to = profile_to
        base = {k: v for k, v in os.environ.items() if not k.startswith("TTP_")}
        self.env = {
            **base,
            **env,
            "TTP_HTTP_HOST": "127.0.0.1",
            "TTP_HTTP_PORT": str(self.http_port),
            "TTP_LOG_FORMAT": "json",
        }
        self._popen: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self.started_wall = 0.0
        self.started = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Self:
        command = [str(self.binary)]
        if self.profile_to is not None:
            command = [
                str(py_spy_binary()),
                "record",
                "--format",
                "raw",
                "--nolineno",
                "--rate",
                str(PROFILE_RATE_HZ),
                "--output",
                str(self.profile_to),
                "--",
                *command,
            ]
        with self.log_path.open("wb") as log:
            self.started_wall = time.time()
            self.started = time.perf_counter()
            self._popen = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 (no threads started yet)
            )
        return self

    @property
    def pid(self) -> int | None:
        """PID of the process itself (under py-spy: py-spy's child, once it exists)."""
        if self._popen is None:
            return None
        if self.profile_to is None:
            return self._popen.pid
        if self._pid is None:
            found = _descendants(self._popen.pid)
            self._pid = found[0] if found else None
        return self._pid

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def tuning(self) -> dict[str, str]:
        """The `TTP_*` settings of the process other than addresses, credentials, ports and
        names: what it runs with that differs from the defaults."""
        return {k: v for k, v in self.env.items() if k.startswith("TTP_") and k not in PLACEMENT}

    async def _ready_at(self, session: aiohttp.ClientSession) -> float:
        """perf_counter of the first `/readyz` 200."""
        deadline = self.started + self.ready_timeout_s
        timeout = aiohttp.ClientTimeout(total=2.0)
        while time.perf_counter() < deadline:
            if not self.alive():
                raise BenchError(f"{self.kind} {self.label} exited early:\n{self.log_tail()}")
            try:
                async with session.get(f"{self.url}/readyz", timeout=timeout) as response:
                    if response.status == 200:
                        return time.perf_counter()
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet
            await asyncio.sleep(self.ready_poll_s)
        raise BenchError(f"{self.kind} {self.label} not ready within {self.ready_timeout_s:.0f} s")

    def _terminate(self) -> tuple[int | None, float, int | None]:
        """SIGTERM (the process's own graceful stop), SIGKILL after `stop_timeout_s`:
        (exit code of the direct child, seconds, PID signalled)."""
        popen = self._popen
        if popen is None:
            return None, 0.0, None
        started = time.perf_counter()
        target = self.pid if self.profile_to is not None else popen.pid
        if popen.poll() is None and target is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGTERM)
        try:
            popen.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            if target is not None and target != popen.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
            popen.kill()
            popen.wait()
        self._popen = None
        return popen.returncode, time.perf_counter() - started, target

    def log_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return records
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def log_tail(self, lines: int | None = None) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        count = self.tail_lines if lines is None else lines
        return "\n".join(line[:400] for line in text.splitlines()[-count:])

    def problems(self) -> list[str]:
        """WARNING and worse log messages (rejected rules, relay retries...)."""
        return [
            f"{r.get('level')}: {str(r.get('message'))[:200]}"
            for r in self.log_records()
            if r.get("level") in ("WARNING", "ERROR", "CRITICAL")
        ]


class MasterProcess(ServiceProcess):
    """One `ttp-master` process with JSON logs in a file; optionally under py-spy."""

    kind: ClassVar[str] = "master"

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        workdir: Path,
        *,
        profile_to: Path | None = None,
    ) -> None:
        super().__init__(
            MASTER_BIN, name, workdir / f"master-{name}.log", env, profile_to=profile_to
        )
        self.name = name

    async def wait_ready(self, session: aiohttp.ClientSession) -> float:
        """Seconds from process start to the first `/readyz` 200."""
        return await self._ready_at(session) - self.started

    def stop(self) -> StopResult:
        """SIGTERM (the master's own graceful stop), SIGKILL after `STOP_TIMEOUT_S`."""
        code, seconds, _target = self._terminate()
        return StopResult(code, seconds)

    def first_log_at(self, message: str, **match: Any) -> float | None:
        """Seconds from process start to the first log record with this message."""
        for record in self.log_records():
            if record.get("message") == message and all(
                record.get(k) == v for k, v in match.items()
            ):
                return parse_ts(str(record["ts"])) - self.started_wall
        return None


class AttachedProfiler:
    """py-spy attached to a running process until `stop` (SIGINT makes it write the file)."""

    def __init__(self, pid: int, output: Path, workdir: Path) -> None:
        self.output = output
        self._log = (workdir / f"{output.name}.log").open("wb")
        self._popen: subprocess.Popen[bytes] | None = subprocess.Popen(
            [
                str(py_spy_binary()),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--nolineno",
                "--rate",
                str(PROFILE_RATE_HZ),
                "--output",
                str(output),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.3)  # py-spy needs a moment to attach and start sampling

    def stop(self) -> None:
        popen = self._popen
        if popen is None:
            return
        self._popen = None
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(10.0)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        self._log.close()


def master_env(
    bus: RoleNats, database_url: str, rules_dir: Path, debounce_ms: int = DEFAULT_DEBOUNCE_MS
) -> dict[str, str]:
    """The master's environment: logged in as the master role, every setting at its default
    but `debounce_ms` when a series varies it on purpose."""
    env = {
        **bus.env("master"),
        "TTP_DATABASE_URL": database_url,
        "TTP_RULES_DIR": str(rules_dir),
    }
    if debounce_ms != DEFAULT_DEBOUNCE_MS:
        env["TTP_DEBOUNCE_MS"] = str(debounce_ms)
    return env


# --------------------------------------------------------------------------------------------
# NATS as deployed: the shipped accounts config, one role per process
# --------------------------------------------------------------------------------------------

MASTER_BENCH_ROLES: Final[Mapping[str, Role]] = {
    "ttp-master": "master",
    "this benchmark's subscriptions and stream usage": "consumer",
}


def roles_note(roles: Mapping[str, Role]) -> str:
    """The line saying who logs in as which role."""
    who = "; ".join(f"{what} as {role}" for what, role in roles.items())
    return f"NATS runs the shipped accounts config (ttp_runtime/nats_accounts.conf); {who}"


def start_nats(directory: Path, cleanup: contextlib.ExitStack) -> RoleNats:
    """A JetStream nats-server with the shipped accounts config and fresh passwords (the
    tests' `role_nats`); `cleanup` stops it."""
    return cleanup.enter_context(role_nats(directory))


async def connect_as(bus: RoleNats, role: Role, name: str) -> Client:
    """A client of this benchmark logged in as `role`; the server's refusals are printed
    (they also show in its log, see :func:`report_violations`)."""

    async def on_error(exc: Exception) -> None:
        print(f"NATS error on the benchmark's {role} connection {name}: {exc}", flush=True)

    return await bus.connect(role, name=name, max_reconnect_attempts=-1, error_cb=on_error)


def report_violations(bus: RoleNats, label: str) -> list[str]:
    """Print the server log's permission violations (a process or this benchmark lacked a
    grant: the figures then measure a failure, not the product); the lines."""
    lines = bus.violations()
    if lines:
        print(f"NATS ({label}) refused {len(lines)} publish/subscribe(s); first ones:")
        for line in lines[:10]:
            print(f"  {line[:300]}")
    else:
        print(f"NATS ({label}): no permission violations in the server log")
    return lines


def tuning_note(processes: Mapping[str, Mapping[str, str]]) -> str:
    """One line naming the settings each kind of process runs with that are not defaults."""
    parts = []
    for kind, tuning in processes.items():
        shown = ", ".join(f"{k}={v}" for k, v in sorted(tuning.items())) or "none"
        parts.append(f"{kind}: {shown}")
    return "settings differing from the defaults: " + "; ".join(parts)


def py_spy_binary() -> Path:
    candidate = BIN_DIR / "py-spy"
    if candidate.is_file():
        return candidate
    found = shutil.which("py-spy")
    if found is None:
        raise BenchError("py-spy not found: .venv/bin/pip install py-spy")
    return Path(found)


# --------------------------------------------------------------------------------------------
# 1. Save-to-PubAck latency
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    """perf_counter when the subscription callback ran."""
    revision: int
    event_time: float
    """Epoch seconds of the CloudEvents `time` (the master's transaction start)."""


@dataclass(slots=True)
class EditSample:
    save_to_msg: float
    save_to_commit: float
    commit_to_msg: float
    save_to_ruleset: float | None


@dataclass(slots=True)
class Subscriber:
    """Core NATS subscriptions on one rule's subject and on the ruleset revision."""

    waiting: dict[str, asyncio.Future[Arrival]] = field(default_factory=dict)
    ruleset_seen: list[tuple[int, float]] = field(default_factory=list)
    ruleset_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_reloaded(self, msg: Msg) -> None:
        at = time.perf_counter()
        event = json.loads(msg.data)
        data = event["data"]
        future = self.waiting.pop(str(data.get("content_sha256")), None)
        if future is not None and not future.done():
            future.set_result(Arrival(at, int(data["revision"]), parse_ts(event["time"])))

    async def on_ruleset(self, msg: Msg) -> None:
        at = time.perf_counter()
        revision = int(json.loads(msg.data)["data"]["revision"])
        self.ruleset_seen.append((revision, at))
        self.ruleset_event.set()

    async def ruleset_at_least(self, revision: int, timeout: float) -> float | None:
        deadline = time.perf_counter() + timeout
        while True:
            for seen, at in self.ruleset_seen:
                if seen >= revision:
                    return at
            self.ruleset_event.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ruleset_event.wait(), left)


class RuleEditor:
    """Saves new versions of one rule file the way an editor does."""

    def __init__(self, path: Path, rel: str) -> None:
        self.path = path
        self.rel = rel
        self.temp = path.with_name(f".{path.name}.bench-swp")  # hidden: not a rule file
        self.original: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.validator = RuleValidator()
        self.validate_ms: list[float] = []

    def version(self, n: int) -> tuple[bytes, str]:
        """The bytes of edit number `n` and the content hash the master must publish."""
        doc = copy.deepcopy(self.original)
        doc["description"] = f"{doc.get('description', '')} [bench edit {n}]".strip()
        for emit in doc["emits"]:
            emit["confidence"] = round(0.50 + (n % 45) / 100, 2)
        raw = dump_yaml(doc)
        started = time.perf_counter()
        report = self.validator.validate_bytes(raw, self.rel, stem=self.path.stem)
        self.validate_ms.append((time.perf_counter() - started) * 1000)
        if not report.ok or report.content_sha256 is None:
            raise BenchError(f"edited rule is invalid: {report.errors}")
        return raw, report.content_sha256

    def save(self, raw: bytes) -> float:
        """Write the temporary file, then rename it over the rule; perf_counter before it."""
        self.temp.write_bytes(raw)
        started = time.perf_counter()
        os.replace(self.temp, self.path)
        return started


@dataclass(slots=True)
class SeriesResult:
    debounce_ms: int
    samples: list[EditSample]
    lost: int
    ready_s: float
    stop: StopResult
    problems: list[str]
    cpu_ms_per_save: dict[str, float]
    window: tuple[float, float]
    """Epoch seconds of the first counted save and of the end of the last one."""
    validate_ms: list[float]
    """The same validation in this process, per save: a reference for the master's share."""
    peak_rss_mib: float | None
    tuning: dict[str, str]
    """The master's settings that are not defaults."""

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "debounce_ms": self.debounce_ms,
            "non_default_settings": self.tuning,
            "edits": len(self.samples),
            "lost": self.lost,
            "master_ready_s": round(self.ready_s, 3),
            "master_exit_code": self.stop.exit_code,
            "master_stop_s": round(self.stop.seconds, 3),
            "cpu_ms_per_save": self.cpu_ms_per_save,
            "peak_rss_mib": self.peak_rss_mib,
        }
        if self.validate_ms:
            out["validate_in_bench_median_ms"] = round(statistics.median(self.validate_ms), 3)
        if not self.samples:
            return out
        total = [s.save_to_msg for s in self.samples]
        out |= {
            "min_ms": ms(min(total)),
            "median_ms": ms(statistics.median(total)),
            "p90_ms": ms(percentile(total, 90)),
            "p99_ms": ms(percentile(total, 99)),
            "max_ms": ms(max(total)),
            "save_to_commit_start_median_ms": ms(
                statistics.median(s.save_to_commit for s in self.samples)
            ),
            "save_to_commit_start_p99_ms": ms(
                percentile([s.save_to_commit for s in self.samples], 99)
            ),
            "commit_start_to_nats_median_ms": ms(
                statistics.median(s.commit_to_msg for s in self.samples)
            ),
            "commit_start_to_nats_p99_ms": ms(
                percentile([s.commit_to_msg for s in self.samples], 99)
            ),
        }
        rulesets = [s.save_to_ruleset for s in self.samples if s.save_to_ruleset is not None]
        if rulesets:
            out["save_to_ruleset_revision_median_ms"] = ms(statistics.median(rulesets))
            out["save_to_ruleset_revision_p99_ms"] = ms(percentile(rulesets, 99))
        p99 = out["p99_ms"]
        out["target"] = {"p99_ms_below": TARGET_P99_MS, "pass": p99 < TARGET_P99_MS}
        return out


async def latency_series(
    *,
    bus: RoleNats,
    database_url: str,
    rules_dir: Path,
    target: Path,
    debounce_ms: int,
    edits: int,
    warmup: int,
    first_edit: int,
    workdir: Path,
    session: aiohttp.ClientSession,
    cleanup: contextlib.ExitStack,
    server_pids: Mapping[str, int | None],
    profile_to: Path | None = None,
) -> SeriesResult:
    master = MasterProcess(
        f"latency-{debounce_ms}ms" + ("-profiled" if profile_to is not None else ""),
        master_env(bus, database_url, rules_dir, debounce_ms),
        workdir,
    )
    master.start()
    cleanup.callback(master.stop)
    ready_s = await master.wait_ready(session)
    profiler: AttachedProfiler | None = None
    if profile_to is not None and master.pid is not None:
        # Attached only now: the profile shows the saves, not the start-up.
        profiler = AttachedProfiler(master.pid, profile_to, workdir)
        cleanup.callback(profiler.stop)
    rel = target.relative_to(rules_dir).as_posix()
    editor = RuleEditor(target, rel)
    subscriber = Subscriber()
    nc = await connect_as(bus, "consumer", "bench-master-latency")
    samples: list[EditSample] = []
    lost = 0
    try:
        await nc.subscribe(subjects.rule_reloaded(target.stem), cb=subscriber.on_reloaded)
        await nc.subscribe(subjects.RULESET_REVISION, cb=subscriber.on_ruleset)
        await nc.flush()
        loop = asyncio.get_running_loop()
        cpu_before: dict[str, float] = {}
        window_start = window_end = time.time()
        for n in range(first_edit, first_edit + warmup + edits):
            if n == first_edit + warmup:
                cpu_before = _cpu_snapshot(master.pid, server_pids)
                window_start = time.time()
            raw, sha = editor.version(n)
            future: asyncio.Future[Arrival] = loop.create_future()
            subscriber.waiting[sha] = future
            saved_at = editor.save(raw)
            saved_wall = time.time() - (time.perf_counter() - saved_at)
            try:
                arrival = await asyncio.wait_for(future, EDIT_TIMEOUT_S)
            except TimeoutError:
                subscriber.waiting.pop(sha, None)
                lost += 1
                continue
            ruleset_at = await subscriber.ruleset_at_least(arrival.revision, EDIT_TIMEOUT_S)
            if n >= first_edit + warmup:
                samples.append(
                    EditSample(
                        save_to_msg=arrival.at - saved_at,
                        save_to_commit=arrival.event_time - saved_wall,
                        commit_to_msg=(arrival.at - saved_at) - (arrival.event_time - saved_wall),
                        save_to_ruleset=None if ruleset_at is None else ruleset_at - saved_at,
                    )
                )
            await asyncio.sleep(EDIT_GAP_S)
        cpu_after = _cpu_snapshot(master.pid, server_pids)
        window_end = time.time()
    finally:
        await nc.drain()
        if profiler is not None:
            profiler.stop()
    # CPU of the three processes divided by the saves: includes their idle housekeeping
    # (periodic checks, pings) over the run, which is small next to a save's work.
    cpu_ms = {
        k: round((cpu_after[k] - cpu_before.get(k, 0.0)) * 1000 / max(1, edits), 2)
        for k in cpu_after
    }
    problems = master.problems()
    hwm = vm_hwm_kib(master.pid) if master.pid is not None else None
    stop = master.stop()
    return SeriesResult(
        debounce_ms,
        samples,
        lost,
        ready_s,
        stop,
        problems,
        cpu_ms,
        (window_start, window_end),
        editor.validate_ms[warmup:],
        None if hwm is None else round(hwm / 1024, 1),
        master.tuning,
    )


def _cpu_snapshot(
    master_pid: int | None, server_pids: Mapping[str, int | None]
) -> dict[str, float]:
    """CPU seconds so far of the master, the servers, this benchmark, and everything else
    on the machine (other users' work makes the figures noisy: it is reported)."""
    snapshot = {"master": cpu_seconds(master_pid)}
    snapshot |= {k: cpu_seconds(pid, tree=True) for k, pid in server_pids.items()}
    snapshot["benchmark"] = own_cpu_seconds()
    snapshot["other_processes"] = busy_cpu_seconds() - sum(snapshot.values())
    return snapshot


def print_series(result: SeriesResult, *, target: bool = True) -> None:
    f = result.figures()
    print(
        f"debounce {result.debounce_ms} ms: {f['edits']} saves ({f['lost']} lost), "
        f"master ready in {f['master_ready_s']:.2f} s"
    )
    print(f"  {tuning_note({'master': result.tuning})}")
    if not result.samples:
        print("  no samples")
        return
    print(
        f"  save -> reloaded on NATS (~PubAck): median {f['median_ms']:.1f} ms, "
        f"p90 {f['p90_ms']:.1f}, p99 {f['p99_ms']:.1f}, min {f['min_ms']:.1f}, "
        f"max {f['max_ms']:.1f}"
    )
    print(
        f"  of which save -> commit start (inotify, debounce of writes, validate): median "
        f"{f['save_to_commit_start_median_ms']:.1f} ms (p99 "
        f"{f['save_to_commit_start_p99_ms']:.1f}); commit start -> on NATS (commit, hand-over "
        f"to the relay, publish): median {f['commit_start_to_nats_median_ms']:.1f} ms (p99 "
        f"{f['commit_start_to_nats_p99_ms']:.1f})"
    )
    if "save_to_ruleset_revision_median_ms" in f:
        print(
            f"  save -> ttp.ruleset.revision (after mark-published): median "
            f"{f['save_to_ruleset_revision_median_ms']:.1f} ms, p99 "
            f"{f['save_to_ruleset_revision_p99_ms']:.1f} ms"
        )
    cpu = ", ".join(f"{k} {v:.2f} ms" for k, v in result.cpu_ms_per_save.items())
    print(f"  CPU per save: {cpu}")
    if "validate_in_bench_median_ms" in f:
        print(
            f"  (validating the saved file takes {f['validate_in_bench_median_ms']:.2f} ms"
            " (median) in this process)"
        )
    print(f"  master stop (SIGTERM): exit {f['master_exit_code']} after {f['master_stop_s']:.2f} s")
    for line in result.problems[:5]:
        print(f"  master log: {line}")
    if not target:
        return
    print(
        f"{verdict(f['target']['pass'])}  p99 < {TARGET_P99_MS:.0f} ms with debounce "
        f"{result.debounce_ms} ms: {f['p99_ms']:.1f} ms"
    )


# --------------------------------------------------------------------------------------------
# 2. Rule generation
# --------------------------------------------------------------------------------------------

_WORDS: Final = (
    "kestrel", "obsidian", "lantern", "quartz", "harbor", "juniper", "cobalt", "meadow",
    "falcon", "ember", "glacier", "saffron", "tundra", "vortex", "willow", "zephyr",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Template:
    category: str
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GeneratedSet:
    root: Path
    count: int
    with_tests: int
    directories: int
    bytes: int
    seconds: float


def load_templates(rules_dir: Path) -> list[Template]:
    templates: list[Template] = []
    for path in iter_rule_files(rules_dir):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict):
            category = path.parent.name if path.parent != rules_dir else "misc"
            templates.append(Template(category, doc))
    if not templates:
        raise BenchError(f"no starter rules under {rules_dir}")
    return templates


def _vary_match(node: Any, keyword: str) -> Any:
    """The match tree with a unique keyword added as an alternative to every regex and `in`
    list. Only alternatives are added, so inline tests keep their outcome: `fire` examples
    still fire, and no `no_fire` example contains the keyword."""
    if isinstance(node, list):
        return [_vary_match(item, keyword) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _vary_match(value, keyword) for key, value in node.items()}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = f"{out['pattern']}|{keyword}"
    values = out.get("in")
    if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        out["in"] = [*values, keyword]
    return out


def generate_rules(
    templates: Sequence[Template], root: Path, count: int, tests_every: int, seed: int
) -> GeneratedSet:
    started = time.perf_counter()
    rng = random.Random(seed)
    directories: set[Path] = set()
    with_tests = 0
    size = 0
    for i in range(count):
        template = templates[i % len(templates)]
        doc = copy.deepcopy(template.doc)
        rule_id = f"{GEN_PREFIX}{i:05d}"
        word = rng.choice(_WORDS)
        keyword = f"{word}{i:05d}x{rng.randrange(36**4):04x}"
        doc["rule_id"] = rule_id
        doc["rule_version"] = rng.randint(1, 3)
        doc["name"] = f"{doc.get('name', 'rule')}_{word}_{i}"
        doc["description"] = f"{doc.get('description', '')} Bench variant {i} ({word}).".strip()
        doc["match"] = _vary_match(doc.get("match"), keyword)
        for emit in doc.get("emits", []):
            emit["confidence"] = round(rng.uniform(0.30, 0.95), 2)
        if i % tests_every == 0 and doc.get("tests"):
            with_tests += 1
        else:
            doc.pop("tests", None)
        directory = root / template.category
        if directory not in directories:
            directory.mkdir(parents=True, exist_ok=True)
            directories.add(directory)
        raw = dump_yaml(doc)
        (directory / f"{rule_id}.yaml").write_bytes(raw)
        size += len(raw)
    return GeneratedSet(
        root, count, with_tests, len(directories), size, time.perf_counter() - started
    )


def precheck(generated: GeneratedSet, templates: int, tests_every: int) -> None:
    """Validate one rule per template and every rule with tests, in this process: a rejected
    file would make the master's figures meaningless."""
    validator = RuleValidator()
    wanted = {f"{GEN_PREFIX}{i:05d}" for i in range(min(templates, generated.count))}
    wanted |= {f"{GEN_PREFIX}{i:05d}" for i in range(0, generated.count, tests_every)}
    checked = 0
    for path in iter_rule_files(generated.root):
        if path.stem not in wanted:
            continue
        report = validator.validate_file(path, path.relative_to(generated.root).as_posix())
        checked += 1
        if not report.ok:
            raise BenchError(f"generated rule {path} is invalid: {report.errors}")
    if checked != len(wanted):
        raise BenchError(f"pre-check found {checked} of {len(wanted)} generated rules")


# --------------------------------------------------------------------------------------------
# 2. Startup reconcile
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReloadedCounter:
    """Core subscription on every `ttp.rule.reloaded.*`: first and last arrival, ids."""

    ids: set[str] = field(default_factory=set)
    first_at: float | None = None
    last_at: float | None = None
    first_event_time: float | None = None

    async def on_msg(self, msg: Msg) -> None:
        at = time.perf_counter()
        if self.first_at is None:
            self.first_at = at
            self.first_event_time = parse_ts(json.loads(msg.data)["time"])
        self.last_at = at
        self.ids.add(subjects.last_token(msg.subject))


async def wait_stream_holds(nc: Client, wanted: int, started: float, stop: asyncio.Event) -> float:
    """Seconds from `started` until TTP_RULES holds `wanted` `reloaded` subjects.

    With one message per subject, the stream holds the `reloaded` subjects plus the one
    `ttp.ruleset.revision` (published after each relay batch, so present from the first
    batch on): `messages >= wanted + 1` means every rule's message is stored."""
    js = nc.jetstream()
    while not stop.is_set():
        with contextlib.suppress(nats.js.errors.NotFoundError, nats.errors.TimeoutError):
            info = await js.stream_info(subjects.STREAM_RULES)
            if info.state.messages >= wanted + 1:
                return time.perf_counter() - started
        await asyncio.sleep(STREAM_POLL_S)
    return float("nan")


async def count_reloaded_subjects(nc: Client) -> int:
    js = nc.jetstream()
    info = await js.stream_info(
        subjects.STREAM_RULES, subjects_filter=subjects.wildcard(subjects.RULE_RELOADED_PREFIX)
    )
    return len(info.state.subjects or {})


@dataclass(slots=True)
class ReconcileResult:
    rules: int
    ready_s: float
    all_present_s: float
    subscriber_ids: int
    stream_subjects: int
    first_msg_s: float | None
    last_msg_s: float | None
    phases: dict[str, float | None]
    cpu_s: dict[str, float]
    peak_rss_mib: float | None
    stop: StopResult
    problems: list[str]
    window: tuple[float, float]
    """Epoch seconds of the process start and of readiness."""
    tuning: dict[str, str]
    """The master's settings that are not defaults."""


async def reconcile_run(
    *,
    name: str,
    bus: RoleNats,
    database_url: str,
    rules_dir: Path,
    expected: int,
    workdir: Path,
    session: aiohttp.ClientSession,
    cleanup: contextlib.ExitStack,
    server_pids: Mapping[str, int | None],
    profile_to: Path | None = None,
) -> ReconcileResult:
    """Start a master over `rules_dir` and time it until ready and all published."""
    counter = ReloadedCounter()
    nc = await connect_as(bus, "consumer", f"bench-master-{name}")
    try:
        await nc.subscribe(
            subjects.wildcard(subjects.RULE_RELOADED_PREFIX),
            cb=counter.on_msg,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await nc.flush()
        cpu_before = _cpu_snapshot(None, server_pids)
        master = MasterProcess(
            name,
            master_env(bus, database_url, rules_dir),
            workdir,
            profile_to=profile_to,
        )
        master.start()
        cleanup.callback(master.stop)
        stop_polling = asyncio.Event()
        present_task = asyncio.create_task(
            wait_stream_holds(nc, expected, master.started, stop_polling)
        )
        try:
            ready_s = await master.wait_ready(session)
            all_present_s = await asyncio.wait_for(asyncio.shield(present_task), 30.0)
        finally:
            stop_polling.set()
            await present_task
        pid = master.pid
        cpu_after = _cpu_snapshot(pid, server_pids)
        window = (master.started_wall, time.time())
        cpu = {k: v - cpu_before[k] for k, v in cpu_after.items()}
        cpu["wall_window"] = time.perf_counter() - master.started
        hwm = vm_hwm_kib(pid) if pid is not None else None
        # Messages still in flight to our subscription (published before ready) land now.
        await nc.flush()
        await asyncio.sleep(0.2)
        stream_subjects = await count_reloaded_subjects(nc)
    finally:
        await nc.drain()
    started_wall = master.started_wall
    phases: dict[str, float | None] = {
        "first_log_line": _first_record_at(master),
        "master_started": master.first_log_at("master started"),
        "leader_lock_acquired": master.first_log_at("leader lock acquired"),
        "first_commit_started": (
            None if counter.first_event_time is None else counter.first_event_time - started_wall
        ),
        "rules_synced": master.first_log_at("rules synced", reason="startup"),
        "first_reloaded_received": (
            None if counter.first_at is None else counter.first_at - master.started
        ),
        "last_reloaded_received": (
            None if counter.last_at is None else counter.last_at - master.started
        ),
        "caught_up": master.first_log_at("master is leader and caught up"),
        "readyz_200": ready_s,
    }
    problems = master.problems()
    stop = master.stop()
    return ReconcileResult(
        rules=expected,
        ready_s=ready_s,
        all_present_s=all_present_s,
        subscriber_ids=len(counter.ids),
        stream_subjects=stream_subjects,
        first_msg_s=phases["first_reloaded_received"],
        last_msg_s=phases["last_reloaded_received"],
        phases=phases,
        cpu_s={k: round(v, 2) for k, v in cpu.items()},
        peak_rss_mib=None if hwm is None else round(hwm / 1024, 1),
        stop=stop,
        problems=problems,
        window=window,
        tuning=master.tuning,
    )


def _first_record_at(master: MasterProcess) -> float | None:
    records = master.log_records()
    if not records:
        return None
    return parse_ts(str(records[0]["ts"])) - master.started_wall


_PHASE_LABELS: Final = (
    ("first_log_line", "interpreter start + imports (first log line)"),
    ("master_started", "migrations + NATS connect + health server"),
    ("leader_lock_acquired", "leader lock"),
    ("first_commit_started", "streams + catalog + watcher + validate all files"),
    ("rules_synced", "one DB transaction: upserts + outbox rows"),
    ("first_reloaded_received", "stream repair check + relay's first publish"),
    ("last_reloaded_received", "relay publishes every rule"),
    ("caught_up", "last ruleset summary + mark published"),
    ("readyz_200", "probe sees ready"),
)


def print_reconcile(title: str, result: ReconcileResult, target: bool) -> None:
    per_rule_ms = None
    if result.first_msg_s is not None and result.last_msg_s is not None and result.rules:
        per_rule_ms = (result.last_msg_s - result.first_msg_s) / result.rules * 1000
    print(
        f"{title}: {result.rules:,} rules; ready (/readyz 200) after {result.ready_s:.2f} s; "
        f"all reloaded in TTP_RULES after {result.all_present_s:.2f} s"
    )
    print(f"  {tuning_note({'master': result.tuning})}")
    print(
        f"  TTP_RULES holds {result.stream_subjects:,} reloaded subjects; the subscriber "
        f"saw {result.subscriber_ids:,} rule ids"
    )
    print("  phases (seconds since process start, from the master's JSON logs):")
    previous = 0.0
    for key, label in _PHASE_LABELS:
        value = result.phases.get(key)
        if value is None:
            print(f"    {'-':>7}          {label}: not seen")
            continue
        print(f"    {value:7.2f} (+{value - previous:5.2f})  {label}")
        previous = value
    if per_rule_ms is not None:
        print(
            f"  relay: {per_rule_ms:.3f} ms per published rule "
            f"({1000 / per_rule_ms if per_rule_ms else 0:,.0f} msg/s)"
        )
    window = result.cpu_s.get("wall_window", 0.0)
    cpu = ", ".join(f"{k} {v:.1f} s" for k, v in result.cpu_s.items() if k != "wall_window")
    print(f"  CPU seconds from start to ready ({window:.1f} s wall x {os.cpu_count()} CPUs): {cpu}")
    if result.peak_rss_mib is not None:
        print(f"  master peak RSS (VmHWM): {result.peak_rss_mib:.0f} MiB")
    print(
        f"  master stop (SIGTERM): exit {result.stop.exit_code} after {result.stop.seconds:.2f} s"
    )
    shown = [p for p in result.problems if "rule file rejected" not in p][:5]
    rejected = sum(1 for p in result.problems if "rule file rejected" in p)
    if rejected:
        print(f"  master log: {rejected} rejected-rule warnings")
    for line in shown:
        print(f"  master log: {line}")
    if target:
        print(
            f"{verdict(result.ready_s < TARGET_READY_S)}  {result.rules:,} new rules ready in "
            f"< {TARGET_READY_S:.0f} s: {result.ready_s:.2f} s"
        )
        if result.peak_rss_mib is not None:
            print(
                f"{verdict(result.peak_rss_mib <= TARGET_PEAK_RSS_MIB)}  master peak RSS <= "
                f"{TARGET_PEAK_RSS_MIB:.0f} MiB: {result.peak_rss_mib:.0f} MiB"
            )


def reconcile_figures(result: ReconcileResult) -> dict[str, Any]:
    return {
        "rules": result.rules,
        "ready_s": round(result.ready_s, 3),
        "all_present_s": round(result.all_present_s, 3),
        "stream_reloaded_subjects": result.stream_subjects,
        "subscriber_rule_ids": result.subscriber_ids,
        "phases_s": {k: None if v is None else round(v, 3) for k, v in result.phases.items()},
        "cpu_s": result.cpu_s,
        "peak_rss_mib": result.peak_rss_mib,
        "master_exit_code": result.stop.exit_code,
        "master_stop_s": round(result.stop.seconds, 3),
        "warnings_logged": len(result.problems),
        "non_default_settings": result.tuning,
    }


# --------------------------------------------------------------------------------------------
# 3. Profile summary (py-spy raw/collapsed stacks)
# --------------------------------------------------------------------------------------------

_FRAME: Final = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")

# (label, function, file suffix or None): a stack goes to the first bucket one of whose
# frames matches (function name, qualified or not), so the more specific buckets come first.
_BUCKETS: Final = (
    ("validate: inline tests (_Check._inline_tests)", "_inline_tests", "validator.py"),
    ("validate: compile (compile_rule, RE2)", "compile_rule", "compiler.py"),
    ("validate: YAML parse (parse_document)", "parse_document", "yaml_source.py"),
    ("validate: rest (schema, ATT&CK, hash)", "validate_bytes", "validator.py"),
    ("validate: read file", "validate_file", "validator.py"),
    ("sync planning, excl. validation (RuleSync._plan)", "_plan", "rule_sync.py"),
    ("DB: one upsert statement per rule (_upsert_rule)", "_upsert_rule", "repository.py"),
    ("DB: outbox rows (envelope, model_dump)", "_outbox_row", "repository.py"),
    ("DB: rest of apply (fence, nextval, outbox insert)", "apply", "repository.py"),
    ("relay: ruleset summary (ruleset_summary)", "ruleset_summary", None),
    ("relay: mark published (_mark_published)", "_mark_published", None),
    ("relay: publish_js (await each PubAck)", "publish_js", None),
    ("relay: tracing span per message", "start_consumer_span", None),
    ("relay: rest of publish_pending (select, JSON)", "publish_pending", None),
    ("relay: LISTEN/NOTIFY", "_listen", "outbox_relay.py"),
    (
        "DB: SQLAlchemy execute in greenlet stacks (caller not visible)",
        "_execute_clauseelement",
        None,
    ),
    ("NATS client socket writes (_flusher)", "_flusher", "nats/aio/client.py"),
    ("watcher (inotify, batches)", "_read_events", "watcher.py"),
    ("watcher (inotify, batches)", "batches", "watcher.py"),
    ("stream guard (repair, periodic check)", "repair", "stream_guard.py"),
    ("stream guard (repair, periodic check)", "_guard", "bootstrap.py"),
    ("load catalog", "load_catalog", None),
    ("migrations (upgrade_to_head)", "upgrade_to_head", None),
    ("logging", "emit", "logging/__init__.py"),
    ("imports", "_find_and_load", None),
    ("health server (aiohttp; the benchmark polls /readyz)", "_handle_request", None),
    ("health server (aiohttp; the benchmark polls /readyz)", "data_received", "web_protocol.py"),
    ("health server (aiohttp; the benchmark polls /readyz)", "_writelines", "http_writer.py"),
    ("event loop (selector bookkeeping)", "select", "selectors.py"),
)


# Leaf frames of threads that are blocked rather than running: py-spy's idle detection
# does not recognise these waits here (a C call under them holds no Python frame).
_IDLE_LEAVES: Final = frozenset({"_worker", "EpollSelector.select", "Condition.wait"})

# Frames every sample of the main thread passes through: no information in them.
_ENTRY_FRAMES: Final = frozenset(
    {"main", "_default", "run", "Master.run", "Master._lead", "<module>"}
)


def _matches(frames: Sequence[tuple[str, str]], func: str, suffix: str | None) -> bool:
    return any(
        (name == func or name.endswith("." + func)) and (suffix is None or path.endswith(suffix))
        for name, path in frames
    )


def _frames(stack: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        if match is not None:
            out.append((match["func"], match["file"]))
        else:
            out.append((frame, ""))
    return out


def summarise_profile(raw_path: Path, top: int = 15) -> dict[str, Any]:
    """Bucket py-spy's CPU samples by phase; top functions by self and inclusive samples."""
    buckets: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in raw_path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if frames and frames[-1][0] in _IDLE_LEAVES:
            idle += count
            continue
        total += count
        label = "other"
        for name, func, suffix in _BUCKETS:
            if _matches(frames, func, suffix):
                label = name
                break
        buckets[label] += count
        if frames:
            func, path = frames[-1]
            own[f"{func} ({_short(path)})"] += count
        for key in {
            f"{f} ({_short(p)})" for f, p in frames if "ttp_" in p and f not in _ENTRY_FRAMES
        }:
            inclusive[key] += count
    return {
        "samples": total,
        "idle_samples_excluded": idle,
        "rate_hz": PROFILE_RATE_HZ,
        "buckets": dict(buckets.most_common()),
        "top_self": dict(own.most_common(top)),
        "top_inclusive_project": dict(inclusive.most_common(top)),
    }


def _short(path: str) -> str:
    parts = Path(path).parts
    for anchor in ("site-packages", "shared", "services", "lib"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1 :])
    return "/".join(parts[-2:])


def print_profile(summary: Mapping[str, Any], per: int = 0, unit: str = "") -> None:
    """The summary; with `per`, bucket times are also shown in ms per `unit`."""
    total = max(1, int(summary["samples"]))
    rate = int(summary["rate_hz"])
    print(
        f"py-spy: {total:,} CPU samples at {rate} Hz (~{total / rate:.1f} CPU-s, all threads); "
        f"{summary['idle_samples_excluded']:,} samples of threads blocked in epoll or in the "
        "thread pool's queue excluded"
    )
    print("  by phase (share of the master's CPU samples):")
    for label, count in summary["buckets"].items():
        extra = f"  {count / rate * 1000 / per:6.2f} ms/{unit}" if per else ""
        print(f"    {count / total:6.1%}  {count / rate:6.2f} s{extra}  {label}")
    print("  top functions by own samples:")
    for label, count in summary["top_self"].items():
        print(f"    {count / total:6.1%}  {label}")
    print("  project functions by inclusive samples:")
    for label, count in summary["top_inclusive_project"].items():
        print(f"    {count / total:6.1%}  {label}")


# --------------------------------------------------------------------------------------------
# PostgreSQL statement log (profile runs only: logging every statement costs the server)
# --------------------------------------------------------------------------------------------

PG_SETTINGS: Final = {"log_line_prefix": "%n [%p] "}
"""Epoch timestamps in the server log, so its lines can be cut to a run's time window."""

_PG_DURATION: Final = re.compile(
    r"^(?P<ts>\d+\.\d+) \[\d+\] LOG:  duration: (?P<ms>[\d.]+) ms  "
    r"(?P<kind>statement|execute|parse|bind)[^:]*: (?P<sql>.*)$"
)


def log_all_statements(pg: EmbeddedPostgres, database: str) -> None:
    """Make new sessions of `database` log every statement with its duration."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET log_min_duration_statement = 0").format(
                sql.Identifier(database)
            )
        )


@dataclass(frozen=True, slots=True)
class StatementStats:
    statements: int
    """Simple-protocol statements plus extended-protocol executes."""
    server_ms: float
    """Server-side time of all of them, parse and bind steps included."""
    top: list[tuple[str, int, float]]
    """(statement text, count, server ms), most frequent first."""


def pg_statements(log_path: Path, window: tuple[float, float], top: int = 8) -> StatementStats:
    counts: Counter[str] = Counter()
    times: dict[str, float] = {}
    statements = 0
    server_ms = 0.0
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        match = _PG_DURATION.match(line)
        if match is None or not window[0] <= float(match["ts"]) <= window[1]:
            continue
        took = float(match["ms"])
        server_ms += took
        text = " ".join(match["sql"].split())[:90]
        times[text] = times.get(text, 0.0) + took
        if match["kind"] in ("statement", "execute"):
            statements += 1
            counts[text] += 1
    return StatementStats(
        statements,
        server_ms,
        [(text, count, times[text]) for text, count in counts.most_common(top)],
    )


def print_statements(stats: StatementStats, per: int, unit: str) -> None:
    per = max(1, per)
    print(
        f"  PostgreSQL statement log: {stats.statements / per:.1f} statements per {unit}, "
        f"server time {stats.server_ms / per:.2f} ms per {unit}; most frequent:"
    )
    for text, count, took in stats.top:
        print(f"    {count / per:7.2f}/{unit}  {took / per:6.3f} ms/{unit}  {text}")


def statement_figures(stats: StatementStats, per: int) -> dict[str, Any]:
    per = max(1, per)
    return {
        "statements_per_unit": round(stats.statements / per, 2),
        "server_ms_per_unit": round(stats.server_ms / per, 3),
        "top": [
            {"sql": text, "per_unit": round(count / per, 2), "ms_per_unit": round(took / per, 3)}
            for text, count, took in stats.top
        ],
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def run_all(
    args: argparse.Namespace,
    settings: Settings,
    cleanup: contextlib.ExitStack,
    workdir: Path,
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "bench": "master",
        "quick": args.quick,
        "machine": machine_figures(),
        "postgres_durable": args.durable,
        "nats_roles": MASTER_BENCH_ROLES,
    }
    section_s: dict[str, float] = {}
    violations: dict[str, list[str]] = {}
    print(roles_note(MASTER_BENCH_ROLES), flush=True)

    started = time.perf_counter()
    pg = EmbeddedPostgres(data_dir=workdir / "postgres", durable=args.durable, settings=PG_SETTINGS)
    cleanup.callback(pg.close)
    pg.start()
    print(f"PostgreSQL on port {pg.port} (fsync {'on' if args.durable else 'off'})", flush=True)
    section_s["postgres_start"] = round(time.perf_counter() - started, 2)

    async with aiohttp.ClientSession() as session:
        # ---------------------------------------------------------------- 1. latency
        profiled_series: SeriesResult | None = None
        latency_raw = workdir / "latency.pyspy.txt"
        if args.reconcile_only:
            print("(save latency: not measured with --reconcile-only)")
        else:
            section(f"1. save-to-PubAck latency ({settings.edits} saves per series)")
            started = time.perf_counter()
            rules_dir = workdir / "latency-rules"
            shutil.copytree(STARTER_RULES, rules_dir)
            candidates = list(iter_rule_files(rules_dir))
            target = next((p for p in candidates if p.stem == "R0010"), candidates[0])
            print(
                f"{len(candidates)} starter rules; editing {target.relative_to(rules_dir)} "
                f"(temp file + os.replace); {settings.warmup} warm-up saves not counted",
                flush=True,
            )
            nats_a = start_nats(workdir / "nats-latency", cleanup)
            pg.ensure_database("bench_latency")
            series: list[SeriesResult] = []
            first_edit = 0
            # Every latency series runs against the same servers, rules and edit target.
            series_on = functools.partial(
                latency_series,
                bus=nats_a,
                database_url=pg.url_for("bench_latency"),
                rules_dir=rules_dir,
                target=target,
                edits=settings.edits,
                warmup=settings.warmup,
                workdir=workdir,
                session=session,
                cleanup=cleanup,
                server_pids={"postgres": pg.pid, "nats": nats_a.server.pid},
            )
            for debounce in (DEFAULT_DEBOUNCE_MS, FAST_DEBOUNCE_MS):
                result = await series_on(debounce_ms=debounce, first_edit=first_edit)
                first_edit += settings.warmup + settings.edits
                print_series(result)
                series.append(result)
            if args.profile:
                print(f"(profiling one more series, debounce {FAST_DEBOUNCE_MS} ms, under py-spy)")
                log_all_statements(pg, "bench_latency")
                profiled_series = await series_on(
                    debounce_ms=FAST_DEBOUNCE_MS, first_edit=first_edit, profile_to=latency_raw
                )
            violations["latency"] = report_violations(nats_a, "latency")
            nats_a.server.close()
            slow, fast = series[0].figures(), series[1].figures()
            latency: dict[str, Any] = {f"debounce_{s.debounce_ms}ms": s.figures() for s in series}
            if "median_ms" in slow and "median_ms" in fast:
                saved = slow["median_ms"] - fast["median_ms"]
                latency["median_saved_by_lower_debounce_ms"] = round(saved, 3)
                print(
                    f"lowering the debounce {DEFAULT_DEBOUNCE_MS} -> {FAST_DEBOUNCE_MS} ms saves "
                    f"{saved:.1f} ms at the median (of {DEFAULT_DEBOUNCE_MS - FAST_DEBOUNCE_MS} ms "
                    "configured)"
                )
            figures["latency"] = latency
            section_s["latency"] = round(time.perf_counter() - started, 2)

        # ---------------------------------------------------------------- 2. reconcile
        section(f"2. startup reconcile of {settings.rules:,} new rules")
        started = time.perf_counter()
        templates = load_templates(STARTER_RULES)
        generated = generate_rules(
            templates, workdir / "many-rules", settings.rules, settings.tests_every, SEED
        )
        precheck(generated, len(templates), settings.tests_every)
        print(
            f"generated {generated.count:,} rules from {len(templates)} starter templates in "
            f"{generated.directories} directories ({generated.bytes / 1e6:.1f} MB) in "
            f"{generated.seconds:.1f} s; {generated.with_tests} keep inline tests "
            f"(1 in {settings.tests_every})",
            flush=True,
        )
        figures["generated"] = {
            "rules": generated.count,
            "with_inline_tests": generated.with_tests,
            "directories": generated.directories,
            "bytes": generated.bytes,
        }
        nats_b = start_nats(workdir / "nats-reconcile", cleanup)
        pg.ensure_database("bench_reconcile")
        servers = {"postgres": pg.pid, "nats": nats_b.server.pid}
        cold = await reconcile_run(
            name="reconcile",
            bus=nats_b,
            database_url=pg.url_for("bench_reconcile"),
            rules_dir=generated.root,
            expected=generated.count,
            workdir=workdir,
            session=session,
            cleanup=cleanup,
            server_pids=servers,
        )
        print_reconcile("cold start (empty database, fresh NATS)", cold, target=True)
        figures["reconcile"] = reconcile_figures(cold)
        rss_ok = cold.peak_rss_mib is not None and cold.peak_rss_mib <= TARGET_PEAK_RSS_MIB
        figures["reconcile"]["target"] = {
            "ready_s_below": TARGET_READY_S,
            "peak_rss_mib_at_most": TARGET_PEAK_RSS_MIB,
            "pass": cold.ready_s < TARGET_READY_S and rss_ok,
        }
        if settings.big_set_saves:
            print()
            print(
                f"restart over the same {generated.count:,} rules (nothing changed), then "
                f"{settings.big_set_saves} saves of one of them:"
            )
            big = await latency_series(
                bus=nats_b,
                database_url=pg.url_for("bench_reconcile"),
                rules_dir=generated.root,
                target=next(iter_rule_files(generated.root)),
                debounce_ms=DEFAULT_DEBOUNCE_MS,
                edits=settings.big_set_saves,
                warmup=settings.warmup,
                first_edit=0,
                workdir=workdir,
                session=session,
                cleanup=cleanup,
                server_pids=servers,
            )
            print(f"  restart to /readyz 200: {big.ready_s:.2f} s")
            print_series(big, target=False)
            figures["restart_ready_s"] = round(big.ready_s, 3)
            figures[f"latency_with_{generated.count}_rules"] = big.figures()
        else:
            print("(restart and saves with the big rule set loaded: full run only)")
        violations["reconcile"] = report_violations(nats_b, "reconcile")
        nats_b.server.close()
        section_s["reconcile"] = round(time.perf_counter() - started, 2)

        # ---------------------------------------------------------------- 3. profile
        if args.profile:
            section("3. profiles (py-spy; timings of profiled runs are inflated by sampling)")
            started = time.perf_counter()
            profiles: dict[str, Any] = {}
            if profiled_series is not None and latency_raw.is_file():
                print(f"-- saves, debounce {FAST_DEBOUNCE_MS} ms ({settings.edits} saves):")
                print_series(profiled_series, target=False)
                summary = summarise_profile(latency_raw)
                print_profile(summary, settings.warmup + settings.edits, "save")
                if args.keep:
                    print(f"  raw stacks: {latency_raw}")
                statements = pg_statements(pg.log_path, profiled_series.window)
                print_statements(statements, settings.edits, "save")
                profiles["latency"] = {
                    "series": profiled_series.figures(),
                    "postgres_per_save": statement_figures(statements, settings.edits),
                    **summary,
                }
            print()
            print(f"-- cold reconcile of {generated.count:,} rules:")
            raw_path = workdir / "reconcile.pyspy.txt"
            nats_c = start_nats(workdir / "nats-profile", cleanup)
            pg.ensure_database("bench_profile")
            log_all_statements(pg, "bench_profile")
            profiled = await reconcile_run(
                name="profile",
                bus=nats_c,
                database_url=pg.url_for("bench_profile"),
                rules_dir=generated.root,
                expected=generated.count,
                workdir=workdir,
                session=session,
                cleanup=cleanup,
                server_pids={"postgres": pg.pid, "nats": nats_c.server.pid},
                profile_to=raw_path,
            )
            violations["profile"] = report_violations(nats_c, "profile")
            nats_c.server.close()
            print_reconcile("profiled cold start", profiled, target=False)
            if raw_path.is_file():
                summary = summarise_profile(raw_path)
                print_profile(summary)
                statements = pg_statements(pg.log_path, profiled.window)
                print_statements(statements, generated.count, "rule")
                summary["postgres_per_rule"] = statement_figures(statements, generated.count)
                if args.keep:
                    print(f"  raw stacks: {raw_path}")
                profiles["reconcile"] = {"run": reconcile_figures(profiled), **summary}
            else:
                print("py-spy wrote no profile")
            figures["profile"] = profiles
            section_s["profile"] = round(time.perf_counter() - started, 2)

    figures["nats_violations"] = violations
    figures["section_s"] = section_s
    return figures


def machine_figures() -> dict[str, Any]:
    """The `machine` entry of a benchmark's JSON figures."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_bench(
    args: argparse.Namespace,
    *,
    title: str,
    slug: str,
    run: Callable[[contextlib.ExitStack, Path], Coroutine[Any, Any, dict[str, Any]]],
    kept_note: str = "",
) -> int:
    """The part of a benchmark's `main` after its own checks: py-spy check, work directory,
    banner, `run(cleanup, workdir)`, wall time and the final JSON line; the exit status.
    `args` holds `quick` and `keep`; `profile` only where the benchmark offers `--profile`."""
    if getattr(args, "profile", False):
        try:
            py_spy_binary()
        except BenchError as exc:
            print(exc)
            return 2
    signal.signal(signal.SIGTERM, _interrupt)
    wall = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=f"ttp-bench-{slug}-"))
    # A server run as another account (PostgreSQL when we are root) must traverse it.
    workdir.chmod(0o711)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"{title} ({'quick' if args.quick else 'full'}): {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {load}; work directory {workdir}",
        flush=True,
    )
    try:
        with contextlib.ExitStack() as cleanup:
            if not args.keep:
                cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
            figures = asyncio.run(run(cleanup, workdir))
    except KeyboardInterrupt:
        print("interrupted: every process this benchmark started has been stopped")
        return 130
    figures["wall_s"] = round(time.perf_counter() - wall, 2)
    print()
    print(f"total wall time {figures['wall_s']:.1f} s; per section {figures['section_s']}")
    if args.keep:
        print(f"work directory kept: {workdir}{kept_note}")
    print(json.dumps(figures, sort_keys=True, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller run, under 30 s")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile saves and a cold reconcile with py-spy (and PostgreSQL's log)",
    )
    parser.add_argument(
        "--durable", action="store_true", help="PostgreSQL with fsync on (default: off)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, rules, profile)"
    )
    parser.add_argument(
        "--reconcile-only",
        action="store_true",
        help="only the cold start (startup reconcile) section, and the profile of it",
    )
    parser.add_argument(
        "--rules",
        type=int,
        default=None,
        help="rules of the cold start (default 10,000; quick 2,000)",
    )
    args = parser.parse_args(argv)
    settings = Settings.for_mode(args.quick)
    if args.rules is not None:
        settings = dataclasses.replace(settings, rules=args.rules)
    if not MASTER_BIN.is_file():
        print(f"{MASTER_BIN} not found: install the project into this environment")
        return 2
    return run_bench(
        args,
        title="ttp-master benchmark",
        slug="master",
        run=lambda cleanup, workdir: run_all(args, settings, cleanup, workdir),
        kept_note=" (master logs, rules, profiles, server data)",
    )


if __name__ == "__main__":
    raise SystemExit(main())
