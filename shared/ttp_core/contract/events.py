"""What a valid honeypot event is: the one check shared by every reader of `ttp.event.<kind>`.

The worker (before tagging), `ttpctl events publish` (before publishing) and the
:class:`~ttp_core.contract.payloads.HoneypotEvent` model all call this module, so they
accept and refuse exactly the same events. `docs/contract.md` states the rules in prose.

A valid event is one JSON object (UTF-8, at most `max_bytes`), bare or as the `data` object
of a CloudEvents envelope (an object with `specversion`), with:

- `source_kind`: one subject token (`[A-Za-z0-9_-]{1,64}`);
- `source_id`: text of 1-256 characters;
- `attacker_uuid`, `identity_uuid`, `session_id`, `decky_id`: text or null (or absent);
- `payload`: an object.

Two things JSON parsers let through are refused or repaired, because every tag and dead
letter must be strict JSON in valid UTF-8:

- non-finite numbers (`NaN`, `Infinity`, or a literal such as `1e999` that overflows a
  64-bit float) are refused (`non_finite_number`);
- a lone UTF-16 surrogate (a `\\ud800` escape without its pair) in an id is refused
  (`invalid_text`: ids are part of each tag's identity, so they are never rewritten); in the
  payload it is replaced by U+FFFD, which is also how rules match it.

Events are decoded by msgspec first, which accepts a strict subset of what the standard
library's decoder does (no `NaN`, no out-of-range number, no lone surrogate, no invalid
UTF-8) and decodes it to the same objects, several times faster. Whatever msgspec refuses,
and anything nested deep enough to near the recursion limit, goes through the standard
decoder as before: the outcome of every input, refusal reason included, is the standard
decoder's.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Final

import msgspec

from ttp_core.contract import subjects

MAX_SOURCE_ID: Final = 256
"""Longest `source_id`, in characters."""
ID_FIELDS: Final = ("attacker_uuid", "identity_uuid", "session_id", "decky_id")
"""The optional ids an event carries into its tags (text or null)."""
REPLACEMENT: Final = "\ufffd"

# A surrogate code point in decoded text is always a lone one: the JSON decoder joins a
# valid pair into one character.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# In the raw bytes (strict UTF-8, so no encoded surrogates), only a `\uD800`-`\uDFFF`
# escape can produce one. Scanning the bytes is far cheaper than walking the payload.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_DETAIL_CAP: Final = 200
# Python refuses to turn a longer integer into text (and to parse one): no JSON can hold it.
_INT_DIGITS: Final = 4300
_INT_BOUND: Final = 10**_INT_DIGITS


class DeadLetterReason(StrEnum):
    """Why an event went to `ttp.deadletter.<kind>`; the start of the dead letter's `error`."""

    OVERSIZE = "oversize"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    BAD_ENVELOPE = "bad_envelope"
    MISSING_SOURCE_KIND = "missing_source_kind"
    INVALID_SOURCE_KIND = "invalid_source_kind"
    INVALID_FIELD = "invalid_field"
    INVALID_TEXT = "invalid_text"
    NON_FINITE_NUMBER = "non_finite_number"
    EVALUATION_ERROR = "evaluation_error"
    """Valid, but tagging it failed (a defect or an output the bus cannot carry)."""
    MAX_DELIVERIES = "max_deliveries"
    """Delivered too many times without its processing ever finishing."""


class MalformedEventError(ValueError):
    """An event that cannot be tagged; it goes to the dead-letter stream."""

    def __init__(self, reason: DeadLetterReason, detail: str, source_kind: str | None = None):
        detail = clean_text(detail)
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.source_kind = source_kind

    @property
    def deadletter_kind(self) -> str:
        """The dead-letter subject's kind: the event's own when readable, else `unknown`."""
        kind = self.source_kind
        return kind if kind is not None and subjects.is_token(kind) else subjects.UNKNOWN_KIND


class _NonFiniteNumberError(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _refuse_constant(literal: str) -> Any:
    raise _NonFiniteNumberError(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFiniteNumberError(literal)
    return value


_DECODER: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)
_FAST_DECODER: Final = msgspec.json.Decoder()
# msgspec nests a few levels deeper than the standard decoder before its RecursionError, so
# an event with this many brackets takes the standard path, where the limit was always met.
_DEEP_BRACKETS: Final = 400


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD: encodable as UTF-8."""
    if text.isascii():
        return text
    return _SURROGATE.sub(REPLACEMENT, text)


def has_lone_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def parse_event(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The event object of one message (unwrapped from its envelope), checked.

    Returns a dict with `source_kind` (one subject token), `source_id` (text, 1-256), the
    optional ids (text or null) and `payload` (an object whose lone surrogates were
    replaced). Raises :class:`MalformedEventError`.
    """
    if len(raw) > max_bytes:
        raise MalformedEventError(
            DeadLetterReason.OVERSIZE, f"{len(raw)} bytes is more than the {max_bytes} allowed"
        )
    # Fewer bytes than that many brackets cannot hold them: most events skip the count.
    if len(raw) < _DEEP_BRACKETS or raw.count(b"[") + raw.count(b"{") < _DEEP_BRACKETS:
        try:
            obj = _FAST_DECODER.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            pass  # the standard decoder below says why (or accepts what msgspec does not)
        else:
            # What msgspec accepts holds no lone surrogate and no non-finite number.
            return _check(_unwrap(obj), surrogates=False, numbers=False)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedEventError(DeadLetterReason.BAD_JSON, f"not UTF-8: {exc}") from None
    try:
        obj = _DECODER.decode(text)
    except _NonFiniteNumberError as exc:
        raise MalformedEventError(
            DeadLetterReason.NON_FINITE_NUMBER,
            f"{_shorten(exc.literal)} is not a finite number",
            _lenient_kind(text),
        ) from None
    except (ValueError, RecursionError) as exc:
        raise MalformedEventError(DeadLetterReason.BAD_JSON, str(exc)[:_DETAIL_CAP]) from None
    surrogates = b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None
    return _check(_unwrap(obj), surrogates=surrogates, numbers=False)


def check_event(obj: Any) -> dict[str, Any]:
    """`obj` if it is a valid event (built in Python rather than parsed), else
    :class:`MalformedEventError`.

    Unlike :func:`parse_event`, nothing is known about the payload's values, so all of it
    is walked for non-finite numbers and lone surrogates. Returns a new dict when the
    payload had to be repaired.
    """
    if not isinstance(obj, Mapping):
        raise MalformedEventError(DeadLetterReason.NOT_OBJECT, f"a {type(obj).__name__}")
    return _check(dict(obj), surrogates=True, numbers=True)


def _lenient_kind(text: str) -> str | None:
    """The `source_kind` of an event refused for a non-finite number, for its dead letter.

    Parsed again the lenient way (Python's default accepts `NaN` and `Infinity`); this runs
    only for events already refused.
    """
    try:
        kind = _unwrap(json.loads(text)).get("source_kind")
    except (ValueError, RecursionError):
        return None
    return kind if subjects.is_token(kind) else None


def _unwrap(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedEventError(DeadLetterReason.NOT_OBJECT, f"a JSON {_json_type(obj)}")
    if "specversion" in obj:
        data = obj.get("data")
        if not isinstance(data, dict):
            raise MalformedEventError(
                DeadLetterReason.BAD_ENVELOPE, "a CloudEvents envelope without a data object"
            )
        return data
    return obj


def _check(obj: dict[str, Any], *, surrogates: bool, numbers: bool) -> dict[str, Any]:
    kind = obj.get("source_kind")
    if kind is None:
        raise MalformedEventError(DeadLetterReason.MISSING_SOURCE_KIND, "no source_kind")
    if not subjects.is_token(kind):
        raise MalformedEventError(
            DeadLetterReason.INVALID_SOURCE_KIND,
            f"source_kind {_shorten(kind)} is not a token [A-Za-z0-9_-]{{1,64}}",
        )
    source_id = obj.get("source_id")
    if not isinstance(source_id, str) or not 0 < len(source_id) <= MAX_SOURCE_ID:
        raise MalformedEventError(
            DeadLetterReason.INVALID_FIELD,
            f"source_id must be text of 1-{MAX_SOURCE_ID} characters",
            kind,
        )
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise MalformedEventError(DeadLetterReason.INVALID_FIELD, "payload must be an object", kind)
    for name in ID_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedEventError(
                DeadLetterReason.INVALID_FIELD, f"{name} must be text or null", kind
            )
    if surrogates:
        for name in ("source_id", *ID_FIELDS):
            value = obj.get(name)
            if value is not None and has_lone_surrogate(value):
                raise MalformedEventError(
                    DeadLetterReason.INVALID_TEXT,
                    f"{name} holds a lone UTF-16 surrogate (not encodable as UTF-8)",
                    kind,
                )
    if surrogates or numbers:
        repaired = _repair(payload, numbers=numbers, kind=kind)
        if repaired is not payload:
            obj = {**obj, "payload": repaired}
    return obj


def _repair(payload: dict[str, Any], *, numbers: bool, kind: str) -> dict[str, Any]:
    """`payload` with lone surrogates replaced (a copy only if one was found).

    Iterative, not recursive: the payload may be nested as deep as the JSON parser allowed,
    and a recursive walk would then run out of stack where the parser did not.
    """
    if not _needs_repair(payload, numbers=numbers, kind=kind):
        return payload
    repaired = _copy_cleaned(payload)
    assert isinstance(repaired, dict)
    return repaired


def _needs_repair(payload: dict[str, Any], *, numbers: bool, kind: str) -> bool:
    found = False
    stack: list[Any] = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            found = found or has_lone_surrogate(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise MalformedEventError(
                        DeadLetterReason.INVALID_FIELD, "payload keys must be text", kind
                    )
                found = found or has_lone_surrogate(key)
                stack.append(item)
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, float):
            if numbers and not math.isfinite(value):
                raise MalformedEventError(
                    DeadLetterReason.NON_FINITE_NUMBER, f"{value} is not a finite number", kind
                )
        elif isinstance(value, int) and not isinstance(value, bool):
            if numbers and not -_INT_BOUND < value < _INT_BOUND:
                raise MalformedEventError(
                    DeadLetterReason.INVALID_FIELD,
                    f"an integer of more than {_INT_DIGITS} digits cannot be written as JSON",
                    kind,
                )
        elif value is not None and not isinstance(value, bool):
            raise MalformedEventError(
                DeadLetterReason.INVALID_FIELD,
                f"payload holds a {type(value).__name__}, which is not a JSON value",
                kind,
            )
    return found


def _copy_cleaned(root: Any) -> Any:
    """A copy of a JSON value with every string (and key) passed through :func:`clean_text`."""

    def fresh(value: Any) -> Any:
        if isinstance(value, str):
            return clean_text(value)
        if isinstance(value, dict):
            return {}
        if isinstance(value, list | tuple):
            return []
        return value

    top = fresh(root)
    # (source container, its copy) pairs still to fill in.
    stack: list[tuple[Any, Any]] = [(root, top)] if isinstance(top, dict | list) else []
    while stack:
        source, target = stack.pop()
        items: Iterable[tuple[Any, Any]] = (
            source.items() if isinstance(source, dict) else enumerate(source)
        )
        for key, value in items:
            copy = fresh(value)
            if isinstance(target, dict):
                target[clean_text(key)] = copy
            else:
                target.append(copy)
            if isinstance(copy, dict | list):
                stack.append((value, copy))
    return top


_REPR: Final = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = 80


def _shorten(value: object) -> str:
    """A short quoted rendering of any value for an error message (bounded in size and depth)."""
    text = repr(value[:80]) if isinstance(value, str) else _REPR.repr(value)
    return clean_text(text)


_JSON_TYPES: Final = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)
