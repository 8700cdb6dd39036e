"""Which TTP_RULES subjects the stream guard purges, and with which filter."""

from __future__ import annotations

import pytest

from ttp_core.contract import subjects
from ttp_master.foreign_subjects import is_stream_subject, overlaps, purge_filter

RULE_SUBJECTS = (
    subjects.rule_reloaded("R0001"),
    subjects.rule_state("R0001"),
    subjects.RULESET_REVISION,
)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("ttp.event.*", "ttp.rule.state.*", False),
        ("ttp.rule.*", "ttp.rule.state.*", False),  # three tokens against four
        ("ttp.ruleset.*", "ttp.ruleset.revision", True),
        ("ttp.*.*.*", "ttp.rule.state.*", True),
        ("ttp.>", "ttp.rule.state.*", True),
        ("ttp.rule.state.x.*", "ttp.rule.state.*", False),
        ("ttp.rule", "ttp.rule.>", False),  # `>` needs a token
        ("*", "ttp", True),
        ("ttp.event.ssh", "ttp.event.ssh", True),
        ("ttp.event.ssh", "ttp.event.tcp", False),
    ],
)
def test_overlaps_is_symmetric_and_token_exact(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


@pytest.mark.parametrize("subject", RULE_SUBJECTS)
def test_a_rule_subject_is_never_purged(subject: str) -> None:
    assert is_stream_subject(subject)
    with pytest.raises(ValueError, match="never purged"):
        purge_filter(subject)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        # Copies of another stream's messages: one purge clears every kind.
        (subjects.event("ssh"), "ttp.event.*"),
        (subjects.tagged("ssh"), "ttp.tagged.*"),
        (subjects.rule_rejected("R0001"), "ttp.rule.rejected.*"),
        ("ttp.rule.state.R0001.x", "ttp.rule.state.R0001.*"),
        ("ttp.rule", "ttp.*"),
        # A sibling of the summary: its wildcard would match the summary, so only itself.
        ("ttp.ruleset.other", "ttp.ruleset.other"),
        ("ttp", "ttp"),
    ],
)
def test_a_foreign_subject_is_purged_with_the_widest_filter_that_spares_the_rules(
    subject: str, expected: str
) -> None:
    assert not is_stream_subject(subject)
    purge = purge_filter(subject)
    assert purge == expected
    assert overlaps(purge, subject)
    for pattern in subjects.RULES_STREAM_SUBJECTS:
        assert not overlaps(purge, pattern)
