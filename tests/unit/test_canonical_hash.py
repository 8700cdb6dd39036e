"""content_sha256 (see docs/rules.md): edits that do not change the rule change nothing."""

from __future__ import annotations

import hashlib
import json

import pytest

from ttp_core.rules.canonical import canonical_json, content_sha256
from ttp_core.rules.validator import RuleValidator

BASE = """\
rule_id: R0010
rule_version: 1
name: unix_shell_exec
applies_to: [command]
match:
  field: command_text
  pattern: '(?i)bash\\s+-i'
emits:
  - tactic: TA0002
    technique_id: T1059
    sub_technique_id: T1059.004
    confidence: 0.9
evidence_fields: [command_text]
"""

SAME_RULE_SPELT_DIFFERENTLY = {
    "comments-and-blank-lines": """\
# Reverse shells.

rule_id: R0010   # the id

rule_version: 1
name: unix_shell_exec
applies_to: [command]
match:
  # the field
  field: command_text
  pattern: '(?i)bash\\s+-i'
emits:
  - tactic: TA0002
    technique_id: T1059
    sub_technique_id: T1059.004
    confidence: 0.9
evidence_fields: [command_text]
""",
    "key-order": """\
emits:
  - confidence: 0.9
    sub_technique_id: T1059.004
    technique_id: T1059
    tactic: TA0002
evidence_fields: [command_text]
match:
  pattern: '(?i)bash\\s+-i'
  field: command_text
applies_to: [command]
name: unix_shell_exec
rule_version: 1
rule_id: R0010
""",
    "flow-style-and-indentation": """\
rule_id: "R0010"
rule_version: 1
name: 'unix_shell_exec'
applies_to:
    - command
match: {field: command_text, pattern: "(?i)bash\\\\s+-i"}
emits: [{tactic: TA0002, technique_id: T1059, sub_technique_id: T1059.004, confidence: 0.9}]
evidence_fields:
    - command_text
""",
    "confidence-0.90": BASE.replace("confidence: 0.9", "confidence: 0.90"),
    "confidence-.9": BASE.replace("confidence: 0.9", "confidence: .9"),
    "confidence-9e-1": BASE.replace("confidence: 0.9", "confidence: 9.0e-1"),
    "explicit-null-optional": BASE + "description: null\n",
    "trailing-document-end": BASE + "...\n",
    "crlf": BASE.replace("\n", "\r\n"),
    "unknown-extra-key": BASE + "x_owner: soc\n",
}

REAL_CHANGES = {
    "confidence": BASE.replace("confidence: 0.9", "confidence: 0.8"),
    "version": BASE.replace("rule_version: 1", "rule_version: 2"),
    "pattern": BASE.replace("bash\\s+-i", "bash\\s+-c"),
    "name": BASE.replace("name: unix_shell_exec", "name: unix_shell"),
    "kinds": BASE.replace("applies_to: [command]", "applies_to: [command, payload]"),
    "field": BASE.replace("field: command_text", "field: payload_text"),
    "sub-technique": BASE.replace("    sub_technique_id: T1059.004\n", ""),
    "description": BASE + "description: reverse shells\n",
    "evidence": BASE.replace("evidence_fields: [command_text]", "evidence_fields: []"),
    "ignore-case": BASE.replace("  pattern:", "  ignore_case: true\n  pattern:"),
}


@pytest.fixture(scope="module")
def validator() -> RuleValidator:
    return RuleValidator()


def sha(validator: RuleValidator, text: str) -> str:
    report = validator.validate_bytes(text.encode(), "R0010.yaml", stem="R0010")
    assert report.ok, [str(d) for d in report.diagnostics]
    assert report.content_sha256 is not None
    return report.content_sha256


@pytest.mark.parametrize("variant", sorted(SAME_RULE_SPELT_DIFFERENTLY))
def test_formatting_edits_leave_the_content_hash_unchanged(
    validator: RuleValidator, variant: str
) -> None:
    assert sha(validator, SAME_RULE_SPELT_DIFFERENTLY[variant]) == sha(validator, BASE)


@pytest.mark.parametrize(("one", "other"), [("1", "1.0"), ("1", "1.00"), ("1.0", "10.0e-1")])
def test_integer_and_float_spellings_of_confidence_hash_alike(
    validator: RuleValidator, one: str, other: str
) -> None:
    a = BASE.replace("confidence: 0.9", f"confidence: {one}")
    b = BASE.replace("confidence: 0.9", f"confidence: {other}")
    assert sha(validator, a) == sha(validator, b)


@pytest.mark.parametrize("change", sorted(REAL_CHANGES))
def test_a_real_change_gives_a_different_content_hash(
    validator: RuleValidator, change: str
) -> None:
    assert sha(validator, REAL_CHANGES[change]) != sha(validator, BASE)


def test_all_real_changes_hash_differently_from_each_other(validator: RuleValidator) -> None:
    hashes = {sha(validator, text) for text in REAL_CHANGES.values()}
    assert len(hashes) == len(REAL_CHANGES)


def test_content_hash_is_sha256_of_the_canonical_json_of_the_normalised_rule(
    validator: RuleValidator,
) -> None:
    report = validator.validate_bytes(BASE.encode(), "R0010.yaml")
    assert report.rule is not None
    normalised = report.rule.normalised()
    expected = hashlib.sha256(
        json.dumps(normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert content_sha256(report.rule) == expected == report.content_sha256
    assert normalised["emits"][0]["confidence"] == 0.9
    assert "description" not in normalised


def test_normalised_rule_reloads_to_the_same_hash(validator: RuleValidator) -> None:
    report = validator.validate_bytes(BASE.encode(), "R0010.yaml")
    assert report.rule is not None
    again = validator.validate_bytes(
        json.dumps(report.rule.normalised()).encode(), "R0010.yaml", stem="R0010"
    )
    assert again.ok
    assert again.content_sha256 == report.content_sha256


def test_canonical_json_is_independent_of_key_order_and_keeps_unicode() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == (
        '{"a":[1,{"c":null,"d":"é"}],"b":1}'
    )
    assert canonical_json({"a": 1}) == canonical_json({"a": 1})


def test_canonical_json_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError, match="JSON"):
        canonical_json({"a": float("inf")})
