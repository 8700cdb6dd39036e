"""Fixtures of the chaos tier: servers of the test's own (free to kill, restart or cut through
a proxy) and a rules directory holding the starter pack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.chaos import ChaosServers
from harness.master import starter_pack_in


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    return starter_pack_in(tmp_path / "rules")


@pytest.fixture
def chaos_servers(private_nats: Any, private_postgres: Any) -> Iterator[ChaosServers]:
    """Private NATS and PostgreSQL servers (embedded), with a database for the master."""
    private_postgres.embedded.ensure_database("ttp_chaos")
    yield ChaosServers(
        private_nats.embedded,
        private_postgres.embedded,
        private_postgres.embedded.url_for("ttp_chaos"),
    )
