"""Properties of the console's page helpers that read what a browser (or anyone) sends:
whatever the text, each ends as a value in bounds or a located refusal, never another
exception."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from ttp_console.pages.common import Formatter, confidence_level, duration, heat_level
from ttp_console.pages.live import live_filter
from ttp_console.pages.rules import MAX_DURATION, MAX_LINE_CHARS, excerpt, parse_duration
from ttp_console.tag_store import MAX_ID_CHARS, Window, parse_window
from ttp_core.contract import subjects
from ttp_core.contract.payloads import RejectionError

# Text a browser cannot send but a script can: control characters, lone surrogates, digits
# and the letters the grammars use, so the interesting cases come up often.
hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="0123456789dhms-+. \x00\t\n", max_size=30),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)),
)


@settings(max_examples=500, deadline=None)
@given(hostile_text)
def test_a_duration_is_within_a_year_or_a_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert str(exc)  # the message the operator sees
        return
    assert value is None or timedelta(0) < value <= MAX_DURATION
    if value is None:
        assert not text.strip().replace(" ", "")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 100_000), st.integers(0, 1_000_000))
def test_a_duration_in_the_form_adds_its_units(days: int, hours: int, minutes: int) -> None:
    text = f"{days}d{hours}h{minutes}m"
    total = timedelta(days=days, hours=hours, minutes=minutes)
    fits = len(str(days)) <= 4 and len(str(hours)) <= 5 and len(str(minutes)) <= 6
    if fits and timedelta(0) < total <= MAX_DURATION:
        assert parse_duration(text) == total
    else:
        try:
            parse_duration(text)
        except ValueError:
            return
        raise AssertionError(f"{text} was taken")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), hostile_text))
def test_a_window_is_always_one_of_the_three(text: str | None) -> None:
    assert parse_window(text) in set(Window)


_TECHNIQUE = re.compile(r"T\d{4}(?:\.\d{3})?")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["technique", "rule", "kind", "attacker", "other", ""]),
            st.one_of(hostile_text, st.text(min_size=100, max_size=300)),
        ),
        max_size=8,
    )
)
def test_a_live_filter_keeps_only_valid_fields(pairs: list[tuple[str, str]]) -> None:
    query = urlencode(
        [(k, v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")) for k, v in pairs]
    )
    live, ignored = live_filter(QueryParams(query))
    assert set(ignored) <= {"technique", "rule", "kind", "attacker"}
    if live.technique is not None:
        assert _TECHNIQUE.fullmatch(live.technique)
    for token in (live.rule_id, live.source_kind):
        assert token is None or subjects.is_token(token)
    assert live.attacker_uuid is None or 0 < len(live.attacker_uuid) <= MAX_ID_CHARS


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.text(max_size=2_000)),
    st.lists(st.tuples(st.integers(-(2**31), 2**31), st.integers(-(2**31), 2**31)), max_size=5),
)
def test_an_excerpt_of_any_error_location_is_bounded(
    text: str | None, locations: list[tuple[int, int]]
) -> None:
    errors = [RejectionError(line=line, column=col, message="m") for line, col in locations]
    items = excerpt(text, errors)
    assert len(items) == len(errors)
    for item in items:
        assert len(item.lines) <= 5
        assert all(len(line) <= MAX_LINE_CHARS for _n, line, _marked in item.lines)
        assert item.caret is None or len(item.caret) <= MAX_LINE_CHARS
        assert sum(marked for _n, _line, marked in item.lines) <= 1


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(finite_or_not, finite_or_not)
def test_heat_levels_stay_on_the_scale_for_any_number(value: float, maximum: float) -> None:
    assert 0 <= heat_level(value, maximum) <= 5
    assert 0 <= confidence_level(value) <= 5
    if math.isnan(value):
        assert heat_level(value, maximum) == confidence_level(value) == 0


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e18, max_value=1e18, allow_nan=False))
def test_times_far_out_of_range_are_shown_not_raised(value: float) -> None:
    fmt = Formatter(0.0)
    assert fmt.utc(value)
    assert isinstance(fmt.iso(value), str)
    assert fmt.ago(value).endswith(("ago", "ahead"))
    assert duration(abs(value))
