"""Fixtures of the in-process master tests: a rules directory, a bus recorder, a `MasterRig`.

A module that needs another rules directory (the starter pack, say) defines its own `rules`;
test_worker_flow.py defines a `rig` of its own, with the workers' handles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.master import BusRecorder, MasterRig, nats_client


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """An empty rules directory."""
    path = tmp_path / "rules"
    path.mkdir()
    return path


@pytest.fixture
async def bus(private_nats: Any) -> AsyncIterator[BusRecorder]:
    """Everything published on the test's own NATS server, from now on."""
    async with nats_client(private_nats.url) as nc:
        yield await BusRecorder(nc).start()


@pytest.fixture
async def rig(
    private_nats: Any, database_url: str, database_dsn: str, tmp_path: Path
) -> AsyncIterator[MasterRig]:
    """An empty rules directory, an empty directory beside it, and a bus recorder."""
    rules = tmp_path / "rules"
    rules.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    async with nats_client(private_nats.url) as nc:
        bus = await BusRecorder(nc).start()
        yield MasterRig(private_nats.url, database_url, database_dsn, rules, outside, nc, bus)
