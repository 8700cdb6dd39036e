"""Rule files that PostgreSQL cannot store never stop the master.

Two layers: validation rejects what the database or the JSON contract cannot hold (NUL,
lone surrogates), with the file, line and column; and if a file's write fails in the
database anyway, that file alone becomes a rejection carrying the database's message while
the rest of its batch commits and is published.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from harness.master import (
    BusRecorder,
    Markers,
    db_rejections,
    db_rules,
    install,
    master_settings,
    nats_client,
    rule_events,
    rule_text,
    running_master,
)


@dataclass
class Rig:
    nats_url: str
    database_url: str
    dsn: str
    rules: Path
    nc: Client
    bus: BusRecorder

    def master(self) -> Any:
        return running_master(master_settings(self.nats_url, self.database_url, self.rules))


@pytest.fixture
async def rig(
    private_nats: Any, database_url: str, database_dsn: str, tmp_path: Path
) -> AsyncIterator[Rig]:
    rules = tmp_path / "rules"
    rules.mkdir()
    async with nats_client(private_nats.url) as nc:
        bus = await BusRecorder(nc).start()
        yield Rig(private_nats.url, database_url, database_dsn, rules, nc, bus)


async def test_nul_escape_in_name_is_a_located_rejection_and_the_master_lives(rig: Rig) -> None:
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
