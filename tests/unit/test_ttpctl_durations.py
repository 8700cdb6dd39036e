"""Durations and instants of the ttpctl control commands (--for, --until, --since, --timeout)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import typer

from ttpctl.durations import parse_duration, parse_instant, parse_since
from ttpctl.fleet_commands import parse_wait_target

NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 7 * 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("1.5h", 5400),
        (" 2H ", 7200),
        ("0h1s", 1),
    ],
)
def test_durations_are_parsed(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "90",
        "h",
        "-1h",
        "+1h",
        "1x",
        "1h 30m",
        "1 h",
        "1e3s",
        "1h-30m",
        "one hour",
        "1.h",
        "1,5h",
    ],
)
def test_garbage_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0s", "0h0m", "0.0d"])
def test_zero_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a positive duration"):
        parse_duration(text)


def test_absurdly_long_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("99999999999999999999d")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T08:00:00Z", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
        ("2026-12-01T09:00:00+01:00", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
        ("2026-12-01T08:00:00.250+00:00", datetime(2026, 12, 1, 8, 0, 0, 250000, tzinfo=UTC)),
        (" 2026-12-01 03:00-05:00 ", datetime(2026, 12, 1, 8, 0, tzinfo=UTC)),
    ],
)
def test_instants_with_an_offset_are_parsed_to_utc(text: str, expected: datetime) -> None:
    moment = parse_instant(text)
    assert moment == expected
    assert moment.tzinfo is UTC


@pytest.mark.parametrize("text", ["2026-12-01T08:00:00", "2026-12-01"])
def test_naive_instants_are_refused_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match=r"no UTC offset: add Z"):
        parse_instant(text)


@pytest.mark.parametrize("text", ["tomorrow", "2026-13-01T00:00:00Z", "", "2h"])
def test_garbage_instants_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_instant(text)


def test_since_takes_a_duration_back_from_now() -> None:
    assert parse_since("1h30m", now=NOW) == NOW - timedelta(minutes=90)


def test_since_takes_an_instant() -> None:
    assert parse_since("2026-11-21T00:00:00Z", now=NOW) == datetime(2026, 11, 21, tzinfo=UTC)


def test_since_refuses_a_naive_instant_and_garbage() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_since("2026-11-21T00:00:00", now=NOW)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now=NOW)


@pytest.mark.parametrize(("text", "expected"), [("123", 123), ("0", 0), ("latest", None)])
def test_wait_targets(text: str, expected: int | None) -> None:
    assert parse_wait_target(text) == expected


@pytest.mark.parametrize("text", ["-1", "12a", "newest", ""])
def test_bad_wait_targets_are_usage_errors(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_wait_target(text)
