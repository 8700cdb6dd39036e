"""The console's feeds against a real NATS server running the shipped accounts config.

The tests play the worker (tag messages on TTP_TAGS, as the ``worker`` role) and the master
(rule definitions and states on TTP_RULES, as the ``master`` role, which also creates the
streams). The feeds read as the console's own ``console`` role; at the end no role was
refused anything (its grants cover exactly what the feeds do).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.bus_messages import (
    rule_definition,
    rule_reloaded,
    rule_state,
    tag_data,
    tagged_payload,
)
from harness.nats_roles import RoleNats, role_nats
from harness.waiting import eventually
from ttp_console.rule_feed import RuleFeed
from ttp_console.tag_feed import TagFeed
from ttp_console.tag_store import TagStore, Window
from ttp_core.attack.catalogue import load_catalogue
from ttp_core.contract import subjects
from ttp_runtime.nats import MSG_ID_HEADER, ensure_streams
from ttp_runtime.nats_roles import Role

HOUR_S = 3600.0
TIMEOUT_S = 30.0
READER_ROLE: Role = "console"


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[RoleNats]:
    with role_nats(tmp_path) as running:
        yield running
        assert running.unexpected_violations() == []


@pytest.fixture
async def bus(roles: RoleNats) -> RoleNats:
    async with roles.client("master") as nc:
        await ensure_streams(nc.jetstream(), 1, HOUR_S, -1, HOUR_S)
    return roles


def tag_message(source_id: str, technique: str = "T1059", sub: str | None = "T1059.004") -> bytes:
    tags = [tag_data(technique, sub, evidence={"command_text": "bash -i"})]
    return tagged_payload(source_id, tags, attacker_uuid="attacker-1", revision=3)


async def publish(roles: RoleNats, role: Role, messages: list[tuple[str, bytes]]) -> None:
    async with roles.client(role) as nc:
        js = nc.jetstream()
        for subject, payload in messages:
            await js.publish(subject, payload, headers={MSG_ID_HEADER: str(uuid.uuid4())})


async def publish_tags(roles: RoleNats, count: int, first: int = 0) -> None:
    await publish(
        roles,
        "worker",
        [(subjects.tagged("command"), tag_message(f"e{n}")) for n in range(first, first + count)],
    )


@pytest.fixture
async def reader(bus: RoleNats) -> AsyncIterator[Any]:
    async with bus.client(READER_ROLE) as nc:
        yield nc


async def test_the_tag_feed_loads_the_window_then_follows_live(bus: RoleNats, reader: Any) -> None:
    await publish_tags(bus, 300)
    store = TagStore(load_catalogue())
    feed = TagFeed(reader, store, batch=64)
    feed.start()
    try:
        assert await feed.wait_caught_up(TIMEOUT_S)
        await eventually(lambda: store.stats().tags == 300, "the stored tags")
        assert feed.progress.loaded == 300
        assert feed.progress.pending == 0
        # What the matrix page's status line reads (ConsoleContext.tag_progress): loaded.
        assert feed.progress.caught_up
        assert feed.progress.error is None

        await publish_tags(bus, 5, first=300)
        await eventually(lambda: store.stats().tags == 305, "the live tags")
        assert store.observed(Window.HOUR, time.time())["T1059.004"].tags == 305
    finally:
        await feed.stop()
    async with bus.client("admin") as admin:
        info = await admin.jetstream().stream_info(subjects.STREAM_TAGS)
    assert info.state.consumer_count == 0  # stop() deleted its consumer


async def test_the_tag_feed_starts_a_week_back(bus: RoleNats, reader: Any) -> None:
    await publish_tags(bus, 3)
    store = TagStore(load_catalogue())
    # A clock eight days ahead: the stored tags are older than the feed's window.
    feed = TagFeed(reader, store, clock=lambda: time.time() + 8 * 24 * HOUR_S)
    feed.start()
    try:
        assert await feed.wait_caught_up(TIMEOUT_S)
        assert store.stats().messages == 0
    finally:
        await feed.stop()


async def test_the_tag_feed_survives_a_nats_restart_without_counting_twice(
    bus: RoleNats, reader: Any
) -> None:
    await publish_tags(bus, 20)
    store = TagStore(load_catalogue())
    feed = TagFeed(reader, store)
    feed.start()
    try:
        assert await feed.wait_caught_up(TIMEOUT_S)
        await eventually(lambda: store.stats().tags == 20, "the first tags")

        bus.server.restart()
        await publish_tags(bus, 7, first=20)
        await eventually(lambda: store.stats().tags == 27, "the tags after the restart")
        await asyncio.sleep(2.5)  # a few idle rounds: nothing is read again
        assert store.stats().tags == 27
        assert store.stats().messages == 27
    finally:
        await feed.stop()


async def test_the_tag_feed_recreates_a_consumer_that_vanished(bus: RoleNats, reader: Any) -> None:
    store = TagStore(load_catalogue())
    feed = TagFeed(reader, store)
    feed.start()
    try:
        assert await feed.wait_caught_up(TIMEOUT_S)
        async with bus.client("admin") as admin:
            js = admin.jetstream()
            for consumer in await js.consumers_info(subjects.STREAM_TAGS):
                await js.delete_consumer(subjects.STREAM_TAGS, consumer.name)
        await eventually(lambda: feed.progress.restarts >= 1, "a new consumer")
        await publish_tags(bus, 4)
        await eventually(lambda: store.stats().tags == 4, "the tags after the new consumer")
    finally:
        await feed.stop()


def reloaded(rule_id: str, revision: int, technique: str, confidence: float) -> tuple[str, bytes]:
    rule = rule_definition(
        rule_id,
        (technique, None, confidence),
        name=f"{rule_id} name",
        match={"all": [{"field": "command_text", "contains": "x"}]},
    )
    return rule_reloaded(rule_id, revision, rule, event_id=f"ttp-rev-{revision}")


def state(rule_id: str, revision: int, name: str, **fields: Any) -> tuple[str, bytes]:
    return rule_state(rule_id, revision, name, event_id=f"ttp-rev-{revision}", **fields)


async def test_the_rule_feed_keeps_the_latest_definition_and_state_of_each_rule(
    bus: RoleNats, reader: Any
) -> None:
    await publish(
        bus,
        "master",
        [
            reloaded("alpha", 1, "T1059", 0.5),
            reloaded("alpha", 2, "T1110", 0.7),  # the newer definition wins
            reloaded("beta", 3, "T1059", 0.9),
            reloaded("gamma", 4, "T1059", 0.6),
            state("beta", 5, "disabled", reason="noisy"),
            state(
                "gamma",
                6,
                "clipped",
                confidence_max=0.2,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            ),
        ],
    )
    feed = RuleFeed(reader)
    feed.start()
    try:
        assert await feed.wait_caught_up(TIMEOUT_S)
        await eventually(lambda: len(feed.definitions()) == 3, "three rules")
        await eventually(lambda: feed.state("gamma") is not None, "gamma's state")
        assert [e.technique for e in feed.definitions()["alpha"].emits] == ["T1110"]
        assert [(c.rule_id, c.technique_id, c.confidence) for c in feed.coverage()] == [
            ("alpha", "T1110", 0.7),
            ("gamma", "T1059", 0.2),  # clipped; beta is disabled, so it covers nothing
        ]
        assert [d.rule_id for d in feed.rules_for("T1059")] == ["beta", "gamma"]

        await publish(bus, "master", [state("beta", 7, "enabled")])
        await eventually(lambda: feed.in_play("beta"), "beta back in play")
    finally:
        await feed.stop()
