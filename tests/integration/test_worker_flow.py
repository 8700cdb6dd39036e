"""The worker against the real master, NATS and PostgreSQL, in-process.

The master is the real producer of TTP_RULES; where the master has no way yet to produce a
message (operator states: the control plane does not exist yet; stale or duplicate
revisions), the test publishes crafted CloudEvents to TTP_RULES itself, as a third party
could. Events go in on TTP_EVENTS and the tests read TTP_TAGS and TTP_DEADLETTER back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy
from nats.js.client import JetStreamContext

from harness.master import install, nats_client, rule_text, running_master, with_version
from harness.worker import TIMEOUT_S, running_worker, wait_for, worker_settings
from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    MASTER_SOURCE,
    DeadLetter,
    EventTagged,
    RuleReloaded,
    RulesetRevision,
    RuleStateChanged,
    decode,
    encode,
    envelope,
)
from ttp_core.engine.index import RuleIndex
from ttp_core.engine.tags import Tag, tag_uuid
from ttp_master import bootstrap
from ttp_runtime.nats import ensure_configured_streams
from ttp_worker import metrics
from ttp_worker.bootstrap import Worker
from ttp_worker.event_consumer import EventConsumer
from ttp_worker.events import tagged_event_id, tagged_msg_id
from ttp_worker.rulebook import Ruleset

GOLDEN_UUID = "9aa491e5-f03b-5d8f-9eb5-161becedcdd6"

GOLDEN_RULE = """\
rule_id: R0014
rule_version: 2
name: file_and_directory_discovery
applies_to: [command]
match:
  field: command_text
  pattern: '\\bls\\b'
emits:
  - tactic: TA0007
    technique_id: T1083
    confidence: 0.8
evidence_fields: [command_text]
"""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def rule_version(worker: Worker, rule_id: str) -> int | None:
    compiled = worker.book.current.index.rule(rule_id)
    return None if compiled is None else compiled.rule_version


async def ruleset_revision(js: JetStreamContext) -> RulesetRevision:
    msg = await js.get_last_msg(subjects.STREAM_RULES, subjects.RULESET_REVISION)
    assert msg.data is not None
    return decode(msg.data, RulesetRevision).data


async def converged(js: JetStreamContext, *workers: Worker) -> RulesetRevision:
    """Wait until every worker holds the master's last published revision and digest."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        summary = await ruleset_revision(js)
        if all(
            w.book.current.revision == summary.revision
            and w.book.current.index.digest() == summary.digest
            for w in workers
        ):
            return summary
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"not converged: master {summary}, workers "
                f"{[(w.book.current.revision, w.book.current.index.digest()) for w in workers]}"
            )
        await asyncio.sleep(0.05)


async def read_stream(js: JetStreamContext, stream: str) -> list[dict[str, Any]]:
    """Every message a stream holds now (an ephemeral pull consumer from the start)."""
    info = await js.stream_info(stream)
    total = info.state.messages
    if total == 0:
        return []
    sub = await js.pull_subscribe(
        "",
        stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    found: list[dict[str, Any]] = []
    try:
        while len(found) < total:
            for msg in await sub.fetch(min(1000, total - len(found)), timeout=5):
                event = json.loads(msg.data)
                event["_subject"] = msg.subject
                event["_msg_id"] = (msg.headers or {}).get("Nats-Msg-Id")
                found.append(event)
    finally:
        await sub.unsubscribe()
    return found


async def wait_stream_count(js: JetStreamContext, stream: str, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while (await js.stream_info(stream)).state.messages < count:
        if asyncio.get_running_loop().time() > deadline:
            have = (await js.stream_info(stream)).state.messages
            raise AssertionError(f"{stream} holds {have} messages, expected {count}")
        await asyncio.sleep(0.05)


async def wait_consumer_idle(js: JetStreamContext, consumer: str = "ttp-workers") -> None:
    """Every event delivered and acked by the shared consumer."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        info = await js.consumer_info(subjects.STREAM_EVENTS, consumer)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"consumer not idle: {info}")
        await asyncio.sleep(0.05)


async def publish_state(
    js: JetStreamContext,
    rule_id: str,
    revision: int,
    state: str,
    confidence_max: float | None = None,
    expires_at: datetime | None = None,
) -> None:
    data = RuleStateChanged(
        rule_id=rule_id,
        revision=revision,
        state=state,  # type: ignore[arg-type]
        confidence_max=confidence_max,
        expires_at=expires_at,
        reason="test",
        set_by="test",
        set_at=datetime.now(UTC),
    )
    event = envelope(data, source=MASTER_SOURCE, subject=rule_id, event_id=f"test-{uuid.uuid4()}")
    await js.publish(subjects.rule_state(rule_id), encode(event), headers={"Nats-Msg-Id": event.id})


async def publish_event(js: JetStreamContext, kind: str, body: bytes | dict[str, Any]) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await js.publish(subjects.event(kind), raw)


def command(source_id: str, text: str) -> dict[str, Any]:
    return {
        "source_kind": "command",
        "source_id": source_id,
        "attacker_uuid": "a-1",
        "session_id": "s-1",
        "payload": {"command_text": text},
    }


@dataclass
class Rig:
    nats_url: str
    database_url: str
    rules: Path
    nc: Client
    js: JetStreamContext

    def master(self) -> Any:
        from harness.master import master_settings

        return running_master(master_settings(self.nats_url, self.database_url, self.rules))

    def worker(self, worker_id: str, **overrides: Any) -> Any:
        return running_worker(self.nats_url, worker_id, **overrides)


@pytest.fixture
async def rig(private_nats: Any, database_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    rules = tmp_path / "rules"
    rules.mkdir()
    async with nats_client(private_nats.url) as nc:
        yield Rig(private_nats.url, database_url, rules, nc, nc.jetstream())


# --------------------------------------------------------------------------------------------
# Rule propagation
# --------------------------------------------------------------------------------------------


async def test_rule_changes_reach_every_worker_and_a_late_worker_matches_the_master(
    rig: Rig,
) -> None:
    placed = install(rig.rules, ["R0001", "R0010", "R0014", "R0078", "R0082"])
    async with rig.master(), rig.worker("w1") as w1, rig.worker("w2") as w2:
        for worker in (w1, w2):
            assert set(worker.book.current.index.rules) == {
                "R0001",
                "R0010",
                "R0014",
                "R0078",
                "R0082",
            }
            assert worker.rules is not None and worker.rules.snapshots == 1

        # A real change of a rule file reaches both workers.
        placed["R0010"].write_text(with_version(rule_text("R0010"), 7))
        await wait_for(
            lambda: all(rule_version(w, "R0010") == 7 for w in (w1, w2)), "R0010 v7 everywhere"
        )
        # A new file and a delete.
        new = rig.rules / "recon" / "R0002.yaml"
        new.write_text(rule_text("R0002"))
        placed["R0078"].unlink()
        await wait_for(
            lambda: all(
                rule_version(w, "R0002") == 1 and rule_version(w, "R0078") is None for w in (w1, w2)
            ),
            "R0002 added and R0078 removed everywhere",
        )
        await converged(rig.js, w1, w2)
        # A worker that starts now builds the same index from the stream alone.
        async with rig.worker("late") as late:
            summary = await ruleset_revision(rig.js)
            digests = {w.book.current.index.digest() for w in (w1, w2, late)}
            assert digests == {summary.digest}
            assert late.book.current.revision == summary.revision
            counts = late.book.current.index.counts()
            assert counts["rules"] == summary.rules
            assert counts["active"] == summary.active
            # Status messages report the digest the master computes.
            assert late.status is not None
            status = late.status.build()
            assert status.index_digest == summary.digest
            assert status.ready is True


async def test_stale_and_duplicate_rule_messages_are_ignored_and_states_apply(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This test publishes rule messages itself, as only the master should: the master's
    # stream guard would replace them as forged (test_master_forged_rules proves that) and
    # change what the worker holds midway, so its check waits past the end of the test.
    monkeypatch.setattr(bootstrap, "STREAM_CHECK_INTERVAL_S", 3600.0)
    install(rig.rules, ["R0010"])
    (rig.rules / "R0014.yaml").write_text(GOLDEN_RULE)
    async with rig.master(), rig.worker("w1") as worker:
        book = worker.book
        current = await rig.js.get_last_msg(subjects.STREAM_RULES, subjects.rule_reloaded("R0014"))
        assert current.data is not None
        held = decode(current.data, RuleReloaded).data
        index_before = book.current.index
        digest_before = index_before.digest()

        # Older revision with another body, the same revision again, an older tombstone.
        rule = dict(held.rule or {})
        rule["rule_version"] = 99
        for revision, body, deleted in (
            (held.revision - 1, rule, False),
            (held.revision, rule, False),
            (held.revision - 1, None, True),
        ):
            data = RuleReloaded(
                rule_id="R0014",
                revision=revision,
                rule_version=None if deleted else 99,
                content_sha256=None if deleted else "0" * 64,
                source_path="R0014.yaml",
                deleted=deleted,
                rule=body,
            )
            event = envelope(
                data, source=MASTER_SOURCE, subject="R0014", event_id=str(uuid.uuid4())
            )
            await rig.js.publish(
                subjects.rule_reloaded("R0014"), encode(event), headers={"Nats-Msg-Id": event.id}
            )
        # A state message orders everything after it: once applied, the above were handled.
        base = held.revision + 1000
        await publish_state(rig.js, "R0014", base, "clipped", confidence_max=0.3)
        await wait_for(lambda: "R0014" in book.current.index.states, "clip applied")
        assert rule_version(worker, "R0014") == 2
        assert book.current.index.rule("R0014") is index_before.rule("R0014")
        assert book.held_definition("R0014") == held.revision

        event = {"source_kind": "command", "source_id": "cmd_42", "payload": {"command_text": "ls"}}
        tags = book.current.index.evaluate(event)
        assert [(t.uuid, t.confidence) for t in tags] == [(GOLDEN_UUID, 0.3)]

        # An older state is ignored; a newer disable stops firing; enabled restores.
        await publish_state(rig.js, "R0014", base - 1, "disabled")
        await publish_state(rig.js, "R0014", base + 1, "disabled")
        await wait_for(lambda: book.held_state("R0014") == base + 1, "disable applied", timeout=10)
        assert book.current.index.evaluate(event) == []
        await publish_state(rig.js, "R0014", base + 2, "enabled")
        await wait_for(lambda: "R0014" not in book.current.index.states, "enabled applied")
        assert book.current.index.digest() == digest_before
        assert [t.confidence for t in book.current.index.evaluate(event)] == [0.8]

        # An expired state is honoured locally: the rule fires at full confidence.
        past = datetime(2000, 1, 1, tzinfo=UTC)
        await publish_state(rig.js, "R0014", base + 3, "disabled", expires_at=past)
        await wait_for(lambda: book.held_state("R0014") == base + 3, "expired disable")
        assert [t.confidence for t in book.current.index.evaluate(event)] == [0.8]

        # A state may arrive before its rule: the rule then comes in disabled.
        await publish_state(rig.js, "R0020", base + 4, "disabled")
        await wait_for(lambda: book.held_state("R0020") == base + 4, "early state")
        install(rig.rules, ["R0020"], flat=True)
        await wait_for(lambda: rule_version(worker, "R0020") is not None, "R0020 arrives")
        assert book.current.index.state("R0020").state.value == "disabled"


async def test_worker_resyncs_after_nats_restart(rig: Rig, private_nats: Any) -> None:
    install(rig.rules, ["R0001", "R0010"])
    async with rig.master(), rig.worker("w1") as worker:
        assert worker.rules is not None
        private_nats.kill()
        await asyncio.sleep(0.5)
        private_nats.restart()
        await wait_for(lambda: worker.rules is not None and worker.rules.snapshots >= 2, "resync")
        (rig.rules / "recon" / "R0010.yaml").write_text(with_version(rule_text("R0010"), 3))
        await wait_for(lambda: rule_version(worker, "R0010") == 3, "change after the restart")
        await converged(rig.js, worker)


# --------------------------------------------------------------------------------------------
# Tagging
# --------------------------------------------------------------------------------------------


async def test_events_in_tags_out_with_the_golden_identity(rig: Rig) -> None:
    install(rig.rules, ["R0010", "R0060"])
    (rig.rules / "R0014.yaml").write_text(GOLDEN_RULE)
    async with rig.master(), rig.worker("w1") as worker:
        js = rig.js
        events = [
            command("cmd_42", "ls -la"),
            command("cmd_43", "nmap -sS 10.0.0.0/24; ls"),
            command("cmd_44", "echo hello"),  # no rule fires: acked, no message
        ]
        for event in events[:2]:
            await publish_event(js, "command", event)
        # The same event wrapped in a CloudEvents envelope is accepted too.
        wrapped = {
            "specversion": "1.0",
            "id": "e-44",
            "source": "decky/1",
            "type": "ttp.event.v1",
            "time": "2025-01-01T00:00:00Z",
            "subject": "cmd_44",
            "data": events[2],
        }
        await publish_event(js, "command", wrapped)
        # A kind no rule applies to is acked and counted.
        await publish_event(
            js, "fingerprint", {"source_kind": "fingerprint", "source_id": "f1", "payload": {}}
        )
        await wait_stream_count(js, subjects.STREAM_TAGS, 2)
        await wait_consumer_idle(js)
        tagged = {m["data"]["source_id"]: m for m in await read_stream(js, subjects.STREAM_TAGS)}
        assert set(tagged) == {"cmd_42", "cmd_43"}
        golden = tagged["cmd_42"]
        assert golden["_subject"] == "ttp.tagged.command"
        assert golden["type"] == "ttp.tagged.v1"
        assert golden["source"] == "ttp-rulebus/worker/w1"
        assert golden["data"]["revision"] == worker.book.current.revision
        assert golden["data"]["attacker_uuid"] == "a-1"
        assert [t["uuid"] for t in golden["data"]["tags"]] == [GOLDEN_UUID]
        assert golden["data"]["tags"][0]["evidence"] == {"command_text": "ls -la"}
        # Deduplication is keyed by the event, the CloudEvents id by its tags.
        assert golden["_msg_id"] == tagged_msg_id("command", "cmd_42")
        assert golden["id"] == tagged_event_id([Tag(**t) for t in golden["data"]["tags"]])
        # Every tag is what an offline evaluation of the same event on the index gives.
        for event in events[:2]:
            offline = worker.book.current.index.evaluate(event)
            got = tagged[event["source_id"]]["data"]["tags"]
            assert [t["uuid"] for t in got] == [t.uuid for t in offline]
        assert {t["rule_id"] for t in tagged["cmd_43"]["data"]["tags"]} == {"R0010", "R0014"}
        assert tag_uuid("command", "cmd_42", "R0014", 2, "T1083", None) == GOLDEN_UUID
        assert worker.events is not None
        stats = worker.events.stats
        assert (stats.processed, stats.tagged, stats.no_rules) == (4, 2, 1)

        # Redelivery (the same event published again) yields the same message id: TTP_TAGS
        # drops it.
        await publish_event(js, "command", events[0])
        await wait_for(lambda: stats.processed == 5, "the republished event processed")
        await wait_consumer_idle(js)
        assert (await js.stream_info(subjects.STREAM_TAGS)).state.messages == 2


async def test_malformed_events_are_dead_lettered_by_class(rig: Rig) -> None:
    install(rig.rules, ["R0010"])
    async with rig.master(), rig.worker("w1", max_event_bytes=4096) as worker:
        js = rig.js
        cases: list[tuple[str, bytes, str, str]] = [
            ("command", b"{not json", "bad_json", "unknown"),
            ("command", b"\xff\xfe\x00", "bad_json", "unknown"),
            ("command", b"[1, 2]", "not_object", "unknown"),
            ("command", b'{"specversion": "1.0", "data": 5}', "bad_envelope", "unknown"),
            ("command", b'{"source_id": "x", "payload": {}}', "missing_source_kind", "unknown"),
            (
                "command",
                b'{"source_kind": "a.b", "source_id": "x", "payload": {}}',
                "invalid_source_kind",
                "unknown",
            ),
            (
                "command",
                b'{"source_kind": 7, "source_id": "x", "payload": {}}',
                "invalid_source_kind",
                "unknown",
            ),
            (
                "command",
                b'{"source_kind": "command", "source_id": 42, "payload": {}}',
                "invalid_field",
                "command",
            ),
            (
                "command",
                b'{"source_kind": "command", "source_id": "x", "payload": "ls"}',
                "invalid_field",
                "command",
            ),
            (
                "command",
                b'{"source_kind": "command", "source_id": "x", "payload": {}, "session_id": 1}',
                "invalid_field",
                "command",
            ),
            (
                "command",
                b'{"source_kind": "command", "pad": "' + b"x" * 5000 + b'"}',
                "oversize",
                "unknown",
            ),
        ]
        for kind, raw, _, _ in cases:
            await publish_event(js, kind, raw)
        await wait_stream_count(js, subjects.STREAM_DEADLETTER, len(cases))
        await wait_consumer_idle(js)
        letters = await read_stream(js, subjects.STREAM_DEADLETTER)
        assert len(letters) == len(cases)
        for letter, (_, raw, reason, dl_kind) in zip(letters, cases, strict=True):
            data = letter["data"]
            assert letter["type"] == "ttp.deadletter.v1"
            assert letter["_subject"] == f"ttp.deadletter.{dl_kind}"
            assert data["source_kind"] == dl_kind
            assert data["error"].startswith(reason + ":"), (data["error"], reason)
            assert data["worker_id"] == "w1"
            assert data["received"] == raw.decode("utf-8", "replace")
        oversize = letters[-1]["data"]
        assert oversize["truncated"] is False  # the cap (64 KiB) is above the size limit
        assert worker.events is not None
        reasons = worker.events.stats.dead_letter_reasons
        assert sum(reasons.values()) == len(cases)
        assert reasons["bad_json"] == 2 and reasons["invalid_field"] == 3
        assert (await js.stream_info(subjects.STREAM_TAGS)).state.messages == 0


async def test_external_rules_are_counted_and_run_only_with_an_evaluator(rig: Rig) -> None:
    (rig.rules / "L0001.yaml").write_text(
        "rule_id: L0001\nrule_version: 1\nname: lifted\napplies_to: [session]\n"
        "match: {kind: 'lifter:beacon'}\n"
        "emits: [{tactic: TA0011, technique_id: T1071, confidence: 0.7}]\n"
    )
    calls: list[str] = []

    def beacon(rule: Any, event: Any) -> bool:
        calls.append(rule.rule_id)
        return bool(event["payload"].get("beacon"))

    event = {"source_kind": "session", "source_id": "s1", "payload": {"beacon": True}}
    async with (
        rig.master(),
        rig.worker("plain") as plain,
        rig.worker("lifted", lifters={"beacon": beacon}) as lifted,
    ):
        for worker in (plain, lifted):
            assert worker.book.current.index.counts() == {"rules": 1, "active": 0, "external": 1}
        assert plain.book.current.index.evaluate(event) == []
        assert not plain.book.current.applies_to("session")
        assert [t.rule_id for t in lifted.book.current.index.evaluate(event)] == ["L0001"]
        assert calls == ["L0001"]


# --------------------------------------------------------------------------------------------
# Poison events
# --------------------------------------------------------------------------------------------

UNAME_RULE = """\
rule_id: R0200
rule_version: 1
name: system_information_discovery
applies_to: [command]
match:
  field: command_text
  pattern: '\\buname\\b'
emits:
  - tactic: TA0007
    technique_id: T1082
    confidence: 0.7
evidence_fields: [command_text, password]
"""

# (raw event, what it must end as): the shapes an attacker or a broken producer sends.
POISON: list[tuple[bytes, str]] = [
    (
        b'{"source_kind":"command","source_id":"x\\ud800",'
        b'"payload":{"command_text":"uname -a \\udfff"}}',
        "invalid_text",
    ),
    (
        b'{"source_kind":"command","source_id":"p-surrogate",'
        b'"payload":{"command_text":"uname -a \\udfff","password":"\\uD800"}}',
        "tagged",
    ),
    (
        b'{"source_kind":"command","source_id":"p-nan",'
        b'"payload":{"command_text":"uname -a","password":NaN}}',
        "non_finite_number",
    ),
    (
        b'{"source_kind":"command","source_id":"p-big",'
        b'"payload":{"command_text":"uname -a","password":1e999}}',
        "non_finite_number",
    ),
    (
        b'{"source_kind":"command","source_id":"p-inf",'
        b'"payload":{"command_text":"uname -a","password":[-Infinity]}}',
        "non_finite_number",
    ),
    (
        b'{"source_kind":"command","source_id":"p-deep","payload":{"command_text":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}",
        "bad_json",
    ),
    (
        b'{"source_kind":"command","source_id":"p-wide",'
        b'"payload":{"command_text":"uname -a","password":[' + b",".join([b"1"] * 30_000) + b"]}}",
        "tagged",
    ),
]


def _refuse(literal: str) -> Any:
    raise AssertionError(f"{literal} is not JSON")


async def read_strict(js: JetStreamContext, stream: str) -> list[dict[str, Any]]:
    """Every message of a stream, each checked to be strict JSON in valid UTF-8."""
    found = await read_stream(js, stream)
    for message in found:
        body = {k: v for k, v in message.items() if not k.startswith("_")}
        # Re-encoding strictly fails on NaN/Infinity and on a decoded lone surrogate.
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return found


async def test_poison_events_in_a_batch_of_good_ones_stall_nothing(rig: Rig) -> None:
    (rig.rules / "R0014.yaml").write_text(GOLDEN_RULE)
    (rig.rules / "R0200.yaml").write_text(UNAME_RULE)
    js = rig.js
    good = [command(f"good-{n}", "ls -la") for n in range(21)]
    async with rig.master():
        # Published before any worker runs, so the first fetches take them as one batch.
        poison = iter(POISON)
        for n, event in enumerate(good):
            await publish_event(js, "command", event)
            if n % 3 == 2:
                await publish_event(js, "command", next(poison)[0])
        async with rig.worker("w1") as worker:
            tagged_poison = sum(1 for _, outcome in POISON if outcome == "tagged")
            await wait_stream_count(js, subjects.STREAM_TAGS, len(good) + tagged_poison)
            await wait_stream_count(js, subjects.STREAM_DEADLETTER, len(POISON) - tagged_poison)
            await wait_consumer_idle(js)
            info = await js.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
            assert info.num_redelivered == 0
            assert worker.events is not None
            assert worker.events.stats.processed == len(good) + len(POISON)

        tags = {
            m["data"]["source_id"]: m["data"] for m in await read_strict(js, subjects.STREAM_TAGS)
        }
        assert set(tags) == {e["source_id"] for e in good} | {"p-surrogate", "p-wide"}
        for event in good:
            assert [t["uuid"] for t in tags[event["source_id"]]["tags"]] == [
                tag_uuid("command", event["source_id"], "R0014", 2, "T1083", None)
            ]
        evidence = tags["p-surrogate"]["tags"][0]["evidence"]
        assert evidence == {"command_text": "uname -a \ufffd", "password": "\ufffd"}
        assert len(tags["p-wide"]["tags"][0]["evidence"]["password"]) == 32
        for message in await read_stream(js, subjects.STREAM_TAGS):
            decode(json.dumps(message).encode(), EventTagged)

        letters = await read_strict(js, subjects.STREAM_DEADLETTER)
        expected = sorted(outcome for _, outcome in POISON if outcome != "tagged")
        assert sorted(m["data"]["reason"] for m in letters) == expected
        for message in letters:
            data = decode(json.dumps(message).encode(), DeadLetter).data
            assert data.error.startswith(f"{data.reason}: ")
            assert data.deliveries == 1
            assert data.source_kind == "command" or data.reason == "bad_json"


@pytest.mark.parametrize(
    ("server_max_deliver", "worker_limit", "unfinished", "dead_lettered_at"),
    [
        # The worker's own limit: the third delivery is dead-lettered unprocessed.
        (None, 2, 2, 3),
        # A consumer someone made with max_deliver=2: its last delivery dead-letters.
        (2, 5, 1, 2),
    ],
)
async def test_an_event_whose_processing_never_finishes_is_dead_lettered_with_its_count(
    rig: Rig,
    server_max_deliver: int | None,
    worker_limit: int,
    unfinished: int,
    dead_lettered_at: int,
) -> None:
    (rig.rules / "R0014.yaml").write_text(GOLDEN_RULE)
    js = rig.js
    async with rig.master():
        await wait_for_stream(js, subjects.STREAM_EVENTS)
        config = EventConsumer(
            rig.nc, js, lambda: Ruleset(RuleIndex.build([]), 0), worker_id="t", ack_wait_s=1.0
        ).consumer_config()
        if server_max_deliver is not None:
            config.max_deliver = server_max_deliver
        await js.add_consumer(subjects.STREAM_EVENTS, config)
        await publish_event(js, "command", command("doomed", "ls -la"))
        # A worker that dies while holding the event, `unfinished` times: the test takes
        # the delivery on the shared consumer and never acks it.
        holder = await js.pull_subscribe_bind("ttp-workers", subjects.STREAM_EVENTS)
        for attempt in range(1, unfinished + 1):
            [msg] = await holder.fetch(1, timeout=TIMEOUT_S)
            assert msg.metadata.num_delivered == attempt
        await holder.unsubscribe()
        before = metrics.DEAD_LETTERS.labels("max_deliveries")._value.get()

        async with rig.worker("w1", max_deliveries=worker_limit, ack_wait_s=1.0) as worker:
            await wait_stream_count(js, subjects.STREAM_DEADLETTER, 1)
            await wait_consumer_idle(js)
            assert worker.events is not None
            assert worker.events.stats.dead_letter_reasons == {"max_deliveries": 1}

        [letter] = await read_strict(js, subjects.STREAM_DEADLETTER)
        data = decode(json.dumps(letter).encode(), DeadLetter).data
        assert (data.reason, data.deliveries, data.source_kind) == (
            "max_deliveries",
            dead_lettered_at,
            "command",
        )
        assert json.loads(data.received)["source_id"] == "doomed"
        assert metrics.DEAD_LETTERS.labels("max_deliveries")._value.get() == before + 1
        assert (await js.stream_info(subjects.STREAM_TAGS)).state.messages == 0


@pytest.mark.parametrize(
    ("existing_ack_wait", "worker_ack_wait"),
    [
        (None, 2.0),
        # A consumer made earlier with a shorter ack_wait than the worker's setting: binding
        # does not change it, so the worker must hold events within the consumer's own.
        (1.0, 30.0),
    ],
)
async def test_refused_publishes_are_retried_in_place_without_using_up_deliveries(
    rig: Rig, existing_ack_wait: float | None, worker_ack_wait: float
) -> None:
    js = rig.js
    if existing_ack_wait is not None:
        await ensure_configured_streams(js, worker_settings(rig.nats_url, "setup"))
        config = EventConsumer(
            rig.nc,
            js,
            lambda: Ruleset(RuleIndex.build([]), 0),
            worker_id="t",
            ack_wait_s=existing_ack_wait,
        ).consumer_config()
        await js.add_consumer(subjects.STREAM_EVENTS, config)
    # No master: the worker creates the streams and tags nothing; malformed events still
    # make messages to publish (dead letters), which is what this test holds up.
    async with rig.worker("w1", max_deliveries=1, ack_wait_s=worker_ack_wait) as worker:
        assert worker.events is not None
        stats = worker.events.stats
        await publish_event(js, "command", b"not json 0")
        await wait_stream_count(js, subjects.STREAM_DEADLETTER, 1)
        # The dead-letter stream refuses every further write (full, discard new).
        info = await js.stream_info(subjects.STREAM_DEADLETTER)
        full = info.config
        full.max_msgs, full.discard = 1, DiscardPolicy.NEW
        await js.update_stream(full)
        failures_before = metrics.PUBLISH_FAILURES._value.get()
        for n in range(1, 4):
            await publish_event(js, "command", f"not json {n}".encode())
        # Held and retried: twelve rounds of failures (at least one event each, with pauses
        # of at most ack_wait / 4 between them), longer than the consumer's ack_wait ...
        await wait_for(
            lambda: metrics.PUBLISH_FAILURES._value.get() >= failures_before + 12,
            "publishes refused for several retry rounds",
        )
        # ... then the stream takes writes again.
        full.max_msgs, full.discard = -1, DiscardPolicy.OLD
        await js.update_stream(full)
        await wait_stream_count(js, subjects.STREAM_DEADLETTER, 4)
        await wait_consumer_idle(js)
        consumer = await js.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
        assert consumer.num_redelivered == 0
        assert stats.processed == 4  # never redelivered, so never dead-lettered for its count
        letters = await read_strict(js, subjects.STREAM_DEADLETTER)
        assert [m["data"]["reason"] for m in letters] == ["bad_json"] * 4
        assert {m["data"]["deliveries"] for m in letters} == {1}


async def wait_for_stream(js: JetStreamContext, stream: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        try:
            await js.stream_info(stream)
            return
        except nats.js.errors.NotFoundError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
