"""NATS restarted twice (kill -9, then an orderly restart) while events flow and rule files
change: every event the producer got a PubAck for is tagged exactly once, and every worker
converges on the master's digest with PostgreSQL equal to the disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.chaos import ChaosServers
from harness.chaos_nats import nats_restart

pytestmark = pytest.mark.timeout(300)


async def test_nats_restart_during_events_and_edits_tags_every_acked_event_once(
    chaos_servers: ChaosServers, rules_dir: Path, tmp_path: Path
) -> None:
    row = await nats_restart(chaos_servers, rules_dir, tmp_path, events=3_000, restarts=2)
    print(row)
    assert row.details["firing_events"] > 1_000
    assert row.edits > 0
    assert (row.lost, row.duplicated) == (0, 0)
    assert row.details["unexpected_tags"] == 0
    assert row.details["postgres_differences"] == []
    assert row.details["workers_on_master_digest"] is True
    assert len(row.details["recoveries_s"]) == 2
