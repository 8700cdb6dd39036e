"""A worker's wait for its streams, against a real nats-server with the shipped roles.

A worker refused stream creation by the server hears the refusal at once (not after a request
timeout), says it waits for the master, and is done as soon as the master's streams exist.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from harness.nats_roles import role_nats
from harness.worker import worker_settings
from ttp_runtime.nats import configured_streams, ensure_configured_streams
from ttp_worker.settings import WorkerSettings
from ttp_worker.streams import StreamWait

WAIT_TIMEOUT_S = 30.0


async def test_a_refused_creation_waits_for_the_master_and_ends_when_its_streams_exist(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ttp_worker.streams")
    with role_nats(tmp_path) as rn:
        settings = worker_settings(rn.url, "early")
        stop = asyncio.Event()
        wait: StreamWait | None = None

        async def hear(error: Exception) -> None:
            assert wait is not None
            wait.note_error(error)

        worker = await rn.connect("worker", error_cb=hear)
        master = await rn.connect("master")
        try:
            # may_create: as a worker on a server it believes open would; this one refuses.
            wait = StreamWait(
                worker.jetstream(), configured_streams(settings), may_create=True, retry_s=0.1
            )
            task = asyncio.create_task(wait.run(stop))

            async def refused() -> None:
                while not (wait.creation_refused and "waiting for the master" in caplog.text):
                    await asyncio.sleep(0.05)

            # Heard from the server's -ERR, long before a 5 s JetStream request timeout.
            await asyncio.wait_for(refused(), WAIT_TIMEOUT_S)
            assert not task.done()
            assert "the server refused this worker stream creation" in caplog.text
            assert [kind for kind, _ in rn.refusals("worker")] == ["Publish"]
            assert rn.refusals("worker")[0][1].startswith("$JS.API.STREAM.CREATE.")

            await ensure_configured_streams(master.jetstream(), settings)
            assert await asyncio.wait_for(task, WAIT_TIMEOUT_S) is True
            assert "the master created the JetStream streams" in caplog.text
            assert len(rn.refusals("worker")) == 1  # it never tried again
        finally:
            stop.set()
            await worker.close()
            await master.close()


def test_a_worker_that_logs_in_leaves_stream_creation_to_the_master() -> None:
    def settings(**env: str) -> WorkerSettings:
        return WorkerSettings(worker_id="w", **env)  # type: ignore[arg-type]

    assert settings(nats_url="nats://127.0.0.1:4222").logs_in() is False
    assert settings(nats_url="nats://127.0.0.1:4222", nats_user="worker").logs_in() is True
    assert settings(nats_url="nats://worker:pw@127.0.0.1:4222").logs_in() is True
    assert settings(nats_url="nats://127.0.0.1:4222", nats_token="t").logs_in() is True
