"""ttp_runtime.tracing: W3C propagation through NATS headers, messaging spans, SDK setup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ttp_core.contract import subjects
from ttp_runtime.tracing import (
    configure_tracing,
    current_trace_ids,
    extract_context,
    get_tracer,
    inject_headers,
    span_exporters_from_env,
    start_consumer_span,
    start_producer_span,
    subject_template,
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test, recorded in memory (the global provider is process-wide)."""
    provider = configure_tracing("ttp-test")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    # The provider cannot drop a processor; a shut-down exporter just stops recording.
    exporter.shutdown()


def test_inject_then_extract_keeps_the_trace_id(spans: InMemorySpanExporter) -> None:
    with get_tracer().start_as_current_span("outer") as span:
        headers = inject_headers({"Nats-Msg-Id": "abc"})
    context = extract_context(headers)

    parent = trace.get_current_span(context).get_span_context()
    assert headers["Nats-Msg-Id"] == "abc"
    assert headers["traceparent"].startswith("00-")
    assert parent.is_remote
    assert parent.trace_id == span.get_span_context().trace_id
    assert parent.span_id == span.get_span_context().span_id


def test_inject_does_not_mutate_its_argument(spans: InMemorySpanExporter) -> None:
    constant = {"Content-Type": "application/cloudevents+json"}
    with get_tracer().start_as_current_span("outer"):
        headers = inject_headers(constant)
    assert "traceparent" in headers
    assert constant == {"Content-Type": "application/cloudevents+json"}


def test_inject_outside_a_span_adds_nothing() -> None:
    assert inject_headers(None) == {}
    assert inject_headers({"a": "b"}) == {"a": "b"}


def test_extract_without_headers_gives_a_root_context(spans: InMemorySpanExporter) -> None:
    with get_tracer().start_as_current_span("unrelated current span"):
        context = extract_context(None)
        assert not trace.get_current_span(context).get_span_context().is_valid
        with start_consumer_span("ttp.event.{source_kind}", {}) as consumer:
            pass
    finished = {s.name: s for s in spans.get_finished_spans()}
    # A message without trace headers starts its own trace, not a child of the loop's span.
    assert finished["process ttp.event.{source_kind}"].parent is None
    assert consumer.get_span_context().trace_id != (
        finished["unrelated current span"].context.trace_id
    )


def test_extract_reads_header_names_case_insensitively(spans: InMemorySpanExporter) -> None:
    with get_tracer().start_as_current_span("outer") as span:
        headers = inject_headers(None)
    shouted = {"Traceparent": headers["traceparent"]}
    parent = trace.get_current_span(extract_context(shouted)).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id


def test_consumer_span_is_a_child_of_the_producer_span(spans: InMemorySpanExporter) -> None:
    subject = subjects.rule_reloaded("R0010")
    template = subject_template(subject)
    with start_producer_span(template, subject) as producer:
        headers = inject_headers({"Nats-Msg-Id": "R0010-rev-7"})

    # The consumer runs elsewhere: nothing of the producer is current any more.
    assert current_trace_ids() is None
    with start_consumer_span(template, headers, {"ttp.rule_id": "R0010"}, subject=subject) as c:
        assert current_trace_ids() == (
            format(c.get_span_context().trace_id, "032x"),
            format(c.get_span_context().span_id, "016x"),
        )

    finished = {s.name: s for s in spans.get_finished_spans()}
    sent = finished["publish ttp.rule.reloaded.{rule_id}"]
    received = finished["process ttp.rule.reloaded.{rule_id}"]
    assert sent.kind is SpanKind.PRODUCER
    assert received.kind is SpanKind.CONSUMER
    assert received.context.trace_id == producer.get_span_context().trace_id
    assert received.parent is not None
    assert received.parent.span_id == producer.get_span_context().span_id
    assert sent.attributes is not None
    assert received.attributes is not None
    assert sent.attributes["messaging.system"] == "nats"
    assert sent.attributes["messaging.destination.name"] == "ttp.rule.reloaded.R0010"
    assert sent.attributes["messaging.destination.template"] == "ttp.rule.reloaded.{rule_id}"
    assert sent.attributes["messaging.operation.type"] == "send"
    assert received.attributes["messaging.destination.name"] == "ttp.rule.reloaded.R0010"
    assert received.attributes["messaging.operation.type"] == "process"
    assert received.attributes["messaging.message.id"] == "R0010-rev-7"
    assert received.attributes["ttp.rule_id"] == "R0010"


def test_span_records_and_reraises_exceptions(spans: InMemorySpanExporter) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        start_consumer_span("ttp.event.{source_kind}", None, subject="ttp.event.command"),
    ):
        raise RuntimeError("boom")
    (span,) = spans.get_finished_spans()
    assert not span.status.is_ok
    assert [event.name for event in span.events] == ["exception"]


@pytest.mark.parametrize(
    ("subject", "template"),
    [
        (subjects.rule_reloaded("R0010"), "ttp.rule.reloaded.{rule_id}"),
        (subjects.rule_state("R0010"), "ttp.rule.state.{rule_id}"),
        (subjects.rule_rejected("bad-file"), "ttp.rule.rejected.{rule_id}"),
        (subjects.event("command"), "ttp.event.{source_kind}"),
        (subjects.tagged("http_request"), "ttp.tagged.{source_kind}"),
        (subjects.deadletter("???"), "ttp.deadletter.{source_kind}"),
        (subjects.worker_status("w-1"), "ttp.worker.status.{worker_id}"),
        (subjects.RULESET_REVISION, "ttp.ruleset.revision"),
        (subjects.control("state.set"), "ttp.ctl.state.set"),
        ("foreign.subject", "foreign.subject"),
    ],
)
def test_subject_template(subject: str, template: str) -> None:
    assert subject_template(subject) == template


def test_configure_tracing_is_idempotent() -> None:
    first = configure_tracing("ttp-test")
    assert isinstance(first, TracerProvider)
    assert configure_tracing("another-name") is first
    assert trace.get_tracer_provider() is first


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_SERVICE_NAME": "x", "OTEL_RESOURCE_ATTRIBUTES": "a=b"},
    ],
)
def test_no_exporter_unless_the_environment_asks(environ: dict[str, str]) -> None:
    assert span_exporters_from_env(environ) == []


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
    ],
)
def test_otlp_exporter_when_asked(environ: dict[str, str]) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Constructing the exporter opens no connection; nothing is exported in this test.
    (exporter,) = span_exporters_from_env(environ)
    is_otlp = isinstance(exporter, OTLPSpanExporter)
    exporter.shutdown()
    assert is_otlp


def test_console_and_unknown_exporters() -> None:
    exporters = span_exporters_from_env({"OTEL_TRACES_EXPORTER": "console, zipkin"})
    assert [type(e) for e in exporters] == [ConsoleSpanExporter]
