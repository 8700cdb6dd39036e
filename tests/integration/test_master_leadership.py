"""Two masters, one leader (see docs/operations.md): only the holder of the PostgreSQL
advisory lock writes and publishes; a standby takes over when the leader goes; a master
that loses its lock can no longer write.

In-process: both masters run as tasks of this test against one database, one rules
directory and the test's own NATS server. (`tests/e2e/test_master_process.py` does the same
with real processes and `kill -9`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from harness.master import (
    BusRecorder,
    Markers,
    check_reloaded,
    db_events,
    db_rules,
    install,
    master_settings,
    query,
    rule_events,
    rule_text,
    running_master,
    wait_until,
    with_version,
)

TAKEOVER_TIMEOUT_S = 30.0
"""Generous: the standby polls the lock every second."""


async def lock_sessions(dsn: str) -> list[dict[str, Any]]:
    """The masters' leader-lock connections and whether each holds the advisory lock."""
    return await query(
        dsn,
        "SELECT a.pid, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
        "AND l.locktype = 'advisory' AND l.granted) AS holds "
        "FROM pg_stat_activity a WHERE a.application_name = 'ttp-master-leader' "
        "AND a.datname = current_database()",
    )


async def test_only_the_leader_writes_and_the_standby_takes_over(
    private_nats: Any, database_url: str, database_dsn: str, tmp_path: Path, bus: BusRecorder
) -> None:
    rules = tmp_path / "rules"
    placed = install(rules, ["R0001", "R0023"])
    settings = master_settings(private_nats.url, database_url, rules)
    markers = Markers(bus, rules)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_master(settings))
        second = await stack.enter_async_context(running_master(settings, ready=False))

        # The second master is a hot standby: connected, trying the lock, not leading.
        async def both_contend() -> bool:
            sessions = await lock_sessions(database_dsn)
            return len(sessions) == 2 and sum(s["holds"] for s in sessions) == 1

        await wait_until(both_contend, "both masters to contend for the lock")
        assert first.master.state.readiness() == (True, "leader and caught up")
        ready, reason = second.master.state.readiness()
        assert not ready and "standby" in reason
        assert not second.master.state.leader

        # An edit is written and published once (by the leader), not once per master.
        path = placed["R0023"]
        outbox = len(await db_events(database_dsn))
        events = await markers.observe(lambda: path.write_text(with_version(rule_text("R0023"), 2)))
        (reloaded,) = rule_events(events)
        check_reloaded(
            reloaded, rules, "execution/R0023.yaml", (await db_rules(database_dsn))["R0023"]
        )
        assert len(await db_events(database_dsn)) == outbox + 3  # the edit + two markers
        assert second.master.state.last_sync is None  # the standby never synced anything
        assert second.master.state.terms == 0

        # The leader goes away; the standby takes over and carries on.
        stopped_at = time.monotonic()
        await first.stop()
        await second.ready(timeout=TAKEOVER_TIMEOUT_S)
        takeover_s = time.monotonic() - stopped_at
        print(f"standby took over after {takeover_s:.2f} s")
        assert second.master.state.terms == 1

        position = len(bus.messages)
        events = await markers.observe(lambda: path.write_text(with_version(rule_text("R0023"), 3)))
        (reloaded_again,) = rule_events(events)
        assert reloaded_again.data["revision"] > reloaded.data["revision"]
        check_reloaded(
            reloaded_again, rules, "execution/R0023.yaml", (await db_rules(database_dsn))["R0023"]
        )
        # Taking over republished nothing: its startup reconcile found everything current.
        taken_over = [m for m in bus.messages[position:] if m.kind != "ruleset"]
        assert [m.rule_id for m in taken_over if not m.is_marker] == ["R0023"]


async def test_a_leader_that_loses_its_lock_steps_down(
    private_nats: Any, database_url: str, database_dsn: str, tmp_path: Path, bus: BusRecorder
) -> None:
    """The leader's lock session is killed (a network cut, an admin): it must notice, stop
    leading, and the fleet must end up with exactly one working leader again."""
    rules = tmp_path / "rules"
    placed = install(rules, ["R0001", "R0023"])
    settings = master_settings(private_nats.url, database_url, rules)
    markers = Markers(bus, rules)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_master(settings))
        second = await stack.enter_async_context(running_master(settings, ready=False))
        await wait_until(lambda: _count(lock_sessions(database_dsn), 2), "both masters to contend")
        (holder,) = [s["pid"] for s in await lock_sessions(database_dsn) if s["holds"]]
        await query(database_dsn, "SELECT pg_terminate_backend(%s)", holder)

        async def first_stepped_down() -> bool:
            return first.master.state.terms == 2 or (
                not first.master.state.leader and second.master.state.leader
            )

        await wait_until(first_stepped_down, "the leader to notice", TAKEOVER_TIMEOUT_S)

        async def one_leader_ready() -> bool:
            states = [first.master.state.readiness()[0], second.master.state.readiness()[0]]
            return states.count(True) == 1

        await wait_until(one_leader_ready, "one leader again", TAKEOVER_TIMEOUT_S)
        outbox = len(await db_events(database_dsn))
        events = await markers.observe(
            lambda: placed["R0023"].write_text(with_version(rule_text("R0023"), 2))
        )
        (reloaded,) = rule_events(events)
        check_reloaded(
            reloaded, rules, "execution/R0023.yaml", (await db_rules(database_dsn))["R0023"]
        )
        assert len(await db_events(database_dsn)) == outbox + 3  # the edit + two markers
        assert sum(s["holds"] for s in await lock_sessions(database_dsn)) == 1


async def _count(rows: Any, expected: int) -> bool:
    return len(await rows) == expected


async def test_writes_are_fenced_by_the_lock(database_url: str, database_dsn: str) -> None:
    """Once its lock session is gone, a master's write fails and leaves nothing behind,
    even before its own lock watch has noticed."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from ttp_core.rules.validator import RuleValidator
    from ttp_master.db.migrate import upgrade_to_head
    from ttp_master.db.repository import (
        ChangeSet,
        LeadershipLostError,
        RuleRepository,
        RuleUpsert,
    )
    from ttp_master.leader import LeaderLock

    await asyncio.to_thread(upgrade_to_head, database_url)
    report = RuleValidator().validate_bytes(rule_text("R0023").encode(), "R0023.yaml", stem="R0023")
    assert report.compiled is not None
    compiled = report.compiled
    change = ChangeSet(
        upserts=[
            RuleUpsert(
                rule_id="R0023",
                rule_version=compiled.rule_version,
                name=compiled.rule.name,
                content_sha256=compiled.content_sha256,
                definition=compiled.rule.normalised(),
                yaml_text=rule_text("R0023"),
                source_path="R0023.yaml",
                is_external=False,
            )
        ]
    )
    engine = create_async_engine(database_url)
    lock = LeaderLock(database_url, 0x7474_7072)
    try:
        assert await lock.acquire(asyncio.Event())
        repository = RuleRepository(engine, lock.fence)
        assert len(await repository.apply(change, actor="test")) == 1  # while it leads
        await query(database_dsn, "DELETE FROM ttp_rule_event")
        await query(database_dsn, "DELETE FROM ttp_rule")

        assert lock.fence is not None
        await query(database_dsn, "SELECT pg_terminate_backend(%s)", lock.fence.backend_pid)
        await wait_until(lambda: _count(lock_sessions(database_dsn), 0), "the lock session to end")
        with pytest.raises(LeadershipLostError):
            await repository.apply(change, actor="test")
        assert await query(database_dsn, "SELECT * FROM ttp_rule") == []
        assert await query(database_dsn, "SELECT * FROM ttp_rule_event") == []
    finally:
        await lock.release()
        await engine.dispose()
