"""The master reads the deployment's field catalogue (`TTP_FIELD_CATALOGUE`): a typo'd field
of an accepted rule is logged with its location and suggestion, a kind the deployment added
is not, and a bad catalogue file stops the start with its location."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from harness.master import db_rules, master_settings, rule_text, running_master
from ttp_core.contract.field_catalogue import CatalogueError

SMB_RULE = """\
rule_id: S0001
rule_version: 1
name: admin_share_access
applies_to: [smb_session]
match:
  field: share
  equals: ADMIN$
emits:
  - tactic: TA0008
    technique_id: T1021
    sub_technique_id: T1021.002
    confidence: 0.6
"""


async def test_master_logs_catalogue_warnings_of_accepted_rules(
    private_nats: Any, database_url: str, database_dsn: str, tmp_path: Path, caplog: Any
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "S0001.yaml").write_text(SMB_RULE)
    typo = rule_text("R0001", as_id="T0001").split("tests:")[0]
    (rules / "T0001.yaml").write_text(typo.replace("field: command_text", "field: command_txt"))
    catalogue = tmp_path / "fields.yaml"
    catalogue.write_text("kinds:\n  smb_session:\n    fields:\n      share: string\n")
    settings = master_settings(private_nats.url, database_url, rules, field_catalogue=catalogue)
    with caplog.at_level(logging.WARNING, logger="ttp_master.rule_sync"):
        async with running_master(settings):
            assert set(await db_rules(database_dsn)) == {"S0001", "T0001"}
    warnings = [
        r.getMessage() for r in caplog.records if "accepted with a warning" in r.getMessage()
    ]
    assert warnings == [
        "rule file accepted with a warning: T0001.yaml:7:10: warning: field 'command_txt' is "
        "not a payload field of command in the field catalogue (did you mean 'command_text'?)"
    ]


def test_a_bad_catalogue_file_stops_the_master_with_its_location(tmp_path: Path) -> None:
    from ttp_master.bootstrap import Master

    catalogue = tmp_path / "fields.yaml"
    catalogue.write_text("kinds:\n  smb_session: [share]\n")
    settings = master_settings(
        "nats://127.0.0.1:1", "postgresql+psycopg://x/y", tmp_path, field_catalogue=catalogue
    )
    with pytest.raises(CatalogueError) as caught:
        Master(settings)
    assert str(caught.value).startswith(f"{catalogue}:2:16: kind 'smb_session' is a mapping")
