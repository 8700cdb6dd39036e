"""ATT&CK Navigator layers: which techniques the rules cover, and which were observed.

A layer is the JSON document MITRE's ATT&CK Navigator opens (layer format 4.5, domain
``enterprise-attack``, ``versions.attack`` = the packaged catalogue's release). Two are built
here, from plain entries the caller collected, without any I/O:

- :func:`coverage_layer`: one :class:`CoverageEntry` per emit of a rule in force; a
  technique's score is the best confidence of those rules, its comment lists their ids.
- :func:`observed_layer`: one :class:`ObservedEntry` per technique seen in a window; a
  technique's score is how many tags named it, on a logarithmic scale (see below), its
  comment gives the exact count, the window and the best confidence.

Scores are whole numbers from 0 to 100. The format allows any number, but MITRE's own
layer library (``mitreattack.navlayers``) reads a score as an integer (a confidence of 0.9
would become 0) and builds one colour per unit of the gradient's range (a range of a
million tags takes it tens of seconds). So a confidence is written in percent (0.9 -> 90),
and a tag count as its heat: 1 tag is 1, the busiest technique of the window is 100, and
counts between are placed on a logarithmic scale. An analyst reads a heat map for "where
was activity, and how much, relative to the rest"; on honeypots one technique (brute
force, T1110) easily has a thousand times the tags of the next, and on a linear scale every
other technique would look alike. The order of scores is the order of counts.

The entries come from the bus, where a forged tag can name anything: a technique the
catalogue does not know (or that ATT&CK revoked, or a sub-technique under another
technique's id) is left out of the layer and counted in its metadata, never an error.
Confidences outside [0, 1] are clamped, and a non-number counts as 0. The output is sorted
(techniques by id, each technique's tactics in matrix order, rule ids by name), so two
layers of the same data differ only in their ``generated at`` line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from ttp_core.attack.catalogue import AttackCatalogue, Technique
from ttp_core.engine.state import RuleState

__all__ = [
    "COVERAGE_LAYER_NAME",
    "LAYER_DOMAIN",
    "LAYER_FORMAT",
    "NAVIGATOR_VERSION",
    "OBSERVED_LAYER_NAME",
    "CoverageEntry",
    "ObservedEntry",
    "confidence_percent",
    "count_heat",
    "coverage_layer",
    "observed_layer",
]

LAYER_FORMAT: Final = "4.5"
# The Navigator release the format's own example names alongside ATT&CK 18; any 5.x reads 4.5.
NAVIGATOR_VERSION: Final = "5.2.0"
LAYER_DOMAIN: Final = "enterprise-attack"
COVERAGE_LAYER_NAME: Final = "ttp-rulebus rule coverage"
OBSERVED_LAYER_NAME: Final = "ttp-rulebus observed techniques"
DEFAULT_GENERATOR: Final = "ttp-rulebus"

# Low to high: yellow to green for coverage (more confidence is better), pale to deep red
# for observations (more tags is hotter).
_COVERAGE_COLOURS: Final = ("#ffe766", "#a6d96a", "#1a9850")
_OBSERVED_COLOURS: Final = ("#fee8c8", "#fdbb84", "#e34a33")
_PERCENT: Final = 100
# Distinct unknown ids remembered for the metadata's count; a forged stream could name
# millions, and the count then says "at least".
_MAX_LEFT_OUT_IDS: Final = 10_000


@dataclass(frozen=True, slots=True)
class CoverageEntry:
    """One emit of a rule in force: the rule covers this technique with this confidence.

    ``confidence`` is what the rule reports now: its emit's confidence, lowered to the
    operator's ``confidence_max`` for a clipped rule. A disabled rule has no entries.
    """

    rule_id: str
    technique_id: str
    sub_technique_id: str | None
    confidence: float


class Emitting(Protocol):
    """What :func:`rule_entries` reads of an emit (the rule model's ``Emit`` has it)."""

    @property
    def technique_id(self) -> str: ...
    @property
    def sub_technique_id(self) -> str | None: ...
    @property
    def confidence(self) -> float: ...


def rule_entries(
    rule_id: str, emits: Iterable[Emitting], state: RuleState, now: float
) -> list[CoverageEntry]:
    """What one rule covers at ``now``, as the engine would tag with it: each emit at the
    confidence its operator state lets it report (none for a disabled rule). An emit of
    confidence 0, a lifter's sentinel that fires but never tags, covers nothing."""
    entries = []
    for emit in emits:
        confidence = state.apply(emit.confidence, now)
        if confidence is not None and confidence > 0:
            entries.append(
                CoverageEntry(rule_id, emit.technique_id, emit.sub_technique_id, confidence)
            )
    return entries


@dataclass(frozen=True, slots=True)
class ObservedEntry:
    """How many tags named a technique (or sub-technique) in a window, and their best
    confidence. Several entries of one technique add up."""

    technique_id: str
    sub_technique_id: str | None
    tags: int
    best_confidence: float


@dataclass(slots=True)
class _LeftOut:
    """What a layer could not place: entries per technique id the catalogue does not know."""

    entries: int = 0
    ids: set[str] = field(default_factory=set)

    def add(self, technique_id: object, sub_technique_id: object, entries: int = 1) -> None:
        self.entries += entries
        if len(self.ids) < _MAX_LEFT_OUT_IDS:
            self.ids.add(f"{technique_id}/{sub_technique_id}")

    def ids_text(self) -> str:
        count = len(self.ids)
        return f"at least {count}" if count >= _MAX_LEFT_OUT_IDS else str(count)


def confidence_percent(confidence: float) -> int:
    """A confidence in [0, 1] as a whole percent; any confidence above 0 is at least 1."""
    unit = _unit(confidence)
    if unit <= 0:
        return 0
    return max(1, round(unit * _PERCENT))


def count_heat(count: int, most: int) -> int:
    """``count`` tags as a score from 1 (one tag) to 100 (``most``, the busiest technique),
    logarithmic between; 0 for no tag."""
    if count <= 0:
        return 0
    if most <= 1 or count >= most:
        return _PERCENT
    return 1 + round((_PERCENT - 1) * math.log(count) / math.log(most))


def _unit(value: object) -> float:
    # bool is an int: a True confidence is no confidence at all.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    number = float(value)
    if math.isnan(number):
        return 0.0
    return min(1.0, max(0.0, number))


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


def _resolve(
    catalogue: AttackCatalogue, technique_id: object, sub_technique_id: object
) -> Technique | None:
    """The catalogue entry a (technique, sub-technique) pair names, or None to leave out."""
    if not isinstance(technique_id, str):
        return None
    if sub_technique_id is None or sub_technique_id == "":
        wanted = technique_id
    elif isinstance(sub_technique_id, str) and sub_technique_id.startswith(technique_id + "."):
        wanted = sub_technique_id
    else:
        return None  # a sub-technique filed under another technique's id
    known = catalogue.technique(wanted)
    if known is None or known.revoked:
        return None
    return known


def _tactic_shortnames(catalogue: AttackCatalogue, technique: Technique) -> list[str | None]:
    """The Navigator's tactic names of ``technique`` in matrix order; ``[None]`` (annotate
    under every tactic) when the catalogue lists none it knows."""
    names: list[str | None] = [tactic.shortname for tactic in catalogue.tactics_of(technique)]
    return names or [None]


def _technique_entries(
    catalogue: AttackCatalogue,
    technique: Technique,
    score: int,
    comment: str,
    metadata: list[dict[str, str]],
) -> list[dict[str, Any]]:
    entries = []
    for shortname in _tactic_shortnames(catalogue, technique):
        entry: dict[str, Any] = {"techniqueID": technique.id}
        if shortname is not None:
            entry["tactic"] = shortname
        entry.update(score=score, comment=comment, enabled=True, metadata=list(metadata))
        entries.append(entry)
    return entries


def _item(name: str, value: object) -> dict[str, str]:
    return {"name": name, "value": str(value)}


def _timestamp(moment: datetime | None) -> str:
    when = moment if moment is not None else datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _left_out_items(
    catalogue: AttackCatalogue, left_out: _LeftOut, what: str
) -> list[dict[str, str]]:
    return [
        _item(
            f"left out (technique not in ATT&CK {catalogue.version}, revoked, or a"
            " sub-technique of another technique)",
            f"{left_out.entries} {what} naming {left_out.ids_text()} technique ids",
        )
    ]


def _layer(
    catalogue: AttackCatalogue,
    *,
    name: str,
    description: str,
    techniques: list[dict[str, Any]],
    colours: tuple[str, ...],
    max_value: int,
    aggregate: str,
    legend: list[dict[str, str]],
    metadata: list[dict[str, str]],
) -> dict[str, Any]:
    return {
        "name": name,
        "versions": {
            "attack": catalogue.version,
            "navigator": NAVIGATOR_VERSION,
            "layer": LAYER_FORMAT,
        },
        "domain": LAYER_DOMAIN,
        "description": description,
        # Highest score first within each tactic: what matters most is on top.
        "sorting": 3,
        "layout": {
            "layout": "side",
            "showID": True,
            "showName": True,
            "showAggregateScores": False,
            "countUnscored": False,
            # What the Navigator shows on a parent if the analyst turns aggregates on.
            "aggregateFunction": aggregate,
            # A scored sub-technique shows without a click on its parent.
            "expandedSubtechniques": "annotated",
        },
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {"colors": list(colours), "minValue": 0, "maxValue": max(1, max_value)},
        "legendItems": legend,
        "metadata": metadata,
    }


def coverage_layer(
    rules: Iterable[CoverageEntry],
    catalogue: AttackCatalogue,
    *,
    name: str = COVERAGE_LAYER_NAME,
    generator: str = DEFAULT_GENERATOR,
    generated_at: datetime | None = None,
    extra_metadata: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The layer of the techniques the rules cover.

    Each technique (or sub-technique) emitted by at least one entry gets, under each of its
    tactics: ``score`` = the best confidence of its rules in percent, ``comment`` = the
    sorted rule ids, and per-technique metadata with each rule's confidence. A rule that
    emits only a sub-technique covers that sub-technique, not its parent. ``generator`` and
    ``generated_at`` (default: now) say what produced the layer and when; ``extra_metadata``
    (name, value) pairs follow them in the layer's metadata.
    """
    best: dict[str, dict[str, float]] = {}
    known: dict[str, Technique] = {}
    left_out = _LeftOut()
    for entry in rules:
        technique = _resolve(catalogue, entry.technique_id, entry.sub_technique_id)
        if technique is None:
            left_out.add(entry.technique_id, entry.sub_technique_id)
            continue
        known[technique.id] = technique
        per_rule = best.setdefault(technique.id, {})
        rule_id = str(entry.rule_id)
        per_rule[rule_id] = max(per_rule.get(rule_id, 0.0), _unit(entry.confidence))

    techniques: list[dict[str, Any]] = []
    all_rules: set[str] = set()
    for technique_id in sorted(best):
        per_rule = best[technique_id]
        rule_ids = sorted(per_rule)
        all_rules.update(rule_ids)
        top = max(per_rule.values())
        metadata = [_item("best confidence", f"{top:.2f}")] + [
            _item(rule_id, f"confidence {per_rule[rule_id]:.2f}") for rule_id in rule_ids
        ]
        techniques += _technique_entries(
            catalogue,
            known[technique_id],
            confidence_percent(top),
            ", ".join(rule_ids),
            metadata,
        )

    return _layer(
        catalogue,
        name=name,
        description=(
            "Techniques the rules in force cover. Score: the best confidence of the rules"
            " emitting the technique, in percent (clipped rules count with their clipped"
            " confidence; disabled rules not at all). Comment: those rules' ids."
        ),
        techniques=techniques,
        colours=_COVERAGE_COLOURS,
        max_value=_PERCENT,
        aggregate="max",
        legend=[
            {"label": "covered, confidence 0.01", "color": _COVERAGE_COLOURS[0]},
            {"label": "covered, confidence 0.50", "color": _COVERAGE_COLOURS[1]},
            {"label": "covered, confidence 1.00", "color": _COVERAGE_COLOURS[2]},
        ],
        metadata=[
            _item("generated by", generator),
            _item("generated at", _timestamp(generated_at)),
            _item("ATT&CK", f"{catalogue.domain} {catalogue.version}"),
            _item("score", "best confidence of the rules emitting the technique, in percent"),
            _item("rules", len(all_rules)),
            _item("techniques covered", len(best)),
            *_left_out_items(catalogue, left_out, "emits"),
            *(_item(key, value) for key, value in extra_metadata),
        ],
    )


def _observed_legend(most: int) -> list[dict[str, str]]:
    if most <= 1:
        # One tag is then also the most: the top of the gradient.
        return [{"label": "1 tag", "color": _OBSERVED_COLOURS[-1]}]
    legend = [{"label": "1 tag", "color": _OBSERVED_COLOURS[0]}]
    middle = round(math.sqrt(most))  # halfway up the logarithmic scale
    if 1 < middle < most:
        legend.append({"label": f"about {middle} tags", "color": _OBSERVED_COLOURS[1]})
    legend.append({"label": f"{most} tags (the busiest)", "color": _OBSERVED_COLOURS[-1]})
    return legend


def observed_layer(
    counts: Iterable[ObservedEntry],
    catalogue: AttackCatalogue,
    *,
    window_label: str,
    name: str | None = None,
    generator: str = DEFAULT_GENERATOR,
    generated_at: datetime | None = None,
    extra_metadata: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The layer of the techniques observed in a window (``window_label``, e.g. ``24h``).

    Each technique (or sub-technique) with at least one tag gets, under each of its
    tactics: ``score`` = its number of tags in the window as a heat (:func:`count_heat`:
    1 for one tag, 100 for the busiest technique, logarithmic between), ``comment`` = the
    exact count, the window and the best confidence, and the same as per-technique metadata.
    ``name`` defaults to one naming the window; the other keywords are those of
    :func:`coverage_layer`.
    """
    tags: dict[str, int] = {}
    best: dict[str, float] = {}
    known: dict[str, Technique] = {}
    left_out = _LeftOut()
    for entry in counts:
        count = _count(entry.tags)
        if count == 0:
            continue
        technique = _resolve(catalogue, entry.technique_id, entry.sub_technique_id)
        if technique is None:
            left_out.add(entry.technique_id, entry.sub_technique_id, count)
            continue
        known[technique.id] = technique
        tags[technique.id] = tags.get(technique.id, 0) + count
        best[technique.id] = max(best.get(technique.id, 0.0), _unit(entry.best_confidence))

    most = max(tags.values(), default=0)
    techniques: list[dict[str, Any]] = []
    for technique_id in sorted(tags):
        count, top = tags[technique_id], best[technique_id]
        noun = "tag" if count == 1 else "tags"
        techniques += _technique_entries(
            catalogue,
            known[technique_id],
            count_heat(count, most),
            f"{count} {noun} in window {window_label}; best confidence {top:.2f}",
            [_item("tags", count), _item("best confidence", f"{top:.2f}")],
        )

    return _layer(
        catalogue,
        name=name if name is not None else f"{OBSERVED_LAYER_NAME} ({window_label})",
        description=(
            f"Techniques the workers tagged in window {window_label}. Score: the number of"
            " tags naming the technique as a heat from 1 (one tag) to 100 (the busiest"
            " technique), logarithmic between. Comment: the exact count and the best"
            " confidence."
        ),
        techniques=techniques,
        colours=_OBSERVED_COLOURS,
        max_value=_PERCENT,
        aggregate="max",
        legend=_observed_legend(most),
        metadata=[
            _item("generated by", generator),
            _item("generated at", _timestamp(generated_at)),
            _item("ATT&CK", f"{catalogue.domain} {catalogue.version}"),
            _item("window", window_label),
            _item(
                "score",
                "tags naming the technique: 1 = one tag, 100 = the busiest technique,"
                " logarithmic between",
            ),
            _item("tags", sum(tags.values())),
            _item("techniques observed", len(tags)),
            *_left_out_items(catalogue, left_out, "tags"),
            *(_item(key, value) for key, value in extra_metadata),
        ],
    )
