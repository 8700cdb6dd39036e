"""Rule files vanishing en masse are held back as deletes, in-process with the real master:
a slow `rm -rf` that spans several watcher batches publishes no delete, and a delete of a
few rules is published at once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.master import (
    BusRecorder,
    Markers,
    db_rules,
    master_settings,
    rule_events,
    running_master,
    starter_pack_in,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    return starter_pack_in(tmp_path / "rules")


async def test_a_slow_rm_rf_spanning_several_batches_publishes_no_delete(
    private_nats: Any, database_url: str, database_dsn: str, rules: Path, bus: BusRecorder
) -> None:
    settings = master_settings(private_nats.url, database_url, rules, mass_delete_confirm_s=600)
    async with running_master(settings) as handle:
        await Markers(bus, rules).sync()
        published = len(bus.messages)
        # About 1.5 s for the whole tree: several watcher batches (each closes within 0.25 s).
        for path in sorted(rules.glob("*.yaml")):
            path.unlink()
            await asyncio.sleep(0.015)
        shutil.rmtree(rules)

        async def held() -> bool:
            status = handle.master.state.held()
            return status is not None and "rules directory missing" in status

        await wait_until(held, "the master holding every rule")
        await asyncio.sleep(1.5)  # more batches and rechecks: still nothing may go out
        tombstones = [m for m in rule_events(bus.messages[published:]) if m.data["deleted"]]
        assert tombstones == []
        assert not any(row["deleted"] for row in (await db_rules(database_dsn)).values())


async def test_deleting_a_few_rules_is_published_at_once(
    private_nats: Any, database_url: str, database_dsn: str, rules: Path, bus: BusRecorder
) -> None:
    settings = master_settings(private_nats.url, database_url, rules, mass_delete_confirm_s=600)
    async with running_master(settings) as handle:
        markers = Markers(bus, rules)
        await markers.sync()
        gone = sorted(rules.glob("*.yaml"))[:3]
        events = await markers.observe(lambda: [path.unlink() for path in gone])
        deleted = {m.rule_id for m in rule_events(events) if m.data["deleted"]}
        assert deleted == {path.stem for path in gone}
        assert handle.master.state.held() is None
