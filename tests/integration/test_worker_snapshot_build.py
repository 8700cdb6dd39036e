"""A big TTP_RULES snapshot is built off the event loop: the worker answers /livez (and
/readyz 503) while its index builds, is ready only once the index is installed, and an index
built for a consumer replaced meanwhile (a resync) is never installed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from harness.master import nats_client
from harness.worker import TIMEOUT_S, wait_for, worker_settings
from ttp_core.contract import subjects
from ttp_core.contract.payloads import MASTER_SOURCE, RuleStateChanged, encode, envelope
from ttp_runtime.nats import ensure_configured_streams
from ttp_worker.bootstrap import Worker
from ttp_worker.rulebook import BuiltSnapshot, RuleBook, RuleChange

RULES = 1_200  # above the size from which the worker builds a snapshot in a thread


class GatedBuilds:
    """Holds every big snapshot build until the test opens the gate."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.entered = 0
        self.timed_out = False
        original = RuleBook.build_snapshot

        def gated(book: RuleBook, changes: Iterable[RuleChange]) -> BuiltSnapshot:
            held = list(changes)
            if len(held) >= RULES:
                self.entered += 1
                if not self.gate.wait(TIMEOUT_S):
                    self.timed_out = True
            return original(book, held)

        monkeypatch.setattr(RuleBook, "build_snapshot", gated)


async def publish_states(nc: Any, count: int) -> None:
    js = nc.jetstream()
    for n in range(count):
        rule_id = f"S{n:05d}"
        data = RuleStateChanged(
            rule_id=rule_id,
            revision=n + 1,
            state="disabled",
            reason="test",
            set_by="test",
            set_at=datetime.now(UTC),
        )
        event = envelope(data, source=MASTER_SOURCE, subject=rule_id, event_id=f"t-{uuid.uuid4()}")
        await js.publish(
            subjects.rule_state(rule_id), encode(event), headers={"Nats-Msg-Id": event.id}
        )


async def probe(session: aiohttp.ClientSession, worker: Worker, path: str) -> int:
    assert worker.health is not None
    async with session.get(f"{worker.health.url}{path}") as response:
        return response.status


async def test_the_loop_answers_while_a_big_snapshot_builds_and_a_replaced_one_is_dropped(
    private_nats: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = GatedBuilds(monkeypatch)
    settings = worker_settings(private_nats.url, "w-big")
    async with nats_client(private_nats.url) as nc:
        await ensure_configured_streams(nc.jetstream(), settings)
        await publish_states(nc, RULES)
    worker = Worker(settings, lifters={})
    task = asyncio.create_task(worker.run(), name="test-worker-big")
    try:
        await wait_for(lambda: builds.entered == 1 or task.done(), "the first build")
        assert not task.done()
        async with aiohttp.ClientSession() as session:
            # The build holds its thread; the loop still serves the probes.
            assert await probe(session, worker, "/livez") == 200
            assert await probe(session, worker, "/readyz") == 503
            assert not worker.state.ready
            assert worker.rules is not None
            worker.rules.request_resync("test")
            await wait_for(lambda: builds.entered == 2 or task.done(), "the resync's build")
            assert await probe(session, worker, "/livez") == 200
            builds.gate.set()
            await wait_for(lambda: worker.state.ready or task.done(), "ready")
            assert await probe(session, worker, "/readyz") == 200
        assert not builds.timed_out
        # Only the current consumer's index was installed, whole.
        assert worker.rules.snapshots == 1
        index = worker.book.current.index
        assert len(index.states) == RULES
        assert worker.book.current.revision == RULES
        assert all(worker.book.held_state(f"S{n:05d}") == n + 1 for n in range(RULES))
    finally:
        builds.gate.set()
        worker.request_stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 15)
