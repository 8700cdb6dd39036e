"""Honeypot events in, tag and dead-letter messages out: the worker's pure event logic.

- :func:`parse_event` reads one `ttp.event.<kind>` message (a CloudEvents envelope or the bare
  event object) and checks it, or raises :class:`MalformedEventError` naming a
  :class:`DeadLetterReason`;
- :func:`tagged_message` builds the `ttp.tagged.<kind>` message of an event's tags, with a
  `Nats-Msg-Id` derived from the tag uuids only (:func:`tagged_msg_id`), so a redelivered
  event evaluated again yields the same id and TTP_TAGS drops the copy;
- :func:`deadletter_message` builds the `ttp.deadletter.<kind>` message.

The tag message is built as plain data (not through the pydantic models) because it runs
once per event on the hot path; a unit test checks it decodes as `EventTagged`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    SPECVERSION,
    DeadLetter,
    EventTagged,
    encode,
    envelope,
    schema_id,
)
from ttp_core.engine.tags import Tag

TAGGED_TYPE: Final = EventTagged.event_type
TAGGED_SCHEMA: Final = schema_id(TAGGED_TYPE)
_ID_FIELDS: Final = ("attacker_uuid", "identity_uuid", "session_id", "decky_id")
_MAX_SOURCE_ID: Final = 256


class DeadLetterReason(StrEnum):
    OVERSIZE = "oversize"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    BAD_ENVELOPE = "bad_envelope"
    MISSING_SOURCE_KIND = "missing_source_kind"
    INVALID_SOURCE_KIND = "invalid_source_kind"
    INVALID_FIELD = "invalid_field"


class MalformedEventError(ValueError):
    """An event the worker cannot tag; it goes to the dead-letter stream."""

    def __init__(self, reason: DeadLetterReason, detail: str, source_kind: str | None = None):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.source_kind = source_kind

    @property
    def deadletter_kind(self) -> str:
        """The dead-letter subject's kind: the event's own when readable, else `unknown`."""
        kind = self.source_kind
        return kind if kind is not None and subjects.is_token(kind) else subjects.UNKNOWN_KIND


def parse_event(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The event object of one message (unwrapped from its envelope), checked.

    Returns a dict with `source_kind` (one subject token), `source_id` (text, 1-256), the
    optional ids (text or null) and `payload` (an object). Raises :class:`MalformedEventError`.
    """
    if len(raw) > max_bytes:
        raise MalformedEventError(
            DeadLetterReason.OVERSIZE, f"{len(raw)} bytes is more than the {max_bytes} allowed"
        )
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedEventError(DeadLetterReason.BAD_JSON, str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise MalformedEventError(DeadLetterReason.NOT_OBJECT, f"a JSON {type(obj).__name__}")
    if "specversion" in obj:
        data = obj.get("data")
        if not isinstance(data, dict):
            raise MalformedEventError(
                DeadLetterReason.BAD_ENVELOPE, "a CloudEvents envelope without a data object"
            )
        obj = data
    return check_event(obj)


def check_event(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` if it is a well-formed honeypot event, else :class:`MalformedEventError`."""
    kind = obj.get("source_kind")
    if kind is None:
        raise MalformedEventError(DeadLetterReason.MISSING_SOURCE_KIND, "no source_kind")
    if not subjects.is_token(kind):
        raise MalformedEventError(
            DeadLetterReason.INVALID_SOURCE_KIND,
            f"source_kind {str(kind)[:80]!r} is not a token [A-Za-z0-9_-]{{1,64}}",
        )
    source_id = obj.get("source_id")
    if not isinstance(source_id, str) or not 0 < len(source_id) <= _MAX_SOURCE_ID:
        raise MalformedEventError(
            DeadLetterReason.INVALID_FIELD,
            f"source_id must be text of 1-{_MAX_SOURCE_ID} characters",
            kind,
        )
    if not isinstance(obj.get("payload"), dict):
        raise MalformedEventError(DeadLetterReason.INVALID_FIELD, "payload must be an object", kind)
    for name in _ID_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedEventError(
                DeadLetterReason.INVALID_FIELD, f"{name} must be text or null", kind
            )
    return obj


def tagged_msg_id(tags: Sequence[Tag]) -> str:
    """`Nats-Msg-Id` of a tag message: a hash of its sorted tag uuids (order-independent)."""
    digest = hashlib.sha256("\n".join(sorted(tag.uuid for tag in tags)).encode("ascii"))
    return f"ttp-tag-{digest.hexdigest()[:40]}"


def cloudevents_time(moment: datetime | None = None) -> str:
    """RFC 3339 UTC text as the CloudEvents `time` attribute."""
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish to JetStream."""

    subject: str
    payload: bytes
    msg_id: str


def tagged_message(
    event: dict[str, Any],
    tags: Sequence[Tag],
    revision: int,
    source: str,
    time: str,
) -> Outgoing:
    """The `ttp.tagged.<kind>` message of one event's tags (a CloudEvents envelope)."""
    kind: str = event["source_kind"]
    msg_id = tagged_msg_id(tags)
    data = {
        "source_kind": kind,
        "source_id": event["source_id"],
        "attacker_uuid": event.get("attacker_uuid"),
        "identity_uuid": event.get("identity_uuid"),
        "session_id": event.get("session_id"),
        "decky_id": event.get("decky_id"),
        "revision": revision,
        "tags": [tag.as_dict() for tag in tags],
    }
    body = {
        "specversion": SPECVERSION,
        "id": msg_id,
        "source": source,
        "type": TAGGED_TYPE,
        "time": time,
        "subject": event["source_id"],
        "datacontenttype": "application/json",
        "dataschema": TAGGED_SCHEMA,
        "data": data,
    }
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
    return Outgoing(subjects.tagged(kind), payload.encode("utf-8"), msg_id)


def deadletter_message(
    raw: bytes,
    error: MalformedEventError,
    *,
    worker_id: str,
    source: str,
    text_cap: int,
    msg_id: str,
) -> Outgoing:
    """The `ttp.deadletter.<kind>` message of a rejected event: its text (capped) and error."""
    kind = error.deadletter_kind
    data = DeadLetter(
        source_kind=kind,
        received=raw[:text_cap].decode("utf-8", "replace"),
        truncated=len(raw) > text_cap,
        error=str(error),
        worker_id=worker_id,
    )
    event = envelope(data, source=source, subject=kind, event_id=msg_id)
    return Outgoing(subjects.deadletter(kind), encode(event), msg_id)
