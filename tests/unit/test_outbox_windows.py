"""The relay's publish windows: pipelined, yet never two revisions of one subject at once."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from ttp_master.outbox_relay import _windows


@dataclass
class Row:
    revision: int
    subject: str


def rows_of(subjects: list[str]) -> list[Row]:
    return [Row(i + 1, s) for i, s in enumerate(subjects)]


def test_a_subject_seen_again_starts_a_new_window() -> None:
    windows = list(_windows(rows_of(["a", "b", "a", "c"]), depth=64))
    assert [[r.subject for r in w] for w in windows] == [["a", "b"], ["a", "c"]]


def test_windows_are_capped_at_the_pipeline_depth() -> None:
    windows = list(_windows(rows_of([f"s{i}" for i in range(10)]), depth=4))
    assert [len(w) for w in windows] == [4, 4, 2]


@given(st.lists(st.sampled_from("abcdefg"), max_size=60), st.integers(1, 8))
def test_windows_keep_revision_order_and_distinct_subjects(subjects: list[str], depth: int) -> None:
    rows = rows_of(subjects)
    windows = list(_windows(rows, depth))
    assert [r for w in windows for r in w] == rows
    for window in windows:
        assert 1 <= len(window) <= depth
        assert len({r.subject for r in window}) == len(window)
