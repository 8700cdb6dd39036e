"""Honeypot events in, tag and dead-letter messages out: the worker's pure event logic.

- parsing and checking an event is :func:`ttp_core.contract.events.parse_event`, shared
  with `ttpctl events publish` and the `HoneypotEvent` model (re-exported here);
- :func:`tagged_message` builds the `ttp.tagged.<kind>` message of an event's tags, with a
  `Nats-Msg-Id` derived from the event's identity only (:func:`tagged_msg_id`), so a
  redelivered event evaluated again (even under changed rules) yields the same id and
  TTP_TAGS drops the copy;
- :func:`deadletter_message` builds the `ttp.deadletter.<kind>` message.

Both are strict JSON in valid UTF-8 whatever the event held: a value JSON cannot carry
raises here (and the event is dead-lettered by the consumer) rather than being published.
The tag message is built as msgspec structs in the contract's field order (not through the
pydantic models) and encoded by msgspec because it runs once per event on the hot path; a
unit test checks it decodes as `EventTagged`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import msgspec

from ttp_core.contract import subjects
from ttp_core.contract.events import (
    DeadLetterReason,
    MalformedEventError,
    clean_text,
    parse_event,
)
from ttp_core.contract.payloads import (
    SPECVERSION,
    CloudEvent,
    DeadLetter,
    EventTagged,
    encode,
    envelope,
    schema_id,
)
from ttp_core.engine.tags import Tag

TAGGED_TYPE: Final = EventTagged.event_type
TAGGED_SCHEMA: Final = schema_id(TAGGED_TYPE)
# `str` for what JSON has no type for, as `json.dumps(default=str)` did; the event's values
# are JSON already, so only an engine defect could bring one.
_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)
# Values msgspec writes exactly as the strict encoder does (floats: when finite).
_FLAT: Final = frozenset({str, int, bool, type(None)})
# The envelope's attributes in the order the contract lists them (and the dict path writes).
_ENVELOPE_ORDER: Final = tuple(name for name in CloudEvent.model_fields if name != "data")

__all__ = [
    "DeadLetterReason",
    "MalformedEventError",
    "Outgoing",
    "cloudevents_time",
    "deadletter_message",
    "parse_event",
    "tagged_event_id",
    "tagged_message",
    "tagged_msg_id",
]


def tagged_msg_id(source_kind: str, source_id: str) -> str:
    """`Nats-Msg-Id` of an event's tag message: a hash of the event's identity only.

    Not of its tags: an event whose ack was lost (a worker or NATS killed after the tag was
    stored) is evaluated again on redelivery, and if rules changed meanwhile its tags differ.
    Keyed by the event, that second message is still dropped by TTP_TAGS as a duplicate, so
    each event has one tag message, the one its first evaluation stored.
    """
    name = f"{source_kind}|{source_id}".encode()
    return f"ttp-tag-{hashlib.sha256(name).hexdigest()[:40]}"


def tagged_event_id(tags: Sequence[Tag]) -> str:
    """CloudEvents `id` of a tag message: a hash of its sorted tag uuids (order-independent),
    so two messages with different tags never share an id."""
    # Most events have one tag: nothing to sort or join then.
    text = tags[0].uuid if len(tags) == 1 else "\n".join(sorted([tag.uuid for tag in tags]))
    return f"ttp-tag-{hashlib.sha256(text.encode('ascii')).hexdigest()[:40]}"


def cloudevents_time(moment: datetime | None = None) -> str:
    """RFC 3339 UTC text as the CloudEvents `time` attribute."""
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


class Outgoing(NamedTuple):
    """One message to publish to JetStream."""

    subject: str
    payload: bytes
    msg_id: str


class _TaggedData(msgspec.Struct, gc=False):
    """`EventTagged`'s data as msgspec writes it: the contract's fields, in its order."""

    source_kind: str
    source_id: str
    attacker_uuid: str | None
    identity_uuid: str | None
    session_id: str | None
    decky_id: str | None
    revision: int
    tags: Sequence[Tag]


class _TaggedEnvelope(msgspec.Struct, kw_only=True, gc=False):
    """The CloudEvents envelope of a tag message, its fields in the contract's order. A
    struct, not a dict: msgspec writes its field names from text encoded once, which spares
    building a dict and its keys per event."""

    specversion: str = SPECVERSION
    id: str
    source: str
    type: str = TAGGED_TYPE
    time: str
    subject: str
    datacontenttype: str = "application/json"
    dataschema: str = TAGGED_SCHEMA
    data: _TaggedData


def tagged_message(
    event: dict[str, Any],
    tags: Sequence[Tag],
    revision: int,
    source: str,
    time: str,
) -> Outgoing:
    """The `ttp.tagged.<kind>` message of one event's tags (a CloudEvents envelope)."""
    kind: str = event["source_kind"]
    source_id: str = event["source_id"]
    get = event.get
    data = _TaggedData(
        kind,
        source_id,
        get("attacker_uuid"),
        get("identity_uuid"),
        get("session_id"),
        get("decky_id"),
        revision,
        tags,
    )
    body = _TaggedEnvelope(
        id=tagged_event_id(tags), source=source, time=time, subject=source_id, data=data
    )
    # Both raise on a lone surrogate (UnicodeEncodeError).
    payload = _ENCODER.encode(body) if _plain_json(tags) else _strict_json(body)
    return Outgoing(_tagged_subject(kind), payload, tagged_msg_id(kind, source_id))


# Kinds are few; checking the token again for every event cost more than building the message.
_tagged_subject: Final = functools.lru_cache(maxsize=1024)(subjects.tagged)


def _plain_json(tags: Sequence[Tag]) -> bool:
    """Whether msgspec writes these tags as the strict encoder would: msgspec writes NaN and
    Infinity as null, where strict JSON must refuse them, and writes some types JSON lacks
    (tuples, dates, ...) in its own way rather than as `str` does. Evidence holds the
    event's field values, so this is nearly always true at once."""
    for tag in tags:
        if not math.isfinite(tag.confidence):
            return False
        for value in tag.evidence.values():
            kind = value.__class__
            if kind not in _FLAT and not _plain_value(value):
                return False
    return True


def _plain_value(root: Any) -> bool:
    """Whether `root` is JSON data only (text keys, finite floats), walked without recursion."""
    stack = [root]
    while stack:
        value = stack.pop()
        kind = value.__class__
        if kind is dict:
            for key, item in value.items():
                if key.__class__ is not str:
                    return False
                stack.append(item)
        elif kind is list:
            stack.extend(value)
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind not in _FLAT:
            return False
    return True


def _strict_json(body: _TaggedEnvelope) -> bytes:
    """`body` as JSON, raising on NaN, Infinity or a lone surrogate instead of writing them."""
    data = msgspec.structs.asdict(body.data)
    data["tags"] = [tag.as_dict() for tag in body.data.tags]
    envelope = {name: getattr(body, name) for name in _ENVELOPE_ORDER}
    text = json.dumps(
        {**envelope, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=str,
    )
    return text.encode("utf-8")


def deadletter_message(
    raw: bytes,
    error: MalformedEventError,
    *,
    worker_id: str,
    source: str,
    text_cap: int,
    msg_id: str,
    deliveries: int | None = None,
) -> Outgoing:
    """The `ttp.deadletter.<kind>` message of a rejected event: its text (capped) and error.

    Every text is valid UTF-8: `received` decodes invalid bytes as U+FFFD (and so holds no
    surrogate), and the error text had its lone surrogates replaced.
    """
    kind = error.deadletter_kind
    data = DeadLetter(
        source_kind=kind,
        received=raw[:text_cap].decode("utf-8", "replace"),
        truncated=len(raw) > text_cap,
        error=clean_text(str(error)),
        worker_id=worker_id,
        reason=error.reason.value,
        deliveries=deliveries,
    )
    event = envelope(data, source=source, subject=kind, event_id=msg_id)
    return Outgoing(subjects.deadletter(kind), encode(event), msg_id)
