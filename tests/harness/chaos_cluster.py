"""Chaos scenario: one node of a three-node JetStream cluster killed during events and edits.

The production topology (three servers, every stream at three replicas): the master and
the workers are given all three URLs. The node leading TTP_EVENTS (where the workers' shared
consumer is led too, as a rule) gets kill -9 while a producer publishes events and rule
files change, and comes back a few seconds later. The remaining two keep a quorum, so no
acknowledged event may be lost or tagged twice, and the master and workers must fail over
by themselves: they keep their process ids, and every edit reaches every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from harness.chaos import (
    ChaosRow,
    Fleet,
    RuleEditor,
    extra_tag_messages,
    firing_ids,
    make_events,
    postgres_differences,
    publish_acked,
    read_tags,
    snapshot_index,
    start_and_converge,
    wait_disk_in_postgres,
    wait_tagged,
)
from harness.nats_cluster import NatsCluster
from harness.processes import Procs, fleet_matches, status_feed
from ttp_core.contract import subjects


@contextlib.asynccontextmanager
async def cluster_client(cluster: NatsCluster) -> AsyncIterator[Client]:
    """A test client that knows every node and reconnects quickly."""
    nc = await nats.connect(
        servers=cluster.urls, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


@contextlib.asynccontextmanager
async def cluster_fleet(
    cluster: NatsCluster,
    database_url: str,
    rules: Path,
    workdir: Path,
    workers: tuple[str, ...],
) -> AsyncIterator[Fleet]:
    """Processes given every node's URL and streams at three replicas; killed at the end."""
    procs = Procs(workdir, cluster.url, database_url, rules)
    procs.base_env["TTP_STREAM_REPLICAS"] = str(len(cluster.nodes))
    try:
        async with cluster_client(cluster) as nc, status_feed(nc) as statuses:
            yield Fleet(procs, nc, statuses, workers)
    finally:
        procs.kill_all()


async def _stream_leaders(fleet: Fleet) -> dict[str, str | None]:
    leaders: dict[str, str | None] = {}
    for name in (subjects.STREAM_RULES, subjects.STREAM_EVENTS, subjects.STREAM_TAGS):
        info = await fleet.js.stream_info(name)
        leaders[name] = info.cluster.leader if info.cluster else None
    return leaders


async def cluster_node_loss(
    cluster: NatsCluster,
    database_url: str,
    rules: Path,
    workdir: Path,
    *,
    events: int = 2_000,
    down_s: float = 4.0,
    seed: int = 3,
) -> ChaosRow:
    """kill -9 of the node leading TTP_EVENTS, restarted after `down_s`, during events and
    edits. Lost: acknowledged events that fire a rule (on the index as it was at the start;
    the edits only touch rules they created) and have no tag message; duplicated: extra tag
    messages. Recovery: from the node back to every worker reporting, afresh, the master's
    digest."""
    rng = random.Random(seed)
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    async with cluster_fleet(cluster, database_url, rules, workdir, ("c1", "c2")) as fleet:
        await start_and_converge(fleet, ("master",))
        replicas = {
            name: (await fleet.js.stream_info(name)).config.num_replicas
            for name in (subjects.STREAM_RULES, subjects.STREAM_EVENTS, subjects.STREAM_TAGS)
        }
        pids = {name: proc.pid for name, proc in fleet.procs.procs.items()}
        book = await snapshot_index(fleet.js)
        batch = make_events(events, seed, prefix="cl")
        firing = firing_ids(book, batch)
        editor = RuleEditor(rules, rng, only_delete_created=True)
        done = asyncio.Event()
        retried = 0
        leaders_before = await _stream_leaders(fleet)
        meta_before = await asyncio.to_thread(cluster.meta_leader)
        victim = leaders_before[subjects.STREAM_EVENTS] or cluster.nodes[0].server_name
        edits_while_down = 0
        recovery_s = 0.0
        killed_at: float | None = None
        first_ack_after_kill_s: float | None = None
        pause = (down_s + 4.0) / max(1, events // 100)

        async def produce() -> None:
            nonlocal retried, first_ack_after_kill_s
            for start in range(0, events, 100):
                retried += await publish_acked(fleet.js, batch[start : start + 100])
                if killed_at is not None and first_ack_after_kill_s is None:
                    first_ack_after_kill_s = time.monotonic() - killed_at
                await asyncio.sleep(pause)

        async def edit() -> None:
            nonlocal edits_while_down
            while not done.is_set():
                editor.step()
                if not cluster.node(victim).is_running:
                    edits_while_down += 1
                await asyncio.sleep(rng.uniform(0.05, 0.3))

        async def fail_node() -> None:
            nonlocal recovery_s, killed_at
            await asyncio.sleep(1.5)
            await asyncio.to_thread(cluster.node(victim).kill)
            killed_at = time.monotonic()
            await asyncio.sleep(down_s)
            await asyncio.to_thread(cluster.node(victim).start)
            healed = time.monotonic()
            await fleet.converged_afresh()
            recovery_s = time.monotonic() - healed

        editing = asyncio.create_task(edit())
        try:
            await asyncio.gather(produce(), fail_node())
        finally:
            done.set()
            await editing

        await wait_tagged(fleet, firing, timeout=90)  # what is missing is counted below
        await wait_disk_in_postgres(fleet, dsn, rules, timeout=60)
        final = await fleet.converged()
        _, messages = await read_tags(fleet.js)
        same_processes = all(
            proc.poll() is None and proc.pid == pids[name]
            for name, proc in fleet.procs.procs.items()
        )
        details: dict[str, Any] = {
            "stream_replicas": replicas,
            "victim": victim,
            "victim_led": sorted(k for k, v in leaders_before.items() if v == victim)
            + (["meta"] if meta_before == victim else []),
            "leaders_after": await _stream_leaders(fleet),
            "firing_events": len(firing),
            "unexpected_tags": len(messages.keys() - firing),
            "publishes_retried": retried,
            "events_acked_again_after_kill_s": first_ack_after_kill_s
            and round(first_ack_after_kill_s, 2),
            "edits_while_node_down": edits_while_down,
            "edit_kinds": dict(Counter(editor.counts)),
            "same_processes": same_processes,
            "master_readyz_after": await fleet.readyz("master"),
            "postgres_differences": await postgres_differences(dsn, rules),
            "workers_on_master_digest": fleet_matches(fleet.statuses, final, fleet.workers),
        }
        return ChaosRow(
            scenario="nats-cluster-node-loss",
            faults=f"kill -9 1 of 3 NATS nodes, {down_s:g} s",
            edits=editor.total,
            events=events,
            lost=len(firing - messages.keys()),
            duplicated=extra_tag_messages(messages),
            recovery_s=round(recovery_s, 2),
            details=details,
        )


__all__ = ["cluster_client", "cluster_fleet", "cluster_node_loss"]
