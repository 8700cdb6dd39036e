"""Waiting for PostgreSQL at most so long, without waiting for the wait to wind down.

When the path to PostgreSQL silently drops packets, a statement never returns, and cancelling
it is slow too: psycopg then asks the server to cancel the query over a new connection and
gives up only after about 10 s. A caller that must answer in bounded time (a probe, an
operator's request) therefore cancels the call and returns at once; the abandoned call winds
down in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

_T = TypeVar("_T")
_abandoned: set[asyncio.Future[Any]] = set()


async def within(awaitable: Awaitable[_T], seconds: float) -> _T:
    """The result of `awaitable`, or TimeoutError after `seconds` (the call is cancelled and
    left to finish by itself). Cancelling the caller cancels the call too."""
    call = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({call}, timeout=seconds)
    except asyncio.CancelledError:
        _abandon(call)
        raise
    if not done:
        _abandon(call)
        raise TimeoutError(f"no answer within {seconds:g} s")
    return call.result()


def _abandon(call: asyncio.Future[Any]) -> None:
    call.cancel()
    _abandoned.add(call)
    call.add_done_callback(_forget)


def _forget(call: asyncio.Future[Any]) -> None:
    _abandoned.discard(call)
    if not call.cancelled():
        call.exception()  # retrieved: an abandoned call's failure is expected, not news
