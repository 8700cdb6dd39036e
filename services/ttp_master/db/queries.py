"""Reads for the control service: states, rule status, audit trail (see docs/operations.md).

Everything here is a plain read on the pool; any master (leader or not) could run it, but
only the leader's control service answers, so callers always see the writer's view.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, bindparam, exists, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ttp_core.contract.control import (
    AuditEntry,
    OperatorState,
    RuleDetail,
    RuleStatus,
    RuleSummary,
)
from ttp_core.contract.payloads import RejectionError
from ttp_master.db.schema import rule, rule_event, rule_rejection, rule_state


def default_state(rule_id: str) -> OperatorState:
    """A rule without a state row is enabled."""
    return OperatorState(rule_id=rule_id, state="enabled")


class ControlQueries:
    """The read side of the control service."""

    def __init__(self, engine: AsyncEngine) -> None:
        # Autocommit: each read is one statement, without BEGIN and ROLLBACK round trips.
        # Nothing is lost: under READ COMMITTED every statement takes its own snapshot
        # anyway, inside a transaction or not.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def state_and_known(self, rule_id: str) -> tuple[OperatorState, bool]:
        """The rule's state, and whether the rule is known: defined (live or deleted) or
        with a rejected file. One statement, one round trip."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(_STATE_AND_KNOWN, {"rule_id": rule_id})).one()
        state = state_from_row(row) if row.revision is not None else default_state(rule_id)
        return state, bool(row.known)

    async def states(self) -> list[OperatorState]:
        """Every state that differs from the default, by rule_id."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(rule_state).order_by(rule_state.c.rule_id))
            return [state_from_row(row) for row in rows]

    async def next_expiry(self) -> datetime | None:
        async with self._engine.connect() as conn:
            value: datetime | None = await conn.scalar(select(func.min(rule_state.c.expires_at)))
        return value

    async def expired(self, now: datetime) -> list[tuple[str, datetime]]:
        """`(rule_id, expires_at)` of every state whose expiry has passed."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(rule_state.c.rule_id, rule_state.c.expires_at)
                .where(rule_state.c.expires_at <= now)
                .order_by(rule_state.c.rule_id)
            )
            return [(row.rule_id, row.expires_at) for row in rows]

    async def rules(self, status: RuleStatus | None = None) -> list[RuleSummary]:
        """Every rule with its status and state; a rejected file is listed once per file."""
        summaries = [s for s in await self._summaries() if status is None or s.status == status]
        return sorted(summaries, key=lambda s: (s.rule_id, s.source_path or ""))

    async def rule(self, rule_id: str) -> RuleDetail | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(rule).where(rule.c.rule_id == rule_id))).first()
            state_row = (
                await conn.execute(select(rule_state).where(rule_state.c.rule_id == rule_id))
            ).first()
            rejections = (
                await conn.execute(
                    select(rule_rejection).where(rule_rejection.c.rule_id == rule_id)
                )
            ).all()
        if row is None and not rejections:
            return None
        state = state_from_row(state_row) if state_row is not None else default_state(rule_id)
        errors = [RejectionError(**e) for r in rejections for e in r.errors]
        if row is None:
            first = rejections[0]
            return RuleDetail(
                rule_id=rule_id,
                status="rejected",
                source_path=first.source_path,
                updated_at=first.last_seen,
                state=state,
                errors=errors,
                yaml_text=first.yaml_text,
            )
        return RuleDetail(
            rule_id=rule_id,
            status=_status(row, bool(rejections)),
            name=row.name,
            rule_version=row.rule_version,
            source_path=row.source_path,
            revision=row.revision,
            updated_at=row.updated_at,
            state=state,
            errors=errors,
            content_sha256=row.content_sha256,
            definition=None if row.deleted else row.definition,
            yaml_text=row.yaml_text,
        )

    async def audit(
        self, rule_id: str | None, since: datetime | None, limit: int
    ) -> list[AuditEntry]:
        """The newest `limit` changes matching the filters, oldest first."""
        query = select(rule_event).order_by(rule_event.c.revision.desc()).limit(limit)
        if rule_id is not None:
            query = query.where(rule_event.c.rule_id == rule_id)
        if since is not None:
            query = query.where(rule_event.c.created_at >= since)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_audit_entry(row) for row in reversed(rows)]

    async def _summaries(self) -> list[RuleSummary]:
        async with self._engine.connect() as conn:
            rules = (
                await conn.execute(
                    select(
                        rule.c.rule_id,
                        rule.c.name,
                        rule.c.rule_version,
                        rule.c.source_path,
                        rule.c.revision,
                        rule.c.updated_at,
                        rule.c.is_external,
                        rule.c.deleted,
                    )
                )
            ).all()
            states = {
                row.rule_id: state_from_row(row) for row in await conn.execute(select(rule_state))
            }
            rejections = (await conn.execute(select(rule_rejection))).all()
        rejected_ids = {r.rule_id for r in rejections}
        out = [
            RuleSummary(
                rule_id=row.rule_id,
                status=_status(row, row.rule_id in rejected_ids),
                name=row.name,
                rule_version=row.rule_version,
                source_path=row.source_path,
                revision=row.revision,
                updated_at=row.updated_at,
                state=states.get(row.rule_id) or default_state(row.rule_id),
                errors=[
                    RejectionError(**e)
                    for r in rejections
                    if r.rule_id == row.rule_id
                    for e in r.errors
                ]
                if row.rule_id in rejected_ids
                else [],
            )
            for row in rules
        ]
        defined = {row.rule_id for row in rules}
        for rejection in rejections:
            if rejection.rule_id in defined:
                continue
            rule_id = rejection.rule_id or rejection.source_path
            out.append(
                RuleSummary(
                    rule_id=rule_id,
                    status="rejected",
                    source_path=rejection.source_path,
                    updated_at=rejection.last_seen,
                    state=states.get(rule_id) or default_state(rule_id),
                    errors=[RejectionError(**e) for e in rejection.errors],
                )
            )
        return out


def _status(row: Any, rejected: bool) -> RuleStatus:
    """A live rule whose file is now rejected is reported rejected: its last good version
    keeps serving, and the errors say why the edit did not take."""
    if row.deleted:
        return "rejected" if rejected else "deleted"
    if rejected:
        return "rejected"
    return "external" if row.is_external else "active"


def state_from_row(row: Row[Any]) -> OperatorState:
    """The state a `ttp_rule_state` row holds."""
    return OperatorState(
        rule_id=row.rule_id,
        state=row.state,
        confidence_max=row.confidence_max,
        expires_at=row.expires_at,
        reason=row.reason,
        set_by=row.set_by,
        set_at=row.set_at,
        revision=row.revision,
        on_behalf_of=row.on_behalf_of,
    )


def _state_and_known_statement() -> Any:
    """One row for any rule_id: its state columns (all NULL without a state row) and
    `known`, true if the rule is defined (live or deleted) or has a rejected file."""
    param = bindparam("rule_id", type_=rule_state.c.rule_id.type)
    known = or_(
        exists().where(rule.c.rule_id == param),
        exists().where(rule_rejection.c.rule_id == param),
    ).label("known")
    one = select(literal_column("1").label("one")).subquery("one")
    return select(known, *rule_state.c).select_from(
        one.outerjoin(rule_state, rule_state.c.rule_id == param)
    )


_STATE_AND_KNOWN = _state_and_known_statement()


def _audit_entry(row: Row[Any]) -> AuditEntry:
    data: dict[str, Any] = dict(row.payload.get("data") or {})
    return AuditEntry(
        revision=row.revision,
        at=row.created_at,
        rule_id=row.rule_id,
        kind=row.kind,
        actor=row.actor,
        summary=describe_change(row.kind, data),
        data=data,
        published_at=row.published_at,
        on_behalf_of=row.on_behalf_of,
    )


def describe_change(kind: str, data: dict[str, Any]) -> str:
    """One line a person reads in `ttpctl audit`."""
    if kind == "reloaded":
        return f"definition v{data.get('rule_version')} from {data.get('source_path')}"
    if kind == "deleted":
        return f"deleted ({data.get('source_path')} removed)"
    if kind == "rejected":
        errors = data.get("errors") or []
        first = errors[0] if errors else {}
        where = f"{data.get('source_path')}:{first.get('line')}:{first.get('column')}"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"rejected {where}: {first.get('message')}{more}"
    if kind == "state":
        state = str(data.get("state"))
        if state == "clipped":
            state = f"clipped to {data.get('confidence_max')}"
        text = state
        if data.get("expires_at"):
            text += f" until {_to_the_second(str(data['expires_at']))}"
        if data.get("cause") == "expired":
            return "enabled (previous state expired)"
        if data.get("reason"):
            text += f": {data['reason']}"
        return text
    return kind


def _to_the_second(stamp: str) -> str:
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
