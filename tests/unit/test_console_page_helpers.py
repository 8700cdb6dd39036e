"""Pure helpers of the console's pages: error excerpts, durations, heat, fleet rates, filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.datastructures import QueryParams

from ttp_console.pages.common import confidence_level, duration, heat_level
from ttp_console.pages.fleet import FleetRates
from ttp_console.pages.live import live_filter
from ttp_console.pages.rules import excerpt, parse_duration
from ttp_core.contract.control import FleetInfo, WorkerView
from ttp_core.contract.payloads import RejectionError

TEXT = "rule_id: R1\nname: x\nemits:\n  - technique_id: T99\n    confidence: 0.5\n"


def test_an_excerpt_shows_the_lines_around_the_error_and_a_caret_under_its_column() -> None:
    [item] = excerpt(TEXT, [RejectionError(line=4, column=19, message="bad id")])
    assert [(n, marked) for n, _text, marked in item.lines] == [
        (2, False),
        (3, False),
        (4, True),
        (5, False),
    ]
    assert item.caret == " " * 18 + "^"


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [(None, 1, 1), ("", 1, 1), (TEXT, 0, 1), (TEXT, 99, 1), (TEXT, -5, -5)],
)
def test_an_excerpt_of_an_unknown_text_or_line_is_the_error_alone(
    text: str | None, line: int, column: int
) -> None:
    [item] = excerpt(text, [RejectionError(line=line, column=column, message="m")])
    assert item.lines == []
    assert item.caret is None


def test_an_excerpt_cuts_huge_lines_and_skips_a_caret_beyond_them() -> None:
    [item] = excerpt("x" * 100_000, [RejectionError(line=1, column=50_000, message="m")])
    assert len(item.lines[0][1]) == 300
    assert item.caret is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("  ", None),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1D 2H 3M", timedelta(days=1, hours=2, minutes=3)),
    ],
)
def test_durations(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "0m", "-1h", "400d", "1h30", "9" * 50, "1s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_heat_is_logarithmic_against_the_largest_value() -> None:
    assert heat_level(0, 100) == 0
    assert heat_level(100, 100) == 5
    assert heat_level(1, 1_000_000) == 1
    assert 1 < heat_level(1000, 1_000_000) < 5
    assert heat_level(5, 0) == 0
    assert [confidence_level(c) for c in (0, 0.1, 0.2, 0.21, 0.85, 1.0)] == [0, 1, 1, 2, 5, 5]


def test_durations_read_as_the_two_largest_units() -> None:
    assert duration(3 * 86400 + 4 * 3600 + 5) == "3d 4h"
    assert duration(125) == "2m 5s"
    assert duration(9) == "9s"


def _fleet(
    seen_at: float, *, gone: tuple[str, ...] = (), interval_s: float = 5.0, **events: int
) -> FleetInfo:
    """The fleet as the master lists it, every worker's last status received at `seen_at`."""
    return FleetInfo(
        revision=3,
        digest="d",
        status_interval_s=interval_s,
        converged=True,
        workers=[
            WorkerView(
                worker_id=worker_id,
                revision=3,
                ready=True,
                lag=0,
                rules=1,
                active=1,
                external=0,
                events_processed=count,
                last_seen=datetime.fromtimestamp(seen_at, UTC),
                age_s=0.0,
                gone=worker_id in gone,
            )
            for worker_id, count in events.items()
        ],
    )


T0 = 1_700_000_000.0


def test_fleet_rates_come_from_two_statuses_of_each_worker() -> None:
    rates = FleetRates()
    assert rates.update(_fleet(T0, w1=100, w2=0)) == {"w1": None, "w2": None}
    assert rates.update(_fleet(T0 + 5, w1=600, w2=50)) == {"w1": 100.0, "w2": 10.0}
    assert rates.update(_fleet(T0 + 10, w1=600, w2=50)) == {"w1": 0.0, "w2": 0.0}


def test_polls_between_two_statuses_keep_a_busy_workers_rate() -> None:
    # Two viewers (or a reload) poll within one status interval: both read the status the
    # worker sent last, which says nothing of the time since, so the rate holds.
    rates = FleetRates()
    rates.update(_fleet(T0, w1=100))
    assert rates.update(_fleet(T0 + 5, w1=600)) == {"w1": 100.0}
    assert rates.update(_fleet(T0 + 5, w1=600)) == {"w1": 100.0}
    # A status less than a second after the last (a rule change reported at once) is no
    # sample either; the next heartbeat measures from the last one that was.
    assert rates.update(_fleet(T0 + 5.2, w1=700)) == {"w1": 100.0}
    assert rates.update(_fleet(T0 + 10, w1=1600)) == {"w1": 200.0}


def test_fleet_rates_start_over_when_two_statuses_say_nothing_of_now() -> None:
    rates = FleetRates()
    rates.update(_fleet(T0, w1=100, w2=100))
    # A counter that went down is a restarted worker.
    assert rates.update(_fleet(T0 + 5, w1=5, w2=600)) == {"w1": None, "w2": 100.0}
    # Statuses more than four intervals apart: nobody looked for a while; their average
    # would show an old rate as the current one.
    assert rates.update(_fleet(T0 + 26, w1=2105, w2=2700)) == {"w1": None, "w2": None}
    assert rates.update(_fleet(T0 + 31, w1=2605, w2=3200)) == {"w1": 100.0, "w2": 100.0}
    # A master clock set back is no sample either.
    assert rates.update(_fleet(T0 + 20, w1=3105, w2=3200)) == {"w1": None, "w2": None}


def test_workers_reporting_faster_than_the_page_refreshes_still_get_a_rate() -> None:
    # Statuses every 0.3 s, polls every 5 s: the span is the page's, not four statuses'.
    rates = FleetRates()
    rates.update(_fleet(T0, interval_s=0.3, w1=0))
    assert rates.update(_fleet(T0 + 5, interval_s=0.3, w1=50)) == {"w1": 10.0}


def test_a_gone_worker_has_no_rate_and_an_unlisted_one_is_forgotten() -> None:
    rates = FleetRates()
    rates.update(_fleet(T0, w1=100, w2=100))
    assert rates.update(_fleet(T0 + 5, gone=("w2",), w1=600, w2=600)) == {
        "w1": 100.0,
        "w2": None,
    }
    rates.update(_fleet(T0 + 10, w1=1100))
    assert rates.update(_fleet(T0 + 15, w1=1600, w2=2100)) == {"w1": 100.0, "w2": None}


def test_live_filters_ignore_what_is_not_valid() -> None:
    live, ignored = live_filter(
        QueryParams("technique=t1059.004&rule=R1&kind=ssh&attacker=" + "a" * 200)
    )
    assert (live.technique, live.rule_id, live.source_kind, live.attacker_uuid) == (
        "T1059.004",
        "R1",
        "ssh",
        None,
    )
    assert ignored == ["attacker"]
    live, ignored = live_filter(QueryParams("technique=<x>&rule=a.b&kind=a%20b"))
    assert live == type(live)()
    assert ignored == ["technique", "rule", "kind"]
