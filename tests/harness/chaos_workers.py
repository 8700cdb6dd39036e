"""Chaos scenario: kill -9 of a worker during an event flood."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from harness.chaos import (
    ChaosRow,
    ChaosServers,
    consumer_drained,
    extra_tag_messages,
    make_events,
    read_tags,
    running_fleet,
    snapshot_index,
    start_and_converge,
)
from harness.processes import master_summary, stop, until
from ttp_core.contract import subjects

# --------------------------------------------------------------------------------------------
# Scenario: kill -9 of a worker during an event flood
# --------------------------------------------------------------------------------------------


async def worker_kill_flood(
    servers: ChaosServers, rules: Path, workdir: Path, *, events: int = 6_000
) -> ChaosRow:
    """Two workers tag a flood of events; one gets kill -9 a sixth of the way in and is not
    restarted. The survivor must tag every event exactly once: TTP_TAGS must hold, per event,
    the tag uuids an offline evaluation gives on an index built from TTP_RULES, in one message.
    Then the survivor gets SIGTERM and must exit 0 within 10 s.

    Recovery is from the kill to the shared consumer drained (the killed worker's unacked
    events come back after `ack_wait` and the survivor tags them)."""
    async with running_fleet(servers, rules, workdir, ("w1", "w2")) as fleet:
        await start_and_converge(fleet, ("master",))
        summary = await master_summary(fleet.nc)
        assert summary is not None
        js = fleet.js
        batch = make_events(events)

        async def publish_all() -> None:
            for start in range(0, events, 250):
                chunk = batch[start : start + 250]
                await asyncio.gather(
                    *(
                        js.publish(subjects.event(e["source_kind"]), json.dumps(e).encode())
                        for e in chunk
                    )
                )
                await asyncio.sleep(0.02)

        publisher = asyncio.create_task(publish_all())

        async def w1_busy() -> bool:
            return bool(fleet.statuses.get("w1", {}).get("events_processed", 0) >= events // 6)

        await until("w1 tagging", w1_busy, fleet.procs, "master", "w2", timeout=60)
        fleet.kill_9("w1")
        killed = time.monotonic()
        w1_processed = int(fleet.statuses["w1"]["events_processed"])
        await publisher

        async def drained() -> bool:
            return await consumer_drained(js)

        await until("every event acked", drained, fleet.procs, "master", "w2", timeout=90)
        recovery = time.monotonic() - killed

        book = await snapshot_index(js)
        expected = {
            e["source_id"]: {t.uuid for t in tags}
            for e in batch
            if (tags := book.current.index.evaluate(e))
        }
        got, messages = await read_tags(js)
        w2_processed = int(fleet.statuses["w2"]["events_processed"])
        survivor_stop_s = await stop(fleet.procs.procs["w2"], "w2", fleet.procs)
        return ChaosRow(
            scenario="worker-kill-flood",
            faults="1x kill -9 worker (of 2)",
            events=events,
            lost=sum(1 for sid, uuids in expected.items() if got.get(sid) != uuids),
            duplicated=extra_tag_messages(messages),
            recovery_s=round(recovery, 2),
            details={
                "firing_events": len(expected),
                "unexpected_tags": len(got.keys() - expected.keys()),
                "index_is_masters": book.current.index.digest() == summary["digest"],
                "w1_processed_before_kill": w1_processed,
                "w2_processed": w2_processed,
                "survivor_sigterm_exit_s": round(survivor_stop_s, 2),
            },
        )
