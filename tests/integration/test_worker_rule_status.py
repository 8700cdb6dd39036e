"""A worker publishes its status as soon as it applies a rule change (docs/contract.md).

The heartbeat is set far beyond the test's patience, so every status seen after the first
one is the one the change itself caused.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from harness.master import nats_client
from harness.worker import TIMEOUT_S, running_worker, wait_for
from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    MASTER_SOURCE,
    RuleStateChanged,
    WorkerStatus,
    decode,
    encode,
    envelope,
)

HEARTBEAT_S = 600.0


async def test_each_applied_change_publishes_the_workers_status_at_once(private_nats: Any) -> None:
    statuses: asyncio.Queue[WorkerStatus] = asyncio.Queue()

    async def on_status(msg: Msg) -> None:
        await statuses.put(decode(msg.data, WorkerStatus).data)

    async with nats_client(private_nats.url) as nc:
        await nc.subscribe(subjects.worker_status("w1"), cb=on_status)
        await nc.flush()
        async with running_worker(private_nats.url, "w1", status_interval_s=HEARTBEAT_S) as worker:
            first = await asyncio.wait_for(statuses.get(), TIMEOUT_S)
            assert first.ready is True and first.revision == 0  # the (empty) snapshot
            js = nc.jetstream()
            for revision, state in ((7, "disabled"), (8, "enabled")):
                data = RuleStateChanged(
                    rule_id="R1",
                    revision=revision,
                    state=state,  # type: ignore[arg-type]
                    reason="test",
                    set_by="test",
                    set_at=datetime.now(UTC),
                )
                event = envelope(
                    data, source=MASTER_SOURCE, subject="R1", event_id=f"test-{uuid.uuid4()}"
                )
                await js.publish(
                    subjects.rule_state("R1"), encode(event), headers={"Nats-Msg-Id": event.id}
                )
                status = await asyncio.wait_for(statuses.get(), TIMEOUT_S)
                assert status.revision == revision
                assert status.index_digest == worker.book.current.index.digest()
            await wait_for(lambda: worker.state.applied >= 2, "both changes applied")
            assert statuses.empty()
