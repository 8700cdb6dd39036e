"""The transactional outbox relay (see docs/operations.md).

Unpublished `ttp_rule_event` rows are published in revision order, each with its
`Nats-Msg-Id`, and marked published only after the PubAck; a crash anywhere in between
republishes the same ids, which JetStream drops as duplicates. The rows of each commit of
this process are handed over by its repository and published at once; rows written any
other way are found by LISTEN/NOTIFY, with a poll as the fallback. After each batch the
ruleset totals go out on `ttp.ruleset.revision`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Final, Protocol

import msgspec
import psycopg
from opentelemetry.trace import Span, StatusCode
from opentelemetry.util.types import AttributeValue
from pydantic import SecretStr
from sqlalchemy import BigInteger, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ttp_core.contract import subjects
from ttp_core.contract.payloads import MASTER_SOURCE, RulesetRevision, encode, envelope
from ttp_master.db.repository import NOTIFY_CHANNEL, RuleRepository
from ttp_master.db.schema import rule_event, rule_rejection
from ttp_master.db.target import DatabaseTarget
from ttp_master.ruleset_ledger import RulesetLedger
from ttp_runtime.tracing import (
    MESSAGING_MESSAGE_ID,
    inject_headers,
    start_consumer_span,
    start_producer_span,
    subject_template,
)

_log = logging.getLogger(__name__)


_OWN_NOTIFIES_KEPT: Final = 4096
_BATCH_COUNT: Final = "messaging.batch.message_count"

PIPELINE_DEPTH = 256
"""Publishes awaited together. A window never holds two rows of one subject, so the
stream's last message per subject is always the newest revision, even if one fails."""


def _windows(rows: Sequence[Any], depth: int) -> Iterator[list[Any]]:
    """Consecutive runs of `rows` of at most `depth`, each subject at most once per run."""
    window: list[Any] = []
    subjects_in: set[str] = set()
    for row in rows:
        if len(window) >= depth or row.subject in subjects_in:
            yield window
            window, subjects_in = [], set()
        window.append(row)
        subjects_in.add(row.subject)
    if window:
        yield window


# The relay's statements, built once (constructing one costs more than executing it).
_MARK_PUBLISHED: Final = (
    update(rule_event)
    # One array parameter, not one parameter per row: a 500-row batch is not a statement
    # of 500 placeholders rendered again for every batch size.
    .where(rule_event.c.revision == any_(bindparam("revisions", type_=ARRAY(BigInteger))))
    .values(published_at=func.now())
)


# The summary's totals that are not the rule set's (`RulesetLedger` keeps that), in one
# statement: the newest published revision and the rejected files.
_SUMMARY_TOTALS: Final = select(
    select(func.max(rule_event.c.revision))
    .where(rule_event.c.jetstream, rule_event.c.published_at.is_not(None))
    .scalar_subquery()
    .label("revision"),
    select(func.count()).select_from(rule_rejection).scalar_subquery().label("rejected"),
)


_TRACEPARENT: Final = "traceparent"


def _shared_template(rows: Sequence[Any]) -> str:
    """The subject template `rows` share, which names their relay and publish spans; the
    generic "ttp.rule" when their subjects follow different templates."""
    templates = {subject_template(row.subject) for row in rows}
    return templates.pop() if len(templates) == 1 else "ttp.rule"


def _relay_span(
    rows: Sequence[Any], template: str, headers: dict[str, str]
) -> AbstractContextManager[Any]:
    """The CONSUMER span of relaying `rows`, which continue the trace in `headers` (the
    change batch's that wrote them): named by `template`, the subject template they share
    (`_shared_template`), with the concrete subject when there is one row, and the row
    count."""
    subject = rows[0].subject if len(rows) == 1 else None
    return start_consumer_span(
        f"relay {template}",
        headers,
        {_BATCH_COUNT: len(rows)},
        subject=subject,
    )


def _publish_span(rows: Sequence[Any], template: str) -> AbstractContextManager[Span]:
    """The PRODUCER span of publishing `rows` (one trace's rows of a window): named by
    `template`, the subject template they share (`_shared_template`), with the concrete
    subject and message id when there is one row, and the row count."""
    if len(rows) == 1:
        row = rows[0]
        attributes: dict[str, AttributeValue] = {
            _BATCH_COUNT: 1,
            MESSAGING_MESSAGE_ID: row.msg_id,
        }
        return start_producer_span(template, row.subject, attributes)
    return start_producer_span(template, None, {_BATCH_COUNT: len(rows)})


def wire_form(row: Any) -> tuple[bytes, dict[str, str]]:
    """The body and headers an outbox row is published with, by the relay and by the
    stream guard's repair alike, so a repaired message is the message the relay sent.
    Compact JSON, UTF-8 unescaped (msgspec: a few microseconds for a whole rule)."""
    payload = msgspec.json.encode(row.payload)
    return payload, {str(k): str(v) for k, v in (row.headers or {}).items()}


StreamMessage = tuple[str, bytes, str, dict[str, str]]
"""(subject, payload, Nats-Msg-Id, headers) of one JetStream message."""


class EventPublisher(Protocol):
    """Where the relay sends messages: JetStream (acked) or core NATS."""

    async def publish_stream(
        self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]
    ) -> None: ...

    async def publish_stream_many(
        self, messages: Sequence[StreamMessage]
    ) -> list[BaseException | None]:
        """Publish every message at once; per message, in order, None once its PubAck said
        stored (or a duplicate), else why not."""
        ...

    async def publish_core(self, subject: str, payload: bytes, headers: dict[str, str]) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayBatch:
    """What one relay pass published."""

    published: int
    last_revision: int
    lag_seconds: float


class OutboxRelay:
    """Publishes the outbox while this master leads."""

    def __init__(
        self,
        engine: AsyncEngine,
        database: DatabaseTarget | SecretStr | str,
        publisher: EventPublisher,
        *,
        is_leader: Callable[[], bool],
        poll_interval: float = 1.0,
        batch_size: int = 500,
        on_batch: Callable[[RelayBatch], None] | None = None,
        lock: asyncio.Lock | None = None,
    ) -> None:
        """`lock`: held for each publishing pass; the stream guard's repair holds the same
        lock, so a rebuild's republished (older) copy can never land after a newer publish
        of the same subject."""
        # Autocommit: the relay's statements (select, mark, summary reads) each stand alone,
        # as they did in their own transactions, without BEGIN/COMMIT/ROLLBACK round trips.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._lock = lock if lock is not None else asyncio.Lock()
        self._database = DatabaseTarget.of(database)
        self._publisher = publisher
        self._is_leader = is_leader
        self._poll = poll_interval
        self._batch_size = batch_size
        self._on_batch = on_batch
        self._wake = asyncio.Event()
        self._summary_due = False
        self._ledger = RulesetLedger()
        """The rule set of the summary: read in full once, then only the rules published."""
        self._pending = (
            select(
                rule_event.c.revision,
                rule_event.c.rule_id,
                rule_event.c.subject,
                rule_event.c.msg_id,
                rule_event.c.jetstream,
                rule_event.c.payload,
                rule_event.c.headers,
                rule_event.c.created_at,
            )
            .where(rule_event.c.published_at.is_(None))
            .order_by(rule_event.c.revision)
            .limit(batch_size)
        )
        self.caught_up = asyncio.Event()
        self._handed: list[dict[str, Any]] = []
        """Outbox rows committed by this process's repository, not published yet."""
        self._upto = 0
        """The newest revision this relay has published."""
        self._epoch = 0
        """Bumped whenever unpublished rows may exist that were not handed over (a failed
        publish, rows written elsewhere): handed rows then go out only after a read."""
        self._clean_epoch: int | None = None
        """The epoch at the start of the last pass that left nothing unpublished."""
        self._ours: set[int] = set()
        """NOTIFY payloads of this process's commits, until their NOTIFY arrives."""

    def wake(self) -> None:
        self._wake.set()

    def follow(self, repository: RuleRepository) -> None:
        """Be handed the rows of each commit `repository` makes, and know its NOTIFYs."""
        repository.on_commit = self.committed
        repository.on_notify = self.notifying

    def notifying(self, revision: int) -> None:
        """A commit of this process's repository is under way; its NOTIFY will carry
        `revision` (the repository's `on_notify`)."""
        if len(self._ours) > _OWN_NOTIFIES_KEPT:
            self._ours.clear()  # NOTIFYs went missing: theirs will only cost a read
        self._ours.add(revision)

    def committed(self, rows: list[dict[str, Any]] | None) -> None:
        """The repository committed these outbox rows, in revision order (its `on_commit`),
        or, with None, rows it did not gather: those are read back from the outbox."""
        if rows is None:
            self._epoch += 1
            self._handed.clear()
        elif self._clean_epoch == self._epoch:
            self._handed.extend(rows)
        # Otherwise they are read back: a startup reconcile's rows are not kept meanwhile.
        self._wake.set()

    def _is_known(self, payload: str) -> bool:
        """True for the NOTIFY of one of this process's commits (`notifying`), whose rows
        are handed over. Any other (the stream guard's, a deposed leader's last commit) may
        mean rows nobody hands over: the outbox is read back before any handed row goes
        out again."""
        if payload.isdigit() and int(payload) in self._ours:
            self._ours.discard(int(payload))
            return True
        self._epoch += 1
        return False

    def summary_changed(self) -> None:
        """The totals changed without an outbox row (a rejection cleared): republish them."""
        self._summary_due = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set or leadership is lost."""
        listener = asyncio.create_task(self._listen(stop), name="outbox-listen")
        try:
            while not stop.is_set() and self._is_leader():
                self._wake.clear()
                try:
                    while True:
                        published = await self.publish_pending()
                        if published and (stop.is_set() or not self._is_leader()):
                            return
                        # A batch shorter than a full one drained the backlog as it stood
                        # after `_wake` was cleared (commit order is revision order), and
                        # anything committed since has set `_wake` again: no empty pass.
                        if published < self._batch_size:
                            break
                    self.caught_up.set()
                except (psycopg.Error, OSError) as exc:
                    _log.warning("outbox relay pass failed, retrying: %s", exc)
                    self.caught_up.clear()
                except Exception:
                    _log.exception("outbox relay pass failed, retrying")
                    self.caught_up.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows in revision order; returns how many."""
        async with self._lock:
            try:
                return await self._publish_pending()
            except BaseException:
                # Whatever failed (a publish, the marking), rows may be left unpublished or
                # unmarked: the next pass reads the outbox before anything is handed over.
                self._epoch += 1
                raise

    async def _publish_pending(self) -> int:
        direct = self._take_direct()
        if direct is not None:
            # The rows the repository just committed, handed over: published before any
            # database round trip, which is what a save's latency is made of.
            return await self._relay(direct, None, drained=True)
        epoch = self._epoch
        # One pooled connection for the pass: the select, the marking, the summary.
        async with self._engine.connect() as conn:
            rows = (await conn.execute(self._pending)).all()
            if not rows:
                self._clean_epoch = epoch
                # A backlog that was an exact multiple of the batch size ends here.
                if self._summary_due:
                    await self._publish_summary(await self._summary(conn))
                    self._summary_due = False
                return 0
            drained = len(rows) < self._batch_size
            published = await self._relay(rows, conn, drained=drained)
        if drained and published == len(rows):
            # Everything committed before the select is out: what commits next may be
            # published as it is handed over, unless something else wrote meanwhile.
            self._clean_epoch = epoch
        return published

    def _take_direct(self) -> list[Any] | None:
        """The handed-over rows not published yet, when they may go out without a read:
        nothing older is left unpublished. Otherwise None (they are read back instead)."""
        handed, self._handed = self._handed, []
        fresh = [row for row in handed if row["revision"] > self._upto]
        if not fresh or self._clean_epoch != self._epoch:
            return None
        return [SimpleNamespace(**row) for row in fresh]

    async def _relay(
        self, rows: Sequence[Any], conn: AsyncConnection | None, *, drained: bool
    ) -> int:
        """Publish `rows` (revision order) in windows, mark them published and, with
        `drained`, publish the summary; `conn` None: a connection of its own for the marks."""
        published: list[int] = []
        try:
            for window in _windows(rows, PIPELINE_DEPTH):
                if not self._is_leader():
                    break
                outcomes = await self._publish_window(window)
                published.extend(
                    row.revision
                    for row, outcome in zip(window, outcomes, strict=True)
                    if not isinstance(outcome, BaseException)
                )
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        # Later windows wait: a failed row is retried before anything newer.
                        raise outcome
        except BaseException:
            if published:
                out = set(published)
                self._ledger.touched(r.rule_id for r in rows if r.revision in out)
                self._upto = max(self._upto, *published)
                await self._mark(conn, published)
            raise
        if len(published) < len(rows):
            self._epoch += 1  # leadership lost midway: the rest stays for the next leader
        if not published:
            return 0
        done = set(published)
        # Before the marking: a summary read by anyone after it sees these rules again.
        self._ledger.touched(r.rule_id for r in rows if r.revision in done)
        self._upto = max(self._upto, *published)
        self._summary_due = True
        # The backlog is drained: one summary for all of it, not one per batch (each
        # summary reads the rule set), read once the rows are marked.
        summary = await self._mark(conn, published, summarise=drained)
        if summary is not None:
            await self._publish_summary(summary)
            self._summary_due = False
        oldest = min(r.created_at for r in rows if r.revision in done)
        lag = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        if self._on_batch is not None:
            self._on_batch(RelayBatch(len(published), published[-1], lag))
        return len(published)

    async def _mark(
        self, conn: AsyncConnection | None, revisions: list[int], *, summarise: bool = False
    ) -> RulesetRevision | None:
        if conn is not None:
            return await self._mark_published(conn, revisions, summarise=summarise)
        async with self._engine.connect() as own:
            return await self._mark_published(own, revisions, summarise=summarise)

    async def _publish_window(self, window: list[Any]) -> list[BaseException | None]:
        """Publish a window's rows together; each row's outcome (None: published), in order.

        Per trace the rows continue (a change batch's rows share its trace) one relay span
        and, inside it, one PRODUCER span whose context every message of the group carries;
        the group's JetStream rows go out as one round of publishes whose PubAcks are
        matched by reply subject. At a cold start of 10,000 rules a span and a request per
        message were the relay's largest costs of its own."""
        groups: dict[str | None, list[int]] = {}
        wire = [wire_form(row) for row in window]
        for i, (_, headers) in enumerate(wire):
            groups.setdefault(headers.get(_TRACEPARENT), []).append(i)
        outcomes: list[BaseException | None] = [None] * len(window)

        async def group(members: list[int]) -> None:
            rows = [window[i] for i in members]
            template = _shared_template(rows)
            with (
                _relay_span(rows, template, wire[members[0]][1]),
                _publish_span(rows, template) as span,
            ):
                # The publish span's context replaces the change batch's in every message.
                carrier = inject_headers()
                stream = [i for i in members if window[i].jetstream]
                messages = [
                    (window[i].subject, wire[i][0], window[i].msg_id, {**wire[i][1], **carrier})
                    for i in stream
                ]
                try:
                    results = await self._publisher.publish_stream_many(messages)
                except Exception as exc:
                    results = [exc] * len(messages)
                for i, result in zip(stream, results, strict=True):
                    outcomes[i] = result
                for i in members:
                    if not window[i].jetstream:
                        try:
                            await self._publisher.publish_core(
                                window[i].subject, wire[i][0], {**wire[i][1], **carrier}
                            )
                        except Exception as exc:
                            outcomes[i] = exc
                failed = [error for i in members if (error := outcomes[i]) is not None]
                if failed:
                    span.record_exception(failed[0])
                    span.set_status(StatusCode.ERROR, f"{len(failed)} of {len(rows)} not published")

        await asyncio.gather(*(group(members) for members in groups.values()))
        return outcomes

    async def _mark_published(
        self, conn: AsyncConnection, revisions: list[int], *, summarise: bool = False
    ) -> RulesetRevision | None:
        """Mark `revisions` published (one autocommitted statement); with `summarise`,
        then read the ruleset summary, which sees them."""
        await conn.execute(_MARK_PUBLISHED, {"revisions": revisions})
        return await self._summary(conn) if summarise else None

    async def ruleset_summary(self) -> RulesetRevision:
        """Totals and digest of the rule set as PostgreSQL holds it."""
        async with self._engine.connect() as conn:
            return await self._summary(conn)

    async def _summary(self, conn: AsyncConnection) -> RulesetRevision:
        totals = (await conn.execute(_SUMMARY_TOTALS)).one()
        await self._ledger.refresh(conn)
        # No await from here on: the ledger is read as this refresh left it.
        counts = self._ledger.counts()
        return RulesetRevision(
            revision=int(totals.revision or 0),
            rules=counts.rules,
            active=counts.active,
            external=counts.external,
            rejected=int(totals.rejected or 0),
            digest=self._ledger.digest(),
        )

    async def publish_ruleset_revision(self, msg_id_suffix: str = "") -> RulesetRevision:
        """Publish the current totals; `msg_id_suffix` only for a stream repair."""
        summary = await self.ruleset_summary()
        await self._publish_summary(summary, msg_id_suffix)
        return summary

    async def _publish_summary(self, summary: RulesetRevision, msg_id_suffix: str = "") -> None:
        event = envelope(
            summary,
            source=MASTER_SOURCE,
            subject=str(summary.revision),
            event_id=f"ttp-ruleset-{summary.revision}-{summary.digest[:16]}",
        )
        await self._publisher.publish_stream(
            subjects.RULESET_REVISION, encode(event), f"{event.id}{msg_id_suffix}", {}
        )

    async def _listen(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database.libpq_conninfo(),
                    autocommit=True,
                    application_name="ttp-master-relay",
                    **self._database.psycopg_kwargs(),
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for notify in conn.notifies():
                        if not self._is_known(notify.payload):
                            self._wake.set()
            except psycopg.Error as exc:
                _log.debug("outbox LISTEN connection failed (polling meanwhile): %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll)
