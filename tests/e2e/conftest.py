"""Fixtures of the process-level tests: a rules directory and the process set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.master import STARTER_RULES
from harness.processes import Procs


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    for path in STARTER_RULES.rglob("*.yaml"):
        (rules / path.name).write_bytes(path.read_bytes())
    return rules


@pytest.fixture
def procs(tmp_path: Path, private_nats: Any, database_url: str, rules_dir: Path) -> Iterator[Procs]:
    handle = Procs(tmp_path, private_nats.url, database_url, rules_dir)
    try:
        yield handle
    finally:
        handle.kill_all()
