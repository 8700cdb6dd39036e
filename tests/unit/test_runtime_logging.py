"""ttp_runtime.logging: JSON lines with trace ids, a console format, idempotent setup."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ttp_runtime.logging import configure_logging
from ttp_runtime.tracing import configure_tracing, get_tracer

LOGGER = "ttp_test.runtime_logging"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """Put the root logger back as pytest had it: other tests must not log through ours."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_root_logger")
def test_json_line_has_core_fields_and_extras() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)

    logging.getLogger(LOGGER).info(
        "rule %s swapped",
        "R0010",
        extra={"rule_id": "R0010", "revision": 42, "path": Path("/rules/a.yaml"), "level": "x"},
    )
    logging.getLogger(LOGGER).debug("below the level")

    (entry,) = lines(stream)
    assert entry["message"] == "rule R0010 swapped"
    assert entry["level"] == "INFO"
    assert entry["logger"] == LOGGER
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    moment = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 60
    assert entry["rule_id"] == "R0010"
    assert entry["revision"] == 42
    assert entry["path"] == "/rules/a.yaml"
    # An extra cannot overwrite a core key.
    assert entry["extra.level"] == "x"
    # Outside a span there are no trace ids.
    assert "trace_id" not in entry
    assert "span_id" not in entry


@pytest.mark.usefixtures("restore_root_logger")
def test_json_line_inside_a_span_carries_its_trace_ids() -> None:
    configure_tracing("ttp-test")
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)

    with get_tracer().start_as_current_span("tagging") as span:
        logging.getLogger(LOGGER).warning("inside")
    logging.getLogger(LOGGER).warning("outside")

    inside, outside = lines(stream)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])
    assert "trace_id" not in outside


@pytest.mark.usefixtures("restore_root_logger")
def test_json_exception_stays_on_one_line() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    try:
        raise ValueError("bad rule")
    except ValueError:
        logging.getLogger(LOGGER).exception("failed", extra={"odd": object()})

    assert len(stream.getvalue().splitlines()) == 1
    (entry,) = lines(stream)
    assert "ValueError: bad rule" in entry["exc_info"]
    assert entry["odd"].startswith("<object object")


@pytest.mark.usefixtures("restore_root_logger")
def test_console_format_is_for_humans() -> None:
    configure_tracing("ttp-test")
    stream = io.StringIO()
    configure_logging("console", "DEBUG", stream=stream)

    with get_tracer().start_as_current_span("x") as span:
        logging.getLogger(LOGGER).debug("hello %s", "world", extra={"rule_id": "R1"})

    (line,) = stream.getvalue().splitlines()
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3} DEBUG +ttp_test\.runtime_logging: hello world", line)
    assert "rule_id='R1'" in line
    assert f"trace={trace_id[:8]}" in line


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_twice_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()

    configure_logging("json", "INFO", stream=first)
    configure_logging("json", "WARNING", stream=second, levels={"ttp_test.noisy": "ERROR"})
    logging.getLogger(LOGGER).warning("once")
    logging.getLogger("ttp_test.noisy").warning("silenced")

    assert first.getvalue() == ""
    assert [entry["message"] for entry in lines(second)] == ["once"]
    assert foreign in root.handlers
    root.removeHandler(foreign)
    logging.getLogger("ttp_test.noisy").setLevel(logging.NOTSET)


@pytest.mark.usefixtures("restore_root_logger")
def test_default_stream_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    logging.getLogger(LOGGER).info("to stdout")
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["message"] == "to stdout"
