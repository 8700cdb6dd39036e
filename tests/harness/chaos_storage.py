"""Chaos scenario: TTP_TAGS, then TTP_EVENTS, run full under a running master and worker.

The streams' size limits are configuration (`TTP_TAGS_MAX_BYTES`, `TTP_EVENTS_MAX_BYTES`),
set small here. Every stream refuses new messages at its limit, so nothing may be dropped:
the worker holds the events whose tags it cannot store and says so (`/readyz` 503,
`ttp_worker_stream_full`), a producer of events gets an error from JetStream, and rule
changes still reach the worker (TTP_RULES has room of its own). An operator then frees space
(raises the tags limit and restarts the master, which applies it; purges the events the
workers have acknowledged) and everything flows again: every acknowledged event tagged once.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nats.js.errors

from harness.chaos import (
    WORKER_ENV,
    ChaosRow,
    ChaosServers,
    Fleet,
    consumer_drained,
    extra_tag_messages,
    firing_ids,
    make_events,
    publish_acked,
    read_tags,
    rule_files,
    running_fleet,
    snapshot_index,
    start_and_converge,
)
from harness.master import with_version
from harness.probes import http_metric
from harness.processes import master_summary, stop, until
from ttp_core.contract import subjects
from ttp_runtime.embedded import free_port

TAGS_LIMIT = 96 * 1024
EVENTS_LIMIT_MIN = 192 * 1024
_EVENT_ROOM = 640
"""Bytes of TTP_EVENTS per event of the first batch: it takes about 40 % of the limit, and
the producer fills the rest."""
ROOMY = 64 * 1024 * 1024
_MAX_FILL_EVENTS = 20_000


async def _edit_reaches_worker(fleet: Fleet, rules: Path, rule_id: str, version: int) -> None:
    """Change one rule and wait until the worker holds the master's new digest."""
    before = await master_summary(fleet.nc)
    assert before is not None
    path = rule_files(rules)[rule_id]
    path.write_text(with_version(path.read_text(), version))

    async def published() -> bool:
        summary = await master_summary(fleet.nc)
        return summary is not None and summary["revision"] > before["revision"]

    await until(f"the edit of {rule_id} published", published, fleet.procs, "master")
    await fleet.converged()


async def _fill_events(fleet: Fleet, batch: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Publish one by one until JetStream refuses an event; that event is tried 4 more times
    (nothing frees space meanwhile, so each try must be refused too). Returns how many were
    accepted before it, and the refusals' descriptions."""
    for accepted, event in enumerate(batch):
        refusals: list[str] = []
        for _ in range(5):
            try:
                await fleet.js.publish(
                    subjects.event(event["source_kind"]),
                    json.dumps(event).encode(),
                    timeout=3,
                    headers={"Nats-Msg-Id": event["source_id"]},
                )
            except nats.js.errors.APIError as error:
                refusals.append(f"{error.code} {error.err_code} {error.description}")
                continue
            break
        if refusals:
            if len(refusals) < 5:
                raise AssertionError("a refused event was accepted with no space freed")
            return accepted, refusals
    return len(batch), []


async def storage_full(
    servers: ChaosServers, rules: Path, workdir: Path, *, events: int = 300
) -> ChaosRow:
    """TTP_TAGS filled by tagging, then TTP_EVENTS filled by a producer, then space freed.

    Lost: acknowledged events that fire a rule and have no tag message at the end;
    duplicated: extra tag messages. Recovery: from the space freed (master restarted with the
    raised limit, consumed events purged) to the worker ready again with every event tagged."""
    events_limit = max(EVENTS_LIMIT_MIN, events * _EVENT_ROOM)
    limits = {"TTP_TAGS_MAX_BYTES": str(TAGS_LIMIT), "TTP_EVENTS_MAX_BYTES": str(events_limit)}
    async with running_fleet(servers, rules, workdir, ("s1",)) as fleet:
        fleet.procs.base_env.update(limits)
        fleet.workers = ()
        await start_and_converge(fleet, ("master",))
        port = fleet.http_ports.setdefault("s1", free_port())
        fleet.procs.worker("s1", **{**WORKER_ENV, "TTP_HTTP_PORT": str(port)})
        fleet.workers = ("s1",)
        await fleet.converged()
        book = await snapshot_index(fleet.js)
        master_port = fleet.http_ports["master"]

        # TTP_TAGS fills up while the worker tags.
        first = make_events(events, seed=7, prefix="full")
        await publish_acked(fleet.js, first)

        async def worker_not_ready() -> tuple[int | None, str] | None:
            code, reason = await fleet.readyz_reason("s1")
            return (code, reason) if code == 503 and "TTP_TAGS full" in reason else None

        tags_full = await until("the worker not ready", worker_not_ready, fleet.procs, "s1")
        worker_gauge = http_metric(port, 'ttp_worker_stream_full{stream="TTP_TAGS"}')

        async def master_sees(stream: str) -> bool:
            series = f'ttp_master_stream_full{{stream="{stream}"}}'
            return http_metric(master_port, series) == 1.0

        await until("the master's TTP_TAGS gauge", lambda: master_sees("TTP_TAGS"), fleet.procs)
        await _edit_reaches_worker(fleet, rules, "R0001", 11)

        # TTP_EVENTS fills up: the producer gets an error, not a silent drop.
        second = make_events(_MAX_FILL_EVENTS, seed=8, prefix="more")
        accepted, refusals = await _fill_events(fleet, second)
        await until("the master's TTP_EVENTS gauge", lambda: master_sees("TTP_EVENTS"), fleet.procs)
        await _edit_reaches_worker(fleet, rules, "R0002", 12)
        held_status = await fleet.readyz_reason("s1")

        # The operator frees space: a larger tags limit (the master applies its setting at
        # start), and the events the workers have acknowledged purged.
        await stop(fleet.procs.procs["master"], "master", fleet.procs)
        fleet.start_master("master", TTP_TAGS_MAX_BYTES=str(ROOMY))
        info = await fleet.js.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
        await fleet.js.purge_stream(subjects.STREAM_EVENTS, seq=info.ack_floor.stream_seq + 1)
        freed = time.monotonic()
        # The producer sends what was refused again.
        refused = second[accepted : accepted + 1]
        await publish_acked(fleet.js, refused)
        acked = first + second[:accepted] + refused

        async def flowing() -> bool:
            return await consumer_drained(fleet.js) and await fleet.readyz("s1") == 200

        await until("every event tagged and the worker ready", flowing, fleet.procs, "s1")
        recovery_s = time.monotonic() - freed
        await fleet.converged()
        firing = firing_ids(book, acked)
        tags, messages = await read_tags(fleet.js)
        after = await fleet.js.stream_info(subjects.STREAM_TAGS)
        await asyncio.sleep(0)
        return ChaosRow(
            scenario="storage-full",
            faults="TTP_TAGS full, TTP_EVENTS full",
            edits=2,
            events=len(acked),
            lost=len(firing - messages.keys()),
            duplicated=extra_tag_messages(messages),
            recovery_s=round(recovery_s, 2),
            details={
                "firing_events": len(firing),
                "worker_readyz_while_tags_full": list(tags_full),
                "worker_stream_full_gauge": worker_gauge,
                "worker_readyz_while_both_full": list(held_status),
                "events_accepted_before_refusal": accepted,
                "producer_refusals": refusals,
                "tags_max_bytes_after": after.config.max_bytes,
                "unexpected_tags": len(tags.keys() - firing),
            },
        )


__all__ = ["storage_full"]
