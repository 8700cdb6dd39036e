"""Text a rule may not carry anywhere: what PostgreSQL, UTF-8 or the JSON contract cannot hold.

A rule is stored in PostgreSQL (text and JSONB columns) and published as JSON, so every
string in it, wherever it sits (name, description, operands, inline test events, lifter
parameters, even ignored unknown keys), must survive both. YAML's double-quoted escapes can
write what neither accepts: `"\\0"` (NUL: PostgreSQL text and JSONB refuse it) and `"\\ud800"`
(a lone UTF-16 surrogate: not a Unicode character, so it cannot be encoded as UTF-8). Sizes
are capped too, so that an alias cannot turn a small file into gigabytes of JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

MAX_TEXT: Final = 65_536
"""Characters of any one string in a rule (the engine reads no more of a value either)."""
MAX_TOTAL_TEXT: Final = 1024 * 1024
"""Characters of all strings of a rule together, after alias expansion (= the file cap)."""
MAX_LIST: Final = 1000
"""Items of any one list in a rule (inline tests, `in` operands, lists in test events)."""

_FORBIDDEN: Final = re.compile("[\x00\ud800-\udfff]")

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class TextProblem:
    """One string or list the rule cannot keep; `key` when the problem is a mapping key."""

    path: Path
    message: str
    code: str
    key: bool = False


def label(path: Path) -> str:
    """`emits[0].confidence`-style name of a path ("rule" for the whole document)."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out or "rule"


def text_problems(data: Any) -> Iterator[TextProblem]:
    """Every NUL, lone surrogate, over-long string and over-long list under `data`.

    Stops after the first problem once the text of the document, aliases expanded, exceeds
    :data:`MAX_TOTAL_TEXT`: scanning further would cost what the cap exists to prevent.
    """
    total = 0
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            children: list[tuple[Path, Any]] = []
            for key, value in node.items():
                child = (*path, key)
                if isinstance(key, str):
                    total += len(key)
                    problem = _string_problem(child, key, is_key=True)
                    if problem is not None:
                        yield problem
                children.append((child, value))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            if len(node) > MAX_LIST:
                yield TextProblem(
                    path,
                    f"{label(path)} has {len(node):,} items; lists in a rule hold at most "
                    f"{MAX_LIST:,}",
                    "list-too-long",
                )
                continue
            stack.extend(reversed([((*path, i), item) for i, item in enumerate(node)]))
        elif isinstance(node, str):
            total += len(node)
            problem = _string_problem(path, node, is_key=False)
            if problem is not None:
                yield problem
        if total > MAX_TOTAL_TEXT:
            yield TextProblem(
                path,
                f"the rule holds more than {MAX_TOTAL_TEXT:,} characters of text once YAML "
                "aliases are expanded",
                "too-large",
            )
            return


def _string_problem(path: Path, text: str, *, is_key: bool) -> TextProblem | None:
    found = _FORBIDDEN.search(text)
    if found is None and len(text) <= MAX_TEXT:
        return None  # nearly every string: no name built for it
    what = f"key {text[:40]!r} in {label(path[:-1])}" if is_key else label(path)
    if len(text) > MAX_TEXT:
        return TextProblem(
            path,
            f"{what} is {len(text):,} characters long; text in a rule is at most {MAX_TEXT:,}",
            "text-too-long",
            is_key,
        )
    assert found is not None
    char = found.group()
    if char == "\x00":
        message = (
            f'{what} contains a NUL character (U+0000, a YAML "\\0" or "\\x00" escape); '
            "PostgreSQL cannot store it"
        )
        return TextProblem(path, message, "text-nul", is_key)
    message = (
        f'{what} contains a lone surrogate U+{ord(char):04X} (a YAML "\\u{ord(char):04x}" '
        "escape without its pair); it is not a Unicode character and cannot be encoded as "
        'UTF-8: write the character itself or a "\\U0001F600"-style escape'
    )
    return TextProblem(path, message, "text-surrogate", is_key)
