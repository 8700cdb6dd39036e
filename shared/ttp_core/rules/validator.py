"""The one rule validator: bytes in, a rule or located errors out (see docs/rules.md).

Used by `ttpctl rules validate/test` and by the master; nothing else decides whether
a rule file is good.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from ttp_core.attack import AttackCatalogue, load_catalogue
from ttp_core.contract.field_catalogue import BUILTIN as BUILTIN_FIELDS
from ttp_core.contract.field_catalogue import FieldCatalogue, suggest_field
from ttp_core.engine.compiler import CompiledRule, CompileError, compile_rule
from ttp_core.engine.index import RuleIndex
from ttp_core.rules.diagnostics import Diagnostic, Severity
from ttp_core.rules.model import (
    LIFTER_PREFIX,
    RULE_KEYS,
    ZERO_CONFIDENCE,
    AllOf,
    AnyOf,
    Emit,
    ExternalMatch,
    InlineTest,
    Leaf,
    NotOf,
    Rule,
)
from ttp_core.rules.text_checks import text_problems
from ttp_core.rules.yaml_source import (
    MAX_FILE_BYTES,
    LocatedDocument,
    YamlSourceError,
    decode_source,
    parse_document,
)

RULE_FILE_NAME: Final = re.compile(r"[A-Za-z0-9_-]+\.ya?ml")

_NESTED_KEYS: Final = sorted(
    {
        *(
            f.alias or name
            for model in (Leaf, AllOf, AnyOf, NotOf, Emit, InlineTest)
            for name, f in model.model_fields.items()
        ),
        "kind",
    }
)
_TYPE_NAMES: Final = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "a mapping",
    type(None): "nothing (null)",
}


def is_rule_file(name: str) -> bool:
    """True iff a file's basename names a rule file (see docs/rules.md)."""
    return RULE_FILE_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """The result of one inline test of a rule."""

    number: int
    expect: str
    fired: bool
    source_kind: str

    @property
    def passed(self) -> bool:
        return self.fired == (self.expect == "fire")


@dataclass(frozen=True, slots=True)
class RuleReport:
    """Everything the validator found about one rule file."""

    source: str
    rule: Rule | None
    compiled: CompiledRule | None
    diagnostics: tuple[Diagnostic, ...]
    text: str | None = None
    tests: tuple[TestOutcome, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.compiled is not None and not any(d.is_error for d in self.diagnostics)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)

    @property
    def rule_id(self) -> str | None:
        return self.rule.rule_id if self.rule is not None else None

    @property
    def content_sha256(self) -> str | None:
        return self.compiled.content_sha256 if self.compiled is not None else None


class RuleValidator:
    """Validates rule files against the schema, the ATT&CK catalogue and their own tests."""

    def __init__(
        self,
        catalogue: AttackCatalogue | None = None,
        *,
        strict: bool = False,
        fields: FieldCatalogue | None = None,
    ) -> None:
        self.catalogue = catalogue or load_catalogue()
        self.strict = strict
        self.fields = fields or BUILTIN_FIELDS
        """Known source kinds and payload fields: an unknown one is a warning."""

    def validate_file(self, path: Path, source: str | None = None) -> RuleReport:
        """Validate one file on disk; `source` is the name used in diagnostics."""
        label = source or str(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise YamlSourceError(
                    1,
                    1,
                    f"file is {size:,} bytes; rule files are limited to {MAX_FILE_BYTES:,} bytes",
                    "file-too-large",
                )
            with path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except YamlSourceError as exc:
            return self._rejected(label, exc.diagnostic(label))
        except OSError as exc:
            return self._rejected(
                label, Diagnostic(label, 1, 1, f"cannot read file: {exc.strerror or exc}", "io")
            )
        return self.validate_bytes(raw, label, stem=_stem(path.name))

    def validate_bytes(self, raw: bytes, source: str, stem: str | None = None) -> RuleReport:
        """Validate the bytes of one rule file; `stem` (the file name) must equal rule_id."""
        try:
            text = decode_source(raw)
            document = parse_document(text)
        except YamlSourceError as exc:
            return self._rejected(source, exc.diagnostic(source))
        return _Check(self, source, text, document, stem).run()

    def validate_tree(self, root: Path) -> list[RuleReport]:
        """Validate every rule file under `root` (or `root` itself if it is a file).

        A rule_id claimed by two files stays with the first in path order; the second
        is rejected naming the first.
        """
        reports = [self.validate_file(path, str(path)) for path in iter_rule_files(root)]
        return mark_duplicate_ids(reports)

    def _rejected(self, source: str, diagnostic: Diagnostic) -> RuleReport:
        return RuleReport(source, None, None, (diagnostic,))


def iter_rule_files(root: Path) -> Iterator[Path]:
    """Rule files under `root` in sorted path order, skipping hidden entries (`..data`)."""
    if root.is_file():
        yield root
        return
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(directory, name) for name in files if is_rule_file(name))
    yield from sorted(found)


def mark_duplicate_ids(reports: Iterable[RuleReport]) -> list[RuleReport]:
    """Reject every later file that claims a rule_id an earlier good file holds."""
    owners: dict[str, str] = {}
    result: list[RuleReport] = []
    for report in reports:
        rule_id = report.rule_id
        if report.ok and rule_id is not None:
            owner = owners.get(rule_id)
            if owner is not None:
                line, column = _rule_id_position(report)
                duplicate = Diagnostic(
                    report.source,
                    line,
                    column,
                    f"rule_id {rule_id!r} is already defined by {owner}",
                    "duplicate-rule-id",
                )
                result.append(
                    RuleReport(
                        report.source,
                        report.rule,
                        None,
                        (*report.diagnostics, duplicate),
                        report.text,
                    )
                )
                continue
            owners[rule_id] = report.source
        result.append(report)
    return result


def _rule_id_position(report: RuleReport) -> tuple[int, int]:
    if report.text is not None:
        try:
            position = parse_document(report.text).position_of(("rule_id",))
            return position.line, position.column
        except YamlSourceError:
            pass
    return 1, 1


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


class _Check:
    def __init__(
        self,
        validator: RuleValidator,
        source: str,
        text: str,
        document: LocatedDocument,
        stem: str | None,
    ) -> None:
        self.validator = validator
        self.catalogue = validator.catalogue
        self.source = source
        self.text = text
        self.document = document
        self.stem = stem
        self.diagnostics: list[Diagnostic] = []

    def add(
        self,
        path: tuple[Any, ...],
        message: str,
        code: str,
        severity: Severity = Severity.ERROR,
        *,
        key: bool = False,
    ) -> None:
        if severity is Severity.WARNING and self.validator.strict:
            severity = Severity.ERROR
            message += " (--strict)"
        position = self.document.key_position_of(path) if key else self.document.position_of(path)
        self.diagnostics.append(
            Diagnostic(self.source, position.line, position.column, message, code, severity)
        )

    def report(
        self,
        rule: Rule | None = None,
        compiled: CompiledRule | None = None,
        tests: tuple[TestOutcome, ...] = (),
    ) -> RuleReport:
        ordered = tuple(sorted(self.diagnostics, key=lambda d: (d.line, d.column)))
        if any(d.is_error for d in ordered):
            compiled = None
        return RuleReport(self.source, rule, compiled, ordered, self.text, tests)

    def run(self) -> RuleReport:
        data = self.document.data
        if not isinstance(data, dict):
            self.add(
                (),
                f"a rule file must be a mapping at the top level, found {_type_name(data)}",
                "not-a-mapping",
            )
            return self.report()
        self._unknown_keys(data)
        if self._text(data):
            # A NUL or a lone surrogate would break the compiler and the inline tests as it
            # breaks PostgreSQL: the file is reported for its text alone.
            return self.report()
        try:
            rule = Rule.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                self._schema_error(error)
            return self.report()
        if self.stem is not None and rule.rule_id != self.stem:
            self.add(
                ("rule_id",),
                f"rule_id {rule.rule_id!r} must equal the file name stem {self.stem!r}",
                "rule-id-mismatch",
            )
        self._attack(rule)
        seen: set[str] = set()
        for i, kind in enumerate(rule.applies_to):
            if kind in seen:
                self.add(
                    ("applies_to", i),
                    f"source kind {kind!r} is listed twice",
                    "duplicate-kind",
                    Severity.WARNING,
                )
            seen.add(kind)
        self._field_catalogue(rule)
        try:
            compiled = compile_rule(rule, catalogue=self.catalogue)
        except CompileError as exc:
            self.add(exc.path, exc.message, exc.code)
            return self.report(rule)
        for path, _pattern in compiled.bounded_patterns:
            self.add(
                path,
                "pattern needs a backtracking engine (RE2 cannot run it); it will be searched with "
                "a hard time limit on a capped input, so matches on long inputs may be missed",
                "regex-backtracking",
                Severity.WARNING,
            )
        tests = self._inline_tests(rule, compiled)
        return self.report(rule, compiled, tests)

    def _text(self, data: dict[Any, Any]) -> bool:
        found = False
        for problem in text_problems(data):
            self.add(problem.path, problem.message, problem.code, key=problem.key)
            found = True
        return found

    def _lifter(self) -> bool:
        match = self.document.data.get("match")
        kind = match.get("kind") if isinstance(match, dict) else None
        return isinstance(kind, str) and kind.startswith(LIFTER_PREFIX)

    def _field_catalogue(self, rule: Rule) -> None:
        """Warn on kinds and fields the catalogue does not know: likely typos that would
        leave the rule silently dead (it would never see an event or a value)."""
        fields = self.validator.fields
        for i, kind in enumerate(rule.applies_to):
            if fields.kind(kind) is None:
                hint = fields.suggest_kind(kind)
                self.add(
                    ("applies_to", i),
                    f"source kind {kind!r} is not in the field catalogue"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + "; the rule only sees events published on ttp.event."
                    + kind,
                    "unknown-kind",
                    Severity.WARNING,
                )
        known = fields.fields_of(rule.applies_to)
        if not known:
            return  # no kind of the rule is catalogued: nothing to check fields against
        kinds = "/".join(k for k in rule.applies_to if fields.kind(k) is not None)
        named: list[tuple[tuple[Any, ...], str]] = [
            (("evidence_fields", i), path) for i, path in enumerate(rule.evidence_fields)
        ]
        if not isinstance(rule.match, ExternalMatch):
            named[:0] = _leaf_fields(rule.match, ("match",))
        for where, path in named:
            if path in known or path.split(".", 1)[0] in known:
                continue
            hint = suggest_field(path.split(".", 1)[0], known)
            self.add(
                where,
                f"field {path!r} is not a payload field of {kinds} in the field catalogue"
                + (f" (did you mean {hint!r}?)" if hint else ""),
                "unknown-field",
                Severity.WARNING,
            )

    def _unknown_keys(self, data: dict[Any, Any]) -> None:
        for key in data:
            if key in RULE_KEYS:
                continue
            hint = difflib.get_close_matches(str(key), sorted(RULE_KEYS), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.add(
                (key,),
                f"unknown key {key!r} is ignored{suffix}",
                "unknown-key",
                Severity.WARNING,
                key=True,
            )

    def _schema_error(self, error: Any) -> None:
        loc = tuple(error["loc"])
        path = self.document.resolve_loc(loc)
        kind = error["type"]
        label = _label(path) or "rule"
        value = error.get("input")
        ctx = error.get("ctx") or {}
        if kind == "missing":
            self.add(
                path,
                f"missing required key {loc[-1]!r}" + (f" in {label}" if path else ""),
                "schema",
            )
            return
        if kind == "greater_than_equal" and loc[-1:] == ("confidence",) and not self._lifter():
            self.add(path, f"{label} must be > 0, found {value!r}", "schema")
            return
        if kind == ZERO_CONFIDENCE:
            where = self.document.resolve_loc(("emits", ctx.get("index", 0), "confidence"))
            message = (
                f'{_label(where)} must be > 0, found 0 (0 is the "never emits a fresh tag" '
                "sentinel of lifter rules, `match.kind: lifter:<name>`, only)"
            )
            self.add(where, message, "schema")
            return
        if kind == "extra_forbidden":
            key = loc[-1]
            hint = difflib.get_close_matches(str(key), _NESTED_KEYS, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.add(
                path,
                f"unknown key {key!r} in {_label(path[:-1]) or 'rule'}{suffix}",
                "schema",
                key=True,
            )
            return
        self.add(path, _schema_message(kind, label, value, ctx, error["msg"]), "schema")

    def _attack(self, rule: Rule) -> None:
        catalogue = self.catalogue
        version = catalogue.version
        for i, emit in enumerate(rule.emits):
            where = ("emits", i)
            if catalogue.tactic(emit.tactic) is None:
                self.add(
                    (*where, "tactic"),
                    f"unknown tactic {emit.tactic} in ATT&CK v{version}",
                    "attack-unknown",
                )
            for key in ("technique_id", "sub_technique_id"):
                technique_id = getattr(emit, key)
                if technique_id is None:
                    continue
                technique = catalogue.technique(technique_id)
                if technique is None:
                    self.add(
                        (*where, key),
                        f"unknown technique {technique_id} in ATT&CK v{version}",
                        "attack-unknown",
                    )
                elif technique.revoked:
                    replacement = f"; use {technique.revoked_by}" if technique.revoked_by else ""
                    self.add(
                        (*where, key),
                        f"{technique_id} ({technique.name}) is revoked in "
                        f"ATT&CK v{version}{replacement}",
                        "attack-revoked",
                    )
                elif technique.deprecated:
                    self.add(
                        (*where, key),
                        f"{technique_id} ({technique.name}) is deprecated in ATT&CK v{version}",
                        "attack-deprecated",
                        Severity.WARNING,
                    )
                elif (
                    catalogue.tactic(emit.tactic) is not None
                    and emit.tactic not in technique.tactics
                ):
                    self.add(
                        (*where, "tactic"),
                        f"{technique_id} is not listed under tactic {emit.tactic} "
                        f"in ATT&CK v{version} "
                        f"(it is under {', '.join(technique.tactics) or 'no tactic'})",
                        "attack-tactic",
                        Severity.WARNING,
                    )

    def _inline_tests(self, rule: Rule, compiled: CompiledRule) -> tuple[TestOutcome, ...]:
        if not rule.tests:
            return ()
        if compiled.is_external:
            self.add(
                ("tests",),
                "inline tests of external (lifter) rules are not run by the built-in engine",
                "tests-external",
                Severity.WARNING,
            )
            return ()
        index = RuleIndex.build([compiled])
        outcomes: list[TestOutcome] = []
        for number, test in enumerate(rule.tests):
            kind = test.source_kind or rule.applies_to[0]
            if kind not in rule.applies_to:
                self.add(
                    ("tests", number, "source_kind"),
                    f"source_kind {kind!r} is not in applies_to",
                    "tests-kind",
                )
                continue
            fired = bool(
                index.evaluate(
                    {"source_kind": kind, "source_id": "inline-test", "payload": test.event}
                )
            )
            outcome = TestOutcome(number + 1, test.expect, fired, kind)
            outcomes.append(outcome)
            if not outcome.passed:
                verb = "did not fire" if test.expect == "fire" else "fired"
                self.add(
                    ("tests", number),
                    f"inline test {number + 1} expects {test.expect} "
                    f"but the rule {verb} on this {kind} event",
                    "test-failed",
                )
        return tuple(outcomes)


def _leaf_fields(node: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """(path of the `field` key, field) of every leaf under `node` that names a field."""
    found: list[tuple[tuple[Any, ...], str]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(node, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, AllOf | AnyOf):
            key = "all" if isinstance(current, AllOf) else "any"
            children = current.all if isinstance(current, AllOf) else current.any
            stack.extend((child, (*where, key, i)) for i, child in enumerate(children))
        elif isinstance(current, NotOf):
            stack.append((current.not_, (*where, "not")))
        elif isinstance(current, Leaf) and current.field is not None:
            found.append(((*where, "field"), current.field))
    return sorted(found, key=lambda item: [str(step) for step in item[0]])


def _label(path: tuple[Any, ...]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _schema_message(kind: str, label: str, value: Any, ctx: dict[str, Any], fallback: str) -> str:
    found = _type_name(value)
    expected = {
        "string_type": "text",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "bool_type": "true or false",
        "list_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
    }.get(kind)
    if expected is not None:
        hint = " (quote it)" if expected == "text" and isinstance(value, int | float | bool) else ""
        return f"{label} must be {expected}, found {found}{hint}"
    if kind == "string_pattern_mismatch":
        return f"{label} {value!r} does not match {ctx.get('pattern')}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        if kind == "too_short" and bound == 1:
            return f"{label} must not be empty"
        word = "at least" if kind == "too_short" else "at most"
        return f"{label} must have {word} {bound} item(s) or character(s)"
    if kind == "string_too_long":
        length = f"{len(value):,} characters long" if isinstance(value, str) else "too long"
        return f"{label} is {length}; at most {ctx.get('max_length'):,} characters"
    comparisons = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in comparisons:
        bound = next(iter(ctx.values()), "?")
        return f"{label} must be {comparisons[kind]} {bound}, found {value!r}"
    if kind == "literal_error":
        return f"{label} must be one of {ctx.get('expected')}, found {value!r}"
    if kind == "value_error":
        return fallback.removeprefix("Value error, ")
    return f"{label}: {fallback}"
