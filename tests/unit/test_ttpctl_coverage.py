"""What `ttpctl coverage` counts as covered, from the rule messages TTP_RULES holds: the
rules as the workers apply them now (state, clip, expiry, deletes, external rules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness.navigator_layers import check_layer
from ttp_core.attack import load_catalogue
from ttp_core.attack.navigator import CoverageEntry, coverage_layer
from ttp_core.contract.payloads import RuleReloaded, RuleStateChanged
from ttp_core.rules.validator import RuleValidator
from ttpctl.coverage_commands import RuleRecord, covered_techniques, rule_coverage

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


def definition(
    rule_id: str,
    *emits: tuple[str, str | None, float],
    revision: int = 1,
    deleted: bool = False,
    match: dict[str, Any] | None = None,
) -> RuleReloaded:
    rule = {
        "rule_id": rule_id,
        "rule_version": 1,
        "name": rule_id.lower(),
        "applies_to": ["command"],
        "match": match or {"field": "command_text", "contains": "x"},
        "emits": [
            {"tactic": "TA0002", "technique_id": t, "confidence": c}
            | ({"sub_technique_id": s} if s else {})
            for t, s, c in emits
        ],
    }
    return RuleReloaded(
        rule_id=rule_id,
        revision=revision,
        rule_version=None if deleted else 1,
        content_sha256=None,
        source_path=f"{rule_id}.yaml",
        deleted=deleted,
        rule=None if deleted else rule,
    )


def state(
    rule_id: str,
    kind: str,
    *,
    confidence_max: float | None = None,
    expires_at: datetime | None = None,
    revision: int = 2,
) -> RuleStateChanged:
    return RuleStateChanged.model_validate(
        {
            "rule_id": rule_id,
            "revision": revision,
            "state": kind,
            "confidence_max": confidence_max,
            "expires_at": expires_at,
        }
    )


def test_enabled_rules_cover_each_emit_with_its_confidence() -> None:
    records = {
        "R1": RuleRecord(definition("R1", ("T1059", "T1059.004", 0.9), ("T1083", None, 0.4))),
        "R2": RuleRecord(definition("R2", ("T1083", None, 0.6), revision=5)),
    }

    coverage = rule_coverage(records, NOW)

    assert coverage.entries == [
        CoverageEntry("R1", "T1059", "T1059.004", 0.9),
        CoverageEntry("R1", "T1083", None, 0.4),
        CoverageEntry("R2", "T1083", None, 0.6),
    ]
    assert coverage.rules == {"R1", "R2"}
    assert coverage.revision == 5


def test_disabled_rules_cover_nothing_and_clipped_ones_their_clip() -> None:
    records = {
        "OFF": RuleRecord(definition("OFF", ("T1083", None, 0.9)), state("OFF", "disabled")),
        "CLIP": RuleRecord(
            definition("CLIP", ("T1059", None, 0.9), ("T1083", None, 0.2)),
            state("CLIP", "clipped", confidence_max=0.5),
        ),
        "ON": RuleRecord(definition("ON", ("T1082", None, 0.7)), state("ON", "enabled")),
    }

    coverage = rule_coverage(records, NOW)

    assert coverage.disabled == ["OFF"]
    assert coverage.clipped == ["CLIP"]
    # Clipping lowers, never raises.
    assert coverage.entries == [
        CoverageEntry("CLIP", "T1059", None, 0.5),
        CoverageEntry("CLIP", "T1083", None, 0.2),
        CoverageEntry("ON", "T1082", None, 0.7),
    ]


def test_an_expired_state_counts_as_enabled_like_on_the_workers() -> None:
    past, future = NOW - timedelta(minutes=1), NOW + timedelta(minutes=1)
    records = {
        "WAS_OFF": RuleRecord(
            definition("WAS_OFF", ("T1083", None, 0.9)),
            state("WAS_OFF", "disabled", expires_at=past),
        ),
        "STILL_OFF": RuleRecord(
            definition("STILL_OFF", ("T1082", None, 0.9)),
            state("STILL_OFF", "disabled", expires_at=future),
        ),
        "WAS_CLIPPED": RuleRecord(
            definition("WAS_CLIPPED", ("T1059", None, 0.9)),
            state("WAS_CLIPPED", "clipped", confidence_max=0.1, expires_at=past),
        ),
    }

    coverage = rule_coverage(records, NOW)

    assert coverage.entries == [
        CoverageEntry("WAS_CLIPPED", "T1059", None, 0.9),
        CoverageEntry("WAS_OFF", "T1083", None, 0.9),
    ]
    assert coverage.disabled == ["STILL_OFF"]
    assert coverage.clipped == []


def test_deleted_external_and_unreadable_rules_are_left_out_and_named() -> None:
    lifter = {"kind": "lifter:ssh_session"}
    records = {
        "GONE": RuleRecord(definition("GONE", deleted=True)),
        "LIFT": RuleRecord(definition("LIFT", ("T1021", "T1021.004", 0.8), match=lifter)),
        "BAD": RuleRecord(definition("BAD", ("T1083", None, 3.0))),  # not a confidence
        "NO_EMITS": RuleRecord(definition("NO_EMITS")),
        "BAD_STATE": RuleRecord(definition("BAD_STATE", ("T1083", None, 0.5)), None, True),
        "ORPHAN_STATE": RuleRecord(None, state("ORPHAN_STATE", "disabled", revision=9)),
    }

    coverage = rule_coverage(records, NOW)

    assert coverage.entries == []
    assert coverage.deleted == ["GONE"]
    assert coverage.external == ["LIFT"]
    assert coverage.unreadable == ["BAD", "BAD_STATE", "NO_EMITS"]
    assert coverage.revision == 9

    counted = rule_coverage(records, NOW, include_external=True)
    assert counted.entries == [CoverageEntry("LIFT", "T1021", "T1021.004", 0.8)]
    assert counted.external == []


def test_a_lifter_sentinel_of_confidence_0_covers_nothing() -> None:
    lifter = {"kind": "lifter:ssh_session"}
    records = {"LIFT": RuleRecord(definition("LIFT", ("T1021", None, 0.0), match=lifter))}

    coverage = rule_coverage(records, NOW, include_external=True)

    assert coverage.entries == []
    assert coverage.rules == set()


def test_table_rows_are_keyed_like_the_layer() -> None:
    rows, unknown = covered_techniques(
        [
            CoverageEntry("R2", "T1059", "T1059.004", 0.5),
            CoverageEntry("R1", "T1059", "T1059.004", 0.9),
            CoverageEntry("R3", "T1078", None, 0.3),
            CoverageEntry("R4", "T9999", None, 0.3),
        ],
        load_catalogue(),
    )

    assert unknown == 1
    assert [(r.technique_id, r.rules, r.best_confidence) for r in rows] == [
        ("T1059.004", ("R1", "R2"), 0.9),
        ("T1078", ("R3",), 0.3),
    ]
    assert rows[0].tactics == ("execution",)
    assert rows[1].tactics[0] == "initial-access"


def test_the_shipped_rule_pack_as_the_master_publishes_it_covers_every_emit() -> None:
    records = {}
    emits = 0
    for report in RuleValidator().validate_tree(RULES_DIR):
        assert report.rule is not None, report.errors
        rule = report.rule
        emits += sum(1 for emit in rule.emits if emit.confidence > 0)
        records[rule.rule_id] = RuleRecord(
            RuleReloaded(
                rule_id=rule.rule_id,
                revision=1,
                rule_version=rule.rule_version,
                content_sha256=report.content_sha256,
                source_path=f"{rule.rule_id}.yaml",
                rule=rule.normalised(),
            )
        )

    coverage = rule_coverage(records, NOW, include_external=True)

    assert coverage.unreadable == []
    assert len(coverage.entries) == emits
    catalogue = load_catalogue()
    _rows, unknown = covered_techniques(coverage.entries, catalogue)
    assert unknown == 0
    check_layer(coverage_layer(coverage.entries, catalogue), catalogue)
