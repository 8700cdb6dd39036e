"""Tag identity (see docs/contract.md): uuid5 over the event and rule, and what a tag carries."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ttp_core.engine.compiler import CompiledRule, compile_rule
from ttp_core.engine.index import RuleIndex
from ttp_core.engine.tags import TAG_NAMESPACE, tag_uuid, tag_uuid_from_name
from ttp_core.rules.model import Rule

GOLDEN = "9aa491e5-f03b-5d8f-9eb5-161becedcdd6"


def rule(
    rule_id: str = "R0014",
    version: int = 2,
    emits: list[dict[str, Any]] | None = None,
    evidence: list[str] | None = None,
) -> CompiledRule:
    return compile_rule(
        Rule.model_validate(
            {
                "rule_id": rule_id,
                "rule_version": version,
                "name": "file_and_directory_discovery",
                "applies_to": ["command"],
                "match": {"field": "command_text", "pattern": "\\bls\\b"},
                "emits": emits
                or [{"tactic": "TA0007", "technique_id": "T1083", "confidence": 0.6}],
                "evidence_fields": evidence or [],
            }
        )
    )


def event(source_id: Any = "cmd_42", text: str = "ls -la /etc") -> dict[str, Any]:
    return {"source_kind": "command", "source_id": source_id, "payload": {"command_text": text}}


def test_namespace_is_uuid5_of_the_url_namespace() -> None:
    assert uuid.uuid5(uuid.NAMESPACE_URL, "decnet:ttp_tag:v1") == TAG_NAMESPACE


def test_golden_tag_uuid_from_the_spec() -> None:
    assert tag_uuid("command", "cmd_42", "R0014", 2, "T1083", None) == GOLDEN


def test_golden_value_is_plain_uuid5_of_the_joined_name() -> None:
    assert str(uuid.uuid5(TAG_NAMESPACE, "command|cmd_42|R0014|2|T1083|")) == GOLDEN


def test_empty_sub_technique_is_the_same_as_none() -> None:
    assert tag_uuid("command", "cmd_42", "R0014", 2, "T1083", "") == GOLDEN


def test_each_identity_component_changes_the_uuid() -> None:
    variants = {
        tag_uuid("payload", "cmd_42", "R0014", 2, "T1083", None),
        tag_uuid("command", "cmd_43", "R0014", 2, "T1083", None),
        tag_uuid("command", "cmd_42", "R0015", 2, "T1083", None),
        tag_uuid("command", "cmd_42", "R0014", 3, "T1083", None),
        tag_uuid("command", "cmd_42", "R0014", 2, "T1082", None),
        tag_uuid("command", "cmd_42", "R0014", 2, "T1083", "T1083.001"),
    }
    assert GOLDEN not in variants
    assert len(variants) == 6


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=300))
def test_tag_uuid_from_name_equals_uuid5(name: str) -> None:
    assert tag_uuid_from_name(name) == str(uuid.uuid5(TAG_NAMESPACE, name))


@settings(max_examples=150, deadline=None)
@given(
    source_kind=st.text(min_size=1, max_size=20),
    source_id=st.text(max_size=60),
    rule_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    rule_version=st.integers(min_value=1, max_value=10**9),
    technique_id=st.from_regex(r"T\d{4}", fullmatch=True),
    sub=st.one_of(st.none(), st.from_regex(r"T\d{4}\.\d{3}", fullmatch=True)),
)
def test_tag_uuid_equals_uuid5_of_the_spec_name(
    source_kind: str,
    source_id: str,
    rule_id: str,
    rule_version: int,
    technique_id: str,
    sub: str | None,
) -> None:
    name = f"{source_kind}|{source_id}|{rule_id}|{rule_version}|{technique_id}|{sub or ''}"
    expected = uuid.uuid5(TAG_NAMESPACE, name)
    got = tag_uuid(source_kind, source_id, rule_id, rule_version, technique_id, sub)
    assert got == str(expected)
    assert uuid.UUID(got).version == 5
    assert uuid.UUID(got).variant == uuid.RFC_4122


def test_evaluate_gives_the_golden_uuid_for_the_golden_event() -> None:
    (tag,) = RuleIndex.build([rule()]).evaluate(event())
    assert tag.uuid == GOLDEN


def test_tag_carries_rule_attack_and_evidence_fields() -> None:
    compiled = rule(evidence=["command_text", "cwd"])
    index = RuleIndex.build([compiled])
    payload = {"command_text": "ls -la /etc", "cwd": "/root", "other": "x"}
    (tag,) = index.evaluate({"source_kind": "command", "source_id": "cmd_42", "payload": payload})
    assert tag.as_dict() == {
        "uuid": GOLDEN,
        "rule_id": "R0014",
        "rule_version": 2,
        "tactic": "TA0007",
        "technique_id": "T1083",
        "sub_technique_id": None,
        "confidence": 0.6,
        "evidence": {"command_text": "ls -la /etc", "cwd": "/root"},
        "attack_version": "18.1",
        "mitre_url": "https://attack.mitre.org/techniques/T1083/",
    }


def test_sub_technique_tag_links_to_the_sub_technique_page() -> None:
    compiled = rule(
        emits=[
            {
                "tactic": "TA0002",
                "technique_id": "T1059",
                "sub_technique_id": "T1059.004",
                "confidence": 0.9,
            }
        ]
    )
    (tag,) = RuleIndex.build([compiled]).evaluate(event())
    assert tag.mitre_url == "https://attack.mitre.org/techniques/T1059/004/"
    assert tag.sub_technique_id == "T1059.004"
    assert tag.uuid == tag_uuid("command", "cmd_42", "R0014", 2, "T1059", "T1059.004")


def test_every_emit_gives_its_own_tag() -> None:
    compiled = rule(
        emits=[
            {"tactic": "TA0007", "technique_id": "T1083", "confidence": 0.6},
            {"tactic": "TA0002", "technique_id": "T1059", "confidence": 1},
        ]
    )
    tags = RuleIndex.build([compiled]).evaluate(event())
    assert [(t.technique_id, t.confidence) for t in tags] == [("T1083", 0.6), ("T1059", 1.0)]
    assert tags[0].uuid == GOLDEN
    assert tags[1].uuid != GOLDEN


def test_redelivery_of_an_event_yields_the_same_tags() -> None:
    index = RuleIndex.build([rule(evidence=["command_text"])])
    first = [t.as_dict() for t in index.evaluate(event())]
    again = [
        t.as_dict() for t in RuleIndex.build([rule(evidence=["command_text"])]).evaluate(event())
    ]
    assert first == again


def test_a_new_rule_version_gives_new_tag_uuids() -> None:
    (old,) = RuleIndex.build([rule(version=2)]).evaluate(event())
    (new,) = RuleIndex.build([rule(version=3)]).evaluate(event())
    assert old.uuid == GOLDEN
    assert new.uuid == tag_uuid("command", "cmd_42", "R0014", 3, "T1083", None)


def test_source_id_is_read_as_text_and_a_missing_one_as_empty() -> None:
    index = RuleIndex.build([rule()])
    (numeric,) = index.evaluate(event(source_id=42))
    assert numeric.uuid == tag_uuid("command", "42", "R0014", 2, "T1083", None)
    (missing,) = index.evaluate({"source_kind": "command", "payload": {"command_text": "ls"}})
    assert missing.uuid == tag_uuid("command", "", "R0014", 2, "T1083", None)
    (none,) = index.evaluate(event(source_id=None))
    assert none.uuid == missing.uuid


def test_tags_are_returned_in_rule_id_order() -> None:
    index = RuleIndex.build([rule("R0020"), rule("R0003"), rule("R0011")])
    assert [t.rule_id for t in index.evaluate(event())] == ["R0003", "R0011", "R0020"]
