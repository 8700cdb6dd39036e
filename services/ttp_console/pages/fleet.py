"""The fleet: each worker's revision, digest, lag, readiness and events/s (``fleet`` polls)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from ttp_console.pages.common import console, render
from ttp_core.contract.control import ErrorCode, FleetInfo
from ttp_runtime.control_client import ControlClientError

__all__ = ["FleetRates", "fleet_fragment", "fleet_page"]

MIN_RATE_INTERVAL_S: Final = 1.0
"""Polls closer together than this reuse the previous rate (a reload storm is no sample)."""
MAX_WORKERS_TRACKED: Final = 10_000


@dataclass(frozen=True, slots=True)
class _Sample:
    events: int
    at: float
    rate: float | None


class FleetRates:
    """Events per second of each worker, from its ``events_processed`` in successive polls.

    One sample per worker id the last poll listed (workers gone from the fleet are forgotten),
    at most :data:`MAX_WORKERS_TRACKED`.
    """

    def __init__(self) -> None:
        self._samples: dict[str, _Sample] = {}

    def update(self, fleet: FleetInfo, now: float) -> dict[str, float | None]:
        rates: dict[str, float | None] = {}
        samples: dict[str, _Sample] = {}
        for worker in fleet.workers[:MAX_WORKERS_TRACKED]:
            held = self._samples.get(worker.worker_id)
            sample = _Sample(worker.events_processed, now, None)
            if held is not None:
                elapsed = now - held.at
                if elapsed < MIN_RATE_INTERVAL_S:
                    sample = held
                elif worker.events_processed >= held.events:
                    rate = (worker.events_processed - held.events) / elapsed
                    sample = _Sample(worker.events_processed, now, rate)
                # A counter that went down is a restarted worker: start over from here.
            samples[worker.worker_id] = sample
            rates[worker.worker_id] = sample.rate
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
    rates = _rates(request).update(fleet, time.monotonic())
    live = [w for w in fleet.workers if not w.gone]
    return {
        "fleet": fleet,
        "error": None,
        "rates": rates,
        "live_workers": len(live),
        "gone_workers": len(fleet.workers) - len(live),
        "total_rate": sum(r for w, r in rates.items() if r is not None and w),
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
