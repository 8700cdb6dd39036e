"""An in-process `ttp-worker` for tests: settings for a test NATS, run as a task, stopped after."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from ttp_worker.bootstrap import Worker
from ttp_worker.settings import WorkerSettings

TIMEOUT_S = 20.0


def worker_settings(nats_url: str, worker_id: str, **overrides: Any) -> WorkerSettings:
    """Settings of a quick test worker: ephemeral HTTP port, short fetch, status and ack_wait."""
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "worker_id": worker_id,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "log_format": "console",
        "fetch_timeout_s": 0.2,
        "status_interval_s": 0.5,
        "ack_wait_s": 2.0,
    }
    values.update(overrides)
    return WorkerSettings(**values)


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_worker(
    nats_url: str, worker_id: str, *, lifters: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[Worker]:
    """`Worker(settings).run()` as a task, ready (snapshot applied); stopped on exit."""
    worker = Worker(worker_settings(nats_url, worker_id, **overrides), lifters=lifters or {})
    task = asyncio.create_task(worker.run(), name=f"test-worker-{worker_id}")
    try:
        await wait_for(lambda: worker.state.ready or task.done(), f"{worker_id} ready")
        if task.done():
            task.result()
            raise AssertionError("worker stopped before it became ready")
        yield worker
    finally:
        worker.request_stop()
        try:
            await asyncio.wait_for(task, 15)
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
