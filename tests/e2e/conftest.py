"""Fixtures of the process-level tests: a rules directory and the process set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.master import starter_pack_in
from harness.processes import Procs


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    return starter_pack_in(tmp_path / "rules")


@pytest.fixture
def procs(tmp_path: Path, private_nats: Any, database_url: str, rules_dir: Path) -> Iterator[Procs]:
    handle = Procs(tmp_path, private_nats.url, database_url, rules_dir)
    try:
        yield handle
    finally:
        handle.kill_all()
