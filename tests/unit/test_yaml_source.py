"""Bytes of a rule file -> one bounded, located YAML document (ttp_core.rules.yaml_source).

Every rejection here is checked through `RuleValidator.validate_bytes` (the one entry point
the product uses) with its exact line and column, and the located document is checked
directly where positions matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ttp_core.rules.diagnostics import Diagnostic
from ttp_core.rules.validator import RuleReport, RuleValidator
from ttp_core.rules.yaml_source import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    Position,
    YamlSourceError,
    decode_source,
    parse_document,
)

VALID = """\
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
    confidence: 0.9
"""


@pytest.fixture(scope="module")
def validator() -> RuleValidator:
    return RuleValidator()


def only_error(report: RuleReport) -> Diagnostic:
    assert not report.ok
    assert report.rule is None or report.compiled is None
    assert len(report.errors) == 1, [str(d) for d in report.diagnostics]
    return report.errors[0]


def reject(validator: RuleValidator, raw: bytes) -> Diagnostic:
    return only_error(validator.validate_bytes(raw, "R0010.yaml"))


# --- a valid document -------------------------------------------------------------------


def test_valid_rule_text_loads_without_diagnostics(validator: RuleValidator) -> None:
    report = validator.validate_bytes(VALID.encode(), "R0010.yaml", stem="R0010")
    assert report.ok
    assert report.diagnostics == ()
    assert report.rule is not None
    assert report.rule.rule_id == "R0010"


def test_utf8_byte_order_mark_is_accepted(validator: RuleValidator) -> None:
    report = validator.validate_bytes(b"\xef\xbb\xbf" + VALID.encode(), "R0010.yaml", stem="R0010")
    assert report.ok


def test_crlf_line_endings_are_accepted(validator: RuleValidator) -> None:
    report = validator.validate_bytes(VALID.replace("\n", "\r\n").encode(), "R0010.yaml")
    assert report.ok


def test_a_single_explicit_document_start_marker_is_accepted(validator: RuleValidator) -> None:
    report = validator.validate_bytes(("---\n" + VALID + "...\n").encode(), "R0010.yaml")
    assert report.ok


def test_positions_of_values_and_keys_are_one_based() -> None:
    document = parse_document(VALID)
    assert document.position_of(("rule_id",)) == Position(1, 10)
    assert document.key_position_of(("rule_id",)) == Position(1, 1)
    assert document.position_of(("applies_to", 0)) == Position(4, 14)
    assert document.position_of(("match", "pattern")) == Position(7, 12)
    assert document.key_position_of(("match", "pattern")) == Position(7, 3)
    assert document.position_of(("emits", 0)) == Position(9, 5)
    assert document.position_of(("emits", 0, "confidence")) == Position(11, 17)


def test_position_of_a_missing_path_falls_back_to_its_nearest_ancestor() -> None:
    document = parse_document(VALID)
    assert document.position_of(("emits", 0, "sub_technique_id")) == Position(9, 5)
    assert document.position_of(("nothing", "here")) == Position(1, 1)


def test_resolve_loc_skips_synthetic_validation_steps() -> None:
    document = parse_document(VALID)
    assert document.resolve_loc(("match", "leaf", "pattern")) == ("match", "pattern")
    assert document.resolve_loc(("emits", 0, "function-after[float]")) == ("emits", 0)


def test_timestamps_stay_text_and_scalars_keep_their_yaml_types() -> None:
    document = parse_document("a: 2024-01-02\nb: 0x10\nc: yes\nd: ~\ne: '1'\nf: 1.5\n")
    assert document.data == {"a": "2024-01-02", "b": 16, "c": True, "d": None, "e": "1", "f": 1.5}


def test_aliases_within_bounds_are_expanded() -> None:
    document = parse_document("a: &x [1, 2]\nb: *x\n")
    assert document.data == {"a": [1, 2], "b": [1, 2]}


# --- YAML syntax ------------------------------------------------------------------------


def test_yaml_syntax_error_is_located_where_the_parser_stopped(validator: RuleValidator) -> None:
    raw = VALID.replace("applies_to: [command]", "applies_to: [command").encode()
    error = reject(validator, raw)
    assert error.code == "yaml-syntax"
    assert (error.line, error.column) == (5, 6)
    assert error.message.startswith("YAML syntax error")
    assert error.source == "R0010.yaml"


def test_tab_indentation_is_a_syntax_error_on_its_line(validator: RuleValidator) -> None:
    error = reject(validator, b"rule_id: R1\nmatch:\n\tfield: x\n")
    assert error.code == "yaml-syntax"
    assert (error.line, error.column) == (3, 1)


def test_invalid_scalar_for_an_explicit_tag_is_a_located_error(validator: RuleValidator) -> None:
    error = reject(validator, b"rule_id: R1\nrule_version: !!int abc\n")
    assert error.code == "yaml-syntax"
    assert (error.line, error.column) == (2, 15)


# --- duplicate keys ---------------------------------------------------------------------


def test_duplicate_yaml_key_is_an_error_located_at_the_second_key(validator: RuleValidator) -> None:
    error = reject(validator, (VALID + "name: again\n").encode())
    assert error.code == "duplicate-key"
    assert (error.line, error.column) == (12, 1)
    assert "'name'" in error.message
    assert "line 3, column 1" in error.message


def test_duplicate_key_inside_a_nested_mapping_is_located_at_the_second_key(
    validator: RuleValidator,
) -> None:
    raw = VALID.replace("  field: command_text\n", "  field: command_text\n  field: other\n")
    error = reject(validator, raw.encode())
    assert error.code == "duplicate-key"
    assert (error.line, error.column) == (7, 3)
    assert "line 6, column 3" in error.message


def test_duplicate_key_in_flow_mapping_is_located_at_the_second_key(
    validator: RuleValidator,
) -> None:
    error = reject(validator, b"rule_id: R1\nmatch: {field: a, pattern: x, field: b}\n")
    assert error.code == "duplicate-key"
    assert (error.line, error.column) == (2, 31)


def test_same_key_in_sibling_mappings_is_not_a_duplicate() -> None:
    document = parse_document("emits:\n  - tactic: TA0002\n  - tactic: TA0003\n")
    assert document.data == {"emits": [{"tactic": "TA0002"}, {"tactic": "TA0003"}]}


def test_keys_equal_after_yaml_typing_are_duplicates(validator: RuleValidator) -> None:
    error = reject(validator, b"1: a\n0x1: b\n")
    assert error.code == "duplicate-key"
    assert (error.line, error.column) == (2, 1)


# --- empty and non-mapping documents ----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"\n\n", b"# only a comment\n# and another\n", b"---\n", b"~\n", b"null\n", b"   "],
    ids=[
        "empty",
        "blank-lines",
        "comments-only",
        "bare-document-marker",
        "tilde",
        "null",
        "spaces",
    ],
)
def test_empty_or_comment_only_file_is_an_error_at_line_1_column_1(
    validator: RuleValidator, raw: bytes
) -> None:
    error = reject(validator, raw)
    assert error.code == "empty"
    assert (error.line, error.column) == (1, 1)


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        (b"- rule_id: R1\n- rule_id: R2\n", "a list"),
        (b"just some text\n", "text"),
        (b"42\n", "an integer"),
        (b"\n\n  true\n", "a boolean"),
    ],
)
def test_non_mapping_document_is_an_error_located_at_the_document(
    validator: RuleValidator, raw: bytes, found: str
) -> None:
    error = reject(validator, raw)
    assert error.code == "not-a-mapping"
    assert found in error.message
    expected = (3, 3) if raw.startswith(b"\n\n") else (1, 1)
    assert (error.line, error.column) == expected


def test_multiple_documents_are_an_error_at_the_second_document(validator: RuleValidator) -> None:
    error = reject(validator, (VALID + "---\nrule_id: R0011\n").encode())
    assert error.code == "multiple-documents"
    assert (error.line, error.column) == (12, 1)


def test_multiple_documents_with_explicit_markers_are_an_error(validator: RuleValidator) -> None:
    error = reject(validator, b"--- {a: 1}\n--- {b: 2}\n")
    assert error.code == "multiple-documents"
    assert (error.line, error.column) == (2, 1)


# --- bad bytes --------------------------------------------------------------------------


def test_binary_content_with_nul_byte_is_an_error_at_the_nul(validator: RuleValidator) -> None:
    error = reject(validator, b"rule_id: R1\nna\x00me: x\n")
    assert error.code == "binary"
    assert (error.line, error.column) == (2, 3)


def test_binary_file_starting_with_nul_is_an_error_at_line_1_column_1(
    validator: RuleValidator,
) -> None:
    error = reject(validator, b"\x00\x01\x02\xff\xfe" * 20)
    assert error.code == "binary"
    assert (error.line, error.column) == (1, 1)


def test_non_utf8_bytes_are_an_error_at_the_first_bad_byte(validator: RuleValidator) -> None:
    error = reject(validator, b"rule_id: R1\nname: caf\xe9\n")
    assert error.code == "encoding"
    assert (error.line, error.column) == (2, 10)
    assert "0xe9" in error.message


def test_utf16_file_is_rejected_not_crashed_on(validator: RuleValidator) -> None:
    report = validator.validate_bytes(VALID.encode("utf-16"), "R0010.yaml")
    error = only_error(report)
    # b"\xff\xfe" BOM, then "r\x00": the first NUL is the file's fourth byte.
    assert error.code == "binary"
    assert (error.line, error.column) == (1, 4)


def test_bytes_over_the_size_cap_are_rejected_at_line_1_column_1(validator: RuleValidator) -> None:
    raw = b"a: " + b"x" * MAX_FILE_BYTES
    error = reject(validator, raw)
    assert error.code == "file-too-large"
    assert (error.line, error.column) == (1, 1)


def test_bytes_exactly_at_the_size_cap_are_not_rejected_for_size() -> None:
    raw = b"a: " + b"x" * (MAX_FILE_BYTES - 4) + b"\n"
    assert len(raw) == MAX_FILE_BYTES
    assert decode_source(raw).startswith("a: x")


def test_huge_sparse_file_is_rejected_without_being_read(
    validator: RuleValidator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "R0010.yaml"
    with path.open("wb") as handle:
        handle.truncate(64 << 30)  # 64 GiB, sparse: reading it all would never finish here
    opened: list[Path] = []
    real_open = Path.open

    def spying_open(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self)
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", spying_open)
    report = validator.validate_file(path)
    error = only_error(report)
    assert error.code == "file-too-large"
    assert (error.line, error.column) == (1, 1)
    assert error.source == str(path)
    assert path not in opened


def test_file_one_byte_over_the_cap_on_disk_is_rejected(
    validator: RuleValidator, tmp_path: Path
) -> None:
    path = tmp_path / "R0010.yaml"
    path.write_bytes(b"a: " + b"x" * (MAX_FILE_BYTES - 2))
    assert path.stat().st_size == MAX_FILE_BYTES + 1
    error = only_error(validator.validate_file(path, "rules/R0010.yaml"))
    assert error.code == "file-too-large"
    assert error.source == "rules/R0010.yaml"
    assert (error.line, error.column) == (1, 1)


def test_unreadable_path_is_a_located_io_error(validator: RuleValidator, tmp_path: Path) -> None:
    error = only_error(validator.validate_file(tmp_path / "missing.yaml"))
    assert error.code == "io"
    assert (error.line, error.column) == (1, 1)


def test_file_on_disk_is_checked_against_its_own_stem(
    validator: RuleValidator, tmp_path: Path
) -> None:
    path = tmp_path / "R0011.yaml"
    path.write_text(VALID)
    error = only_error(validator.validate_file(path))
    assert error.code == "rule-id-mismatch"
    assert (error.line, error.column) == (1, 10)


# --- expansion and depth bombs ----------------------------------------------------------


BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_alias_bomb_is_rejected_at_the_alias_that_crosses_the_node_cap(
    validator: RuleValidator,
) -> None:
    error = reject(validator, BILLION_LAUGHS)
    assert error.code == "too-large"
    # 9 + 9*10 + 9*91 + ... the fifth line's third alias is the first to exceed 20,000 nodes.
    assert (error.line, error.column) == (5, 11)


def test_alias_bomb_of_mappings_is_rejected(validator: RuleValidator) -> None:
    lines = ["a0: &a0 {k: v, l: w}"]
    for i in range(1, 20):
        lines.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]")
    error = reject(validator, ("\n".join(lines) + "\n").encode())
    assert error.code == "too-large"
    assert error.line >= 2


def test_recursive_alias_is_an_error_at_the_alias(validator: RuleValidator) -> None:
    error = reject(validator, b"a: &a [1, *a]\n")
    assert error.code == "yaml-alias"
    assert (error.line, error.column) == (1, 11)


def test_undefined_alias_is_an_error_at_the_alias(validator: RuleValidator) -> None:
    error = reject(validator, b"rule_id: R1\nname: *nowhere\n")
    assert error.code == "yaml-alias"
    assert (error.line, error.column) == (2, 7)


def test_100k_open_brackets_are_rejected_at_the_depth_limit(validator: RuleValidator) -> None:
    error = reject(validator, b"[" * 100_000)
    assert error.code == "too-deep"
    assert (error.line, error.column) == (1, MAX_DEPTH + 1)


def test_100k_nested_flow_mappings_are_rejected_at_the_depth_limit(
    validator: RuleValidator,
) -> None:
    error = reject(validator, b"{a: " * 100_000)
    assert error.code == "too-deep"
    assert (error.line, error.column) == (1, 4 * MAX_DEPTH + 1)


def test_deep_block_nesting_is_rejected_at_the_depth_limit(validator: RuleValidator) -> None:
    text = "".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v\n"
    error = reject(validator, text.encode())
    assert error.code == "too-deep"
    assert (error.line, error.column) == (MAX_DEPTH + 1, MAX_DEPTH + 1)


def test_nesting_just_under_the_depth_limit_parses() -> None:
    depth = MAX_DEPTH - 1
    document = parse_document("[" * depth + "]" * depth)
    value = document.data
    for _ in range(depth - 1):
        assert isinstance(value, list)
        value = value[0]
    assert value == []


# --- tags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "position"),
    [
        (b"rule_id: !!python/object:os.system x\n", (1, 10)),
        (b"rule_id: R1\nname: !!python/object/apply:os.system ['ls']\n", (2, 7)),
        (b"rule_id: R1\nname: !!python/name:os.system ''\n", (2, 7)),
        (b"!!python/object:collections.OrderedDict {a: 1}\n", (1, 1)),
        (b"rule_id: R1\nname: !custom thing\n", (2, 7)),
        (b"rule_id: R1\nmatch: !!set {a, b}\n", (2, 8)),
        (b"rule_id: R1\nname: !!binary aGVsbG8=\n", (2, 7)),
    ],
    ids=["python-object", "python-apply", "python-name", "root-object", "local", "set", "binary"],
)
def test_unsupported_yaml_tags_are_errors_at_the_tagged_node(
    validator: RuleValidator, raw: bytes, position: tuple[int, int]
) -> None:
    error = reject(validator, raw)
    assert error.code == "yaml-tag"
    assert (error.line, error.column) == position


def test_standard_scalar_tags_are_accepted() -> None:
    document = parse_document("a: !!str 1\nb: !!int '2'\nc: !!float 3\n")
    assert document.data == {"a": "1", "b": 2, "c": 3.0}


def test_collection_as_a_mapping_key_is_rejected(validator: RuleValidator) -> None:
    error = reject(validator, b"rule_id: R1\n? [a, b]\n: c\n")
    assert error.code == "yaml-key"
    assert (error.line, error.column) == (2, 3)


def test_merge_key_is_rejected_not_crashed_on(validator: RuleValidator) -> None:
    report = validator.validate_bytes(b"base: &b {x: 1}\nother:\n  <<: *b\n", "R1.yaml")
    assert not report.ok
    assert all(d.line >= 1 and d.column >= 1 for d in report.errors)


# --- decode_source / YamlSourceError directly -------------------------------------------


def test_decode_source_strips_the_bom_and_reports_locations() -> None:
    assert decode_source(b"\xef\xbb\xbfa: 1\n") == "a: 1\n"
    with pytest.raises(YamlSourceError) as raised:
        decode_source(b"a: 1\nb: 2\n  \xc3(\n")
    assert (raised.value.line, raised.value.column) == (3, 3)
    assert raised.value.code == "encoding"


def test_yaml_source_error_becomes_a_diagnostic_naming_the_file() -> None:
    with pytest.raises(YamlSourceError) as raised:
        parse_document("a: 1\na: 2\n")
    diagnostic = raised.value.diagnostic("rules/R1.yaml")
    assert str(diagnostic).startswith("rules/R1.yaml:2:1: error: duplicate key 'a'")
    assert diagnostic.as_dict()["line"] == 2
