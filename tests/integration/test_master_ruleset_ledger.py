"""The relay's ruleset summary, kept from the rules it publishes (ttp_master.ruleset_ledger),
equals a summary read in full from PostgreSQL after random sequences of changes.

Real PostgreSQL; the publisher records the summaries it is given.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import create_async_engine

from harness.fake_publishers import PublishesOneByOne
from ttp_core.rules.diagnostics import Diagnostic
from ttp_master.db.migrate import upgrade_to_head
from ttp_master.db.repository import (
    ChangeSet,
    Rejection,
    RuleDelete,
    RuleRepository,
    RuleUpsert,
    StateWrite,
)
from ttp_master.outbox_relay import OutboxRelay


class Summaries(PublishesOneByOne):
    """Publishes nothing; keeps the data of each ruleset summary."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def publish_stream(
        self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]
    ) -> None:
        if msg_id.startswith("ttp-ruleset-"):
            self.seen.append(msgspec.json.decode(payload)["data"])

    async def publish_core(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        pass


def _upsert(rng: random.Random, rule_id: str) -> RuleUpsert:
    return RuleUpsert(
        rule_id=rule_id,
        rule_version=rng.randrange(1, 9),
        name=f"rule {rule_id}",
        content_sha256=f"{rng.getrandbits(256):064x}",
        definition={},
        yaml_text="",
        source_path=f"{rule_id}.yaml",
        is_external=rng.random() < 0.3,
    )


def _state(rng: random.Random, rule_id: str) -> StateWrite:
    now = datetime.now(UTC)
    return StateWrite(
        rule_id=rule_id,
        state=rng.choice(["enabled", "disabled", "disabled", "clipped"]),
        set_by="test",
        confidence_max=rng.choice([None, 0.5]),
        # A past expiry too: such a state counts as over until the scheduler reverts it.
        expires_at=rng.choice([None, now + timedelta(hours=1), now - timedelta(seconds=1)]),
    )


def _changes(rng: random.Random, ids: list[str]) -> ChangeSet:
    changes = ChangeSet()
    for rule_id in rng.sample(ids, rng.randrange(1, 6)):
        action = rng.randrange(6)
        if action <= 2:
            changes.upserts.append(_upsert(rng, rule_id))
        elif action == 3:
            changes.deletes.append(RuleDelete(rule_id, f"{rule_id}.yaml"))
        elif action == 4:
            changes.state_writes.append(_state(rng, rule_id))
        else:
            diagnostic = Diagnostic(f"{rule_id}.yaml", 1, 1, "bad", "test")
            changes.rejections.append(Rejection(f"{rule_id}.yaml", rule_id, (diagnostic,), None))
    return changes


async def test_the_kept_summary_equals_a_full_read_after_random_changes(
    database_url: str,
) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_async_engine(database_url)
    rng = random.Random(7)
    ids = [f"L{i:03d}" for i in range(40)]
    try:
        summaries = Summaries()
        relay = OutboxRelay(engine, database_url, summaries, is_leader=lambda: True)
        repository = RuleRepository(engine, None)
        relay.follow(repository)
        # Half the rows reach the relay handed over, half read back from the outbox.
        outsider = RuleRepository(engine, None)
        await repository.apply(ChangeSet(upserts=[_upsert(rng, r) for r in ids[:20]]), actor="test")
        while await relay.publish_pending():
            pass
        for round_ in range(40):
            writer = repository if rng.random() < 0.5 else outsider
            await writer.apply(_changes(rng, ids), actor="test")
            if round_ % 3 == 0:
                continue  # several commits published in one pass
            while await relay.publish_pending():
                pass
            full = OutboxRelay(engine, database_url, Summaries(), is_leader=lambda: True)
            expected = (await full.ruleset_summary()).model_dump(mode="json")
            assert summaries.seen[-1] == expected, f"after round {round_}"
            assert (await relay.ruleset_summary()).model_dump(mode="json") == expected
        assert len({s["digest"] for s in summaries.seen}) > 10  # the changes were changes
    finally:
        await engine.dispose()
