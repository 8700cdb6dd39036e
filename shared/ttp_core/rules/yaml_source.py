"""Turn the bytes of a rule file into plain data plus the position of every node.

PyYAML's composer recurses once per nesting level (the C extension segfaults on deep
input) and silently keeps the last of duplicate keys, so documents are built here from
the parser's flat event stream instead: bounded depth, bounded size after alias
expansion, duplicate keys reported, and a 1-based (line, column) for every path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from ttp_core.rules.diagnostics import Diagnostic

Path = tuple[str | int, ...]

MAX_FILE_BYTES: Final = 1024 * 1024
MAX_DEPTH: Final = 64
MAX_NODES: Final = 20_000

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALAR_TAGS: Final = frozenset(
    {
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:timestamp",
    }
)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_STR_TAG: Final = "tag:yaml.org,2002:str"
_COLLECTION_TAGS: Final = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column."""

    line: int
    column: int


@dataclass(slots=True)
class LocatedDocument:
    """A parsed YAML document and where each of its nodes starts in the file."""

    data: Any
    positions: dict[Path, Position]
    key_positions: dict[Path, Position] = field(default_factory=dict)

    def position_of(self, path: Path) -> Position:
        """Position of `path`, or of its nearest ancestor that has one."""
        probe = tuple(path)
        while probe:
            found = self.positions.get(probe)
            if found is not None:
                return found
            probe = probe[:-1]
        return self.positions.get((), Position(1, 1))

    def key_position_of(self, path: Path) -> Position:
        """Position of the key that introduces `path` (falls back to its value)."""
        return self.key_positions.get(path) or self.position_of(path)

    def resolve_loc(self, loc: tuple[Any, ...]) -> Path:
        """Map a validation error location onto the document's real paths.

        Validation libraries add synthetic steps (union tags, aliases) to their error
        locations; steps that do not exist in the document are skipped.
        """
        path: Path = ()
        for step in loc:
            candidate = (*path, step)
            if candidate in self.positions:
                path = candidate
        return path


class YamlSourceError(Exception):
    """The bytes are not a single, bounded YAML document."""

    def __init__(self, line: int, column: int, message: str, code: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message
        self.code = code

    def diagnostic(self, source: str) -> Diagnostic:
        return Diagnostic(source, self.line, self.column, self.message, self.code)


@dataclass(slots=True)
class _Frame:
    path: Path
    container: dict[Any, Any] | list[Any]
    anchor: str | None
    nodes: int = 1
    pending_key: Any = None
    has_key: bool = False
    seen_keys: dict[Any, Position] = field(default_factory=dict)


def _pos(mark: Any) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def decode_source(raw: bytes, max_bytes: int = MAX_FILE_BYTES) -> str:
    """Decode rule-file bytes as UTF-8, with the size cap and binary checks."""
    if len(raw) > max_bytes:
        raise YamlSourceError(
            1,
            1,
            f"file is {len(raw):,} bytes; rule files are limited to {max_bytes:,} bytes",
            "file-too-large",
        )
    nul = raw.find(b"\x00")
    if nul >= 0:
        line, column = _offset_to_position(raw, nul)
        raise YamlSourceError(
            line, column, "binary content (NUL byte); not a YAML text file", "binary"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _offset_to_position(raw, exc.start)
        raise YamlSourceError(
            line, column, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", "encoding"
        ) from None


def _offset_to_position(raw: bytes, offset: int) -> tuple[int, int]:
    before = raw[:offset]
    line = before.count(b"\n") + 1
    column = offset - (before.rfind(b"\n") + 1) + 1
    return line, column


def parse_document(text: str) -> LocatedDocument:
    """Build the single document in `text`, raising `YamlSourceError` on any problem."""
    try:
        return _build(text, _Loader)
    except YamlSourceError:
        if _Loader is yaml.SafeLoader:
            raise
    # libyaml scans ahead of the events it hands out, and some releases stop deep input with
    # their own nesting limit before our builder sees the depth. The pure-Python parser is
    # lazy, so on the error path (only) it runs again: our own limits then speak first and
    # the same file gets the same located error whatever libyaml version is installed.
    return _build(text, yaml.SafeLoader)


def _build(text: str, loader: Any) -> LocatedDocument:
    builder = _DocumentBuilder()
    try:
        for event in yaml.parse(text, Loader=loader):
            builder.feed(event)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise YamlSourceError(
            line, column, f"YAML syntax error: {problem}{context}", "yaml-syntax"
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(1, 1, f"YAML error: {exc}", "yaml-syntax") from None
    return builder.result()


class _DocumentBuilder:
    def __init__(self) -> None:
        self._stack: list[_Frame] = []
        self._anchors: dict[str, tuple[Any, int, Path]] = {}
        self._open_anchors: set[str] = set()
        self._positions: dict[Path, Position] = {}
        self._key_positions: dict[Path, Position] = {}
        self._documents = 0
        self._root: Any = None
        self._root_set = False
        self._total_nodes = 0
        self._constructor = yaml.constructor.SafeConstructor()
        self._resolver = yaml.resolver.Resolver()

    def result(self) -> LocatedDocument:
        if not self._root_set or self._root is None:
            raise YamlSourceError(
                1, 1, "empty rule file: expected a mapping with rule_id, match, emits", "empty"
            )
        return LocatedDocument(self._root, self._positions, self._key_positions)

    def feed(self, event: Any) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self._documents += 1
            if self._documents > 1:
                p = _pos(event.start_mark)
                raise YamlSourceError(
                    p.line,
                    p.column,
                    "more than one YAML document; a rule file holds exactly one rule",
                    "multiple-documents",
                )
        elif isinstance(event, yaml.ScalarEvent):
            self._scalar(event)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self._start(event)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            self._end(event)
        elif isinstance(event, yaml.AliasEvent):
            self._alias(event)

    def _next_path(self, mark: Position) -> Path:
        if not self._stack:
            return ()
        top = self._stack[-1]
        if isinstance(top.container, list):
            return (*top.path, len(top.container))
        if not top.has_key:
            # A key being read: its own path is never looked up.
            return top.path
        return (*top.path, top.pending_key)

    def _count(self, nodes: int, mark: Position) -> None:
        self._total_nodes += nodes
        if self._total_nodes > MAX_NODES:
            raise YamlSourceError(
                mark.line,
                mark.column,
                f"document expands to more than {MAX_NODES:,} nodes (YAML alias bomb?)",
                "too-large",
            )

    def _check_tag(self, tag: str | None, allowed: frozenset[str], mark: Position) -> None:
        if tag is not None and tag not in ("!", *allowed):
            raise YamlSourceError(
                mark.line, mark.column, f"unsupported YAML tag {tag!r}", "yaml-tag"
            )

    def _scalar(self, event: Any) -> None:
        mark = _pos(event.start_mark)
        self._check_tag(event.tag, _SCALAR_TAGS, mark)
        tag = event.tag
        if tag is None or tag == "!":
            tag = str(self._resolver.resolve(yaml.ScalarNode, event.value, event.implicit))  # type: ignore[no-untyped-call]
        if tag == "tag:yaml.org,2002:timestamp":
            value: Any = event.value
        elif tag == _STR_TAG and not _SURROGATE.search(event.value):
            # Most scalars of a rule are strings: the constructor would only hand the text
            # back, after building a node for it.
            value = event.value
        else:
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark)
            try:
                value = self._constructor.construct_object(node, deep=True)
            except (ValueError, yaml.YAMLError) as exc:
                raise YamlSourceError(
                    mark.line,
                    mark.column,
                    f"invalid {tag.rsplit(':', 1)[-1]} value {event.value!r}: {exc}",
                    "yaml-syntax",
                ) from None
            if isinstance(value, str) and _SURROGATE.search(value):
                # "\ud83d\ude00" is how JSON and YAML 1.2 spell one astral character; PyYAML
                # keeps the two halves. Pairs are joined here; a lone half stays, and the
                # validator rejects it (not a character, not encodable as UTF-8).
                value = value.encode("utf-16-le", "surrogatepass").decode(
                    "utf-16-le", "surrogatepass"
                )
            if isinstance(value, float) and not math.isfinite(value):
                # Rules are hashed and published as JSON, which has no inf/nan.
                message = f"{event.value!r} is not a finite number"
                raise YamlSourceError(mark.line, mark.column, message, "yaml-value")
        self._place(value, 1, mark, event.anchor)

    def _alias(self, event: Any) -> None:
        mark = _pos(event.start_mark)
        if event.anchor in self._open_anchors:
            raise YamlSourceError(
                mark.line, mark.column, f"recursive alias *{event.anchor}", "yaml-alias"
            )
        found = self._anchors.get(event.anchor)
        if found is None:
            raise YamlSourceError(
                mark.line, mark.column, f"undefined alias *{event.anchor}", "yaml-alias"
            )
        value, nodes, _ = found
        self._place(value, nodes, mark, None)

    def _start(self, event: Any) -> None:
        mark = _pos(event.start_mark)
        self._check_tag(event.tag, _COLLECTION_TAGS, mark)
        if len(self._stack) >= MAX_DEPTH:
            raise YamlSourceError(
                mark.line, mark.column, f"nesting deeper than {MAX_DEPTH} levels", "too-deep"
            )
        if (
            self._stack
            and isinstance(self._stack[-1].container, dict)
            and not self._stack[-1].has_key
        ):
            raise YamlSourceError(
                mark.line, mark.column, "mapping keys must be plain scalars", "yaml-key"
            )
        path = self._next_path(mark)
        self._positions[path] = mark
        container: dict[Any, Any] | list[Any] = (
            {} if isinstance(event, yaml.MappingStartEvent) else []
        )
        if event.anchor is not None:
            self._open_anchors.add(event.anchor)
        self._count(1, mark)
        self._stack.append(_Frame(path, container, event.anchor))

    def _end(self, event: Any) -> None:
        frame = self._stack.pop()
        if frame.anchor is not None:
            self._open_anchors.discard(frame.anchor)
            self._anchors[frame.anchor] = (frame.container, frame.nodes, frame.path)
        self._attach(frame.container, frame.nodes, self._positions[frame.path])

    def _place(self, value: Any, nodes: int, mark: Position, anchor: str | None) -> None:
        if nodes > 1:
            self._count(nodes, mark)
        elif self._stack:
            self._count(1, mark)
        if (
            self._stack
            and isinstance(self._stack[-1].container, dict)
            and not self._stack[-1].has_key
        ):
            self._take_key(value, mark)
            return
        self._positions[self._next_path(mark)] = mark
        if anchor is not None:
            self._anchors[anchor] = (value, nodes, self._next_path(mark))
        self._attach(value, nodes, mark)

    def _take_key(self, key: Any, mark: Position) -> None:
        frame = self._stack[-1]
        if isinstance(key, dict | list):
            raise YamlSourceError(
                mark.line, mark.column, "mapping keys must be plain scalars", "yaml-key"
            )
        earlier = frame.seen_keys.get(key)
        if earlier is not None:
            raise YamlSourceError(
                mark.line,
                mark.column,
                f"duplicate key {key!r} "
                f"(first defined at line {earlier.line}, column {earlier.column})",
                "duplicate-key",
            )
        frame.seen_keys[key] = mark
        self._key_positions[(*frame.path, key)] = mark
        frame.pending_key = key
        frame.has_key = True

    def _attach(self, value: Any, nodes: int, mark: Position) -> None:
        if not self._stack:
            self._root = value
            self._root_set = True
            return
        top = self._stack[-1]
        top.nodes += nodes
        if isinstance(top.container, list):
            top.container.append(value)
        else:
            top.container[top.pending_key] = value
            top.has_key = False
            top.pending_key = None
