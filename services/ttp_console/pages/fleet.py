"""The fleet: each worker's revision, digest, lag, readiness and events/s (``fleet`` polls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from ttp_console.pages.common import console, render
from ttp_core.contract.control import ErrorCode, FleetInfo
from ttp_runtime.control_client import ControlClientError

__all__ = ["FleetRates", "fleet_fragment", "fleet_page"]

MIN_RATE_INTERVAL_S: Final = 1.0
"""Statuses closer together than this (a worker reports a rule change at once, between its
heartbeats) keep the previous rate: so short a span is no sample."""
MAX_RATE_SPAN_INTERVALS: Final = 4
"""Two statuses further apart than this many status intervals, or page refreshes if those are
longer (nobody looked at the fleet for a while), give no rate: their average would pass an
old rate off as the current one."""
PAGE_REFRESH_S: Final = 5.0
"""How often ``static/fleet.js`` polls :func:`fleet_fragment`."""
MAX_WORKERS_TRACKED: Final = 10_000


@dataclass(frozen=True, slots=True)
class _Sample:
    events: int
    at: float
    """When the master received the status (epoch seconds)."""
    rate: float | None


class FleetRates:
    """Events per second of each worker, from the ``events_processed`` of two of its statuses.

    A worker sends its counter in a status every few seconds, so the rate is the difference
    between two statuses over the time between them as the master received them, not between
    two polls: polls within one status interval (two viewers, a reload) would read the same
    counter and show a busy worker as idle, then the next poll as twice as busy. A gone worker
    has no rate. One sample per worker id the last poll listed (workers the master forgot are
    forgotten), at most :data:`MAX_WORKERS_TRACKED`.
    """

    def __init__(self) -> None:
        self._samples: dict[str, _Sample] = {}

    def update(self, fleet: FleetInfo) -> dict[str, float | None]:
        """Each listed worker's events/s, ``None`` until two of its statuses are known."""
        longest_span = MAX_RATE_SPAN_INTERVALS * max(fleet.status_interval_s, PAGE_REFRESH_S)
        rates: dict[str, float | None] = {}
        samples: dict[str, _Sample] = {}
        for worker in fleet.workers[:MAX_WORKERS_TRACKED]:
            held = self._samples.get(worker.worker_id)
            at = worker.last_seen.timestamp()
            sample = _Sample(worker.events_processed, at, None)
            if held is not None:
                span = at - held.at
                if 0 <= span < MIN_RATE_INTERVAL_S:
                    sample = held  # the same status again, or one just after it
                elif (
                    MIN_RATE_INTERVAL_S <= span <= longest_span
                    and worker.events_processed >= held.events
                ):
                    rate = (worker.events_processed - held.events) / span
                    sample = _Sample(worker.events_processed, at, rate)
                # Otherwise start over from this status: a counter that went down is a
                # restarted worker, and a span too long (or a clock set back) is no sample.
            samples[worker.worker_id] = sample
            rates[worker.worker_id] = None if worker.gone else sample.rate
        self._samples = samples
        return rates


def _rates(request: Request) -> FleetRates:
    # The app's state is the one place shared by every request of this console process.
    state = request.app.state
    rates = getattr(state, "ttp_console_fleet_rates", None)
    if not isinstance(rates, FleetRates):
        rates = FleetRates()
        state.ttp_console_fleet_rates = rates
    return rates


async def _fleet_values(request: Request) -> tuple[dict[str, object], int]:
    try:
        fleet = await console(request).control.fleet()
    except ControlClientError as exc:
        status = 503 if exc.code is ErrorCode.UNAVAILABLE else 502
        return {"fleet": None, "error": str(exc), "rates": {}}, status
    rates = _rates(request).update(fleet)
    live = [w for w in fleet.workers if not w.gone]
    return {
        "fleet": fleet,
        "error": None,
        "rates": rates,
        "live_workers": len(live),
        "gone_workers": len(fleet.workers) - len(live),
        "total_rate": sum(r for r in rates.values() if r is not None),
    }, 200


async def fleet_page(request: Request) -> Response:
    """``/fleet``: the banner (converged or not) and one row per worker; ``static/fleet.js``
    refreshes the table from :func:`fleet_fragment`."""
    values, status = await _fleet_values(request)
    return render(request, "fleet.html", values, active_nav="fleet", status_code=status)


async def fleet_fragment(request: Request) -> Response:
    """``/fleet/fragment``: the banner and table alone, for the page's periodic refresh."""
    values, status = await _fleet_values(request)
    return render(request, "fleet_fragment.html", values, status_code=status, fragment=True)
