"""`ttpctl coverage`: the ATT&CK techniques the rules in force cover.

The rules come from TTP_RULES, the stream every worker builds its index from: the last
message of each rule subject (its definition, ``ttp.rule.reloaded.<id>``, and its operator
state, ``ttp.rule.state.<id>``), read with an ephemeral ordered consumer (DeliverPolicy
last-per-subject) until nothing is pending. So the command needs only read access to the
bus (the ``consumer`` role) and reports what the workers apply, not what the rule files on
some disk say. The master's ``rules.show`` would give the same definitions one request per
rule, and only to the operator and viewer roles.

A rule covers the techniques it emits as the workers would apply it now:

- a deleted rule, or one an operator disabled, covers nothing;
- a clipped rule covers with its confidence lowered to the clip (never raised);
- a state whose expiry has passed counts as enabled, as it does on the workers;
- an external rule (``match.kind: lifter:<name>``) is evaluated by a plugin the built-in
  engine does not run, so it is left out unless ``--external`` says the fleet runs it;
- a file rejected by validation leaves its last good version in TTP_RULES, which covers.

Without ``--layer``: a table (technique, tactics, name, rules, best confidence) and a
summary line; ``--json``: the same as one JSON document; ``--layer FILE``: an ATT&CK
Navigator layer (:func:`ttp_core.attack.navigator.coverage_layer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import nats.errors
import typer
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from rich.table import Table

from ttp_core.attack import AttackCatalogue, load_catalogue
from ttp_core.attack.navigator import (
    CoverageEntry,
    confidence_percent,
    coverage_layer,
    rule_entries,
)
from ttp_core.contract import subjects
from ttp_core.contract.payloads import RuleReloaded, RuleStateChanged, decode
from ttp_core.engine.state import RuleState, StateKind
from ttp_core.rules.model import Emit
from ttpctl.control_cli import console
from ttpctl.control_output import plural
from ttpctl.layer_file import write_layer
from ttpctl.nats_session import NatsSessionError, NatsUrlOption, fail, open_nats, require_stream

__all__ = ["Coverage", "RuleRecord", "coverage_app", "rule_coverage"]

coverage_app = typer.Typer()

_COMMAND: Final = "coverage"
# No message for this long while the consumer says more are pending: the read is stuck.
_IDLE_TIMEOUT_S: Final = 15.0
_GENERATOR: Final = "ttpctl coverage"
_RULE_SUBJECTS: Final = (
    subjects.wildcard(subjects.RULE_RELOADED_PREFIX),
    subjects.wildcard(subjects.RULE_STATE_PREFIX),
)


# --------------------------------------------------------------------------------------------
# From rule messages to coverage (pure)
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RuleRecord:
    """The last definition and state message TTP_RULES holds for one rule."""

    definition: RuleReloaded | None = None
    state: RuleStateChanged | None = None
    state_unreadable: bool = False


@dataclass(slots=True)
class Coverage:
    """The emits of the rules in force, and what was left out and why."""

    entries: list[CoverageEntry] = field(default_factory=list)
    rules: set[str] = field(default_factory=set)
    disabled: list[str] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    """Rules whose definition or state could not be read: not counted as covering."""
    revision: int = 0


def _is_external(rule: Mapping[str, Any]) -> bool:
    match = rule.get("match")
    return isinstance(match, dict) and "kind" in match


def _emits(rule: Mapping[str, Any]) -> list[Emit] | None:
    raw = rule.get("emits")
    if not isinstance(raw, list) or not raw:
        return None
    try:
        return [Emit.model_validate(item) for item in raw]
    except ValidationError:
        return None


def _state(message: RuleStateChanged) -> RuleState | None:
    try:
        return RuleState.of(message.state, message.confidence_max, message.expires_at)
    except ValueError:
        return None  # a clip without a usable confidence_max


def rule_coverage(
    records: Mapping[str, RuleRecord], now: datetime, *, include_external: bool = False
) -> Coverage:
    """What each rule in ``records`` covers at ``now`` (see the module docstring)."""
    moment = now.timestamp()
    coverage = Coverage()
    for rule_id in sorted(records):
        record = records[rule_id]
        definition = record.definition
        for message in (definition, record.state):
            if message is not None:
                coverage.revision = max(coverage.revision, message.revision)
        if definition is None:
            continue  # a state without a rule (deleted long ago, or not yet published)
        if definition.deleted:
            coverage.deleted.append(rule_id)
            continue
        rule = definition.rule or {}
        emits = _emits(rule)
        state = _state(record.state) if record.state is not None else RuleState()
        if emits is None or state is None or record.state_unreadable:
            coverage.unreadable.append(rule_id)
            continue
        if _is_external(rule) and not include_external:
            coverage.external.append(rule_id)
            continue
        kind = state.effective(moment)
        if kind is StateKind.DISABLED:
            coverage.disabled.append(rule_id)
            continue
        if kind is StateKind.CLIPPED:
            coverage.clipped.append(rule_id)
        entries = rule_entries(rule_id, emits, state, moment)
        coverage.entries += entries
        if entries:
            coverage.rules.add(rule_id)
    return coverage


@dataclass(frozen=True, slots=True)
class CoveredTechnique:
    """One row of the table: a technique and the rules covering it."""

    technique_id: str
    name: str
    tactics: tuple[str, ...]
    rules: tuple[str, ...]
    best_confidence: float


def covered_techniques(
    entries: Iterable[CoverageEntry], catalogue: AttackCatalogue
) -> tuple[list[CoveredTechnique], int]:
    """The table's rows by technique id, and how many emits name no known technique.

    Keyed like the layer: the sub-technique when there is one, else the technique.
    """
    rules: dict[str, set[str]] = {}
    best: dict[str, float] = {}
    unknown = 0
    for entry in entries:
        key = entry.sub_technique_id or entry.technique_id
        technique = catalogue.technique(key)
        if technique is None or technique.revoked:
            unknown += 1
            continue
        rules.setdefault(key, set()).add(entry.rule_id)
        best[key] = max(best.get(key, 0.0), entry.confidence)
    rows = []
    for key in sorted(rules):
        technique = catalogue.technique(key)
        assert technique is not None
        tactics = tuple(tactic.shortname for tactic in catalogue.tactics_of(technique))
        rows.append(
            CoveredTechnique(key, technique.name, tactics, tuple(sorted(rules[key])), best[key])
        )
    return rows, unknown


# --------------------------------------------------------------------------------------------
# Reading TTP_RULES
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Snapshot:
    records: dict[str, RuleRecord] = field(default_factory=dict)
    skipped: int = 0


def _note(message: str) -> None:
    typer.echo(f"ttpctl {_COMMAND}: {message}", err=True)


def _take(snapshot: _Snapshot, msg: Msg) -> None:
    """File one TTP_RULES message under its rule; anything unreadable is noted and skipped."""
    prefix, _, rule_id = msg.subject.rpartition(".")
    if prefix not in (subjects.RULE_RELOADED_PREFIX, subjects.RULE_STATE_PREFIX):
        return  # the consumer's filter lets no other subject through
    record = snapshot.records.setdefault(rule_id, RuleRecord())
    try:
        if prefix == subjects.RULE_RELOADED_PREFIX:
            definition = decode(msg.data, RuleReloaded)
            if definition.data.rule_id != rule_id:
                raise ValueError(f"names rule {definition.data.rule_id!r}")
            record.definition = definition.data
        else:
            state = decode(msg.data, RuleStateChanged)
            if state.data.rule_id != rule_id:
                raise ValueError(f"names rule {state.data.rule_id!r}")
            record.state = state.data
    except (ValidationError, ValueError) as exc:
        snapshot.skipped += 1
        if prefix == subjects.RULE_STATE_PREFIX:
            record.state_unreadable = True
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        _note(f"skipped the message on {msg.subject}: {reason}")


async def read_rules(url: str | None) -> _Snapshot:
    """The last message of every rule subject in TTP_RULES."""
    snapshot = _Snapshot()
    async with open_nats(url, name="ttpctl-coverage") as session:
        await require_stream(session.js, subjects.STREAM_RULES)
        sub = await session.js.subscribe(
            _RULE_SUBJECTS[0],
            stream=subjects.STREAM_RULES,
            ordered_consumer=True,
            config=ConsumerConfig(
                filter_subjects=list(_RULE_SUBJECTS),
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ),
        )
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return snapshot
            while True:
                try:
                    msg = await sub.next_msg(timeout=_IDLE_TIMEOUT_S)
                except nats.errors.TimeoutError:
                    raise NatsSessionError(
                        f"TTP_RULES delivered nothing for {_IDLE_TIMEOUT_S:g} s while rule"
                        " messages were still pending"
                    ) from None
                _take(snapshot, msg)
                if msg.metadata.num_pending == 0:
                    return snapshot
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _summary(coverage: Coverage, techniques: int, skipped: int, catalogue: AttackCatalogue) -> str:
    parts = [
        f"{plural(techniques, 'technique')} covered by {plural(len(coverage.rules), 'rule')}"
        f" in force (ATT&CK {catalogue.version}, ruleset revision {coverage.revision})"
    ]
    left = [
        (len(coverage.disabled), "disabled"),
        (len(coverage.external), "external"),
        (len(coverage.deleted), "deleted"),
        (len(coverage.unreadable), "unreadable"),
    ]
    shown = [f"{count} {what}" for count, what in left if count]
    if coverage.clipped:
        parts.append(f"{plural(len(coverage.clipped), 'clipped rule')} at the clipped confidence")
    if shown:
        parts.append("left out: " + ", ".join(shown))
    if skipped:
        parts.append(f"{plural(skipped, 'rule message')} skipped as unreadable (see above)")
    return "; ".join(parts) + "."


def _table(rows: list[CoveredTechnique]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("TECHNIQUE", "TACTICS", "NAME", "RULES", "BEST"):
        table.add_column(column, no_wrap=column != "NAME")
    for row in rows:
        table.add_row(
            row.technique_id,
            ",".join(row.tactics),
            row.name,
            ",".join(row.rules),
            f"{row.best_confidence:.2f}",
        )
    return table


def _document(
    coverage: Coverage, rows: list[CoveredTechnique], unknown: int, catalogue: AttackCatalogue
) -> dict[str, Any]:
    return {
        "attack_version": catalogue.version,
        "revision": coverage.revision,
        "techniques": [
            {
                "technique_id": row.technique_id,
                "name": row.name,
                "tactics": list(row.tactics),
                "rules": list(row.rules),
                "best_confidence": row.best_confidence,
                "score": confidence_percent(row.best_confidence),
            }
            for row in rows
        ],
        "rules_in_force": sorted(coverage.rules),
        "clipped": coverage.clipped,
        "left_out": {
            "disabled": coverage.disabled,
            "external": coverage.external,
            "deleted": coverage.deleted,
            "unreadable": coverage.unreadable,
            "emits_of_unknown_techniques": unknown,
        },
    }


@coverage_app.command("coverage")
def coverage(
    layer: Annotated[
        Path | None,
        typer.Option(
            "--layer",
            metavar="FILE",
            help="Write an ATT&CK Navigator layer (format 4.5) to FILE ('-' for stdout)"
            " instead of the table.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the coverage as one JSON document on stdout.")
    ] = False,
    external: Annotated[
        bool,
        typer.Option(
            "--external",
            help="Count external (lifter) rules as covering: only if the workers run their"
            " plugins.",
        ),
    ] = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Which ATT&CK techniques the rules in force cover, read from TTP_RULES.

    A technique's best confidence is the highest its rules report now: a clipped rule
    counts with its clipped confidence, a disabled or deleted rule not at all, and an
    external (lifter) rule only with --external. The table lists technique, tactics, name,
    rules and best confidence, then a summary line. Needs only read access to TTP_RULES
    (the consumer role). Exit 0; 2 when NATS or TTP_RULES is missing or the file cannot be
    written.
    """
    if layer is not None and as_json:
        raise typer.BadParameter("use --layer or --json, not both")
    try:
        snapshot = asyncio.run(read_rules(nats_url))
    except NatsSessionError as exc:
        fail(_COMMAND, str(exc))
    now = datetime.now(UTC)
    catalogue = load_catalogue()
    result = rule_coverage(snapshot.records, now, include_external=external)
    rows, unknown = covered_techniques(result.entries, catalogue)
    if layer is not None:
        document = coverage_layer(
            result.entries,
            catalogue,
            generator=_GENERATOR,
            generated_at=now,
            extra_metadata=[
                ("ruleset revision", str(result.revision)),
                ("clipped rules", ", ".join(result.clipped) or "none"),
                ("disabled rules (left out)", ", ".join(result.disabled) or "none"),
                (
                    "external rules",
                    ("counted: " if external else "left out: ")
                    + (", ".join(result.external) or "none"),
                ),
                ("unreadable rule messages", str(snapshot.skipped)),
            ],
        )
        try:
            write_layer(layer, document)
        except OSError as exc:
            fail(_COMMAND, f"cannot write {layer}: {exc.strerror or exc}")
        where = "the layer" if str(layer) == "-" else str(layer)
        _note(f"wrote {where}: {_summary(result, len(rows), snapshot.skipped, catalogue)}")
        raise typer.Exit(0)
    if as_json:
        typer.echo(
            json.dumps(_document(result, rows, unknown, catalogue), indent=2, ensure_ascii=False)
        )
        raise typer.Exit(0)
    out = console()
    if rows:
        out.print(_table(rows))
    out.print(_summary(result, len(rows), snapshot.skipped, catalogue))
    if unknown:
        out.print(f"{unknown} emits name a technique ATT&CK {catalogue.version} does not list.")
    raise typer.Exit(0)
