"""The one tracing helper of ttp-rulebus: OpenTelemetry setup and trace propagation over NATS.

W3C ``traceparent``/``tracestate`` travel in NATS headers, never in payloads (docs/contract.md).
Spans go from file event to DB commit to publish to each worker's swap, and from honeypot
event to tag, joined by those headers (docs/operations.md).

Every process calls :func:`configure_tracing` once at start. Producers wrap a publish in
:func:`start_producer_span` and put :func:`inject_headers` into the message headers (the
JetStream helper :func:`ttp_runtime.nats.publish_js` does both); consumers wrap the handling
of one message in :func:`start_consumer_span`, which continues the producer's trace.

Span names follow the OpenTelemetry messaging conventions, ``<operation> <destination>``, with
the subject *template* (``ttp.rule.reloaded.{rule_id}``) as destination: one name per kind of
message, not one per rule, so tracing back ends can group them. The concrete subject is kept
in the ``messaging.destination.name`` attribute.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final, Literal

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from ttp_core.contract import subjects

__all__ = [
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_DESTINATION_TEMPLATE",
    "MESSAGING_MESSAGE_BODY_SIZE",
    "MESSAGING_MESSAGE_ID",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_SYSTEM",
    "configure_tracing",
    "current_trace_ids",
    "extract_context",
    "get_tracer",
    "inject_headers",
    "shutdown_tracing",
    "span_exporters_from_env",
    "start_consumer_span",
    "start_producer_span",
    "subject_template",
]

_log = logging.getLogger(__name__)

# Messaging semantic-convention attribute names. The `opentelemetry-semantic-conventions`
# package only has them in an `_incubating` module whose layout changes between releases,
# so the few strings used here are spelled out.
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_DESTINATION_TEMPLATE: Final = "messaging.destination.template"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_MESSAGE_BODY_SIZE: Final = "messaging.message.body.size"

_NATS: Final = "nats"
_MSG_ID_HEADER: Final = "Nats-Msg-Id"
_INSTRUMENTATION_NAME: Final = "ttp_runtime"

# Only W3C trace context crosses the bus (see docs/contract.md), whatever OTEL_PROPAGATORS says for
# other protocols: third-party consumers rely on exactly these two headers.
_PROPAGATOR: Final = TraceContextTextMapPropagator()

# The placeholder of the last token of each templated subject family (see docs/contract.md).
_TEMPLATES: Final[Mapping[str, str]] = {
    subjects.RULE_RELOADED_PREFIX: "{rule_id}",
    subjects.RULE_STATE_PREFIX: "{rule_id}",
    subjects.RULE_REJECTED_PREFIX: "{rule_id}",
    subjects.EVENT_PREFIX: "{source_kind}",
    subjects.TAGGED_PREFIX: "{source_kind}",
    subjects.DEADLETTER_PREFIX: "{source_kind}",
    subjects.WORKER_STATUS_PREFIX: "{worker_id}",
}

Attributes = Mapping[str, AttributeValue]

# Resolved once: a tracer obtained before configure_tracing() is a proxy that switches to the
# SDK provider as soon as one is installed, so import order does not matter.
_TRACER: Final = trace.get_tracer(_INSTRUMENTATION_NAME)


# --------------------------------------------------------------------------------------------
# Header carriers
# --------------------------------------------------------------------------------------------


class _HeaderGetter(Getter[Mapping[str, str]]):
    """Reads trace headers case-insensitively.

    NATS headers keep the case the producer used, and third-party producers may well send
    ``Traceparent``; W3C says the names are case-insensitive.
    """

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            lowered = key.lower()
            value = next((v for k, v in carrier.items() if k.lower() == lowered), None)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


class _HeaderSetter(Setter[dict[str, str]]):
    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key] = value


_GETTER: Final = _HeaderGetter()
_SETTER: Final = _HeaderSetter()


def inject_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``headers`` with the current span's W3C trace context added.

    Adds ``traceparent`` (and ``tracestate`` when there is one). Without a recording span the
    headers come back unchanged, so calling this unconditionally is cheap and safe. The input
    is never mutated: callers often pass a shared dict of constant headers.
    """
    carrier = dict(headers) if headers else {}
    _PROPAGATOR.inject(carrier, setter=_SETTER)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The OpenTelemetry context carried by NATS message headers.

    With no (or an invalid) ``traceparent`` this is an empty context, so a span started in it
    is the root of a new trace rather than a child of whatever span happens to be current in
    the consumer's loop.
    """
    return _PROPAGATOR.extract(headers or {}, context=Context(), getter=_GETTER)


# --------------------------------------------------------------------------------------------
# Spans
# --------------------------------------------------------------------------------------------


def subject_template(subject: str) -> str:
    """The low-cardinality template of a ttp-rulebus subject, for span names.

    ``ttp.rule.reloaded.R0010`` -> ``ttp.rule.reloaded.{rule_id}``,
    ``ttp.event.command`` -> ``ttp.event.{source_kind}``. Subjects outside the templated
    families (``ttp.ruleset.revision``, control endpoints, foreign subjects) come back
    unchanged.
    """
    prefix, _, last = subject.rpartition(".")
    placeholder = _TEMPLATES.get(prefix)
    if placeholder is None or not last:
        return subject
    return f"{prefix}.{placeholder}"


def get_tracer() -> trace.Tracer:
    """The tracer of ttp-rulebus code (follows the global provider, even one set later)."""
    return _TRACER


def _messaging_attributes(
    operation_type: str,
    operation_name: str,
    name_template: str,
    subject: str | None,
    attributes: Attributes | None,
) -> dict[str, AttributeValue]:
    result: dict[str, AttributeValue] = {
        MESSAGING_SYSTEM: _NATS,
        MESSAGING_OPERATION_TYPE: operation_type,
        MESSAGING_OPERATION_NAME: operation_name,
        MESSAGING_DESTINATION_TEMPLATE: name_template,
        MESSAGING_DESTINATION_NAME: subject if subject is not None else name_template,
    }
    if attributes:
        result.update(attributes)
    return result


@contextmanager
def start_producer_span(
    name_template: str,
    subject: str | None = None,
    attributes: Attributes | None = None,
    *,
    operation: Literal["publish", "send", "request"] = "publish",
) -> Iterator[Span]:
    """A PRODUCER span around sending one message, current inside the ``with`` block.

    ``name_template`` is the subject template (see :func:`subject_template`) and names the
    span ``"<operation> <name_template>"``; ``subject`` is the concrete subject, recorded as
    ``messaging.destination.name``. Call :func:`inject_headers` inside the block so that the
    message carries this span as its parent. Exceptions are recorded and re-raised.
    """
    attrs = _messaging_attributes("send", operation, name_template, subject, attributes)
    with _TRACER.start_as_current_span(
        f"{operation} {name_template}", kind=SpanKind.PRODUCER, attributes=attrs
    ) as span:
        yield span


@contextmanager
def start_consumer_span(
    name_template: str,
    msg_headers: Mapping[str, str] | None,
    attributes: Attributes | None = None,
    *,
    subject: str | None = None,
    operation: Literal["process", "receive"] = "process",
) -> Iterator[Span]:
    """A CONSUMER span around handling one message, child of the producer's span.

    The parent comes from ``msg_headers`` (the NATS message headers); without trace headers
    the span starts a new trace. The span is named ``"<operation> <name_template>"``, carries
    the concrete ``subject`` as ``messaging.destination.name`` and the message's
    ``Nats-Msg-Id`` (when present) as ``messaging.message.id``. It is current inside the
    block, so logs, DB work and re-publishes made there join the same trace.
    """
    attrs = _messaging_attributes("process", operation, name_template, subject, attributes)
    if msg_headers:
        msg_id = msg_headers.get(_MSG_ID_HEADER)
        if msg_id is not None:
            attrs.setdefault(MESSAGING_MESSAGE_ID, msg_id)
    with _TRACER.start_as_current_span(
        f"{operation} {name_template}",
        context=extract_context(msg_headers),
        kind=SpanKind.CONSUMER,
        attributes=attrs,
    ) as span:
        yield span


def open_producer_span(name_template: str, subject: str) -> tuple[Span, dict[str, str]]:
    """A PRODUCER span for a publish whose ack is awaited later (pipelined publishing).

    The span is a child of the current span and is *not* made current; the caller ends it
    when the PubAck arrives. Returns the span and headers carrying its context, for the
    message, so consumers of it continue this trace.
    """
    attrs = _messaging_attributes("send", "publish", name_template, subject, None)
    span = _TRACER.start_span(f"publish {name_template}", kind=SpanKind.PRODUCER, attributes=attrs)
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span), setter=_SETTER)
    return span, carrier


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span as lowercase hex, or None outside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# --------------------------------------------------------------------------------------------
# SDK setup
# --------------------------------------------------------------------------------------------


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter | None:
    protocol = (
        _env(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _env(environ, "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).lower()
    if protocol == "grpc":
        try:
            # Imported by name: the gRPC exporter is optional and may be absent at type-check
            # time too.
            grpc_module = importlib.import_module(
                "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
            )
        except ImportError:
            # gRPC pulls in a large native wheel; only http/protobuf is a project dependency.
            _log.warning(
                "OTLP over gRPC requested but opentelemetry-exporter-otlp-proto-grpc is not"
                " installed; traces are not exported (set OTEL_EXPORTER_OTLP_PROTOCOL="
                "http/protobuf)"
            )
            return None
        exporter: SpanExporter = grpc_module.OTLPSpanExporter()
        return exporter
    if protocol not in {"http/protobuf", "http"}:
        _log.warning("unsupported OTLP protocol %r; traces are not exported", protocol)
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # The exporter reads endpoint, headers, timeout, certificates from the OTEL_* variables.
    return OTLPSpanExporter()


def span_exporters_from_env(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The span exporters the standard ``OTEL_*`` variables ask for; none by default.

    - ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``: none.
    - ``OTEL_TRACES_EXPORTER``: comma-separated ``otlp`` and/or ``console`` (to stderr, so it
      never mixes with the JSON logs on stdout).
    - unset: ``otlp`` if ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
      ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, else none. (The OpenTelemetry default
      would be ``otlp`` to localhost; a process here only talks to a collector it was told
      about, and never to the network in tests.)

    Constructing an exporter opens no connection; spans are sent later, in the background.
    """
    env = os.environ if environ is None else environ
    if _env(env, "OTEL_SDK_DISABLED").lower() == "true":
        return []
    requested = _env(env, "OTEL_TRACES_EXPORTER").lower()
    if requested:
        names = [name.strip() for name in requested.split(",") if name.strip()]
    elif _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or _env(
        env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        names = ["otlp"]
    else:
        names = []
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            return []
        if name == "otlp":
            exporter = _otlp_exporter(env)
            if exporter is not None:
                exporters.append(exporter)
        elif name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stderr))
        else:
            _log.warning("unknown OTEL_TRACES_EXPORTER entry %r ignored", name)
    return exporters


def _resource(service_name: str, resource_attributes: Mapping[str, str] | None) -> Resource:
    # Resource.create() reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; an operator's
    # OTEL_SERVICE_NAME wins over the built-in name, as OpenTelemetry users expect.
    detected = Resource.create(dict(resource_attributes or {}))
    name = detected.attributes.get(SERVICE_NAME)
    if not isinstance(name, str) or name.startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: service_name}))
    return detected


def configure_tracing(
    service_name: str,
    *,
    resource_attributes: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TracerProvider:
    """Install the OpenTelemetry SDK tracer provider for this process and return it.

    Spans are always created (so trace ids reach the logs and the NATS headers, and a trace
    started by a producer continues through this process), but exported only when the
    standard ``OTEL_*`` variables ask for it (:func:`span_exporters_from_env`). Sampling
    follows ``OTEL_TRACES_SAMPLER`` (default: parent-based, always on).

    OpenTelemetry allows one global provider per process: if an SDK provider is already
    installed (an earlier call, or ``opentelemetry-instrument``), it is returned unchanged.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=_resource(service_name, resource_attributes))
    exporters = span_exporters_from_env(environ)
    for exporter in exporters:
        # Batching keeps exporting off the hot path; a slow collector only drops spans.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _log.debug(
        "tracing configured",
        extra={"service": service_name, "exporters": [type(e).__name__ for e in exporters]},
    )
    return provider


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Flush pending spans and stop the exporters (at shutdown, within ``timeout_s``)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=int(timeout_s * 1000))
        provider.shutdown()
