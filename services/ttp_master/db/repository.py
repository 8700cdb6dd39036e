"""Writes to PostgreSQL: every change and its outbox row commit in one transaction.

Each write is fenced: it proves, inside its own transaction, that this process's leader
connection still holds the advisory lock, so a master that lost leadership cannot write.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Row, bindparam, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    MASTER_SOURCE,
    RejectionError,
    RuleRejected,
    RuleReloaded,
    RuleStateChanged,
    envelope,
)
from ttp_core.rules.diagnostics import Diagnostic
from ttp_master.db.schema import rule, rule_event, rule_rejection, rule_state

NOTIFY_CHANNEL = "ttp_outbox"


class LeadershipLostError(RuntimeError):
    """The advisory lock is no longer held by this process: nothing was written."""


@dataclass(frozen=True, slots=True)
class KnownRule:
    """What PostgreSQL holds for one rule_id."""

    rule_id: str
    content_sha256: str
    source_path: str
    deleted: bool
    revision: int
    yaml_text: str | None = None
    """The file text this version was read from: an identical file needs no validation."""


@dataclass(slots=True)
class Catalog:
    """The master's in-memory mirror of `ttp_rule` and `ttp_rule_rejection`."""

    rules: dict[str, KnownRule] = field(default_factory=dict)
    rejections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _owners: dict[str, str] | None = field(default=None, repr=False)

    def owner_of(self, source_path: str) -> KnownRule | None:
        """The live rule defined by `source_path`, if any."""
        if self._owners is None:
            self._owners = {k.source_path: k.rule_id for k in self.rules.values() if not k.deleted}
        rule_id = self._owners.get(source_path)
        known = self.rules.get(rule_id) if rule_id is not None else None
        if known is None or known.deleted or known.source_path != source_path:
            return None
        return known

    def update(self, rules: dict[str, KnownRule]) -> None:
        """Record written rules; the path index is rebuilt on next use."""
        self.rules.update(rules)
        self._owners = None


@dataclass(frozen=True, slots=True)
class RuleUpsert:
    rule_id: str
    rule_version: int
    name: str
    content_sha256: str
    definition: dict[str, Any]
    yaml_text: str
    source_path: str
    is_external: bool


@dataclass(frozen=True, slots=True)
class RuleDelete:
    rule_id: str
    source_path: str


@dataclass(frozen=True, slots=True)
class Rejection:
    source_path: str
    rule_id: str
    errors: tuple[Diagnostic, ...]
    yaml_text: str | None

    def error_rows(self) -> list[dict[str, Any]]:
        return [{"line": d.line, "column": d.column, "message": d.message} for d in self.errors]


@dataclass(frozen=True, slots=True)
class StateRevert:
    """An operator state whose expiry passed: back to enabled, `cause: expired`.

    Written only if the row still holds an expiry at or before `now` when the transaction
    runs, so an operator who extended or cleared the state in the meantime wins.
    """

    rule_id: str


@dataclass(frozen=True, slots=True)
class StateWrite:
    """An operator's state change; `enabled` removes the row (the default needs none)."""

    rule_id: str
    state: Literal["enabled", "disabled", "clipped"]
    set_by: str
    reason: str | None = None
    confidence_max: float | None = None
    expires_at: datetime | None = None


@dataclass(slots=True)
class ChangeSet:
    """One batch of changes, committed atomically."""

    upserts: list[RuleUpsert] = field(default_factory=list)
    deletes: list[RuleDelete] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    cleared_rejections: list[str] = field(default_factory=list)
    state_reverts: list[StateRevert] = field(default_factory=list)
    state_writes: list[StateWrite] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.upserts
            or self.deletes
            or self.rejections
            or self.cleared_rejections
            or self.state_reverts
            or self.state_writes
        )

    @property
    def revisions_needed(self) -> int:
        return (
            len(self.upserts)
            + len(self.deletes)
            + len(self.rejections)
            + len(self.state_reverts)
            + len(self.state_writes)
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """What one committed change set wrote."""

    revisions: list[int]
    at: datetime
    """The transaction's timestamp: `set_at` of its state rows, `created_at` of its events."""
    states: dict[str, Row[Any]] = field(default_factory=dict)
    """rule_id -> the `ttp_rule_state` row an operator write left, as PostgreSQL returned
    it (`enabled` writes delete the row and have none)."""


@dataclass(frozen=True, slots=True)
class LeaderFence:
    """Identifies the leader's lock-holding PostgreSQL backend."""

    backend_pid: int
    lock_key: int


class RuleRepository:
    """Reads and writes the master's tables."""

    def __init__(self, engine: AsyncEngine, fence: LeaderFence | None) -> None:
        self.engine = engine
        self.fence = fence
        # Revisions are taken inside each transaction; one writer at a time makes commit
        # order equal revision order, so a later change of a rule never loses to an
        # earlier one that happened to commit last.
        self._write_lock = asyncio.Lock()

    async def load_catalog(self) -> Catalog:
        catalog = Catalog()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(
                    rule.c.rule_id,
                    rule.c.content_sha256,
                    rule.c.source_path,
                    rule.c.deleted,
                    rule.c.revision,
                    rule.c.yaml_text,
                )
            )
            for row in rows:
                catalog.rules[row.rule_id] = KnownRule(
                    row.rule_id,
                    row.content_sha256,
                    row.source_path,
                    row.deleted,
                    row.revision,
                    row.yaml_text,
                )
            rejected = await conn.execute(
                select(rule_rejection.c.source_path, rule_rejection.c.errors)
            )
            for path, errors in rejected:
                catalog.rejections[path] = list(errors)
        return catalog

    async def apply(
        self, changes: ChangeSet, *, actor: str, trace_headers: dict[str, str] | None = None
    ) -> list[int]:
        """Commit `changes` with one outbox row each; returns the revisions written.

        A state revert that no longer applies (the expiry was extended or cleared) writes
        nothing, and its revision is left unused.
        """
        if not changes:
            return []
        return (
            await self.apply_changes(changes, actor=actor, trace_headers=trace_headers)
        ).revisions

    async def apply_changes(
        self, changes: ChangeSet, *, actor: str, trace_headers: dict[str, str] | None = None
    ) -> Applied:
        """As :meth:`apply`, with what was written: the caller needs no read back."""
        if not changes:
            return Applied([], datetime.now(UTC))
        async with self._write_lock:
            return await self._apply(changes, actor, dict(trace_headers or {}))

    async def _apply(self, changes: ChangeSet, actor: str, headers: dict[str, str]) -> Applied:
        written: dict[str, Row[Any]] = {}
        async with self.engine.begin() as conn:
            # Changes that always leave an outbox row queue the NOTIFY (sent at commit) with
            # the fence check and the revisions: one statement instead of three.
            notify_now = bool(
                changes.upserts or changes.deletes or changes.rejections or changes.state_writes
            )
            revisions = await self._fence_and_revisions(
                conn, changes.revisions_needed, notify=notify_now
            )
            taken = iter(revisions)
            unused: set[int] = set()
            now = datetime.now(UTC)
            outbox: list[dict[str, Any]] = []
            rule_rows: list[dict[str, Any]] = []
            for up in changes.upserts:
                revision = next(taken)
                rule_rows.append(_rule_row(up, revision, now))
                data = RuleReloaded(
                    rule_id=up.rule_id,
                    revision=revision,
                    rule_version=up.rule_version,
                    content_sha256=up.content_sha256,
                    source_path=up.source_path,
                    deleted=False,
                    rule=up.definition,
                )
                outbox.append(
                    _outbox_row(
                        revision,
                        up.rule_id,
                        "reloaded",
                        subjects.rule_reloaded(up.rule_id),
                        data,
                        now,
                        headers,
                        actor,
                    )
                )
            if rule_rows:
                # One executemany for the whole batch: a 10,000-file reconcile is one statement.
                await conn.execute(_UPSERT_RULE, rule_rows)
            for gone in changes.deletes:
                revision = next(taken)
                await conn.execute(
                    update(rule)
                    .where(rule.c.rule_id == gone.rule_id)
                    .values(deleted=True, revision=revision, updated_at=now)
                )
                data = RuleReloaded(
                    rule_id=gone.rule_id,
                    revision=revision,
                    rule_version=None,
                    content_sha256=None,
                    source_path=gone.source_path,
                    deleted=True,
                    rule=None,
                )
                outbox.append(
                    _outbox_row(
                        revision,
                        gone.rule_id,
                        "deleted",
                        subjects.rule_reloaded(gone.rule_id),
                        data,
                        now,
                        headers,
                        actor,
                    )
                )
            for rejection in changes.rejections:
                revision = next(taken)
                errors = rejection.error_rows()
                stmt = insert(rule_rejection).values(
                    source_path=rejection.source_path,
                    rule_id=rejection.rule_id,
                    errors=errors,
                    yaml_text=rejection.yaml_text,
                    first_seen=now,
                    last_seen=now,
                )
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[rule_rejection.c.source_path],
                        set_={
                            "rule_id": stmt.excluded.rule_id,
                            "errors": stmt.excluded.errors,
                            "yaml_text": stmt.excluded.yaml_text,
                            "last_seen": now,
                        },
                    )
                )
                rejected = RuleRejected(
                    rule_id=rejection.rule_id,
                    source_path=rejection.source_path,
                    errors=[RejectionError(**e) for e in errors],
                )
                row = _outbox_row(
                    revision,
                    rejection.rule_id,
                    "rejected",
                    subjects.rule_rejected(rejection.rule_id),
                    rejected,
                    now,
                    headers,
                    actor,
                )
                row["jetstream"] = False
                outbox.append(row)
            if changes.cleared_rejections:
                await conn.execute(
                    delete(rule_rejection).where(
                        rule_rejection.c.source_path.in_(changes.cleared_rejections)
                    )
                )
            for revert in changes.state_reverts:
                revision = next(taken)
                reverted = await conn.execute(
                    delete(rule_state)
                    .where(rule_state.c.rule_id == revert.rule_id, rule_state.c.expires_at <= now)
                    .returning(rule_state.c.rule_id)
                )
                if reverted.first() is None:
                    unused.add(revision)
                    continue
                state = RuleStateChanged(
                    rule_id=revert.rule_id,
                    revision=revision,
                    state="enabled",
                    reason="expired",
                    set_by="ttp-master",
                    set_at=now,
                    cause="expired",
                )
                outbox.append(
                    _outbox_row(
                        revision,
                        revert.rule_id,
                        "state",
                        subjects.rule_state(revert.rule_id),
                        state,
                        now,
                        headers,
                        "ttp-master",
                    )
                )
            for write in changes.state_writes:
                revision = next(taken)
                stored = await _write_state(conn, write, revision, now)
                if stored is not None:
                    written[write.rule_id] = stored
                else:
                    written.pop(write.rule_id, None)
                state = RuleStateChanged(
                    rule_id=write.rule_id,
                    revision=revision,
                    state=write.state,
                    confidence_max=write.confidence_max,
                    expires_at=write.expires_at,
                    reason=write.reason,
                    set_by=write.set_by,
                    set_at=now,
                    cause="operator",
                )
                outbox.append(
                    _outbox_row(
                        revision,
                        write.rule_id,
                        "state",
                        subjects.rule_state(write.rule_id),
                        state,
                        now,
                        headers,
                        write.set_by,
                    )
                )
            if outbox:
                # One row (an operator's change) is a plain execute, not an executemany.
                await conn.execute(_INSERT_EVENT, outbox[0] if len(outbox) == 1 else outbox)
                if not notify_now:
                    await conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
        return Applied([r for r in revisions if r not in unused], now, written)

    async def _fence_and_revisions(
        self, conn: AsyncConnection, count: int, *, notify: bool
    ) -> list[int]:
        """Prove the leader lock is still held (else raise :class:`LeadershipLostError`)
        and take `count` revisions, in one statement; with `notify`, also queue the
        outbox NOTIFY (PostgreSQL sends it at commit, never on a rollback)."""
        columns = [
            _FENCE_HELD if self.fence is not None else "1",
            _NEXT_REVISIONS if count else "ARRAY[]::bigint[]",
        ]
        if notify:
            columns.append(f"pg_notify('{NOTIFY_CHANNEL}', '')::text")
        params: dict[str, int] = {}
        if self.fence is not None:
            key = self.fence.lock_key
            params |= {
                "pid": self.fence.backend_pid,
                "high": (key >> 32) & 0xFFFFFFFF,
                "low": key & 0xFFFFFFFF,
            }
        if count:
            params["n"] = count
        row = (await conn.execute(text(f"SELECT {', '.join(columns)}"), params)).one()
        if not row[0]:
            raise LeadershipLostError("leader lock no longer held by this master; nothing written")
        return sorted(int(r) for r in row[1])

    async def latest_revision(self) -> int:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.max(rule_event.c.revision)))
        return int(value or 0)


_FENCE_HELD = (
    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = :pid AND classid = :high AND objid = :low AND objsubid = 1)"
)
_NEXT_REVISIONS = "ARRAY(SELECT nextval('ttp_revision_seq') FROM generate_series(1, :n))"


async def _write_state(
    conn: AsyncConnection, write: StateWrite, revision: int, now: datetime
) -> Row[Any] | None:
    """Write the state; returns the row as stored (None: `enabled` removed it)."""
    if write.state == "enabled":
        await conn.execute(_DELETE_STATE, {"rule_id": write.rule_id})
        return None
    values = {
        "rule_id": write.rule_id,
        "state": write.state,
        "confidence_max": write.confidence_max,
        "expires_at": write.expires_at,
        "reason": write.reason,
        "set_by": write.set_by,
        "set_at": now,
        "revision": revision,
    }
    return (await conn.execute(_UPSERT_STATE, values)).one()


def _state_statements() -> tuple[Any, Any]:
    """Built once: per-call construction (and its cache key) costs more than the execute."""
    stmt = insert(rule_state)
    upsert = stmt.on_conflict_do_update(
        index_elements=[rule_state.c.rule_id],
        set_={c.name: stmt.excluded[c.name] for c in rule_state.columns if c.name != "rule_id"},
    ).returning(*rule_state.c)
    remove = delete(rule_state).where(rule_state.c.rule_id == bindparam("rule_id"))
    return upsert, remove


_UPSERT_STATE, _DELETE_STATE = _state_statements()
_INSERT_EVENT = insert(rule_event)


def _rule_row(up: RuleUpsert, revision: int, now: datetime) -> dict[str, Any]:
    return {
        "rule_id": up.rule_id,
        "rule_version": up.rule_version,
        "name": up.name,
        "content_sha256": up.content_sha256,
        "definition": up.definition,
        "yaml_text": up.yaml_text,
        "source_path": up.source_path,
        "is_external": up.is_external,
        "deleted": False,
        "revision": revision,
        "created_at": now,
        "updated_at": now,
    }


def _upsert_statement() -> Any:
    stmt = insert(rule)
    kept = ("rule_id", "created_at")
    updated = {c.name: stmt.excluded[c.name] for c in rule.columns if c.name not in kept}
    return stmt.on_conflict_do_update(index_elements=[rule.c.rule_id], set_=updated)


_UPSERT_RULE = _upsert_statement()


def event_msg_id(revision: int) -> str:
    """The CloudEvents id and `Nats-Msg-Id` of the change with this revision."""
    return f"ttp-rev-{revision}"


def _outbox_row(
    revision: int,
    rule_id: str,
    kind: str,
    subject: str,
    data: Any,
    now: datetime,
    headers: dict[str, str],
    actor: str,
) -> dict[str, Any]:
    event = envelope(
        data, source=MASTER_SOURCE, subject=rule_id, event_id=event_msg_id(revision), time=now
    )
    return {
        "revision": revision,
        "rule_id": rule_id,
        "kind": kind,
        "subject": subject,
        "msg_id": event_msg_id(revision),
        "jetstream": True,
        "payload": event.model_dump(mode="json"),
        "headers": headers,
        "actor": actor,
        "created_at": now,
        "published_at": None,
    }
