"""Durations (``90s``, ``15m``, ``1h30m``) and instants (ISO 8601) as the control commands
take them on the command line. Pure functions: they raise :class:`ValueError` with a message
fit for the operator, and the command turns that into a usage error (exit 2).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["parse_duration", "parse_instant", "parse_since"]

_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Beyond this a duration is surely a typo, and datetime arithmetic would overflow anyway.
_MAX_SECONDS: Final = 100 * 365 * 86400


def parse_duration(text: str) -> timedelta:
    """A positive duration: one or more ``<number><unit>`` parts, unit s, m, h, d or w.

    ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``, ``1.5h``. Case and surrounding blanks do not
    matter; a bare number, a sign, another unit or a total of zero is refused.
    """
    value = text.strip().lower()
    if _DURATION.fullmatch(value) is None:
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit (s, m, h, d, w),"
            " like 90s, 15m, 2h, 1d or 1h30m"
        )
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        raise ValueError(f"{text!r} is too long (at most 100 years)")
    return timedelta(seconds=seconds)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset or ``Z``, as an aware datetime in UTC.

    A time without an offset is refused rather than guessed: the operator's clock, the
    master's and UTC may all differ, and an expiry off by hours is worse than a retry.
    """
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (like 2026-12-01T08:00:00Z"
            " or 2026-12-01T09:00:00+01:00)"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{text!r} has no UTC offset: add Z (UTC) or an offset like +01:00,"
            " e.g. 2026-12-01T08:00:00Z"
        )
    return moment.astimezone(UTC)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A start time: a duration back from ``now`` (``1h``) or an ISO 8601 time with offset."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_instant(text)
    except ValueError as exc:
        if "no UTC offset" in str(exc):
            raise
        raise ValueError(
            f"{text!r} is neither a duration (30s, 15m, 1h30m, 2d) nor an ISO 8601 time"
            " with an offset (2026-12-01T08:00:00Z)"
        ) from None
