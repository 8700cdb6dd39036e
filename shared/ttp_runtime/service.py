"""The process lifecycle every service shares: run until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

try:
    # uvloop's loop does the socket reads, timers and callbacks of NATS traffic in C: every
    # service's hot path is the event loop itself. Absent where it has no wheel (Windows).
    import uvloop
except ImportError:  # pragma: no cover - only where uvloop is not installed
    uvloop = None  # type: ignore[assignment]

from ttp_runtime.tracing import shutdown_tracing

_log = logging.getLogger(__name__)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop every service runs on: uvloop's, or asyncio's default where it cannot import."""
    return None if uvloop is None else uvloop.new_event_loop


async def first_completed(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of `awaitables` completes (a stop event's wait, a task that
    failed...); the waits made here for the others are cancelled, tasks passed in are not."""
    made = [a if isinstance(a, asyncio.Future) else asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(made, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, original in zip(made, awaitables, strict=True):
            if future is not original:
                future.cancel()


def run_until_signalled(
    name: str,
    service: Callable[[], Coroutine[Any, Any, None]],
    stop: asyncio.Event,
    request_stop: Callable[[], None],
    grace_s: float,
) -> int:
    """Run `service()` until it ends or a signal asks it to stop; returns the exit code.

    SIGTERM/SIGINT call `request_stop`, after which the service has `grace_s` seconds to
    finish its in-flight work and drain (exit 0 within 10 s). Exit codes: 0 clean,
    1 failed or too slow to stop. The loop is uvloop's where it is installed
    (:func:`event_loop_factory`).
    """

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        runner = asyncio.create_task(service(), name=name)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not runner.done():
            try:
                await asyncio.wait_for(runner, grace_s)
            except TimeoutError:
                _log.error("%s: shutdown took longer than %.0f s; exiting anyway", name, grace_s)
                return 1
        if runner.exception() is not None:
            _log.error("%s failed", name, exc_info=runner.exception())
            return 1
        return 0

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(main())
    finally:
        # Here, not inside the service: the tracer provider is process-global, and an
        # in-process service (tests) must not shut it down for everyone.
        shutdown_tracing()
