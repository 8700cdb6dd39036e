"""Reading match fields out of event payloads without ever raising.

A field is a key of the payload, or a dotted path into nested mappings; a path that
crosses a list visits every element, so `attachments.name` reads each attachment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Final

MISSING: Final[Any] = object()
MAX_MATCH_TEXT: Final = 65536
"""Characters of one field value that string operators look at; the rest is not read."""
MAX_LIST_ITEMS: Final = 256
"""Elements of one list value that operators look at; the rest are not read."""


def split_path(field: str) -> tuple[str, ...]:
    return tuple(field.split("."))


def resolve(payload: Mapping[str, Any], field: str, parts: tuple[str, ...]) -> Any:
    """The value at `field`, a list of values if the path crossed a list, or MISSING."""
    value = payload.get(field, MISSING)
    if value is not MISSING or len(parts) == 1:
        return value
    # Fast path: plain nested dicts (the usual JSON shape); anything else takes the walk.
    node: Any = payload
    for part in parts:
        if type(node) is not dict:
            return _walk(payload, parts)
        node = node.get(part, MISSING)
        if node is MISSING:
            return MISSING
    return node


def _walk(node: Any, parts: tuple[str, ...]) -> Any:
    current: list[Any] = [node]
    crossed_list = False
    for part in parts:
        following: list[Any] = []
        for item in current:
            if isinstance(item, Mapping):
                child = item.get(part, MISSING)
                if child is not MISSING:
                    following.append(child)
            elif isinstance(item, list):
                crossed_list = True
                following.extend(
                    element[part]
                    for element in item[:MAX_LIST_ITEMS]
                    if isinstance(element, Mapping) and part in element
                )
        if not following:
            return MISSING
        current = following[:MAX_LIST_ITEMS]
    if crossed_list or len(current) > 1:
        return current
    return current[0]


def as_text(value: Any) -> str | None:
    """The text a string operator sees for a scalar, or None if it has none."""
    if isinstance(value, str):
        return value if len(value) <= MAX_MATCH_TEXT else value[:MAX_MATCH_TEXT]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def as_number(value: Any) -> int | float | None:
    """The number a numeric operator sees, accepting numeric strings.

    Integers stay integers: JSON allows integers too large for a float, and Python compares
    int with float exactly, without converting (which would raise OverflowError).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return None if math.isnan(number) else number
    return None


def scalars(value: Any) -> Iterator[Any]:
    """The scalar values to test: the value itself, or each element of a list.

    Only the first MAX_LIST_ITEMS elements of a list (and of a nested list) are read.
    """
    if isinstance(value, list):
        for element in value[:MAX_LIST_ITEMS]:
            if isinstance(element, list):
                # One level of nesting is read; deeper lists are not (no recursion on input).
                yield from (
                    e
                    for e in element[:MAX_LIST_ITEMS]
                    if not isinstance(e, list | Mapping) and e is not None
                )
            elif not isinstance(element, Mapping) and element is not None:
                yield element
    elif value is not MISSING and value is not None and not isinstance(value, Mapping):
        yield value


def texts(value: Any) -> Iterator[str]:
    """Texts of every scalar under `value` (see `scalars`)."""
    if isinstance(value, str):
        yield value if len(value) <= MAX_MATCH_TEXT else value[:MAX_MATCH_TEXT]
        return
    for scalar in scalars(value):
        text = as_text(scalar)
        if text is not None:
            yield text
