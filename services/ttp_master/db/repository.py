"""Writes to PostgreSQL: every change and its outbox row commit in one transaction.

Each write is fenced: it proves, inside its own transaction, that this process's leader
connection still holds the advisory lock, so a master that lost leadership cannot write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from sqlalchemy import (
    ARRAY,
    Row,
    Table,
    Text,
    TextClause,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
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
from ttp_master.db.refusals import is_refusal, refusal_message
from ttp_master.db.schema import rule, rule_event, rule_rejection, rule_state

NOTIFY_CHANNEL = "ttp_outbox"
REFUSED_CODE = "database"
"""The `code` of the diagnostic a file gets when PostgreSQL refuses its rule row."""

ISOLATION_CHUNK = 1024
"""Files per savepoint when a batch is written again around a refused file."""

_log = logging.getLogger(__name__)


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
        """Record written rules, and their paths in the path index (kept, not rebuilt: a
        save among 10,000 rules must not cost a pass over all of them). An entry left
        stale (a rule moved away or deleted) is harmless: `owner_of` checks the rule."""
        self.rules.update(rules)
        owners = self._owners
        if owners is not None:
            for known in rules.values():
                if not known.deleted:
                    owners[known.source_path] = known.rule_id


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
    """The caller's verified identity (docs/contract.md, caller identity)."""
    reason: str | None = None
    confidence_max: float | None = None
    expires_at: datetime | None = None
    on_behalf_of: str | None = None
    """Whom the caller said it acted for: stored beside `set_by`, never instead of it."""


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
    def file_changes(self) -> int:
        """Changes that come from one rule file each (upserts, deletes, rejections)."""
        return len(self.upserts) + len(self.deletes) + len(self.rejections)

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
    refused: list[Refusal] = field(default_factory=list)
    """Upserts PostgreSQL refused: each was written as its file's rejection instead."""
    rule_revisions: dict[str, int] = field(default_factory=dict)
    """rule_id -> revision of each upsert and delete that was written."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A rule file whose row PostgreSQL refused, with the database's message."""

    source_path: str
    rule_id: str
    message: str

    @property
    def diagnostic(self) -> Diagnostic:
        # The database names no position in the file: the rejection points at its start.
        text = f"PostgreSQL refused this rule: {self.message}"
        return Diagnostic(self.source_path, 1, 1, text, REFUSED_CODE)


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
        self.on_commit: Callable[[list[dict[str, Any]] | None], None] | None = None
        """Called after each commit that wrote outbox rows, in commit (= revision) order,
        with those rows (None when they were written without being gathered: the savepoint
        path): the relay publishes them without reading them back."""
        self.on_notify: Callable[[int], None] | None = None
        """Called with the revision a transaction's NOTIFY will carry, before its commit
        (the NOTIFY may reach a listener before the commit returns here)."""
        # Revisions are taken inside each transaction; one writer at a time makes commit
        # order equal revision order, so a later change of a rule never loses to an
        # earlier one that happened to commit last.
        self._write_lock = asyncio.Lock()
        # One change (a saved file, an operator's state change) is one statement in its own
        # implicit transaction: no BEGIN and COMMIT round trips.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        held = _FENCE_HELD if fence is not None else "1"
        self._save_statement = _single_save_statement(held)
        self._state_statements = {
            deleted: _single_state_statement(held, deleted=deleted) for deleted in (False, True)
        }

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
        try:
            if _is_single_save(changes):
                return await self._write_single_save(changes, actor, headers)
            if _is_single_state_write(changes):
                return await self._write_single_state(changes.state_writes[0], headers)
            return await self._write(changes, actor, headers, isolate=False)
        except Exception as exc:
            if not (changes.file_changes and is_refusal(exc)):
                raise
            # One file's row may be what PostgreSQL refused: the batch is written again in
            # savepoints around each refusal, so only the refused file becomes a rejection.
            _log.warning(
                "PostgreSQL refused a batch of %d file change(s) (%s); writing them again file "
                "by file",
                changes.file_changes,
                refusal_message(exc),
            )
        return await self._write(changes, actor, headers, isolate=True)

    async def _write(
        self, changes: ChangeSet, actor: str, headers: dict[str, str], *, isolate: bool
    ) -> Applied:
        """One transaction for the whole change set. With `isolate`, the files' rows (each
        file's rule or rejection row and its outbox row) go in savepoints that narrow down
        to the files PostgreSQL refuses, and a refused file is recorded as that file's
        rejection instead, under the same revision, so the rest of the batch commits in
        revision order."""
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
            if revisions and self.on_notify is not None:
                self.on_notify(revisions[-1])
            taken = iter(revisions)
            unused: set[int] = set()
            now = datetime.now(UTC)
            files = _FileWrites(conn, now, headers, actor)
            for up in changes.upserts:
                files.upsert(up, next(taken))
            for gone in changes.deletes:
                files.delete(gone, next(taken))
            for rejection in changes.rejections:
                files.reject(rejection, next(taken))
            if isolate:
                await files.write_each()
            else:
                await files.write_all()
            outbox = files.outbox
            unused.update(files.unused)
            cleared = [p for p in changes.cleared_rejections if p not in files.refused_paths]
            if cleared:
                await conn.execute(
                    delete(rule_rejection).where(rule_rejection.c.source_path.in_(cleared))
                )
            states = _StateWrites(conn, now, headers, outbox, unused, written)
            for revert in changes.state_reverts:
                await states.revert(revert, next(taken))
            for write in changes.state_writes:
                await states.write(write, next(taken))
            if outbox:
                # One row (an operator's change) is a plain execute, not an executemany.
                await conn.execute(_INSERT_EVENT, outbox[0] if len(outbox) == 1 else outbox)
                if not notify_now:
                    await conn.execute(_NOTIFY, {"revision": str(revisions[-1])})
        if self.on_commit is not None and (isolate or outbox):
            # Still under the write lock: the rows reach the relay in revision order.
            self.on_commit(None if isolate else outbox)
        return Applied(
            [r for r in revisions if r not in unused],
            now,
            written,
            files.refused,
            files.rule_revisions,
        )

    async def _write_single_save(
        self, changes: ChangeSet, actor: str, headers: dict[str, str]
    ) -> Applied:
        """One file's upsert (and the rejections it clears): the revision, then one fenced
        statement that writes the rule row and its outbox row and queues the NOTIFY."""
        up = changes.upserts[0]
        now = datetime.now(UTC)
        async with self._autocommit.connect() as conn:
            revision = await self._next_revision(conn)
            files = _FileWrites(conn, now, headers, actor)
            files.upsert(up, revision)
            write = files.pending[0]
            assert write.params is not None
            params = {f"r_{name}": value for name, value in write.params.items()}
            params |= {f"e_{name}": value for name, value in write.outbox.items()}
            params |= self._fence_params()
            params |= {"cleared": list(changes.cleared_rejections), "notify": str(revision)}
            if self.on_notify is not None:
                self.on_notify(revision)
            held = (await conn.execute(self._save_statement, params)).scalar_one()
        if not held:
            raise LeadershipLostError("leader lock no longer held by this master; nothing written")
        if self.on_commit is not None:
            self.on_commit([write.outbox])
        return Applied([revision], now, rule_revisions={up.rule_id: revision})

    async def _write_single_state(self, write: StateWrite, headers: dict[str, str]) -> Applied:
        """One operator state change: the revision, then one fenced statement that writes
        (or, for `enabled`, deletes) the state row and its outbox row and queues the
        NOTIFY; it returns the stored row."""
        now = datetime.now(UTC)
        outbox: list[dict[str, Any]] = []
        async with self._autocommit.connect() as conn:
            revision = await self._next_revision(conn)
            states = _StateWrites(conn, now, headers, outbox, set(), {})
            states.queue_write(write, revision)
            deleted = write.state == "enabled"
            params = {f"e_{name}": value for name, value in outbox[0].items()}
            params |= {
                f"s_{name}": value for name, value in _state_row(write, revision, now).items()
            }
            params |= self._fence_params()
            params["notify"] = str(revision)
            if self.on_notify is not None:
                self.on_notify(revision)
            row = (await conn.execute(self._state_statements[deleted], params)).one()
        if not row.held:
            raise LeadershipLostError("leader lock no longer held by this master; nothing written")
        if self.on_commit is not None:
            self.on_commit(outbox)
        written = {} if deleted else {write.rule_id: row}
        return Applied([revision], now, written)

    async def _next_revision(self, conn: AsyncConnection) -> int:
        # Taken outside the write's transaction (a sequence is not transactional anyway):
        # the write lock still makes commit order equal revision order, and a write the
        # fence refuses leaves a gap, as a rolled-back transaction always has.
        return int((await conn.execute(_NEXT_REVISION)).scalar_one())

    def _fence_params(self) -> dict[str, int]:
        if self.fence is None:
            return {}
        key = self.fence.lock_key
        return {
            "pid": self.fence.backend_pid,
            "high": (key >> 32) & 0xFFFFFFFF,
            "low": key & 0xFFFFFFFF,
        }

    async def _fence_and_revisions(
        self, conn: AsyncConnection, count: int, *, notify: bool
    ) -> list[int]:
        """Prove the leader lock is still held (else raise :class:`LeadershipLostError`)
        and take `count` revisions, in one statement; with `notify`, also queue the
        outbox NOTIFY (PostgreSQL sends it at commit, never on a rollback)."""
        held = _FENCE_HELD if self.fence is not None else "1"
        taken = _NEXT_REVISIONS if count else "ARRAY[]::bigint[]"
        if notify:
            # The revisions are named once, in a subquery, so that the NOTIFY can carry the
            # last of them: a relay handed the rows already (on_commit) need not read them.
            query = (
                f"SELECT held, revisions, pg_notify('{NOTIFY_CHANNEL}', "  # noqa: S608 - constants only
                "coalesce((SELECT max(r) FROM unnest(revisions) AS r)::text, ''))::text "
                f"FROM (SELECT {held} AS held, {taken} AS revisions) AS taken"
            )
        else:
            query = f"SELECT {held}, {taken}"
        params = self._fence_params()
        if count:
            params["n"] = count
        row = (await conn.execute(text(query), params)).one()
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
_NOTIFY = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', :revision)")
_NEXT_REVISION = text("SELECT nextval('ttp_revision_seq')")


def _is_single_save(changes: ChangeSet) -> bool:
    return (
        len(changes.upserts) == 1
        and not changes.deletes
        and not changes.rejections
        and not changes.state_reverts
        and not changes.state_writes
    )


def _is_single_state_write(changes: ChangeSet) -> bool:
    return (
        len(changes.state_writes) == 1
        and changes.revisions_needed == 1
        and not changes.cleared_rejections
    )


def _typed_values(table: Table, prefix: str) -> tuple[str, str, list[Any]]:
    """`table`'s column list, a select list of its parameters (`prefix` + column name, each
    cast to the column's type) and their bind parameters (the columns' types: JSONB
    values go through the engine's serializer)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    names = [c.name for c in table.columns]
    casts = [f"CAST(:{prefix}{c.name} AS {c.type.compile(dialect=dialect)})" for c in table.columns]
    binds = [bindparam(f"{prefix}{c.name}", type_=c.type) for c in table.columns]
    return ", ".join(names), ", ".join(casts), binds


# The columns an upsert leaves as first written: the conflict key and, for a rule, when it
# was created. The batched upserts and the single-statement ones share them, so the two
# paths cannot drift apart on what an overwrite keeps.
_RULE_KEPT: Final = ("rule_id", "created_at")
_STATE_KEPT: Final = ("rule_id",)


def _fenced_insert(
    table: Table, prefix: str, conflict: str | None, kept: tuple[str, ...]
) -> tuple[str, list[Any]]:
    """`INSERT INTO table ... SELECT <parameters> FROM fence WHERE held`, as an upsert on
    `conflict` (every column but `kept` updated) when given."""
    names, casts, binds = _typed_values(table, prefix)
    sql = f"INSERT INTO {table.name} ({names}) SELECT {casts} FROM fence WHERE held"  # noqa: S608 - metadata names only
    if conflict is not None:
        updated = ", ".join(
            f"{c.name} = excluded.{c.name}" for c in table.columns if c.name not in kept
        )
        sql += f" ON CONFLICT ({conflict}) DO UPDATE SET {updated}"
    return sql, binds


_FENCE_CTE = "fence AS (SELECT {held} > 0 AS held)"
_NOTIFY_IF_HELD = (
    f"CASE WHEN fence.held THEN pg_notify('{NOTIFY_CHANNEL}', :notify)::text END AS notified"
)


def _single_save_statement(held: str) -> TextClause:
    """One saved file, in one statement: the fence, the rule row, the rejection rows it
    clears, its outbox row and the NOTIFY (sent at commit). Nothing is written unless the
    fence holds; the statement returns whether it held."""
    rule_sql, rule_binds = _fenced_insert(rule, "r_", "rule_id", _RULE_KEPT)
    event_sql, event_binds = _fenced_insert(rule_event, "e_", None, ())
    sql = (
        f"WITH {_FENCE_CTE.format(held=held)}, "  # noqa: S608 - metadata names, constants
        f"rule_row AS ({rule_sql} RETURNING 1), "
        "cleared AS (DELETE FROM ttp_rule_rejection WHERE source_path = ANY(:cleared) "
        "AND (SELECT held FROM fence) RETURNING 1), "
        f"outbox AS ({event_sql} RETURNING 1) "
        f"SELECT fence.held, {_NOTIFY_IF_HELD} FROM fence"
    )
    return text(sql).bindparams(*rule_binds, *event_binds, bindparam("cleared", type_=ARRAY(Text)))


def _single_state_statement(held: str, *, deleted: bool) -> TextClause:
    """One operator state change, in one statement: the fence, the state row (removed for
    `enabled`), its outbox row and the NOTIFY (sent at commit); it returns whether the
    fence held and the state row as stored."""
    event_sql, event_binds = _fenced_insert(rule_event, "e_", None, ())
    columns = ", ".join(f"state_row.{c.name}" for c in rule_state.columns)
    if deleted:
        state_sql = (
            "DELETE FROM ttp_rule_state WHERE rule_id = :s_rule_id AND (SELECT held FROM fence) "
            "RETURNING *"
        )
        binds = [bindparam("s_rule_id", type_=rule_state.c.rule_id.type)]
    else:
        state_sql, binds = _fenced_insert(rule_state, "s_", "rule_id", _STATE_KEPT)
        state_sql += " RETURNING *"
    sql = (
        f"WITH {_FENCE_CTE.format(held=held)}, "  # noqa: S608 - metadata names, constants
        f"state_row AS ({state_sql}), "
        f"outbox AS ({event_sql} RETURNING 1) "
        f"SELECT fence.held, {_NOTIFY_IF_HELD}, {columns} "
        "FROM fence LEFT JOIN state_row ON true"
    )
    return text(sql).bindparams(*binds, *event_binds)


def _state_row(write: StateWrite, revision: int, now: datetime) -> dict[str, Any]:
    return {
        "rule_id": write.rule_id,
        "state": write.state,
        "confidence_max": write.confidence_max,
        "expires_at": write.expires_at,
        "reason": write.reason,
        "set_by": write.set_by,
        "set_at": now,
        "revision": revision,
        "on_behalf_of": write.on_behalf_of,
    }


async def _write_state(
    conn: AsyncConnection, write: StateWrite, revision: int, now: datetime
) -> Row[Any] | None:
    """Write the state; returns the row as stored (None: `enabled` removed it)."""
    if write.state == "enabled":
        await conn.execute(_DELETE_STATE, {"rule_id": write.rule_id})
        return None
    return (await conn.execute(_UPSERT_STATE, _state_row(write, revision, now))).one()


def _state_statements() -> tuple[Any, Any]:
    """Built once: per-call construction (and its cache key) costs more than the execute."""
    stmt = insert(rule_state)
    upsert = stmt.on_conflict_do_update(
        index_elements=[rule_state.c.rule_id],
        set_={
            c.name: stmt.excluded[c.name] for c in rule_state.columns if c.name not in _STATE_KEPT
        },
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
    updated = {c.name: stmt.excluded[c.name] for c in rule.columns if c.name not in _RULE_KEPT}
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
    *,
    on_behalf_of: str | None = None,
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
        "on_behalf_of": on_behalf_of,
        "created_at": now,
        "published_at": None,
    }


@dataclass(slots=True)
class _FileWrite:
    """The rows of one file's change: its table statement and its outbox row."""

    kind: Literal["upsert", "delete", "reject"]
    revision: int
    rule_id: str
    source_path: str
    statement: Any
    params: dict[str, Any] | None
    outbox: dict[str, Any]
    upsert: RuleUpsert | None = None


@dataclass
class _StateWrites:
    """The operator-state changes of one transaction: each writes its row and queues its
    outbox row on the transaction's list."""

    conn: AsyncConnection
    now: datetime
    headers: dict[str, str]
    outbox: list[dict[str, Any]]
    unused: set[int]
    """Revisions taken for a revert that had nothing left to revert."""
    written: dict[str, Row[Any]]
    """rule_id -> the state row an operator write left (none: `enabled` deleted it)."""

    async def revert(self, revert: StateRevert, revision: int) -> None:
        reverted = await self.conn.execute(
            delete(rule_state)
            .where(rule_state.c.rule_id == revert.rule_id, rule_state.c.expires_at <= self.now)
            .returning(rule_state.c.rule_id)
        )
        if reverted.first() is None:
            self.unused.add(revision)
            return
        state = RuleStateChanged(
            rule_id=revert.rule_id,
            revision=revision,
            state="enabled",
            reason="expired",
            set_by="ttp-master",
            set_at=self.now,
            cause="expired",
        )
        self._queue(revision, revert.rule_id, state, "ttp-master", None)

    async def write(self, write: StateWrite, revision: int) -> None:
        stored = await _write_state(self.conn, write, revision, self.now)
        if stored is not None:
            self.written[write.rule_id] = stored
        else:
            self.written.pop(write.rule_id, None)
        self.queue_write(write, revision)

    def queue_write(self, write: StateWrite, revision: int) -> None:
        """Queue the outbox row of an operator's state change (its row is the caller's)."""
        state = RuleStateChanged(
            rule_id=write.rule_id,
            revision=revision,
            state=write.state,
            confidence_max=write.confidence_max,
            expires_at=write.expires_at,
            reason=write.reason,
            set_by=write.set_by,
            set_at=self.now,
            cause="operator",
        )
        self._queue(revision, write.rule_id, state, write.set_by, write.on_behalf_of)

    def _queue(
        self,
        revision: int,
        rule_id: str,
        state: RuleStateChanged,
        actor: str,
        on_behalf_of: str | None,
    ) -> None:
        self.outbox.append(
            _outbox_row(
                revision,
                rule_id,
                "state",
                subjects.rule_state(rule_id),
                state,
                self.now,
                self.headers,
                actor,
                on_behalf_of=on_behalf_of,
            )
        )


@dataclass(slots=True)
class _FileWrites:
    """The file changes of one transaction, written all at once or each in a savepoint."""

    conn: AsyncConnection
    now: datetime
    headers: dict[str, str]
    actor: str
    pending: list[_FileWrite] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    """Outbox rows still to insert (by the caller, with the rest of the transaction's)."""
    unused: set[int] = field(default_factory=set)
    refused: list[Refusal] = field(default_factory=list)
    rule_revisions: dict[str, int] = field(default_factory=dict)

    @property
    def refused_paths(self) -> set[str]:
        return {r.source_path for r in self.refused}

    def upsert(self, up: RuleUpsert, revision: int) -> None:
        data = RuleReloaded(
            rule_id=up.rule_id,
            revision=revision,
            rule_version=up.rule_version,
            content_sha256=up.content_sha256,
            source_path=up.source_path,
            deleted=False,
            rule=up.definition,
        )
        self.pending.append(
            _FileWrite(
                "upsert",
                revision,
                up.rule_id,
                up.source_path,
                _UPSERT_RULE,
                _rule_row(up, revision, self.now),
                self._outbox(revision, up.rule_id, "reloaded", data),
                up,
            )
        )

    def delete(self, gone: RuleDelete, revision: int) -> None:
        statement = (
            update(rule)
            .where(rule.c.rule_id == gone.rule_id)
            .values(deleted=True, revision=revision, updated_at=self.now)
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
        outbox = self._outbox(revision, gone.rule_id, "deleted", data)
        self.pending.append(
            _FileWrite("delete", revision, gone.rule_id, gone.source_path, statement, None, outbox)
        )

    def reject(self, rejection: Rejection, revision: int) -> None:
        self.pending.append(self._rejection(rejection, revision))

    def _rejection(self, rejection: Rejection, revision: int) -> _FileWrite:
        errors = rejection.error_rows()
        stmt = insert(rule_rejection).values(
            source_path=rejection.source_path,
            rule_id=rejection.rule_id,
            errors=errors,
            yaml_text=rejection.yaml_text,
            first_seen=self.now,
            last_seen=self.now,
        )
        statement = stmt.on_conflict_do_update(
            index_elements=[rule_rejection.c.source_path],
            set_={
                "rule_id": stmt.excluded.rule_id,
                "errors": stmt.excluded.errors,
                "yaml_text": stmt.excluded.yaml_text,
                "last_seen": self.now,
            },
        )
        data = RuleRejected(
            rule_id=rejection.rule_id,
            source_path=rejection.source_path,
            errors=[RejectionError(**e) for e in errors],
        )
        outbox = self._outbox(revision, rejection.rule_id, "rejected", data)
        outbox["jetstream"] = False  # rejections are core NATS only
        return _FileWrite(
            "reject", revision, rejection.rule_id, rejection.source_path, statement, None, outbox
        )

    def _outbox(self, revision: int, rule_id: str, kind: str, data: Any) -> dict[str, Any]:
        subject = (
            subjects.rule_rejected(rule_id)
            if kind == "rejected"
            else subjects.rule_reloaded(rule_id)
        )
        return _outbox_row(
            revision, rule_id, kind, subject, data, self.now, self.headers, self.actor
        )

    async def write_all(self) -> None:
        """Every file's rows at once (the rule rows in one executemany)."""
        rows = [w.params for w in self.pending if w.kind == "upsert" and w.params is not None]
        if rows:
            # One executemany for the whole batch: a 10,000-file reconcile is one statement.
            await self.conn.execute(_UPSERT_RULE, rows)
        for write in self.pending:
            if write.kind != "upsert":
                await self.conn.execute(write.statement)
            if write.kind != "reject":
                self.rule_revisions[write.rule_id] = write.revision
            self.outbox.append(write.outbox)

    async def write_each(self) -> None:
        """The files' rows in savepoints, bisecting around what PostgreSQL refuses: a chunk
        that commits costs one savepoint, a refused file about two per halving, so one bad
        file among 10,000 costs some 30 savepoints rather than 10,000. A refused upsert
        becomes the file's rejection."""
        for start in range(0, len(self.pending), ISOLATION_CHUNK):
            await self._write_part(self.pending[start : start + ISOLATION_CHUNK])

    async def _write_part(self, writes: list[_FileWrite]) -> None:
        error = await self._attempt(writes)
        if error is None:
            self.rule_revisions.update(
                (w.rule_id, w.revision) for w in writes if w.kind != "reject"
            )
        elif len(writes) > 1:
            half = len(writes) // 2
            await self._write_part(writes[:half])
            await self._write_part(writes[half:])
        else:
            await self._refused_write(writes[0], error)

    async def _refused_write(self, write: _FileWrite, error: BaseException) -> None:
        message = refusal_message(error)
        if write.upsert is None:
            _log.error(
                "PostgreSQL refused the %s of %s (%s): %s; nothing written for it",
                write.kind,
                write.rule_id,
                write.source_path,
                message,
            )
            self.unused.add(write.revision)
            return
        refusal = Refusal(write.source_path, write.rule_id, message)
        rejection = Rejection(
            write.source_path, write.rule_id, (refusal.diagnostic,), write.upsert.yaml_text
        )
        # Same revision: the rejection takes the place of the refused change.
        second = await self._attempt([self._rejection(rejection, write.revision)])
        if second is None:
            _log.warning("rule file rejected by PostgreSQL: %s", refusal.diagnostic)
            self.refused.append(refusal)
        else:
            _log.error(
                "PostgreSQL refused %s (%s) and its rejection (%s); nothing written for it",
                write.source_path,
                message,
                refusal_message(second),
            )
            self.unused.add(write.revision)

    async def _attempt(self, writes: list[_FileWrite]) -> BaseException | None:
        """Write these files' rows in one savepoint; the refusal, if PostgreSQL refused any."""
        try:
            async with self.conn.begin_nested():
                rows = [w.params for w in writes if w.kind == "upsert" and w.params is not None]
                if rows:
                    await self.conn.execute(_UPSERT_RULE, rows)
                for write in writes:
                    if write.kind != "upsert":
                        await self.conn.execute(write.statement)
                outbox = [w.outbox for w in writes]
                await self.conn.execute(_INSERT_EVENT, outbox[0] if len(outbox) == 1 else outbox)
        except Exception as exc:
            if not is_refusal(exc):
                raise
            return exc
        return None
