"""`ttpctl tags layer` keeps counts only, and a bounded number of them whatever the tags
name: every technique the catalogue knows, and at most a fixed number of other ids."""

from __future__ import annotations

import math

from harness.bus_messages import tag_data
from ttp_core.attack import load_catalogue
from ttp_core.attack.navigator import ObservedEntry
from ttp_core.contract.payloads import TagData
from ttpctl import tags_commands
from ttpctl.tags_commands import TagTally


def tag(technique_id: str, sub_technique_id: str | None = None, confidence: float = 0.5) -> TagData:
    return tag_data(
        technique_id,
        sub_technique_id,
        rule_id="R1",
        confidence=confidence,
        evidence={},
        mitre_url="https://attack.mitre.org/",
    )


def test_counts_and_best_confidence_per_technique() -> None:
    tally = TagTally(load_catalogue())
    for confidence in (0.4, 0.9, math.nan, 0.6):
        tally.add(tag("T1059", "T1059.004", confidence))
    tally.add(tag("T1083", "", 0.3))  # an empty sub-technique is none

    assert sorted(tally.entries(), key=lambda e: e.technique_id) == [
        ObservedEntry("T1059", "T1059.004", 4, 0.9),
        ObservedEntry("T1083", None, 1, 0.3),
    ]
    assert tally.tags == 5


def test_a_flood_of_forged_ids_is_bounded_and_known_techniques_still_count() -> None:
    limit = tags_commands._MAX_UNKNOWN_KEYS
    tally = TagTally(load_catalogue())
    for n in range(limit + 500):
        tally.add(tag(f"T{n:06d}"))
        # A known sub-technique under someone else's id is no known technique either.
        tally.add(tag(f"X{n}", "T1059.004"))
    tally.add(tag("T1059", "T1059.004"))
    tally.add(tag("T1059", "T1059.004"))

    assert len(tally.counts) == limit + 1
    assert tally.unknown_keys == limit
    assert tally.overflow == 2 * (limit + 500) - limit
    assert ObservedEntry("T1059", "T1059.004", 2, 0.5) in tally.entries()
    assert tally.tags + tally.overflow == 2 * (limit + 500) + 2
