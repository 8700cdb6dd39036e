"""One trace follows a rule change from the master's file sync into a worker's apply.

The real master and one real worker run in-process against private NATS and PostgreSQL and
share this process's OpenTelemetry SDK provider, to which the test adds an in-memory
exporter. A rule file is changed; the spans then show one trace:

    rules.sync (master: the watcher batch, DB commit writes the trace into the outbox row)
      -> [process] relay ttp.rule.reloaded.{rule_id} (master: the outbox relay continues it)
        -> publish ttp.rule.reloaded.{rule_id} (PRODUCER: traceparent goes in NATS headers)
          -> [process] apply ttp.rule.reloaded.{rule_id} (CONSUMER, worker, from the headers)

and no span name carries a concrete rule id (names use subject templates).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from harness.master import install, master_settings, running_master, with_version
from harness.tracing import collected_spans
from harness.worker import running_worker
from ttp_runtime.tracing import MESSAGING_DESTINATION_NAME

TIMEOUT_S = 30.0
RULE_IDS = ["R0010", "R0014", "R0078"]
CONCRETE_RULE_ID = re.compile(r"R\d{4}")
TEMPLATE = "ttp.rule.reloaded.{rule_id}"


def is_named(span: ReadableSpan, operation: str, template: str) -> bool:
    """``<operation> <template>``; the code currently prefixes consumer spans with ``process``."""
    words = span.name.split()
    return words[-1] == template and operation in words[:-1]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's SDK provider (the one configure_tracing keeps)."""
    with collected_spans() as exporter:
        yield exporter


async def wait_for_span(
    exporter: InMemorySpanExporter, predicate: Callable[[ReadableSpan], bool], what: str
) -> ReadableSpan:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        found = [s for s in exporter.get_finished_spans() if predicate(s)]
        if found:
            return found[-1]
        if asyncio.get_running_loop().time() > deadline:
            names = sorted({s.name for s in exporter.get_finished_spans()})
            raise AssertionError(f"timed out waiting for {what}; spans seen: {names}")
        await asyncio.sleep(0.05)


def by_id(exporter: InMemorySpanExporter) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in exporter.get_finished_spans() if s.context}


def ancestors(span: ReadableSpan, index: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    """The span's parents up to the root, nearest first (all must have been exported)."""
    chain: list[ReadableSpan] = []
    current = span
    while current.parent is not None:
        parent = index.get(current.parent.span_id)
        assert parent is not None, f"parent of {current.name!r} was not exported"
        assert parent.context is not None and current.context is not None
        assert parent.context.trace_id == current.context.trace_id
        chain.append(parent)
        current = parent
    return chain


async def test_one_trace_from_rule_file_sync_to_worker_apply(
    spans: InMemorySpanExporter, private_nats: Any, database_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    placed = install(rules, RULE_IDS)
    subject = "ttp.rule.reloaded.R0014"

    async with (
        running_master(master_settings(private_nats.url, database_url, rules)),
        running_worker(private_nats.url, "tw1"),
    ):
        spans.clear()
        placed["R0014"].write_text(with_version(placed["R0014"].read_text(), 9))
        apply = await wait_for_span(
            spans,
            lambda s: (
                is_named(s, "apply", TEMPLATE)
                and (s.attributes or {}).get(MESSAGING_DESTINATION_NAME) == subject
            ),
            "the worker's apply span of the R0014 change",
        )

    chain = ancestors(apply, by_id(spans))
    names = [s.name for s in chain]
    assert len(chain) == 3, names
    publish, relay, sync = chain
    assert publish.name == f"publish {TEMPLATE}", names
    assert is_named(relay, "relay", TEMPLATE), names
    assert sync.name == "rules.sync", names
    assert apply.kind == SpanKind.CONSUMER and publish.kind == SpanKind.PRODUCER
    for span in (apply, publish, relay):
        assert (span.attributes or {}).get(MESSAGING_DESTINATION_NAME) == subject
        assert (span.attributes or {}).get("messaging.system") == "nats"
    assert sync.parent is None  # the file save starts the trace
    # The worker's apply span is in the same trace as the master's sync: one trace id.
    assert apply.context is not None and sync.context is not None
    assert apply.context.trace_id == sync.context.trace_id

    named = [s.name for s in spans.get_finished_spans()]
    assert not [n for n in named if CONCRETE_RULE_ID.search(n)], named


async def test_one_trace_from_an_event_through_evaluate_to_its_tag_publish(
    spans: InMemorySpanExporter, private_nats: Any, database_url: str, tmp_path: Path
) -> None:
    """publish ttp.event.{source_kind} (a traced producer)
    -> process ttp.event.{source_kind} (CONSUMER, worker) -> evaluate ..., and
    -> publish ttp.tagged.{source_kind} (PRODUCER), whose context the tag message carries."""
    import json

    import nats

    from ttp_core.contract import subjects
    from ttp_runtime.nats import publish_js
    from ttp_runtime.tracing import get_tracer

    rules = tmp_path / "rules"
    rules.mkdir()
    install(rules, RULE_IDS)
    async with (
        running_master(master_settings(private_nats.url, database_url, rules)),
        running_worker(private_nats.url, "tw2"),
    ):
        nc = await nats.connect(private_nats.url)
        try:
            js = nc.jetstream()
            tagged = await nc.subscribe(subjects.tagged("command"))
            spans.clear()
            event = {
                "source_kind": "command",
                "source_id": "cmd_traced_1",
                "payload": {"command_text": "cat /etc/shadow"},
            }
            with get_tracer().start_as_current_span("honeypot session") as root:
                await publish_js(
                    js, subjects.event("command"), json.dumps(event).encode(), "evt-traced-1"
                )
            message = await tagged.next_msg(timeout=TIMEOUT_S)
        finally:
            await nc.close()
        publish_tag = await wait_for_span(
            spans,
            lambda s: s.name == "publish ttp.tagged.{source_kind}" and s.kind == SpanKind.PRODUCER,
            "the worker's tag publish span",
        )
    trace_id = root.get_span_context().trace_id
    chain = ancestors(publish_tag, by_id(spans))
    names = [s.name for s in chain]
    assert names[0] == "process ttp.event.{source_kind}", names
    assert chain[0].kind == SpanKind.CONSUMER
    assert "publish ttp.event.{source_kind}" in names, names
    assert names[-1] == "honeypot session", names
    assert publish_tag.context is not None and publish_tag.context.trace_id == trace_id
    evaluate = [
        s
        for s in spans.get_finished_spans()
        if s.name == "evaluate ttp.event.{source_kind}"
        and s.parent is not None
        and s.parent.span_id == chain[0].context.span_id  # type: ignore[union-attr]
    ]
    assert len(evaluate) == 1
    # The tag message carries the tag publish span's context: consumers continue the trace.
    assert message.headers is not None
    traceparent = message.headers["traceparent"]
    assert traceparent.split("-")[1] == f"{trace_id:032x}"
    assert traceparent.split("-")[2] == f"{publish_tag.context.span_id:016x}"
    assert not [n for n in (s.name for s in spans.get_finished_spans()) if "cmd_traced" in n]
