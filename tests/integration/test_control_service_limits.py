"""The control service under a flood and under an unexpected failure, on real NATS and
PostgreSQL (see docs/operations.md, runbook *The control service is busy or failing*).

- At most `max_concurrent` requests are worked on at once: while the test holds a table lock
  in PostgreSQL, the first requests wait in the database and every further one is answered
  `busy` at once; once the lock goes, the waiting ones are answered. Nothing hangs.
- An unexpected failure (the test renames a table the master reads) is answered `internal`
  with a correlation id, and the master logs the exception with that same id; the reply
  carries none of the exception's text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from harness.master import query, wait_until
from ttp_core.contract import subjects
from ttp_core.contract.control import ErrorCode, StateGetRequest, StateList
from ttp_core.contract.payloads import RulesetRevision
from ttp_master.caller_identity import IdentityPolicy
from ttp_master.control_service import ControlService, LeaderTerm
from ttp_master.db.migrate import upgrade_to_head
from ttp_master.db.queries import ControlQueries
from ttp_master.fleet_tracker import FleetTracker
from ttp_runtime.control_client import ControlClient, ControlClientError
from ttpctl.exit_codes import ExitCode, exit_code_for

CAP = 5
FLOOD = 40
_HANG_GUARD_S = 30.0
"""Far beyond any answer's time: only a hang reaches it."""

UNVERIFIED = IdentityPolicy(require_verified=False)
"""The test server authenticates nobody: requests carry no verified identity."""


async def _summary() -> RulesetRevision:
    return RulesetRevision(revision=1, rules=0, active=0, external=0, rejected=0, digest="d")


class Rig:
    def __init__(self, client: Client, engine: AsyncEngine, control: ControlService) -> None:
        self.client = client
        self.engine = engine
        self.control = control


@pytest.fixture
async def rig(private_nats: Any, database_url: str) -> AsyncIterator[Rig]:
    await asyncio.to_thread(upgrade_to_head, database_url)
    # More pooled connections than the cap: the cap, not the pool, must be what limits.
    engine = create_async_engine(database_url, pool_size=CAP * 3, max_overflow=0)
    service_nc = await nats.connect(private_nats.url)
    client = await nats.connect(private_nats.url)
    control = ControlService(service_nc, FleetTracker(), max_concurrent=CAP, identity=UNVERIFIED)
    # state.get reads only through the queries; the other parts are never reached here.
    term = LeaderTerm(
        repository=None,  # type: ignore[arg-type]
        queries=ControlQueries(engine),
        scheduler=None,  # type: ignore[arg-type]
        summary=_summary,
    )
    await control.serve_leader(term)
    try:
        yield Rig(client, engine, control)
    finally:
        await control.stop()
        await client.close()
        await service_nc.close()
        await engine.dispose()


async def _lock_waiters(dsn: str) -> int:
    rows = await query(
        dsn,
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    return int(rows[0]["n"])


async def test_a_flood_runs_at_most_the_cap_and_every_other_request_is_told_busy(
    rig: Rig, database_url: str, database_dsn: str
) -> None:
    ctl = ControlClient(rig.client, timeout_s=_HANG_GUARD_S)
    locker = create_async_engine(database_url)
    try:
        async with locker.connect() as lock_conn:
            # Held from outside the master: every read of operator state waits behind it.
            await lock_conn.execute(text("LOCK TABLE ttp_rule_state IN ACCESS EXCLUSIVE MODE"))

            async def ask() -> StateList | ControlClientError:
                try:
                    return await ctl.state_get(StateGetRequest())
                except ControlClientError as exc:
                    return exc

            calls = [asyncio.create_task(ask()) for _ in range(FLOOD)]

            async def refused_all_but_the_cap() -> bool:
                return sum(call.done() for call in calls) == FLOOD - CAP

            await wait_until(refused_all_but_the_cap, "the requests over the cap answered")
            peak = 0

            async def all_held() -> bool:
                nonlocal peak
                waiting = await _lock_waiters(database_dsn)
                peak = max(peak, waiting)
                return waiting == CAP

            await wait_until(all_held, "the capped requests waiting on the lock")
            assert REGISTRY.get_sample_value("ttp_master_control_in_flight") == CAP
            refused = [call.result() for call in calls if call.done()]
            await lock_conn.rollback()

        answers = await asyncio.wait_for(asyncio.gather(*calls), _HANG_GUARD_S)
    finally:
        await locker.dispose()

    assert peak == CAP  # never more than the cap waited in the database
    assert all(isinstance(r, ControlClientError) for r in refused)
    busy = [a for a in answers if isinstance(a, ControlClientError)]
    served = [a for a in answers if isinstance(a, StateList)]
    assert len(served) == CAP
    assert len(busy) == FLOOD - CAP
    assert {b.code for b in busy} == {ErrorCode.BUSY}
    assert {exit_code_for(b.code) for b in busy} == {ExitCode.UNAVAILABLE}
    assert all("retry" in b.message and "TTP_CONTROL_MAX_CONCURRENT" in b.message for b in busy)
    # The slots are free again.
    assert isinstance(await ctl.state_get(StateGetRequest()), StateList)


async def test_an_unexpected_failure_answers_a_correlation_id_that_the_log_has_too(
    rig: Rig, database_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Done to the database from outside: the master's query now names a missing table.
    await query(database_dsn, "ALTER TABLE ttp_rule_state RENAME TO ttp_rule_state_moved")
    caplog.set_level(logging.ERROR, logger="ttp_master.control_service")

    msg = await rig.client.request(
        subjects.control("state.get"), b'{"rule_id": "R0001"}', timeout=_HANG_GUARD_S
    )

    reply = json.loads(msg.data)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "internal"
    found = re.fullmatch(
        r"internal error; correlation id ([0-9a-f]{32})", reply["error"]["message"]
    )
    assert found is not None, reply
    correlation_id = found.group(1)
    headers = msg.headers or {}
    assert headers["Nats-Service-Error-Code"] == "500"
    assert headers["Nats-Service-Error"] == reply["error"]["message"]
    # Nothing of the exception reaches the client: no table, no error class, no SQL.
    for leak in ("ttp_rule_state", "UndefinedTable", "ProgrammingError", "SELECT", 'relation "'):
        assert leak not in msg.data.decode(), leak
        assert all(leak not in value for value in headers.values()), leak

    logged = [r for r in caplog.records if r.getMessage() == "control request failed"]
    assert [getattr(r, "correlation_id", None) for r in logged] == [correlation_id]
    record = logged[0]
    assert getattr(record, "endpoint", None) == "state.get"
    assert record.exc_info is not None
    assert "ttp_rule_state" in str(record.exc_info[1])  # the log has the whole story

    # ttpctl shows the id and exits 4.
    with pytest.raises(ControlClientError) as caught:
        await ControlClient(rig.client).state_get(StateGetRequest(rule_id="R0001"))
    assert caught.value.code is ErrorCode.INTERNAL
    assert exit_code_for(caught.value.code) is ExitCode.UNAVAILABLE
    assert re.fullmatch(r"internal error; correlation id [0-9a-f]{32}", str(caught.value))


async def test_a_standby_over_its_cap_leaves_requests_to_the_leader(private_nats: Any) -> None:
    # A standby answers late on purpose; a `busy` from it would beat the leader's answer.
    leader_nc = await nats.connect(private_nats.url)
    standby_nc = await nats.connect(private_nats.url)
    client = await nats.connect(private_nats.url)
    leader = ControlService(leader_nc, FleetTracker(), max_concurrent=FLOOD, identity=UNVERIFIED)
    standby = ControlService(standby_nc, FleetTracker(), max_concurrent=2, identity=UNVERIFIED)
    revision_only = LeaderTerm(
        repository=None,  # type: ignore[arg-type]
        queries=None,  # type: ignore[arg-type]
        scheduler=None,  # type: ignore[arg-type]
        summary=_summary,
    )
    try:
        await leader.serve_leader(revision_only)
        await standby.serve_standby()
        replies = await asyncio.wait_for(
            asyncio.gather(
                *(
                    client.request(subjects.control("revision"), b"{}", timeout=_HANG_GUARD_S)
                    for _ in range(FLOOD)
                )
            ),
            _HANG_GUARD_S,
        )
        bodies = [json.loads(msg.data) for msg in replies]
        assert [body["ok"] for body in bodies] == [True] * FLOOD, bodies
    finally:
        await standby.stop()
        await leader.stop()
        await client.close()
        await standby_nc.close()
        await leader_nc.close()
