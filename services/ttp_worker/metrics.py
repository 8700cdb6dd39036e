"""The worker's Prometheus metrics (served on /metrics)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from ttp_core.engine.index import unusable_patterns

_FAST = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
_APPLY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

READY = Gauge("ttp_worker_ready", "1 once the index was built from the TTP_RULES snapshot.")
REVISION = Gauge("ttp_worker_revision", "Newest rule revision applied to the index.")
RULES = Gauge(
    "ttp_worker_rules", "Rules in the index, by status.", ["status"]
)  # status: total, active, external
RULE_MESSAGES = Counter(
    "ttp_worker_rule_messages_total",
    "Rule messages received, by outcome.",
    ["outcome"],
)  # outcome: applied, ignored (older/duplicate revision), error
RESYNCS = Counter(
    "ttp_worker_resyncs_total",
    "Rebuilds of the index from a fresh snapshot, by reason.",
    ["reason"],
)
APPLY_SECONDS = Histogram(
    "ttp_worker_apply_seconds",
    "Time to apply one rule change (or one snapshot) and swap the index.",
    ["mode"],  # mode: live, snapshot
    buckets=_APPLY,
)
EVENTS = Counter(
    "ttp_worker_events_total",
    "Events consumed, by source kind and outcome.",
    ["source_kind", "outcome"],
)  # outcome: tagged, untagged, no_rules, deadletter
TAGS = Counter("ttp_worker_tags_total", "Tags published, by source kind.", ["source_kind"])
DEAD_LETTERS = Counter(
    "ttp_worker_dead_letters_total", "Events dead-lettered, by reason.", ["reason"]
)
EVALUATE_SECONDS = Histogram(
    "ttp_worker_evaluate_seconds", "Time to evaluate one event on the index.", buckets=_FAST
)
CONSUMER_PENDING = Gauge(
    "ttp_worker_consumer_pending", "Events waiting in the shared consumer (last fetch's view)."
)
PUBLISH_FAILURES = Counter(
    "ttp_worker_publish_failures_total",
    "Tag or dead-letter publishes that failed (the event is redelivered).",
)
PROPAGATION_SECONDS = Histogram(
    "ttp_worker_propagation_seconds",
    "From the master's commit of a rule change (its CloudEvents time) to this worker's swap.",
    buckets=_APPLY,
)
PUBLISH_SECONDS = Histogram(
    "ttp_worker_publish_seconds",
    "From sending a batch's tag messages to the last PubAck (or the timeout).",
    buckets=_APPLY,
)
STREAM_FULL = Gauge(
    "ttp_worker_stream_full",
    "1 while an output stream (TTP_TAGS, TTP_DEADLETTER) is at its limit; events are held.",
    ["stream"],
)

UNUSABLE_PATTERNS = Gauge(
    "ttp_worker_unusable_patterns",
    "Rule patterns no engine accepts (only a forged rule message carries one); each such leaf "
    "never matches.",
)
UNUSABLE_PATTERNS.set_function(unusable_patterns)


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe` of every amount, with one update per bucket rather than per amount.

    A batch's per-event evaluate times go in here: `observe` takes a lock and walks the
    buckets for each one, a few per cent of the event path. The result is the same (every
    amount counted in its bucket and summed); prometheus_client's own layout is used when
    it is the known one, else `observe` per amount.
    """
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None or len(buckets) != len(bounds):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    for amount in amounts:
        # The first bound at or above the amount, as `observe` finds it (+Inf is the last).
        counts[bisect.bisect_left(bounds, amount)] += 1
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(sum(amounts))
