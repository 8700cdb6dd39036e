"""ttp_runtime.nats against a real NATS server: connect, streams, publish, drain."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ttp_core.contract import subjects
from ttp_runtime.nats import (
    MSG_ID_HEADER,
    StreamOutcome,
    configured_streams,
    connect,
    drain,
    ensure_stream,
    ensure_streams,
    publish_js,
    stream_configs,
)
from ttp_runtime.settings import ServiceSettings
from ttp_runtime.tracing import configure_tracing, extract_context, get_tracer

if TYPE_CHECKING:
    from tests.conftest import JetStreamNames, NatsServer

DAY = 24 * 3600.0
WEEK = 7 * DAY


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(ServiceSettings(nats_url=nats_url), "ttp-test", initial_timeout_s=10)
    try:
        yield client
    finally:
        await drain(client)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = configure_tracing("ttp-test")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


async def ensure_test_streams(
    js: JetStreamContext, js_names: JetStreamNames, events_max_age_s: float, events_max_bytes: int
) -> list[StreamOutcome]:
    """ensure_streams with this test's own stream names and subjects."""
    return await ensure_streams(
        js,
        1,
        events_max_age_s,
        events_max_bytes,
        30 * DAY,
        stream_name=js_names.stream,
        subject_name=js_names.subject,
    )


def test_stream_configs_follow_the_contract() -> None:
    rules, events, tags, deadletter = stream_configs(3, WEEK, 10 * 2**30, 30 * DAY)
    assert [c.name for c in (rules, events, tags, deadletter)] == [
        "TTP_RULES",
        "TTP_EVENTS",
        "TTP_TAGS",
        "TTP_DEADLETTER",
    ]
    assert rules.subjects == list(subjects.RULES_STREAM_SUBJECTS)
    assert rules.max_msgs_per_subject == 1
    assert rules.duplicate_window == DAY
    assert events.subjects == ["ttp.event.*"]
    assert (events.max_age, events.max_bytes) == (WEEK, 10 * 2**30)
    assert tags.subjects == ["ttp.tagged.*"]
    assert tags.duplicate_window == 600
    assert deadletter.subjects == ["ttp.deadletter.*"]
    assert deadletter.max_age == WEEK
    for config in (rules, events, tags, deadletter):
        assert config.num_replicas == 3
        assert config.storage is StorageType.FILE
        assert config.retention is RetentionPolicy.LIMITS
        # A full stream refuses new messages; it never drops stored ones to make room.
        assert config.discard is DiscardPolicy.NEW
    # The server refuses a duplicate window longer than max age.
    short = stream_configs(1, 60, -1, 30)
    assert short[1].duplicate_window == 60
    assert short[2].duplicate_window == 30


def test_every_stream_has_a_size_limit_of_its_own_from_the_settings() -> None:
    settings = ServiceSettings(
        events_max_bytes=1000, tags_max_bytes=2000, deadletter_max_bytes=3000, rules_max_bytes=4000
    )
    rules, events, tags, deadletter = configured_streams(settings)
    assert [c.max_bytes for c in (rules, events, tags, deadletter)] == [4000, 1000, 2000, 3000]
    assert {c.discard for c in (rules, events, tags, deadletter)} == {DiscardPolicy.NEW}


async def test_ensure_streams_is_idempotent(nc: Client, js_names: JetStreamNames) -> None:
    js = nc.jetstream()
    first = await ensure_test_streams(js, js_names, WEEK, 2**30)
    second = await ensure_test_streams(js, js_names, WEEK, 2**30)

    assert [o.action for o in first] == ["created"] * 4
    assert [o.action for o in second] == ["unchanged"] * 4
    rules = await js.stream_info(js_names.stream("TTP_RULES"))
    assert rules.config.max_msgs_per_subject == 1
    assert rules.config.storage == StorageType.FILE
    assert rules.config.discard == DiscardPolicy.NEW
    assert rules.config.duplicate_window == DAY
    assert sorted(rules.config.subjects or []) == sorted(
        js_names.subject(s) for s in subjects.RULES_STREAM_SUBJECTS
    )
    events = await js.stream_info(js_names.stream("TTP_EVENTS"))
    assert events.config.retention == RetentionPolicy.LIMITS
    assert (events.config.max_age, events.config.max_bytes) == (WEEK, 2**30)
    tags = await js.stream_info(js_names.stream("TTP_TAGS"))
    assert (tags.config.max_age, tags.config.duplicate_window) == (30 * DAY, 600)
    deadletter = await js.stream_info(js_names.stream("TTP_DEADLETTER"))
    assert deadletter.config.subjects == [js_names.subject("ttp.deadletter.*")]


async def test_changed_limits_are_applied_and_data_kept(
    nc: Client, js_names: JetStreamNames
) -> None:
    js = nc.jetstream()
    await ensure_test_streams(js, js_names, WEEK, 2**30)
    subject = js_names.subject(subjects.event("command"))
    await publish_js(js, subject, b'{"n": 1}', "event-1")

    outcomes = await ensure_test_streams(js, js_names, 3 * DAY, 2**31)

    by_name = {o.name: o for o in outcomes}
    events = by_name[js_names.stream("TTP_EVENTS")]
    assert events.action == "updated"
    assert events.changed_fields == ("max_age", "max_bytes")
    # Dead letters follow the events' age by default.
    assert by_name[js_names.stream("TTP_DEADLETTER")].changed_fields == ("max_age",)
    assert by_name[js_names.stream("TTP_RULES")].action == "unchanged"
    assert by_name[js_names.stream("TTP_TAGS")].action == "unchanged"
    info = await js.stream_info(js_names.stream("TTP_EVENTS"))
    assert (info.config.max_age, info.config.max_bytes) == (3 * DAY, 2**31)
    assert info.state.messages == 1


async def test_storage_change_is_refused_without_losing_data(
    nc: Client, js_names: JetStreamNames, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    name = js_names.stream("KEEP")
    subject = js_names.subject("keep.one")
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.MEMORY))
    await js.publish(subject, b"precious")

    desired = StreamConfig(
        name=name, subjects=[subject], storage=StorageType.FILE, max_msgs_per_subject=5
    )
    outcome = await ensure_stream(js, desired)

    assert outcome.action == "updated"
    assert outcome.changed_fields == ("max_msgs_per_subject",)
    info = await js.stream_info(name)
    assert info.config.storage == StorageType.MEMORY
    assert info.config.max_msgs_per_subject == 5
    assert info.state.messages == 1
    assert any("storage" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


async def test_publish_js_dedups_by_msg_id_and_carries_trace_headers(
    nc: Client, js_names: JetStreamNames, spans: InMemorySpanExporter
) -> None:
    js = nc.jetstream()
    stream = js_names.stream("TTP_RULES")
    await ensure_stream(
        js,
        stream_configs(1, WEEK, -1, DAY, stream_name=js_names.stream)[0].evolve(
            subjects=[js_names.subject("ttp.rule.reloaded.*")]
        ),
    )
    subject = js_names.subject(subjects.rule_reloaded("R0010"))
    template = "ttp.rule.reloaded.{rule_id}"
    caller_headers = {"Content-Type": "application/cloudevents+json"}

    with get_tracer().start_as_current_span("outbox relay") as relay:
        first = await publish_js(
            js, subject, b"rev-1", "R0010:1", caller_headers, name_template=template
        )
        again = await publish_js(js, subject, b"rev-1 replayed", "R0010:1", caller_headers)
        second = await publish_js(
            js, subject, b"rev-2", "R0010:2", caller_headers, expected_stream=stream
        )

    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert second.seq == first.seq + 1
    assert caller_headers == {"Content-Type": "application/cloudevents+json"}

    stored = await js.get_last_msg(stream, subject)
    assert stored.data == b"rev-2"
    assert stored.headers is not None
    assert stored.headers[MSG_ID_HEADER] == "R0010:2"
    assert stored.headers["traceparent"].startswith("00-")
    carried = trace.get_current_span(extract_context(stored.headers)).get_span_context()
    assert carried.trace_id == relay.get_span_context().trace_id

    assert stored.headers["Content-Type"] == "application/cloudevents+json"
    # TTP_RULES keeps only the last message of each subject.
    assert (await js.stream_info(stream)).state.messages == 1

    publish_spans = [s for s in spans.get_finished_spans() if s.name.startswith("publish ")]
    assert [s.name for s in publish_spans] == [f"publish {template}"] + [f"publish {subject}"] * 2
    assert all(s.parent is not None for s in publish_spans)
    attributes = [dict(s.attributes or {}) for s in publish_spans]
    assert [a["nats.duplicate"] for a in attributes] == [False, True, False]
    assert attributes[0]["messaging.destination.name"] == subject
    assert attributes[0]["messaging.message.id"] == "R0010:1"
    # The stored traceparent names the PRODUCER span of that publish as the parent.
    assert carried.span_id == publish_spans[2].context.span_id


async def test_publish_js_requires_a_msg_id(nc: Client) -> None:
    with pytest.raises(ValueError, match="msg_id"):
        await publish_js(nc.jetstream(), "ttp.event.command", b"{}", "")


async def test_connect_callbacks_and_drain(nats_url: str) -> None:
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    client = await connect(
        ServiceSettings(nats_url=nats_url), "ttp-test-drain", closed_cb=on_closed
    )
    assert client.is_connected
    received: list[bytes] = []

    async def handler(msg: object) -> None:
        await asyncio.sleep(0.05)
        received.append(getattr(msg, "data", b""))

    await client.subscribe("ttp.test.drain", cb=handler)
    for number in range(3):
        await client.publish("ttp.test.drain", str(number).encode())
    await client.flush()

    await drain(client, timeout_s=5)

    assert client.is_closed
    assert closed.is_set()
    # Draining let the subscription finish what it had received.
    assert received == [b"0", b"1", b"2"]
    await drain(client)  # already closed: no-op


async def test_initial_connect_can_be_bounded() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ServiceSettings(nats_url=f"nats://127.0.0.1:{port}")
    with pytest.raises(TimeoutError):
        await connect(settings, "ttp-test-nobody", initial_timeout_s=1.0)


async def test_client_reconnects_after_a_server_restart(private_nats: NatsServer) -> None:
    disconnected, reconnected = asyncio.Event(), asyncio.Event()

    async def on_disconnected() -> None:
        disconnected.set()

    async def on_reconnected() -> None:
        reconnected.set()

    settings = ServiceSettings(nats_url=private_nats.url, nats_ping_interval_s=1)
    client = await connect(
        settings,
        "ttp-test-reconnect",
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    try:
        private_nats.kill()
        await asyncio.wait_for(disconnected.wait(), timeout=10)
        await asyncio.sleep(1)  # a few failed attempts while the server is away
        private_nats.restart()
        await asyncio.wait_for(reconnected.wait(), timeout=30)
        assert client.is_connected
        response = await client.request("$JS.API.INFO", b"", timeout=5)
        assert b"memory" in response.data
    finally:
        await drain(client)
