"""RuleIndex: immutable snapshots, incremental `with_changes`, digests and lifters."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttp_core.engine.compiler import CompiledRule, compile_rule
from ttp_core.engine.index import KindIndex, RuleIndex, ShardSet
from ttp_core.engine.state import RuleState, StateKind
from ttp_core.rules.model import Rule


def rule(
    rule_id: str,
    match: dict[str, Any] | None = None,
    kinds: tuple[str, ...] = ("command",),
    version: int = 1,
) -> CompiledRule:
    return compile_rule(
        Rule.model_validate(
            {
                "rule_id": rule_id,
                "rule_version": version,
                "name": rule_id.lower(),
                "applies_to": list(kinds),
                "match": match or {"field": "text", "contains": rule_id.lower()},
                "emits": [{"tactic": "TA0002", "technique_id": "T1059", "confidence": 0.9}],
            }
        )
    )


def fired(index: RuleIndex, kind: str, payload: dict[str, Any]) -> list[tuple[str, int]]:
    tags = index.evaluate({"source_kind": kind, "source_id": "e", "payload": payload}, now=0)
    return [(t.rule_id, t.rule_version) for t in tags]


def kind_index(index: RuleIndex, kind: str) -> KindIndex | None:
    return index._kinds.get(kind)


def field_matchers(index: RuleIndex, kind: str) -> dict[str, Any]:
    found = kind_index(index, kind)
    assert found is not None
    return found._fields


# --- snapshots and sharing --------------------------------------------------------------


def test_replacing_one_rule_leaves_other_kinds_index_objects_identical() -> None:
    old = RuleIndex.build(
        [
            rule("A", kinds=("command",)),
            rule("B", kinds=("http_request",)),
            rule("C", kinds=("email",)),
        ]
    )
    new = old.with_changes(upserts=[rule("A", {"field": "text", "contains": "zzz"}, version=2)])
    assert kind_index(new, "http_request") is kind_index(old, "http_request")
    assert kind_index(new, "email") is kind_index(old, "email")
    assert kind_index(new, "command") is not kind_index(old, "command")


def test_replacing_one_rule_leaves_matchers_of_other_fields_of_its_kind_identical() -> None:
    old = RuleIndex.build(
        [
            rule("A", {"field": "text", "contains": "a"}),
            rule("B", {"field": "user", "contains": "b"}),
        ]
    )
    new = old.with_changes(upserts=[rule("A", {"field": "text", "contains": "aa"}, version=2)])
    assert field_matchers(new, "command")["user"] is field_matchers(old, "command")["user"]
    assert field_matchers(new, "command")["text"] is not field_matchers(old, "command")["text"]


def test_replacing_one_rule_recompiles_only_its_shard_of_a_busy_field() -> None:
    rules = [rule(f"R{i:04d}", {"field": "text", "contains": f"word{i}x"}) for i in range(400)]
    old = RuleIndex.build(rules)
    before = field_matchers(old, "command")["text"]
    assert len(before.shards) > 1
    changed = rule("R0007", {"field": "text", "contains": "changedword"}, version=2)
    new = old.with_changes(upserts=[changed])
    after = field_matchers(new, "command")["text"]
    kept = [a is b for a, b in zip(before.shards, after.shards, strict=True)]
    assert kept.count(False) == 1
    assert fired(new, "command", {"text": "a changedword here"}) == [("R0007", 2)]
    assert fired(new, "command", {"text": "word7x"}) == []
    assert fired(new, "command", {"text": "word399x"}) == [("R0399", 1)]
    assert new.digest() == RuleIndex.build([*rules[:7], changed, *rules[8:]]).digest()


def test_replacing_one_rule_keeps_the_long_text_sets_of_the_other_shards() -> None:
    rules = [rule(f"R{i:04d}", {"field": "text", "contains": f"word{i}x"}) for i in range(1200)]
    old = RuleIndex.build(rules)
    before = field_matchers(old, "command")["text"].sets
    assert len(before) > 1
    new = old.with_changes(upserts=[rule("R0007", {"field": "text", "contains": "z"}, version=2)])
    after = field_matchers(new, "command")["text"].sets
    assert [a is b for a, b in zip(before, after, strict=True)].count(False) == 1
    long_text = "word1199x " + "y" * 2000 + " z"
    assert fired(new, "command", {"text": long_text}) == [("R0007", 2), ("R1199", 1)]


def test_the_old_index_keeps_evaluating_the_old_rule() -> None:
    old = RuleIndex.build([rule("A", {"field": "text", "contains": "old"}), rule("B")])
    new = old.with_changes(upserts=[rule("A", {"field": "text", "contains": "new"}, version=2)])
    assert fired(old, "command", {"text": "old"}) == [("A", 1)]
    assert fired(old, "command", {"text": "new"}) == []
    assert fired(new, "command", {"text": "new"}) == [("A", 2)]
    assert fired(new, "command", {"text": "old"}) == []
    assert old.rule("A") is not None
    assert old.rule("A").rule_version == 1  # type: ignore[union-attr]
    assert (
        fired(old, "command", {"text": "b"}) == fired(new, "command", {"text": "b"}) == [("B", 1)]
    )


def test_with_changes_without_changes_shares_every_kind() -> None:
    old = RuleIndex.build([rule("A"), rule("B", kinds=("email",))])
    new = old.with_changes()
    assert new is not old
    assert kind_index(new, "command") is kind_index(old, "command")
    assert kind_index(new, "email") is kind_index(old, "email")
    assert new.digest() == old.digest()


# --- removal and moves ------------------------------------------------------------------


def test_removing_a_rule_stops_it_firing_and_keeps_the_others() -> None:
    old = RuleIndex.build([rule("A"), rule("B")])
    new = old.with_changes(removals=["A"])
    assert new.rule("A") is None
    assert fired(new, "command", {"text": "a b"}) == [("B", 1)]
    assert fired(old, "command", {"text": "a b"}) == [("A", 1), ("B", 1)]


def test_removing_the_last_rule_of_a_kind_drops_that_kind() -> None:
    old = RuleIndex.build([rule("A", kinds=("command",)), rule("B", kinds=("email",))])
    new = old.with_changes(removals=["A"])
    assert kind_index(new, "command") is None
    assert kind_index(new, "email") is kind_index(old, "email")
    assert new.counts() == {"rules": 1, "active": 1, "external": 0}


def test_removing_an_unknown_rule_changes_nothing() -> None:
    old = RuleIndex.build([rule("A")])
    new = old.with_changes(removals=["nope"])
    assert new.digest() == old.digest()
    assert kind_index(new, "command") is kind_index(old, "command")


def test_moving_a_rule_from_one_kind_to_another() -> None:
    old = RuleIndex.build([rule("A", kinds=("command",)), rule("B", kinds=("command",))])
    new = old.with_changes(upserts=[rule("A", kinds=("email",), version=2)])
    assert fired(new, "command", {"text": "a"}) == []
    assert fired(new, "email", {"text": "a"}) == [("A", 2)]
    assert fired(new, "command", {"text": "b"}) == [("B", 1)]
    assert fired(old, "command", {"text": "a"}) == [("A", 1)]
    assert fired(old, "email", {"text": "a"}) == []
    assert "A" not in kind_index(new, "command").programs  # type: ignore[union-attr]


def test_moving_the_only_rule_of_a_kind_drops_the_old_kind() -> None:
    old = RuleIndex.build([rule("A", kinds=("command",))])
    new = old.with_changes(upserts=[rule("A", kinds=("payload", "email"))])
    assert kind_index(new, "command") is None
    assert fired(new, "payload", {"text": "a"}) == [("A", 1)]
    assert fired(new, "email", {"text": "a"}) == [("A", 1)]


def test_changing_a_rules_field_stops_matches_on_the_old_field() -> None:
    old = RuleIndex.build(
        [rule("A", {"field": "x", "contains": "a"}), rule("B", {"field": "x", "contains": "b"})]
    )
    new = old.with_changes(upserts=[rule("A", {"field": "y", "contains": "a"}, version=2)])
    assert fired(new, "command", {"x": "a b"}) == [("B", 1)]
    assert fired(new, "command", {"y": "a"}) == [("A", 2)]


def test_changing_a_regex_rule_into_a_direct_rule_and_back() -> None:
    index = RuleIndex.build([rule("A")])
    index = index.with_changes(upserts=[rule("A", {"field": "n", "gt": 3}, version=2)])
    assert fired(index, "command", {"text": "a"}) == []
    assert fired(index, "command", {"n": 4}) == [("A", 2)]
    index = index.with_changes(upserts=[rule("A", version=3)])
    assert fired(index, "command", {"n": 4}) == []
    assert fired(index, "command", {"text": "a"}) == [("A", 3)]


def test_the_last_of_several_upserts_of_one_rule_in_a_batch_wins() -> None:
    first = rule("A", kinds=("command", "email"), version=1)
    second = rule("A", {"field": "text", "contains": "zz"}, kinds=("command",), version=2)
    index = RuleIndex.empty().with_changes(upserts=[first, second])
    assert fired(index, "email", {"text": "a"}) == []
    assert fired(index, "command", {"text": "a"}) == []
    assert fired(index, "command", {"text": "zz"}) == [("A", 2)]
    assert index.digest() == RuleIndex.build([second]).digest()
    existing = RuleIndex.build([rule("A", kinds=("payload",))])
    updated = existing.with_changes(upserts=[first, second])
    assert fired(updated, "payload", {"text": "a"}) == []
    assert fired(updated, "email", {"text": "a"}) == []


def test_removal_and_upsert_of_one_rule_in_a_batch_keeps_the_upsert() -> None:
    old = RuleIndex.build([rule("A", kinds=("command",))])
    new = old.with_changes(upserts=[rule("A", kinds=("email",), version=2)], removals=["A"])
    assert fired(new, "email", {"text": "a"}) == [("A", 2)]
    assert fired(new, "command", {"text": "a"}) == []


# --- filters compile on first use ---------------------------------------------------------


def test_a_built_index_compiles_a_fields_filters_when_an_event_first_reads_it() -> None:
    index = RuleIndex.build(
        [
            rule("A", {"field": "text", "contains": "a"}),
            rule("B", {"field": "user", "contains": "b"}),
        ]
    )
    assert index.pending_filters() == 4  # per field: its filter, and its set for long texts
    assert fired(index, "command", {"text": "a"}) == [("A", 1)]
    assert index.pending_filters() == 3
    assert index.compile_filters() is True
    assert index.pending_filters() == 0
    assert fired(index, "command", {"user": "b", "text": "a"}) == [("A", 1), ("B", 1)]


def test_compiling_filters_ahead_gives_the_same_tags_as_compiling_them_on_use() -> None:
    rules = [rule(f"R{i:03d}", {"field": "text", "contains": f"w{i}x"}) for i in range(200)]
    ahead, on_use = RuleIndex.build(rules), RuleIndex.build(rules)
    assert ahead.compile_filters() is True
    for i in range(0, 200, 7):
        payload = {"text": f"... w{i}x w{i + 1}x"}
        assert fired(ahead, "command", payload) == fired(on_use, "command", payload)


def test_compile_filters_with_no_time_left_compiles_nothing_and_says_so() -> None:
    index = RuleIndex.build([rule("A"), rule("B", kinds=("email",))])
    assert index.compile_filters(budget_s=0) is False
    assert index.pending_filters() == 4


# --- long texts ---------------------------------------------------------------------------

LONG_TEXT_RULES = [
    rule("ENDS", {"field": "text", "endswith": "tail"}),
    rule("STARTS", {"field": "text", "startswith": "head"}),
    rule("HAS", {"field": "text", "contains": "needle"}),
    rule("DOLLAR", {"field": "text", "pattern": "wget [a-z]+$"}),
    rule("WORD", {"field": "text", "pattern": "\\bchmod\\b"}),
]


@pytest.mark.parametrize("size", [100, 600, 5000, 9000, 40000])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("head {pad} needle {pad} tail", ["ENDS", "HAS", "STARTS"]),
        ("{pad} tail {pad} head", []),
        ("{pad} chmod {pad} wget abc", ["DOLLAR", "WORD"]),
        ("{pad}chmodx wget abc {pad}", []),
    ],
)
def test_texts_of_every_length_match_alike(size: int, text: str, expected: list[str]) -> None:
    """Short texts (cached), a few KB (an RE2 set per shard) and longer ones (the filter)."""
    pad = "x" * (size // 2)
    index = RuleIndex.build(LONG_TEXT_RULES)
    assert [r for r, _ in fired(index, "command", {"text": text.format(pad=pad)})] == expected


def test_a_set_that_gives_no_answer_leaves_the_text_to_the_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class OutOfMemory:
        def Match(self, data: bytes) -> None:
            return None  # what RE2 answers when the set's DFA runs out of memory

    def compile_out_of_memory(shard_set: ShardSet) -> None:
        shard_set._set = OutOfMemory()

    monkeypatch.setattr(ShardSet, "compile", compile_out_of_memory)
    index = RuleIndex.build(LONG_TEXT_RULES)
    text = "head " + "x" * 3000 + " needle chmod wget abc"
    assert [r for r, _ in fired(index, "command", {"text": text})] == [
        "DOLLAR",
        "HAS",
        "STARTS",
        "WORD",
    ]


# --- digests ----------------------------------------------------------------------------


def sample_rules() -> list[CompiledRule]:
    return [
        rule("A"),
        rule("B", {"field": "n", "gt": 1}, kinds=("command", "payload")),
        rule("C", {"any": [{"contains": "c"}, {"field": "n", "lt": 0}]}, kinds=("email",)),
        rule("D", {"not": {"field": "user", "equals": "root"}}, kinds=("auth_attempt",)),
    ]


def test_digest_is_independent_of_build_order() -> None:
    rules = sample_rules()
    digests = {RuleIndex.build(order).digest() for order in itertools.permutations(rules)}
    assert len(digests) == 1


def test_incremental_index_has_the_same_digest_as_a_build() -> None:
    rules = sample_rules()
    built = RuleIndex.build(rules)
    one_by_one = RuleIndex.empty()
    for compiled in reversed(rules):
        one_by_one = one_by_one.with_changes(upserts=[compiled])
    assert one_by_one.digest() == built.digest()
    at_once = RuleIndex.empty().with_changes(upserts=rules)
    assert at_once.digest() == built.digest()


def test_digest_changes_with_a_rule_and_returns_when_it_is_undone() -> None:
    built = RuleIndex.build(sample_rules())
    changed = built.with_changes(upserts=[rule("A", version=2)])
    assert changed.digest() != built.digest()
    assert changed.with_changes(upserts=[rule("A")]).digest() == built.digest()
    assert built.with_changes(removals=["A"]).digest() != built.digest()


def test_empty_indexes_have_equal_digests() -> None:
    assert RuleIndex.empty().digest() == RuleIndex.build([]).digest()
    assert (
        RuleIndex.build([rule("A")]).with_changes(removals=["A"]).digest()
        == RuleIndex.empty().digest()
    )


# --- equivalence of incremental and whole builds -----------------------------------------


POOL: list[CompiledRule] = [
    rule("A", {"field": "text", "contains": "alpha"}),
    rule("A", {"field": "text", "pattern": "al+pha$"}, kinds=("command", "email"), version=2),
    rule("A", {"field": "n", "gte": 5}, kinds=("email",), version=3),
    rule("B", {"field": "text", "startswith": "be"}, kinds=("command", "payload")),
    rule(
        "B",
        {"all": [{"field": "text", "contains": "be"}, {"field": "user", "equals": "x"}]},
        version=2,
    ),
    rule("C", {"field": "user", "in": ["root", "x"]}, kinds=("command", "email")),
    rule("C", {"not": {"field": "text", "contains": "gamma"}}, kinds=("payload",), version=2),
    rule("D", {"field": "text", "pattern": "d(?=elta)"}, kinds=("command",)),
    rule("D", {"field": "text", "endswith": "delta"}, kinds=("email", "command"), version=2),
    rule("E", {"any": [{"field": "user", "exists": False}, {"field": "text", "contains": "eps"}]}),
]

PAYLOADS: list[dict[str, Any]] = [
    {"text": "alpha beta delta", "user": "x", "n": 7},
    {"text": "be alllpha"},
    {"text": "gamma", "user": "root", "n": 1},
    {"text": "epsilon delta", "user": "nobody"},
    {},
]
KINDS = ("command", "email", "payload", "auth_attempt")

operations = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(st.sampled_from(range(len(POOL))), max_size=3)),
        st.tuples(st.just("remove"), st.lists(st.sampled_from("ABCDEZ"), max_size=2)),
        st.tuples(
            st.just("state"),
            st.lists(
                st.tuples(st.sampled_from("ABCDE"), st.sampled_from(["off", "clip", "clear"])),
                max_size=2,
            ),
        ),
    ),
    max_size=8,
)

_STATES: dict[str, RuleState | None] = {
    "off": RuleState(StateKind.DISABLED),
    "clip": RuleState(StateKind.CLIPPED, confidence_max=0.5),
    "clear": None,
}


def _all_results(index: RuleIndex) -> list[list[tuple[str, int, float]]]:
    results = []
    for kind, payload in itertools.product(KINDS, PAYLOADS):
        tags = index.evaluate({"source_kind": kind, "source_id": "e", "payload": payload}, now=0)
        results.append([(t.rule_id, t.rule_version, t.confidence) for t in tags])
    return results


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_incremental_changes_behave_exactly_like_a_fresh_build(ops: list[tuple[str, Any]]) -> None:
    index = RuleIndex.empty()
    expected_rules: dict[str, CompiledRule] = {}
    expected_states: dict[str, RuleState] = {}
    snapshots: list[tuple[RuleIndex, list[list[tuple[str, int, float]]]]] = []
    for op, arg in ops:
        if op == "upsert":
            batch = [POOL[i] for i in arg]
            index = index.with_changes(upserts=batch)
            for compiled in batch:
                expected_rules[compiled.rule_id] = compiled
        elif op == "remove":
            index = index.with_changes(removals=arg)
            for rule_id in arg:
                expected_rules.pop(rule_id, None)
        else:
            changes = {rule_id: _STATES[name] for rule_id, name in arg}
            index = index.with_changes(states=changes)
            for rule_id, state in changes.items():
                if state is None:
                    expected_states.pop(rule_id, None)
                else:
                    expected_states[rule_id] = state
        snapshots.append((index, _all_results(index)))
    fresh = RuleIndex.build(expected_rules.values(), states=expected_states)
    assert index.digest() == fresh.digest()
    assert _all_results(index) == _all_results(fresh)
    assert dict(index.rules) == expected_rules
    # Older snapshots are untouched by later changes.
    for snapshot, results in snapshots:
        assert _all_results(snapshot) == results


# --- external (lifter) rules --------------------------------------------------------------


def external(rule_id: str = "L1", lifter: str = "beacon") -> CompiledRule:
    return compile_rule(
        Rule.model_validate(
            {
                "rule_id": rule_id,
                "rule_version": 1,
                "name": "beaconing",
                "applies_to": ["command"],
                "match": {"kind": f"lifter:{lifter}", "window_s": 300},
                "emits": [{"tactic": "TA0011", "technique_id": "T1071", "confidence": 0.5}],
            }
        )
    )


def test_external_rule_is_counted_but_not_evaluated_without_its_lifter() -> None:
    index = RuleIndex.build([external(), rule("A")])
    assert index.counts() == {"rules": 2, "active": 1, "external": 1}
    assert fired(index, "command", {"text": "a"}) == [("A", 1)]


def test_registered_lifter_decides_whether_an_external_rule_fires() -> None:
    seen: list[tuple[str, Any]] = []

    def beacon(rule: Rule, event: Any) -> bool:
        seen.append((rule.rule_id, event["payload"]))
        return bool(event["payload"].get("beacon"))

    index = RuleIndex.build([external()], lifters={"beacon": beacon})
    assert fired(index, "command", {"beacon": True}) == [("L1", 1)]
    assert fired(index, "command", {}) == []
    assert fired(index, "email", {"beacon": True}) == []
    assert seen == [("L1", {"beacon": True}), ("L1", {})]


def test_a_failing_lifter_does_not_stop_tagging() -> None:
    def broken(rule: Rule, event: Any) -> bool:
        raise RuntimeError("boom")

    index = RuleIndex.build([external(), rule("A")], lifters={"beacon": broken})
    assert fired(index, "command", {"text": "a"}) == [("A", 1)]


def test_lifters_survive_incremental_changes() -> None:
    index = RuleIndex.empty(lifters={"beacon": lambda rule, event: True})
    index = index.with_changes(upserts=[external()])
    assert fired(index, "command", {}) == [("L1", 1)]
    index = index.with_changes(upserts=[rule("L1", version=2)])
    assert fired(index, "command", {}) == []
    assert fired(index, "command", {"text": "l1"}) == [("L1", 2)]


def test_disabled_external_rule_does_not_fire() -> None:
    index = RuleIndex.build(
        [external()],
        states={"L1": RuleState(StateKind.DISABLED)},
        lifters={"beacon": lambda r, e: True},
    )
    assert fired(index, "command", {}) == []


# --- evidence objects ----------------------------------------------------------------------


def evidence_rule(rule_id: str, fields: list[str]) -> CompiledRule:
    return compile_rule(
        Rule.model_validate(
            {
                "rule_id": rule_id,
                "rule_version": 1,
                "name": rule_id.lower(),
                "applies_to": ["http_request"],
                "match": {"field": "path", "contains": "/"},
                "emits": [{"tactic": "TA0002", "technique_id": "T1059", "confidence": 0.9}],
                "evidence_fields": fields,
            }
        )
    )


def evidence_of(payload: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    index = RuleIndex.build([evidence_rule("R1", fields)])
    (tag,) = index.evaluate({"source_kind": "http_request", "source_id": "e", "payload": payload})
    return tag.evidence


def test_an_object_of_short_texts_is_copied_whole_into_the_evidence() -> None:
    headers = {"host": "example.org", "user-agent": "curl/8.0", "accept": "*/*"}
    evidence = evidence_of({"path": "/", "headers": headers}, ["headers"])
    assert evidence == {"headers": headers}
    assert list(evidence["headers"]) == list(headers)  # key order kept
    assert evidence["headers"] is not headers  # a copy: the tag never aliases the event


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"a": "x" * 2000, "b": "y"}, {"a": "x" * 1024, "b": "y"}),
        ({"k" * 2000: "v"}, {"k" * 1024: "v"}),
        ({"n": 7, "list": ["a", 1]}, {"n": 7, "list": ["a", 1]}),
        ({f"h{i}": "v" for i in range(40)}, {f"h{i}": "v" for i in range(32)}),
    ],
    ids=["long-value", "long-key", "not-text", "too-many-items"],
)
def test_an_object_with_long_or_other_items_is_bounded_item_by_item(
    headers: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert evidence_of({"path": "/", "headers": headers}, ["headers"]) == {"headers": expected}


def test_rules_citing_the_same_or_other_evidence_fields_each_get_theirs() -> None:
    payload = {"path": "/x", "method": "GET", "body": "b"}
    index = RuleIndex.build(
        [
            evidence_rule("R1", ["path"]),
            evidence_rule("R2", ["method"]),
            evidence_rule("R3", ["path"]),
            evidence_rule("R4", ["method", "body"]),
        ]
    )
    tags = index.evaluate({"source_kind": "http_request", "source_id": "e", "payload": payload})
    assert [(t.rule_id, t.evidence) for t in tags] == [
        ("R1", {"path": "/x"}),
        ("R2", {"method": "GET"}),
        ("R3", {"path": "/x"}),
        ("R4", {"method": "GET", "body": "b"}),
    ]
