"""`ttp_master.bounded.within`: a bounded wait that does not wait for a slow cancellation
(psycopg's cancellation of a statement on a server that does not answer takes about 10 s)."""

from __future__ import annotations

import asyncio

import pytest

from ttp_master.bounded import within


async def _answers(value: int) -> int:
    await asyncio.sleep(0)
    return value


async def _never_answers(release: asyncio.Event, wound_down: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await release.wait()  # like psycopg asking a silent server to cancel the statement
        wound_down.set()
        raise


async def test_a_prompt_answer_is_returned() -> None:
    assert await within(_answers(7), 1.0) == 7


async def test_an_error_of_the_call_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await within(fails(), 1.0)


async def test_no_answer_raises_timeout_without_waiting_for_the_cancellation() -> None:
    release = asyncio.Event()
    wound_down = asyncio.Event()
    with pytest.raises(TimeoutError):
        await within(_never_answers(release, wound_down), 0.05)
    # Returned while the cancelled call is still winding down; it finishes by itself.
    assert not wound_down.is_set()
    release.set()
    await asyncio.wait_for(wound_down.wait(), 5.0)


async def test_cancelling_the_caller_cancels_the_call() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def call() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(within(call(), 60.0))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(cancelled.wait(), 5.0)
