"""What every page shares: the console context, rendering, flash messages, formatting."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from ttp_console.context import ConsoleContext, ConsoleUser
from ttp_core.attack.catalogue import Technique

__all__ = [
    "Formatter",
    "console",
    "heat_level",
    "pop_flash",
    "render",
    "set_flash",
    "user_of",
]

_FLASH_KEY: Final = "ttp_console_flash"
HEAT_LEVELS: Final = 5


def console(request: Request) -> ConsoleContext:
    """The console's adapters (``app.state.console``)."""
    context: ConsoleContext = request.app.state.console
    return context


def user_of(request: Request) -> ConsoleUser | None:
    user = getattr(request.state, "user", None)
    return user if isinstance(user, ConsoleUser) else None


def set_flash(request: Request, kind: str, text: str) -> None:
    """A message for the next page this session renders (after a redirect)."""
    request.session[_FLASH_KEY] = {"kind": kind, "text": text[:2000]}


def pop_flash(request: Request) -> dict[str, str] | None:
    if "session" not in request.scope:
        return None
    value = request.session.pop(_FLASH_KEY, None)
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        kind = value.get("kind")
        return {"kind": kind if kind in {"ok", "error", "warn"} else "warn", "text": value["text"]}
    return None


def heat_level(value: float, maximum: float) -> int:
    """0 for nothing, else 1..5 on a logarithmic scale against the largest value shown."""
    # Written so NaN fails the test (NaN <= 0 would be False) and infinity never reaches
    # the logarithm's ratio (inf / inf is NaN): the values come from messages on the bus.
    if not (value > 0 and maximum > 0):
        return 0
    if value >= maximum:
        return HEAT_LEVELS
    level = math.ceil(HEAT_LEVELS * math.log1p(value) / math.log1p(maximum))
    return max(1, min(HEAT_LEVELS, level))


def confidence_level(confidence: float) -> int:
    """0 for no rule, else 1..5 by the best confidence (0.2 steps)."""
    if not confidence > 0:
        return 0
    if confidence >= 1:
        return HEAT_LEVELS
    return max(1, min(HEAT_LEVELS, math.ceil(confidence * HEAT_LEVELS)))


class Formatter:
    """Helpers the templates call to show times, ages and confidences the same way."""

    def __init__(self, now: float) -> None:
        self.now = now

    def utc(self, value: float | datetime | None) -> str:
        if value is None:
            return "-"
        moment = value if isinstance(value, datetime) else _from_posix(value)
        if moment is None:
            return "-"
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def iso(self, value: float | datetime | None) -> str:
        if value is None:
            return ""
        moment = value if isinstance(value, datetime) else _from_posix(value)
        return "" if moment is None else moment.astimezone(UTC).isoformat()

    def ago(self, value: float | datetime | None) -> str:
        if value is None:
            return "-"
        seconds = self.now - (value.timestamp() if isinstance(value, datetime) else value)
        return f"{duration(abs(seconds))} {'ago' if seconds >= 0 else 'ahead'}"

    def until(self, value: datetime | None) -> str:
        if value is None:
            return "no expiry"
        seconds = value.timestamp() - self.now
        return "expired" if seconds <= 0 else f"in {duration(seconds)}"

    @staticmethod
    def pct(confidence: float | None) -> str:
        return "-" if confidence is None else f"{confidence:.2f}"


def _from_posix(value: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: the two largest units."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def technique_name(technique: Technique | None, fallback: str) -> str:
    return fallback if technique is None else technique.name


def render(
    request: Request,
    template: str,
    values: Mapping[str, Any],
    *,
    active_nav: str | None = None,
    status_code: int = 200,
    fragment: bool = False,
) -> Response:
    """``template`` with ``values``, the page's flash message, a :class:`Formatter` (``fmt``)
    and the catalogue. A ``fragment`` (part of a page, fetched by a script) leaves the flash
    message for the next whole page."""
    context = console(request)
    data = {
        "active_nav": active_nav,
        "flash": None if fragment else pop_flash(request),
        "fmt": Formatter(time.time()),
        "catalogue": context.catalogue,
        **values,
    }
    return context.templates.TemplateResponse(request, template, data, status_code=status_code)
