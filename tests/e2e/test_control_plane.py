"""The operator control plane end to end: real master, workers, NATS, PostgreSQL.

Requests go over NATS to the master's `ttp-ctl` micro service exactly as ttpctl sends them.
"Every worker applied it" is judged by the fleet endpoint: each worker's status carries the
digest of the index it tags with, and the master's digest covers rule contents and operator
states, so a converged fleet at a revision means every worker holds that state.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from harness.master import nats_client, service_roles
from harness.processes import BIN, Procs, master_summary, start_fleet, status_feed, stop, until
from ttp_core.contract import subjects
from ttp_core.contract.control import Endpoint

RULE = "R0014"  # shadow_file_dump: fires on "cat /etc/shadow" with confidence 0.9
BASE_CONFIDENCE = 0.9
WORKERS = ("w1", "w2")


async def ctl(
    nc: Client, endpoint: Endpoint, timeout: float = 5.0, **fields: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """One control request; the decoded reply and its headers."""
    body = json.dumps(fields, default=str).encode()
    msg = await nc.request(subjects.control(endpoint.value), body, timeout=timeout)
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
    """Publishes honeypot events and reads back the tags the workers produced for them."""

    def __init__(self, js: JetStreamContext, procs: Procs) -> None:
        self._js = js
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
            await self._js.publish(subjects.event("command"), json.dumps(event).encode())

        async def processed() -> bool:
            info = await self._js.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await until("events processed", processed, self._procs)
        tags: list[dict[str, Any]] = []
        for data in await self._tag_messages():
            if data["source_id"] in ids:
                tags.extend(t for t in data["tags"] if t["rule_id"] == RULE)
        return tags

    async def _tag_messages(self) -> list[dict[str, Any]]:
        total = (await self._js.stream_info(subjects.STREAM_TAGS)).state.messages
        if not total:
            return []
        sub = await self._js.pull_subscribe(
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


async def test_disable_clip_and_clear_reach_every_worker_and_the_audit(procs: Procs) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc, status_feed(nc) as statuses:
        await start_fleet(procs, nc, statuses, WORKERS)
        tagger = Tagger(nc.jetstream(), procs)
        baseline = await tagger.round()
        assert len(baseline) == 20
        assert {t["confidence"] for t in baseline} == {BASE_CONFIDENCE}

        changed = await ok(
            nc, Endpoint.STATE_SET, rule_id=RULE, state="disabled", reason="noisy", actor="alice"
        )
        assert changed["state"]["state"] == "disabled"
        assert changed["state"]["set_by"] == "alice"
        await fleet_at(nc, changed["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []

        clipped = await ok(
            nc,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="clipped",
            confidence_max=0.5,
            reason="incident 42",
            actor="bob",
        )
        await fleet_at(nc, clipped["revision"], procs, "master", *WORKERS)
        lowered = await tagger.round()
        assert len(lowered) == 20
        assert {t["confidence"] for t in lowered} == {0.5}

        cleared = await ok(nc, Endpoint.STATE_CLEAR, rule_id=RULE, actor="carol")
        assert cleared["state"]["state"] == "enabled"
        await fleet_at(nc, cleared["revision"], procs, "master", *WORKERS)
        back = await tagger.round()
        assert len(back) == 20
        assert {t["confidence"] for t in back} == {BASE_CONFIDENCE}

        shown = await ok(nc, Endpoint.STATE_GET, rule_id=RULE)
        assert shown["states"][0]["state"] == "enabled"

        audit = await ok(nc, Endpoint.AUDIT, rule_id=RULE)
        entries = audit["entries"]
        revisions = [e["revision"] for e in entries]
        assert revisions == sorted(revisions)
        assert [e["kind"] for e in entries] == ["reloaded", "state", "state", "state"]
        assert [e["actor"] for e in entries[1:]] == ["alice", "bob", "carol"]
        assert [e["data"]["state"] for e in entries[1:]] == ["disabled", "clipped", "enabled"]
        assert revisions[1:] == [
            changed["revision"],
            clipped["revision"],
            cleared["revision"],
        ]
        assert "noisy" in entries[1]["summary"]
        await stop(procs.procs["master"], "master", procs)


async def test_a_state_expires_by_itself_and_the_rule_fires_again(procs: Procs) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc, status_feed(nc) as statuses:
        await start_fleet(procs, nc, statuses, WORKERS)
        tagger = Tagger(nc.jetstream(), procs)
        expires_at = datetime.now(UTC) + timedelta(seconds=2)
        changed = await ok(
            nc,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="disabled",
            expires_at=expires_at.isoformat(),
            reason="2 s test",
            actor="alice",
        )
        await fleet_at(nc, changed["revision"], procs, "master", *WORKERS)

        async def reverted() -> dict[str, Any] | None:
            entries = (await ok(nc, Endpoint.AUDIT, rule_id=RULE))["entries"]
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

        await fleet_at(nc, revert["revision"], procs, "master", *WORKERS)
        assert len(await tagger.round()) == 20
        state = (await ok(nc, Endpoint.STATE_GET, rule_id=RULE))["states"][0]
        assert state["state"] == "enabled"
        assert state["revision"] is None  # no row: the default
        await stop(procs.procs["master"], "master", procs)


async def test_an_expiry_during_master_downtime_is_reverted_at_restart(procs: Procs) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc, status_feed(nc) as statuses:
        await start_fleet(procs, nc, statuses, WORKERS)
        tagger = Tagger(nc.jetstream(), procs)
        changed = await ok(
            nc,
            Endpoint.STATE_SET,
            rule_id=RULE,
            state="disabled",
            expires_at=in_seconds(3),
            reason="short",
            actor="alice",
        )
        await fleet_at(nc, changed["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []
        await stop(procs.procs["master"], "master", procs)
        await asyncio.sleep(3.5)
        # With the master down, workers honour the passed expiry on their own.
        assert len(await tagger.round()) == 20

        procs.start("master", "ttp-master")

        async def reverted() -> list[dict[str, Any]] | None:
            reply, _ = await ctl(nc, Endpoint.AUDIT, timeout=2.0, rule_id=RULE)
            if not reply["ok"]:
                return None
            entries: list[dict[str, Any]] = reply["result"]["entries"]
            return entries if any(e["data"].get("cause") == "expired" for e in entries) else None

        entries = await until("the revert after restart", reverted, procs, "master")
        assert entries[-1]["data"]["cause"] == "expired"
        assert entries[-1]["actor"] == "ttp-master"
        assert (await ok(nc, Endpoint.STATE_GET))["states"] == []
        await stop(procs.procs["master"], "master", procs)


async def test_state_survives_rule_edit_delete_and_re_add(procs: Procs, rules_dir: Path) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc, status_feed(nc) as statuses:
        await start_fleet(procs, nc, statuses, WORKERS)
        tagger = Tagger(nc.jetstream(), procs)
        changed = await ok(
            nc, Endpoint.STATE_SET, rule_id=RULE, state="disabled", reason="keep", actor="alice"
        )
        path = rules_dir / f"{RULE}.yaml"
        text = path.read_text()
        path.write_text(text.replace("rule_version: 1", "rule_version: 2", 1))

        async def edited() -> dict[str, Any] | None:
            detail = await ok(nc, Endpoint.RULES_SHOW, rule_id=RULE)
            return detail if detail["rule_version"] == 2 else None

        detail = await until("the edit", edited, procs, "master")
        assert detail["state"]["state"] == "disabled"
        assert detail["revision"] > changed["revision"]
        await fleet_at(nc, detail["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []

        path.unlink()

        async def deleted() -> bool:
            return bool((await ok(nc, Endpoint.RULES_SHOW, rule_id=RULE))["status"] == "deleted")

        await until("the delete", deleted, procs, "master")
        path.write_text(text)

        async def re_added() -> dict[str, Any] | None:
            detail = await ok(nc, Endpoint.RULES_SHOW, rule_id=RULE)
            return detail if detail["status"] == "active" else None

        detail = await until("the re-add", re_added, procs, "master")
        assert detail["state"]["state"] == "disabled"
        assert detail["state"]["reason"] == "keep"
        await fleet_at(nc, detail["revision"], procs, "master", *WORKERS)
        assert await tagger.round() == []
        await stop(procs.procs["master"], "master", procs)


async def test_bad_requests_get_structured_errors(procs: Procs) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc:
        procs.start("master", "ttp-master")

        async def serving() -> bool:
            reply, _ = await ctl(nc, Endpoint.REVISION, timeout=1.0)
            return bool(reply["ok"])

        await until("the control service", serving, procs, "master")
        base = {"rule_id": RULE, "state": "disabled", "reason": "r", "actor": "a"}
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
            ({**base, "expires_at": in_seconds(-60)}, "bad_request", "expires_at", "400"),
            ({**base, "expires_at": "2030-01-01T00:00:00"}, "bad_request", "expires_at", "400"),
            ({**base, "rule_id": "R9999"}, "unknown_rule", "rule_id", "404"),
            ({**base, "rule_id": "not a token"}, "bad_request", "rule_id", "400"),
            ({**base, "colour": "red"}, "bad_request", "colour", "400"),
        ]
        for fields, code, field, status in cases:
            reply, headers = await ctl(nc, Endpoint.STATE_SET, **fields)
            assert reply["ok"] is False, fields
            assert reply["error"]["code"] == code, (fields, reply)
            assert reply["error"]["field"] == field, (fields, reply)
            assert reply["error"]["message"]
            assert headers["Nats-Service-Error-Code"] == status
            assert headers["Nats-Service-Error"] == reply["error"]["message"]

        raw = await nc.request(subjects.control("state.set"), b"{not json", timeout=5)
        assert json.loads(raw.data)["error"]["code"] == "bad_request"

        # --force: a state may wait for a rule that does not exist yet.
        forced = await ok(nc, Endpoint.STATE_SET, **{**base, "rule_id": "R9999", "force": True})
        assert forced["state"]["state"] == "disabled"
        missing, _ = await ctl(nc, Endpoint.RULES_SHOW, rule_id="R9999")
        assert missing["error"]["code"] == "unknown_rule"
        assert (await ok(nc, Endpoint.STATE_GET))["states"][0]["rule_id"] == "R9999"
        await stop(procs.procs["master"], "master", procs)


async def test_a_standby_master_refuses_writes(procs: Procs) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc:
        leader = procs.start("master", "ttp-master")

        async def serving() -> bool:
            reply, _ = await ctl(nc, Endpoint.REVISION, timeout=1.0)
            return bool(reply["ok"])

        await until("the leader's control service", serving, procs, "master")
        procs.start("standby", "ttp-master")

        async def both_registered() -> list[str] | None:
            roles = await service_roles(nc)
            return roles if sorted(roles) == ["leader", "standby"] else None

        await until("leader and standby in $SRV.INFO", both_registered, procs, "standby")

        os.kill(leader.pid, signal.SIGSTOP)
        try:
            reply, headers = await ctl(
                nc,
                Endpoint.STATE_SET,
                rule_id=RULE,
                state="disabled",
                reason="r",
                actor="a",
            )
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "not_leader"
        assert "standby" in reply["error"]["message"]
        assert headers["Nats-Service-Error-Code"] == "503"
        assert (await ok(nc, Endpoint.STATE_GET))["states"] == []  # nothing was written

        await ok(nc, Endpoint.STATE_SET, rule_id=RULE, state="disabled", reason="r", actor="a")
        await stop(procs.procs["standby"], "standby", procs)
        await stop(leader, "master", procs)


async def test_fleet_reports_a_frozen_worker_as_behind(procs: Procs) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc, status_feed(nc) as statuses:
        # A 5 s heartbeat: the frozen worker is behind, not yet gone (that takes 3 intervals).
        await start_fleet(procs, nc, statuses, WORKERS, TTP_STATUS_INTERVAL_S="5")
        summary = await master_summary(nc)
        assert summary is not None
        frozen = procs.procs["w2"]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            changed = await ok(
                nc, Endpoint.STATE_SET, rule_id=RULE, state="disabled", reason="r", actor="a"
            )

            async def w1_applied() -> dict[str, Any] | None:
                fleet = await ok(nc, Endpoint.FLEET)
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
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        await fleet_at(nc, changed["revision"], procs, "master", *WORKERS)
        await stop(procs.procs["master"], "master", procs)


async def ttpctl(procs: Procs, *args: str) -> tuple[int, str, str]:
    """Run the real `ttpctl` console script against the test's NATS."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "ttpctl"),
        *args,
        env=procs.base_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ttpctl_fleet_wait_succeeds_after_a_change_and_times_out_on_a_frozen_worker(
    procs: Procs,
) -> None:
    async with nats_client(procs.base_env["TTP_NATS_URL"]) as nc, status_feed(nc) as statuses:
        # A 5 s heartbeat: a frozen worker stays "behind" (gone only after 15 s).
        await start_fleet(procs, nc, statuses, WORKERS, TTP_STATUS_INTERVAL_S="5")
        code, out, err = await ttpctl(
            procs, "state", "set", RULE, "--disable", "--for", "2h", "--reason", "noisy",
            "--as", "ci", "--json",
        )  # fmt: skip
        assert code == 0, err
        revision = json.loads(out)["revision"]
        code, out, err = await ttpctl(
            procs, "fleet", "status", "--wait", str(revision), "--timeout", "20s"
        )
        assert code == 0, out + err
        assert "converged" in out

        code, out, err = await ttpctl(procs, "state", "show", RULE, "--json")
        assert code == 0, err
        [shown] = json.loads(out)["states"]
        assert (shown["state"], shown["set_by"], shown["reason"]) == ("disabled", "ci", "noisy")

        frozen = procs.procs["w2"]
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            code, out, err = await ttpctl(procs, "state", "clear", RULE, "--as", "ci", "--json")
            assert code == 0, err
            cleared = json.loads(out)["revision"]
            code, out, err = await ttpctl(
                procs, "fleet", "status", "--wait", str(cleared), "--timeout", "3s"
            )
            assert code == 1, out + err
            assert "w2" in out + err
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        code, out, err = await ttpctl(
            procs, "fleet", "status", "--wait", str(cleared), "--timeout", "20s"
        )
        assert code == 0, out + err

        code, out, err = await ttpctl(procs, "audit", RULE, "--json")
        assert code == 0, err
        entries = json.loads(out)["entries"]
        assert [e["revision"] for e in entries[-2:]] == [revision, cleared]
        code, out, err = await ttpctl(procs, "rules", "status")
        assert code == 0, out + err
        assert "No rejected rule files." in out
        code, _, err = await ttpctl(procs, "state", "set", "R9999", "--disable", "--reason", "x")
        assert code == 3, err
        assert "R9999" in err
        await stop(procs.procs["master"], "master", procs)
