"""Benchmark of the rule engine (`RuleIndex`): throughput, naive baseline, worst case, builds.

Run from the repository root:

    PYTHONPATH=shared:services python -m bench.engine [--quick] [--profile]

It prints human-readable figures and, as the last line of stdout, one JSON object holding
every figure. It is a benchmark, not a test: targets are printed as PASS/MISS and the exit
status is 0 unless the script itself fails.

What is measured
1. `RuleIndex.evaluate` throughput (events/s, one thread) over a seeded synthetic corpus of
   honeypot events (`bench/corpus.py`) at 60, 250 and 1000 rules, median over repetitions,
   and per-event latency percentiles from `perf_counter_ns` around single calls.
2. The same events and rule sets through a naive loop (per event, per rule of its kind, walk
   the rule's match tree: regex and string leaves with stdlib `re.search` on precompiled
   patterns, other leaves with the engine's own `DirectLeaf.test`), and the ratio.
   The engine builds `Tag` objects for fired rules; the naive loop only returns rule ids,
   so the ratio slightly favours the naive loop.
3. The worst single-event `evaluate` time over pathological inputs (1 KB, 16 KB, 64 KB)
   built for every leaf of every starter-pack rule, on the starter-pack index and on the
   1000-rule index, with a correctness cross-check against per-rule RE2 searches.
4. `RuleIndex.build` of 1000 and 10,000 rules, alone (filters compile on first use) and
   with every filter compiled, the index's memory (process RSS) at 10,000 rules, and
   `with_changes` replacing one rule (timed with its shard recompiled).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import json
import os
import platform
import pstats
import re
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import re2
import yaml

from ttp_core.attack import load_catalogue
from ttp_core.engine.compiler import (
    ALL,
    ANY,
    LEAF,
    CompiledRule,
    DirectLeaf,
    LinearLeaf,
    Node,
    compile_rule,
)
from ttp_core.engine.index import RuleIndex
from ttp_core.rules.model import Rule
from ttp_core.rules.validator import RuleValidator

try:
    from bench import corpus
except ImportError:  # run as `python bench/engine.py`: bench/ itself is on sys.path
    import corpus  # type: ignore[no-redef,import-not-found]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
SIZES: Final = (60, 250, 1000)
SCALE_RULES: Final = 10_000
"""Rules of the large build measured in section 4 (a new worker's cold start)."""
PATHO_SIZES: Final = (1024, 16 * 1024, 64 * 1024)
MAX_TEXT: Final = 65536
"""Characters of one field the engine reads (`ttp_core.engine.fields.MAX_MATCH_TEXT`)."""

TARGET_EPS_60: Final = 300_000
TARGET_RATIO_60: Final = 20.0
TARGET_EPS_1000: Final = 150_000
TARGET_WORST_MS: Final = 10.0

Event = dict[str, Any]
Evaluator = Callable[[Event], Any]


@dataclass(frozen=True, slots=True)
class Settings:
    """How much work each section does; `--quick` trades precision for a run under 30 s."""

    events: int
    reps: int
    latency_sample: int
    naive_events: int
    naive_reps: int
    patho_retime: int
    patho_reps: int
    patho_big_index_all: bool
    patho_check_max: int
    """Largest input checked against the per-rule RE2 reference (the check costs more than
    the engine on long inputs)."""
    build_reps: int
    replace_reps: int
    scale_reps: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                events=8_000,
                reps=3,
                latency_sample=3_000,
                naive_events=300,
                naive_reps=1,
                patho_retime=10,
                patho_reps=5,
                patho_big_index_all=False,
                patho_check_max=16 * 1024,
                build_reps=3,
                replace_reps=5,
                scale_reps=3,
            )
        return cls(
            events=30_000,
            reps=5,
            latency_sample=10_000,
            naive_events=1_500,
            naive_reps=3,
            patho_retime=30,
            patho_reps=9,
            patho_big_index_all=True,
            patho_check_max=64 * 1024,
            build_reps=7,
            replace_reps=25,
            scale_reps=5,
        )


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


_SECTION_STARTS: list[tuple[str, float]] = []


def section(title: str) -> None:
    """Print a section header and remember when the section started."""
    _SECTION_STARTS.append((title.split(" ", 1)[0].rstrip("."), time.perf_counter()))
    print()
    print(f"== {title} " + "=" * max(0, 92 - len(title)))


def section_seconds(end: float) -> dict[str, float]:
    """Wall seconds spent in each section so far."""
    ends = [start for _, start in _SECTION_STARTS[1:]] + [end]
    return {
        name: round(stop - start, 2)
        for (name, start), stop in zip(_SECTION_STARTS, ends, strict=True)
    }


def fired_ids(tags: Iterable[Any]) -> frozenset[str]:
    return frozenset(tag.rule_id for tag in tags)


def timed_loop(fn: Evaluator, events: Sequence[Event]) -> tuple[float, float]:
    """(wall, CPU) seconds to run `fn` over `events` once, garbage collected first.

    CPU time (`process_time`) is what this process consumed; on a machine shared with other
    busy processes the wall time also counts the time the scheduler gave to them.
    """
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for event in events:
        fn(event)
    return time.perf_counter() - wall, time.process_time() - cpu


def rates(fn: Evaluator, events: Sequence[Event], reps: int) -> tuple[list[float], list[float]]:
    """Events/s by wall time and by CPU time, one value per repetition."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(reps):
        w, c = timed_loop(fn, events)
        wall.append(len(events) / w)
        cpu.append(len(events) / max(c, 1e-9))
    return wall, cpu


# --------------------------------------------------------------------------------------------
# Rule sets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSets:
    starter: list[CompiledRule]
    generated: list[CompiledRule]
    rejected: list[str]
    sets: dict[int, list[CompiledRule]]
    validate_s: float


def load_rule_sets(rules_dir: Path, seed: int) -> RuleSets:
    """Starter pack from `rules_dir` plus generated rules, validated like any rule file."""
    validator = RuleValidator()
    start = time.perf_counter()
    reports = validator.validate_tree(rules_dir) if rules_dir.exists() else []
    starter = sorted(
        (r.compiled for r in reports if r.ok and r.compiled is not None), key=lambda c: c.rule_id
    )
    starter = [c for c in starter if not c.is_external]
    rejected = [
        f"{r.source}: {r.errors[0].message if r.errors else '?'}" for r in reports if not r.ok
    ]
    taken = {c.rule_id for c in starter}
    generated: list[CompiledRule] = []
    needed = max(SIZES) - min(len(starter), max(SIZES))
    for rule in corpus.generate_rules(needed + 10, seed=seed):
        if len(generated) >= needed:
            break
        if rule.rule_id in taken:
            continue
        report = validator.validate_bytes(
            rule.yaml_text.encode(), f"<generated {rule.rule_id}>", stem=rule.rule_id
        )
        if not report.ok or report.compiled is None:
            raise RuntimeError(f"generated rule {rule.rule_id} was rejected: {report.diagnostics}")
        generated.append(report.compiled)
    validate_s = time.perf_counter() - start
    sets: dict[int, list[CompiledRule]] = {}
    for size in SIZES:
        if size <= len(starter):
            # An evenly spread subset keeps every theme and source kind of the pack.
            step = len(starter) / size
            sets[size] = [starter[int(i * step)] for i in range(size)]
        else:
            sets[size] = starter + generated[: size - len(starter)]
    return RuleSets(starter, generated, rejected, sets, validate_s)


def has_pattern(compiled: CompiledRule) -> bool:
    for program in compiled.programs.values():
        for leaf in program.leaves:
            if isinstance(leaf, LinearLeaf) or (
                isinstance(leaf, DirectLeaf) and leaf.operator == "pattern"
            ):
                return True
    return False


# --------------------------------------------------------------------------------------------
# Naive evaluation (and an RE2 per-rule reference for correctness checks)
# --------------------------------------------------------------------------------------------

Search = Callable[[str], Any]


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def field_texts(payload: Mapping[str, Any], field: str, parts: tuple[str, ...]) -> list[str]:
    """Texts of a (possibly dotted) field: a value, or each element of a list it crosses."""
    value = payload.get(field)
    if value is None and len(parts) > 1:
        nodes: list[Any] = [payload]
        for part in parts:
            following: list[Any] = []
            for node in nodes:
                if isinstance(node, Mapping) and part in node:
                    following.append(node[part])
                elif isinstance(node, list):
                    following.extend(e[part] for e in node if isinstance(e, Mapping) and part in e)
            nodes = following
        values: list[Any] = nodes
    else:
        values = [value]
    out: list[str] = []
    for item in values:
        for scalar in item if isinstance(item, list) else (item,):
            text = _scalar_text(scalar)
            if text is not None:
                out.append(text)
    return out


def stdlib_search(regex: str) -> tuple[Search, str]:
    """A stdlib `re` search for an RE2 expression; falls back to RE2 if `re` cannot take it."""
    translated = regex.replace("\\z", "\\Z")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(translated, re.ASCII).search, "re"
    except (re.error, FutureWarning, DeprecationWarning):
        return re2.compile(regex).search, "re2-fallback"


def re2_search(regex: str) -> tuple[Search, str]:
    return re2.compile(regex).search, "re2"


@dataclass(frozen=True, slots=True)
class NaiveLeaf:
    field: str
    parts: tuple[str, ...]
    search: Search | None
    direct: DirectLeaf | None

    def test(self, payload: Mapping[str, Any]) -> bool:
        if self.search is None:
            return self.direct is not None and self.direct.test(payload)
        search = self.search
        return any(
            search(text) is not None for text in field_texts(payload, self.field, self.parts)
        )


@dataclass(frozen=True, slots=True)
class NaiveRule:
    rule_id: str
    tree: Node
    leaves: tuple[NaiveLeaf, ...]

    def fires(self, payload: Mapping[str, Any]) -> bool:
        return self._eval(self.tree, payload)

    def _eval(self, node: Node, payload: Mapping[str, Any]) -> bool:
        kind, arg = node
        if kind == LEAF:
            return self.leaves[arg].test(payload)
        if kind == ALL:
            return all(self._eval(child, payload) for child in arg)
        if kind == ANY:
            return any(self._eval(child, payload) for child in arg)
        return not self._eval(arg, payload)


class NaiveEngine:
    """Per event: every rule of its kind, each leaf searched on its own."""

    def __init__(
        self, rules: Iterable[CompiledRule], make_search: Callable[[str], tuple[Search, str]]
    ) -> None:
        self.by_kind: dict[str, list[NaiveRule]] = defaultdict(list)
        self.engines: Counter[str] = Counter()
        cache: dict[str, Search] = {}
        for compiled in sorted(rules, key=lambda c: c.rule_id):
            for kind, program in compiled.programs.items():
                leaves = []
                for leaf in program.leaves:
                    if isinstance(leaf, LinearLeaf):
                        if leaf.regex not in cache:
                            cache[leaf.regex], engine = make_search(leaf.regex)
                            self.engines[engine] += 1
                        leaves.append(NaiveLeaf(leaf.field, leaf.parts, cache[leaf.regex], None))
                    else:
                        leaves.append(NaiveLeaf(leaf.field, leaf.parts, None, leaf))
                self.by_kind[kind].append(NaiveRule(compiled.rule_id, program.tree, tuple(leaves)))

    def fired(self, event: Event) -> list[str]:
        payload = event["payload"]
        return [
            rule.rule_id
            for rule in self.by_kind.get(event["source_kind"], ())
            if rule.fires(payload)
        ]


# --------------------------------------------------------------------------------------------
# 1 + 2: throughput, latency, naive comparison
# --------------------------------------------------------------------------------------------


def measure_throughput(index: RuleIndex, events: Sequence[Event], reps: int) -> dict[str, Any]:
    evaluate = index.evaluate
    timed_loop(evaluate, events[: min(len(events), 2000)])  # warm-up
    wall, cpu = rates(evaluate, events, reps)
    return {
        "events_per_s_median": statistics.median(wall),
        "events_per_s_min": min(wall),
        "events_per_s_max": max(wall),
        "cpu_events_per_s_median": statistics.median(cpu),
        "reps": reps,
        "events": len(events),
    }


def timer_overhead_ns() -> float:
    samples = []
    for _ in range(20_000):
        start = time.perf_counter_ns()
        samples.append(time.perf_counter_ns() - start)
    return float(statistics.median(samples))


def measure_latency(index: RuleIndex, events: Sequence[Event]) -> dict[str, Any]:
    """Per-event wall time of single `evaluate` calls (includes ~timer overhead)."""
    evaluate = index.evaluate
    samples: list[tuple[int, str, bool]] = []
    clock = time.perf_counter_ns
    gc.collect()
    for event in events:
        start = clock()
        tags = evaluate(event)
        elapsed = clock() - start
        samples.append((elapsed, event["source_kind"], bool(tags)))
    all_us = [s[0] / 1000 for s in samples]

    def stats(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {
            "n": len(values),
            "mean_us": statistics.fmean(values),
            "p50_us": percentile(values, 50),
            "p99_us": percentile(values, 99),
            "max_us": max(values),
        }

    by_kind = {
        kind: stats([s[0] / 1000 for s in samples if s[1] == kind])
        for kind in sorted({s[1] for s in samples})
    }
    return {
        "p50_us": percentile(all_us, 50),
        "p90_us": percentile(all_us, 90),
        "p99_us": percentile(all_us, 99),
        "p999_us": percentile(all_us, 99.9),
        "max_us": max(all_us),
        "mean_us": statistics.fmean(all_us),
        "fired": stats([s[0] / 1000 for s in samples if s[2]]),
        "not_fired": stats([s[0] / 1000 for s in samples if not s[2]]),
        "by_kind": by_kind,
    }


def compare_naive(
    index: RuleIndex, rules: list[CompiledRule], events: Sequence[Event], reps: int
) -> dict[str, Any]:
    naive = NaiveEngine(rules, stdlib_search)
    evaluate = index.evaluate
    timed_loop(evaluate, events[:200])
    timed_loop(naive.fired, events[: min(50, len(events))])
    engine_wall, engine_cpu = rates(evaluate, events, max(reps, 3))
    naive_wall, naive_cpu = rates(naive.fired, events, reps)
    engine_eps, naive_eps = statistics.median(engine_wall), statistics.median(naive_wall)
    engine_cpu_eps, naive_cpu_eps = statistics.median(engine_cpu), statistics.median(naive_cpu)

    # Correctness: the two must fire the same rules; disagreements are classified against
    # a per-rule RE2 search (the engine's own regex semantics) to tell engine misses from
    # stdlib-vs-RE2 dialect differences.
    reference: NaiveEngine | None = None
    engine_wrong: list[dict[str, Any]] = []
    dialect = 0
    for event in events:
        got = fired_ids(evaluate(event))
        expected = frozenset(naive.fired(event))
        if got == expected:
            continue
        reference = reference or NaiveEngine(rules, re2_search)
        truth = frozenset(reference.fired(event))
        if got != truth:
            engine_wrong.append(
                {
                    "source_id": event["source_id"],
                    "engine_only": sorted(got - truth),
                    "engine_missed": sorted(truth - got),
                }
            )
        else:
            dialect += 1
    return {
        "events": len(events),
        "engine_events_per_s": engine_eps,
        "naive_events_per_s": naive_eps,
        "ratio": engine_eps / naive_eps,
        "engine_cpu_events_per_s": engine_cpu_eps,
        "naive_cpu_events_per_s": naive_cpu_eps,
        "cpu_ratio": engine_cpu_eps / naive_cpu_eps,
        "naive_leaf_engines": dict(naive.engines),
        "mismatch_engine_vs_re2_reference": len(engine_wrong),
        "mismatch_examples": engine_wrong[:3],
        "mismatch_stdlib_dialect_only": dialect,
    }


def corpus_stats(events: Sequence[Event]) -> dict[str, Any]:
    kinds = Counter(e["source_kind"] for e in events)
    lengths = [
        len(e["payload"].get("command_text", "")) for e in events if e["source_kind"] == "command"
    ]
    return {
        "events": len(events),
        "kind_share": {k: round(v / len(events), 4) for k, v in kinds.most_common()},
        "command_text_len_mean": statistics.fmean(lengths) if lengths else 0.0,
        "command_text_len_p99": percentile(lengths, 99) if lengths else 0,
        "command_text_len_max": max(lengths) if lengths else 0,
    }


def fire_stats(index: RuleIndex, events: Sequence[Event]) -> dict[str, Any]:
    fired_by_kind: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    tags = 0
    for event in events:
        result = index.evaluate(event)
        kinds[event["source_kind"]] += 1
        if result:
            fired_by_kind[event["source_kind"]] += 1
            tags += len(result)
    fired = sum(fired_by_kind.values())
    return {
        "fire_rate": fired / len(events),
        "tags_per_event": tags / len(events),
        "tags_per_fired_event": tags / fired if fired else 0.0,
        "fire_rate_by_kind": {k: round(fired_by_kind[k] / n, 4) for k, n in sorted(kinds.items())},
    }


# --------------------------------------------------------------------------------------------
# 3: pathological inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attack:
    rule_id: str
    kind: str
    field: str
    parts: tuple[str, ...]
    label: str
    size: int
    text: str


def _leaf_pattern(leaf: LinearLeaf | DirectLeaf) -> str | None:
    if isinstance(leaf, LinearLeaf):
        return leaf.regex
    if leaf.operator == "pattern" and leaf.bounded is not None:
        return leaf.bounded.source
    if leaf.operator in ("equals", "in"):
        operands = leaf.operand if isinstance(leaf.operand, list) else [leaf.operand]
        words = [re.escape(o) for o in operands if isinstance(o, str) and o]
        return "(?:" + "|".join(words) + ")" if words else None
    return None


def build_attacks(starter: Iterable[CompiledRule], sizes: Sequence[int]) -> list[Attack]:
    """Attack inputs for every text leaf of every starter rule, deduplicated per field."""
    attacks: list[Attack] = []
    seen: set[tuple[str, str, int]] = set()
    for compiled in starter:
        for kind, program in sorted(compiled.programs.items()):
            for leaf in program.leaves:
                pattern = _leaf_pattern(leaf)
                if pattern is None:
                    continue
                for size in sizes:
                    for label, text in corpus.attack_strings(pattern, size):
                        key = (kind, leaf.field, hash(text))
                        if key in seen:
                            continue
                        seen.add(key)
                        attacks.append(
                            Attack(
                                compiled.rule_id, kind, leaf.field, leaf.parts, label, size, text
                            )
                        )
    return attacks


def _put(payload: dict[str, Any], parts: tuple[str, ...], text: str) -> None:
    node = payload
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    last = parts[-1]
    node[last] = [text] if isinstance(node.get(last), list) else text


def attack_event(
    attack: Attack, fields: Iterable[tuple[str, tuple[str, ...]]] | None = None
) -> Event:
    payload = corpus.base_payload(attack.kind, seed=3)
    for _field, parts in fields if fields is not None else [(attack.field, attack.parts)]:
        _put(payload, parts, attack.text)
    return {"source_kind": attack.kind, "source_id": f"patho_{attack.rule_id}", "payload": payload}


def _time_event(evaluate: Evaluator, event: Event, reps: int) -> tuple[float, float]:
    """(median, min) wall time in ms of `reps` single evaluate calls."""
    times = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        evaluate(event)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times), min(times)


def run_attacks(
    index: RuleIndex,
    rules: list[CompiledRule],
    attacks: Sequence[Attack],
    settings: Settings,
    check: bool,
) -> tuple[dict[str, Any], list[tuple[float, Attack]]]:
    """Time every input once, then re-time the slowest of each size (median of several calls).

    A single call can be inflated by preemption on a busy machine, so the worst case is
    taken from re-timed medians; the p50/p99 come from the single screening calls (an
    upper bound).
    """
    evaluate = index.evaluate
    reference = NaiveEngine(rules, re2_search) if check else None
    bounded_ids = {c.rule_id for c in rules if c.bounded_patterns}
    timings: list[tuple[float, Attack]] = []
    wrong: list[dict[str, Any]] = []
    gc.collect()
    for attack in attacks:
        event = attack_event(attack)
        start = time.perf_counter_ns()
        tags = evaluate(event)
        timings.append(((time.perf_counter_ns() - start) / 1e6, attack))
        if reference is not None and attack.size <= settings.patho_check_max:
            got = fired_ids(tags)
            truth = frozenset(reference.fired(event))
            # Bounded (backtracking) leaves may legitimately give up on long inputs.
            if (got ^ truth) - bounded_ids:
                wrong.append(
                    {
                        "rule": attack.rule_id,
                        "field": attack.field,
                        "label": attack.label,
                        "size": attack.size,
                        "engine_only": sorted(got - truth),
                        "engine_missed": sorted(truth - got),
                    }
                )
    minimum: dict[int, float] = {}

    def retime(i: int) -> None:
        attack = timings[i][1]
        median, fastest = _time_event(evaluate, attack_event(attack), settings.patho_reps)
        timings[i] = (median, attack)
        minimum[id(attack)] = fastest

    by_size: dict[int, list[int]] = defaultdict(list)
    for i, (_, attack) in enumerate(timings):
        by_size[attack.size].append(i)
    for indices in by_size.values():
        for i in sorted(indices, key=lambda i: -timings[i][0])[: settings.patho_retime]:
            retime(i)
        # A re-timed median can fall below a single-shot time that was not re-timed:
        # keep re-timing until the slowest input of the size is a re-timed one.
        while True:
            worst = max(indices, key=lambda i: timings[i][0])
            if id(timings[worst][1]) in minimum:
                break
            retime(worst)
    return summarise_attacks(timings, minimum, wrong if check else None), timings


def literal_soup(rules: Iterable[CompiledRule], size: int) -> list[Attack]:
    """Per (kind, field): the literal fragments of every rule on that field, repeated.

    Not aimed at one rule: it makes as many rules as possible pass the literal prefilter,
    so each of them then scans the whole input (the cross-rule worst case).
    """
    literals: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)
    parts: dict[str, tuple[str, ...]] = {}
    for compiled in rules:
        for kind, program in compiled.programs.items():
            for leaf in program.leaves:
                pattern = _leaf_pattern(leaf)
                if pattern is not None:
                    literals[(kind, leaf.field)].update(
                        dict.fromkeys(corpus.pattern_shape(pattern).literals)
                    )
                    parts[leaf.field] = leaf.parts
    attacks = []
    for (kind, field), found in sorted(literals.items()):
        if found:
            for label, glue in (("literal-soup", " "), ("literal-soup-glued", "")):
                text = (glue.join(found) + " ") * (size // (len(glue.join(found)) + 1) + 1)
                attacks.append(Attack("*", kind, field, parts[field], label, size, text[:size]))
    return attacks


def run_soup(index: RuleIndex, rules: list[CompiledRule], settings: Settings) -> dict[str, Any]:
    soup = literal_soup(rules, max(PATHO_SIZES))
    timed = [
        (_time_event(index.evaluate, attack_event(a), settings.patho_reps)[0], a) for a in soup
    ]
    worst_t, worst = max(timed, key=lambda x: x[0])
    return {
        "inputs": len(timed),
        "max_ms": worst_t,
        "worst": {"kind": worst.kind, "field": worst.field, "input": worst.label},
    }


def summarise_attacks(
    timings: Sequence[tuple[float, Attack]],
    minimum: Mapping[int, float],
    wrong: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"inputs": len(timings)}
    for size in sorted({a.size for _, a in timings}):
        values = [t for t, a in timings if a.size == size]
        worst_t, worst = max(((t, a) for t, a in timings if a.size == size), key=lambda x: x[0])
        result[str(size)] = {
            "inputs": len(values),
            "max_ms": worst_t,
            "max_min_ms": minimum.get(id(worst), worst_t),
            "p99_ms": percentile(values, 99),
            "p50_ms": percentile(values, 50),
            "worst": {
                "rule": worst.rule_id,
                "kind": worst.kind,
                "field": worst.field,
                "input": worst.label,
            },
        }
    if wrong is not None:
        result["mismatches_vs_re2_reference"] = len(wrong)
        result["mismatch_examples"] = wrong[:5]
    return result


def composite_attacks(
    index: RuleIndex,
    timings: Sequence[tuple[float, Attack]],
    starter: Iterable[CompiledRule],
    reps: int,
) -> dict[str, Any]:
    """The 5 slowest 64 KB inputs per kind, written into every text field of that kind at once."""
    fields: dict[str, dict[str, tuple[str, ...]]] = defaultdict(dict)
    for compiled in starter:
        for kind, program in compiled.programs.items():
            for leaf in program.leaves:
                if _leaf_pattern(leaf) is not None:
                    fields[kind][leaf.field] = leaf.parts
    biggest = max(a.size for _, a in timings)
    best: dict[str, list[tuple[float, Attack]]] = defaultdict(list)
    for t, attack in sorted(timings, key=lambda x: -x[0]):
        if attack.size == biggest and len(best[attack.kind]) < 5:
            best[attack.kind].append((t, attack))
    out: list[tuple[float, Attack, int]] = []
    for kind, items in best.items():
        for _, attack in items:
            event = attack_event(attack, fields[kind].items())
            out.append((_time_event(index.evaluate, event, reps)[0], attack, len(fields[kind])))
    if not out:
        return {}
    worst_t, worst, nfields = max(out, key=lambda x: x[0])
    return {
        "inputs": len(out),
        "max_ms": worst_t,
        "worst": {
            "kind": worst.kind,
            "fields": nfields,
            "input": worst.label,
            "from_rule": worst.rule_id,
        },
    }


# --------------------------------------------------------------------------------------------
# 4: builds
# --------------------------------------------------------------------------------------------


def _variant(compiled: CompiledRule) -> CompiledRule:
    """The same generated rule at version 2 with a changed pattern (a real content change)."""
    data = compiled.rule.normalised()
    match = data["match"]
    match["pattern"] = match["pattern"] + "|zq_bench_variant_\\d+"
    lines = [
        f"rule_id: {data['rule_id']}",
        "rule_version: 2",
        f"name: {data['name']}",
        f"applies_to: [{', '.join(data['applies_to'])}]",
        "match:",
        f"  field: {match['field']}",
        "  pattern: '" + match["pattern"].replace("'", "''") + "'",
        "emits:",
    ]
    for emit in data["emits"]:
        lines.append(f"  - tactic: {emit['tactic']}")
        lines.append(f"    technique_id: {emit['technique_id']}")
        if emit.get("sub_technique_id"):
            lines.append(f"    sub_technique_id: {emit['sub_technique_id']}")
        lines.append(f"    confidence: {emit['confidence']}")
    report = RuleValidator().validate_bytes(
        ("\n".join(lines) + "\n").encode(), "<variant>", stem=data["rule_id"]
    )
    if report.compiled is None:
        raise RuntimeError(f"variant of {compiled.rule_id} rejected: {report.diagnostics}")
    return report.compiled


def time_build(rules: list[CompiledRule], reps: int) -> dict[str, Any]:
    """`RuleIndex.build` alone (filters compile on first use) and followed by
    `compile_filters` (everything compiled, as a worker has it once its traffic touched
    every field), in wall and CPU ms, median of `reps`."""
    build_ms: list[float] = []
    full_ms: list[float] = []
    full_cpu_ms: list[float] = []
    for _ in range(reps):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        index = RuleIndex.build(rules)
        build_ms.append((time.perf_counter() - wall) * 1000)
        index.compile_filters()
        full_ms.append((time.perf_counter() - wall) * 1000)
        full_cpu_ms.append((time.process_time() - cpu) * 1000)
        del index  # freed here, not inside the next repetition's timing
    return {
        "rules": len(rules),
        "build_ms_median": statistics.median(build_ms),
        "build_ms_p99": percentile(build_ms, 99),
        "compiled_ms_median": statistics.median(full_ms),
        "compiled_cpu_ms_median": statistics.median(full_cpu_ms),
        "build_reps": reps,
    }


def rss_mib() -> float:
    """This process's resident set size now (Linux `/proc`; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_generated(count: int, seed: int) -> list[CompiledRule]:
    """`count` generated rules compiled straight from their YAML (no rule tests run: the
    validator's per-file work is the master's cost, not the index's)."""
    catalogue = load_catalogue()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    rules = []
    for generated in corpus.generate_rules(count, seed=seed, prefix="SCALE"):
        data = yaml.load(generated.yaml_text, loader)  # a safe loader (libyaml's when built)
        rules.append(compile_rule(Rule.model_validate(data), catalogue=catalogue))
    return rules


def measure_scale_build(count: int, seed: int, reps: int) -> dict[str, Any]:
    """Build time at `count` rules, and the process RSS holding them without an index, with
    one index built (filters pending) and with every filter of it compiled."""
    start = time.perf_counter()
    rules = compile_generated(count, seed)
    compile_s = time.perf_counter() - start
    gc.collect()
    # Memory first: the timed builds below free memory the measured index would then reuse.
    rss = {"rules_only": rss_mib()}
    index = RuleIndex.build(rules)
    rss["built"] = rss_mib()
    index.compile_filters()
    rss["compiled"] = rss_mib()
    filters = sum(len(m.shards) for kind in index._kinds.values() for m in kind.matchers)
    del index
    result = time_build(rules, reps)
    result.update(compile_rules_s=compile_s, rss_mib=rss, filters=filters)
    return result


def measure_builds(
    rules: list[CompiledRule], generated: list[CompiledRule], settings: Settings
) -> dict[str, Any]:
    result = time_build(rules, settings.build_reps)
    index = RuleIndex.build(rules)
    index.compile_filters()
    in_set = {c.rule_id for c in rules}
    per_field: dict[tuple[str, str], list[CompiledRule]] = defaultdict(list)
    per_field_count: Counter[tuple[str, str]] = Counter()
    for compiled in rules:
        for kind, program in compiled.programs.items():
            for leaf in program.leaves:
                if isinstance(leaf, LinearLeaf):
                    per_field_count[(kind, leaf.field)] += 1
    for compiled in generated:
        if compiled.rule_id in in_set:
            kind = compiled.rule.applies_to[0]
            field = compiled.programs[kind].leaves[0].field
            per_field[(kind, field)].append(compiled)
    ranked = [key for key, _ in per_field_count.most_common() if per_field.get(key)]
    for label, key in (("hot_field", ranked[0]), ("cold_field", ranked[-1])):
        candidates = per_field[key][: settings.replace_reps]
        variants = [_variant(c) for c in candidates]
        index.with_changes(upserts=[variants[0]]).compile_filters()  # warm-up
        samples = []
        for i in range(settings.replace_reps):
            variant = variants[i % len(variants)]
            gc.collect()
            start = time.perf_counter()
            # Timed with the recompiled shard: what the first event after the change pays.
            index.with_changes(upserts=[variant]).compile_filters()
            samples.append((time.perf_counter() - start) * 1000)
        result[f"replace_{label}"] = {
            "kind": key[0],
            "field": key[1],
            "rules_on_field": per_field_count[key],
            "ms_median": statistics.median(samples),
            "ms_p99": percentile(samples, 99),
            "reps": len(samples),
        }
    return result


# --------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------


def profile_evaluate(index: RuleIndex, events: Sequence[Event], top: int = 18) -> str:
    profiler = cProfile.Profile()
    evaluate = index.evaluate
    profiler.enable()
    for event in events:
        evaluate(event)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the TTP rule engine (RuleIndex).")
    parser.add_argument("--quick", action="store_true", help="smaller run, under 30 s")
    parser.add_argument(
        "--rules", type=Path, default=REPO_ROOT / "rules", help="starter rule pack directory"
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus seed")
    parser.add_argument("--rule-seed", type=int, default=7, help="generated-rules seed")
    parser.add_argument("--events", type=int, default=None, help="override corpus size")
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of evaluate at 60 and 1000 rules"
    )
    args = parser.parse_args(argv)
    settings = Settings.for_mode(args.quick)
    if args.events:
        settings = dataclasses.replace(settings, events=args.events)
    wall = time.perf_counter()
    figures: dict[str, Any] = {"mode": "quick" if args.quick else "full", "seed": args.seed}

    section("setup")
    rule_sets = load_rule_sets(args.rules, args.rule_seed)
    events = corpus.generate_events(settings.events, seed=args.seed)
    stats = corpus_stats(events)
    environment = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "google_re2": _version("google-re2"),
    }
    print(
        f"python {environment['python']} on {environment['platform']}, {environment['cpus']} CPUs, "
        f"google-re2 {environment['google_re2']}"
    )
    print(
        f"starter pack: {len(rule_sets.starter)} rules from {args.rules} "
        f"({sum(map(has_pattern, rule_sets.starter))} with a regex leaf, "
        f"{sum(1 for c in rule_sets.starter if c.bounded_patterns)} with a bounded backtracking "
        "leaf), "
        f"{len(rule_sets.rejected)} rejected"
    )
    for line in rule_sets.rejected[:5]:
        print(f"  rejected: {line}")
    print(
        f"generated: {len(rule_sets.generated)} single-pattern rules; validating everything took "
        f"{rule_sets.validate_s:.2f} s"
    )
    for size in SIZES:
        rules = rule_sets.sets[size]
        kinds = Counter(k for c in rules for k in c.programs)
        print(
            f"  set {size:>4}: {len(rules)} rules, {sum(map(has_pattern, rules))} with regex; "
            f"per kind {dict(kinds)}"
        )
    print(
        f"corpus: {stats['events']} events, mix {stats['kind_share']}, command_text mean "
        f"{stats['command_text_len_mean']:.0f} chars (p99 {stats['command_text_len_p99']}, "
        f"max {stats['command_text_len_max']})"
    )
    figures.update(
        environment=environment,
        corpus=stats,
        starter_rules=len(rule_sets.starter),
        rejected_rules=rule_sets.rejected,
        validate_s=rule_sets.validate_s,
    )

    indexes = {size: RuleIndex.build(rule_sets.sets[size]) for size in SIZES}
    for index in indexes.values():
        index.compile_filters()  # evaluation is timed, not each filter's first-use compile

    section("1. evaluate throughput (single thread) and per-event latency")
    overhead = timer_overhead_ns()
    print(f"timer overhead per latency sample ~{overhead:.0f} ns (included in latency figures)")
    throughput: dict[str, Any] = {}
    latency_events = events[: settings.latency_sample]
    for size in SIZES:
        index = indexes[size]
        result = measure_throughput(index, events, settings.reps)
        result.update(fire_stats(index, events))
        result["latency"] = measure_latency(index, latency_events)
        throughput[str(size)] = result
        lat = result["latency"]
        print(
            f"{size:>5} rules: {fmt_rate(result['events_per_s_median'])} ev/s median wall "
            f"(min {fmt_rate(result['events_per_s_min'])}, "
            f"max {fmt_rate(result['events_per_s_max'])}), "
            f"{fmt_rate(result['cpu_events_per_s_median'])} ev/s per CPU-second; "
            f"{settings.reps} reps x {len(events)} events"
        )
        print(
            f"             fire rate {result['fire_rate']:.1%}, "
            f"{result['tags_per_fired_event']:.2f} tags per fired event"
        )
        print(
            f"             latency p50 {lat['p50_us']:.1f} us, p99 {lat['p99_us']:.1f} us, "
            f"p99.9 {lat['p999_us']:.1f} us, max {lat['max_us']:.1f} us; mean fired "
            f"{lat['fired'].get('mean_us', 0):.1f} us vs not fired "
            f"{lat['not_fired'].get('mean_us', 0):.1f} us"
        )
        per_kind = ", ".join(
            f"{k} {v['mean_us']:.1f}/{v['p99_us']:.1f}" for k, v in lat["by_kind"].items()
        )
        print(f"             per kind mean/p99 us: {per_kind}")
        print(f"             fire rate by kind: {result['fire_rate_by_kind']}")
    figures["throughput"] = throughput

    section("2. naive loop (stdlib re per rule) vs engine, same events")
    print(
        "naive = for each rule of the event's kind, walk its match tree; regex/string leaves use "
        "stdlib re.search (re.ASCII, precompiled),\n        other leaves (in/equals/numbers, "
        "bounded "
        "backtracking patterns) call the engine's DirectLeaf.test. Naive returns rule ids only;\n"
        "        the engine also builds tags (so the ratio is conservative)."
    )
    naive: dict[str, Any] = {}
    naive_events = events[: settings.naive_events]
    for size in SIZES:
        result = compare_naive(
            indexes[size], rule_sets.sets[size], naive_events, settings.naive_reps
        )
        naive[str(size)] = result
        print(
            f"{size:>5} rules: engine {fmt_rate(result['engine_events_per_s'])} ev/s, naive "
            f"{fmt_rate(result['naive_events_per_s'])} ev/s -> ratio {result['ratio']:.1f}x wall, "
            f"{result['cpu_ratio']:.1f}x CPU ({result['events']} events)"
        )
        print(
            f"             naive leaf engines {result['naive_leaf_engines']}; "
            "engine-vs-RE2-reference "
            f"mismatches {result['mismatch_engine_vs_re2_reference']}, stdlib-dialect-only "
            f"{result['mismatch_stdlib_dialect_only']}"
        )
        for example in result["mismatch_examples"]:
            print(f"             mismatch: {example}")
    figures["naive"] = naive

    section("3. worst single-event evaluate time over pathological inputs")
    attacks = build_attacks(rule_sets.starter, PATHO_SIZES)
    print(
        f"{len(attacks)} distinct inputs for {len(rule_sets.starter)} starter rules, sizes "
        f"{', '.join(str(s) for s in PATHO_SIZES)} chars; each input timed once, the "
        f"{settings.patho_retime} slowest of each size re-timed "
        f"(median of {settings.patho_reps} calls);\n"
        f"engine result checked against per-rule RE2 searches (inputs up to "
        f"{settings.patho_check_max} chars)"
    )
    patho: dict[str, Any] = {}
    starter_index = RuleIndex.build(rule_sets.starter)
    starter_index.compile_filters()
    result, timings = run_attacks(starter_index, rule_sets.starter, attacks, settings, check=True)
    result["composite"] = composite_attacks(
        starter_index, timings, rule_sets.starter, settings.patho_reps
    )
    result["soup"] = run_soup(starter_index, rule_sets.starter, settings)
    patho["starter"] = result
    _print_patho("starter pack index", result)
    big = max(SIZES)
    if settings.patho_big_index_all:
        big_attacks = [a for a in attacks if a.size == max(PATHO_SIZES)]
    else:
        big_attacks = [a for _, a in sorted(timings, key=lambda x: -x[0])[:40]]
    result, big_timings = run_attacks(
        indexes[big], rule_sets.sets[big], big_attacks, settings, check=not args.quick
    )
    result["composite"] = composite_attacks(
        indexes[big], big_timings, rule_sets.starter, settings.patho_reps
    )
    result["soup"] = run_soup(indexes[big], rule_sets.sets[big], settings)
    patho[str(big)] = result
    _print_patho(
        f"{big}-rule index ("
        + ("all 64 KB inputs" if settings.patho_big_index_all else "the 40 slowest inputs")
        + ")",
        result,
    )
    figures["pathological"] = patho

    section("4. index build and incremental replace")
    builds = measure_builds(rule_sets.sets[big], rule_sets.generated, settings)
    builds["scale"] = measure_scale_build(SCALE_RULES, args.rule_seed, settings.scale_reps)
    for build in (builds, builds["scale"]):
        print(
            f"RuleIndex.build({build['rules']} rules): median {build['build_ms_median']:.1f} ms, "
            f"p99 {build['build_ms_p99']:.1f} ms; with everything compiled (compile_filters) "
            f"{build['compiled_ms_median']:.1f} ms (CPU {build['compiled_cpu_ms_median']:.1f} ms); "
            f"{build['build_reps']} reps"
        )
    scale = builds["scale"]
    rss = scale["rss_mib"]
    print(
        f"  {scale['rules']} rules (compiled from YAML in {scale['compile_rules_s']:.1f} s): "
        f"process RSS {rss['rules_only']:.0f} MiB holding the compiled rules, "
        f"{rss['built']:.0f} MiB with the index built, {rss['compiled']:.0f} MiB with the "
        f"filters and sets of all its {scale['filters']} shards compiled"
    )
    for label in ("replace_hot_field", "replace_cold_field"):
        r = builds[label]
        print(
            f"with_changes(upserts=[one rule]) + compile_filters on {r['kind']}.{r['field']} "
            f"({r['rules_on_field']} leaves on that field): median {r['ms_median']:.2f} ms, "
            f"p99 {r['ms_p99']:.2f} ms ({r['reps']} reps)"
        )
    figures["build"] = builds

    if args.profile:
        for size in (min(SIZES), big):
            section(f"profile: evaluate over the corpus at {size} rules (cProfile, tottime)")
            print(profile_evaluate(indexes[size], events[: min(len(events), 20_000)]).rstrip())

    section("targets")
    print(
        "judged on wall-clock figures; the CPU-time figure (this process only) is given next to "
        "each, and is the better\nestimate of the engine's own speed when other processes load "
        "the machine"
    )
    low, big_key = str(min(SIZES)), str(big)
    eps60, cpu60 = (throughput[low][k] for k in ("events_per_s_median", "cpu_events_per_s_median"))
    ratio60, cpu_ratio60 = naive[low]["ratio"], naive[low]["cpu_ratio"]
    eps1000, cpu1000 = (
        throughput[big_key][k] for k in ("events_per_s_median", "cpu_events_per_s_median")
    )
    worst64 = max(
        patho[name].get(str(max(PATHO_SIZES)), {}).get("max_ms", 0.0)
        for name in ("starter", big_key)
    )
    targets = {
        "eps_60": {
            "value": eps60,
            "cpu_value": cpu60,
            "target": TARGET_EPS_60,
            "pass": eps60 >= TARGET_EPS_60,
        },
        "ratio_60": {
            "value": ratio60,
            "cpu_value": cpu_ratio60,
            "target": TARGET_RATIO_60,
            "pass": ratio60 >= TARGET_RATIO_60,
        },
        "eps_1000": {
            "value": eps1000,
            "cpu_value": cpu1000,
            "target": TARGET_EPS_1000,
            "pass": eps1000 >= TARGET_EPS_1000,
        },
        "worst_64k_ms": {
            "value": worst64,
            "target": TARGET_WORST_MS,
            "pass": worst64 < TARGET_WORST_MS,
        },
    }
    print(
        f"{verdict(targets['eps_60']['pass'])}  >= {fmt_rate(TARGET_EPS_60)} ev/s at {low} rules: "
        f"{fmt_rate(eps60)} (CPU-time: {fmt_rate(cpu60)})"
    )
    print(
        f"{verdict(targets['ratio_60']['pass'])}  >= {TARGET_RATIO_60:.0f}x naive at {low} rules: "
        f"{ratio60:.1f}x (CPU-time: {cpu_ratio60:.1f}x)"
    )
    print(
        f"{verdict(targets['eps_1000']['pass'])}  >= {fmt_rate(TARGET_EPS_1000)} ev/s "
        f"at {big} rules: "
        f"{fmt_rate(eps1000)} (CPU-time: {fmt_rate(cpu1000)})"
    )
    print(
        f"{verdict(targets['worst_64k_ms']['pass'])}  worst case < {TARGET_WORST_MS:.0f} ms "
        "at 64 KB: "
        f"{worst64:.2f} ms (median of {settings.patho_reps} calls)"
    )
    figures["targets"] = targets
    now = time.perf_counter()
    figures["wall_s"] = now - wall
    figures["section_s"] = section_seconds(now)
    print(f"total wall time {figures['wall_s']:.1f} s; per section {figures['section_s']}")
    print(json.dumps(figures, sort_keys=True, default=str))
    return 0


def _print_patho(title: str, result: Mapping[str, Any]) -> None:
    print(f"{title}: {result['inputs']} inputs")
    for size in PATHO_SIZES:
        r = result.get(str(size))
        if r is None:
            continue
        w = r["worst"]
        print(
            f"  {size:>6} chars: max {r['max_ms']:.3f} ms (fastest call {r['max_min_ms']:.3f}), "
            f"p99 {r['p99_ms']:.3f} ms, p50 {r['p50_ms']:.3f} ms "
            f"over {r['inputs']} inputs; worst: rule {w['rule']} {w['kind']}.{w['field']} "
            f"input {w['input']}"
        )
    composite = result.get("composite")
    if composite:
        w = composite["worst"]
        print(
            f"  composite (slowest 64 KB inputs in all {w['fields']} text fields of {w['kind']} "
            "at once): "
            f"max {composite['max_ms']:.3f} ms (input {w['input']} from {w['from_rule']})"
        )
    soup = result.get("soup")
    if soup:
        w = soup["worst"]
        print(
            f"  literal soup (literals of all rules on a field, 64 KB; not in the target): "
            f"max {soup['max_ms']:.3f} ms on {w['kind']}.{w['field']} ({w['input']})"
        )
    if "mismatches_vs_re2_reference" in result:
        print(
            "  engine vs per-rule RE2 reference: "
            f"{result['mismatches_vs_re2_reference']} mismatching inputs"
        )
        for example in result["mismatch_examples"]:
            print(f"    mismatch: {example}")


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
