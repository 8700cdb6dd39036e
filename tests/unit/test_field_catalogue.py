"""The field catalogue: unknown kinds and fields are warnings with a suggestion (errors under
--strict), a deployment extends the catalogue, and a lifter rule's 0 confidence loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from rule_samples import SPEC_RULE

from ttp_core.contract.field_catalogue import (
    BUILTIN,
    FIELD_TYPES,
    CatalogueError,
    parse_extension,
    payload_schema,
)
from ttp_core.engine.index import RuleIndex
from ttp_core.rules.diagnostics import Diagnostic, Severity
from ttp_core.rules.model import DEFAULT_FIELDS
from ttp_core.rules.validator import RuleReport, RuleValidator

REPO = Path(__file__).resolve().parents[2]

# A lifter rule in the style of DECNET's pack: the stateful lifter decides, and its 0.0
# confidence says the rule never emits a fresh tag of its own.
LIFTER_RULE = """\
rule_id: L0058
rule_version: 1
name: session_chain_lifter
description: Raises tags already emitted in a session when they form a known chain.
applies_to: [command]
match:
  kind: lifter:session_chain
  window_s: 600
  chain: [T1082, T1105, T1059]
emits:
  - tactic: TA0002
    technique_id: T1059
    sub_technique_id: T1059.004
    confidence: 0.0
evidence_fields: [command_text]
"""


@pytest.fixture(scope="module")
def validator() -> RuleValidator:
    return RuleValidator()


def check(validator: RuleValidator, text: str, stem: str = "R0010") -> RuleReport:
    return validator.validate_bytes(text.encode(), f"rules/{stem}.yaml", stem=stem)


def where(diagnostic: Diagnostic) -> tuple[int, int]:
    return diagnostic.line, diagnostic.column


def catalogue_findings(report: RuleReport) -> list[Diagnostic]:
    return [d for d in report.diagnostics if d.code in ("unknown-kind", "unknown-field")]


# --- the catalogue itself -------------------------------------------------------------------


def test_builtin_kinds_have_their_default_field() -> None:
    assert set(DEFAULT_FIELDS) <= set(BUILTIN.kinds)
    for kind, default in DEFAULT_FIELDS.items():
        assert default in BUILTIN.kinds[kind].fields
        assert BUILTIN.kinds[kind].default_field == default
    for kind in BUILTIN.kinds.values():
        assert kind.description
        for payload_field in kind.fields.values():
            types = (
                (payload_field.type,) if isinstance(payload_field.type, str) else payload_field.type
            )
            assert set(types) <= set(FIELD_TYPES) and payload_field.description


def test_every_kind_and_field_of_the_starter_pack_is_catalogued() -> None:
    reports = RuleValidator(strict=True).validate_tree(REPO / "rules")
    assert len(reports) == 84
    assert all(r.ok for r in reports), [str(d) for r in reports for d in r.diagnostics]
    assert [d for r in reports for d in r.diagnostics] == []
    kinds = {kind for r in reports if r.rule is not None for kind in r.rule.applies_to}
    assert kinds == set(BUILTIN.kinds)


def test_payload_schema_is_open_and_types_each_field() -> None:
    schema = payload_schema(BUILTIN.kinds["http_request"])
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is True
    assert "required" not in schema
    validate = Draft202012Validator(schema)
    assert validate.is_valid({"method": "GET", "headers": {"user-agent": "x"}, "extra": [1]})
    assert not validate.is_valid({"method": 1})


# --- typos ----------------------------------------------------------------------------------


def test_misspelt_kind_warns_with_the_right_suggestion(validator: RuleValidator) -> None:
    report = check(validator, SPEC_RULE.replace("applies_to: [command]", "applies_to: [comand]"))
    assert report.ok  # a warning: the rule still loads
    (finding,) = catalogue_findings(report)
    assert finding.severity is Severity.WARNING
    assert finding.code == "unknown-kind"
    assert where(finding) == (5, 14)
    assert finding.message.startswith(
        "source kind 'comand' is not in the field catalogue (did you mean 'command'?)"
    )


def test_misspelt_field_warns_with_the_right_suggestion(validator: RuleValidator) -> None:
    # Without inline tests: a `fire` test would catch this typo too, as a failed test.
    untested = SPEC_RULE.split("tests:")[0]
    report = check(validator, untested.replace("field: command_text", "field: command_txt"))
    assert report.ok
    (finding,) = catalogue_findings(report)
    assert finding.code == "unknown-field"
    assert where(finding) == (7, 10)
    assert finding.message == (
        "field 'command_txt' is not a payload field of command in the field catalogue "
        "(did you mean 'command_text'?)"
    )


def test_strict_turns_catalogue_warnings_into_errors() -> None:
    strict = RuleValidator(strict=True)
    text = SPEC_RULE.replace("applies_to: [command]", "applies_to: [comand]")
    report = check(strict, text)
    assert not report.ok
    assert [(d.code, d.severity) for d in report.errors] == [("unknown-kind", Severity.ERROR)]
    untested = SPEC_RULE.split("tests:")[0]
    report = check(strict, untested.replace("field: command_text", "field: command_txt"))
    assert [(d.code, where(d)) for d in report.errors] == [("unknown-field", (7, 10))]
    assert report.errors[0].message.endswith("(--strict)")


NESTED = """\
rule_id: R0010
rule_version: 1
name: nested
applies_to: [http_request, auth_attempt]
match:
  any:
    - all:
        - {field: methd, equals: POST}
        - not: {field: header.user-agent, contains: curl}
    - {field: headers.x-custom, exists: true}
    - {field: password, contains: admin}
    - {contains: /etc/passwd}
emits:
  - {tactic: TA0007, technique_id: T1082, confidence: 0.5}
evidence_fields: [raw_url, usernme]
"""


def test_every_leaf_and_evidence_field_is_checked(validator: RuleValidator) -> None:
    findings = catalogue_findings(check(validator, NESTED))
    assert [(d.code, where(d), d.message) for d in findings] == [
        (
            "unknown-field",
            (8, 19),
            "field 'methd' is not a payload field of http_request/auth_attempt in the field "
            "catalogue (did you mean 'method'?)",
        ),
        (
            "unknown-field",
            (9, 24),
            "field 'header.user-agent' is not a payload field of http_request/auth_attempt in "
            "the field catalogue (did you mean 'headers'?)",
        ),
        (
            "unknown-field",
            (15, 28),
            "field 'usernme' is not a payload field of http_request/auth_attempt in the field "
            "catalogue (did you mean 'username'?)",
        ),
    ]


def test_a_field_of_any_one_of_several_kinds_is_known(validator: RuleValidator) -> None:
    text = SPEC_RULE.replace("applies_to: [command]", "applies_to: [command, payload]")
    text = text.replace("evidence_fields: [command_text]", "evidence_fields: [payload_text]")
    assert catalogue_findings(check(validator, text)) == []


def test_fields_of_an_uncatalogued_kind_are_not_guessed(validator: RuleValidator) -> None:
    text = SPEC_RULE.replace("applies_to: [command]", "applies_to: [smb_session]")
    text = text.replace(
        "  - event: {command_text", "  - source_kind: smb_session\n    event: {command_text"
    )
    findings = catalogue_findings(check(validator, text))
    assert [d.code for d in findings] == ["unknown-kind"]
    assert "did you mean" not in findings[0].message


# --- extending it ---------------------------------------------------------------------------

EXTENSION = """\
kinds:
  smb_session:
    description: SMB sessions of a file-share honeypot.
    fields:
      share: {type: string, description: The share opened}
      command_text: string
  command:
    fields:
      tty: string
"""


def test_an_extension_adds_kinds_and_fields() -> None:
    catalogue = BUILTIN.extended(parse_extension(EXTENSION, "fields.yaml"))
    assert set(catalogue.kinds) == {*BUILTIN.kinds, "smb_session"}
    assert {"tty", "command_text"} <= set(catalogue.kinds["command"].fields)
    assert catalogue.kinds["command"].description == BUILTIN.kinds["command"].description
    validator = RuleValidator(fields=catalogue)
    text = SPEC_RULE.replace("applies_to: [command]", "applies_to: [smb_session, command]")
    text = text.replace("evidence_fields: [command_text]", "evidence_fields: [share, tty]")
    assert catalogue_findings(check(validator, text)) == []
    # The built-in catalogue is unchanged.
    assert "tty" not in BUILTIN.kinds["command"].fields
    assert "smb_session" not in BUILTIN.kinds


def test_an_extension_in_json_works_too() -> None:
    fields = {"ja3": {"type": "string"}, "ciphers": {"type": ["string", "array"]}}
    extension = {"kinds": {"fingerprint": {"fields": fields}}}
    catalogue = parse_extension(json.dumps(extension), "fields.json")
    assert set(catalogue.kinds["fingerprint"].fields) == {"ja3", "ciphers"}
    assert catalogue.kinds["fingerprint"].fields["ciphers"].type == ("string", "array")


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("kinds: [command]\n", (1, 1), "a field catalogue is a mapping with one key"),
        ("kinds:\n  bad kind: {}\n", (2, 13), "kind 'bad kind' does not match"),
        ("kinds:\n  k:\n    fields:\n      f: text\n", (4, 10), "field 'f' has type 'text'"),
        ("kinds:\n  k:\n    fields:\n      f: {type: []}\n", (4, 10), "field 'f' has type []"),
        ("kinds:\n  k:\n    fields:\n      f: {type: []}\n", (4, 10), "field 'f' has type []"),
        ("kinds:\n  k:\n    fields:\n      a.b: string\n", (4, 12), "field name 'a.b' must"),
        ("kinds:\n  k: {default_field: x}\n", (2, 6), "kind 'k' is a mapping of"),
        ("kinds: {k: {}\n", (2, 1), "YAML syntax error"),
    ],
)
def test_a_bad_extension_is_a_located_error(
    text: str, position: tuple[int, int], message: str
) -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_extension(text, "fields.yaml")
    assert (caught.value.line, caught.value.column) == position
    assert message in caught.value.message
    assert str(caught.value).startswith(f"fields.yaml:{position[0]}:{position[1]}: ")


# --- lifter sentinel ------------------------------------------------------------------------


def test_lifter_rule_with_zero_confidence_loads(validator: RuleValidator) -> None:
    report = check(validator, LIFTER_RULE, stem="L0058")
    assert report.ok, [str(d) for d in report.diagnostics]
    assert [d for d in report.diagnostics if d.is_error] == []
    assert report.rule is not None and report.rule.is_external
    assert report.rule.emits[0].confidence == 0.0
    assert report.rule.normalised()["emits"][0]["confidence"] == 0.0
    strict = check(RuleValidator(strict=True), LIFTER_RULE, stem="L0058")
    assert strict.ok and strict.diagnostics == ()


def test_zero_confidence_on_a_built_in_rule_is_still_an_error(validator: RuleValidator) -> None:
    report = check(validator, SPEC_RULE.replace("confidence: 0.9", "confidence: 0.0"))
    (error,) = report.errors
    assert where(error) == (13, 17)
    assert "lifter" in error.message


def test_a_firing_zero_confidence_lifter_emits_no_tag(validator: RuleValidator) -> None:
    report = check(validator, LIFTER_RULE, stem="L0058")
    assert report.compiled is not None
    index = RuleIndex.build([report.compiled], lifters={"session_chain": lambda rule, e: True})
    event = {"source_kind": "command", "source_id": "c1", "payload": {"command_text": "id"}}
    assert index.evaluate(event) == []
    half = LIFTER_RULE.replace("confidence: 0.0", "confidence: 0.5")
    compiled = check(validator, half, stem="L0058").compiled
    assert compiled is not None
    index = RuleIndex.build([compiled], lifters={"session_chain": lambda rule, e: True})
    assert [t.confidence for t in index.evaluate(event)] == [0.5]
