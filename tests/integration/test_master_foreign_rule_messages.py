"""Copies of other streams' messages that a push consumer delivers into TTP_RULES are purged,
and every rule message stays.

The known gap (docs/security.md): the server does not check a push consumer's deliver
subject against its creator's permissions. A worker's consumer of TTP_EVENTS, or a third
party's consumer of TTP_TAGS, delivering on `ttp.ruleset.revision` makes TTP_RULES store a
copy of each message under its own subject (`ttp.event.<kind>`, `ttp.tagged.<kind>`), one
subject per kind the attacker picks, until the stream is full and refuses the master's rules.
A real nats-server with the shipped roles, a real master connected as the `master` role (so
the purge works with its grants alone), real PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import REGISTRY

from harness.master import (
    install,
    master_role_settings,
    running_master,
    starter_ids,
    wait_until,
)
from harness.nats_roles import RoleNats, role_nats
from ttp_core.contract import subjects
from ttp_master import bootstrap, stream_guard
from ttp_master.foreign_subjects import is_stream_subject

KINDS = [f"k{i:02d}" for i in range(20)]
TIMEOUT_S = 30.0


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[RoleNats]:
    with role_nats(tmp_path) as running:
        yield running


def purged_count() -> float:
    return REGISTRY.get_sample_value("ttp_master_foreign_rule_stream_messages_total") or 0.0


async def held(watch: Client) -> dict[str, tuple[int, bytes]]:
    """(sequence, data) of the message TTP_RULES holds on each of its subjects."""
    js = watch.jetstream()
    info = await js.stream_info(subjects.STREAM_RULES, subjects_filter=">")
    found = {}
    for subject in info.state.subjects or {}:
        msg = await js.get_last_msg(subjects.STREAM_RULES, subject)
        found[subject] = (int(msg.seq or 0), msg.data or b"")
    return found


@pytest.mark.parametrize(
    "verify_batch",
    [
        pytest.param(stream_guard.VERIFY_BATCH, id="found-by-the-walk"),
        # A walk that never advances (as one still far behind in a large stream): only the
        # look at the stream's tail finds the copies.
        pytest.param(0, id="found-at-the-tail"),
    ],
)
async def test_copies_pushed_into_ttp_rules_are_purged_and_every_rule_stays(
    verify_batch: int,
    roles: RoleNats,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The guard runs every STREAM_CHECK_INTERVAL_S (5 s in production); a shorter period only
    # makes the test quicker, it changes nothing about what is checked.
    monkeypatch.setattr(bootstrap, "STREAM_CHECK_INTERVAL_S", 0.3)
    monkeypatch.setattr(stream_guard, "VERIFY_BATCH", verify_batch)
    caplog.set_level(logging.WARNING, logger="ttp_master.stream_guard")
    rules = tmp_path / "rules"
    rules.mkdir()
    install(rules, starter_ids(3), flat=True)
    settings = master_role_settings(roles, database_url, rules, relay_poll_interval_s=0.1)
    before = purged_count()
    async with (
        running_master(settings),
        roles.client("consumer") as watch,
        roles.client("producer") as producer,
        roles.client("worker") as worker,
    ):
        rule_messages = await held(watch)
        assert subjects.RULESET_REVISION in rule_messages
        assert all(is_stream_subject(s) for s in rule_messages)

        for kind in KINDS:
            await producer.jetstream().publish(subjects.event(kind), b'{"forged":"event"}')
        await worker.jetstream().publish(subjects.tagged("ssh"), b'{"forged":"tag"}')
        deputy = ConsumerConfig(
            name="deputy",
            deliver_subject=subjects.RULESET_REVISION,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,  # each message delivered, hence copied, once
        )
        await worker.jetstream().add_consumer(subjects.STREAM_EVENTS, deputy)
        await watch.jetstream().add_consumer(subjects.STREAM_TAGS, deputy)
        copies = len(KINDS) + 1

        async def all_purged() -> bool:
            return purged_count() - before >= copies and await held(watch) == rule_messages

        # Should no copy ever arrive because the server refuses the consumers, the gap is
        # closed and the guard has nothing left to purge: update docs/security.md.
        await wait_until(all_purged, "every copy purged", TIMEOUT_S)
        assert purged_count() - before == copies  # each copy once, nothing else

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = " ".join(r.getMessage() for r in warnings)
    assert subjects.wildcard(subjects.EVENT_PREFIX) in text
    assert subjects.wildcard(subjects.TAGGED_PREFIX) in text
    assert sum(getattr(r, "purged", 0) for r in warnings) == copies
    assert roles.unexpected_violations() == []
