"""The third-party examples and the operations guide hold against the real system.

- ``docs/examples/consumer.py`` is run as a subprocess (its own interpreter, only nats-py)
  against a live in-process master (private NATS and PostgreSQL) and one worker: it must
  replay the current state of every rule from TTP_RULES, then print a live change, a delete
  and the tags of an event that fires; ``--max`` must make it exit on its own.
- ``docs/operations.md`` must name every setting of the services as ``TTP_<NAME>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.master import install, master_settings, nats_client, running_master, with_version
from harness.worker import running_worker
from ttp_core.contract import subjects
from ttp_master.settings import MasterSettings
from ttp_runtime.settings import ServiceSettings
from ttp_worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
CONSUMER = REPO / "docs" / "examples" / "consumer.py"
OPERATIONS = REPO / "docs" / "operations.md"
RULE_IDS = ["R0010", "R0014", "R0078"]
TIMEOUT_S = 30.0
RULE_LINE = re.compile(r"^rule (R\d{4}) rev (\d+) (reloaded|deleted|state=\w+)$")
TAG_LINE = re.compile(r"^tag (T\d{4}(?:\.\d{3})?) (R\d{4}) (\w+)/(\S+) conf=([0-9.]+)$")


async def start_consumer(nats_url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CONSUMER),
        *args,
        env={**os.environ, "NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


class Output:
    """The consumer's stdout, line by line, as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait(self, predicate: Callable[[list[str]], bool], what: str) -> None:
        assert self.proc.stdout is not None
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while not predicate(self.lines):
            left = deadline - asyncio.get_running_loop().time()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.01))
            except TimeoutError:
                raw = b""
            if not raw:
                stderr = b""
                if self.proc.returncode is not None and self.proc.stderr is not None:
                    stderr = await self.proc.stderr.read()
                raise AssertionError(f"no {what}; output so far {self.lines}; stderr {stderr!r}")
            self.lines.append(raw.decode().rstrip("\n"))


def rule_lines(lines: list[str]) -> list[tuple[str, int, str]]:
    return [(m[1], int(m[2]), m[3]) for line in lines if (m := RULE_LINE.match(line))]


async def test_consumer_example_prints_rule_state_changes_and_tags(
    private_nats: Any, database_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    placed = install(rules, RULE_IDS)
    settings = master_settings(private_nats.url, database_url, rules)

    async with (
        running_master(settings),
        running_worker(private_nats.url, "ex1"),
        nats_client(private_nats.url) as nc,
    ):
        proc = await start_consumer(private_nats.url, "--seconds", "60")
        out = Output(proc)
        try:
            # Replay: the current state of every rule, from TTP_RULES alone.
            await out.wait(
                lambda ls: (
                    {r for r, _, what in rule_lines(ls) if what == "reloaded"} >= set(RULE_IDS)
                ),
                "replayed rule lines",
            )
            replay_rev = max(rev for _, rev, _ in rule_lines(out.lines))
            # Live: a change and a delete, each with a newer revision.
            placed["R0014"].write_text(with_version(placed["R0014"].read_text(), 9))
            placed["R0078"].unlink()

            def live(rule_id: str, what: str) -> Callable[[list[str]], bool]:
                return lambda ls: any(
                    r == rule_id and rev > replay_rev and w == what for r, rev, w in rule_lines(ls)
                )

            await out.wait(live("R0014", "reloaded"), "the live R0014 change")
            await out.wait(live("R0078", "deleted"), "the R0078 tombstone")
            # Tags: an event that R0014 tags, published as a honeypot would (bare event).
            event = {
                "source_kind": "command",
                "source_id": "cmd_example_1",
                "payload": {"command_text": "cat /etc/shadow"},
            }
            await nc.jetstream().publish(subjects.event("command"), json.dumps(event).encode())
            await out.wait(
                lambda ls: any(
                    (m := TAG_LINE.match(line)) and m[2] == "R0014" and m[4] == "cmd_example_1"
                    for line in ls
                ),
                "a tag line for the event",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
        tag = next(m for line in out.lines if (m := TAG_LINE.match(line)))
        assert tag[3] == "command" and 0 < float(tag[5]) <= 1
        assert all(RULE_LINE.match(line) or TAG_LINE.match(line) for line in out.lines), out.lines

        # --max N: the example stops by itself after N lines (here: part of the replay).
        bounded = await start_consumer(private_nats.url, "--max", "2", "--seconds", "30")
        stdout, stderr = await asyncio.wait_for(bounded.communicate(), TIMEOUT_S)
        assert bounded.returncode == 0, stderr
        printed = stdout.decode().splitlines()
        assert len(printed) == 2 and all(RULE_LINE.match(line) for line in printed), printed


def test_operations_doc_lists_every_setting() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    fields = {
        name
        for cls in (ServiceSettings, MasterSettings, WorkerSettings)
        for name in cls.model_fields
    }
    missing = sorted(
        f"TTP_{name.upper()}" for name in fields if not re.search(rf"`TTP_{name.upper()}`", text)
    )
    assert not missing, f"docs/operations.md does not document {missing}"
