"""Who calls the control service is the NATS server's word: a real nats-server running the
shipped accounts config, a real master (in-process, connected as the `master` role, verified
identities required) and ttpctl connected as operator, viewer and admin.

- the audit's actor, the state's `set_by` and the published `set_by` are `<ACCOUNT>/<user>`
  as the server authenticated the caller;
- only the console role may name the user it acts for (`actor`, kept as `on_behalf_of`);
  from any other role such a request is refused `forbidden`;
- a client forging `Nats-Request-Info` (claiming ADMIN/admin or CONSOLE/console) is
  overwritten by the server;
- a viewer reads everything but its state changes find no route at the server;
- only an admin may force a state for a rule the master does not know;
- a request without the header, and every request on a server that authenticates nobody,
  is refused `forbidden`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from typer.testing import CliRunner, Result

from harness.master import (
    InProcessMaster,
    db_events,
    install,
    master_role_settings,
    query,
    running_master,
    starter_ids,
)
from harness.nats_roles import RoleNats, role_nats
from ttp_core.contract import subjects
from ttp_core.contract.control import (
    ErrorCode,
    Reply,
    StateChanged,
    StateClearRequest,
)
from ttp_core.contract.payloads import RulesetRevision
from ttp_master.caller_identity import REQUEST_INFO_HEADER
from ttp_master.control_service import ControlService, LeaderTerm
from ttp_master.fleet_tracker import FleetTracker
from ttp_runtime.control_client import no_responders_message
from ttp_runtime.embedded import EmbeddedNats
from ttp_runtime.nats_roles import Role
from ttpctl.app import app
from ttpctl.exit_codes import ExitCode

RULES = starter_ids(3)
UNKNOWN_RULE = "ZZ-NOT-A-RULE"
FORGED = json.dumps({"acc": "ADMIN", "user": "admin"})


@dataclass
class World:
    roles: RoleNats
    master: InProcessMaster
    dsn: str

    async def ttpctl(self, role: Role, *argv: str) -> Result:
        """ttpctl connected as `role` (its credentials in the environment, as `ttpctl dev`'s
        credential files give them), run in a thread: it runs its own event loop."""
        return await asyncio.to_thread(
            CliRunner().invoke, app, list(argv), env=self.roles.env(role)
        )

    async def request(
        self, role: Role, endpoint: str, body: Any, headers: dict[str, str] | None = None
    ) -> Reply[Any]:
        nc = await self.roles.connect(role)
        try:
            msg = await nc.request(
                subjects.control(endpoint), json.dumps(body).encode(), timeout=10, headers=headers
            )
        finally:
            await nc.close()
        return Reply[Any].model_validate_json(msg.data)

    async def state_events(self, rule_id: str) -> list[dict[str, Any]]:
        return [e for e in await db_events(self.dsn, rule_id) if e["kind"] == "state"]


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[RoleNats]:
    with role_nats(tmp_path) as running:
        yield running


@pytest.fixture
async def world(
    roles: RoleNats, database_url: str, database_dsn: str, tmp_path: Path
) -> AsyncIterator[World]:
    rules = tmp_path / "rules"
    rules.mkdir()
    install(rules, RULES, flat=True)
    # Exactly what a master process of the `master` role is given, and the default identity
    # mode (verified), which test harnesses on plain NATS turn off.
    settings = master_role_settings(roles, database_url, rules)
    async with running_master(settings) as master:
        yield World(roles, master, database_dsn)


def _stripped(text: str) -> str:
    return " ".join(text.split())


async def test_the_actor_is_the_servers_identity(world: World) -> None:
    first, second = RULES[0], RULES[1]
    # A NATS client of the operator role: the nats CLI's way.
    reply = await world.request(
        "operator", "state.set", {"rule_id": first, "state": "disabled", "reason": "noisy"}
    )
    assert reply.ok, reply.error
    changed = StateChanged.model_validate(reply.result)
    assert (changed.state.set_by, changed.state.on_behalf_of) == ("OPERATORS/operator", None)

    result = await world.ttpctl(
        "operator", "state", "set", second, "--clip", "0.5", "--reason", "tuning"
    )
    assert result.exit_code == 0, result.output
    (event,) = await world.state_events(second)
    assert (event["actor"], event["on_behalf_of"]) == ("OPERATORS/operator", None)
    assert event["payload"]["data"]["set_by"] == "OPERATORS/operator"  # what is published
    (row,) = await query(world.dsn, "SELECT * FROM ttp_rule_state WHERE rule_id = %s", second)
    assert (row["set_by"], row["on_behalf_of"]) == ("OPERATORS/operator", None)

    cleared = await world.ttpctl("operator", "state", "clear", second)
    assert cleared.exit_code == 0, cleared.output
    events = await world.state_events(second)
    assert [(e["actor"], e["on_behalf_of"]) for e in events] == [
        ("OPERATORS/operator", None),
        ("OPERATORS/operator", None),
    ]


async def test_the_console_acts_for_its_user_and_the_audit_names_both(world: World) -> None:
    rule_id = RULES[1]
    body = {"rule_id": rule_id, "state": "clipped", "confidence_max": 0.5, "reason": "tuning"}
    reply = await world.request("console", "state.set", {**body, "actor": "alice"})
    assert reply.ok, reply.error
    changed = StateChanged.model_validate(reply.result)
    assert (changed.state.set_by, changed.state.on_behalf_of) == ("CONSOLE/console", "alice")
    (event,) = await world.state_events(rule_id)
    assert (event["actor"], event["on_behalf_of"]) == ("CONSOLE/console", "alice")
    assert event["payload"]["data"]["set_by"] == "CONSOLE/console"  # what is published
    (row,) = await query(world.dsn, "SELECT * FROM ttp_rule_state WHERE rule_id = %s", rule_id)
    assert (row["set_by"], row["on_behalf_of"]) == ("CONSOLE/console", "alice")

    shown = await world.ttpctl("operator", "state", "show", rule_id)
    assert shown.exit_code == 0, shown.output
    assert "CONSOLE/console (for alice)" in shown.stdout
    audit = await world.ttpctl("viewer", "audit", rule_id, "--json")
    assert audit.exit_code == 0, audit.output
    (entry,) = [e for e in json.loads(audit.stdout)["entries"] if e["kind"] == "state"]
    assert (entry["actor"], entry["on_behalf_of"]) == ("CONSOLE/console", "alice")
    table = await world.ttpctl("viewer", "audit", rule_id)
    assert "CONSOLE/console (for alice)" in table.stdout

    cleared = await world.request("console", "state.clear", {"rule_id": rule_id, "actor": "bob"})
    assert cleared.ok, cleared.error
    events = await world.state_events(rule_id)
    assert [(e["actor"], e["on_behalf_of"]) for e in events] == [
        ("CONSOLE/console", "alice"),
        ("CONSOLE/console", "bob"),
    ]
    # The console reads like anyone, and without a user to name it acts as itself.
    listed = await world.request("console", "rules.list", {})
    assert listed.ok, listed.error
    plain = await world.request("console", "state.set", {**body, "confidence_max": 0.4})
    assert plain.ok, plain.error
    assert StateChanged.model_validate(plain.result).state.on_behalf_of is None
    assert world.roles.violations("console") == []


async def test_only_the_console_may_name_a_user_it_acts_for(world: World) -> None:
    rule_id = RULES[2]
    body = {"rule_id": rule_id, "state": "disabled", "reason": "claims", "actor": "alice"}
    for role in ("operator", "admin"):
        for endpoint, request in (
            ("state.set", body),
            ("state.clear", {"rule_id": rule_id, "actor": "alice"}),
        ):
            reply = await world.request(role, endpoint, request)
            assert not reply.ok and reply.error is not None, (role, endpoint)
            assert reply.error.code is ErrorCode.FORBIDDEN
            assert reply.error.field == "actor"
            assert "only the console role may name a user" in reply.error.message
            assert reply.error.message.startswith(("OPERATORS/operator", "ADMIN/admin"))
    # A viewer reaches no state change at all: the server has no route for it.
    with pytest.raises(nats.errors.NoRespondersError):
        await world.request("viewer", "state.set", body)
    assert await world.state_events(rule_id) == []
    # Acting for a user buys the console no admin rights: force stays refused.
    forced = {**body, "rule_id": UNKNOWN_RULE, "force": True}
    refused = await world.request("console", "state.set", forced)
    assert refused.error is not None and refused.error.code is ErrorCode.FORBIDDEN
    assert "CONSOLE/console" in refused.error.message
    assert "needs the admin role" in refused.error.message
    assert await world.state_events(UNKNOWN_RULE) == []


async def test_a_forged_request_info_header_is_overwritten_by_the_server(world: World) -> None:
    rule_id = RULES[0]
    forged = {REQUEST_INFO_HEADER: FORGED, REQUEST_INFO_HEADER.lower(): FORGED}
    body = {"rule_id": rule_id, "state": "disabled", "reason": "forged"}
    reply = await world.request("operator", "state.set", body, headers=forged)
    assert reply.ok, reply.error
    (event,) = await world.state_events(rule_id)
    assert (event["actor"], event["on_behalf_of"]) == ("OPERATORS/operator", None)

    # Claiming to be the console does not let an operator name a user either.
    as_console = json.dumps({"acc": "CONSOLE", "user": "console"})
    claimed = await world.request(
        "operator",
        "state.clear",
        {"rule_id": rule_id, "actor": "alice"},
        headers={REQUEST_INFO_HEADER: as_console},
    )
    assert claimed.error is not None and claimed.error.code is ErrorCode.FORBIDDEN
    assert claimed.error.message.startswith("OPERATORS/operator has the operator role")
    assert len(await world.state_events(rule_id)) == 1

    # The forged claim buys no admin rights either: force stays refused.
    force = {
        "rule_id": UNKNOWN_RULE,
        "state": "disabled",
        "reason": "forged force",
        "force": True,
    }
    refused = await world.request("operator", "state.set", force, headers=forged)
    assert not refused.ok and refused.error is not None
    assert refused.error.code is ErrorCode.FORBIDDEN
    assert "OPERATORS/operator" in refused.error.message
    assert "admin role" in refused.error.message
    assert await world.state_events(UNKNOWN_RULE) == []
    # A viewer claiming to be an admin reads, as viewers do, and still cannot write.
    as_viewer = await world.request("viewer", "audit", {"limit": 1}, headers=forged)
    assert as_viewer.ok


async def test_a_viewer_reads_everything_and_changes_nothing(world: World) -> None:
    rule_id = RULES[0]
    for argv in (
        ("state", "set", rule_id, "--disable", "--reason", "viewer tries"),
        ("state", "clear", rule_id),
    ):
        result = await world.ttpctl("viewer", *argv)
        assert result.exit_code == ExitCode.UNAVAILABLE, result.output
        endpoint = "state.set" if argv[1] == "set" else "state.clear"
        assert no_responders_message(subjects.control(endpoint)) in _stripped(result.stderr)
    assert await world.state_events(rule_id) == []
    # The server, not the master, stopped it: VIEWERS imports no endpoint that writes.
    assert world.roles.violations("viewer") == []

    for argv in (
        ("state", "show"),
        ("rules", "list"),
        ("rules", "show", rule_id),
        ("audit",),
    ):
        result = await world.ttpctl("viewer", *argv)
        assert result.exit_code == 0, (argv, result.output)
    fleet = await world.ttpctl("viewer", "fleet", "status", "--json")
    # No worker runs here, so the fleet is not converged (exit 1): the master did answer.
    assert fleet.exit_code == ExitCode.NEGATIVE, fleet.output
    assert json.loads(fleet.stdout)["workers"] == []


async def test_only_an_admin_may_force_a_state_for_an_unknown_rule(world: World) -> None:
    argv = ("state", "set", UNKNOWN_RULE, "--disable", "--force", "--reason", "ahead of time")
    refused = await world.ttpctl("operator", *argv)
    assert refused.exit_code == ExitCode.FORBIDDEN == 5, refused.output
    assert "needs the admin role" in _stripped(refused.stderr)
    without_force = await world.ttpctl("operator", *argv[:-3], "--reason", "ahead of time")
    assert without_force.exit_code == ExitCode.UNKNOWN_RULE, without_force.output
    assert await world.state_events(UNKNOWN_RULE) == []

    forced = await world.ttpctl("admin", *argv)
    assert forced.exit_code == 0, forced.output
    (event,) = await world.state_events(UNKNOWN_RULE)
    assert (event["actor"], event["on_behalf_of"]) == ("ADMIN/admin", None)


# --------------------------------------------------------------------------------------------
# No verifiable identity: the control service alone, on other servers
# --------------------------------------------------------------------------------------------


async def _summary() -> RulesetRevision:
    return RulesetRevision(revision=3, rules=0, active=0, external=0, rejected=0, digest="d")


def _term() -> LeaderTerm:
    # Only `revision` is asked here: it needs only the summary.
    return LeaderTerm(repository=None, queries=None, scheduler=None, summary=_summary)  # type: ignore[arg-type]


async def _serving(nc: Client) -> ControlService:
    control = ControlService(nc, FleetTracker())  # verified identities: the default
    # Once this returns the server holds the service's subscriptions, so the test's requests
    # over another connection reach them.
    await control.serve_leader(_term())
    return control


async def _ask(nc: Client, endpoint: str, body: dict[str, Any] | None = None) -> Reply[Any]:
    data = json.dumps(body or {}).encode()
    msg = await nc.request(subjects.control(endpoint), data, timeout=10)
    return Reply[Any].model_validate_json(msg.data)


async def test_a_request_without_the_header_is_forbidden(tmp_path: Path) -> None:
    # A server that authenticates its clients, but whose users share one account: nothing
    # crosses a service import, so no request carries the server's header.
    with EmbeddedNats(
        data_dir=tmp_path / "nats", extra_args=("--user", "svc", "--pass", "s3cret-pw")
    ) as server:
        service_nc = await nats.connect(server.url, user="svc", password="s3cret-pw")
        client = await nats.connect(server.url, user="svc", password="s3cret-pw")
        control = await _serving(service_nc)
        try:
            assert control.server_authenticates() is True
            for endpoint, body in (
                ("revision", {}),
                ("state.set", {"rule_id": "R1", "state": "disabled", "reason": "r"}),
            ):
                reply = await _ask(client, endpoint, body)
                assert not reply.ok and reply.error is not None
                assert reply.error.code is ErrorCode.FORBIDDEN
                assert f"no {REQUEST_INFO_HEADER} header" in reply.error.message
                assert "docs/security.md" in reply.error.message
        finally:
            await control.stop()
            await client.close()
            await service_nc.close()


async def test_a_server_that_authenticates_nobody_gets_every_request_refused(
    private_nats: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service_nc = await nats.connect(private_nats.url)
    client = await nats.connect(private_nats.url)
    with caplog.at_level(logging.ERROR, logger="ttp_master.control_service"):
        control = await _serving(service_nc)
    try:
        assert control.server_authenticates() is False
        assert any("could forge" in r.getMessage() for r in caplog.records), caplog.text
        # Even a header naming an admin is refused: on this server anyone could send it.
        msg = await client.request(
            subjects.control("revision"), b"{}", timeout=10, headers={REQUEST_INFO_HEADER: FORGED}
        )
        reply = Reply[Any].model_validate_json(msg.data)
        assert reply.error is not None and reply.error.code is ErrorCode.FORBIDDEN
        assert "could forge" in reply.error.message
        assert (msg.headers or {}).get("Nats-Service-Error-Code") == "403"
        clear = StateClearRequest(rule_id="R1").model_dump_json(exclude_none=True)
        assert (await _ask(client, "state.clear", json.loads(clear))).error is not None

        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["state", "show", "--nats-url", private_nats.url]
        )
        assert result.exit_code == ExitCode.FORBIDDEN, result.output
        assert "does not require authentication" in _stripped(result.stderr)
    finally:
        await control.stop()
        await client.close()
        await service_nc.close()
