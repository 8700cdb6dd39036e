"""What the control commands print for people: texts and rich tables built from the result
models of :mod:`ttp_core.contract.control`. Pure: every function takes the models (and the
current time where it matters) and returns text or a table; the commands print them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel
from rich.table import Table

from ttp_core.contract.control import (
    AuditEntry,
    FleetInfo,
    OperatorState,
    RuleDetail,
    RuleSummary,
    StateChanged,
    WorkerView,
)

__all__ = [
    "FleetVerdict",
    "actor_text",
    "age_text",
    "audit_table",
    "fleet_header",
    "fleet_table",
    "fleet_verdict",
    "is_expired",
    "json_document",
    "plural",
    "rejection_lines",
    "rule_detail_lines",
    "rules_table",
    "span_text",
    "state_changed_text",
    "state_text",
    "states_table",
    "utc_text",
]

_DIGEST_SHOWN: Final = 12


def json_document(model: BaseModel) -> str:
    """``model`` as one indented JSON document (what ``--json`` prints)."""
    return json.dumps(model.model_dump(mode="json"), indent=2, ensure_ascii=False)


def utc_text(moment: datetime | None) -> str:
    """``2026-11-22T03:00:00Z`` (``-`` for no time)."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span_text(seconds: float) -> str:
    """A coarse span for people: ``45s``, ``12m 5s``, ``1h 59m``, ``3d 4h``."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def age_text(age_s: float) -> str:
    """How long ago, from seconds: ``3.1 s ago`` under a minute, then coarser."""
    if age_s < 60:
        return f"{max(age_s, 0.0):.1f} s ago"
    return f"{span_text(age_s)} ago"


def actor_text(actor: str | None, on_behalf_of: str | None) -> str:
    """Who made a change: the verified actor, then whom it said it acted for:
    ``OPERATORS/operator (for alice)``; ``-`` when nobody is recorded."""
    shown = actor or "-"
    return f"{shown} (for {on_behalf_of})" if on_behalf_of else shown


def plural(count: int, word: str) -> str:
    """``1 worker``, ``2 workers``: the count and the word, with an ``s`` unless it is one."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# --------------------------------------------------------------------------------------------
# Operator state
# --------------------------------------------------------------------------------------------


def _bare_state(state: OperatorState) -> str:
    if state.state == "clipped" and state.confidence_max is not None:
        return f"clipped {state.confidence_max:g}"
    return state.state


def is_expired(state: OperatorState, now: datetime) -> bool:
    """True when the state has run out (the master reverts it; workers already ignore it)."""
    return state.state != "enabled" and state.expires_at is not None and state.expires_at <= now


def state_text(state: OperatorState, now: datetime) -> str:
    """The effective state: ``enabled``, ``disabled``, ``clipped 0.5 until <time> (in 1h 59m)``;
    a state past its expiry is ``enabled`` (with what expired in parentheses)."""
    if is_expired(state, now):
        return f"enabled ({_bare_state(state)} expired {utc_text(state.expires_at)})"
    text = _bare_state(state)
    if state.state != "enabled" and state.expires_at is not None:
        remaining = (state.expires_at - now).total_seconds()
        text += f" until {utc_text(state.expires_at)} (in {span_text(remaining)})"
    return text


def state_changed_text(changed: StateChanged, now: datetime) -> str:
    """The one line ``state set`` / ``state clear`` print."""
    state = changed.state
    if not changed.changed:
        return f"{state.rule_id}: already {state_text(state, now)}; nothing changed."
    return f"{state.rule_id}: {state_text(state, now)}; revision {changed.revision}."


def states_table(states: Iterable[OperatorState], now: datetime) -> Table:
    """Rule, effective state, reason, who set it and when, revision."""
    table = _table("rule", "state", "reason", "set by", "set at", "revision")
    for state in states:
        table.add_row(
            state.rule_id,
            state_text(state, now),
            state.reason or "",
            actor_text(state.set_by, state.on_behalf_of) if state.set_by else "",
            utc_text(state.set_at) if state.set_at else "",
            str(state.revision) if state.revision is not None else "",
        )
    return table


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def rejection_lines(rule: RuleSummary) -> list[str]:
    """``file:line:col: message`` for each validation error of a rejected file."""
    where = rule.source_path or rule.rule_id
    return [f"{where}:{error.line}:{error.column}: {error.message}" for error in rule.errors]


def rules_table(rules: Iterable[RuleSummary], now: datetime) -> Table:
    """Rule id, status, version, effective state, source path."""
    table = _table("rule", "status", "version", "state", "source")
    for rule in rules:
        table.add_row(
            rule.rule_id,
            rule.status,
            str(rule.rule_version) if rule.rule_version is not None else "-",
            state_text(rule.state, now),
            rule.source_path or "-",
        )
    return table


def rule_detail_lines(rule: RuleDetail, now: datetime) -> list[str]:
    """``rules show``: one ``key  value`` line per fact, then errors and the definition."""
    state = rule.state
    facts = [
        ("rule", rule.rule_id),
        ("name", rule.name or "-"),
        ("status", rule.status),
        ("version", str(rule.rule_version) if rule.rule_version is not None else "-"),
        ("revision", str(rule.revision) if rule.revision is not None else "-"),
        ("updated", utc_text(rule.updated_at)),
        ("source", rule.source_path or "-"),
        ("sha256", rule.content_sha256 or "-"),
        ("state", state_text(state, now)),
    ]
    if state.revision is not None:
        facts.append(
            (
                "",
                f"reason: {state.reason or '-'};"
                f" set by {actor_text(state.set_by, state.on_behalf_of)}"
                f" at {utc_text(state.set_at)} (revision {state.revision})",
            )
        )
    lines = [f"{key:<9} {value}".rstrip() for key, value in facts]
    if rule.errors:
        lines.append("errors:")
        lines.extend(f"  {line}" for line in rejection_lines(rule))
    if rule.yaml_text:
        lines.append("definition:")
        lines.extend(f"  {line}" for line in rule.yaml_text.rstrip("\n").splitlines())
    elif rule.definition is not None:
        lines.append("definition:")
        text = json.dumps(rule.definition, indent=2, ensure_ascii=False, default=str)
        lines.extend(f"  {line}" for line in text.splitlines())
    return lines


# --------------------------------------------------------------------------------------------
# Fleet
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetVerdict:
    """Whether the fleet is where it should be, and the sentence that says so."""

    converged: bool
    sentence: str


def _worker_problem(worker: WorkerView, wanted: int, check_digest: bool) -> str | None:
    behind = wanted - worker.revision
    parts = []
    if behind > 0:
        parts.append(f"is {plural(behind, 'revision')} behind")
    if not worker.ready:
        parts.append("not ready" if not parts else "is not ready")
    if check_digest and behind <= 0 and worker.digest_matches is False:
        parts.append("has a rule index that differs from the master's")
    return f"{worker.worker_id} {' and '.join(parts)}" if parts else None


def fleet_verdict(info: FleetInfo, target: int | None = None) -> FleetVerdict:
    """Judge the fleet: against the master's revision (``target`` None; the master's own
    ``converged`` decides) or against ``target`` (every live worker ready and at or past it).

    Gone workers (no status for three intervals) are not counted; with no live worker the
    fleet is never converged.
    """
    live = [worker for worker in info.workers if not worker.gone]
    gone = len(info.workers) - len(live)
    if not live:
        return FleetVerdict(False, "No live workers.")
    wanted = info.revision if target is None else target
    problems = [
        problem
        for worker in live
        if (problem := _worker_problem(worker, wanted, check_digest=target is None)) is not None
    ]
    converged = info.converged if target is None else not problems
    note = f" ({plural(gone, 'gone worker')} not counted)" if gone else ""
    if converged:
        revisions = sorted({worker.revision for worker in live})
        at = (
            f"revision {revisions[0]}"
            if len(revisions) == 1
            else f"revisions {revisions[0]} to {revisions[-1]}"
        )
        return FleetVerdict(
            True, f"Fleet converged: {plural(len(live), 'live worker')} at {at}.{note}"
        )
    detail = "; ".join(problems) if problems else "the master does not count it as converged"
    return FleetVerdict(False, f"Fleet NOT converged: {detail}.{note}")


def fleet_header(info: FleetInfo) -> str:
    """The master's side of the comparison, printed above the table."""
    digest = info.digest[:_DIGEST_SHOWN] + ("…" if len(info.digest) > _DIGEST_SHOWN else "")
    return (
        f"Master at revision {info.revision}, digest {digest};"
        f" {plural(len(info.workers), 'worker')} reporting every {info.status_interval_s:g} s."
    )


def _digest_text(matches: bool | None) -> str:
    if matches is None:
        return "?"
    return "ok" if matches else "DIFFERS"


def fleet_table(workers: Sequence[WorkerView]) -> Table:
    """One row per worker: revision, lag, readiness, digest, rules, events, last seen."""
    table = _table(
        "worker", "revision", "lag", "ready", "digest", "rules", "events", "last seen", "gone"
    )
    for worker in workers:
        table.add_row(
            worker.worker_id,
            str(worker.revision),
            str(worker.lag),
            "yes" if worker.ready else "NO",
            _digest_text(worker.digest_matches),
            f"{worker.active}/{worker.rules}",
            str(worker.events_processed),
            age_text(worker.age_s),
            "gone" if worker.gone else "",
        )
    return table


# --------------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------------


def audit_table(entries: Iterable[AuditEntry]) -> Table:
    """Revision, time, rule, kind, actor, summary; in the order given (oldest first)."""
    table = _table("revision", "time", "rule", "kind", "actor", "summary")
    for entry in entries:
        table.add_row(
            str(entry.revision),
            utc_text(entry.at),
            entry.rule_id or "-",
            entry.kind,
            actor_text(entry.actor, entry.on_behalf_of),
            entry.summary,
        )
    return table


_NUMERIC: Final = frozenset({"revision", "lag", "events", "version"})
# Free text may wrap on a narrow terminal; ids, numbers and times stay whole on one line.
_WRAPPING: Final = frozenset({"summary", "reason", "state", "source"})


def _table(*columns: str) -> Table:
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in _NUMERIC else "left",
            no_wrap=column not in _WRAPPING,
            overflow="fold",
        )
    return table
