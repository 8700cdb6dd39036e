"""Process-wide logging: JSON lines (or a console format for humans) on stdout.

JSON logs on stdout with trace ids. Code everywhere logs through the standard
library (``logging.getLogger(__name__)``) and passes structured fields with ``extra=``::

    log.info("rule swapped", extra={"rule_id": "R0010", "revision": 42})

which :func:`configure_logging` (called once by each entry point) renders as::

    {"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "ttp_worker.rules",
     "message": "rule swapped", "rule_id": "R0010", "revision": 42,
     "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}

``trace_id``/``span_id`` are those of the OpenTelemetry span current when the record was made.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

from ttp_runtime.tracing import current_trace_ids

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "LogFormat",
    "LogLevel",
    "TraceContextFilter",
    "configure_logging",
]

LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | int

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "trace_id", "span_id"}
)
_CORE_KEYS: Final = ("ts", "level", "logger", "message")
# Marks the handler installed here, so a second configure_logging() replaces it instead of
# logging every line twice, while handlers installed by others (pytest's) stay untouched.
_HANDLER_MARK: Final = "_ttp_runtime_handler"


class TraceContextFilter(logging.Filter):
    """Stamps each record with the current span's ``trace_id`` and ``span_id``.

    Runs when the record is handled, in the task that logged, which is where the span is
    current; a formatter could run later (after a queue) in another context.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            ids = current_trace_ids()
            record.trace_id, record.span_id = ids if ids is not None else (None, None)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


def _json_default(value: object) -> object:
    # Logging must never raise because of an odd `extra` value: fall back to text.
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, extra fields, trace ids.

    Extra fields named like a core key are written as ``extra.<key>`` rather than overwriting
    it. Exceptions go in ``exc_info`` as formatted text (one string, so the line stays one
    line).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry[f"extra.{key}" if key in _CORE_KEYS else key] = value
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", None)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(entry, default=_json_default, ensure_ascii=False)
        except (TypeError, ValueError):  # e.g. circular structures in an extra
            safe = {
                key: value if key in _CORE_KEYS else repr(value) for key, value in entry.items()
            }
            return json.dumps(safe, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """A readable single line for a terminal: time, level, logger, message, ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).astimezone()
        parts = [
            moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}",
            f"{record.levelname:<7}",
            f"{record.name}:",
            record.getMessage(),
        ]
        parts.extend(f"{key}={value!r}" for key, value in _extras(record).items())
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            # The first 8 hex digits are enough to follow one trace by eye.
            parts.append(f"trace={trace_id[:8]}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure_logging(
    format: LogFormat = "json",
    level: LogLevel = "INFO",
    *,
    stream: TextIO | None = None,
    levels: Mapping[str, LogLevel] | None = None,
) -> logging.Handler:
    """Route the standard library's logging to stdout in ``format``, at ``level``.

    Installs one handler on the root logger (replacing the one an earlier call installed)
    and returns it. ``stream`` defaults to ``sys.stdout`` as it is at call time; ``levels``
    sets per-logger levels (e.g. ``{"nats": "WARNING"}``). Python warnings are routed into
    logging too, so they come out in the same format.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter() if format == "json" else ConsoleFormatter())
    handler.addFilter(TraceContextFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
            existing.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name, logger_level in (levels or {}).items():
        logging.getLogger(name).setLevel(logger_level)
    logging.captureWarnings(True)
    return handler
