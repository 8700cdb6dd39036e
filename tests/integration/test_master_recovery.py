"""The master converges after what happens while it is down or behind its back:
files changed/deleted while stopped, TTP_RULES deleted while running or while stopped.

PostgreSQL is the source of truth and JetStream the distribution log rebuilt from it. As in
`test_master_sync`, each test has its own embedded NATS server and its own database, runs
`Master` in-process and observes on the bus, in the tables and in the stream.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from nats.js.client import JetStreamContext

from harness.master import (
    BusRecorder,
    Markers,
    Seen,
    check_reloaded,
    check_tombstone,
    cosmetic_variant,
    db_events,
    db_rejections,
    db_rules,
    install,
    master_settings,
    nats_client,
    query,
    rule_events,
    rule_text,
    rule_upsert,
    running_master,
    starter_ids,
    stream_last,
    wait_until,
    with_version,
)
from ttp_core.contract import subjects
from ttp_master import bootstrap


def one_each(events: list[Seen]) -> dict[str, Seen]:
    found: dict[str, Seen] = {}
    for seen in events:
        assert seen.rule_id not in found, f"two events for {seen.rule_id}: {events}"
        found[seen.rule_id] = seen
    return found


async def latest_per_subject(dsn: str) -> dict[str, dict[str, Any]]:
    """What TTP_RULES must hold: the newest published JetStream event of every subject."""
    rows = await query(
        dsn,
        "SELECT DISTINCT ON (subject) subject, revision, payload FROM ttp_rule_event "
        "WHERE jetstream AND published_at IS NOT NULL ORDER BY subject, revision DESC",
    )
    return {r["subject"]: r for r in rows}


async def stream_matches_database(js: JetStreamContext, dsn: str) -> bool:
    """Converged: the outbox is fully published, every rule subject's message in TTP_RULES
    is PostgreSQL's newest event for it, and the ruleset summary names the newest revision."""
    try:
        unpublished = await query(
            dsn, "SELECT revision FROM ttp_rule_event WHERE published_at IS NULL"
        )
        if unpublished:
            return False
        expected = await latest_per_subject(dsn)
        for subject, row in expected.items():
            held = await stream_last(js, subject)
            if held is None or held != row["payload"]:
                return False
        newest = max((r["revision"] for r in expected.values()), default=0)
        summary = await stream_last(js, subjects.RULESET_REVISION)
        return summary is not None and summary["data"]["revision"] == newest
    except Exception:  # the stream is missing meanwhile
        return False


async def test_restart_after_changes_while_down_converges(
    private_nats: Any, database_url: str, database_dsn: str, rules: Path, bus: BusRecorder
) -> None:
    placed = install(rules, ["R0001", "R0005", "R0023", "R0078", "R0079"])
    settings = master_settings(private_nats.url, database_url, rules)
    async with running_master(settings):
        await Markers(bus, rules).sync()
    before = await db_rules(database_dsn)
    first_run = len(bus.messages)

    # While the master is down:
    placed["R0023"].write_text(with_version(rule_text("R0023"), 2))  # changed
    placed["R0005"].unlink()  # deleted
    install(rules, ["R0010"])  # added
    placed["R0001"].write_text(cosmetic_variant(rule_text("R0001")))  # no-op edit
    (rules / "moved").mkdir()
    placed["R0078"].rename(rules / "moved" / "R0078.yaml")  # moved
    placed["R0079"].write_text("rule_id: R0079\nrule_version: [\n")  # broken

    async with running_master(settings):
        await Markers(bus, rules).sync()
        events = [m for m in bus.messages[first_run:] if not m.is_marker]
        reloaded = one_each(rule_events(events))
        assert set(reloaded) == {"R0023", "R0005", "R0010", "R0078"}
        rows = await db_rules(database_dsn)
        for rule_id in ("R0023", "R0010", "R0078"):
            path = next(rules.rglob(f"{rule_id}.yaml"))
            rel = path.relative_to(rules).as_posix()
            check_reloaded(reloaded[rule_id], rules, rel, rows[rule_id])
        for rule_id in ("R0023", "R0005", "R0078"):
            assert reloaded[rule_id].data["revision"] > before[rule_id]["revision"]
        assert reloaded["R0023"].data["rule_version"] == 2
        assert reloaded["R0078"].data["source_path"] == "moved/R0078.yaml"
        check_tombstone(reloaded["R0005"], "R0005", "recon/R0005.yaml", rows["R0005"])
        (rejected,) = rule_events(events, "rejected")
        assert rejected.data["rule_id"] == "R0079"
        # Unchanged and broken rules keep what they had.
        for rule_id in ("R0001", "R0079"):
            assert rows[rule_id]["revision"] == before[rule_id]["revision"]
            assert rows[rule_id]["content_sha256"] == before[rule_id]["content_sha256"]
        assert set(await db_rejections(database_dsn)) == {"auth/R0079.yaml"}
        await wait_until(
            lambda: stream_matches_database(bus.nc.jetstream(), database_dsn),
            "TTP_RULES to match PostgreSQL",
        )
    second_run = len(bus.messages)
    outbox = len(await db_events(database_dsn))

    # A restart with nothing changed writes and publishes nothing (and does not repeat the
    # rejection, whose errors are already recorded).
    async with running_master(settings):
        await Markers(bus, rules).sync()
        events = [m for m in bus.messages[second_run:] if not m.is_marker and m.kind != "ruleset"]
        assert events == []
        assert len(await db_events(database_dsn)) == outbox + 1  # the marker's row only


async def test_stream_deleted_while_running_is_rebuilt(
    private_nats: Any,
    database_url: str,
    database_dsn: str,
    rules: Path,
    bus: BusRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The guard checks the stream every STREAM_CHECK_INTERVAL_S (5 s in production); a
    # shorter period only makes the test quicker, it changes nothing about what is checked.
    monkeypatch.setattr(bootstrap, "STREAM_CHECK_INTERVAL_S", 0.3)
    ids = starter_ids(60)
    placed = install(rules, ids)
    settings = master_settings(private_nats.url, database_url, rules, relay_poll_interval_s=0.1)
    js = bus.nc.jetstream()
    async with running_master(settings):
        markers = Markers(bus, rules)
        await markers.observe(placed[ids[0]].unlink)  # a tombstone must come back too
        assert await stream_matches_database(js, database_dsn)
        outbox_before = await db_events(database_dsn)

        await js.delete_stream(subjects.STREAM_RULES)
        # Edits while the stream is gone: their publishes fail until it is back, and then
        # race with the rebuild; the stream must still end with the newest of everything.
        edited = ids[-10:]
        for version in (5, 6):
            for rule_id in edited:
                placed[rule_id].write_text(with_version(rule_text(rule_id), version))
            await wait_until(
                lambda v=version: _committed(database_dsn, edited, v), "the edits to commit"
            )

        await wait_until(
            lambda: stream_matches_database(js, database_dsn), "TTP_RULES rebuilt from PostgreSQL"
        )
        rows = await db_rules(database_dsn)
        for rule_id in edited:
            held = await stream_last(js, subjects.rule_reloaded(rule_id))
            assert held is not None and held["data"]["rule_version"] == 6
            assert held["data"]["revision"] == rows[rule_id]["revision"]
        tombstone = await stream_last(js, subjects.rule_reloaded(ids[0]))
        assert tombstone is not None and tombstone["data"]["deleted"] is True
        # Rebuilt by republishing, not by writing again: the old rows are all still there
        # with their ids, and only the edits added rows.
        outbox_after = await db_events(database_dsn)
        assert [r["msg_id"] for r in outbox_after[: len(outbox_before)]] == [
            r["msg_id"] for r in outbox_before
        ]
        assert len(outbox_after) == len(outbox_before) + 2 * len(edited)
        # Republished messages carry their original ids (a copy the stream still had
        # would have been deduplicated).
        for rule_id in ids[1:5]:
            held = await stream_last(js, subjects.rule_reloaded(rule_id))
            assert held is not None and held["id"] == f"ttp-rev-{rows[rule_id]['revision']}"

        # And the master carries on normally.
        path = placed[ids[1]]
        events = await markers.observe(lambda: path.write_text(with_version(rule_text(ids[1]), 2)))
        (reloaded,) = rule_events(events)
        check_reloaded(
            reloaded,
            rules,
            path.relative_to(rules).as_posix(),
            (await db_rules(database_dsn))[ids[1]],
        )


async def _committed(dsn: str, rule_ids: list[str], version: int) -> bool:
    rows = await db_rules(dsn)
    return all(rows[r]["rule_version"] == version for r in rule_ids)


async def test_stream_lost_while_down_is_rebuilt_at_startup(
    private_nats: Any, database_url: str, database_dsn: str, rules: Path, bus: BusRecorder
) -> None:
    placed = install(rules, ["R0001", "R0005", "R0023"])
    settings = master_settings(private_nats.url, database_url, rules)
    js = bus.nc.jetstream()
    async with running_master(settings):
        await Markers(bus, rules).observe(placed["R0005"].unlink)
    outbox = await db_events(database_dsn)
    await js.delete_stream(subjects.STREAM_RULES)

    async with running_master(settings):
        # Ready means caught up, which includes the startup repair.
        assert await stream_matches_database(js, database_dsn)
    assert await db_events(database_dsn) == outbox  # nothing rewritten, only republished


async def test_stream_behind_after_restore_is_repaired_at_startup(
    private_nats: Any, database_url: str, database_dsn: str, rules: Path, bus: BusRecorder
) -> None:
    """The NATS volume restored from an older backup: TTP_RULES is behind PostgreSQL."""
    placed = install(rules, ["R0001", "R0023"])
    settings = master_settings(private_nats.url, database_url, rules)
    js = bus.nc.jetstream()
    async with running_master(settings):
        await Markers(bus, rules).sync()
    store = private_nats.embedded.store_dir
    backup = rules.parent / "jetstream-backup"
    private_nats.kill()
    shutil.copytree(store, backup)
    private_nats.restart()
    async with running_master(settings):
        await Markers(bus, rules).observe(
            lambda: placed["R0023"].write_text(with_version(rule_text("R0023"), 2))
        )
    private_nats.kill()
    shutil.rmtree(store)
    shutil.copytree(backup, store)
    private_nats.restart()
    await wait_until(lambda: _connected(bus), "the observer to reconnect")
    held = await stream_last(js, subjects.rule_reloaded("R0023"))
    assert held is not None and held["data"]["rule_version"] == 1  # the backup is older
    assert not await stream_matches_database(js, database_dsn)

    async with running_master(settings):
        assert await stream_matches_database(js, database_dsn)
        held = await stream_last(js, subjects.rule_reloaded("R0023"))
        assert held is not None and held["data"]["rule_version"] == 2


async def _connected(bus: BusRecorder) -> bool:
    if not bus.nc.is_connected:
        return False
    try:
        await bus.nc.flush(timeout=1)
    except Exception:
        return False
    return True


async def test_rules_directory_missing_at_start_deletes_nothing(
    private_nats: Any, database_url: str, database_dsn: str, rules: Path, bus: BusRecorder
) -> None:
    """An unmounted volume must not read as "every rule deleted"."""
    install(rules, ["R0001", "R0023"])
    settings = master_settings(private_nats.url, database_url, rules)
    async with running_master(settings):
        await Markers(bus, rules).sync()
    before = await db_rules(database_dsn)
    shutil.rmtree(rules)
    published = len(bus.messages)
    async with running_master(settings):
        assert await db_rules(database_dsn) == before
        # Once the directory is back, it is read again: a changed rule is published.
        install(rules, ["R0001", "R0023"])
        (rules / "execution" / "R0023.yaml").write_text(with_version(rule_text("R0023"), 2))
        await Markers(bus, rules).sync()
    events = one_each(rule_events([m for m in bus.messages[published:] if not m.is_marker]))
    assert set(events) == {"R0023"}
    assert events["R0023"].data["rule_version"] == 2


async def test_repair_never_overwrites_a_newer_publish(
    private_nats: Any, database_url: str, database_dsn: str
) -> None:
    """A stream rebuild republishes old revisions while the relay may publish new ones: the
    two must not interleave, or the rebuild's older copy lands last and TTP_RULES (one
    message per subject) ends up holding a stale rule.

    The master's pieces are wired here as `bootstrap.Master._lead` wires them (the guard's
    repair runs under the publisher's lock), with a rebuild long enough that a relay pass
    is certain to be attempted in its middle.
    """
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from ttp_master.bootstrap import NatsPublisher
    from ttp_master.db.migrate import upgrade_to_head
    from ttp_master.db.repository import ChangeSet, RuleRepository
    from ttp_master.outbox_relay import OutboxRelay
    from ttp_master.stream_guard import StreamGuard
    from ttp_runtime.nats import ensure_streams

    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_async_engine(database_url)
    try:
        async with nats_client(private_nats.url) as nc:
            js = nc.jetstream()
            await ensure_streams(js, 1, 3600, 1 << 30, 3600)
            publisher = NatsPublisher(nc, js)
            relay = OutboxRelay(
                engine, database_url, publisher, is_leader=lambda: True, lock=publisher.lock
            )
            guard = StreamGuard(
                engine, js, publisher, publish_summary=relay.publish_ruleset_revision
            )
            repository = RuleRepository(engine, None)
            ids = [f"B{i:04d}" for i in range(300)]
            await repository.apply(ChangeSet(upserts=[rule_upsert(r) for r in ids]), actor="test")
            while await relay.publish_pending():
                pass

            await js.delete_stream(subjects.STREAM_RULES)
            await ensure_streams(js, 1, 3600, 1 << 30, 3600)
            # The newest change of the rule the rebuild republishes last, not yet published.
            (newest,) = await repository.apply(
                ChangeSet(upserts=[rule_upsert(ids[-1], version=2)]), actor="test"
            )

            async def rebuild() -> int:
                async with publisher.lock:
                    return await guard.repair()

            rebuilding = asyncio.create_task(rebuild())

            async def rebuild_under_way() -> bool:
                info = await js.stream_info(subjects.STREAM_RULES)
                return info.state.messages >= 20

            await wait_until(rebuild_under_way, "the rebuild to start")
            assert not rebuilding.done()
            await relay.publish_pending()  # the relay's pass, woken by the new row
            assert await rebuilding == len(ids)

            held = await stream_last(js, subjects.rule_reloaded(ids[-1]))
            assert held is not None
            assert held["data"]["revision"] == newest, "TTP_RULES holds an older revision"
            assert held["data"]["rule_version"] == 2
    finally:
        await engine.dispose()


async def test_readiness_drops_while_changes_cannot_be_published(
    private_nats: Any, database_url: str, database_dsn: str, rules: Path, bus: BusRecorder
) -> None:
    """NATS down with a change waiting in the outbox: the leader is not caught up (not
    ready) until the relay has published it after NATS is back."""
    placed = install(rules, ["R0001"])
    settings = master_settings(private_nats.url, database_url, rules, relay_poll_interval_s=0.2)
    async with running_master(settings) as handle:
        state = handle.master.state
        assert state.readiness() == (True, "leader and caught up")
        private_nats.kill()
        placed["R0001"].write_text(with_version(rule_text("R0001"), 2))

        async def pending_and_not_ready() -> bool:
            rows = await query(
                database_dsn, "SELECT revision FROM ttp_rule_event WHERE published_at IS NULL"
            )
            return bool(rows) and not state.readiness()[0]

        await wait_until(pending_and_not_ready, "the unpublished edit to make it not ready")
        ready, reason = state.readiness()
        assert not ready and "outbox not published" in reason
        private_nats.restart()

        async def ready_again() -> bool:
            return state.readiness()[0]

        await wait_until(ready_again, "readiness after NATS is back")
        js = bus.nc.jetstream()
        await wait_until(lambda: _connected(bus), "the observer to reconnect")
        assert await stream_matches_database(js, database_dsn)


async def test_stream_purged_while_running_is_refilled(
    private_nats: Any,
    database_url: str,
    database_dsn: str,
    rules: Path,
    bus: BusRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`nats stream purge TTP_RULES`: the stream exists but is empty, and its de-duplication
    window still remembers every message id, so the rebuild must not be dropped as
    duplicates."""
    monkeypatch.setattr(bootstrap, "STREAM_CHECK_INTERVAL_S", 0.3)
    install(rules, starter_ids(20))
    settings = master_settings(private_nats.url, database_url, rules, relay_poll_interval_s=0.1)
    js = bus.nc.jetstream()
    async with running_master(settings):
        await Markers(bus, rules).sync()
        assert await stream_matches_database(js, database_dsn)
        await js.purge_stream(subjects.STREAM_RULES)
        await wait_until(
            lambda: stream_matches_database(js, database_dsn), "TTP_RULES refilled from PostgreSQL"
        )
