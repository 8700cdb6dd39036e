"""The master's Prometheus metrics (documented in docs/operations.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

IS_LEADER = Gauge("ttp_master_is_leader", "1 while this master holds the leader lock.")
RULES = Gauge(
    "ttp_master_rules", "Rules known to the master, by status.", ["status"]
)  # status: active, external, rejected
REVISION = Gauge("ttp_master_revision", "Newest revision published on TTP_RULES.")
PUBLISH_LAG = Histogram(
    "ttp_master_publish_lag_seconds",
    "Time from a change's commit to its PubAck.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELOAD_DURATION = Histogram(
    "ttp_master_reload_duration_seconds",
    "Time to validate and commit one batch of rule file changes.",
    ["reason"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REJECTIONS = Counter(
    "ttp_master_rejections_total", "Rule files rejected by validation (each new rejection)."
)
CHANGES = Counter(
    "ttp_master_rule_changes_total", "Rule changes committed, by kind.", ["kind"]
)  # kind: upsert, delete
REPUBLISHED = Counter(
    "ttp_master_republished_total", "Messages republished from PostgreSQL to repair TTP_RULES."
)
