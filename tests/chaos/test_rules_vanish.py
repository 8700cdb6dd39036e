"""The rules directory vanishes under a running master and worker: the last good rule set
keeps serving and no delete is published until the files return or the condition is
confirmed; an intended mass delete still goes through once confirmed."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.chaos import ChaosServers
from harness.chaos_rules_vanish import rules_vanish

pytestmark = pytest.mark.timeout(300)


async def test_vanished_rules_directory_keeps_the_last_good_set_until_back_or_confirmed(
    chaos_servers: ChaosServers, rules_dir: Path, tmp_path: Path
) -> None:
    starter_rules = len(list(rules_dir.glob("*.yaml")))
    row = await rules_vanish(chaos_servers, rules_dir, tmp_path, confirm_s=3.0, events=300)
    print(row)
    details = row.details
    # While the directory was gone (past the confirmation period): every rule held, nothing
    # deleted or published, and the worker tagged with the last good set.
    assert details["held_past_confirmation_while_missing"] is True
    assert details["held_deletes_metric"] == starter_rules
    assert "rules directory missing" in details["rules_list_held_deletes"]
    assert details["revision_while_missing"] == details["revision_before"]
    assert details["rows_while_missing"] == {"live": starter_rules, "deleted": 0}
    assert details["firing_events"] > 100
    assert (row.lost, row.duplicated) == (0, 0)
    assert details["unexpected_tags"] == 0
    # Restored unchanged: nothing republished; the next edit is one revision.
    assert details["revision_after_restore"] == details["revision_before"]
    assert details["revision_after_edit"] == details["revision_before"] + 1
    # Emptied directory: held at first, deleted once confirmed.
    assert details["rows_while_emptied_and_held"] == {"live": starter_rules, "deleted": 0}
    assert details["rules_after_confirmation"] == 0
