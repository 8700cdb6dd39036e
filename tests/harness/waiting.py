"""Waiting, in a test's event loop, for something another task or process brings about."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

TIMEOUT_S = 30.0


async def eventually(check: Callable[[], object], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Poll ``check`` until it is true; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
