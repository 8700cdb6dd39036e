"""Rule files that PostgreSQL cannot store never stop the master.

Two layers: validation rejects what the database or the JSON contract cannot hold (NUL,
lone surrogates), with the file, line and column; and if a file's write fails in the
database anyway, that file alone becomes a rejection carrying the database's message while
the rest of its batch commits and is published.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY

from harness.master import (
    Markers,
    MasterRig,
    db_events,
    db_rejections,
    db_rules,
    install,
    query,
    rule_events,
    rule_text,
    starter_rule,
)
from ttp_core.contract import subjects


async def test_nul_escape_in_name_is_a_located_rejection_and_the_master_lives(
    rig: MasterRig,
) -> None:
    """A YAML "\\0" escape used to pass validation; PostgreSQL then refused the NUL and the
    exception ended the master, which read the same file again on every restart."""
    install(rig.rules, ["R0001"], flat=True)
    async with rig.master():
        markers = Markers(rig.bus, rig.rules)
        await markers.sync()
        good = rule_text("R0023")
        poison = good.replace("name: bash_dev_tcp_reverse_shell", 'name: "a\\0b"', 1)
        assert poison != good
        path = rig.rules / "R0023.yaml"
        events = await markers.observe(lambda: path.write_text(poison))
        assert rule_events(events) == []
        (rejected,) = rule_events(events, "rejected")
        (error,) = rejected.data["errors"]
        assert (error["line"], error["column"]) == (3, 7)
        assert "NUL" in error["message"]
        assert "R0023" not in await db_rules(rig.dsn)
        assert set(await db_rejections(rig.dsn)) == {"R0023.yaml"}
        # The master still follows the directory: the fixed file is a rule.
        events = await markers.observe(lambda: path.write_text(good))
        (reloaded,) = rule_events(events)
        assert reloaded.rule_id == "R0023"
        assert await db_rejections(rig.dsn) == {}


REFUSING_CONSTRAINT = "test_refuses_r0023"


def rejections_counted() -> float:
    return REGISTRY.get_sample_value("ttp_master_rejections_total") or 0.0


async def test_a_file_postgresql_refuses_is_rejected_alone_and_its_batch_commits(
    rig: MasterRig,
) -> None:
    """Defence in depth: a row PostgreSQL refuses (here a CHECK constraint the test adds to
    its own database, so the master needs no switch) costs only its own file. The file
    becomes a rejection with the database's message (table, subject, metric); every other
    file of the same batch is committed and published."""
    from ttp_master.db.migrate import upgrade_to_head

    await asyncio.to_thread(upgrade_to_head, rig.database_url)
    await query(
        rig.dsn,
        f"ALTER TABLE ttp_rule ADD CONSTRAINT {REFUSING_CONSTRAINT} CHECK (rule_id <> 'R0023')",
    )
    install(rig.rules, ["R0001", "R0002", "R0014", "R0023"], flat=True)
    counted = rejections_counted()
    async with rig.master():
        # The startup reconcile is one batch holding all four files.
        rows = await db_rules(rig.dsn)
        assert set(rows) == {"R0001", "R0002", "R0014"}
        revisions = sorted(row["revision"] for row in rows.values())
        rejections = await db_rejections(rig.dsn)
        assert set(rejections) == {"R0023.yaml"}
        (error,) = rejections["R0023.yaml"]["errors"]
        assert error["message"].startswith("PostgreSQL refused this rule: ")
        assert REFUSING_CONSTRAINT in error["message"] and "SQLSTATE 23514" in error["message"]
        assert (error["line"], error["column"]) == (1, 1)
        assert rejections_counted() == counted + 1

        markers = Markers(rig.bus, rig.rules)
        await markers.sync()
        published = {m.rule_id: m for m in rule_events(rig.bus.messages)}
        assert {k: m.data["revision"] for k, m in published.items()} == {
            k: rows[k]["revision"] for k in ("R0001", "R0002", "R0014")
        }
        (rejected,) = rule_events(rig.bus.messages, "rejected")
        assert rejected.subject == subjects.rule_rejected("R0023")
        assert rejected.data["errors"] == [error]
        # The rejection took the refused change's place in the revision order.
        (event,) = [e for e in await db_events(rig.dsn, "R0023") if e["kind"] == "rejected"]
        assert event["revision"] == revisions[-1] + 1
        assert revisions == list(range(revisions[0], revisions[0] + 3))
        summary = [m for m in rig.bus.messages if m.kind == "ruleset"][-1]
        assert summary.data["rejected"] == 1 and summary.data["rules"] >= 3

        # A watcher batch: a directory moved in with a good file and an edit of the
        # refused one arrives as one batch; again only R0023 is refused.
        incoming = rig.rules.parent / "incoming"
        incoming.mkdir()
        shutil.copyfile(starter_rule("R0003"), incoming / "R0003.yaml")
        shutil.copyfile(starter_rule("R0023"), incoming / "R0023.yaml")
        (rig.rules / "R0023.yaml").unlink()
        events = await markers.observe(lambda: incoming.rename(rig.rules / "sub"))
        assert [m.rule_id for m in rule_events(events)] == ["R0003"]
        assert "R0003" in await db_rules(rig.dsn)
        assert set(await db_rejections(rig.dsn)) == {"sub/R0023.yaml"}
        assert rejections_counted() == counted + 2

        # Once the database takes the row, saving the file again makes it a rule.
        await query(rig.dsn, f"ALTER TABLE ttp_rule DROP CONSTRAINT {REFUSING_CONSTRAINT}")
        path = rig.rules / "sub" / "R0023.yaml"
        events = await markers.observe(lambda: path.write_bytes(path.read_bytes()))
        (reloaded,) = rule_events(events)
        assert reloaded.rule_id == "R0023"
        assert await db_rejections(rig.dsn) == {}


async def test_a_directory_name_that_is_not_utf8_costs_only_its_files(rig: MasterRig) -> None:
    """Its files' paths cannot be stored as text (they hold surrogate escapes of the raw
    bytes): PostgreSQL's driver refuses them, and the master goes on with the other files."""
    bad = Path(os.fsdecode(bytes(rig.rules) + b"/caf\xe9"))
    bad.mkdir()
    shutil.copyfile(starter_rule("R0002"), bad / "R0002.yaml")
    install(rig.rules, ["R0001", "R0003"], flat=True)
    async with rig.master():
        assert set(await db_rules(rig.dsn)) == {"R0001", "R0003"}
        markers = Markers(rig.bus, rig.rules)
        events = await markers.observe(
            lambda: shutil.copyfile(starter_rule("R0014"), rig.rules / "R0014.yaml")
        )
        assert [m.rule_id for m in rule_events(events)] == ["R0014"]
