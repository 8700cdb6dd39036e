"""A three-node NATS JetStream cluster on loopback, from the embedded `nats-server` binary.

The production topology (deploy/kubernetes/nats/values-prod.yaml: three servers, streams at
three replicas) on one machine: each server has its own client, cluster (route) and
monitoring port, its own `server_name` and store directory, and routes to the other two.
Ports and data survive `kill()` / `start()` of one node, as a pod's would.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ttp_runtime.embedded import EmbeddedNats, free_port

CLUSTER_NAME = "ttp-chaos"
_LOOPBACK = "127.0.0.1"


class NatsCluster:
    """Three routed `nats-server`s with JetStream; `nodes[i].kill()` / `.start()` for faults."""

    def __init__(self, data_dir: Path, size: int = 3) -> None:
        self.route_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://{_LOOPBACK}:{port}" for port in self.route_ports)
        self.nodes = [
            EmbeddedNats(
                data_dir=data_dir / f"n{index + 1}",
                server_name=f"n{index + 1}",
                extra_args=(
                    "--cluster_name",
                    CLUSTER_NAME,
                    "--cluster",
                    f"nats://{_LOOPBACK}:{port}",
                    "--routes",
                    routes,
                ),
            )
            for index, port in enumerate(self.route_ports)
        ]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma separated (the form of `TTP_NATS_URL`)."""
        return ",".join(self.urls)

    def start(self, timeout: float = 60.0) -> None:
        """Start every node and wait until JetStream has a meta leader."""
        for node in self.nodes:
            node.start()
        self.wait_for_meta_leader(timeout)

    def close(self) -> None:
        """Stop every node and remove its data."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()

    def node(self, server_name: str) -> EmbeddedNats:
        """The node called `server_name`."""
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise LookupError(server_name)

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, as a running node reports it."""
        for node in self.nodes:
            if not node.is_running:
                continue
            jsz = _monitor(node, "/jsz")
            leader = (jsz or {}).get("meta_cluster", {}).get("leader")
            if leader:
                return str(leader)
        return None

    def wait_for_meta_leader(self, timeout: float = 60.0) -> str:
        """Wait until a meta leader is elected; its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.meta_leader()
            if leader is not None:
                return leader
            time.sleep(0.1)
        raise AssertionError(f"no JetStream meta leader within {timeout} s")


def _monitor(node: EmbeddedNats, path: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{node.monitor_url}{path}", timeout=2) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (urllib.error.URLError, OSError, ValueError):
        return None


@contextlib.contextmanager
def nats_cluster(data_dir: Path) -> Iterator[NatsCluster]:
    """A started three-node cluster, closed on the way out."""
    cluster = NatsCluster(data_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


__all__ = ["CLUSTER_NAME", "NatsCluster", "nats_cluster"]
