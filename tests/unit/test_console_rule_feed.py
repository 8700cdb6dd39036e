"""The console's rule feed without NATS: what TTP_RULES messages make of each rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.bus_messages import Emit, rule_definition, rule_reloaded
from harness.bus_messages import rule_state as state
from ttp_console.rule_feed import RuleFeed, covered_techniques
from ttp_core.contract import subjects
from ttp_core.contract.payloads import MASTER_SOURCE, RulesetRevision, encode, envelope


def definition(rule_id: str, *emits: Emit, kind: str = "") -> Any:
    match: dict[str, Any] = {"kind": kind} if kind else {"field": "command_text", "pattern": "x"}
    return rule_definition(rule_id, *emits, name=f"{rule_id}_name", rule_version=2, match=match)


def reloaded(
    rule_id: str, revision: int, rule: Any = None, *, deleted: bool = False
) -> tuple[str, bytes]:
    return rule_reloaded(
        rule_id, revision, rule, deleted=deleted, rule_version=2, source_path=f"dir/{rule_id}.yaml"
    )


def test_the_newest_revision_of_a_definition_wins_in_any_order() -> None:
    feed = RuleFeed()
    assert feed.apply(*reloaded("R1", 5, definition("R1", ("T1110", None, 0.7))))
    assert not feed.apply(*reloaded("R1", 3, definition("R1", ("T1059", None, 0.5))))
    held = feed.definition("R1")
    assert held is not None
    assert (held.revision, held.name, held.source_path) == (5, "R1_name", "dir/R1.yaml")
    assert [e.technique for e in held.emits] == ["T1110"]


def test_a_tombstone_removes_the_rule() -> None:
    feed = RuleFeed()
    feed.apply(*reloaded("R1", 1, definition("R1", ("T1110", None, 0.7))))
    assert feed.apply(*reloaded("R1", 2, None, deleted=True))
    assert feed.definitions() == {}
    assert not feed.apply(*reloaded("R1", 1, definition("R1", ("T1110", None, 0.7))))


def test_coverage_leaves_out_disabled_and_external_rules_and_caps_clipped_ones() -> None:
    feed = RuleFeed()
    feed.apply(*reloaded("A", 1, definition("A", ("T1059", "T1059.004", 0.9))))
    feed.apply(*reloaded("B", 2, definition("B", ("T1059", None, 0.8))))
    feed.apply(*reloaded("C", 3, definition("C", ("T1110", None, 0.6))))
    feed.apply(*reloaded("L", 4, definition("L", ("T1059", None, 0.0), kind="lifter:zeek")))
    feed.apply(*state("B", 5, "disabled", reason="noisy"))
    feed.apply(*state("C", 6, "clipped", confidence_max=0.3))

    items = [
        (c.rule_id, c.sub_technique_id or c.technique_id, c.confidence) for c in feed.coverage()
    ]
    assert items == [("A", "T1059.004", 0.9), ("C", "T1110", 0.3)]
    assert covered_techniques(feed.coverage()) == {
        "T1059.004": (0.9, ["A"]),
        "T1110": (0.3, ["C"]),
    }
    assert [d.rule_id for d in feed.rules_for("T1059")] == ["A", "B", "L"]
    assert [d.rule_id for d in feed.rules_for("T1059.004")] == ["A"]


def test_an_expired_state_no_longer_counts_and_enabled_clears_it() -> None:
    feed = RuleFeed()
    feed.apply(*reloaded("A", 1, definition("A", ("T1059", None, 0.9))))
    past = datetime.now(UTC) - timedelta(minutes=1)
    feed.apply(*state("A", 2, "disabled", expires_at=past))
    assert feed.state("A") is None
    assert feed.in_play("A")
    feed.apply(*state("A", 3, "disabled"))
    assert not feed.in_play("A")
    assert not feed.apply(*state("A", 2, "enabled"))  # older: ignored
    feed.apply(*state("A", 4, "enabled"))
    assert feed.in_play("A")


def test_the_ruleset_revision_is_kept() -> None:
    feed = RuleFeed()
    data = RulesetRevision(revision=9, rules=1, active=1, external=0, rejected=0, digest="d")
    feed.apply(subjects.RULESET_REVISION, encode(envelope(data, source=MASTER_SOURCE, subject="x")))
    assert feed.ruleset is not None and feed.ruleset.revision == 9


@pytest.mark.parametrize(
    ("subject", "raw"),
    [
        ("ttp.rule.reloaded.R1", b"not json"),
        ("ttp.rule.reloaded.R1", b"{}"),
        ("ttp.rule.reloaded.R1", b"[" * 100_000),
        ("ttp.rule.state.R1", b'{"data": {"rule_id": "R1"}}'),
        ("ttp.ruleset.revision", b"{}"),
    ],
)
def test_unreadable_messages_are_counted_and_change_nothing(subject: str, raw: bytes) -> None:
    feed = RuleFeed()
    assert not feed.apply(subject, raw)
    assert sum(feed.unreadable.values()) == 1
    assert feed.definitions() == {}


def test_a_message_on_another_rules_subject_or_with_bad_emits_is_refused() -> None:
    feed = RuleFeed()
    _subject, raw = reloaded("R1", 1, definition("R1", ("T1059", None, 0.9)))
    assert not feed.apply(subjects.rule_reloaded("R2"), raw)
    bad = definition("R3", ("T1059", None, 0.9))
    bad["emits"][0]["technique_id"] = "<script>"
    assert not feed.apply(*reloaded("R3", 2, bad))
    assert feed.definitions() == {}
    assert sum(feed.unreadable.values()) == 2


def test_a_feed_without_nats_reports_itself_caught_up() -> None:
    feed = RuleFeed()
    assert feed.caught_up
    assert feed.progress.error is None


def test_a_state_the_workers_would_refuse_leaves_the_held_one_in_force() -> None:
    # A clip without a confidence_max: workers refuse the message, so the console must not
    # show the rule covering at its full confidence either.
    feed = RuleFeed()
    feed.apply(*reloaded("A", 1, definition("A", ("T1110", None, 0.9))))
    feed.apply(*state("A", 2, "clipped", confidence_max=0.4))
    assert not feed.apply(*state("A", 3, "clipped"))
    assert [c.confidence for c in feed.coverage()] == [0.4]
    assert feed.unreadable["ttp.rule.state"] == 1


def test_an_emit_of_confidence_zero_covers_nothing_as_it_tags_nothing() -> None:
    feed = RuleFeed()
    feed.apply(*reloaded("A", 1, definition("A", ("T1110", None, 0.0), ("T1059", None, 0.5))))
    assert [c.technique_id for c in feed.coverage()] == ["T1059"]
