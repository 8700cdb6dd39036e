"""The operator control plane end to end: real master, workers, NATS, PostgreSQL.

Requests go over NATS to the master's `ttp-ctl` micro service exactly as ttpctl sends them,
from the operator's account (reads also from the viewer's); events come from the producer
role, tags are read as the consumer role, and each process runs as its own role.
"Every worker applied it" is judged by the fleet endpoint: each worker's status carries the
digest of the index it tags with, and the master's digest covers rule contents and operator
states, so a converged fleet at a revision means every worker holds that state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from harness.master import service_roles
from harness.nats_roles import RoleNats
from harness.processes import (
    Procs,
    master_summary,
    start_fleet,
    status_feed,
    stop,
    ttpctl,
    until,
)
from ttp_core.contract import subjects
from ttp_core.contract.control import DEADLINE_HEADER, Endpoint, format_deadline
from ttp_master.control_service import DEFAULT_CLOCK_SKEW_S, STANDBY_REPLY_DELAY_S
from ttp_runtime.nats_roles import Role

RULE = "R0014"  # shadow_file_dump: fires on "cat /etc/shadow" with confidence 0.9
BASE_CONFIDENCE = 0.9
WORKERS = ("w1", "w2")
OPERATOR = "OPERATORS/operator"
CONSOLE = "CONSOLE/console"
"""The operator as the master knows it: `<ACCOUNT>/<user>`, from the server's request info."""


async def ctl(
    nc: Client, endpoint: Endpoint, timeout: float = 5.0, **fields: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """One control request, with its deadline as ttpctl sends it; the reply and its headers."""
    body = json.dumps(fields, default=str).encode()
    deadline = {DEADLINE_HEADER: format_deadline(time.time() + timeout)}
    msg = await nc.request(
        subjects.control(endpoint.value), body, timeout=timeout, headers=deadline
    )
    return json.loads(msg.data), dict(msg.headers or {})


async def ok(nc: Client, endpoint: Endpoint, **fields: Any) -> dict[str, Any]:
    reply, _ = await ctl(nc, endpoint, **fields)
    assert reply["ok"] is True, reply
    result: dict[str, Any] = reply["result"]
    return result


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def fleet_at(nc: Client, revision: int, procs: Procs, *alive: str) -> dict[str, Any]:
    """Wait until the master reports every worker converged at `revision` or later."""

    async def check() -> dict[str, Any] | None:
        fleet = await ok(nc, Endpoint.FLEET)
        live = {w["worker_id"]: w for w in fleet["workers"] if not w["gone"]}
        if (
            fleet["converged"]
            and set(WORKERS) <= live.keys()
            and all(live[w]["revision"] >= revision for w in WORKERS)
        ):
            return fleet
        return None

    result: dict[str, Any] = await until(f"fleet at revision {revision}", check, procs, *alive)
    return result


class Tagger:
    """Publishes honeypot events and reads back the tags the workers produced for them.

    Three identities, as in production: the events come from a producer, the tags are read
    by a consumer, and whether the workers are done is read from their durable consumer with
    the worker's identity (the one role that may look at TTP_EVENTS' consumers).
    """

    def __init__(
        self,
        producer: JetStreamContext,
        consumer: JetStreamContext,
        worker: JetStreamContext,
        procs: Procs,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._worker = worker
        self._procs = procs
        self._round = 0

    async def round(self, count: int = 20) -> list[dict[str, Any]]:
        """`count` events that fire RULE; the tags of RULE found in their tag messages."""
        self._round += 1
        ids = {f"ctl-{self._round}-{n}" for n in range(count)}
        for source_id in sorted(ids):
            event = {
                "source_kind": "command",
                "source_id": source_id,
                "payload": {"command_text": "cat /etc/shadow"},
            }
            await self._producer.publish(subjects.event("command"), json.dumps(event).encode())

        async def processed() -> bool:
            info = await self._worker.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await until("events processed", processed, self._procs)
        tags: list[dict[str, Any]] = []
        for data in await self._tag_messages():
            if data["source_id"] in ids:
                tags.extend(t for t in data["tags"] if t["rule_id"] == RULE)
        return tags

    async def _tag_messages(self) -> list[dict[str, Any]]:
        total = (await self._consumer.stream_info(subjects.STREAM_TAGS)).state.messages
        if not total:
            return []
        sub = await self._consumer.pull_subscribe(
            "",
            stream=subjects.STREAM_TAGS,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
        )
        out: list[dict[str, Any]] = []
        try:
            while len(out) < total:
                for msg in await sub.fetch(min(500, total - len(out)), timeout=5):
                    out.append(json.loads(msg.data)["data"])
        finally:
            await sub.unsubscribe()
        return out


@dataclass(frozen=True)
class Bus:
    """A test's clients, each as the least role that does its part."""

    watch: Client
    """consumer: rules (the master's summary), worker status."""
    operator: Client
    viewer: Client
    console: Client
    """The web console's identity: the one role that may name a user it acts for."""
    tagger: Tagger
    statuses: dict[str, dict[str, Any]]


@contextlib.asynccontextmanager
async def clients(roles: RoleNats, procs: Procs) -> AsyncIterator[Bus]:
    """Clients as consumer, operator, viewer, console, and a tagger (producer, consumer,
    worker)."""
    async with contextlib.AsyncExitStack() as stack:
        nc: dict[Role, Client] = {}
        for role in ("consumer", "operator", "viewer", "console", "producer", "worker"):
            nc[role] = await stack.enter_async_context(roles.client(role))
        statuses = await stack.enter_async_context(status_feed(nc["consumer"]))
        tagger = Tagger(
            nc["producer"].jetstream(), nc["consumer"].jetstream(), nc["worker"].jetstream(), procs
        )
        yield Bus(nc["consumer"], nc["operator"], nc["viewer"], nc["console"], tagger, statuses)


async def test_disable_clip_and_clear_reach_every_worker_and_the_audit(
    procs: Procs, roles: RoleNats
) -> None:
    async with clients(roles, procs) as bus:
        await start_fleet(procs, bus.watch, bus.statuses, WORKERS)
        tagger = bus.tagger
        baseline = await tagger.round()
        assert len(baseline) == 20
        assert {t["confidence"] for t in baseline} == {BASE_CONFIDENCE}

        # The web console acts for its logged-in users: the actor is who the server
        # authenticated, the request's actor the user it acted for.
        changed = await ok(
            bus.console,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="disabled",
            reason="noisy",
            actor="alice",
        )
        assert changed["state"]["state"] == "disabled"
        assert changed["state"]["set_by"] == CONSOLE
        assert changed["state"]["on_behalf_of"] == "alice"
        await fleet_at(bus.viewer, changed["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []

        clipped = await ok(
            bus.console,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="clipped",
            confidence_max=0.5,
            reason="incident 42",
            actor="bob",
        )
        await fleet_at(bus.viewer, clipped["revision"], procs, "master", *WORKERS)
        lowered = await tagger.round()
        assert len(lowered) == 20
        assert {t["confidence"] for t in lowered} == {0.5}

        cleared = await ok(bus.console, Endpoint.STATE_CLEAR, rule_id=RULE, actor="carol")
        assert cleared["state"]["state"] == "enabled"
        await fleet_at(bus.viewer, cleared["revision"], procs, "master", *WORKERS)
        back = await tagger.round()
        assert len(back) == 20
        assert {t["confidence"] for t in back} == {BASE_CONFIDENCE}

        shown = await ok(bus.viewer, Endpoint.STATE_GET, rule_id=RULE)
        assert shown["states"][0]["state"] == "enabled"

        audit = await ok(bus.viewer, Endpoint.AUDIT, rule_id=RULE)
        entries = audit["entries"]
        revisions = [e["revision"] for e in entries]
        assert revisions == sorted(revisions)
        assert [e["kind"] for e in entries] == ["reloaded", "state", "state", "state"]
        assert [e["actor"] for e in entries[1:]] == [CONSOLE] * 3
        assert [e["on_behalf_of"] for e in entries[1:]] == ["alice", "bob", "carol"]
        assert [e["data"]["state"] for e in entries[1:]] == ["disabled", "clipped", "enabled"]
        assert revisions[1:] == [
            changed["revision"],
            clipped["revision"],
            cleared["revision"],
        ]
        assert "noisy" in entries[1]["summary"]
        await stop(procs.procs["master"], "master", procs)


async def test_a_state_expires_by_itself_and_the_rule_fires_again(
    procs: Procs, roles: RoleNats
) -> None:
    async with clients(roles, procs) as bus:
        await start_fleet(procs, bus.watch, bus.statuses, WORKERS)
        tagger = bus.tagger
        expires_at = datetime.now(UTC) + timedelta(seconds=2)
        changed = await ok(
            bus.operator,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="disabled",
            expires_at=expires_at.isoformat(),
            reason="2 s test",
        )
        await fleet_at(bus.viewer, changed["revision"], procs, "master", *WORKERS)

        async def reverted() -> dict[str, Any] | None:
            entries = (await ok(bus.viewer, Endpoint.AUDIT, rule_id=RULE))["entries"]
            expired = [e for e in entries if e["data"].get("cause") == "expired"]
            return expired[0] if expired else None

        revert = await until("the expiry's revert", reverted, procs, "master")
        assert revert["actor"] == "ttp-master"
        assert revert["data"]["state"] == "enabled"
        assert revert["revision"] > changed["revision"]
        reverted_at = datetime.fromisoformat(revert["data"]["set_at"])
        assert reverted_at >= expires_at
        # The issue asks for "within 1 s"; bench/control.py measures it. Here only a generous
        # bound that still proves the revert was scheduled, not left to a periodic backstop.
        assert reverted_at - expires_at < timedelta(seconds=10)

        await fleet_at(bus.viewer, revert["revision"], procs, "master", *WORKERS)
        assert len(await tagger.round()) == 20
        state = (await ok(bus.viewer, Endpoint.STATE_GET, rule_id=RULE))["states"][0]
        assert state["state"] == "enabled"
        assert state["revision"] is None  # no row: the default
        await stop(procs.procs["master"], "master", procs)


async def test_an_expiry_during_master_downtime_is_reverted_at_restart(
    procs: Procs, roles: RoleNats
) -> None:
    async with clients(roles, procs) as bus:
        await start_fleet(procs, bus.watch, bus.statuses, WORKERS)
        tagger = bus.tagger
        expires_at = datetime.now(UTC) + timedelta(seconds=3)
        changed = await ok(
            bus.operator,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="disabled",
            expires_at=expires_at.isoformat(),
            reason="short",
        )
        await fleet_at(bus.viewer, changed["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []
        await stop(procs.procs["master"], "master", procs)
        # Half a second past the expiry, which the steps above have partly waited out.
        await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() + 0.5)
        # With the master down, workers honour the passed expiry on their own.
        assert len(await tagger.round()) == 20

        procs.start("master", "ttp-master", role="master")

        async def reverted() -> list[dict[str, Any]] | None:
            reply, _ = await ctl(bus.viewer, Endpoint.AUDIT, timeout=2.0, rule_id=RULE)
            if not reply["ok"]:
                return None
            entries: list[dict[str, Any]] = reply["result"]["entries"]
            return entries if any(e["data"].get("cause") == "expired" for e in entries) else None

        entries = await until("the revert after restart", reverted, procs, "master")
        assert entries[-1]["data"]["cause"] == "expired"
        assert entries[-1]["actor"] == "ttp-master"
        assert (await ok(bus.viewer, Endpoint.STATE_GET))["states"] == []
        await stop(procs.procs["master"], "master", procs)


async def test_state_survives_rule_edit_delete_and_re_add(
    procs: Procs, roles: RoleNats, rules_dir: Path
) -> None:
    async with clients(roles, procs) as bus:
        await start_fleet(procs, bus.watch, bus.statuses, WORKERS)
        tagger = bus.tagger
        changed = await ok(
            bus.operator,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="disabled",
            reason="keep",
        )
        path = rules_dir / f"{RULE}.yaml"
        text = path.read_text()
        path.write_text(text.replace("rule_version: 1", "rule_version: 2", 1))

        async def edited() -> dict[str, Any] | None:
            detail = await ok(bus.viewer, Endpoint.RULES_SHOW, rule_id=RULE)
            return detail if detail["rule_version"] == 2 else None

        detail = await until("the edit", edited, procs, "master")
        assert detail["state"]["state"] == "disabled"
        assert detail["revision"] > changed["revision"]
        await fleet_at(bus.viewer, detail["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []

        path.unlink()

        async def deleted() -> bool:
            return bool(
                (await ok(bus.viewer, Endpoint.RULES_SHOW, rule_id=RULE))["status"] == "deleted"
            )

        await until("the delete", deleted, procs, "master")
        path.write_text(text)

        async def re_added() -> dict[str, Any] | None:
            detail = await ok(bus.viewer, Endpoint.RULES_SHOW, rule_id=RULE)
            return detail if detail["status"] == "active" else None

        detail = await until("the re-add", re_added, procs, "master")
        assert detail["state"]["state"] == "disabled"
        assert detail["state"]["reason"] == "keep"
        await fleet_at(bus.viewer, detail["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []
        await stop(procs.procs["master"], "master", procs)


async def test_bad_requests_get_structured_errors(procs: Procs, roles: RoleNats) -> None:
    async with clients(roles, procs) as bus:
        procs.start("master", "ttp-master", role="master")

        async def serving() -> bool:
            reply, _ = await ctl(bus.viewer, Endpoint.REVISION, timeout=1.0)
            return bool(reply["ok"])

        await until("the control service", serving, procs, "master")
        base = {"rule_id": RULE, "state": "disabled", "reason": "r"}
        cases: list[tuple[dict[str, Any], str, str | None, str]] = [
            (
                {**base, "state": "clipped", "confidence_max": 1.5},
                "bad_request",
                "confidence_max",
                "400",
            ),
            ({**base, "state": "clipped"}, "bad_request", None, "400"),
            ({k: v for k, v in base.items() if k != "reason"}, "bad_request", "reason", "400"),
            ({**base, "reason": "   "}, "bad_request", "reason", "400"),
            ({**base, "actor": ""}, "bad_request", "actor", "400"),
            # Only the console may name a user it acts for; this client is an operator.
            ({**base, "actor": "alice"}, "forbidden", "actor", "403"),
            ({**base, "expires_at": in_seconds(-60)}, "bad_request", "expires_at", "400"),
            ({**base, "expires_at": "2030-01-01T00:00:00"}, "bad_request", "expires_at", "400"),
            ({**base, "rule_id": "R9999"}, "unknown_rule", "rule_id", "404"),
            ({**base, "rule_id": "not a token"}, "bad_request", "rule_id", "400"),
            ({**base, "colour": "red"}, "bad_request", "colour", "400"),
        ]
        for fields, code, field, status in cases:
            reply, headers = await ctl(bus.operator, Endpoint.STATE_SET, **fields)
            assert reply["ok"] is False, fields
            assert reply["error"]["code"] == code, (fields, reply)
            assert reply["error"]["field"] == field, (fields, reply)
            assert reply["error"]["message"]
            assert headers["Nats-Service-Error-Code"] == status
            assert headers["Nats-Service-Error"] == reply["error"]["message"]

        raw = await bus.operator.request(subjects.control("state.set"), b"{not json", timeout=5)
        assert json.loads(raw.data)["error"]["code"] == "bad_request"

        # --force: a state may wait for a rule that does not exist yet.
        async with roles.client("admin") as admin:  # forcing is an admin's right
            forced = await ok(
                admin, Endpoint.STATE_SET, **{**base, "rule_id": "R9999", "force": True}
            )
        assert forced["state"]["state"] == "disabled"
        missing, _ = await ctl(bus.viewer, Endpoint.RULES_SHOW, rule_id="R9999")
        assert missing["error"]["code"] == "unknown_rule"
        assert (await ok(bus.viewer, Endpoint.STATE_GET))["states"][0]["rule_id"] == "R9999"
        await stop(procs.procs["master"], "master", procs)


async def test_a_standby_master_refuses_writes(procs: Procs, roles: RoleNats) -> None:
    async with clients(roles, procs) as bus:
        leader = procs.start("master", "ttp-master", role="master")

        async def serving() -> bool:
            reply, _ = await ctl(bus.viewer, Endpoint.REVISION, timeout=1.0)
            return bool(reply["ok"])

        await until("the leader's control service", serving, procs, "master")
        procs.start("standby", "ttp-master", role="master")

        async def both_registered() -> list[str] | None:
            roles = await service_roles(bus.operator)
            return roles if sorted(roles) == ["leader", "standby"] else None

        await until("leader and standby in $SRV.INFO", both_registered, procs, "standby")

        timeout = STANDBY_REPLY_DELAY_S + 1.0
        os.kill(leader.pid, signal.SIGSTOP)
        try:
            reply, headers = await ctl(
                bus.operator,
                Endpoint.STATE_SET,
                timeout=timeout,
                rule_id=RULE,
                state="disabled",
                reason="r",
            )
            # The frozen leader holds the request; it wakes only after the request's
            # deadline (and the clock-skew allowance) has passed.
            await asyncio.sleep(timeout - STANDBY_REPLY_DELAY_S + DEFAULT_CLOCK_SKEW_S + 0.5)
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "not_leader"
        assert "standby" in reply["error"]["message"]
        assert headers["Nats-Service-Error-Code"] == "503"

        async def dropped() -> bool:
            log = (procs.tmp / "master.log").read_text(errors="replace")
            return "control request not acted on" in log

        await until("the woken leader to drop the stale request", dropped, procs, "master")
        # The refusal stays true: the woken leader did not act on what it found queued.
        assert (await ok(bus.viewer, Endpoint.STATE_GET))["states"] == []

        await ok(bus.operator, Endpoint.STATE_SET, rule_id=RULE, state="disabled", reason="r")
        await stop(procs.procs["standby"], "standby", procs)
        await stop(leader, "master", procs)


async def test_fleet_reports_a_frozen_worker_as_behind(procs: Procs, roles: RoleNats) -> None:
    async with clients(roles, procs) as bus:
        # A 5 s heartbeat: the frozen worker is behind, not yet gone (that takes 3 intervals).
        await start_fleet(procs, bus.watch, bus.statuses, WORKERS, TTP_STATUS_INTERVAL_S="5")
        summary = await master_summary(bus.watch)
        assert summary is not None
        frozen = procs.procs["w2"]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            changed = await ok(
                bus.operator,
                Endpoint.STATE_SET,
                rule_id=RULE,
                state="disabled",
                reason="r",
            )

            async def w1_applied() -> dict[str, Any] | None:
                fleet = await ok(bus.viewer, Endpoint.FLEET)
                views = {w["worker_id"]: w for w in fleet["workers"]}
                # The fleet's revision is the newest the master marked published, which
                # can trail a fast worker's apply by the relay's bookkeeping commit.
                if (
                    fleet["revision"] >= changed["revision"]
                    and views["w1"]["revision"] >= changed["revision"]
                ):
                    return fleet
                return None

            fleet = await until("w1 applies the change", w1_applied, procs, "master", "w1")
            views = {w["worker_id"]: w for w in fleet["workers"]}
            assert fleet["converged"] is False
            assert views["w2"]["lag"] > 0
            assert views["w2"]["digest_matches"] is False
            # The frozen worker still shows the digest it last reported, the live one the
            # master's.
            assert views["w1"]["digest"] == fleet["digest"]
            assert views["w2"]["digest"] not in (None, fleet["digest"])
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        await fleet_at(bus.viewer, changed["revision"], procs, "master", *WORKERS)
        await stop(procs.procs["master"], "master", procs)


async def test_ttpctl_fleet_wait_succeeds_after_a_change_and_times_out_on_a_frozen_worker(
    procs: Procs, roles: RoleNats
) -> None:
    async with clients(roles, procs) as bus:
        # A 5 s heartbeat: a frozen worker stays "behind" (gone only after 15 s).
        await start_fleet(procs, bus.watch, bus.statuses, WORKERS, TTP_STATUS_INTERVAL_S="5")
        code, out, err = await ttpctl(
            procs, "operator", "state", "set", RULE, "--disable", "--for", "2h",
            "--reason", "noisy", "--json",
        )  # fmt: skip
        assert code == 0, err
        revision = json.loads(out)["revision"]
        code, out, err = await ttpctl(
            procs, "viewer", "fleet", "status", "--wait", str(revision), "--timeout", "20s"
        )
        assert code == 0, out + err
        assert "converged" in out

        code, out, err = await ttpctl(procs, "viewer", "state", "show", RULE, "--json")
        assert code == 0, err
        [shown] = json.loads(out)["states"]
        assert (shown["state"], shown["set_by"], shown["on_behalf_of"], shown["reason"]) == (
            "disabled",
            OPERATOR,
            None,
            "noisy",
        )

        frozen = procs.procs["w2"]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            code, out, err = await ttpctl(procs, "operator", "state", "clear", RULE, "--json")
            assert code == 0, err
            cleared = json.loads(out)["revision"]
            code, out, err = await ttpctl(
                procs, "viewer", "fleet", "status", "--wait", str(cleared), "--timeout", "3s"
            )
            assert code == 1, out + err
            assert "w2" in out + err
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        code, out, err = await ttpctl(
            procs, "viewer", "fleet", "status", "--wait", str(cleared), "--timeout", "20s"
        )
        assert code == 0, out + err

        code, out, err = await ttpctl(procs, "viewer", "audit", RULE, "--json")
        assert code == 0, err
        entries = json.loads(out)["entries"]
        assert [e["revision"] for e in entries[-2:]] == [revision, cleared]
        code, out, err = await ttpctl(procs, "viewer", "rules", "status")
        assert code == 0, out + err
        assert "No rejected rule files." in out
        code, _, err = await ttpctl(
            procs, "operator", "state", "set", "R9999", "--disable", "--reason", "x"
        )
        assert code == 3, err
        assert "R9999" in err
        await stop(procs.procs["master"], "master", procs)
