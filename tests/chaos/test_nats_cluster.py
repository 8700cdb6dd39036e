"""One node of a three-node JetStream cluster (streams at three replicas, the production
topology) killed and restarted during event flow and rule edits: nothing acknowledged is
lost or tagged twice, and the master and workers fail over without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.chaos_cluster import cluster_node_loss
from harness.nats_cluster import NatsCluster, nats_cluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats") as started:
        yield started


async def test_losing_one_of_three_nats_nodes_loses_and_duplicates_nothing(
    cluster: NatsCluster, private_postgres: Any, rules_dir: Path, tmp_path: Path
) -> None:
    private_postgres.embedded.ensure_database("ttp_chaos")
    database_url = private_postgres.embedded.url_for("ttp_chaos")
    row = await cluster_node_loss(cluster, database_url, rules_dir, tmp_path, events=2_000)
    print(row)
    details = row.details
    assert set(details["stream_replicas"].values()) == {3}
    assert "TTP_EVENTS" in details["victim_led"]
    assert details["firing_events"] > 1_000
    assert (row.lost, row.duplicated) == (0, 0)
    assert details["unexpected_tags"] == 0
    assert details["edits_while_node_down"] > 0
    assert details["same_processes"] is True
    assert details["master_readyz_after"] == 200
    assert details["postgres_differences"] == []
    assert details["workers_on_master_digest"] is True
