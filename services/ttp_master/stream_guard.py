"""Keep TTP_RULES holding the latest message of every rule (docs/contract.md).

PostgreSQL is the source of truth and JetStream the distribution log: when the stream is
missing, emptied or behind (deleted by an operator, lost with a NATS volume), the latest
published event of every subject is published again from `ttp_rule_event`, with its
original `Nats-Msg-Id`. It also verifies each rule message the stream receives against the
outbox and replaces one PostgreSQL never produced (`verify`, `ttp_master.forged_rules`), and
purges any message on a subject that is no rule subject (`ttp_master.foreign_subjects`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ttp_core.contract import subjects
from ttp_master import metrics
from ttp_master.db.repository import NOTIFY_CHANNEL, event_msg_id
from ttp_master.db.schema import rule_event
from ttp_master.foreign_subjects import is_stream_subject, purge_filter
from ttp_master.forged_rules import (
    MAX_ANSWERABLE_REVISION,
    Forgery,
    claimed_revision,
    is_rule_subject,
    judge,
    reissued,
    replacement_for_unknown,
    rule_id_of,
)
from ttp_master.outbox_relay import EventPublisher, wire_form

_log = logging.getLogger(__name__)

_LATEST_PER_SUBJECT = text(
    "SELECT DISTINCT ON (subject) revision, subject, msg_id, payload, headers "
    "FROM ttp_rule_event WHERE jetstream AND published_at IS NOT NULL "
    "AND subject <> :ruleset ORDER BY subject, revision DESC"
)


_LATEST_OF_SUBJECT = text(
    "SELECT kind, payload FROM ttp_rule_event "
    "WHERE jetstream AND published_at IS NOT NULL AND subject = :subject "
    "ORDER BY revision DESC LIMIT 1"
)
_NEXT_REVISION = text("SELECT nextval('ttp_revision_seq')")
# Only ever forward: used when the next value is not past the forged revision.
_SEQUENCE_TO = text("SELECT setval('ttp_revision_seq', :past)")
REPAIR_ACTOR = "ttp-master (stream guard: forged message replaced)"
"""The audit actor of an outbox row that reissues a rule's event over a forged message."""

VERIFY_BATCH = 1000
"""Stream messages verified per pass: a large backlog is verified over several passes."""

_TAIL_FILTER = "*.>"
TAIL_PURGES = 10
"""Purges per pass of foreign messages at the stream's tail, beyond where the walk reached."""

FOREIGN_LOGGED = 5
"""Purge filters named in a pass's warning; the others are only counted."""


class StreamGuard:
    """Checks TTP_RULES against PostgreSQL and republishes what is missing or stale."""

    def __init__(
        self,
        engine: AsyncEngine,
        js: JetStreamContext,
        publisher: EventPublisher,
        publish_summary: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        """`publish_summary(msg_id_suffix)` publishes `ttp.ruleset.revision` (the relay's):
        called after a repair, whose stream lacked a current summary, so the rebuilt stream
        has one too."""
        self._engine = engine
        self._js = js
        self._publisher = publisher
        self._publish_summary = publish_summary
        self._verified_seq = 0
        """Stream sequence up to which every rule message has been verified."""

    async def check(self) -> str | None:
        """What is wrong with TTP_RULES at a glance (None: nothing seen).

        Cheap enough to run every few seconds: one stream info, and one indexed query only
        when the stream is empty. A stream that is merely behind is found at startup.
        """
        try:
            info = await self._js.stream_info(subjects.STREAM_RULES)
        except nats.js.errors.NotFoundError:
            return "missing"
        if info.state.messages:
            return None
        async with self._engine.connect() as conn:
            published = await conn.scalar(
                select(rule_event.c.revision)
                .where(rule_event.c.jetstream, rule_event.c.published_at.is_not(None))
                .limit(1)
            )
        return "empty" if published is not None else None

    async def repair(self) -> int:
        """Republish every subject whose stream copy is missing or older; returns how many."""
        async with self._engine.connect() as conn:
            latest = (
                await conn.execute(_LATEST_PER_SUBJECT, {"ruleset": subjects.RULESET_REVISION})
            ).all()
            newest = await conn.scalar(
                select(rule_event.c.revision)
                .where(rule_event.c.jetstream, rule_event.c.published_at.is_not(None))
                .order_by(rule_event.c.revision.desc())
                .limit(1)
            )
        if not latest:
            return 0
        info = await self._js.stream_info(subjects.STREAM_RULES)
        if info.state.messages and await self._stream_revision() == int(newest or 0):
            return 0
        check_each = bool(info.state.messages)
        # A purged stream still remembers every Nats-Msg-Id for its duplicate window and
        # would drop the republished copies; a suffix naming the stream's position makes
        # them new to it, yet a repeated repair of the same stream state stays a no-op.
        suffix = f"-repair-{info.state.last_seq}"
        stale = []
        for row in latest:
            if check_each and await self._stream_has(row.subject, int(row.revision)):
                continue
            stale.append(row)
        for row in sorted(stale, key=lambda r: int(r.revision)):
            payload, headers = wire_form(row)
            await self._publisher.publish_stream(
                row.subject, payload, f"{row.msg_id}{suffix}", headers
            )
        if stale:
            _log.warning(
                "TTP_RULES was missing or behind: republished %d subject(s) from PostgreSQL",
                len(stale),
            )
        if self._publish_summary is not None:
            # Past the fast path, the stream's ruleset summary is missing or older than the
            # newest revision: publish the current one.
            await self._publish_summary(suffix)
        return len(stale)

    async def _stream_revision(self) -> int | None:
        try:
            msg = await self._js.get_last_msg(subjects.STREAM_RULES, subjects.RULESET_REVISION)
        except nats.js.errors.NotFoundError:
            return None
        try:
            return int(json.loads(msg.data or b"{}")["data"]["revision"])
        except (ValueError, KeyError, TypeError):
            return None

    async def _stream_has(self, subject: str, revision: int) -> bool:
        try:
            msg = await self._js.get_last_msg(subjects.STREAM_RULES, subject)
        except nats.js.errors.NotFoundError:
            return False
        try:
            held = int(json.loads(msg.data or b"{}")["data"]["revision"])
        except (ValueError, KeyError, TypeError):
            return False
        return held >= revision

    async def verify(self) -> list[Forgery]:
        """Find rule messages in TTP_RULES that PostgreSQL never produced, and answer each.

        Each stream message is verified once, in stream order (at most `VERIFY_BATCH` per
        call): the cost follows what was published since the last call, not the number of
        rules. A forged message is answered by reissuing PostgreSQL's latest event of its
        subject under a fresh revision past the forged one (workers apply only newer
        revisions), written to the outbox, so the relay publishes it like any change.

        A message on a subject the stream is not meant to hold (a copy a push consumer of
        another stream delivered into it) is purged with a subject filter that matches no
        subject of the stream, so a purge can never race the relay into removing a rule.
        """
        info = await self._js.stream_info(subjects.STREAM_RULES)
        last = int(info.state.last_seq)
        if last < self._verified_seq:
            self._verified_seq = 0  # the stream was recreated: verify it again
        if last == self._verified_seq:
            return []
        seen: list[tuple[str, bytes]] = []
        purged: list[tuple[str, str, int]] = []
        can_purge = True
        foreign = 0
        seq = max(self._verified_seq + 1, int(info.state.first_seq))
        upto = self._verified_seq
        while seq <= last and len(seen) + foreign < VERIFY_BATCH:
            try:
                msg = await self._js.get_msg(subjects.STREAM_RULES, seq=seq, subject=">", next=True)
            except nats.js.errors.NotFoundError:
                break
            if msg.seq is None or msg.seq > last:
                break
            upto = msg.seq
            seq = msg.seq + 1
            if not msg.subject:
                continue
            if not is_stream_subject(msg.subject):
                foreign += 1
                if can_purge:
                    # Purged at once: the walk then skips every later copy the filter covered.
                    purge = purge_filter(msg.subject)
                    count = await self._purge(purge)
                    can_purge = count is not None
                    if count is not None:
                        purged.append((msg.subject, purge, count))
            elif is_rule_subject(msg.subject):
                seen.append((msg.subject, msg.data or b""))
        if seq > last:
            upto = last
        elif can_purge:
            # A backlog (a new term walks the whole stream) must not leave a flood at the
            # tail unpurged until the walk reaches it.
            purged.extend(await self._purge_tail())
        self._report_foreign(purged)
        forged = await self._judge(seen)
        for forgery in forged:
            await self._answer(forgery)
        self._verified_seq = upto
        return forged

    async def _purge_tail(self) -> list[tuple[str, str, int]]:
        """Purge while the stream's newest message is foreign (at most `TAIL_PURGES`)."""
        purged: list[tuple[str, str, int]] = []
        while len(purged) < TAIL_PURGES:
            try:
                # Not ">": for it the server looks only at the stream's last sequence, which
                # a purge just deleted. Every subject of more than one token is "*.>".
                msg = await self._js.get_last_msg(subjects.STREAM_RULES, _TAIL_FILTER)
            except nats.js.errors.NotFoundError:
                break
            if not msg.subject or is_stream_subject(msg.subject):
                break
            purge = purge_filter(msg.subject)
            count = await self._purge(purge)
            if count is None:
                break
            purged.append((msg.subject, purge, count))
        return purged

    async def _purge(self, subject_filter: str) -> int | None:
        """Purge the messages of TTP_RULES matching `subject_filter`; returns how many, None
        when the server refused or did not answer."""
        try:
            # nats-py's purge_stream returns only `success`; the server's answer also counts.
            answer = await self._js._api_request(
                f"{self._js._prefix}.STREAM.PURGE.{subjects.STREAM_RULES}",
                json.dumps({"filter": subject_filter}).encode(),
                timeout=self._js._timeout,
            )
        except (nats.errors.Error, TimeoutError) as exc:
            # Verifying the rule messages matters more: the walk goes on without purging
            # (the copies stay until the next term walks the stream again).
            _log.error(
                "cannot purge %s from %s (%s): does the master's NATS user lack %s?",
                subject_filter,
                subjects.STREAM_RULES,
                exc,
                f"$JS.API.STREAM.PURGE.{subjects.STREAM_RULES}",
                extra={"subject": subject_filter},
            )
            return None
        return int(answer.get("purged") or 0)

    def _report_foreign(self, purged: list[tuple[str, str, int]]) -> None:
        """One warning per pass however many were purged, so a flood cannot flood the log."""
        if not purged:
            return
        total = sum(count for _, _, count in purged)
        metrics.FOREIGN_RULE_STREAM_MESSAGES.inc(total)
        shown = ", ".join(
            f"{purge} ({count}, first {subject})"
            for subject, purge, count in purged[:FOREIGN_LOGGED]
        )
        more = len(purged) - FOREIGN_LOGGED
        _log.warning(
            "purged %d message(s) from %s on subjects that are no rule subjects (copies a"
            " push consumer delivered into the stream): %s%s",
            total,
            subjects.STREAM_RULES,
            shown,
            f" and {more} more filter(s)" if more > 0 else "",
            extra={"purged": total, "subject": purged[0][0], "filters": len(purged)},
        )

    async def _judge(self, seen: list[tuple[str, bytes]]) -> list[Forgery]:
        # Only what a bigint column can hold is looked up; anything else was never produced.
        claimed = {
            r for r in (claimed_revision(raw) for _, raw in seen) if r is not None and 0 < r < 2**63
        }
        produced: dict[int, tuple[str, Any]] = {}
        if claimed:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    select(rule_event.c.revision, rule_event.c.subject, rule_event.c.payload).where(
                        rule_event.c.revision.in_(sorted(claimed))
                    )
                )
                produced = {int(r.revision): (r.subject, r.payload) for r in rows}
        forged = []
        for subject, raw in seen:
            revision = claimed_revision(raw)
            verdict = judge(subject, raw, produced.get(revision) if revision is not None else None)
            if verdict is not None:
                forged.append(verdict)
        return forged

    async def _answer(self, forgery: Forgery) -> None:
        _log.error(
            "forged message in %s: %s revision %s (%s); replacing it from PostgreSQL",
            subjects.STREAM_RULES,
            forgery.subject,
            forgery.revision,
            forgery.reason,
            extra={"subject": forgery.subject, "forged_revision": forgery.revision},
        )
        rule_id = rule_id_of(forgery.subject)
        if rule_id is None:
            _log.error("%s names no valid rule id: nothing to reissue", forgery.subject)
            return
        past = int(forgery.revision or 0)
        if past > MAX_ANSWERABLE_REVISION:
            past = 0  # see MAX_ANSWERABLE_REVISION: a reissue under a normal revision
        async with self._engine.begin() as conn:
            latest = (await conn.execute(_LATEST_OF_SUBJECT, {"subject": forgery.subject})).first()
            revision = int(await conn.scalar(_NEXT_REVISION) or 0)
            if revision <= past:
                # Workers apply only newer revisions: jump the sequence past the forged one.
                await conn.execute(_SEQUENCE_TO, {"past": past})
                revision = int(await conn.scalar(_NEXT_REVISION) or 0)
            now = datetime.now(UTC)
            if latest is not None:
                kind = str(latest.kind)
                payload = reissued(dict(latest.payload), revision, now.isoformat())
            else:
                # No event of this subject was ever published: put back what PostgreSQL
                # holds for such a rule (no state, or no rule).
                kind, payload = replacement_for_unknown(forgery.subject, revision, now)
            await conn.execute(
                rule_event.insert().values(
                    revision=revision,
                    rule_id=rule_id,
                    kind=kind,
                    subject=forgery.subject,
                    msg_id=event_msg_id(revision),
                    jetstream=True,
                    payload=payload,
                    headers={},
                    actor=REPAIR_ACTOR,
                    created_at=now,
                    published_at=None,
                )
            )
            await conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
