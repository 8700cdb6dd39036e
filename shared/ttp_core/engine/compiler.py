"""Compile a validated rule into per-source-kind programs the index can run.

String operators become RE2 expressions (matched for all rules of a field at once by
the index); the rest (numbers, existence, booleans, backtracking-only patterns) become
direct tests. A rule's program is a small tree over those leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from operator import ge, gt, le, lt
from typing import Any, Final

import re2

from ttp_core.attack import AttackCatalogue, load_catalogue
from ttp_core.engine.fields import MISSING, as_number, as_text, resolve, scalars, split_path
from ttp_core.engine.patterns import (
    BoundedPattern,
    PatternError,
    check_pattern,
    compile_bounded,
    may_need_backtracking,
)
from ttp_core.rules.canonical import content_sha256
from ttp_core.rules.model import DEFAULT_FIELDS, AllOf, AnyOf, ExternalMatch, Leaf, NotOf, Rule

LEAF: Final = 0
ALL: Final = 1
ANY: Final = 2
NOT: Final = 3

Node = tuple[int, Any]
Path = tuple[str | int, ...]
LeafHits = AbstractSet[tuple[str, int]]
"""(rule_id, leaf number) of the linear leaves that matched an event."""


class CompileError(ValueError):
    """A rule cannot be compiled; `path` locates the offending node in the rule."""

    def __init__(self, path: Path, message: str, code: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class LinearLeaf:
    """A string test expressed as an RE2 pattern, matched through the field's filter."""

    field: str
    parts: tuple[str, ...]
    regex: str


_PLAIN_SCALARS: Final = frozenset({str, int, float, bool})
"""Value classes `scalars` yields as they are: tested without building its generator."""

_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": gt,
    "gte": ge,
    "lt": lt,
    "lte": le,
}


@dataclass(frozen=True, slots=True)
class DirectLeaf:
    """A test evaluated in Python against the field's value(s)."""

    field: str
    parts: tuple[str, ...]
    operator: str
    operand: Any
    ignore_case: bool = False
    bounded: BoundedPattern | None = None

    test_scalar: Callable[[Any], bool] = dataclass_field(init=False, repr=False, compare=False)
    """The operator's test of one scalar, chosen once here rather than on every call."""

    def __post_init__(self) -> None:
        op = self.operator
        if op == "pattern":
            test = self._pattern
        elif op in _COMPARISONS:
            test = self._compare
        elif op == "equals" and isinstance(self.operand, bool):
            test = self._is_operand  # `success: true`: only that very boolean equals it
        else:
            test = self._equals_any
        object.__setattr__(self, "test_scalar", test)

    def test(self, payload: Mapping[str, Any]) -> bool:
        value = resolve(payload, self.field, self.parts)
        if self.operator == "exists":
            return bool((value is not MISSING and value is not None) == self.operand)
        if value.__class__ in _PLAIN_SCALARS:
            return self.test_scalar(value)
        test = self.test_scalar
        for scalar in scalars(value):  # noqa: SIM110 - a loop, not any() over a generator
            if test(scalar):
                return True
        return False

    def _pattern(self, scalar: Any) -> bool:
        # Whole text: the bounded pattern caps its input itself and must see past the cap.
        text = scalar if isinstance(scalar, str) else as_text(scalar)
        return text is not None and self.bounded is not None and self.bounded.search(text)

    def _compare(self, scalar: Any) -> bool:
        number = as_number(scalar)
        # int or float, compared exactly (no float() overflow)
        return number is not None and _COMPARISONS[self.operator](number, self.operand)

    def _is_operand(self, scalar: Any) -> bool:
        return scalar is self.operand

    def _equals_any(self, scalar: Any) -> bool:
        candidates = self.operand if self.operator == "in" else (self.operand,)
        for candidate in candidates:  # noqa: SIM110 - see test
            if self._equal(scalar, candidate):
                return True
        return False

    def _equal(self, scalar: Any, candidate: Any) -> bool:
        if isinstance(candidate, bool) or isinstance(scalar, bool):
            return scalar is candidate
        if isinstance(candidate, int | float):
            number = as_number(scalar)
            return number is not None and number == candidate
        text = scalar if isinstance(scalar, str) else as_text(scalar)  # a cut text is not equal
        if text is None:
            return False
        if self.ignore_case:
            return text.casefold() == str(candidate).casefold()
        return bool(text == candidate)


MatchLeaf = LinearLeaf | DirectLeaf


@dataclass(frozen=True, slots=True)
class KindProgram:
    """A rule's match tree for one source kind."""

    rule_id: str
    leaves: tuple[MatchLeaf, ...]
    tree: Node
    needs_hit: bool
    """True when the rule can only fire if one of its linear leaves matched."""
    simple: bool
    """True when the whole tree is one linear leaf: a filter hit is a fire."""

    test: Predicate = dataclass_field(init=False, repr=False, compare=False)
    """The tree as nested closures: evaluating it is a few calls, not a walk."""
    linear: tuple[tuple[int, LinearLeaf], ...] = dataclass_field(
        init=False, repr=False, compare=False
    )
    """(leaf number, leaf) of the linear leaves, which the index's filters match."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", _predicate(self.tree, self.leaves, self.rule_id))
        linear = tuple(
            (n, leaf) for n, leaf in enumerate(self.leaves) if isinstance(leaf, LinearLeaf)
        )
        object.__setattr__(self, "linear", linear)

    def fires(self, payload: Mapping[str, Any], hits: LeafHits) -> bool:
        return self.test(payload, hits)


Predicate = Callable[[Mapping[str, Any], LeafHits], bool]


def _predicate(node: Node, leaves: tuple[MatchLeaf, ...], rule_id: str) -> Predicate:
    kind, arg = node
    if kind == LEAF:
        leaf = leaves[arg]
        if isinstance(leaf, LinearLeaf):
            key = (rule_id, arg)
            return lambda _payload, hits: key in hits
        direct = leaf.test
        return lambda payload, _hits: direct(payload)
    if kind == NOT:
        inner = _predicate(arg, leaves, rule_id)
        return lambda payload, hits: not inner(payload, hits)
    children = tuple(_predicate(child, leaves, rule_id) for child in arg)
    if kind == ALL:

        def all_of(payload: Mapping[str, Any], hits: LeafHits) -> bool:
            # A plain loop: all() over a generator costs a frame per evaluation.
            for child in children:  # noqa: SIM110
                if not child(payload, hits):
                    return False
            return True

        return all_of

    def any_of(payload: Mapping[str, Any], hits: LeafHits) -> bool:
        for child in children:  # noqa: SIM110 - see all_of
            if child(payload, hits):
                return True
        return False

    return any_of


@dataclass(frozen=True, slots=True)
class EmitTemplate:
    """Everything about one emitted technique's tag that does not depend on the event."""

    rule_id: str
    rule_version: int
    tactic: str
    technique_id: str
    sub_technique_id: str | None
    confidence: float
    attack_version: str
    mitre_url: str
    uuid_suffix: bytes
    """UTF-8 of the tag uuid's name after `source_kind|source_id|` (see `tags.tag_uuid`)."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready for the index: its programs per source kind and its emits."""

    rule: Rule
    content_sha256: str
    programs: Mapping[str, KindProgram]
    emits: tuple[EmitTemplate, ...]
    evidence: tuple[tuple[str, tuple[str, ...]], ...]
    bounded_patterns: tuple[tuple[Path, str], ...]
    """(location in the rule, pattern) of each pattern on the bounded backtracking path."""
    attack_version: str
    rule_id: str = dataclass_field(init=False)
    """The rule's id: a field, not a property, as every index build reads it per rule."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule_id", self.rule.rule_id)

    @property
    def rule_version(self) -> int:
        return self.rule.rule_version

    @property
    def is_external(self) -> bool:
        return self.rule.is_external

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.rule.applies_to)


def compile_rule(
    rule: Rule,
    sha256: str | None = None,
    catalogue: AttackCatalogue | None = None,
    *,
    check_patterns: bool = True,
) -> CompiledRule:
    """Compile `rule`; raises `CompileError` locating the first problem.

    `check_patterns=False` is for rules a validator already compiled with the check (a
    worker reading the master's messages): only patterns a cheap scan cannot clear of
    backtracking constructs (`may_need_backtracking`) are checked with RE2 here, which is
    half of a rule's compile otherwise; a bounded one then takes the rule tree's path, as
    with the check. The rest go to their field's filter as linear leaves, and the filter
    classifies each when it compiles (see `index.FilterShard`): RE2 runs it, else the
    bounded engine does, else (no engine accepts it) the leaf never matches and that is
    logged.
    """
    catalogue = catalogue or load_catalogue()
    bounded: dict[Path, str] = {}
    programs: dict[str, KindProgram] = {}
    if not isinstance(rule.match, ExternalMatch):
        for kind in dict.fromkeys(rule.applies_to):
            builder = _ProgramBuilder(rule.rule_id, kind, bounded, check_patterns)
            tree = builder.node(rule.match, ("match",))
            leaves = tuple(builder.leaves)
            programs[kind] = KindProgram(
                rule_id=rule.rule_id,
                leaves=leaves,
                tree=tree,
                needs_hit=_needs_hit(tree, leaves),
                simple=tree[0] == LEAF and isinstance(leaves[tree[1]], LinearLeaf),
            )
    emits = tuple(
        EmitTemplate(
            rule_id=rule.rule_id,
            rule_version=rule.rule_version,
            tactic=emit.tactic,
            technique_id=emit.technique_id,
            sub_technique_id=emit.sub_technique_id,
            confidence=float(emit.confidence),
            attack_version=catalogue.version,
            mitre_url=catalogue.url_for(emit.sub_technique_id or emit.technique_id),
            uuid_suffix=(
                f"{rule.rule_id}|{rule.rule_version}|"
                f"{emit.technique_id}|{emit.sub_technique_id or ''}"
            ).encode(),
        )
        for emit in rule.emits
    )
    return CompiledRule(
        rule=rule,
        content_sha256=sha256 or content_sha256(rule),
        programs=programs,
        emits=emits,
        evidence=tuple((name, split_path(name)) for name in rule.evidence_fields),
        bounded_patterns=tuple(bounded.items()),
        attack_version=catalogue.version,
    )


class _ProgramBuilder:
    def __init__(
        self, rule_id: str, kind: str, bounded: dict[Path, str], check_patterns: bool
    ) -> None:
        self.rule_id = rule_id
        self.kind = kind
        self.leaves: list[MatchLeaf] = []
        self.bounded = bounded
        self.check_patterns = check_patterns

    def node(self, node: AllOf | AnyOf | NotOf | Leaf, path: Path) -> Node:
        if isinstance(node, AllOf):
            return (ALL, tuple(self.node(c, (*path, "all", i)) for i, c in enumerate(node.all)))
        if isinstance(node, AnyOf):
            return (ANY, tuple(self.node(c, (*path, "any", i)) for i, c in enumerate(node.any)))
        if isinstance(node, NotOf):
            return (NOT, self.node(node.not_, (*path, "not")))
        self.leaves.append(self.leaf(node, path))
        return (LEAF, len(self.leaves) - 1)

    def leaf(self, leaf: Leaf, path: Path) -> MatchLeaf:
        field = leaf.field or DEFAULT_FIELDS.get(self.kind)
        if field is None:
            raise CompileError(
                path,
                f"this leaf has no 'field' and source kind {self.kind!r} has no default field "
                f"(defaults exist for: {', '.join(sorted(DEFAULT_FIELDS))})",
                "missing-field",
            )
        parts = split_path(field)
        operator = leaf.operator
        operand = leaf.operand_of(operator)  # `leaf.operand` would look for the operator again
        linear = _linear_regex(operator, operand, leaf.ignore_case)
        if linear is not None:
            return LinearLeaf(field, parts, linear)
        if operator == "pattern":
            prefix = "(?i)" if leaf.ignore_case else ""
            if not self.check_patterns and not may_need_backtracking(operand):
                return LinearLeaf(field, parts, prefix + operand)
            try:
                check = check_pattern(operand)
            except PatternError as exc:
                if not self.check_patterns:
                    # Only a forged message holds it: the filter logs it, and it never matches.
                    return LinearLeaf(field, parts, prefix + operand)
                raise CompileError((*path, "pattern"), str(exc), "regex-invalid") from None
            if check.linear:
                return LinearLeaf(field, parts, prefix + operand)
            self.bounded[(*path, "pattern")] = operand
            return DirectLeaf(
                field,
                parts,
                operator,
                operand,
                leaf.ignore_case,
                compile_bounded(operand, leaf.ignore_case),
            )
        return DirectLeaf(field, parts, operator, operand, leaf.ignore_case)


def _linear_regex(operator: str, operand: Any, ignore_case: bool) -> str | None:
    if operator == "contains":
        body = re2.escape(operand)
    elif operator == "startswith":
        body = r"\A" + re2.escape(operand)
    elif operator == "endswith":
        body = re2.escape(operand) + r"\z"
    elif operator == "equals" and isinstance(operand, str):
        body = r"\A" + re2.escape(operand) + r"\z"
    elif operator == "in" and all(isinstance(item, str) for item in operand):
        body = r"\A(?:" + "|".join(re2.escape(item) for item in operand) + r")\z"
    else:
        return None
    return f"(?i:{body})" if ignore_case else body


def _needs_hit(node: Node, leaves: tuple[MatchLeaf, ...]) -> bool:
    kind, arg = node
    if kind == LEAF:
        return isinstance(leaves[arg], LinearLeaf)
    if kind == ALL:
        return any(_needs_hit(child, leaves) for child in arg)
    if kind == ANY:
        return all(_needs_hit(child, leaves) for child in arg)
    return False
