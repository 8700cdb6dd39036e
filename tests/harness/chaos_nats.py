"""Chaos scenario: the NATS server restarted during event flow and rule edits."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

from harness.chaos import (
    ChaosRow,
    ChaosServers,
    RuleEditor,
    extra_tag_messages,
    firing_ids,
    make_events,
    postgres_differences,
    publish_acked,
    read_tags,
    running_fleet,
    snapshot_index,
    start_and_converge,
    wait_tagged,
)
from harness.processes import fleet_matches

# --------------------------------------------------------------------------------------------
# Scenario: NATS restarted during event flow and rule edits
# --------------------------------------------------------------------------------------------


async def nats_restart(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    *,
    events: int = 3_000,
    restarts: int = 2,
    seed: int = 2,
) -> ChaosRow:
    """NATS restarted (the first time kill -9, then an orderly restart) while a producer
    publishes events and rule files are created, changed and deleted. Every acknowledged event
    must be tagged exactly once (one message per firing event in TTP_TAGS: the workers' tags
    carry a Nats-Msg-Id, so a redelivered event's tag is dropped as a duplicate), and the
    workers converge on the master's digest. The edits never delete a starter rule (only the
    copies they created), so which events fire does not depend on when they are tagged.

    Recovery is, per restart, from NATS serving again to every worker reporting (afresh)
    that it holds the master's digest; the row has the longest."""
    rng = random.Random(seed)
    async with running_fleet(servers, rules, workdir, ("n1", "n2", "n3")) as fleet:
        await start_and_converge(fleet, ("master",))
        book = await snapshot_index(fleet.js)
        batch = make_events(events, seed, prefix="nr")
        firing = firing_ids(book, batch)
        editor = RuleEditor(rules, rng, only_delete_created=True)
        recoveries: list[float] = []
        retried = 0
        # The flow lasts through every restart, so some publishes meet a server away.
        pause = (2.5 * restarts + 2.0) / max(1, events // 100)
        done = asyncio.Event()

        outage = asyncio.Event()
        sent_in_outage = 0
        readiness: Counter[str] = Counter()

        async def watch_readiness() -> None:
            while not done.is_set():
                if outage.is_set():
                    code, reason = await fleet.readyz_reason("master")
                    readiness[f"{code} {reason}"] += 1
                await asyncio.sleep(0.1)

        async def produce() -> None:
            nonlocal retried, sent_in_outage
            for start in range(0, events, 100):
                chunk = batch[start : start + 100]
                sent_in_outage += len(chunk) if outage.is_set() else 0
                retried += await publish_acked(fleet.js, chunk)
                await asyncio.sleep(pause)

        async def edit() -> None:
            while not done.is_set():
                editor.step()
                await asyncio.sleep(rng.uniform(0.05, 0.3))

        async def restart_nats() -> None:
            for number in range(restarts):
                await asyncio.sleep(rng.uniform(0.8, 1.6))
                outage.set()
                if number % 2 == 0:
                    await asyncio.to_thread(servers.nats.kill)
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    await asyncio.to_thread(servers.nats.start)
                else:
                    await asyncio.to_thread(servers.nats.restart)
                outage.clear()
                healed = time.monotonic()
                await fleet.converged_afresh()
                recoveries.append(time.monotonic() - healed)

        editing = asyncio.create_task(edit())
        watching = asyncio.create_task(watch_readiness())
        try:
            await asyncio.gather(produce(), restart_nats())
        finally:
            done.set()
            await editing
            await watching
        produced = time.monotonic()

        await wait_tagged(fleet, firing, timeout=60)  # what is missing is counted below
        final = await fleet.converged()
        settled_s = time.monotonic() - produced
        _, messages = await read_tags(fleet.js)
        return ChaosRow(
            scenario="nats-restart",
            faults=f"{restarts}x NATS restart (kill -9, orderly)",
            edits=editor.total,
            events=events,
            lost=len(firing - messages.keys()),
            duplicated=extra_tag_messages(messages),
            recovery_s=round(max(recoveries), 2),
            details={
                "firing_events": len(firing),
                "unexpected_tags": len(messages.keys() - firing),
                "publishes_retried": retried,
                "published_while_nats_away": sent_in_outage,
                "master_readyz_while_nats_away": dict(readiness),
                "recoveries_s": [round(r, 2) for r in recoveries],
                "settled_after_last_event_s": round(settled_s, 2),
                "postgres_differences": await postgres_differences(servers.database_dsn, rules),
                "workers_on_master_digest": fleet_matches(fleet.statuses, final, fleet.workers),
            },
        )
