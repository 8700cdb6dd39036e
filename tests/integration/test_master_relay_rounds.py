"""The outbox relay's rounds against a real NATS server and PostgreSQL: each window's rows of
one trace go out together, every message with its own `Nats-Msg-Id` and the trace context
of its group's publish span, and each message gets its own outcome (ttp_master.outbox_relay,
ttp_runtime.pubacks through the master's `NatsPublisher`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import create_async_engine

from harness.master import nats_client, rule_upsert
from harness.tracing import collected_spans
from ttp_core.contract import subjects
from ttp_master.bootstrap import NatsPublisher
from ttp_master.db.migrate import upgrade_to_head
from ttp_master.db.repository import ChangeSet, RuleRepository
from ttp_master.outbox_relay import PIPELINE_DEPTH, OutboxRelay
from ttp_runtime.nats import MSG_ID_HEADER, ensure_streams
from ttp_runtime.tracing import get_tracer, inject_headers

RULES = PIPELINE_DEPTH + 36
TEMPLATE = "ttp.rule.reloaded.{rule_id}"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's SDK provider."""
    with collected_spans() as exporter:
        yield exporter


def parent_span_id(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


async def test_a_batch_goes_out_in_rounds_each_message_with_its_id_and_its_group_span(
    spans: InMemorySpanExporter, private_nats: Any, database_url: str
) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_async_engine(database_url)
    try:
        async with nats_client(private_nats.url) as nc:
            js = nc.jetstream()
            await ensure_streams(js, 1, 3600, 1 << 30, 3600)
            relay = OutboxRelay(engine, database_url, NatsPublisher(nc, js), is_leader=lambda: True)
            repository = RuleRepository(engine, None)
            ids = [f"W{i:04d}" for i in range(RULES)]
            with get_tracer().start_as_current_span("rules.sync"):
                revisions = await repository.apply(
                    ChangeSet(upserts=[rule_upsert(r) for r in ids]),
                    actor="test",
                    trace_headers=inject_headers(),
                )
            spans.clear()
            assert await relay.publish_pending() == RULES
            assert await relay.publish_pending() == 0

            finished = spans.get_finished_spans()
            publishes = {
                s.context.span_id: s
                for s in finished
                if s.name == f"publish {TEMPLATE}" and s.context is not None
            }
            relays = {
                s.context.span_id: s
                for s in finished
                if s.name.endswith(f"relay {TEMPLATE}") and s.context is not None
            }
            # One relay span and one publish span per window: the rows share one trace.
            assert sorted(
                (s.attributes or {}).get("messaging.batch.message_count")
                for s in publishes.values()
            ) == sorted([PIPELINE_DEPTH, RULES - PIPELINE_DEPTH])
            assert len(relays) == 2
            for span in publishes.values():
                assert span.kind == SpanKind.PRODUCER
                assert span.parent is not None and span.parent.span_id in relays

            parents: dict[int, int] = {}
            for rule_id, revision in zip(ids, revisions, strict=True):
                msg = await js.get_last_msg(subjects.STREAM_RULES, subjects.rule_reloaded(rule_id))
                headers = msg.headers or {}
                assert headers[MSG_ID_HEADER] == f"ttp-rev-{revision}"
                parent = parent_span_id(headers["traceparent"])
                assert parent in publishes, "a message does not name its publish span"
                parents[parent] = parents.get(parent, 0) + 1
            # Each publish span is the parent of exactly the messages it counts.
            for span_id, count in parents.items():
                attributes = publishes[span_id].attributes or {}
                assert attributes.get("messaging.batch.message_count") == count
    finally:
        await engine.dispose()


async def test_each_message_of_a_round_gets_its_own_outcome(private_nats: Any) -> None:
    async with nats_client(private_nats.url) as nc:
        js = nc.jetstream()
        await ensure_streams(js, 1, 3600, 1 << 30, 3600)
        publisher = NatsPublisher(nc, js)
        stored = subjects.rule_reloaded("OUT0001")
        messages = [
            (stored, b"{}", "outcome-1", {}),
            (subjects.rule_reloaded("OUT0002"), b"x" * (nc.max_payload + 1), "outcome-2", {}),
            ("ttp.nowhere.OUT0003", b"{}", "outcome-3", {}),  # no stream: no responders
            (stored, b"{}", "outcome-1", {}),  # the same id again: a duplicate is success
        ]
        outcomes = await publisher.publish_stream_many(messages)
        assert outcomes[0] is None and outcomes[3] is None
        assert isinstance(outcomes[1], nats.errors.MaxPayloadError)
        assert isinstance(outcomes[2], nats.js.errors.NoStreamResponseError)
        info = await js.stream_info(subjects.STREAM_RULES)
        assert info.state.messages == 1
