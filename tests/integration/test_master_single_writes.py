"""One saved file and one operator state change are written by one fenced statement each.

They must leave exactly the rows the general change-set transaction leaves for the same
change (rule, state and outbox/audit rows, the reply's state row), and write nothing at all
once the leader lock is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from harness.master import query, rule_upsert, wait_until
from ttp_master.db.migrate import upgrade_to_head
from ttp_master.db.queries import state_from_row
from ttp_master.db.repository import (
    Applied,
    ChangeSet,
    LeadershipLostError,
    RuleRepository,
    StateWrite,
)
from ttp_master.leader import LeaderLock

_VOLATILE = {"revision", "msg_id", "created_at", "updated_at", "set_at", "published_at"}
"""Columns that differ between two writes of the same change."""


@dataclass
class Leading:
    repository: RuleRepository
    lock: LeaderLock
    engine: AsyncEngine
    dsn: str


@pytest.fixture
async def leading(database_url: str, database_dsn: str) -> AsyncIterator[Leading]:
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_async_engine(database_url)
    lock = LeaderLock(database_url, 0x7474_7073)
    try:
        assert await lock.acquire(asyncio.Event())
        yield Leading(RuleRepository(engine, lock.fence), lock, engine, database_dsn)
    finally:
        await lock.release()
        await engine.dispose()


async def _general(repository: RuleRepository, changes: ChangeSet) -> Applied:
    """`changes` through the general change-set transaction, which a single change skips."""
    return await repository._write(changes, "tester", {"traceparent": "00-x"}, isolate=False)


async def _single(repository: RuleRepository, changes: ChangeSet) -> Applied:
    return await repository.apply_changes(
        changes, actor="tester", trace_headers={"traceparent": "00-x"}
    )


def _stable(row: dict[str, Any], revision: int) -> dict[str, Any]:
    """`row` without what two writes of one change cannot share; the revision inside the
    payload is checked against the row's own."""
    kept = {k: v for k, v in row.items() if k not in _VOLATILE}
    payload = kept.get("payload")
    if isinstance(payload, dict):
        assert payload["id"] == f"ttp-rev-{revision}"
        assert payload["data"]["revision"] == revision
        data = {k: v for k, v in payload["data"].items() if k not in {"revision", "set_at"}}
        kept["payload"] = {k: v for k, v in payload.items() if k not in {"id", "time"}} | {
            "data": data
        }
    return kept


async def _notified_revision(dsn: str, write: Any) -> str:
    """The payload of the outbox NOTIFY that `write` (a coroutine) makes PostgreSQL send."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
        await listener.execute("LISTEN ttp_outbox")
        await write
        async for notify in listener.notifies(timeout=30, stop_after=1):
            return notify.payload
    raise AssertionError("no NOTIFY on ttp_outbox")


async def _last_event(dsn: str) -> dict[str, Any]:
    rows = await query(dsn, "SELECT * FROM ttp_rule_event ORDER BY revision DESC LIMIT 1")
    return rows[0]


async def test_a_saved_file_writes_what_the_general_transaction_writes(leading: Leading) -> None:
    repository, dsn = leading.repository, leading.dsn
    written: list[list[dict[str, Any]] | None] = []
    repository.on_commit = written.append
    await query(
        dsn,
        "INSERT INTO ttp_rule_rejection (source_path, rule_id, errors) "
        "VALUES ('TTP-0001.yaml', 'TTP-0001', '[]')",
    )
    save = ChangeSet(upserts=[rule_upsert("TTP-0001")], cleared_rejections=["TTP-0001.yaml"])

    notified: list[int] = []
    repository.on_notify = notified.append
    applied: list[Applied] = []

    async def save_once() -> None:
        applied.append(await _single(repository, save))

    payload = await _notified_revision(dsn, save_once())
    single = applied[0]
    # The relay knew the NOTIFY's revision before the commit; PostgreSQL sent it at commit.
    assert notified == single.revisions and payload == str(single.revisions[0])
    single_rule = (await query(dsn, "SELECT * FROM ttp_rule"))[0]
    single_event = await _last_event(dsn)
    assert await query(dsn, "SELECT * FROM ttp_rule_rejection") == []
    assert single.rule_revisions == {"TTP-0001": single.revisions[0]}
    assert single_rule["revision"] == single_event["revision"] == single.revisions[0]
    # The relay is handed the very row that was stored.
    assert written[-1] is not None and written[-1][0]["revision"] == single.revisions[0]

    general = await _general(repository, save)
    general_rule = (await query(dsn, "SELECT * FROM ttp_rule"))[0]
    general_event = await _last_event(dsn)
    assert general.revisions[0] > single.revisions[0]
    assert _stable(single_rule, single.revisions[0]) == _stable(general_rule, general.revisions[0])
    assert _stable(single_event, single.revisions[0]) == _stable(
        general_event, general.revisions[0]
    )
    assert single_rule["created_at"] == general_rule["created_at"]  # an update keeps it


@pytest.mark.parametrize("state", ["disabled", "clipped", "enabled"])
async def test_a_state_change_writes_what_the_general_transaction_writes(
    leading: Leading, state: str
) -> None:
    repository, dsn = leading.repository, leading.dsn
    expires = datetime.now(UTC) + timedelta(hours=2)
    write = StateWrite(
        rule_id="TTP-0002",
        state=state,  # type: ignore[arg-type]
        set_by="operator:alice",
        reason="noisy",
        confidence_max=0.25 if state == "clipped" else None,
        expires_at=expires,
        on_behalf_of="bob",
    )
    before = StateWrite(rule_id="TTP-0002", state="disabled", set_by="operator:carol")
    changes = ChangeSet(state_writes=[write])

    results = []
    for apply in (_single, _general):
        await _general(repository, ChangeSet(state_writes=[before]))
        applied = await apply(repository, changes)
        rows = await query(dsn, "SELECT * FROM ttp_rule_state")
        results.append((applied, rows, await _last_event(dsn)))

    (single, single_rows, single_event), (general, general_rows, general_event) = results
    assert [_stable(r, 0) for r in single_rows] == [_stable(r, 0) for r in general_rows]
    assert _stable(single_event, single.revisions[0]) == _stable(
        general_event, general.revisions[0]
    )
    assert single_event["actor"] == "operator:alice"
    assert single_event["on_behalf_of"] == "bob"
    if state == "enabled":
        assert single_rows == [] and single.states == {}
    else:
        assert single_rows[0]["revision"] == single.revisions[0]
        replied = state_from_row(single.states["TTP-0002"])
        expected = state_from_row(general.states["TTP-0002"])
        assert replied.model_dump(exclude={"revision", "set_at"}) == expected.model_dump(
            exclude={"revision", "set_at"}
        )
        assert replied.revision == single.revisions[0]


async def _lock_gone(leading: Leading) -> None:
    fence = leading.lock.fence
    assert fence is not None
    await query(leading.dsn, "SELECT pg_terminate_backend(%s)", fence.backend_pid)

    async def released() -> bool:
        rows = await query(
            leading.dsn,
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s",
            fence.backend_pid,
        )
        return not rows

    await wait_until(released, "the lock session to end")


async def test_a_state_change_without_the_lock_writes_nothing(leading: Leading) -> None:
    repository, dsn = leading.repository, leading.dsn
    await _general(
        repository,
        ChangeSet(state_writes=[StateWrite("TTP-0003", "disabled", set_by="operator:a")]),
    )
    notified: list[int] = []
    repository.on_notify = notified.append
    committed: list[Any] = []
    repository.on_commit = committed.append
    state_before = await query(dsn, "SELECT * FROM ttp_rule_state")
    events_before = await query(dsn, "SELECT * FROM ttp_rule_event")
    await _lock_gone(leading)

    for state in ("clipped", "enabled"):
        change = ChangeSet(state_writes=[StateWrite("TTP-0003", state, set_by="operator:a")])  # type: ignore[arg-type]
        with pytest.raises(LeadershipLostError):
            await repository.apply_changes(change, actor="operator:a")
    with pytest.raises(LeadershipLostError):
        await repository.apply_changes(
            ChangeSet(upserts=[rule_upsert("TTP-0004")]), actor="operator:a"
        )

    assert await query(dsn, "SELECT * FROM ttp_rule_state") == state_before
    assert await query(dsn, "SELECT * FROM ttp_rule_event") == events_before
    assert await query(dsn, "SELECT * FROM ttp_rule") == []
    assert committed == []
