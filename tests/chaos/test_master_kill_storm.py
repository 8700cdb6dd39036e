"""kill -9 of the leading master at random moments during 300 rule-file edits, with and
without a hot standby: PostgreSQL ends equal to the disk, every worker on the master's digest,
and TTP_RULES stored every outbox event once (no revision lost, none stored twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.chaos import ChaosServers
from harness.chaos_master import master_kill_storm

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("standby", [False, True], ids=["restarted", "hot-standby"])
async def test_master_kill_storm_loses_and_duplicates_no_rule_change(
    chaos_servers: ChaosServers, rules_dir: Path, tmp_path: Path, standby: bool
) -> None:
    row = await master_kill_storm(
        chaos_servers, rules_dir, tmp_path, edits=300, kills=3, standby=standby
    )
    print(row)
    assert row.edits >= 300
    assert row.details["postgres_differences"] == []
    assert row.details["workers_on_master_digest"] is True
    assert row.events > 0
    assert (row.lost, row.duplicated) == (0, 0)
    assert len(row.details["recoveries_s"]) == 3
