"""`ttpctl coverage` and `ttpctl tags layer` against a real NATS server running the shipped
accounts config, each command connected as the read-only ``consumer`` role.

The tests play the master (rule definitions and operator states on TTP_RULES, published
as the ``master`` role, which also creates the streams) and the worker (tag messages on
TTP_TAGS, as the ``worker`` role). The layers written are checked with MITRE's
``mitreattack.navlayers`` (harness.navigator_layers). At the end no role was refused
anything: the consumer role's grants are enough for both commands.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from harness.bus_messages import (
    Emit,
    rule_definition,
    rule_reloaded,
    rule_state,
    tag_data,
    tagged_message,
)
from harness.nats_roles import RoleNats, role_nats
from harness.navigator_layers import check_layer, layer_metadata, technique_entries
from ttp_core.attack import load_catalogue
from ttp_core.contract import subjects
from ttp_runtime.nats import MSG_ID_HEADER, ensure_streams
from ttp_runtime.nats_roles import Role
from ttpctl import tags_commands
from ttpctl.app import app

HOUR_S = 3600.0


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[RoleNats]:
    with role_nats(tmp_path) as running:
        yield running
        assert running.unexpected_violations() == []


async def _create_streams(roles: RoleNats) -> None:
    async with roles.client("master") as nc:
        await ensure_streams(nc.jetstream(), 1, HOUR_S, -1, HOUR_S)


@pytest.fixture
def bus(roles: RoleNats) -> RoleNats:
    """The roles' server with the product's streams."""
    asyncio.run(_create_streams(roles))
    return roles


async def _publish(roles: RoleNats, role: Role, messages: list[tuple[str, bytes]]) -> None:
    async with roles.client(role) as nc:
        js = nc.jetstream()
        for subject, payload in messages:
            await js.publish(subject, payload, headers={MSG_ID_HEADER: str(uuid.uuid4())})


def publish(roles: RoleNats, role: Role, messages: list[tuple[str, bytes]]) -> None:
    asyncio.run(_publish(roles, role, messages))


def run(roles: RoleNats, *argv: str) -> Result:
    """Run ttpctl in-process as the consumer role."""
    return CliRunner().invoke(app, list(argv), env=roles.env("consumer"), catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# Rule messages
# --------------------------------------------------------------------------------------------


def reloaded(
    rule_id: str,
    revision: int,
    *emits: Emit,
    deleted: bool = False,
    match: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    rule = rule_definition(rule_id, *emits, match=match)
    return rule_reloaded(rule_id, revision, rule, deleted=deleted)


def state(
    rule_id: str,
    revision: int,
    kind: str,
    *,
    confidence_max: float | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, bytes]:
    return rule_state(
        rule_id,
        revision,
        kind,
        confidence_max=confidence_max,
        expires_at=expires_at,
        reason="test",
        set_by="OPERATORS/operator",
    )


def rule_messages() -> list[tuple[str, bytes]]:
    now = datetime.now(UTC)
    return [
        reloaded("R0001", 1, ("T1059", "T1059.004", 0.9)),
        reloaded("R0002", 2, ("T1059", "T1059.004", 0.8), ("T1083", None, 0.6)),
        state("R0002", 3, "clipped", confidence_max=0.5),
        reloaded("R0003", 4, ("T1082", None, 0.9)),
        state("R0003", 5, "disabled"),
        reloaded("R0004", 6, ("T1057", None, 0.9)),
        reloaded("R0004", 7, deleted=True),
        reloaded("R0005", 8, ("T1087", None, 0.7)),
        state("R0005", 9, "disabled", expires_at=now - timedelta(seconds=1)),
        reloaded("R0006", 10, ("T1021", "T1021.004", 0.8), match={"kind": "lifter:ssh"}),
        (subjects.rule_reloaded("R0007"), b"{not json"),
    ]


def test_coverage_layer_counts_the_rules_the_workers_apply(bus: RoleNats, tmp_path: Path) -> None:
    publish(bus, "master", rule_messages())
    target = tmp_path / "coverage.json"

    result = run(bus, "coverage", "--layer", str(target))

    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text(encoding="utf-8"))
    check_layer(document, load_catalogue())
    scored = {e["techniqueID"]: (e["score"], e["comment"]) for e in document["techniques"]}
    assert scored == {
        "T1059.004": (90, "R0001, R0002"),  # R0002 clipped to 0.5 there; R0001 is best
        "T1083": (50, "R0002"),  # clipped: 0.6 lowered to 0.5
        "T1087": (70, "R0005"),  # its disable expired: enabled, as on the workers
    }
    # Disabled (R0003), deleted (R0004) and external (R0006) rules cover nothing.
    about = layer_metadata(document)
    assert about["generated by"] == "ttpctl coverage"
    assert about["ruleset revision"] == "10"
    assert about["clipped rules"] == "R0002"
    assert about["disabled rules (left out)"] == "R0003"
    assert about["external rules"] == "left out: R0006"
    assert about["unreadable rule messages"] == "1"
    assert "skipped the message on ttp.rule.reloaded.R0007" in result.stderr
    assert f"wrote {target}: 3 techniques covered by 3 rules in force" in result.stderr


def test_coverage_table_json_and_external_rules(bus: RoleNats) -> None:
    publish(bus, "master", rule_messages())

    table = run(bus, "coverage")
    as_json = run(bus, "coverage", "--json", "--external")

    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TECHNIQUE", "TACTICS", "NAME", "RULES", "BEST"]
    assert lines[1].split()[0:2] == ["T1059.004", "execution"]
    assert lines[1].split()[-2:] == ["R0001,R0002", "0.90"]
    assert lines[-1].startswith("3 techniques covered by 3 rules in force (ATT&CK 18.1,")
    assert lines[-1].endswith(
        "; 1 clipped rule at the clipped confidence; left out: 1 disabled, 1 external,"
        " 1 deleted; 1 rule message skipped as unreadable (see above)."
    )

    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert [t["technique_id"] for t in document["techniques"]] == [
        "T1021.004",
        "T1059.004",
        "T1083",
        "T1087",
    ]
    assert document["techniques"][0]["rules"] == ["R0006"]
    assert document["left_out"]["external"] == []
    assert document["left_out"]["disabled"] == ["R0003"]


def test_coverage_of_an_empty_ttp_rules_is_an_empty_layer_on_stdout(bus: RoleNats) -> None:
    result = run(bus, "coverage", "--layer", "-")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    check_layer(document, load_catalogue())
    assert document["techniques"] == []


def test_missing_streams_and_unwritable_files_exit_2(roles: RoleNats, tmp_path: Path) -> None:
    no_stream = run(roles, "coverage")
    assert no_stream.exit_code == 2
    assert "stream TTP_RULES does not exist" in no_stream.stderr

    no_tags = run(roles, "tags", "layer", str(tmp_path / "x.json"))
    assert no_tags.exit_code == 2
    assert "stream TTP_TAGS does not exist" in no_tags.stderr

    asyncio.run(_create_streams(roles))
    nowhere = run(roles, "coverage", "--layer", str(tmp_path / "missing" / "layer.json"))
    assert nowhere.exit_code == 2
    assert "cannot write" in nowhere.stderr
    assert not (tmp_path / "missing").exists()


# --------------------------------------------------------------------------------------------
# Tag messages
# --------------------------------------------------------------------------------------------


def tagged(source_id: str, *emits: Emit, kind: str = "command") -> tuple[str, bytes]:
    tags = [
        tag_data(
            technique,
            sub,
            rule_id="R0001",
            confidence=confidence,
            evidence={"command_text": "bash -i"},
        )
        for technique, sub, confidence in emits
    ]
    return tagged_message(source_id, tags, kind=kind)


def read_layer(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    check_layer(document, load_catalogue())
    return document


def test_tags_layer_counts_the_window(
    bus: RoleNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(bus, "worker", [tagged("before", ("T1110", None, 0.9))])
    asyncio.run(asyncio.sleep(0.05))
    start = datetime.now(UTC)
    asyncio.run(asyncio.sleep(0.05))
    publish(
        bus,
        "worker",
        [
            tagged("e1", ("T1059", "T1059.004", 0.6)),
            tagged("e2", ("T1059", "T1059.004", 0.9), ("T1083", None, 0.5)),
            tagged("e3", ("T1059", "T1059.004", 0.7)),
            tagged("e4", ("T9999", None, 1.0)),  # no such technique
            (subjects.tagged("command"), b"forged bytes"),
            tagged("e5", ("T1083", None, 0.4), kind="http_request"),
        ],
    )
    # A slow read (10 ms a message) with progress every millisecond instead of every 2 s:
    # the read reports how far it is while it goes.
    count_one = tags_commands._Counter.on_message

    async def slowly(self: tags_commands._Counter, msg: Any) -> None:
        await asyncio.sleep(0.01)
        await count_one(self, msg)

    monkeypatch.setattr(tags_commands._Counter, "on_message", slowly)
    monkeypatch.setattr(tags_commands, "_PROGRESS_EVERY_S", 0.001)
    target = tmp_path / "observed.json"

    result = run(bus, "tags", "layer", "--since", start.isoformat(), str(target))

    assert result.exit_code == 0, result.output
    document = read_layer(target)
    window = f"since {start.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    assert document["name"] == f"ttp-rulebus observed techniques ({window})"
    (shell,) = technique_entries(document, "T1059.004")
    assert shell["score"] == 100
    assert shell["comment"] == f"3 tags in window {window}; best confidence 0.90"
    (discovery,) = technique_entries(document, "T1083")
    assert discovery["comment"] == f"2 tags in window {window}; best confidence 0.50"
    assert technique_entries(document, "T1110") == []  # before the window
    about = layer_metadata(document)
    assert about["messages read"] == "6"
    assert about["undecodable messages skipped"] == "1"
    assert about["source kind"] == "all"
    left_out = next(v for k, v in about.items() if k.startswith("left out"))
    assert left_out == "1 tags naming 1 technique ids"
    notes = result.stderr.splitlines()
    assert any("skipped message" in n and "not a valid ttp.tagged.v1" in n for n in notes)
    progress = re.compile(r"ttpctl tags layer: read \d+ messages, \d+ to go")
    assert any(progress.fullmatch(n) for n in notes)
    assert notes[-1] == (
        f"ttpctl tags layer: wrote {target}: 2 techniques observed in 6 tags of 6 messages"
        " (1 undecodable message skipped)."
    )


def test_tags_layer_of_one_kind_and_of_an_empty_window(bus: RoleNats, tmp_path: Path) -> None:
    publish(
        bus,
        "worker",
        [
            tagged("c1", ("T1059", None, 0.9)),
            tagged("h1", ("T1190", None, 0.8), kind="http_request"),
        ],
    )
    only_http = tmp_path / "http.json"
    empty = tmp_path / "empty.json"

    kind = run(bus, "tags", "layer", "--since", "10m", "--kind", "http_request", str(only_http))
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    nothing = run(bus, "tags", "layer", "--since", future, str(empty))

    assert kind.exit_code == 0, kind.output
    document = read_layer(only_http)
    assert [e["techniqueID"] for e in document["techniques"]] == ["T1190"]
    assert layer_metadata(document)["source kind"] == "http_request"
    assert layer_metadata(document)["window"] == "10m"
    assert nothing.exit_code == 0, nothing.output
    assert read_layer(empty)["techniques"] == []


def test_tags_layer_usage_errors(bus: RoleNats, tmp_path: Path) -> None:
    bad_since = run(bus, "tags", "layer", "--since", "yesterday", str(tmp_path / "a.json"))
    bad_kind = run(bus, "tags", "layer", "--kind", "a.b", str(tmp_path / "a.json"))

    assert bad_since.exit_code == 2
    assert "is neither a duration" in bad_since.output
    assert bad_kind.exit_code == 2
    assert "is not a source_kind" in bad_kind.output
