"""A rule message in TTP_RULES that the master never produced is found and replaced.

A client that can publish on `ttp.rule.>` (a compromised host, before permissions stop it)
forges a state with a huge revision and a definition with other content under a real
revision. The leader's stream guard compares each rule message with the outbox and answers
each forgery with PostgreSQL's event under a revision past the forged one, so a worker that
took the forgery ends holding the master's digest again. Real NATS, real PostgreSQL, an
in-process master and worker.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js.client import JetStreamContext
from prometheus_client import REGISTRY

from harness.master import (
    install,
    master_settings,
    nats_client,
    query,
    running_master,
    starter_ids,
    stream_last,
    wait_until,
)
from harness.worker import running_worker, wait_for
from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    MASTER_SOURCE,
    RuleReloaded,
    RulesetRevision,
    RuleStateChanged,
    decode,
    encode,
    envelope,
)
from ttp_master import bootstrap
from ttp_master.stream_guard import REPAIR_ACTOR
from ttp_worker.bootstrap import Worker

FORGED_REVISION = 10**9
TIMEOUT_S = 30.0


async def master_summary(js: JetStreamContext) -> RulesetRevision:
    msg = await js.get_last_msg(subjects.STREAM_RULES, subjects.RULESET_REVISION)
    assert msg.data is not None
    return decode(msg.data, RulesetRevision).data


async def holds_master_digest(js: JetStreamContext, worker: Worker) -> bool:
    summary = await master_summary(js)
    current = worker.book.current
    return current.revision == summary.revision and current.index.digest() == summary.digest


async def forge(js: JetStreamContext, subject: str, data: Any, rule_id: str) -> None:
    """Publish as the test client, not the master, with an id the master never used."""
    event = envelope(data, source=MASTER_SOURCE, subject=rule_id, event_id=f"forged-{uuid.uuid4()}")
    await js.publish(subject, encode(event), headers={"Nats-Msg-Id": event.id})


def forged_count() -> float:
    return REGISTRY.get_sample_value("ttp_master_forged_rule_messages_total") or 0.0


async def test_forged_state_and_definition_are_replaced_and_the_worker_matches_the_master(
    private_nats: Any,
    database_url: str,
    database_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The guard runs every STREAM_CHECK_INTERVAL_S (5 s in production); a shorter period only
    # makes the test quicker, it changes nothing about what is checked.
    monkeypatch.setattr(bootstrap, "STREAM_CHECK_INTERVAL_S", 0.3)
    caplog.set_level(logging.ERROR, logger="ttp_master.stream_guard")
    rules = tmp_path / "rules"
    rules.mkdir()
    disabled_id, edited_id, _ = ids = starter_ids(3)
    install(rules, ids)
    settings = master_settings(private_nats.url, database_url, rules, relay_poll_interval_s=0.1)
    before = forged_count()
    async with (
        nats_client(private_nats.url) as nc,
        running_master(settings),
        running_worker(private_nats.url, "w-forged") as worker,
    ):
        js = nc.jetstream()
        await wait_until(lambda: holds_master_digest(js, worker), "the worker to converge")
        genuine = await master_summary(js)
        definition = await stream_last(js, subjects.rule_reloaded(edited_id))
        assert definition is not None
        real_revision = int(definition["data"]["revision"])

        # A disable under a revision the master never reached.
        await forge(
            js,
            subjects.rule_state(disabled_id),
            RuleStateChanged(
                rule_id=disabled_id,
                revision=FORGED_REVISION,
                state="disabled",
                reason="forged",
                set_by="mallory",
                set_at=datetime.now(UTC),
            ),
            disabled_id,
        )
        # Other content under the rule's real revision: the worker already holds that
        # revision, so only a live consumer that has not seen it yet would take it; a
        # resyncing worker takes it from the stream.
        body = dict(definition["data"]["rule"])
        body["name"] = "forged_name"
        await forge(
            js,
            subjects.rule_reloaded(edited_id),
            RuleReloaded(
                rule_id=edited_id,
                revision=real_revision,
                rule_version=int(definition["data"]["rule_version"]),
                content_sha256="f" * 64,
                source_path=str(definition["data"]["source_path"]),
                rule=body,
            ),
            edited_id,
        )
        assert worker.rules is not None
        worker.rules.request_resync("test: read the forged stream")  # takes the forgery

        book = worker.book
        await wait_for(
            lambda: (book.held_state(disabled_id) or 0) > FORGED_REVISION,
            "a state newer than the forged revision",
            TIMEOUT_S,
        )
        await wait_for(
            lambda: (book.held_definition(edited_id) or 0) > FORGED_REVISION,
            "the definition reissued past the forged revision",
            TIMEOUT_S,
        )
        await wait_until(lambda: holds_master_digest(js, worker), "the worker to match again")
        summary = await master_summary(js)
        assert summary.digest == genuine.digest  # nothing the master holds changed
        assert summary.revision > FORGED_REVISION
        assert disabled_id not in book.current.index.states

        # The stream's copy of each subject is PostgreSQL's reissue, written by the guard.
        reissues = await query(
            database_dsn,
            "SELECT subject, revision, payload FROM ttp_rule_event WHERE actor = %s "
            "ORDER BY revision",
            REPAIR_ACTOR,
        )
        by_subject = {r["subject"]: r for r in reissues}
        assert set(by_subject) == {
            subjects.rule_state(disabled_id),
            subjects.rule_reloaded(edited_id),
        }
        for subject, row in by_subject.items():
            assert row["revision"] > FORGED_REVISION
            assert await stream_last(js, subject) == row["payload"]
        restored = by_subject[subjects.rule_reloaded(edited_id)]["payload"]["data"]
        assert restored["rule"] == definition["data"]["rule"]
        assert restored["content_sha256"] == definition["data"]["content_sha256"]
        assert by_subject[subjects.rule_state(disabled_id)]["payload"]["data"]["state"] == (
            "enabled"
        )

    assert forged_count() - before == 2
    logged = {
        (getattr(r, "subject", None), getattr(r, "forged_revision", None))
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith("forged message")
    }
    assert logged == {
        (subjects.rule_state(disabled_id), FORGED_REVISION),
        (subjects.rule_reloaded(edited_id), real_revision),
    }


async def test_a_forged_revision_beyond_reach_is_replaced_without_exhausting_the_sequence(
    private_nats: Any,
    database_url: str,
    database_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bootstrap, "STREAM_CHECK_INTERVAL_S", 0.3)
    rules = tmp_path / "rules"
    rules.mkdir()
    near_limit_id, beyond_bigint_id = ids = starter_ids(2)
    install(rules, ids)
    settings = master_settings(private_nats.url, database_url, rules, relay_poll_interval_s=0.1)
    async with nats_client(private_nats.url) as nc, running_master(settings):
        js = nc.jetstream()
        genuine = await master_summary(js)
        for rule_id, revision in ((near_limit_id, 2**62), (beyond_bigint_id, 10**30)):
            await forge(
                js,
                subjects.rule_state(rule_id),
                RuleStateChanged(rule_id=rule_id, revision=revision, state="disabled"),
                rule_id,
            )

        async def replaced() -> bool:
            rows = await query(
                database_dsn,
                "SELECT subject FROM ttp_rule_event WHERE actor = %s AND published_at IS NOT NULL",
                REPAIR_ACTOR,
            )
            return {r["subject"] for r in rows} == {subjects.rule_state(i) for i in ids}

        await wait_until(replaced, "both forgeries replaced")
        (sequence,) = await query(database_dsn, "SELECT last_value FROM ttp_revision_seq")
        assert sequence["last_value"] < 2**53
        for rule_id in ids:
            held = await stream_last(js, subjects.rule_state(rule_id))
            assert held is not None
            assert held["data"]["state"] == "enabled"
            assert held["data"]["revision"] < 2**53
        # A worker that starts now (or resyncs) reads the master's rules, not the forgery.
        async with running_worker(private_nats.url, "w-forged") as worker:
            await wait_until(lambda: holds_master_digest(js, worker), "a new worker to converge")
            assert (await master_summary(js)).digest == genuine.digest
            assert not worker.book.current.index.states
