"""Keep TTP_RULES holding the latest message of every rule (docs/contract.md).

PostgreSQL is the source of truth and JetStream the distribution log: when the stream is
missing, emptied or behind (deleted by an operator, lost with a NATS volume), the latest
published event of every subject is published again from `ttp_rule_event`, with its
original `Nats-Msg-Id`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import nats.js.errors
from nats.js.client import JetStreamContext
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ttp_core.contract import subjects
from ttp_master.db.schema import rule_event
from ttp_master.outbox_relay import EventPublisher

_log = logging.getLogger(__name__)

_LATEST_PER_SUBJECT = text(
    "SELECT DISTINCT ON (subject) revision, subject, msg_id, payload, headers "
    "FROM ttp_rule_event WHERE jetstream AND published_at IS NOT NULL "
    "AND subject <> :ruleset ORDER BY subject, revision DESC"
)


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
            payload = json.dumps(row.payload, separators=(",", ":")).encode()
            headers = {str(k): str(v) for k, v in (row.headers or {}).items()}
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
