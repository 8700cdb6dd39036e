"""The compiled, immutable rule index and event evaluation.

Per source kind, the linear leaves reading the same field sit in RE2 `Filter`s
(FilteredRE2), sharded by rule: a literal-atom set picks candidate patterns and only
those run, each with RE2's own fallback, so a match is never missed. Texts of a few KB
go to RE2 sets instead (see `ShardSet`), whose last, always-matching pattern tells a
complete answer from a DFA that ran out of memory (RE2 then reports no match at all);
an incomplete answer falls back to the filters.

Every change builds a new index that shares everything the change did not touch (other
kinds, other fields of the same kind) and is published by swapping one reference, so a
reader always evaluates against one whole index.
"""

from __future__ import annotations

import logging
import reprlib
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import islice
from typing import Any, Final

import msgspec
import re2

from ttp_core.engine.compiler import CompiledRule, KindProgram
from ttp_core.engine.fields import MAX_MATCH_TEXT, MISSING, as_text, resolve, scalars
from ttp_core.engine.patterns import BoundedPattern, compile_bounded, re2_options
from ttp_core.engine.state import ENABLED, RuleState, StateKind
from ttp_core.engine.tags import Tag, tag_uuid_after, tag_uuid_prefix
from ttp_core.rules.digest import ruleset_digest
from ttp_core.rules.model import Rule

MAX_EVIDENCE_TEXT: Final = 1024
MAX_EVIDENCE_ITEMS: Final = 32
_log = logging.getLogger(__name__)

LifterEvaluator = Callable[[Rule, Mapping[str, Any]], bool]
"""Decides whether an external (`lifter:`) rule fires on an event."""

_Target = tuple[str, int, bool]
_OPTIONS: Final = re2_options()
CACHED_TEXT_MAX: Final = 512
"""Texts up to this length have their filter results cached per field matcher."""
SHARD_PATTERNS: Final = 64
"""Patterns per filter shard: a rule change recompiles about this many, not the field's all."""
CACHE_ENTRIES: Final = 4096
"""Cached texts per field matcher; the cache starts over when full."""
SET_TEXT_MAX: Final = 8192
"""Longer uncached texts, up to this many UTF-8 bytes, are matched by RE2 sets (one pass
per `SET_SHARDS` shards) rather than the filters. A filter runs in full every pattern one
of whose literal atoms occurs in the text, and on command lines of a few KB most patterns
have a short atom that does: 12 of the starter pack's 45 on a 4 KB `echo -ne` chain,
~85 us, where one set pass takes ~8 us (at 1000 rules: ~110 us for one set per shard,
~11 us for one set of the field's 489 patterns)."""
SET_SHARDS: Final = 8
"""Shards (about 512 patterns) per RE2 set: a rule change recompiles the set of its shard."""
_SET_OPTIONS: Final = re2_options()
_SET_OPTIONS.max_mem = 8 << 20  # a set that runs out of DFA memory gives up early (see below)


_Entries = dict[str, tuple[int, list[tuple[str, _Target]]]]
"""One field's linear leaves, by rule_id: (the rule's shard key, [(RE2 pattern, target)])."""


class FilterShard:
    """One RE2 filter over the patterns of the rules whose id hashes to this shard.

    The filter compiles on first use (or in `RuleIndex.compile_filters`): building an
    index is then mostly Python bookkeeping, and a worker holding 100,000 rules does not
    compile, before it can serve, shards that its traffic may take minutes to reach.

    Compiling also classifies patterns a rule compiled without the check brought
    (`compile_rule(..., check_patterns=False)`): one RE2 refuses is searched by the bounded
    backtracking engine on each text the filter sees; one no engine accepts (only a forged
    rule message can hold it) never matches and is logged at ERROR and counted
    (`unusable_patterns`), so no event fails because of it.
    """

    __slots__ = ("_bounded", "_found", "_matcher", "patterns", "refused", "targets")

    def __init__(self, patterns: tuple[str, ...], targets: tuple[tuple[_Target, ...], ...]) -> None:
        self.patterns = patterns
        self.targets = targets
        self._matcher: Any = None
        self._found = targets
        """Targets by filter index: `targets` without those of the refused patterns."""
        self._bounded: tuple[tuple[BoundedPattern, tuple[_Target, ...]], ...] = ()
        self.refused: frozenset[str] = frozenset()
        """Patterns the filter did not take (set when it compiles)."""

    @classmethod
    def build(cls, entries: Iterable[tuple[str, _Target]]) -> FilterShard | None:
        by_regex: dict[str, list[_Target]] = {}
        for regex, target in entries:
            by_regex.setdefault(regex, []).append(target)
        if not by_regex:
            return None
        return cls(tuple(by_regex), tuple(tuple(t) for t in by_regex.values()))

    @property
    def pending(self) -> bool:
        return self._matcher is None

    def compile(self) -> None:
        _ = self.matcher

    @property
    def matcher(self) -> Any:
        """The compiled filter (compiled now if it was not yet)."""
        matcher = self._matcher
        if matcher is None:
            matcher = re2.Filter()
            found: list[tuple[_Target, ...]] = []
            bounded: list[tuple[BoundedPattern, tuple[_Target, ...]]] = []
            refused: list[str] = []
            for regex, targets in zip(self.patterns, self.targets, strict=True):
                try:
                    matcher.Add(regex, _OPTIONS)
                except Exception:  # re2.error; a forged text may not even encode
                    refused.append(regex)
                    fallback = _bounded_fallback(regex, targets)
                    if fallback is not None:
                        bounded.append((fallback, targets))
                    continue
                found.append(targets)
            matcher.Compile()
            if refused:
                self._found = tuple(found)
                self._bounded = tuple(bounded)
                self.refused = frozenset(refused)
            # Two threads racing here compile twice and keep either: both are the same filter
            # (the attributes above are set before it, so a reader of it sees them).
            self._matcher = matcher
        return matcher

    def lookup(self, data: bytes, text: str, into: set[_Target]) -> None:
        matcher = self.matcher
        if len(text) <= MAX_MATCH_TEXT:
            found = matcher.Match(data)
        else:
            found = matcher.Match(text[:MAX_MATCH_TEXT])
            if found:
                # The cut is not the end of the value: `$`, `\z` and `\b` must not match there.
                # RE2 given the next character as context (endpos < len) confirms each hit.
                context = text[: MAX_MATCH_TEXT + 1]
                found = [i for i in found if matcher.re(i).search(context, 0, MAX_MATCH_TEXT)]
        if found:
            targets = self._found
            for i in found:
                into.update(targets[i])
        if self._bounded:
            self.search_bounded(text, into)

    def search_bounded(self, text: str, into: set[_Target]) -> None:
        """Add the targets of the refused patterns the bounded engine finds in `text`."""
        for pattern, targets in self._bounded:
            if pattern.search(text):
                into.update(targets)


_unusable = 0


def unusable_patterns() -> int:
    """How many patterns this process found no engine for (each leaf never matches)."""
    return _unusable


def _bounded_fallback(regex: str, targets: tuple[_Target, ...]) -> BoundedPattern | None:
    """The bounded pattern for a pattern RE2 refused, or None (logged) if none accepts it."""
    global _unusable  # noqa: PLW0603 - a process-wide diagnostic count
    try:
        # A leaf's pattern reaches the filter as "(?i)" + pattern when it ignores case: the
        # bounded engine reads that flag as `compile_bounded(pattern, True)` does.
        return compile_bounded(regex)
    except Exception as exc:  # PatternError, or anything a forged text may raise
        _unusable += 1
        _log.error(
            "a rule pattern is accepted by no engine: its leaf never matches",
            extra={
                "pattern": regex[:200],
                "rules": sorted({rule_id for rule_id, _, _ in targets}),
                "error": str(exc)[:200],
            },
        )
        return None


class ShardSet:
    """One RE2 set over the patterns of up to SET_SHARDS consecutive shards of a field,
    plus a last pattern that matches every text; compiled on first use."""

    __slots__ = ("_bounded", "_set", "_targets", "shards")

    def __init__(self, shards: tuple[FilterShard | None, ...]) -> None:
        self.shards = shards
        self._set: Any = None
        self._targets: tuple[tuple[_Target, ...], ...] = ()
        self._bounded: tuple[FilterShard, ...] = ()
        """Shards with patterns RE2 refused: their bounded engine searches beside the set."""

    @property
    def pending(self) -> bool:
        return self._set is None

    def compile(self) -> None:
        """Compile the set now; if RE2 cannot build it, the shards' filters answer instead."""
        if self._set is not None:
            return
        shards = [shard for shard in self.shards if shard is not None]
        targets: list[tuple[_Target, ...]] = []
        bounded: list[FilterShard] = []
        try:
            pattern_set = re2.Set.SearchSet(_SET_OPTIONS)
            for shard in shards:
                for regex, shard_targets in zip(shard.patterns, shard.targets, strict=True):
                    try:
                        pattern_set.Add(regex)
                    except Exception:
                        # The shard's filter decides (compiling it if it has not): a pattern
                        # it refused too is its bounded engine's; any other fails the set.
                        shard.compile()
                        if regex not in shard.refused:
                            raise
                        if not bounded or bounded[-1] is not shard:
                            bounded.append(shard)
                        continue
                    targets.append(shard_targets)
            pattern_set.Add(r"\z")
            pattern_set.Compile()
        except Exception:
            pattern_set, bounded = False, []
        self._targets = tuple(targets)
        self._bounded = tuple(bounded)
        self._set = pattern_set

    def lookup(self, data: bytes, text: str, into: set[_Target]) -> None:
        if self._set is None:
            self.compile()
        found = self._set.Match(data) if self._set else None
        # RE2 answers no match at all when the set's DFA ran out of memory: the last
        # pattern matches every text, so only an answer holding it is a complete one.
        if not found:
            for shard in self.shards:
                if shard is not None:
                    shard.lookup(data, text, into)
            return
        targets = self._targets
        last = len(targets)
        for i in found:
            if i != last:
                into.update(targets[i])
        for shard in self._bounded:
            shard.search_bounded(text, into)


def _shard_sets(
    shards: tuple[FilterShard | None, ...], old: tuple[ShardSet, ...] = ()
) -> tuple[ShardSet, ...]:
    """Sets over `shards`, SET_SHARDS at a time; each of `old` over the same shards is kept."""
    sets = []
    for number, start in enumerate(range(0, len(shards), SET_SHARDS)):
        group = shards[start : start + SET_SHARDS]
        kept = old[number] if number < len(old) else None
        if kept is None or kept.shards != group:  # shards compare by identity
            kept = ShardSet(group)
        sets.append(kept)
    return tuple(sets)


def shard_key(rule_id: str) -> int:
    """What places a rule's patterns in a field's shards: its key modulo their number."""
    return zlib.crc32(rule_id.encode())


# A msgspec struct, not a frozen dataclass: built on every uncached text (each long one), and
# a frozen dataclass's __init__ sets each field through object.__setattr__. Not tracked by the
# garbage collector (gc=False): it holds frozensets of strings only and is never in a cycle.
class Hits(msgspec.Struct, frozen=True, gc=False):
    """What one text of one field matched, split the way `KindIndex.fired` consumes it."""

    fired: frozenset[str]
    """Rules whose whole tree is the matched leaf: they fire."""
    ordered: tuple[str, ...]
    """`fired` in rule id order (the answer when nothing else matched)."""
    leaves: frozenset[tuple[str, int]]
    """(rule_id, leaf number) of matched leaves of rules with a larger tree."""
    candidates: frozenset[str]
    """The rules of `leaves`: their trees decide."""

    @classmethod
    def of(cls, targets: set[_Target]) -> Hits:
        if not targets:
            return NO_HITS
        # One plain loop: three generator expressions cost a frame each.
        simple: list[str] = []
        other: list[tuple[str, int]] = []
        for rule_id, leaf, is_simple in targets:
            if is_simple:
                simple.append(rule_id)
            else:
                other.append((rule_id, leaf))
        fired = frozenset(simple)
        leaves = frozenset(other)
        return cls(fired, tuple(sorted(fired)), leaves, frozenset([r for r, _ in other]))


NO_HITS: Final = Hits(frozenset(), (), frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class FieldMatcher:
    """All linear leaves of one source kind that read one field.

    The patterns are split over shards of about SHARD_PATTERNS by rule_id, so a rule
    change recompiles one shard's filter, not the whole field's.
    """

    field: str
    parts: tuple[str, ...]
    shards: tuple[FilterShard | None, ...]
    patterns: int
    sets: tuple[ShardSet, ...] = ()
    """Sets over the shards for texts of a few KB; () makes new ones (none compiled)."""
    cache: dict[str, Hits] = dataclass_field(default_factory=dict, compare=False, repr=False)
    """Results by text: honeypot traffic repeats itself (the same usernames, `uname -a`)."""
    head: str = dataclass_field(init=False, repr=False, compare=False)
    child: str | None = dataclass_field(init=False, repr=False, compare=False)
    """For a two-part path (`headers.user-agent`): its parts, read without `resolve`."""

    def __post_init__(self) -> None:
        if not self.sets:
            object.__setattr__(self, "sets", _shard_sets(self.shards))
        object.__setattr__(self, "head", self.parts[0])
        object.__setattr__(self, "child", self.parts[1] if len(self.parts) == 2 else None)

    @classmethod
    def build(cls, field: str, parts: tuple[str, ...], entries: _Entries) -> FieldMatcher:
        patterns = sum(len(items) for _, items in entries.values())
        count = max(1, -(-patterns // SHARD_PATTERNS))
        buckets: list[list[tuple[str, _Target]]] = [[] for _ in range(count)]
        for key, items in entries.values():
            buckets[key % count].extend(items)
        return cls(field, parts, tuple(FilterShard.build(b) for b in buckets), patterns)

    def replaced(self, entries: _Entries, changed: set[str]) -> FieldMatcher:
        """This field with `entries` (all of it, as it now is), recompiling only the shards
        that hold a `changed` rule; a field that grew or shrank a lot is rebuilt whole."""
        patterns = sum(len(items) for _, items in entries.values())
        count = len(self.shards)
        if patterns > 2 * count * SHARD_PATTERNS or patterns * 4 < count * SHARD_PATTERNS:
            return FieldMatcher.build(self.field, self.parts, entries)
        dirty = {shard_key(rule_id) % count for rule_id in changed}
        buckets: dict[int, list[tuple[str, _Target]]] = {i: [] for i in dirty}
        for key, items in entries.values():
            shard = key % count
            if shard in buckets:
                buckets[shard].extend(items)
        shards = tuple(
            FilterShard.build(buckets[i]) if i in buckets else shard
            for i, shard in enumerate(self.shards)
        )
        return FieldMatcher(
            self.field, self.parts, shards, patterns, _shard_sets(shards, self.sets)
        )

    def read(self, payload: Mapping[str, Any]) -> Any:
        """The field's value in `payload` (see `fields.resolve`), or MISSING."""
        value = payload.get(self.field, MISSING)
        if value is not MISSING or len(self.parts) == 1:
            return value
        if self.child is not None:
            parent = payload.get(self.head, MISSING)
            if parent.__class__ is dict:
                return parent.get(self.child, MISSING)
            if parent is MISSING:
                return MISSING
        return resolve(payload, self.field, self.parts)

    def collect(self, value: Any, into: list[Hits]) -> None:
        """Append the non-empty `Hits` of a value of the field (a text, a scalar, a list)."""
        if value is MISSING or value is None:
            return
        if value.__class__ is str:
            hits = self.match(value)
            if hits is not NO_HITS:
                into.append(hits)
            return
        for scalar in scalars(value):
            text = scalar if isinstance(scalar, str) else as_text(scalar)
            if text is not None:
                hits = self.match(text)
                if hits is not NO_HITS:
                    into.append(hits)

    def match(self, text: str) -> Hits:
        if len(text) > CACHED_TEXT_MAX:
            return self._lookup(text)
        cached = self.cache.get(text)
        if cached is None:
            cached = self._lookup(text)
            if len(self.cache) >= CACHE_ENTRIES:
                self.cache.clear()
            self.cache[text] = cached
        return cached

    def _lookup(self, text: str) -> Hits:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates are valid in JSON but not in UTF-8: match them as U+FFFD.
            text = text.encode("utf-8", "replace").decode("utf-8")
            data = text.encode("utf-8")
        found: set[_Target] = set()
        if CACHED_TEXT_MAX < len(data) <= SET_TEXT_MAX:
            for shard_set in self.sets:
                shard_set.lookup(data, text, found)
        else:
            for shard in self.shards:
                if shard is not None:
                    shard.lookup(data, text, found)
        return Hits.of(found)


class KindIndex:
    """Programs of every built-in rule that applies to one source kind."""

    __slots__ = ("_always", "_fields", "_reads", "matchers", "programs")

    def __init__(
        self, programs: Mapping[str, KindProgram], fields: Mapping[str, FieldMatcher]
    ) -> None:
        self.programs = dict(programs)
        self._fields = dict(fields)
        self.matchers = tuple(self._fields.values())
        # What `fired` reads per matcher, unpacked once per event rather than loaded as
        # attributes: the field, its first part and (for a two-part path, else None) its second,
        # whether the path is longer, and the matcher's result cache (cleared, never replaced).
        self._reads = tuple(
            (m.field, m.head, m.child, len(m.parts) > 2, m.cache, m) for m in self.matchers
        )
        self._always = tuple(sorted(rid for rid, p in self.programs.items() if not p.needs_hit))

    @classmethod
    def build(cls, programs: Mapping[str, KindProgram]) -> KindIndex:
        return cls(programs, _build_fields(programs.values(), None))

    def replaced(self, removed: Iterable[str], added: Iterable[KindProgram]) -> KindIndex | None:
        """A new index without `removed` and with `added`; only touched shards recompile."""
        programs = dict(self.programs)
        touched: set[str] = set()
        changed: set[str] = set()
        for rule_id in removed:
            old = programs.pop(rule_id, None)
            if old is not None:
                touched.update(_linear_fields(old))
                changed.add(rule_id)
        for program in added:
            old = programs.get(program.rule_id)
            if old is not None:
                touched.update(_linear_fields(old))
            touched.update(_linear_fields(program))
            programs[program.rule_id] = program
            changed.add(program.rule_id)
        if not programs:
            return None
        fields = {name: fm for name, fm in self._fields.items() if name not in touched}
        entries, parts = _field_entries(programs.values(), touched)
        for name, by_rule in sorted(entries.items()):
            current = self._fields.get(name)
            fields[name] = (
                current.replaced(by_rule, changed)
                if current is not None
                else FieldMatcher.build(name, parts[name], by_rule)
            )
        return KindIndex(programs, dict(sorted(fields.items())))

    def fired(self, payload: Mapping[str, Any]) -> Sequence[str]:
        """Rule ids whose match tree holds for `payload`, in rule id order."""
        # Made on the first hit only: most events hit nothing, and a list per event is an
        # allocation the garbage collector counts.
        found: list[Hits] | None = None
        missing, no_hits, cached_max = MISSING, NO_HITS, CACHED_TEXT_MAX
        # Matchers are in field name order, so `headers.cookie`, `headers.host`... follow
        # each other and read `headers` once.
        head: str | None = None
        parent: Any = missing
        for field, parent_key, child, deep, cache, matcher in self._reads:
            value = payload.get(field, missing)
            if value is missing:
                if child is not None:
                    if parent_key != head:
                        head, parent = parent_key, payload.get(parent_key, missing)
                    if parent.__class__ is dict:
                        value = parent.get(child, missing)
                    elif parent is not missing:
                        value = matcher.read(payload)
                    else:
                        continue
                elif deep:
                    value = matcher.read(payload)
                else:
                    continue
            if value.__class__ is str and len(value) <= cached_max:
                # The usual case inlined: one short text, most often already in the cache.
                hits = cache.get(value)
                if hits is None:
                    hits = matcher.match(value)
                if hits is not no_hits:
                    if found is None:
                        found = [hits]
                    else:
                        found.append(hits)
            elif value is not missing:
                if found is None:
                    found = []
                matcher.collect(value, found)
        if not found:
            return self._decide([], payload) if self._always else ()
        if len(found) == 1 and not self._always and not found[0].candidates:
            return found[0].ordered  # the usual fire: rules whose one leaf matched
        return self._decide(found, payload)

    def _decide(self, found: list[Hits], payload: Mapping[str, Any]) -> list[str]:
        """The rules that fire given the `found` hits: theirs, and those whose tree holds."""
        always = self._always
        fired: set[str]
        leaves: frozenset[tuple[str, int]]
        candidates: frozenset[str]
        if not found:
            fired, leaves, candidates = set(), frozenset(), frozenset(always)
        elif len(found) == 1:
            only = found[0]
            fired = set(only.fired)
            leaves = only.leaves
            candidates = only.candidates.union(always) if always else only.candidates
        else:
            fired = set()
            merged: set[tuple[str, int]] = set()
            wanted: set[str] = set(always)
            for hits in found:
                fired |= hits.fired
                merged |= hits.leaves
                wanted |= hits.candidates
            leaves, candidates = frozenset(merged), frozenset(wanted)
        programs = self.programs
        for rule_id in candidates:
            if rule_id not in fired and programs[rule_id].test(payload, leaves):
                fired.add(rule_id)
        return sorted(fired)


def _linear_fields(program: KindProgram) -> set[str]:
    return {leaf.field for _, leaf in program.linear}


def _field_entries(
    programs: Iterable[KindProgram], only: set[str] | None
) -> tuple[dict[str, _Entries], dict[str, tuple[str, ...]]]:
    entries: dict[str, _Entries] = {}
    parts: dict[str, tuple[str, ...]] = {}
    for program in programs:
        rule_id, simple = program.rule_id, program.simple
        key = -1
        for number, leaf in program.linear:
            field = leaf.field
            if only is None or field in only:
                if key < 0:
                    key = shard_key(rule_id)
                by_rule = entries.get(field)
                if by_rule is None:
                    by_rule = entries[field] = {}
                    parts[field] = leaf.parts
                own = by_rule.get(rule_id)
                if own is None:
                    own = by_rule[rule_id] = (key, [])
                own[1].append((leaf.regex, (rule_id, number, simple)))
    return entries, parts


def _build_fields(
    programs: Iterable[KindProgram], only: set[str] | None
) -> dict[str, FieldMatcher]:
    entries, parts = _field_entries(programs, only)
    return {
        name: FieldMatcher.build(name, parts[name], by_rule)
        for name, by_rule in sorted(entries.items())
    }


class RuleIndex:
    """An immutable snapshot of compiled rules and their operator states.

    `with_changes` returns a new snapshot; holders swap their reference to it.
    """

    __slots__ = ("_kinds", "_lifted", "_lifters", "_rules", "_states")

    def __init__(
        self,
        rules: Mapping[str, CompiledRule],
        states: Mapping[str, RuleState],
        kinds: Mapping[str, KindIndex],
        lifters: Mapping[str, LifterEvaluator],
    ) -> None:
        self._rules = rules
        self._states = states
        self._kinds = kinds
        self._lifters = lifters
        lifted: dict[str, list[CompiledRule]] = {}
        for compiled in rules.values() if lifters else ():
            if compiled.is_external and _lifter_name(compiled) in lifters:
                for kind in compiled.kinds:
                    lifted.setdefault(kind, []).append(compiled)
        self._lifted = {kind: tuple(items) for kind, items in lifted.items()}

    @classmethod
    def empty(cls, lifters: Mapping[str, LifterEvaluator] | None = None) -> RuleIndex:
        return cls({}, {}, {}, dict(lifters or {}))

    @classmethod
    def build(
        cls,
        rules: Iterable[CompiledRule],
        states: Mapping[str, RuleState] | None = None,
        lifters: Mapping[str, LifterEvaluator] | None = None,
    ) -> RuleIndex:
        """Build a whole index at once (a snapshot): every field compiles once."""
        by_id = {compiled.rule_id: compiled for compiled in rules}
        per_kind: dict[str, dict[str, KindProgram]] = {}
        for compiled in by_id.values():
            for kind, program in compiled.programs.items():
                per_kind.setdefault(kind, {})[compiled.rule_id] = program
        kinds = {kind: KindIndex.build(programs) for kind, programs in per_kind.items()}
        return cls(by_id, dict(states or {}), kinds, dict(lifters or {}))

    def with_changes(
        self,
        upserts: Iterable[CompiledRule] = (),
        removals: Iterable[str] = (),
        states: Mapping[str, RuleState | None] | None = None,
    ) -> RuleIndex:
        """A new index with rules replaced or removed and states set (None clears)."""
        rules = dict(self._rules)
        removed_by_kind: dict[str, set[str]] = {}
        added_by_kind: dict[str, list[KindProgram]] = {}
        for rule_id in removals:
            old = rules.pop(rule_id, None)
            if old is not None:
                for kind in old.programs:
                    removed_by_kind.setdefault(kind, set()).add(rule_id)
        # The last upsert of a rule_id wins; an earlier one must not leave its programs behind.
        for compiled in {c.rule_id: c for c in upserts}.values():
            old = rules.get(compiled.rule_id)
            if old is not None:
                for kind in old.programs.keys() - compiled.programs.keys():
                    removed_by_kind.setdefault(kind, set()).add(compiled.rule_id)
            rules[compiled.rule_id] = compiled
            for kind, program in compiled.programs.items():
                added_by_kind.setdefault(kind, []).append(program)
        kinds = dict(self._kinds)
        for kind in removed_by_kind.keys() | added_by_kind.keys():
            current = kinds.get(kind)
            if current is None:
                current = KindIndex({}, {})
            updated = current.replaced(removed_by_kind.get(kind, ()), added_by_kind.get(kind, ()))
            if updated is None:
                kinds.pop(kind, None)
            else:
                kinds[kind] = updated
        new_states = dict(self._states)
        for rule_id, state in (states or {}).items():
            if state is None:
                new_states.pop(rule_id, None)
            else:
                new_states[rule_id] = state
        return RuleIndex(rules, new_states, kinds, self._lifters)

    def compile_filters(self, budget_s: float | None = None) -> bool:
        """Compile what is not compiled yet (every filter, then every shard's set for long
        texts); True once nothing is left.

        Evaluation compiles what it first needs itself, so this is never required for
        correct results: it moves that cost out of the first events (a worker calls it
        before or between batches). With `budget_s`, stops once that many seconds passed.
        """
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        for part in self._compiled_parts():
            if part.pending:
                if deadline is not None and time.perf_counter() >= deadline:
                    return False
                part.compile()
        return True

    def pending_filters(self) -> int:
        """Filters and sets that will compile on first use (see `compile_filters`)."""
        return sum(1 for part in self._compiled_parts() if part.pending)

    def _compiled_parts(self) -> Iterator[FilterShard | ShardSet]:
        """Every field's filters, then every field's sets (a set is needed more rarely)."""
        matchers = [matcher for kind in self._kinds.values() for matcher in kind.matchers]
        for matcher in matchers:
            yield from (shard for shard in matcher.shards if shard is not None)
        for matcher in matchers:
            yield from matcher.sets

    def rule(self, rule_id: str) -> CompiledRule | None:
        return self._rules.get(rule_id)

    def state(self, rule_id: str) -> RuleState:
        return self._states.get(rule_id, ENABLED)

    @property
    def rules(self) -> Mapping[str, CompiledRule]:
        return self._rules

    @property
    def states(self) -> Mapping[str, RuleState]:
        return self._states

    def counts(self, now: float | None = None) -> dict[str, int]:
        """`rules` held, `active` (built-in and not disabled now), `external`."""
        moment = time.time() if now is None else now
        external = sum(1 for c in self._rules.values() if c.is_external)
        disabled = sum(
            1
            for rule_id, compiled in self._rules.items()
            if not compiled.is_external
            and rule_id in self._states
            and self._states[rule_id].effective(moment) is StateKind.DISABLED
        )
        total = len(self._rules)
        return {"rules": total, "active": total - external - disabled, "external": external}

    def digest(self) -> str:
        """The rule-set digest (`ttp_core.rules.digest`): equal iff same rules and states."""
        return ruleset_digest(
            ((rule_id, c.content_sha256) for rule_id, c in self._rules.items()),
            (
                (rule_id, s.state.value, s.confidence_max, s.expires_at)
                for rule_id, s in self._states.items()
            ),
        )

    def evaluate(self, event: Mapping[str, Any], now: float | None = None) -> list[Tag]:
        """Tags for one event `{source_kind, source_id, payload}`; never raises on bad input."""
        if event.__class__ is not dict and not isinstance(event, Mapping):
            return []
        kind = event.get("source_kind")
        if kind.__class__ is not str:
            return []
        payload = event.get("payload")
        if payload.__class__ is not dict and not isinstance(payload, Mapping):
            return []
        index = self._kinds.get(kind)
        fired = index.fired(payload) if index is not None else ()
        lifted = self._lifted.get(kind)
        if lifted:
            fired = [*fired, *self._run_lifters(lifted, event)]
        if not fired:
            return []
        source_id = event.get("source_id")
        if source_id.__class__ is not str:
            source_id = "" if source_id is None else _text(source_id)
        return self._tags(kind, source_id, payload, fired, now)

    def _run_lifters(self, lifted: tuple[CompiledRule, ...], event: Mapping[str, Any]) -> list[str]:
        fired = []
        for compiled in lifted:
            evaluator = self._lifters[_lifter_name(compiled)]
            try:
                if evaluator(compiled.rule, event):
                    fired.append(compiled.rule_id)
            except Exception:
                # A third-party evaluator must never stop tagging; its failure is logged.
                _log.exception(
                    "lifter %s failed on rule %s", _lifter_name(compiled), compiled.rule_id
                )
        return fired

    def _tags(
        self,
        kind: str,
        source_id: str,
        payload: Mapping[str, Any],
        fired: Sequence[str],
        now: float | None,
    ) -> list[Tag]:
        tags: list[Tag] = []
        rules, states = self._rules, self._states
        prefix = tag_uuid_prefix(kind, source_id)
        # Rules citing the same evidence fields share one copy of it (per event); the map
        # is made only once a second rule fires (most events fire one).
        first_spec: Any = None
        first_evidence: dict[str, Any] = {}
        evidence_of: dict[tuple[tuple[str, tuple[str, ...]], ...], dict[str, Any]] | None = None
        for rule_id in fired:
            compiled = rules[rule_id]
            state = states.get(rule_id) if states else None
            moment = 0.0
            if state is not None:
                moment = time.time() if now is None else now
                if state.effective(moment) is StateKind.DISABLED:
                    continue
            spec = compiled.evidence
            if first_spec is None:
                first_spec = spec
                evidence = first_evidence = _evidence(payload, spec)
            elif spec == first_spec:
                evidence = first_evidence
            else:
                if evidence_of is None:
                    evidence_of = {}
                found = evidence_of.get(spec)
                if found is None:
                    found = evidence_of[spec] = _evidence(payload, spec)
                evidence = found
            for emit in compiled.emits:
                confidence = (
                    emit.confidence if state is None else state.apply(emit.confidence, moment)
                )
                if confidence is None or confidence <= 0:
                    # 0 is a lifter rule's sentinel: it fires but never emits a tag of its own.
                    continue
                tags.append(
                    Tag(
                        tag_uuid_after(prefix, emit.uuid_suffix),
                        emit.rule_id,
                        emit.rule_version,
                        emit.tactic,
                        emit.technique_id,
                        emit.sub_technique_id,
                        confidence,
                        evidence,
                        emit.attack_version,
                        emit.mitre_url,
                    )
                )
        return tags


def _lifter_name(compiled: CompiledRule) -> str:
    match = compiled.rule.match
    return str(getattr(match, "lifter", ""))


def _evidence(
    payload: Mapping[str, Any], fields: tuple[tuple[str, tuple[str, ...]], ...]
) -> dict[str, Any]:
    evidence: dict[str, Any] = {}
    for name, parts in fields:
        value = payload.get(name, MISSING)
        if value is MISSING:
            if len(parts) == 1:
                continue
            value = resolve(payload, name, parts)
            if value is MISSING:
                continue
        if value.__class__ is str and len(value) <= MAX_EVIDENCE_TEXT:
            evidence[name] = value  # the usual case: a short text is its own bounded copy
        else:
            evidence[name] = _bounded(value, 2)
    return evidence


def _bounded(value: Any, depth: int) -> Any:
    """A JSON-safe copy of `value` small enough to travel in every tag."""
    if isinstance(value, str):
        return value[:MAX_EVIDENCE_TEXT]
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth <= 0:
        return _text(value)[:MAX_EVIDENCE_TEXT]
    if value.__class__ is dict and len(value) <= MAX_EVIDENCE_ITEMS:
        # The usual JSON object (HTTP headers): short text keys and values only. A copy in C
        # and a check of it cost half of the item by item copy below, which gives the same.
        plain = value.copy()
        for k, v in plain.items():
            if (
                k.__class__ is not str
                or v.__class__ is not str
                or len(k) > MAX_EVIDENCE_TEXT
                or len(v) > MAX_EVIDENCE_TEXT
            ):
                break
        else:
            return plain
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for k, v in islice(value.items(), MAX_EVIDENCE_ITEMS):
            # Short text keys and values (the usual JSON object) are their own bounded copies.
            short_key = k.__class__ is str and len(k) <= MAX_EVIDENCE_TEXT
            key = k if short_key else str(k)[:MAX_EVIDENCE_TEXT]
            short = v.__class__ is str and len(v) <= MAX_EVIDENCE_TEXT
            copy[key] = v if short else _bounded(v, depth - 1)
        return copy
    if isinstance(value, list | tuple):
        return [_bounded(v, depth - 1) for v in value[:MAX_EVIDENCE_ITEMS]]
    return _text(value)[:MAX_EVIDENCE_TEXT]


_REPR: Final = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = MAX_EVIDENCE_TEXT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = MAX_EVIDENCE_ITEMS


def _text(value: Any) -> str:
    """`str(value)` for scalars; a depth- and size-bounded rendering of anything else.

    `str()` of a container recurses once per nesting level (RecursionError on a deeply
    nested event, which JSON allows) and renders all of it.
    """
    if isinstance(value, str | int | float | bool):
        return str(value)
    return _REPR.repr(value)
