"""PostgreSQL unreachable from the master (its path cut by a TCP proxy: connections refused;
or frozen: nothing gets through and nobody is told) while rule files change and operators
send state requests: /readyz goes 503, a state request ends in bounded time in a clear
`unavailable` error naming PostgreSQL (not a client timeout), nothing PostgreSQL does not hold
is published, and once the path is back every edit made during the outage reaches the
workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.chaos import ChaosServers
from harness.chaos_master import postgres_outage

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("freeze", [False, True], ids=["refused", "frozen"])
async def test_postgres_outage_refuses_state_changes_publishes_nothing_unpersisted_and_catches_up(
    chaos_servers: ChaosServers, rules_dir: Path, tmp_path: Path, freeze: bool
) -> None:
    row = await postgres_outage(
        chaos_servers, rules_dir, tmp_path, outage_s=8.0 if freeze else 6.0, freeze=freeze
    )
    print(row)
    assert row.edits == 8
    assert any(seen.startswith("503 ") for seen in row.details["readyz_during_outage"])
    attempts = row.details["state_requests"]
    assert len(attempts) == 3
    for attempt in attempts:
        # A hang would end in the client's own timeout, whose message says no master
        # answered: a message naming PostgreSQL is the master's own answer.
        assert attempt["code"] == "unavailable", attempt
        assert "PostgreSQL" in attempt["message"], attempt
    assert row.details["unpersisted_published"] == []
    assert row.details["postgres_differences"] == []
    assert row.details["workers_on_master_digest"] is True
    assert (row.lost, row.duplicated) == (0, 0)
