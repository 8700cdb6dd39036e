"""Chaos scenario: the rules directory vanishes under a running master and worker.

First the whole directory is removed (`rm -rf`, an unmounted volume): the master must hold
every rule, publish no delete, and the worker must keep tagging with the last good set, for
longer than the confirmation period. The directory then comes back with the same files:
nothing is republished, and the next edit reaches the worker as usual. Then every file is
removed but the directory kept (a ConfigMap briefly empty, or an intended mass delete): held
too, until the confirmation period has passed, after which the deletes go out.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

from harness.chaos import (
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
from harness.master import query, starter_pack_in, with_version
from harness.probes import http_metric
from harness.processes import master_summary, until
from ttp_runtime.control_client import ControlClient

_LIVE_AND_DELETED = (
    "SELECT count(*) FILTER (WHERE NOT deleted) AS live,"
    " count(*) FILTER (WHERE deleted) AS deleted FROM ttp_rule"
)


async def _reason(fleet: Fleet) -> str:
    return (await fleet.readyz_reason("master"))[1]


async def _tag_round(
    fleet: Fleet, prefix: str, count: int, firing_book: Any, seed: int
) -> tuple[set[str], int]:
    """Publish `count` events; wait until all are acked; (firing source ids, retried)."""
    batch = make_events(count, seed=seed, prefix=prefix)
    firing = firing_ids(firing_book, batch)
    retried = await publish_acked(fleet.js, batch)

    async def drained() -> bool:
        return await consumer_drained(fleet.js)

    await until(f"{prefix} events acked", drained, fleet.procs, "master", *fleet.workers)
    return firing, retried


async def rules_vanish(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    *,
    confirm_s: float = 3.0,
    events: int = 300,
) -> ChaosRow:
    """The directory removed, then restored; then emptied and left empty until confirmed.

    Lost: events fired by the last good rule set (tagged while the directory was gone) that
    got no tag; duplicated: extra tag messages. Recovery: from the directory restored to the
    master no longer holding anything (its /readyz reason plain again)."""
    env = {"TTP_MASS_DELETE_CONFIRM_S": str(confirm_s)}
    async with running_fleet(servers, rules, workdir, ("v1",)) as fleet:
        await start_and_converge(fleet, ("master",), **env)
        before = await master_summary(fleet.nc)
        assert before is not None
        book = await snapshot_index(fleet.js)
        dsn = servers.database_dsn

        # Fault 1: the whole directory goes away, for longer than the confirmation period.
        shutil.rmtree(rules)

        async def holding_all() -> bool:
            return "rules directory missing" in await _reason(fleet)

        await until("the master holding every rule", holding_all, fleet.procs, "master")
        held_listing = await ControlClient(fleet.nc, timeout_s=15).rules_list()
        firing, retried = await _tag_round(fleet, "gone", events, book, seed=5)
        await asyncio.sleep(confirm_s + 1.5)
        still_holding = await holding_all()
        held_metric = http_metric(fleet.http_ports["master"], "ttp_master_held_deletes")
        gone_summary = await master_summary(fleet.nc)
        gone_rows = (await query(dsn, _LIVE_AND_DELETED))[0]

        # Healed: the same files come back (put in place at once, as a remount would: a copy
        # file by file could be read half-written, which is a rejection and a revision).
        os.rename(starter_pack_in(workdir / "rules.restored"), rules)
        healed = time.monotonic()

        async def released() -> bool:
            return (await _reason(fleet)) == "leader and caught up"

        await until("the hold released", released, fleet.procs, "master")
        recovery_s = time.monotonic() - healed
        back_summary = await master_summary(fleet.nc)
        # Normal service: an edit reaches the worker.
        edited = rule_files(rules)["R0001"]
        edited.write_text(with_version(edited.read_text(), 7))

        async def edit_published() -> bool:
            summary = await master_summary(fleet.nc)
            return summary is not None and summary["revision"] > before["revision"]

        await until("the edit published", edit_published, fleet.procs, "master")
        after_edit = await fleet.converged()

        # Fault 2: every file removed, the directory kept; confirmed after confirm_s.
        removed = 0
        for path in rule_files(rules).values():
            path.unlink()
            removed += 1

        async def holding_deletes() -> bool:
            return "are missing: holding" in await _reason(fleet)

        await until("the master holding the deletes", holding_deletes, fleet.procs, "master")
        held_rows = (await query(dsn, _LIVE_AND_DELETED))[0]

        async def all_deleted() -> bool:
            summary = await master_summary(fleet.nc)
            return summary is not None and summary["rules"] == 0

        await until("the confirmed deletes published", all_deleted, fleet.procs, "master")
        emptied = await fleet.converged()

        tags, messages = await read_tags(fleet.js)
        return ChaosRow(
            scenario="rules-vanish",
            faults="rm -rf rules/, then rm rules/*",
            edits=1 + removed,
            events=events,
            lost=len(firing - messages.keys()),
            duplicated=extra_tag_messages(messages),
            recovery_s=round(recovery_s, 2),
            details={
                "firing_events": len(firing),
                "publishes_retried": retried,
                "held_past_confirmation_while_missing": still_holding,
                "held_deletes_metric": held_metric,
                "rules_list_held_deletes": held_listing.held_deletes,
                "revision_before": before["revision"],
                "revision_while_missing": gone_summary and gone_summary["revision"],
                "revision_after_restore": back_summary and back_summary["revision"],
                "revision_after_edit": after_edit["revision"],
                "rows_while_missing": dict(gone_rows),
                "rows_while_emptied_and_held": dict(held_rows),
                "rules_after_confirmation": emptied["rules"],
                "unexpected_tags": len(tags.keys() - firing),
            },
        )


__all__ = ["rules_vanish"]
