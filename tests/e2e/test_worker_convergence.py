"""Workers converge on the master's rule set, as real processes.

`ttp-master` and three `ttp-worker` processes share a private NATS server (free to kill; each
process connects as its role) and a fresh database. The test watches as the consumer role,
publishes events as the producer and reads the workers' durable consumer as the worker. A
worker's `ttp.worker.status.<id>` carries the `index_digest` of the index it tags with; the
master's `ttp.ruleset.revision` carries the digest of the rule set it holds.
Equal digests (and revisions) mean the worker holds exactly the master's rules.

- a rule file saved like an editor does (temporary file + rename) reaches all three workers;
- a worker started before the master, which may not create the streams, waits for the master
  to create them without trying itself, and becomes ready once the master has;
- SIGTERM while a worker is tagging: it acks what it fetched and exits 0 within 10 s, and
  every event is tagged exactly once once another worker has finished the stream.

NATS restarted while rules change: tests/chaos/test_nats_restart.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from harness.master import STARTER_RULES, fire_examples, stream_messages
from harness.nats_roles import RoleNats
from harness.processes import (
    TIMEOUT_S,
    Procs,
    fleet_matches,
    master_summary,
    released_on_stop,
    start_fleet,
    status_feed,
    stop,
    until,
)
from ttp_core.contract import subjects
from ttp_core.engine.index import RuleIndex
from ttp_core.rules.validator import RuleValidator

WORKERS = ("c1", "c2", "c3")


async def stored_version(nc: Client, rule_id: str) -> int | None:
    """The rule_version of the rule's last `reloaded` message in TTP_RULES."""
    try:
        msg = await nc.jetstream().get_last_msg(
            subjects.STREAM_RULES, subjects.rule_reloaded(rule_id)
        )
    except nats.js.errors.NotFoundError:
        return None
    version = json.loads(msg.data or b"{}")["data"].get("rule_version")
    return None if version is None else int(version)


def save(rules: Path, rule_id: str, version: int) -> None:
    """Save a new rule_version of a rule as an editor does: temporary file, then rename."""
    path = rules / f"{rule_id}.yaml"
    text, replaced = re.subn(
        r"(?m)^rule_version: \d+$", f"rule_version: {version}", path.read_text(), count=1
    )
    assert replaced == 1
    temp = rules / f".{rule_id}.yaml.swp"
    temp.write_text(text)
    os.replace(temp, path)


async def converge_after(
    procs: Procs,
    nc: Client,
    statuses: dict[str, dict[str, Any]],
    expected_versions: dict[str, int],
    workers: tuple[str, ...],
    timeout: float = TIMEOUT_S,
) -> dict[str, Any]:
    """Wait until TTP_RULES holds the expected versions and every worker has the master's
    final digest and revision; that final summary."""

    async def published() -> bool:
        for rule_id, version in expected_versions.items():
            if await stored_version(nc, rule_id) != version:
                return False
        return True

    await until("the edits in TTP_RULES", published, procs, "master", timeout=timeout)

    async def converged() -> dict[str, Any] | None:
        summary = await master_summary(nc)
        if summary is not None and fleet_matches(statuses, summary, workers):
            return summary
        return None

    return await until(  # type: ignore[no-any-return]
        "every worker on the master's final digest",
        converged,
        procs,
        "master",
        *workers,
        timeout=timeout,
    )


# --------------------------------------------------------------------------------------------


async def test_a_rule_file_save_reaches_all_three_workers(
    procs: Procs, roles: RoleNats, rules_dir: Path
) -> None:
    async with roles.client("consumer") as nc, status_feed(nc) as statuses:
        before = await start_fleet(procs, nc, statuses, WORKERS)
        save(rules_dir, "R0010", 7)
        after = await converge_after(procs, nc, statuses, {"R0010": 7}, WORKERS)
        assert after["revision"] > before["revision"]
        assert after["digest"] != before["digest"]
        assert after["rules"] == before["rules"]
        for worker in WORKERS:
            assert statuses[worker]["index_digest"] == after["digest"]
        await stop(procs.procs["master"], "master", procs)


async def test_a_worker_started_before_the_master_waits_for_the_master_to_create_the_streams(
    procs: Procs, roles: RoleNats
) -> None:
    # Creating streams is the master's right alone; a worker logged in as its role knows it
    # and does not even try (the fixture fails the test on any violation).
    async with roles.client("consumer") as nc, status_feed(nc) as statuses:
        procs.worker("early")

        async def waiting() -> bool:
            return "waiting for the master to create" in procs.log("early")

        await until("the worker to wait for the master", waiting, procs, "early")
        assert statuses.get("early", {}).get("ready") is not True

        procs.start("master", "ttp-master", role="master")
        rule_count = len(list(STARTER_RULES.rglob("*.yaml")))

        async def loaded() -> dict[str, Any] | None:
            summary = await master_summary(nc)
            return summary if summary is not None and summary["rules"] == rule_count else None

        summary = await until("the master's starter pack", loaded, procs, "master", "early")

        async def converged() -> bool:
            return fleet_matches(statuses, summary, ("early",))

        await until("the early worker on the master's digest", converged, procs, "master", "early")
        assert "the master created the JetStream streams" in (procs.tmp / "early.log").read_text()
        await stop(procs.procs["early"], "early", procs)
        await stop(procs.procs["master"], "master", procs)


def offline_index() -> RuleIndex:
    validator = RuleValidator()
    compiled = []
    for path in sorted(STARTER_RULES.rglob("*.yaml")):
        report = validator.validate_file(path, path.name)
        assert report.compiled is not None, report.errors
        compiled.append(report.compiled)
    return RuleIndex.build(compiled, {}, {})


def make_events(count: int) -> list[dict[str, Any]]:
    examples = fire_examples()
    rng = random.Random(11)
    events = []
    for number in range(count):
        if number % 4 == 3:
            kind, payload = "command", {"command_text": f"echo harmless {number}"}
        else:
            kind, payload = rng.choice(examples)
        events.append({"source_kind": kind, "source_id": f"term-{number}", "payload": payload})
    return events


async def test_sigterm_during_a_batch_acks_it_and_loses_nothing(
    procs: Procs, roles: RoleNats
) -> None:
    count = 12_000
    async with (
        roles.client("consumer") as nc,
        roles.client("producer") as producer,
        roles.client("worker") as worker,
        status_feed(nc) as statuses,
    ):
        js = nc.jetstream()
        events_js = producer.jetstream()
        progress = worker.jetstream()  # the workers' durable consumer: the worker's to read
        # The master only: t1 starts once every event is in the stream, since a worker keeps
        # pace with this test's publishing and would leave no backlog to stop in.
        summary = await start_fleet(procs, nc, statuses, ())
        index = offline_index()
        assert index.digest() == summary["digest"]
        events = make_events(count)
        expected = {
            e["source_id"]: {t.uuid for t in tags} for e in events if (tags := index.evaluate(e))
        }
        assert len(expected) > count // 2

        async def publish_all() -> None:
            for start in range(0, count, 500):
                await asyncio.gather(
                    *(
                        events_js.publish(subjects.event(e["source_kind"]), json.dumps(e).encode())
                        for e in events[start : start + 500]
                    )
                )

        await publish_all()
        procs.worker("t1")

        async def tagging() -> bool:
            # The shared consumer's count rather than t1's status heartbeat: a worker tags
            # thousands of events between two heartbeats.
            info = await progress.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
            return bool(info.delivered.consumer_seq >= 300)

        await until("t1 tagging", tagging, procs, "t1")
        took = await stop(procs.procs["t1"], "t1", procs)
        assert took < 10

        # What t1 fetched it either acked or released (nak'ed for immediate redelivery):
        # JetStream counts a nak'ed message as ack-pending until it is delivered again, so
        # the released ones are exactly what may still be pending; none waits for ack_wait.
        info = await progress.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
        assert info.num_ack_pending == released_on_stop(procs, "t1"), info
        assert info.num_pending > 0  # it stopped before the end of the stream

        procs.worker("t2")

        async def drained() -> bool:
            info = await progress.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await until("t2 tags the rest", drained, procs, "t2")

        got: dict[str, set[str]] = {}
        workers: set[str] = set()
        duplicates = []
        for msg in await stream_messages(js, subjects.STREAM_TAGS, chunk=1000):
            event = json.loads(msg.data)
            data = event["data"]
            if data["source_id"] in got:
                duplicates.append(data["source_id"])
            got[data["source_id"]] = {t["uuid"] for t in data["tags"]}
            workers.add(event["source"])
        assert duplicates == []
        assert got == expected
        assert workers == {"ttp-rulebus/worker/t1", "ttp-rulebus/worker/t2"}
        await stop(procs.procs["t2"], "t2", procs)
        await stop(procs.procs["master"], "master", procs)
