"""The worker fleet as real processes: `ttp-master` and two `ttp-worker`s (issue 4).

One worker is killed with SIGKILL while a stream of events flows; every event must still be
tagged exactly once in TTP_TAGS: the set of tag uuids equals an offline evaluation of the same
events on an index built from TTP_RULES, and there is one tag message per event that fires.
The survivor then gets SIGTERM and must exit 0 within 10 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from typing import Any

import yaml
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from harness.master import STARTER_RULES, nats_client
from harness.processes import Procs, status_feed, until
from ttp_core.contract import subjects
from ttp_core.contract.payloads import RulesetRevision, decode
from ttp_worker.rulebook import RuleBook, RuleChange, decode_rule_message

EVENTS = int(os.environ.get("TTP_TEST_FLEET_EVENTS", "20000"))
TIMEOUT_S = 60.0


def fire_examples() -> list[tuple[str, dict[str, Any]]]:
    """(source kind, payload) of every inline `fire` example of the starter pack."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(STARTER_RULES.rglob("*.yaml")):
        rule = yaml.safe_load(path.read_text())
        for case in rule.get("tests", []):
            if case.get("expect") == "fire":
                found.append((rule["applies_to"][0], case["event"]))
    return found


def make_events(count: int) -> list[dict[str, Any]]:
    examples = fire_examples()
    rng = random.Random(4)
    events = []
    for number in range(count):
        if number % 5 == 4:
            kind, payload = "command", {"command_text": f"echo harmless {number}"}
        else:
            kind, payload = rng.choice(examples)
        events.append(
            {
                "source_kind": kind,
                "source_id": f"ev-{number}",
                "session_id": f"s-{number % 17}",
                "payload": payload,
            }
        )
    return events


async def snapshot_index(js: JetStreamContext) -> RuleBook:
    """An index built offline from everything TTP_RULES holds (as a new worker would)."""
    sub = await js.pull_subscribe(
        "",
        stream=subjects.STREAM_RULES,
        # TTP_RULES keeps one message per subject: "all" is the last of each.
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    total = (await js.stream_info(subjects.STREAM_RULES)).state.messages
    changes: list[RuleChange] = []
    seen = 0
    while seen < total:
        for msg in await sub.fetch(min(500, total - seen), timeout=5):
            seen += 1
            change = decode_rule_message(msg.subject, msg.data)
            if change is not None:
                changes.append(change)
    await sub.unsubscribe()
    book = RuleBook()
    book.load_snapshot(changes)
    return book


async def test_kill_9_during_a_stream_loses_and_duplicates_nothing(procs: Procs) -> None:
    procs.start("master", "ttp-master")
    worker_env = {
        "TTP_ACK_WAIT_S": "2",
        "TTP_FETCH_BATCH": "100",
        "TTP_STATUS_INTERVAL_S": "0.5",
        "TTP_FETCH_TIMEOUT_S": "0.5",
    }
    url = procs.base_env["TTP_NATS_URL"]
    async with nats_client(url) as nc, status_feed(nc) as statuses:
        js = nc.jetstream()

        async def master_summary() -> RulesetRevision | None:
            try:
                msg = await js.get_last_msg(subjects.STREAM_RULES, subjects.RULESET_REVISION)
            except Exception:
                return None
            assert msg.data is not None
            summary = decode(msg.data, RulesetRevision).data
            return summary if summary.rules >= 80 else None

        summary = await until(
            "the master's rule set", master_summary, procs, "master", timeout=TIMEOUT_S
        )
        procs.start("w1", "ttp-worker", TTP_WORKER_ID="w1", **worker_env)
        procs.start("w2", "ttp-worker", TTP_WORKER_ID="w2", **worker_env)

        async def both_ready() -> bool:
            return all(
                statuses.get(w, {}).get("ready") and statuses[w]["index_digest"] == summary.digest
                for w in ("w1", "w2")
            )

        await until(
            "both workers ready with the master's digest",
            both_ready,
            procs,
            "master",
            "w1",
            "w2",
            timeout=TIMEOUT_S,
        )
        assert statuses["w1"]["revision"] == summary.revision

        events = make_events(EVENTS)

        async def publish_all() -> None:
            for start in range(0, EVENTS, 250):
                chunk = events[start : start + 250]
                await asyncio.gather(
                    *(
                        js.publish(subjects.event(e["source_kind"]), json.dumps(e).encode())
                        for e in chunk
                    )
                )
                await asyncio.sleep(0.02)

        publisher = asyncio.create_task(publish_all())

        async def w1_busy() -> bool:
            processed = statuses.get("w1", {}).get("events_processed", 0)
            return bool(processed >= EVENTS // 6)

        await until("w1 tagging", w1_busy, procs, "master", "w2", timeout=TIMEOUT_S)
        procs.procs["w1"].send_signal(signal.SIGKILL)
        procs.procs["w1"].wait(10)
        w1_processed = statuses["w1"]["events_processed"]
        await publisher

        async def all_acked() -> bool:
            info = await js.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await until("every event acked", all_acked, procs, "master", "w2", timeout=TIMEOUT_S)

        # Offline: the same events on an index built from TTP_RULES.
        book = await snapshot_index(js)
        assert book.current.index.digest() == summary.digest
        expected: dict[str, set[str]] = {}
        for event in events:
            tags = book.current.index.evaluate(event)
            if tags:
                expected[event["source_id"]] = {t.uuid for t in tags}
        assert len(expected) > EVENTS // 2

        total = (await js.stream_info(subjects.STREAM_TAGS)).state.messages
        sub = await js.pull_subscribe(
            "",
            stream=subjects.STREAM_TAGS,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
        )
        got: dict[str, set[str]] = {}
        duplicates: list[str] = []
        read = 0
        while read < total:
            for msg in await sub.fetch(min(1000, total - read), timeout=5):
                read += 1
                data = json.loads(msg.data)["data"]
                if data["source_id"] in got:
                    duplicates.append(data["source_id"])
                got[data["source_id"]] = {t["uuid"] for t in data["tags"]}
        assert duplicates == []
        assert total == len(expected)
        assert got == expected

        # Both took part (w1's count is its last heartbeat before the kill); the survivor
        # stops cleanly on SIGTERM.
        assert 0 < w1_processed < EVENTS
        assert statuses["w2"]["events_processed"] > 0
        w2 = procs.procs["w2"]
        started = time.monotonic()
        w2.send_signal(signal.SIGTERM)
        assert w2.wait(10) == 0, procs.log("w2")
        assert time.monotonic() - started < 10
        procs.procs["master"].send_signal(signal.SIGTERM)
        procs.procs["master"].wait(15)
