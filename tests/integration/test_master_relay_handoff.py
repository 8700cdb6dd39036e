"""The outbox relay publishes the rows its repository hands over, and reads the outbox back
whenever that cannot be trusted to be everything (ttp_master.outbox_relay).

Real PostgreSQL; the publisher is a recorder, so the order of what is published and the
statements the relay ran before publishing are both visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from harness.fake_publishers import PublishesOneByOne
from harness.master import rule_upsert, wait_until
from ttp_master.db.migrate import upgrade_to_head
from ttp_master.db.repository import NOTIFY_CHANNEL, ChangeSet, RuleRepository
from ttp_master.outbox_relay import OutboxRelay


@dataclass
class Recorder(PublishesOneByOne):
    """Publishes nothing; records each message's revision and the outbox reads before it."""

    reads: list[str] = field(default_factory=list)
    published: list[tuple[int, int]] = field(default_factory=list)
    """(revision, outbox reads so far) per message, in publish order."""
    fail_once: set[str] = field(default_factory=set)

    async def publish_stream(
        self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]
    ) -> None:
        if msg_id in self.fail_once:
            self.fail_once.discard(msg_id)
            raise OSError("NATS went away")
        if not msg_id.startswith("ttp-ruleset-"):
            self.published.append((int(msg_id.removeprefix("ttp-rev-")), len(self.reads)))

    async def publish_core(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        raise AssertionError("no rejection is written here")

    def revisions(self) -> list[int]:
        return [revision for revision, _ in self.published]


@asynccontextmanager
async def relay_on(database_url: str) -> AsyncIterator[tuple[OutboxRelay, Recorder, AsyncEngine]]:
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_async_engine(database_url)
    recorder = Recorder()

    def count_outbox_reads(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM ttp_rule_event" in statement and "published_at IS NULL" in statement:
            recorder.reads.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count_outbox_reads)
    relay = OutboxRelay(engine, database_url, recorder, is_leader=lambda: True)
    try:
        yield relay, recorder, engine
    finally:
        await engine.dispose()


async def test_handed_rows_are_published_before_any_outbox_read(database_url: str) -> None:
    async with relay_on(database_url) as (relay, recorder, engine):
        repository = RuleRepository(engine, None)
        relay.follow(repository)
        # Before the relay has once found the outbox empty, handed rows are not trusted.
        first = await repository.apply(ChangeSet(upserts=[rule_upsert("H0001")]), actor="t")
        assert await relay.publish_pending() == 1
        assert recorder.published == [(first[0], 1)]

        second = await repository.apply(
            ChangeSet(upserts=[rule_upsert("H0002"), rule_upsert("H0001", version=2)]), actor="t"
        )
        reads = len(recorder.reads)
        assert await relay.publish_pending() == 2
        assert recorder.published[1:] == [(r, reads) for r in second]  # no read before them
        assert await relay.publish_pending() == 0  # and they are marked published


async def test_rows_written_elsewhere_are_read_back_in_revision_order(database_url: str) -> None:
    async with relay_on(database_url) as (relay, recorder, engine):
        repository = RuleRepository(engine, None)
        relay.follow(repository)
        outsider = RuleRepository(engine, None)  # hands nothing over (the stream guard)
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        try:
            mine = await repository.apply(ChangeSet(upserts=[rule_upsert("H0001")]), actor="t")
            await wait_until(_published(recorder, mine), "the first change to be published")
            theirs = await outsider.apply(ChangeSet(upserts=[rule_upsert("H0002")]), actor="t")
            async with engine.begin() as conn:  # the guard's NOTIFY names no revision
                await conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
            later = await repository.apply(ChangeSet(upserts=[rule_upsert("H0003")]), actor="t")
            await wait_until(_published(recorder, mine + theirs + later), "every change")
        finally:
            stop.set()
            await running
    assert recorder.revisions() == sorted(recorder.revisions())
    assert sorted(set(recorder.revisions())) == mine + theirs + later


async def test_a_failed_publish_is_retried_before_anything_newer(database_url: str) -> None:
    async with relay_on(database_url) as (relay, recorder, engine):
        repository = RuleRepository(engine, None)
        relay.follow(repository)
        await repository.apply(ChangeSet(upserts=[rule_upsert("H0001")]), actor="t")
        assert await relay.publish_pending() == 1
        failing = await repository.apply(ChangeSet(upserts=[rule_upsert("H0002")]), actor="t")
        recorder.fail_once.add(f"ttp-rev-{failing[0]}")
        try:
            await relay.publish_pending()
        except OSError:
            pass
        else:
            raise AssertionError("the failed publish was not reported")
        newer = await repository.apply(ChangeSet(upserts=[rule_upsert("H0003")]), actor="t")
        while await relay.publish_pending():
            pass
    assert recorder.revisions()[1:] == failing + newer


def _published(recorder: Recorder, revisions: list[int]) -> Any:
    async def done() -> bool:
        return set(revisions) <= set(recorder.revisions())

    return done
