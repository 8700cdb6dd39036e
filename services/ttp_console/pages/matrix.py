"""The ATT&CK matrix (observed and covered heat maps) and the technique inspector."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ttp_console.pages.common import confidence_level, console, heat_level, render
from ttp_console.rule_feed import covered_techniques
from ttp_console.tag_store import WINDOWS, Window, parse_window, rollup
from ttp_core.attack.catalogue import AttackCatalogue, Technique

__all__ = ["matrix_page", "technique_page"]

_TECHNIQUE_ID: Final = re.compile(r"T\d{4}(?:\.\d{3})?")
HEAT_MAPS: Final = ("observed", "covered")


@dataclass(frozen=True, slots=True)
class Cell:
    technique: Technique
    tags: int
    best_confidence: float
    rules: int
    covered_confidence: float
    heat: int


@dataclass(frozen=True, slots=True)
class Column:
    tactic_id: str
    name: str
    cells: list[Cell]
    observed: int
    """Techniques of the column with at least one tag in the window."""
    covered: int


def _parents_by_tactic(catalogue: AttackCatalogue) -> dict[str, list[Technique]]:
    columns: dict[str, list[Technique]] = {t.id: [] for t in catalogue.tactics()}
    for technique in catalogue.techniques():
        if technique.is_subtechnique or technique.revoked or technique.deprecated:
            continue
        for tactic in technique.tactics:
            if tactic in columns:
                columns[tactic].append(technique)
    for techniques in columns.values():
        techniques.sort(key=lambda t: t.name)
    return columns


_columns_cache: dict[int, dict[str, list[Technique]]] = {}


def _columns_of(catalogue: AttackCatalogue) -> dict[str, list[Technique]]:
    # The catalogue is immutable: its layout is computed once per catalogue object.
    key = id(catalogue)
    found = _columns_cache.get(key)
    if found is None:
        found = _columns_cache[key] = _parents_by_tactic(catalogue)
    return found


async def matrix_page(request: Request) -> Response:
    """``/``: tactics as columns (catalogue order), techniques as cells, coloured by what was
    observed in the window (``?window=1h|24h|7d``) or by the rules covering them
    (``?heat=covered``)."""
    context = console(request)
    now = time.time()
    window = parse_window(request.query_params.get("window"))
    heat_map = request.query_params.get("heat")
    heat_map = heat_map if heat_map in HEAT_MAPS else "observed"
    catalogue = context.catalogue
    layout = _columns_of(catalogue)
    parents = [t.id for techniques in layout.values() for t in techniques]
    observed = rollup(context.tags.observed(window, now), parents)
    covered: dict[str, tuple[float, set[str]]] = {}
    for key, (best, rule_ids) in covered_techniques(context.rules.coverage(now)).items():
        parent = key.split(".", 1)[0]
        held_best, held_rules = covered.get(parent, (0.0, set()))
        covered[parent] = (max(held_best, best), held_rules | set(rule_ids))
    most = max((c.tags for c in observed.values()), default=0)
    columns = []
    for tactic in catalogue.tactics():
        cells = []
        for technique in layout[tactic.id]:
            count = observed.get(technique.id)
            cover_best, cover_rules = covered.get(technique.id, (0.0, set()))
            tags = count.tags if count else 0
            heat = (
                heat_level(tags, most) if heat_map == "observed" else confidence_level(cover_best)
            )
            cells.append(
                Cell(
                    technique,
                    tags,
                    count.best_confidence if count else 0.0,
                    len(cover_rules),
                    cover_best,
                    heat,
                )
            )
        columns.append(
            Column(
                tactic.id,
                tactic.name,
                cells,
                sum(1 for c in cells if c.tags),
                sum(1 for c in cells if c.rules),
            )
        )
    return render(
        request,
        "matrix.html",
        {
            "columns": columns,
            "window": window,
            "windows": WINDOWS,
            "heat_map": heat_map,
            "most": most,
            "observed_total": sum(c.tags for c in observed.values()),
            "techniques_observed": len(observed),
            "techniques_covered": len(covered),
            "stats": context.tags.stats(),
            "feed": context.tag_progress(),
            "rules_feed": context.rules.progress,
        },
        active_nav="matrix",
    )


async def technique_page(request: Request) -> Response:
    """``/techniques/{technique_id}``: the rules mapping to it, then its latest tags with
    their evidence (rule, source, confidence): why it was tagged."""
    context = console(request)
    technique_id = str(request.path_params["technique_id"]).upper()
    technique = (
        context.catalogue.technique(technique_id) if _TECHNIQUE_ID.fullmatch(technique_id) else None
    )
    if technique is None:
        raise HTTPException(404, "The ATT&CK catalogue has no such technique.")
    now = time.time()
    counts = {}
    for window in WINDOWS:
        observed = context.tags.observed(window, now)
        if technique.is_subtechnique:
            counts[window] = observed.get(technique.id)
        else:
            counts[window] = rollup(observed, [technique.id]).get(technique.id)
    rules = [
        (definition, context.rules.state(definition.rule_id, now))
        for definition in context.rules.rules_for(technique.id)
    ]
    subtechniques = [
        t
        for t in context.catalogue.techniques()
        if t.parent_id == technique.id and not (t.revoked or t.deprecated)
    ]
    parent = context.catalogue.technique(technique.parent_id) if technique.parent_id else None
    return render(
        request,
        "technique.html",
        {
            "technique": technique,
            "parent": parent,
            "subtechniques": subtechniques,
            "tactics": [context.catalogue.tactic(t) for t in technique.tactics],
            "counts": counts,
            "windows": WINDOWS,
            "rules": rules,
            "tags": context.tags.latest_for_technique(technique.id),
            "default_window": Window.DAY,
        },
        active_nav="matrix",
    )
