"""The worker's event logic: parsing, dead-letter classes, tag messages and their ids."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram

from ttp_core.contract.payloads import DeadLetter, EventTagged, TagData, decode
from ttp_core.engine.compiler import compile_rule
from ttp_core.engine.index import RuleIndex
from ttp_core.rules.model import Rule
from ttp_worker.events import (
    DeadLetterReason,
    MalformedEventError,
    cloudevents_time,
    deadletter_message,
    parse_event,
    tagged_event_id,
    tagged_message,
    tagged_msg_id,
)
from ttp_worker.metrics import observe_all
from ttp_worker.settings import WorkerSettings, default_worker_id

GOLDEN_UUID = "9aa491e5-f03b-5d8f-9eb5-161becedcdd6"


def golden_index() -> RuleIndex:
    rule = Rule.model_validate(
        {
            "rule_id": "R0014",
            "rule_version": 2,
            "name": "discovery",
            "applies_to": ["command"],
            "match": {"field": "command_text", "pattern": r"\bls\b"},
            "emits": [
                {"tactic": "TA0007", "technique_id": "T1083", "confidence": 0.8},
                {"tactic": "TA0002", "technique_id": "T1059", "confidence": 0.5},
            ],
            "evidence_fields": ["command_text"],
        }
    )
    return RuleIndex.build([compile_rule(rule)])


EVENT = {
    "source_kind": "command",
    "source_id": "cmd_42",
    "attacker_uuid": "att",
    "payload": {"command_text": "ls -la"},
}


def test_bare_and_wrapped_events_parse_alike() -> None:
    bare = json.dumps(EVENT).encode()
    wrapped = json.dumps({"specversion": "1.0", "type": "ttp.event.v1", "data": EVENT}).encode()
    assert parse_event(bare, 10_000) == EVENT == parse_event(wrapped, 10_000)


@pytest.mark.parametrize(
    ("raw", "reason", "kind"),
    [
        (b"x" * 2000, DeadLetterReason.OVERSIZE, "unknown"),
        (b"{", DeadLetterReason.BAD_JSON, "unknown"),
        (b"\xc3\x28", DeadLetterReason.BAD_JSON, "unknown"),
        (b"[" * 400 + b"]" * 400, DeadLetterReason.NOT_OBJECT, "unknown"),
        (b'"text"', DeadLetterReason.NOT_OBJECT, "unknown"),
        (b'{"specversion": "1.0"}', DeadLetterReason.BAD_ENVELOPE, "unknown"),
        (b'{"source_id": "a", "payload": {}}', DeadLetterReason.MISSING_SOURCE_KIND, "unknown"),
        (b'{"source_kind": null}', DeadLetterReason.MISSING_SOURCE_KIND, "unknown"),
        (b'{"source_kind": ""}', DeadLetterReason.INVALID_SOURCE_KIND, "unknown"),
        (b'{"source_kind": ["x"]}', DeadLetterReason.INVALID_SOURCE_KIND, "unknown"),
        (b'{"source_kind": "a b"}', DeadLetterReason.INVALID_SOURCE_KIND, "unknown"),
        (b'{"source_kind": "c", "payload": {}}', DeadLetterReason.INVALID_FIELD, "c"),
        (
            b'{"source_kind": "c", "source_id": "", "payload": {}}',
            DeadLetterReason.INVALID_FIELD,
            "c",
        ),
        (
            b'{"source_kind": "c", "source_id": "1", "payload": []}',
            DeadLetterReason.INVALID_FIELD,
            "c",
        ),
        (
            b'{"source_kind": "c", "source_id": "1", "payload": {}, "decky_id": {}}',
            DeadLetterReason.INVALID_FIELD,
            "c",
        ),
    ],
)
def test_malformed_events_are_classified(raw: bytes, reason: DeadLetterReason, kind: str) -> None:
    with pytest.raises(MalformedEventError) as caught:
        parse_event(raw, 1000)
    assert caught.value.reason is reason
    assert caught.value.deadletter_kind == kind
    assert str(caught.value).startswith(reason.value + ": ")


def test_deeply_nested_json_is_bad_json_not_a_crash() -> None:
    raw = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    with pytest.raises(MalformedEventError) as caught:
        parse_event(raw, 10_000_000)
    assert caught.value.reason is DeadLetterReason.BAD_JSON


def test_tagged_message_is_a_valid_event_tagged_with_the_golden_uuid() -> None:
    tags = golden_index().evaluate(EVENT)
    assert tags[0].uuid == GOLDEN_UUID
    out = tagged_message(EVENT, tags, 17, "ttp-rulebus/worker/w1", cloudevents_time())
    assert out.subject == "ttp.tagged.command"
    event = decode(out.payload, EventTagged)
    assert event.id == tagged_event_id(tags)
    assert out.msg_id == tagged_msg_id("command", "cmd_42")
    assert event.type == "ttp.tagged.v1"
    assert event.subject == "cmd_42"
    assert event.data.revision == 17
    assert event.data.attacker_uuid == "att"
    assert [t.uuid for t in event.data.tags] == [t.uuid for t in tags]
    assert event.data.tags[0].evidence == {"command_text": "ls -la"}


def test_each_tag_is_written_with_exactly_the_contract_fields() -> None:
    # Tags go to msgspec as they are (dataclasses): what it writes must be the contract's
    # tag object, field for field, whatever Tag holds.
    tags = golden_index().evaluate(EVENT)
    out = tagged_message(EVENT, tags, 17, "ttp-rulebus/worker/w1", cloudevents_time())
    written = json.loads(out.payload)["data"]["tags"]
    assert written == [tag.as_dict() for tag in tags]
    assert [list(tag) for tag in written] == [list(TagData.model_fields)] * len(tags)


@pytest.mark.parametrize(
    "evidence",
    [
        {"n": 1.5, "t": 'é\u2028\x00"', "i": 2**80, "b": True, "z": None},
        {"n": [1, 2.5, {"k": None, "l": [False]}]},
        {"t": ("a", 1)},  # no JSON type: written as the strict encoder does
    ],
)
def test_any_evidence_is_written_as_the_strict_encoder_writes_it(evidence: dict[str, Any]) -> None:
    tags = golden_index().evaluate(EVENT)
    tags[0].evidence = evidence
    out = tagged_message(EVENT, tags, 17, "w", "2026-01-01T00:00:00Z")
    strict = json.dumps(evidence, ensure_ascii=False, allow_nan=False, default=str)
    assert json.loads(out.payload)["data"]["tags"][0]["evidence"] == json.loads(strict)


@pytest.mark.parametrize(
    "evidence",
    [{"n": math.nan}, {"n": [1.0, math.inf]}, {"n": {"k": -math.inf}}, {"t": "x\ud800"}],
)
def test_a_tag_json_cannot_carry_raises_instead_of_being_written(evidence: dict[str, Any]) -> None:
    tags = golden_index().evaluate(EVENT)
    tags[0].evidence = evidence
    with pytest.raises(ValueError):
        tagged_message(EVENT, tags, 17, "w", "2026-01-01T00:00:00Z")
    tags[0].evidence = {}
    tags[0].confidence = math.nan
    with pytest.raises(ValueError):
        tagged_message(EVENT, tags, 17, "w", "2026-01-01T00:00:00Z")


def test_tagged_event_id_depends_only_on_the_set_of_tag_uuids() -> None:
    index = golden_index()
    tags = index.evaluate(EVENT)
    assert len(tags) == 2
    assert tagged_event_id(tags) == tagged_event_id(list(reversed(tags)))
    again = index.evaluate(dict(EVENT, attacker_uuid="other", payload={"command_text": "ls"}))
    assert tagged_event_id(again) == tagged_event_id(tags)  # same event identity, same id
    other = index.evaluate(dict(EVENT, source_id="cmd_43"))
    assert tagged_event_id(other) != tagged_event_id(tags)
    assert tagged_event_id(tags[:1]) != tagged_event_id(tags)


def test_a_re_evaluation_under_changed_rules_keeps_the_events_msg_id() -> None:
    # A redelivered event (its ack lost) may meet other rules: fewer tags this time. Its tag
    # message must still carry the first one's Nats-Msg-Id, so TTP_TAGS drops it.
    tags = golden_index().evaluate(EVENT)
    now = cloudevents_time()
    first = tagged_message(EVENT, tags, 17, "ttp-rulebus/worker/w1", now)
    later = tagged_message(EVENT, tags[:1], 18, "ttp-rulebus/worker/w2", now)
    assert first.msg_id == later.msg_id
    assert decode(first.payload, EventTagged).id != decode(later.payload, EventTagged).id
    other = tagged_message(dict(EVENT, source_id="cmd_43"), tags, 17, "w", now)
    assert other.msg_id != first.msg_id
    assert tagged_msg_id("http_request", "cmd_42") != first.msg_id


def test_deadletter_message_caps_the_text_and_names_the_error() -> None:
    raw = b'{"source_kind": "command", "payload": "' + "é".encode() * 400 + b'"}'
    error = MalformedEventError(
        DeadLetterReason.INVALID_FIELD, "payload must be an object", "command"
    )
    out = deadletter_message(
        raw, error, worker_id="w1", source="ttp-rulebus/worker/w1", text_cap=256, msg_id="dl-1"
    )
    assert out.subject == "ttp.deadletter.command"
    assert out.msg_id == "dl-1"
    event = decode(out.payload, DeadLetter)
    assert event.data.truncated is True
    assert event.data.error == "invalid_field: payload must be an object"
    assert len(event.data.received.encode()) <= 256 + 3
    assert event.data.worker_id == "w1"


def test_settings_defaults_and_worker_id_is_a_token(monkeypatch: Any) -> None:
    monkeypatch.delenv("TTP_WORKER_ID", raising=False)
    settings = WorkerSettings()
    assert settings.http_port == 8081
    assert settings.consumer_name == "ttp-workers"
    assert settings.status_interval_s == 5.0
    assert settings.worker_id == default_worker_id()
    with pytest.raises(ValueError):
        WorkerSettings(worker_id="a.b")


def test_evaluate_times_observed_together_count_as_one_by_one() -> None:
    registry = CollectorRegistry()
    buckets = (0.00002, 0.0001, 0.001, 1)
    one_by_one = Histogram("one", "x", buckets=buckets, registry=registry)
    together = Histogram("two", "x", buckets=buckets, registry=registry)
    amounts = [0.0, 0.00002, 0.000021, 0.0001, 0.0005, 1.0, 7.5, 0.00001] * 3
    for amount in amounts:
        one_by_one.observe(amount)
    observe_all(together, amounts)

    def samples(name: str) -> dict[tuple[str, str], float]:
        return {
            (s.name.removeprefix(name), s.labels.get("le", "")): s.value
            for family in registry.collect()
            if family.name == name
            for s in family.samples
            if not s.name.endswith("_created")
        }

    expected, got = samples("one"), samples("two")
    assert got.pop(("_sum", "")) == pytest.approx(expected.pop(("_sum", "")))
    assert got == expected
