"""The master's control service across a standby -> leader switch, on a real NATS server.

Requests sent before, during and after the switch are all answered (never "no
responders", never a silent timeout), each exactly once; what a standby held is answered
by the leader it became.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats

from harness.master import service_roles
from ttp_core.contract import subjects
from ttp_core.contract.payloads import RulesetRevision
from ttp_master.caller_identity import IdentityPolicy
from ttp_master.control_service import STANDBY_REPLY_DELAY_S, ControlService, LeaderTerm
from ttp_master.fleet_tracker import FleetTracker

UNVERIFIED = IdentityPolicy(require_verified=False)
"""The test server authenticates nobody: requests carry no verified identity."""


async def _summary() -> RulesetRevision:
    return RulesetRevision(revision=7, rules=1, active=1, external=0, rejected=0, digest="d")


def _term() -> LeaderTerm:
    # The revision endpoint needs only the summary; the other parts are never reached here.
    return LeaderTerm(repository=None, queries=None, scheduler=None, summary=_summary)  # type: ignore[arg-type]


async def _ask(nc: Any) -> dict[str, Any]:
    msg = await nc.request(subjects.control("revision"), b"{}", timeout=STANDBY_REPLY_DELAY_S + 3)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def test_a_standby_refuses_then_answers_as_leader_without_a_gap(private_nats: Any) -> None:
    service_nc = await nats.connect(private_nats.url)
    client = await nats.connect(private_nats.url)
    control = ControlService(service_nc, FleetTracker(), identity=UNVERIFIED)
    try:
        await control.serve_standby()
        refused = await _ask(client)
        assert refused["ok"] is False
        assert refused["error"]["code"] == "not_leader"

        # Ask steadily while the role changes; each request has its own reply subject so
        # extra answers would show (a request library would drop them silently).
        prefix = client.new_inbox()
        answers: dict[str, list[dict[str, Any]]] = {}

        async def on_reply(msg: Any) -> None:
            answers.setdefault(msg.subject, []).append(json.loads(msg.data))

        await client.subscribe(f"{prefix}.*", cb=on_reply)
        sent = []

        async def keep_asking(stop: asyncio.Event) -> None:
            while not stop.is_set():
                reply_to = f"{prefix}.{len(sent)}"
                sent.append(reply_to)
                await client.publish(subjects.control("revision"), b"{}", reply=reply_to)
                await asyncio.sleep(0.02)

        stop = asyncio.Event()
        asker = asyncio.create_task(keep_asking(stop))
        await asyncio.sleep(0.5)  # some requests are now held by the standby
        await control.serve_leader(_term())
        await asyncio.sleep(0.5)
        stop.set()
        await asker
        await asyncio.sleep(STANDBY_REPLY_DELAY_S + 1.0)  # room for any late extra answer

        assert len(sent) > 20
        assert {r: len(answers.get(r, [])) for r in sent} == {r: 1 for r in sent}
        replies = [answers[r][0] for r in sent]
        assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]]
        assert {r["result"]["revision"] for r in replies} == {7}
        roles = await service_roles(client)
        assert roles == ["leader"]  # the standby registration is gone
    finally:
        await control.stop()
        await client.close()
        await service_nc.close()
