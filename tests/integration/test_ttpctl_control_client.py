"""ttpctl's control client and commands against a real NATS server and a small test peer.

The peer is a stand-in for the master's control service: a real NATS subscriber on
`ttp.ctl.>` (in a thread with its own event loop, so the CLI can run `asyncio.run` in the
test's thread) that records each request and answers with canned `Reply` JSON, error
replies with the micro service headers, or not at all. The real master is covered by the
end-to-end tests; here the point is the client side: decoding, error mapping, exit codes
and what reaches the wire.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from ttp_core.contract import subjects
from ttp_core.contract.control import (
    AuditEntry,
    AuditLog,
    AuditRequest,
    ControlError,
    Endpoint,
    ErrorCode,
    FleetInfo,
    OperatorState,
    Reply,
    RevisionInfo,
    RuleDetail,
    RuleShowRequest,
    RulesList,
    RuleSummary,
    StateChanged,
    StateGetRequest,
    StateList,
    StateSetRequest,
    WorkerView,
)
from ttp_core.contract.payloads import RejectionError
from ttp_runtime.control_client import ControlClient, ControlClientError, no_responders_message
from ttpctl.app import app
from ttpctl.exit_codes import exit_code_for

NOW = datetime.now(UTC).replace(microsecond=0)


# --------------------------------------------------------------------------------------------
# The test peer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canned:
    """One answer: the body and headers to publish on the request's reply subject."""

    body: bytes
    headers: dict[str, str] | None = None


Answer = Canned | Callable[[dict[str, Any]], Canned | None] | None


def ok(result: BaseModel) -> Canned:
    return Canned(Reply[Any](ok=True, result=result).model_dump_json().encode())


def error(code: ErrorCode, message: str, field: str | None = None) -> Canned:
    body = Reply[Any](ok=False, error=ControlError(code=code, message=message, field=field))
    # What nats.micro's respond_error sends along with the body.
    headers = {"Nats-Service-Error": message, "Nats-Service-Error-Code": str(code.status)}
    return Canned(body.model_dump_json().encode(), headers)


class ControlPeer:
    """Answers `ttp.ctl.<endpoint>` from ``answers``; None (or no entry) means silence."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: dict[Endpoint, Answer] = {}
        self.requests: list[tuple[Endpoint, dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._nc: Client | None = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._thread.start()
        self._run(self._connect())

    async def _connect(self) -> None:
        self._nc = await nats.connect(self.url, name="ttp-test-control-peer")
        await self._nc.subscribe(subjects.control(">"), cb=self._on_request)
        await self._nc.flush()

    async def _on_request(self, msg: Msg) -> None:
        assert self._nc is not None
        endpoint = Endpoint(msg.subject.removeprefix(f"{subjects.CONTROL_PREFIX}."))
        request = json.loads(msg.data or b"{}")
        self.requests.append((endpoint, request))
        answer = self.answers.get(endpoint)
        if callable(answer):
            answer = answer(request)
        if answer is not None:
            await self._nc.publish(msg.reply, answer.body, headers=answer.headers)

    def sent(self, endpoint: Endpoint) -> list[dict[str, Any]]:
        """The request bodies received on ``endpoint``."""
        return [body for where, body in self.requests if where == endpoint]

    def stop(self) -> None:
        if self._nc is not None:
            self._run(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def peer(nats_url: str) -> Iterator[ControlPeer]:
    control_peer = ControlPeer(nats_url)
    control_peer.start()
    try:
        yield control_peer
    finally:
        control_peer.stop()


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[ControlClient]:
    nc = await nats.connect(nats_url, name="ttp-test-control-client")
    try:
        yield ControlClient(nc, timeout_s=2.0)
    finally:
        await nc.close()


def ttpctl(nats_url: str, *argv: str) -> Result:
    return CliRunner().invoke(app, [*argv, "--nats-url", nats_url])


def plain(text: str) -> str:
    """Rich's boxed, wrapped usage error as one line of words."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


# --------------------------------------------------------------------------------------------
# Canned results
# --------------------------------------------------------------------------------------------


def operator_state(rule_id: str = "R0031", **fields: Any) -> OperatorState:
    return OperatorState(**{"rule_id": rule_id, "state": "enabled", **fields})


def worker(worker_id: str, revision: int, ready: bool = True) -> WorkerView:
    return WorkerView(
        worker_id=worker_id,
        revision=revision,
        ready=ready,
        lag=max(0, 124 - revision),
        digest_matches=True,
        rules=10,
        active=10,
        external=0,
        events_processed=5,
        last_seen=NOW,
        age_s=0.4,
        gone=False,
    )


def fleet_info(*workers: WorkerView, revision: int = 124) -> FleetInfo:
    converged = bool(workers) and all(w.ready and w.revision >= revision for w in workers)
    return FleetInfo(
        revision=revision,
        digest="d" * 64,
        status_interval_s=1.0,
        workers=list(workers),
        converged=converged,
    )


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


async def test_a_result_is_decoded_to_the_endpoints_model(
    peer: ControlPeer, client: ControlClient
) -> None:
    info = fleet_info(worker("w1", 124), worker("w2", 123, ready=False))
    peer.answers[Endpoint.FLEET] = ok(info)
    assert await client.fleet() == info
    assert peer.sent(Endpoint.FLEET) == [{}]


async def test_a_request_goes_out_as_its_models_json(
    peer: ControlPeer, client: ControlClient
) -> None:
    changed = StateChanged(state=operator_state(state="clipped", confidence_max=0.5), revision=7)
    peer.answers[Endpoint.STATE_SET] = ok(changed)
    expires = NOW + timedelta(hours=2)
    request = StateSetRequest(
        rule_id="R0031",
        state="clipped",
        confidence_max=0.5,
        expires_at=expires,
        reason="noisy",
        actor="alice",
    )
    assert await client.state_set(request) == changed
    (sent,) = peer.sent(Endpoint.STATE_SET)
    assert StateSetRequest.model_validate(sent) == request


async def test_an_error_reply_raises_with_code_message_and_field(
    peer: ControlPeer, client: ControlClient
) -> None:
    peer.answers[Endpoint.RULES_SHOW] = error(ErrorCode.UNKNOWN_RULE, "no rule 'R9'", "rule_id")
    with pytest.raises(ControlClientError) as caught:
        await client.call(Endpoint.RULES_SHOW, RuleShowRequest(rule_id="R9"))
    assert caught.value.code is ErrorCode.UNKNOWN_RULE
    assert caught.value.message == "no rule 'R9'"
    assert caught.value.field == "rule_id"
    assert exit_code_for(caught.value.code) == 3


async def test_an_error_known_only_from_the_micro_headers(
    peer: ControlPeer, client: ControlClient
) -> None:
    headers = {"Nats-Service-Error": "bad input", "Nats-Service-Error-Code": "400"}
    peer.answers[Endpoint.REVISION] = Canned(b"", headers)
    with pytest.raises(ControlClientError) as caught:
        await client.revision()
    assert (caught.value.code, caught.value.message) == (ErrorCode.BAD_REQUEST, "bad input")
    headers = {"Nats-Service-Error": "not you", "Nats-Service-Error-Code": "403"}
    peer.answers[Endpoint.REVISION] = Canned(b"", headers)
    with pytest.raises(ControlClientError) as caught:
        await client.revision()
    assert (caught.value.code, exit_code_for(caught.value.code)) == (ErrorCode.FORBIDDEN, 5)


async def test_an_unreadable_reply_is_an_internal_error(
    peer: ControlPeer, client: ControlClient
) -> None:
    peer.answers[Endpoint.REVISION] = Canned(b"not json")
    with pytest.raises(ControlClientError) as caught:
        await client.revision()
    assert caught.value.code is ErrorCode.INTERNAL
    assert "unreadable reply" in caught.value.message
    # A Reply that is ok but whose result breaks the contract is no better.
    peer.answers[Endpoint.REVISION] = Canned(b'{"ok": true, "result": {"revision": "x"}}')
    with pytest.raises(ControlClientError, match="does not match the contract"):
        await client.revision()


async def test_no_responders_is_unavailable(client: ControlClient) -> None:
    with pytest.raises(ControlClientError) as caught:
        await client.audit()
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert caught.value.message == no_responders_message(subjects.control("audit"))
    # NATS cannot tell "no master" from "not routed for this identity": the message says both.
    assert "ttp.ctl.audit" in caught.value.message
    assert "viewer cannot set or clear state" in caught.value.message
    assert exit_code_for(caught.value.code) == 4


async def test_silence_is_unavailable_after_the_timeout(
    peer: ControlPeer, client: ControlClient
) -> None:
    started = time.monotonic()
    with pytest.raises(ControlClientError) as caught:
        await client.call(Endpoint.STATE_GET, StateGetRequest(), timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert "no answer from the master on ttp.ctl.state.get within 0.3 s" in caught.value.message


async def test_a_request_of_the_wrong_model_is_a_programming_error(
    client: ControlClient,
) -> None:
    with pytest.raises(TypeError):
        await client.call(Endpoint.FLEET, AuditRequest())


# --------------------------------------------------------------------------------------------
# The commands: exit codes, output, what they send
# --------------------------------------------------------------------------------------------


def test_state_set_sends_the_state_and_prints_it(nats_url: str, peer: ControlPeer) -> None:
    expires = NOW + timedelta(hours=2)
    changed = StateChanged(
        state=operator_state(state="disabled", expires_at=expires, revision=125), revision=125
    )
    peer.answers[Endpoint.STATE_SET] = ok(changed)
    before = datetime.now(UTC)
    result = ttpctl(
        nats_url, "state", "set", "R0031", "--disable", "--for", "2h", "--reason", "FP storm",
    )  # fmt: skip
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("R0031: disabled until ")
    assert result.stdout.endswith("; revision 125.\n")
    (sent,) = peer.sent(Endpoint.STATE_SET)
    assert {k: v for k, v in sent.items() if k != "expires_at"} == {
        "rule_id": "R0031",
        "state": "disabled",
        "reason": "FP storm",
        "force": False,
    }
    sent_expiry = datetime.fromisoformat(sent["expires_at"])
    assert before + timedelta(hours=2) <= sent_expiry <= after + timedelta(hours=2)


def test_state_set_clip_until_with_json_output(nats_url: str, peer: ControlPeer) -> None:
    changed = StateChanged(state=operator_state(state="clipped", confidence_max=0.5), revision=9)
    peer.answers[Endpoint.STATE_SET] = ok(changed)
    result = ttpctl(
        nats_url, "state", "set", "R0031", "--clip", "0.5", "--until", "2099-01-01T01:00:00+01:00",
        "--reason", "investigation", "--force", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert StateChanged.model_validate_json(result.stdout) == changed
    (sent,) = peer.sent(Endpoint.STATE_SET)
    assert sent["confidence_max"] == 0.5
    assert sent["force"] is True
    assert datetime.fromisoformat(sent["expires_at"]) == datetime(2099, 1, 1, tzinfo=UTC)
    # ttpctl names no user it acts for: the master takes only the console's.
    assert "actor" not in sent


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["R1", "--reason", "x"], "exactly one of --disable and --clip"),
        (["R1", "--disable", "--clip", "0.5", "--reason", "x"], "exactly one of"),
        (["R1", "--clip", "0", "--reason", "x"], "not in (0, 1]"),
        (["R1", "--disable", "--for", "0s", "--reason", "x"], "not a positive duration"),
        (["R1", "--disable", "--for", "2 hours", "--reason", "x"], "not a duration"),
        (["R1", "--disable", "--for", "1h", "--until", "2099-01-01T00:00:00Z", "--reason", "x"],
         "not both"),
        (["R1", "--disable", "--until", "2099-01-01T00:00:00", "--reason", "x"], "no UTC offset"),
        (["R1", "--disable", "--until", "2001-01-01T00:00:00Z", "--reason", "x"], "in the past"),
        (["R1", "--disable", "--reason", "   "], "must not be blank"),
        (["R1", "--disable"], "--reason"),
        (["bad.rule", "--disable", "--reason", "x"], "is not a rule id"),
    ],
)  # fmt: skip
def test_state_set_usage_errors_exit_2_before_anything_is_sent(
    nats_url: str, peer: ControlPeer, argv: list[str], message: str
) -> None:
    result = ttpctl(nats_url, "state", "set", *argv)
    assert result.exit_code == 2, result.output
    assert message in plain(result.stderr), result.stderr
    assert peer.requests == []


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (ErrorCode.BAD_REQUEST, 2),
        (ErrorCode.UNKNOWN_RULE, 3),
        (ErrorCode.NOT_LEADER, 4),
        (ErrorCode.UNAVAILABLE, 4),
        (ErrorCode.BUSY, 4),
        (ErrorCode.INTERNAL, 4),
        (ErrorCode.FORBIDDEN, 5),
    ],
)
def test_error_replies_map_to_exit_codes(
    nats_url: str, peer: ControlPeer, code: ErrorCode, exit_code: int
) -> None:
    peer.answers[Endpoint.STATE_CLEAR] = error(code, f"it failed: {code.value}", "rule_id")
    result = ttpctl(nats_url, "state", "clear", "R0031")
    assert result.exit_code == exit_code
    assert result.stdout == ""
    said = f"it failed: {code.value} (field: rule_id)"
    if code is ErrorCode.FORBIDDEN:
        # A refusal of the caller's identity says so, and how to connect as another role.
        assert result.stderr.startswith(f"ttpctl state clear: forbidden: {said} (")
        assert "--env-file" in result.stderr
    else:
        assert result.stderr == f"ttpctl state clear: error: {said}\n"
    assert peer.sent(Endpoint.STATE_CLEAR) == [{"rule_id": "R0031"}]


def test_no_master_exits_4(nats_url: str) -> None:
    result = ttpctl(nats_url, "state", "show")
    assert result.exit_code == 4
    message = no_responders_message(subjects.control("state.get"))
    assert result.stderr == f"ttpctl state show: error: {message}\n"


def test_unreachable_nats_exits_4() -> None:
    result = CliRunner().invoke(app, ["fleet", "status", "--nats-url", "nats://127.0.0.1:1"])
    assert result.exit_code == 4
    assert result.stderr.startswith("ttpctl fleet status: error: cannot connect to NATS")


def test_state_show(nats_url: str, peer: ControlPeer) -> None:
    peer.answers[Endpoint.STATE_GET] = ok(StateList(states=[]))
    result = ttpctl(nats_url, "state", "show")
    assert (result.exit_code, result.stdout) == (
        0,
        "No rule has an operator state: every rule is enabled.\n",
    )
    states = StateList(
        states=[operator_state(state="disabled", reason="storm", set_by="alice", revision=3)]
    )
    peer.answers[Endpoint.STATE_GET] = ok(states)
    result = ttpctl(nats_url, "state", "show", "R0031")
    assert result.exit_code == 0
    assert "R0031" in result.stdout
    assert "disabled" in result.stdout
    assert "storm" in result.stdout
    assert peer.sent(Endpoint.STATE_GET) == [{}, {"rule_id": "R0031"}]
    result = ttpctl(nats_url, "state", "show", "R0031", "--json")
    assert StateList.model_validate_json(result.stdout) == states


def test_rules_list_shows_rejections_and_exits_0(nats_url: str, peer: ControlPeer) -> None:
    listing = RulesList(
        revision=130,
        rules=[
            RuleSummary(
                rule_id="R0099",
                status="rejected",
                source_path="rules/R0099.yaml",
                state=operator_state("R0099"),
                errors=[RejectionError(line=4, column=3, message="unknown field 'matchh'")],
            )
        ],
    )
    peer.answers[Endpoint.RULES_LIST] = ok(listing)
    result = ttpctl(nats_url, "rules", "list", "--status", "rejected")
    assert result.exit_code == 0, result.output
    assert "rules/R0099.yaml:4:3: unknown field 'matchh'" in result.stdout
    assert "1 rejected rule at revision 130." in result.stdout
    assert peer.sent(Endpoint.RULES_LIST) == [{"status": "rejected"}]
    result = ttpctl(nats_url, "rules", "list", "--json")
    assert RulesList.model_validate_json(result.stdout) == listing
    assert ttpctl(nats_url, "rules", "list", "--status", "bogus").exit_code == 2


def test_rules_show(nats_url: str, peer: ControlPeer) -> None:
    detail = RuleDetail(
        rule_id="R0031",
        status="active",
        rule_version=2,
        source_path="rules/R0031.yaml",
        state=operator_state(),
        yaml_text="id: R0031\n",
    )
    peer.answers[Endpoint.RULES_SHOW] = ok(detail)
    result = ttpctl(nats_url, "rules", "show", "R0031")
    assert result.exit_code == 0
    assert "source    rules/R0031.yaml" in result.stdout
    assert result.stdout.endswith("definition:\n  id: R0031\n")
    peer.answers[Endpoint.RULES_SHOW] = error(ErrorCode.UNKNOWN_RULE, "no rule 'R0031'", "rule_id")
    result = ttpctl(nats_url, "rules", "show", "R0031")
    assert result.exit_code == 3
    assert "error: no rule 'R0031'" in result.stderr


def test_audit_sends_its_filters_and_prints_a_table(nats_url: str, peer: ControlPeer) -> None:
    log = AuditLog(
        entries=[
            AuditEntry(
                revision=revision,
                at=NOW,
                rule_id="R0031",
                kind="state",
                actor="alice",
                summary=f"summary {revision}",
                data={},
            )
            for revision in (11, 12)
        ]
    )
    peer.answers[Endpoint.AUDIT] = ok(log)
    before = datetime.now(UTC)
    result = ttpctl(nats_url, "audit", "R0031", "--since", "1h", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout.index("summary 11") < result.stdout.index("summary 12")
    (sent,) = peer.sent(Endpoint.AUDIT)
    assert sent["rule_id"] == "R0031"
    assert sent["limit"] == 5
    since = datetime.fromisoformat(sent["since"])
    assert abs((before - timedelta(hours=1) - since).total_seconds()) < 5
    result = ttpctl(nats_url, "audit", "--json")
    assert AuditLog.model_validate_json(result.stdout) == log
    assert ttpctl(nats_url, "audit", "--since", "2026-01-01T00:00:00").exit_code == 2


def test_fleet_status_exit_code_follows_convergence(nats_url: str, peer: ControlPeer) -> None:
    peer.answers[Endpoint.FLEET] = ok(fleet_info(worker("w1", 124), worker("w2", 124)))
    result = ttpctl(nats_url, "fleet", "status")
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("Fleet converged: 2 live workers at revision 124.")
    peer.answers[Endpoint.FLEET] = ok(fleet_info(worker("w1", 124), worker("w2", 121)))
    result = ttpctl(nats_url, "fleet", "status")
    assert result.exit_code == 1
    assert "Fleet NOT converged: w2 is 3 revisions behind." in result.stdout
    result = ttpctl(nats_url, "fleet", "status", "--json")
    assert result.exit_code == 1
    assert not FleetInfo.model_validate_json(result.stdout).converged
    peer.answers[Endpoint.FLEET] = ok(fleet_info())
    result = ttpctl(nats_url, "fleet", "status")
    assert (result.exit_code, result.stdout.splitlines()[-1]) == (1, "No live workers.")


def test_fleet_wait_latest_polls_until_the_fleet_catches_up(
    nats_url: str, peer: ControlPeer
) -> None:
    peer.answers[Endpoint.REVISION] = ok(
        RevisionInfo(revision=124, rules=10, active=10, external=0, rejected=0, digest="d" * 64)
    )
    polls = 0

    def fleet(_: dict[str, Any]) -> Canned | None:
        nonlocal polls
        polls += 1
        if polls == 3:
            return error(ErrorCode.NOT_LEADER, "leader changing")  # ridden out
        revision = 124 if polls >= 5 else 123
        return ok(fleet_info(worker("w1", 124), worker("w2", revision)))

    peer.answers[Endpoint.FLEET] = fleet
    started = time.monotonic()
    result = ttpctl(nats_url, "fleet", "status", "--wait", "latest", "--timeout", "10s")
    assert result.exit_code == 0, result.output
    # It returned on convergence, not at the 10 s timeout (a bound loose enough for CI load).
    assert time.monotonic() - started < 9
    assert polls == 5
    assert result.stdout.rstrip().endswith("Fleet converged: 2 live workers at revision 124.")


def test_fleet_wait_times_out_with_the_reason(nats_url: str, peer: ControlPeer) -> None:
    peer.answers[Endpoint.FLEET] = ok(fleet_info(worker("w1", 124), worker("w2", 124, False)))
    started = time.monotonic()
    result = ttpctl(nats_url, "fleet", "status", "--wait", "130", "--timeout", "1s")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert elapsed > 0.9  # it waited out its 1 s timeout ...
    assert elapsed < 9  # ... and no more than a loaded machine explains
    assert len(peer.sent(Endpoint.FLEET)) >= 5  # polled about every 0.1 s
    assert (
        "Timed out after 1 s waiting for revision 130. Fleet NOT converged:"
        " w1 is 6 revisions behind; w2 is 6 revisions behind and is not ready."
    ) in " ".join(result.stdout.split())
    assert "w2" in result.stdout.split("Timed out")[0]  # the table came first


def test_fleet_wait_with_no_master_fails_at_once(nats_url: str) -> None:
    started = time.monotonic()
    result = ttpctl(nats_url, "fleet", "status", "--wait", "5", "--timeout", "30s")
    assert result.exit_code == 4
    assert time.monotonic() - started < 10
    assert no_responders_message(subjects.control("fleet")) in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    "argv", [["--wait", "soon"], ["--wait", "-3"], ["--wait", "3", "--timeout", "0s"]]
)
def test_fleet_wait_usage_errors(nats_url: str, argv: list[str]) -> None:
    assert ttpctl(nats_url, "fleet", "status", *argv).exit_code == 2
