"""TTP_TAGS, then TTP_EVENTS, run full (small limits set through settings): the worker
reports not-ready and holds its events, the producer gets an error from JetStream, rule
changes still reach the worker, and once space is freed every acknowledged event is tagged
exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.chaos import ChaosServers
from harness.chaos_storage import ROOMY, storage_full

pytestmark = pytest.mark.timeout(300)


async def test_full_streams_refuse_and_report_then_flow_again_with_no_event_lost(
    chaos_servers: ChaosServers, rules_dir: Path, tmp_path: Path
) -> None:
    row = await storage_full(chaos_servers, rules_dir, tmp_path, events=300)
    print(row)
    details = row.details
    code, reason = details["worker_readyz_while_tags_full"]
    assert code == 503 and "TTP_TAGS full" in reason
    assert details["worker_stream_full_gauge"] == 1.0
    assert details["worker_readyz_while_both_full"][0] == 503
    assert details["events_accepted_before_refusal"] > 0
    assert details["producer_refusals"]
    assert all("maximum bytes exceeded" in refusal for refusal in details["producer_refusals"])
    assert details["tags_max_bytes_after"] == ROOMY
    assert details["firing_events"] > 200
    assert (row.lost, row.duplicated) == (0, 0)
    assert details["unexpected_tags"] == 0
