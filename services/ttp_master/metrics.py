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
FORGED_RULE_MESSAGES = Counter(
    "ttp_master_forged_rule_messages_total",
    "Rule messages found in TTP_RULES that PostgreSQL never produced (each one is replaced).",
)
FOREIGN_RULE_STREAM_MESSAGES = Counter(
    "ttp_master_foreign_rule_stream_messages_total",
    "Messages found in TTP_RULES on subjects that are no rule subjects (copies a push"
    " consumer delivered into the stream), purged by the stream guard.",
)
CONTROL_REQUESTS = Counter(
    "ttp_master_control_requests_total",
    "Control requests answered, by endpoint and outcome.",
    ["endpoint", "outcome"],
)  # outcome: ok, the error code (bad_request, unknown_rule, not_leader, ...), or expired
# (the caller's deadline had passed: not acted on, not answered)
CONTROL_IN_FLIGHT = Gauge(
    "ttp_master_control_in_flight",
    "Control requests this master is working on (or, as a standby, holding) now.",
)
STATE_EXPIRIES = Counter(
    "ttp_master_state_expiries_total", "Operator states reverted to enabled at their expiry."
)
EXPIRY_DELAY = Histogram(
    "ttp_master_state_expiry_delay_seconds",
    "From a state's expires_at to the commit of its revert.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
STREAM_USAGE = Gauge(
    "ttp_master_stream_usage_ratio",
    "How full each stream is: the larger of bytes and messages over their limit.",
    ["stream"],
)
STREAM_FULL = Gauge(
    "ttp_master_stream_full",
    "1 while a stream is at its limit and refuses new messages (discard new).",
    ["stream"],
)
HELD_DELETES = Gauge(
    "ttp_master_held_deletes",
    "Rule deletes held back because the rules directory vanished or most files went missing.",
)
