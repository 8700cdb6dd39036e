"""`ttpctl events publish` counts every acknowledged publish, however the acks arrive.

A fake JetStream context stands in for nats-py here (pure bookkeeping under test): its
futures are resolved all at once, the way a burst of PubAcks arrives on a busy machine,
where the window empties before the futures' done-callbacks have run.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from nats.js.api import PubAck

from ttpctl.events_commands import _Publisher, _Ready, _Run, _Ui


class BurstJetStream:
    def __init__(self) -> None:
        self.futures: list[asyncio.Future[PubAck]] = []

    async def publish_async(self, subject: str, payload: bytes, **_: Any) -> asyncio.Future[PubAck]:
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def ack_all(self, duplicates: int = 0) -> None:
        for number, future in enumerate(self.futures):
            future.set_result(
                PubAck(stream="TTP_EVENTS", seq=number + 1, duplicate=number < duplicates)
            )


async def test_a_burst_of_acks_is_counted_in_full_before_finish_returns() -> None:
    js = BurstJetStream()
    run = _Run(label="events.jsonl")
    session = SimpleNamespace(js=js, nc=SimpleNamespace(is_connected=True))
    publisher = _Publisher(session, run, _Ui(run, show_progress=False, total=None))  # type: ignore[arg-type]
    for number in range(1, 51):
        ready = _Ready(subject="ttp.event.command", payload=b"{}", msg_id=f"id-{number}")
        await publisher.send(number, ready)
    js.ack_all(duplicates=3)
    await publisher.finish()
    assert (run.published, run.duplicates, run.failed) == (47, 3, 0)
