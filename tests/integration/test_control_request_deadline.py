"""A control request's deadline (header `Ttp-Deadline`), on a real NATS server.

A master that gets to a request after its caller stopped waiting (beyond the clock-skew
allowance) neither acts on it nor answers it, so what the caller was told (a standby's
`not_leader`, or its own timeout) stays true. A deadline within the allowance is served, a
request without one is served as before, and a header that names no time is a
`bad_request`. The shared control client (ttpctl, the console) sends the deadline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from ttp_core.contract import subjects
from ttp_core.contract.control import DEADLINE_HEADER, format_deadline, parse_deadline
from ttp_core.contract.payloads import RulesetRevision
from ttp_master.caller_identity import IdentityPolicy
from ttp_master.control_service import STANDBY_REPLY_DELAY_S, ControlService, LeaderTerm
from ttp_master.fleet_tracker import FleetTracker
from ttp_runtime.control_client import ControlClient

UNVERIFIED = IdentityPolicy(require_verified=False)
"""The test server authenticates nobody: requests carry no verified identity."""
SKEW_S = 2.0
NO_ANSWER_WAIT_S = 1.0
"""Long enough for a leader to answer a request it serves (it answers in milliseconds)."""


class Revisions:
    """The revision endpoint's source: counts how often the master actually worked."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> RulesetRevision:
        self.calls += 1
        return RulesetRevision(revision=7, rules=1, active=1, external=0, rejected=0, digest="d")


class Rig:
    def __init__(self, client: Client, control: ControlService, revisions: Revisions) -> None:
        self.client = client
        self.control = control
        self.revisions = revisions

    async def ask(self, headers: dict[str, str] | None, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.client.request(
            subjects.control("revision"), b"{}", timeout=timeout, headers=headers
        )
        reply: dict[str, Any] = json.loads(msg.data)
        return reply


def _expired_count() -> float:
    value = REGISTRY.get_sample_value(
        "ttp_master_control_requests_total", {"endpoint": "revision", "outcome": "expired"}
    )
    return value or 0.0


def _deadline_in(seconds: float) -> dict[str, str]:
    return {DEADLINE_HEADER: format_deadline(time.time() + seconds)}


async def _serve(url: str, revisions: Revisions, *, leader: bool) -> tuple[Client, ControlService]:
    nc = await nats.connect(url)
    control = ControlService(nc, FleetTracker(), identity=UNVERIFIED, clock_skew_s=SKEW_S)
    if leader:
        # The revision endpoint needs only the summary; the rest is never reached here.
        term = LeaderTerm(repository=None, queries=None, scheduler=None, summary=revisions)  # type: ignore[arg-type]
        await control.serve_leader(term)
    else:
        await control.serve_standby()
    return nc, control


@pytest.fixture
async def rig(private_nats: Any) -> AsyncIterator[Rig]:
    revisions = Revisions()
    service_nc, control = await _serve(private_nats.url, revisions, leader=True)
    client = await nats.connect(private_nats.url)
    try:
        yield Rig(client, control, revisions)
    finally:
        await control.stop()
        await client.close()
        await service_nc.close()


async def test_a_request_whose_caller_stopped_waiting_is_neither_done_nor_answered(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ttp_master.control_service")
    expired_before = _expired_count()

    with pytest.raises(nats.errors.TimeoutError):
        await rig.ask(_deadline_in(-(SKEW_S + 5)), timeout=NO_ANSWER_WAIT_S)

    assert rig.revisions.calls == 0
    assert _expired_count() == expired_before + 1
    logged = [
        r for r in caplog.records if r.getMessage().startswith("control request not acted on")
    ]
    assert len(logged) == 1
    assert getattr(logged[0], "endpoint", None) == "revision"
    assert getattr(logged[0], "late_s", 0) > SKEW_S + 4


async def test_a_deadline_within_the_clock_skew_allowance_is_still_served(rig: Rig) -> None:
    # Passed by the master's clock, but by less than a caller's clock may lag behind.
    reply = await rig.ask(_deadline_in(-(SKEW_S / 2)))

    assert reply["ok"] is True
    assert reply["result"]["revision"] == 7
    assert rig.revisions.calls == 1


async def test_a_request_without_a_deadline_is_served_as_always(rig: Rig) -> None:
    reply = await rig.ask(None)

    assert reply["ok"] is True
    assert rig.revisions.calls == 1


@pytest.mark.parametrize(
    "header",
    ["soon", "nan", "inf", "-5", "1e12", "1765000000,5", " ", "9" * 13, "1765000000." + "5" * 10],
)
async def test_a_deadline_that_names_no_time_is_a_bad_request(rig: Rig, header: str) -> None:
    reply = await rig.ask({DEADLINE_HEADER: header})

    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_request"
    assert DEADLINE_HEADER in reply["error"]["message"]
    assert rig.revisions.calls == 0


async def test_a_standby_does_not_answer_a_caller_that_stopped_waiting(private_nats: Any) -> None:
    standby_nc, standby = await _serve(private_nats.url, Revisions(), leader=False)
    client = await nats.connect(private_nats.url)
    try:
        # The deadline passes (with the allowance) while the standby holds its answer back.
        headers = _deadline_in(STANDBY_REPLY_DELAY_S - SKEW_S - 1.0)
        with pytest.raises(nats.errors.TimeoutError):
            await client.request(
                subjects.control("revision"),
                b"{}",
                timeout=STANDBY_REPLY_DELAY_S + NO_ANSWER_WAIT_S,
                headers=headers,
            )
        # With time left it refuses, and says the leader may still act before the deadline.
        msg = await client.request(
            subjects.control("revision"), b"{}", timeout=5.0, headers=_deadline_in(5.0)
        )
        refused = json.loads(msg.data)
        assert refused["error"]["code"] == "not_leader"
        assert "deadline" in refused["error"]["message"]
    finally:
        await standby.stop()
        await client.close()
        await standby_nc.close()


async def test_the_control_client_sends_the_time_it_stops_waiting(rig: Rig) -> None:
    seen: list[dict[str, str]] = []

    async def watch(msg: Any) -> None:
        seen.append(dict(msg.headers or {}))

    # A plain subscriber (no queue group) gets its own copy of every request.
    await rig.client.subscribe(subjects.control("revision"), cb=watch)
    await rig.client.flush()
    sent_at = time.time()

    result = await ControlClient(rig.client, timeout_s=3.0).revision()

    assert result.revision == 7
    assert len(seen) == 1
    deadline = parse_deadline(seen[0][DEADLINE_HEADER])
    assert sent_at + 3.0 - 0.5 <= deadline <= time.time() + 3.0
