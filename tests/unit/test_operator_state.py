"""Operator state as the engine applies it (see docs/contract.md and docs/operations.md)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttp_core.engine.compiler import CompiledRule, compile_rule
from ttp_core.engine.index import RuleIndex
from ttp_core.engine.state import ENABLED, RuleState, StateKind
from ttp_core.rules.model import Rule

NOW = 1_700_000_000.0
DISABLED = RuleState(StateKind.DISABLED)


def rule(
    rule_id: str = "R1", confidences: tuple[float, ...] = (0.9,), version: int = 1
) -> CompiledRule:
    return compile_rule(
        Rule.model_validate(
            {
                "rule_id": rule_id,
                "rule_version": version,
                "name": "n",
                "applies_to": ["command"],
                "match": {"contains": "evil"},
                "emits": [
                    {"tactic": "TA0002", "technique_id": "T1059", "confidence": c}
                    for c in confidences
                ],
            }
        )
    )


EVENT: dict[str, Any] = {
    "source_kind": "command",
    "source_id": "e",
    "payload": {"command_text": "evil"},
}


def confidences(index: RuleIndex, now: float | None = NOW) -> list[float]:
    return [t.confidence for t in index.evaluate(EVENT, now=now)]


def clipped(limit: float, expires_at: float | None = None) -> RuleState:
    return RuleState(StateKind.CLIPPED, confidence_max=limit, expires_at=expires_at)


def test_no_state_means_enabled() -> None:
    index = RuleIndex.build([rule()])
    assert index.state("R1") is ENABLED
    assert confidences(index) == [0.9]


def test_disabled_rule_never_fires() -> None:
    index = RuleIndex.build([rule()], states={"R1": DISABLED})
    assert confidences(index) == []
    assert confidences(index, now=None) == []
    assert confidences(index, now=NOW * 10) == []


def test_disabled_rule_does_not_stop_other_rules() -> None:
    index = RuleIndex.build([rule("R1"), rule("R2")], states={"R1": DISABLED})
    assert [t.rule_id for t in index.evaluate(EVENT, now=NOW)] == ["R2"]


def test_clipped_rule_lowers_confidence_to_the_maximum() -> None:
    index = RuleIndex.build([rule(confidences=(0.9, 0.3))], states={"R1": clipped(0.5)})
    assert confidences(index) == [0.5, 0.3]


@pytest.mark.parametrize("limit", [0.9, 0.95, 1.0])
def test_clipped_rule_never_raises_confidence(limit: float) -> None:
    index = RuleIndex.build([rule(confidences=(0.9,))], states={"R1": clipped(limit)})
    assert confidences(index) == [0.9]


@pytest.mark.parametrize("limit", [None, 0.0, -0.1, 1.01])
def test_clipped_state_needs_a_maximum_in_the_unit_interval(limit: float | None) -> None:
    with pytest.raises(ValueError, match="confidence_max"):
        RuleState(StateKind.CLIPPED, confidence_max=limit)


def test_disabled_state_with_a_future_expiry_is_disabled_until_then() -> None:
    index = RuleIndex.build(
        [rule()], states={"R1": RuleState(StateKind.DISABLED, expires_at=NOW + 60)}
    )
    assert confidences(index, now=NOW) == []
    assert confidences(index, now=NOW + 59.999) == []


def test_expired_disabled_state_counts_as_enabled() -> None:
    index = RuleIndex.build([rule()], states={"R1": RuleState(StateKind.DISABLED, expires_at=NOW)})
    assert confidences(index, now=NOW) == [0.9]
    assert confidences(index, now=NOW + 3600) == [0.9]


def test_expired_clipped_state_restores_the_base_confidence() -> None:
    index = RuleIndex.build([rule()], states={"R1": clipped(0.2, expires_at=NOW - 1)})
    assert confidences(index) == [0.9]
    assert confidences(index, now=NOW - 2) == [0.2]


def test_expiry_is_judged_against_the_clock_when_no_time_is_given() -> None:
    past = RuleState(StateKind.DISABLED, expires_at=time.time() - 60)
    future = RuleState(StateKind.DISABLED, expires_at=time.time() + 3600)
    assert confidences(RuleIndex.build([rule()], states={"R1": past}), now=None) == [0.9]
    assert confidences(RuleIndex.build([rule()], states={"R1": future}), now=None) == []


def test_state_set_before_the_rule_exists_is_kept_and_applies_when_it_arrives() -> None:
    index = RuleIndex.empty().with_changes(states={"R1": DISABLED})
    assert index.state("R1") == DISABLED
    assert index.rule("R1") is None
    assert index.evaluate(EVENT, now=NOW) == []
    index = index.with_changes(upserts=[rule()])
    assert index.state("R1") == DISABLED
    assert confidences(index) == []


def test_clipped_state_before_the_rule_exists_applies_when_it_arrives() -> None:
    index = RuleIndex.empty().with_changes(states={"R1": clipped(0.4)})
    index = index.with_changes(upserts=[rule()])
    assert confidences(index) == [0.4]


def test_state_survives_a_new_version_of_the_rule_and_its_removal() -> None:
    index = RuleIndex.build([rule()], states={"R1": DISABLED})
    index = index.with_changes(upserts=[rule(version=2)])
    assert confidences(index) == []
    index = index.with_changes(removals=["R1"])
    assert index.state("R1") == DISABLED
    index = index.with_changes(upserts=[rule(version=3)])
    assert confidences(index) == []


def test_clearing_a_state_re_enables_the_rule() -> None:
    index = RuleIndex.build([rule()], states={"R1": DISABLED})
    cleared = index.with_changes(states={"R1": None})
    assert cleared.state("R1") is ENABLED
    assert confidences(cleared) == [0.9]
    assert confidences(index) == []


def test_state_change_does_not_touch_the_old_index() -> None:
    index = RuleIndex.build([rule()])
    disabled = index.with_changes(states={"R1": DISABLED})
    assert confidences(index) == [0.9]
    assert confidences(disabled) == []


def test_counts_exclude_disabled_rules_but_not_expired_or_clipped_ones() -> None:
    index = RuleIndex.build(
        [rule("R1"), rule("R2"), rule("R3"), rule("R4")],
        states={
            "R1": DISABLED,
            "R2": RuleState(StateKind.DISABLED, expires_at=NOW - 1),
            "R3": clipped(0.1),
            "R9": DISABLED,
        },
    )
    assert index.counts(now=NOW) == {"rules": 4, "active": 3, "external": 0}


def test_digest_reflects_states() -> None:
    base = RuleIndex.build([rule()])
    assert base.with_changes(states={"R1": DISABLED}).digest() != base.digest()
    assert (
        base.with_changes(states={"R1": clipped(0.5)}).digest()
        != base.with_changes(states={"R1": clipped(0.6)}).digest()
    )
    assert (
        base.with_changes(states={"R1": DISABLED}).with_changes(states={"R1": None}).digest()
        == base.digest()
    )


@settings(max_examples=100, deadline=None)
@given(
    base=st.floats(min_value=0.001, max_value=1.0),
    kind=st.sampled_from(list(StateKind)),
    limit=st.floats(min_value=0.001, max_value=1.0),
    expires=st.one_of(st.none(), st.floats(min_value=NOW - 100, max_value=NOW + 100)),
)
def test_state_never_raises_confidence_and_disabled_never_fires(
    base: float, kind: StateKind, limit: float, expires: float | None
) -> None:
    state = RuleState(
        kind, confidence_max=limit if kind is StateKind.CLIPPED else None, expires_at=expires
    )
    index = RuleIndex.build([rule(confidences=(base,))], states={"R1": state})
    got = confidences(index)
    expired = expires is not None and expires <= NOW
    if kind is StateKind.DISABLED and not expired:
        assert got == []
    elif kind is StateKind.CLIPPED and not expired:
        assert got == [min(base, limit)]
    else:
        assert got == [base]
    assert all(c <= base for c in got)
