"""Robustness properties: the loader never raises, and evaluation never raises.

`RuleValidator.validate_bytes` on any input returns either a good rule or located errors;
`RuleIndex.evaluate` on any JSON-like event returns a list of tags.
"""

from __future__ import annotations

import json
import string
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rule_samples import SPEC_RULE

from ttp_core.contract.field_catalogue import BUILTIN, parse_extension
from ttp_core.engine.compiler import compile_rule
from ttp_core.engine.index import RuleIndex
from ttp_core.engine.tags import Tag
from ttp_core.rules.model import Rule
from ttp_core.rules.validator import RuleReport, RuleValidator

# The seeds read fields real honeypots may send beyond the built-in field catalogue.
SEED_FIELDS = parse_extension(
    "kinds: {http_request: {fields: {status: integer, attachments: array}},"
    " auth_attempt: {fields: {attempts: integer, banner: string}}}",
    "seed-fields",
)
VALIDATOR = RuleValidator(fields=BUILTIN.extended(SEED_FIELDS))

SEEDS = [
    SPEC_RULE,
    """\
rule_id: R0020
rule_version: 3
name: scanner_user_agent
applies_to: [http_request, payload]
match:
  any:
    - field: headers.user_agent
      contains: sqlmap
      ignore_case: true
    - all:
        - field: status
          gte: 400
        - not:
            field: path
            startswith: /static/
    - field: attachments.name
      endswith: .exe
emits:
  - {tactic: TA0043, technique_id: T1595, sub_technique_id: T1595.002, confidence: 0.7}
  - {tactic: TA0007, technique_id: T1083, confidence: 1}
evidence_fields: [headers.user_agent, path]
tests:
  - event: {headers: {user_agent: SQLMap/1.7}}
    expect: fire
  - event: {status: 404, path: /admin}
    expect: fire
    source_kind: payload
""",
    """\
rule_id: R0030
rule_version: 1
name: brute_force_users
applies_to: [auth_attempt]
match:
  all:
    - in: [root, admin, oracle]
      ignore_case: true
    - field: attempts
      gt: 5
    - field: password
      exists: true
    - field: banner
      pattern: 'SSH-(?=2\\.0)'
emits:
  - tactic: TA0006
    technique_id: T1110
    sub_technique_id: T1110.001
    confidence: 0.8
""",
    """\
rule_id: R0040
rule_version: 1
name: beaconing
applies_to: [command]
match:
  kind: lifter:beaconing
  window_s: 300
emits:
  - tactic: TA0011
    technique_id: T1071
    confidence: 0.5
""",
]

SCALARS = [
    "",
    "~",
    "[]",
    "{}",
    "0",
    "-1",
    "1.5",
    "0.90",
    ".inf",
    ".nan",
    "yes",
    "'x'",
    '"\\x00"',
    "&a [1, 2]",
    "*a",
    "!!python/object:os.system x",
    "!!binary aGk=",
    "T9999",
    "T1059.999",
    "TA0002",
    "'(unclosed'",
    "'(?<=a)b'",
    "'(a+)+$'",
    "[command, email]",
    "{field: x, contains: y}",
    "2024-01-01",
    "0x1F",
    "1" + "0" * 400,
    "<<: *a",
    "? [a]",
    "|\n  block",
    "- item",
]


def check_report(report: RuleReport, raw: bytes) -> None:
    """The loader's contract: a good rule, or errors that each name a real position."""
    assert isinstance(report, RuleReport)
    if report.ok:
        assert report.rule is not None
        assert report.compiled is not None
        assert report.errors == ()
        assert report.content_sha256 is not None
        assert len(report.content_sha256) == 64
    else:
        assert report.compiled is None
        assert report.errors
    text = raw.decode("utf-8", "replace")
    max_line = len(text.splitlines()) + 1
    for diagnostic in report.diagnostics:
        assert diagnostic.line >= 1, str(diagnostic)
        assert diagnostic.column >= 1, str(diagnostic)
        assert diagnostic.line <= max_line, str(diagnostic)
        assert diagnostic.message
        assert str(diagnostic).startswith("x.yaml:")


def validate(raw: bytes) -> RuleReport:
    report = VALIDATOR.validate_bytes(raw, "x.yaml")
    check_report(report, raw)
    return report


# --- arbitrary input ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_give_a_rule_or_located_errors(raw: bytes) -> None:
    validate(raw)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_gives_a_rule_or_located_errors(text: str) -> None:
    validate(text.encode("utf-8", "surrogatepass"))


YAML_TOKENS = [
    *":-[]{},&*!?|>'\"#%@` \n\t.0123456789abcTAxyz_",
    "rule_id",
    "match",
    "emits",
    "\n  ",
]
YAMLISH = st.lists(st.sampled_from(YAML_TOKENS), max_size=120).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=YAMLISH)
def test_yaml_like_noise_gives_a_rule_or_located_errors(text: str) -> None:
    validate(text.encode())


# --- mutated valid rules -----------------------------------------------------------------


def _mutate(lines: list[str], op: str, i: int, j: int, payload: str) -> list[str]:
    if not lines:
        return [payload]
    i %= len(lines)
    j %= len(lines)
    out = list(lines)
    if op == "delete":
        del out[i]
    elif op == "duplicate":
        out.insert(i, out[i])
    elif op == "swap":
        out[i], out[j] = out[j], out[i]
    elif op == "insert":
        column = j % (len(out[i]) + 1)
        out[i] = out[i][:column] + payload + out[i][column:]
    elif op == "scalar":
        head, sep, _ = out[i].partition(": ")
        out[i] = f"{head}{sep or ': '}{payload}"
    elif op == "indent":
        out[i] = "  " + out[i]
    elif op == "dedent":
        out[i] = out[i][2:] if out[i].startswith("  ") else out[i]
    return out


mutation = st.tuples(
    st.sampled_from(["delete", "duplicate", "swap", "insert", "scalar", "indent", "dedent"]),
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=0, max_value=100),
    st.one_of(st.sampled_from(SCALARS), st.text(max_size=8)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_rule_texts_give_a_rule_or_located_errors(
    seed: str, mutations: list[tuple[str, int, int, str]]
) -> None:
    lines = seed.splitlines()
    for op, i, j, payload in mutations:
        lines = _mutate(lines, op, i, j, payload)
    raw = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    report = validate(raw)
    again = VALIDATOR.validate_bytes(raw, "x.yaml")
    assert again.diagnostics == report.diagnostics
    assert again.content_sha256 == report.content_sha256
    if report.ok:
        assert report.compiled is not None
        index = RuleIndex.build([report.compiled])
        for kind in report.compiled.kinds:
            for test in report.rule.tests if report.rule else []:
                index.evaluate({"source_kind": kind, "source_id": "t", "payload": test.event})


def test_every_seed_is_a_valid_rule() -> None:
    for seed in SEEDS:
        report = validate(seed.encode())
        assert report.ok, [str(d) for d in report.diagnostics]
        assert report.warnings == () or all(d.code == "regex-backtracking" for d in report.warnings)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.sampled_from(SEEDS[:3]),
    line=st.integers(min_value=0, max_value=40),
    value=st.one_of(
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.text(max_size=10),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(string.ascii_letters, max_size=5), st.integers(), max_size=2),
    ),
)
def test_every_scalar_replaced_by_any_json_value_gives_a_rule_or_located_errors(
    seed: str, line: int, value: Any
) -> None:
    lines = seed.splitlines()
    i = line % len(lines)
    head, sep, _ = lines[i].partition(": ")
    if not sep:
        return
    lines[i] = f"{head}: {json.dumps(value)}"
    validate(("\n".join(lines) + "\n").encode())


# --- evaluation never raises ---------------------------------------------------------------


def _rule(rule_id: str, kinds: list[str], match: dict[str, Any], evidence: list[str]) -> Any:
    return compile_rule(
        Rule.model_validate(
            {
                "rule_id": rule_id,
                "rule_version": 1,
                "name": rule_id,
                "applies_to": kinds,
                "match": match,
                "emits": [{"tactic": "TA0002", "technique_id": "T1059", "confidence": 0.9}],
                "evidence_fields": evidence,
            }
        )
    )


ALL_KINDS = ["command", "http_request", "auth_attempt", "payload", "email", "custom"]
FIELDS = ["a", "a.b", "a.b.c", "l.x", "command_text", "n"]

INDEX = RuleIndex.build(
    [
        _rule("P", ALL_KINDS[:5], {"pattern": "(?i)a+b"}, ["a", "a.b", "l.x"]),
        _rule("B", ALL_KINDS, {"field": "a", "pattern": "(a+)+(?=b)$"}, ["a"]),
        _rule("C", ALL_KINDS, {"field": "a.b", "contains": "x", "ignore_case": True}, ["a.b.c"]),
        _rule("S", ALL_KINDS, {"field": "l.x", "startswith": "s"}, []),
        _rule("E", ALL_KINDS, {"field": "a", "endswith": "e"}, []),
        _rule("Q", ALL_KINDS, {"field": "a", "equals": "q"}, []),
        _rule("QN", ALL_KINDS, {"field": "n", "equals": 3}, []),
        _rule("QB", ALL_KINDS, {"field": "n", "equals": True}, []),
        _rule("I", ALL_KINDS, {"field": "a", "in": ["a", 1, 2.5, False]}, ["n"]),
        _rule("IC", ALL_KINDS, {"field": "a", "in": ["A", "B"], "ignore_case": True}, []),
        _rule("X", ALL_KINDS, {"field": "a.b.c", "exists": True}, []),
        _rule("XF", ALL_KINDS, {"field": "zz", "exists": False}, ["zz"]),
        _rule("G", ALL_KINDS, {"field": "n", "gt": 1}, []),
        _rule("GE", ALL_KINDS, {"field": "n", "gte": 10**30}, []),
        _rule("L", ALL_KINDS, {"field": "n", "lt": -0.5}, []),
        _rule("LE", ALL_KINDS, {"field": "l.x", "lte": 0}, []),
        _rule(
            "T",
            ALL_KINDS,
            {"all": [{"field": "a", "exists": True}, {"not": {"field": "n", "gt": 5}}]},
            ["a", "n"],
        ),
        _rule("N", ALL_KINDS, {"not": {"any": [{"field": "a", "contains": "z"}]}}, []),
    ],
    lifters={"boom": lambda rule, event: 1 / 0 > 0},
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["aab", "x", "q", "s1", "e", "A", "3", " 12 ", "1e400", "nan", "-inf"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(["a", "b", "c", "x", "l", "n"]), st.text(max_size=5)),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)
payloads = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from([*FIELDS, "zz", "l"]), json_values, max_size=6),
)
events = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "source_kind": st.one_of(st.sampled_from(ALL_KINDS), json_values),
            "source_id": json_values,
            "payload": payloads,
        },
    ),
)


def check_tags(tags: Any) -> None:
    assert isinstance(tags, list)
    for tag in tags:
        assert isinstance(tag, Tag)
        json.dumps(tag.as_dict())
        assert 0 < tag.confidence <= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events)
def test_evaluate_never_raises_on_json_like_events(event: Any) -> None:
    check_tags(INDEX.evaluate(event))
    check_tags(INDEX.evaluate(event, now=0.0))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_evaluate_never_raises_on_events_decoded_from_any_json(text: str) -> None:
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        return
    check_tags(INDEX.evaluate(event))


def _nested(depth: int, leaf: Any, as_list: bool) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"a": value, "b": value if depth < 0 else "x"}
    return value


def test_evaluate_handles_deep_nesting_everywhere() -> None:
    for as_list in (True, False):
        deep = _nested(100_000, "aab", as_list)
        for event in (
            {"source_kind": "command", "source_id": deep, "payload": {"a": "q"}},
            {"source_kind": "command", "source_id": "s", "payload": {"a": deep, "n": deep}},
            {"source_kind": "command", "source_id": "s", "payload": {"l": deep, "zz": deep}},
            {"source_kind": "command", "source_id": "s", "payload": deep},
            {"source_kind": deep, "source_id": "s", "payload": {"a": "q"}},
            deep,
        ):
            check_tags(INDEX.evaluate(event))


def test_evaluate_handles_json_nesting_at_the_decoder_limit_under_a_deep_stack() -> None:
    deep = json.loads("[" * 900 + '"aab"' + "]" * 900)

    def nested_call(frames: int) -> list[Tag]:
        if frames == 0:
            return INDEX.evaluate(
                {"source_kind": "command", "source_id": deep, "payload": {"a": deep}}
            )
        return nested_call(frames - 1)

    check_tags(nested_call(200))


def test_evaluate_handles_huge_strings_and_wide_values() -> None:
    huge = "a" * 5_000_000 + "b"
    event = {
        "source_kind": "command",
        "source_id": huge,
        "payload": {"a": huge, "command_text": huge, "l": [{"x": huge}] * 1000, "n": huge},
    }
    check_tags(INDEX.evaluate(event))
    wide = {
        "source_kind": "command",
        "source_id": "s",
        "payload": {"a": ["q"] * 20_000, "zz": list(range(10_000))},
    }
    tags = INDEX.evaluate(wide)
    check_tags(tags)
    assert "Q" in {t.rule_id for t in tags}


def test_evaluate_rejects_non_mapping_events_and_payloads_quietly() -> None:
    for event in (
        None,
        "command",
        42,
        ["source_kind", "command"],
        {"source_kind": "command"},
        {"source_kind": "command", "payload": None},
        {"source_kind": "command", "payload": ["a", "aab"]},
        {"source_kind": "command", "payload": "aab"},
        {"source_kind": 7, "payload": {"a": "aab"}},
        {"source_kind": None, "payload": {"a": "aab"}},
        {"source_kind": ["command"], "payload": {"a": "aab"}},
        {"payload": {"a": "aab"}},
    ):
        assert INDEX.evaluate(event) == []  # type: ignore[arg-type]


def test_evaluate_ignores_a_str_subclass_source_kind() -> None:
    class Sneaky(str):
        def __hash__(self) -> int:
            raise RuntimeError("no")

    assert INDEX.evaluate({"source_kind": Sneaky("command"), "payload": {"a": "q"}}) == []


def test_evaluate_of_an_unknown_kind_gives_nothing() -> None:
    assert INDEX.evaluate({"source_kind": "nope", "payload": {"a": "q"}}) == []


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.one_of(
            st.text(st.characters(exclude_categories=()), max_size=6),  # surrogates included
            st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ud83d\ude00"]),
        ),
        max_size=6,
    ).map("".join),
    line=st.sampled_from([3, 4, 16]),
)
def test_any_text_is_storable_or_a_located_text_error(text: str, line: int) -> None:
    """Whatever a double-quoted YAML string spells (NUL, lone or paired surrogates, controls),
    the rule either holds only text PostgreSQL and UTF-8 accept, or is rejected at that line."""
    escaped = json.dumps(text)  # JSON escapes are YAML double-quoted escapes
    lines = SPEC_RULE.splitlines()
    lines[line - 1] = {
        3: f"name: {escaped}",
        4: f"description: {escaped}",
        16: f"  - {{event: {{command_text: {escaped}, other: 1}}, expect: no_fire}}",
    }[line]
    if line == 16:
        del lines[16]  # the old `expect` line of that test
    report = validate(("\n".join(lines) + "\n").encode())
    hypothesis.event("stored" if report.ok else f"rejected: {report.errors[0].code}")
    if report.ok:
        assert report.rule is not None
        encoded = json.dumps(report.rule.normalised(), ensure_ascii=False).encode("utf-8")
        assert b"\x00" not in encoded and b"\\u0000" not in encoded
    else:
        assert report.errors, "an invalid report names its errors"
        text_errors = [d for d in report.errors if d.code in ("text-nul", "text-surrogate")]
        if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            assert text_errors or report.errors[0].line == line, [str(d) for d in report.errors]
        for error in text_errors:
            assert error.line == line
