"""Chaos scenarios of the master: kill -9 storms during rule edits, and PostgreSQL away
(connections refused, or the path frozen) while rules change and operators send requests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.chaos import (
    ChaosRow,
    ChaosServers,
    RuleEditor,
    outbox_against_stream,
    postgres_differences,
    rule_files,
    running_fleet,
    start_and_converge,
    wait_disk_in_postgres,
)
from harness.master import (
    StoredLog,
    query,
)
from harness.processes import fleet_matches, master_summary, until
from harness.tcp_proxy import proxy_to, via
from ttp_core.contract import subjects
from ttp_core.contract.control import StateSetRequest
from ttp_runtime.control_client import ControlClient, ControlClientError

# --------------------------------------------------------------------------------------------
# Scenario: kill -9 of the master during rule edits
# --------------------------------------------------------------------------------------------


async def master_kill_storm(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    *,
    edits: int = 300,
    kills: int = 5,
    standby: bool = False,
    seed: int = 1,
) -> ChaosRow:
    """kill -9 of the leading master at random moments while rule files are created, changed
    and deleted; without a standby the killed master is restarted (as a supervisor would),
    with one the standby takes over and the killed process comes back as the new standby.

    Recovery is, per kill, from the fault healed (the restart; with a standby, the kill itself)
    to a master answering /readyz 200 (leader, outbox published); the row has the longest.
    Lost: outbox rows for TTP_RULES the stream never stored; duplicated: revisions it stored
    twice. `details` says whether PostgreSQL equals the disk and every worker the master."""
    rng = random.Random(seed)
    masters = ("master-a", "master-b") if standby else ("master-a",)
    async with running_fleet(servers, rules, workdir, ("k1", "k2")) as fleet:
        await start_and_converge(fleet, masters)
        start = await master_summary(fleet.nc)
        assert start is not None
        stored = await StoredLog(fleet.js).start()
        editor = RuleEditor(rules, rng)
        recoveries: list[float] = []

        async def killer() -> None:
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                victim = await fleet.leader(masters) or rng.choice(masters)
                fleet.kill_9(victim)
                healed = time.monotonic()
                if not standby:
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    healed = time.monotonic()
                fleet.start_master(victim)

                async def led() -> bool:
                    return await fleet.leader(masters) is not None

                await until("a leading master again", led, fleet.procs, timeout=60)
                recoveries.append(time.monotonic() - healed)

        kill_task = asyncio.create_task(killer())
        try:
            while editor.total < edits or not kill_task.done():
                editor.step()
                await asyncio.sleep(rng.uniform(0.005, 0.05))
            await kill_task
        finally:
            kill_task.cancel()
        edited = time.monotonic()

        await wait_disk_in_postgres(fleet, servers.database_dsn, rules, timeout=60)
        final = await fleet.converged()
        converged_s = time.monotonic() - edited
        count, lost, duplicated = await outbox_against_stream(
            servers.database_dsn, await stored.complete(), start["revision"]
        )
        await stored.stop()
        return ChaosRow(
            scenario="master-kill-storm" + ("-standby" if standby else ""),
            faults=f"{kills}x kill -9 master" + (" (standby)" if standby else ""),
            edits=editor.total,
            events=count,
            lost=lost,
            duplicated=duplicated,
            recovery_s=round(max(recoveries), 2),
            details={
                "edit_kinds": dict(editor.counts),
                "recoveries_s": [round(r, 2) for r in recoveries],
                "converged_after_last_edit_s": round(converged_s, 2),
                "postgres_differences": await postgres_differences(servers.database_dsn, rules),
                "rules": final["rules"],
                "workers_on_master_digest": fleet_matches(fleet.statuses, final, fleet.workers),
            },
        )


# --------------------------------------------------------------------------------------------
# Scenario: PostgreSQL unreachable while rules change and operators send state requests
# --------------------------------------------------------------------------------------------


@dataclass
class StateAttempt:
    """One `ttp.ctl.state.set` sent during the outage, and how it ended."""

    seconds: float
    code: str
    message: str


async def postgres_outage(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    *,
    outage_s: float = 6.0,
    edits: int = 8,
    state_requests: int = 3,
    freeze: bool = False,
    seed: int = 3,
) -> ChaosRow:
    """The master's path to PostgreSQL is cut (a `TcpProxy`: connections reset, new ones
    refused) or, with `freeze`, frozen (nothing gets through and nobody is told, as when
    packets are dropped) for `outage_s` while rule files change and `state.set` requests
    arrive through `ControlClient` (what `ttpctl state` uses). Then the path is restored.

    Found: the master's /readyz codes during the outage; each state request's error code,
    message and time to answer; whether TTP_RULES stored anything PostgreSQL does not hold
    ("unpersisted"); recovery is from the path restored to PostgreSQL equal to the disk and
    every worker on the master's digest. Lost: differences between PostgreSQL and the disk
    plus outbox rows never stored; duplicated: revisions stored twice."""
    rng = random.Random(seed)
    with proxy_to(servers.database_url, 5432) as db_path:
        async with running_fleet(
            servers, rules, workdir, ("p1", "p2"), database_url=via(servers.database_url, db_path)
        ) as fleet:
            await start_and_converge(fleet, ("master",))
            start = await master_summary(fleet.nc)
            assert start is not None
            stored = await StoredLog(fleet.js).start()
            client = ControlClient(fleet.nc, timeout_s=15)
            editor = RuleEditor(rules, rng)
            readiness: Counter[str] = Counter()
            attempts: list[StateAttempt] = []
            outage_over = asyncio.Event()

            async def watch_readiness() -> None:
                while not outage_over.is_set():
                    code, reason = await fleet.readyz_reason("master")
                    readiness[f"{code} {reason}"] += 1
                    await asyncio.sleep(0.1)

            async def ask_for_state(rule_id: str) -> None:
                asked = time.monotonic()
                request = StateSetRequest(rule_id=rule_id, state="disabled", reason="chaos: outage")
                try:
                    await client.state_set(request)
                    code, message = "ok", ""
                except ControlClientError as exc:
                    code, message = exc.code.value, str(exc)
                attempts.append(StateAttempt(round(time.monotonic() - asked, 2), code, message))

            watcher = asyncio.create_task(watch_readiness())
            if freeze:
                db_path.freeze()
            else:
                db_path.cut()
            cut = time.monotonic()
            requests: list[asyncio.Task[None]] = []
            steps = max(edits, state_requests)
            for step in range(steps):
                await asyncio.sleep(outage_s / (steps + 1))
                if step < edits:
                    editor.step()
                if step < state_requests:
                    rule_id = rng.choice(sorted(rule_files(rules)))
                    requests.append(asyncio.create_task(ask_for_state(rule_id)))
            await asyncio.gather(*requests)
            await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - cut)))
            db_path.restore()
            healed = time.monotonic()
            outage_over.set()
            await watcher

            with contextlib.suppress(AssertionError):  # what differs is counted below
                await wait_disk_in_postgres(fleet, servers.database_dsn, rules)
            await fleet.converged()
            recovery = time.monotonic() - healed
            after = time.monotonic()
            await client.state_set(
                StateSetRequest(
                    rule_id=sorted(rule_files(rules))[0],
                    state="disabled",
                    reason="chaos: after the outage",
                )
            )
            state_after_s = time.monotonic() - after
            final = await fleet.converged()  # the state change reached the workers too
            entries = await stored.complete()
            await stored.stop()
            count, unstored, duplicated = await outbox_against_stream(
                servers.database_dsn, entries, start["revision"]
            )
            persisted = {
                r["revision"] for r in await query(servers.database_dsn, _OUTBOX_REVISIONS)
            }
            unpersisted = [
                e.revision
                for e in entries
                if e.subject != subjects.RULESET_REVISION
                and e.revision is not None
                and e.revision not in persisted
            ]
            differences = await postgres_differences(servers.database_dsn, rules)
            return ChaosRow(
                scenario="postgres-frozen" if freeze else "postgres-outage",
                faults=f"PostgreSQL {'frozen' if freeze else 'cut'} {outage_s:g} s (proxy)",
                edits=editor.total,
                events=count,
                lost=len(differences) + unstored,
                duplicated=duplicated,
                recovery_s=round(recovery, 2),
                details={
                    "readyz_during_outage": dict(readiness),
                    "state_requests": [asdict(a) for a in attempts],
                    "state_set_after_outage_s": round(state_after_s, 2),
                    "unpersisted_published": unpersisted,
                    "postgres_differences": differences,
                    "workers_on_master_digest": fleet_matches(fleet.statuses, final, fleet.workers),
                },
            )


_OUTBOX_REVISIONS = "SELECT revision FROM ttp_rule_event"
