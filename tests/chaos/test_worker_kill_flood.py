"""The worker fleet as real processes: one of two workers is killed with SIGKILL while a flood
of events flows. Every event must still be tagged exactly once in TTP_TAGS: the tag uuids of
each event equal an offline evaluation of the same events on an index built from TTP_RULES,
in one tag message per event that fires. The survivor then gets SIGTERM and exits 0 within
10 s (checked by `stop`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.chaos import ChaosServers
from harness.chaos_workers import worker_kill_flood

EVENTS = int(os.environ.get("TTP_TEST_FLEET_EVENTS", "6000"))

pytestmark = pytest.mark.timeout(300)


async def test_kill_9_of_a_worker_during_a_flood_loses_and_duplicates_nothing(
    chaos_servers: ChaosServers, rules_dir: Path, tmp_path: Path
) -> None:
    row = await worker_kill_flood(chaos_servers, rules_dir, tmp_path, events=EVENTS)
    print(row)
    assert row.details["index_is_masters"] is True
    assert row.details["firing_events"] > EVENTS // 2
    assert (row.lost, row.duplicated) == (0, 0)
    assert row.details["unexpected_tags"] == 0
    # Both took part (w1's count is its last heartbeat before the kill).
    assert 0 < row.details["w1_processed_before_kill"] < EVENTS
    assert row.details["w2_processed"] > 0
