"""`docs/asyncapi.yaml` is a valid AsyncAPI 3.0.0 document and agrees with the code.

- it validates, offline, against the official AsyncAPI 3.0.0 JSON Schema (vendored from the
  npm package `@asyncapi/specs`; any attempt to fetch a remote schema fails the test);
- every channel address is a subject the code builds (`ttp_core.contract.subjects`), with its
  `{parameter}`s declared, every subject of docs/contract.md has a channel, and every control
  endpoint (`control.Endpoint`; see docs/operations.md) has a request channel at
  `subjects.control(endpoint)`, with its reply on the one reply channel (no fixed address:
  the requester's NATS reply subject);
- every message references the committed `schemas/<type>.json` of the type the code
  publishes on that subject (or `schemas/control/<endpoint>.<request|reply>.json`), and every
  type and every endpoint's request and reply has a message;
- every operation's channel, messages and reply resolve inside the document; the master
  receives (and replies to) every control endpoint and operators send to each of them;
- the error statuses the document states are those of `control.ErrorCode`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from ttp_core.contract import subjects
from ttp_core.contract.control import SERVICE_NAME, Endpoint, ErrorCode
from ttp_core.contract.payloads import (
    DATA_MODELS,
    SCHEMA_BASE,
    DeadLetter,
    EventTagged,
    HoneypotEvent,
    RuleRejected,
    RuleReloaded,
    RulesetRevision,
    RuleStateChanged,
    WorkerStatus,
    control_schema_id,
    schema_id,
)
from ttpctl.schema_commands import CONTROL_PARTS, ControlPart

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
VENDORED = Path(__file__).parent / "vendor" / "asyncapi-specs" / "3.0.0.json"

# The subject builders of the public contract (see docs/contract.md) and the type each carries.
# A sample token stands for every parameter.
SAMPLE = "X-1_y"
BUILDERS: dict[str, tuple[Callable[[str], str] | None, str]] = {
    "rule_reloaded": (subjects.rule_reloaded, RuleReloaded.event_type),
    "rule_state": (subjects.rule_state, RuleStateChanged.event_type),
    "ruleset_revision": (None, RulesetRevision.event_type),
    "rule_rejected": (subjects.rule_rejected, RuleRejected.event_type),
    "event": (subjects.event, HoneypotEvent.event_type),
    "tagged": (subjects.tagged, EventTagged.event_type),
    "deadletter": (subjects.deadletter, DeadLetter.event_type),
    "worker_status": (subjects.worker_status, WorkerStatus.event_type),
}


def built(name: str) -> str:
    builder, _ = BUILDERS[name]
    return subjects.RULESET_REVISION if builder is None else builder(SAMPLE)


# The control endpoints (see docs/operations.md) by the subject the code serves them on.
CONTROL: dict[str, Endpoint] = {subjects.control(endpoint.value): endpoint for endpoint in Endpoint}


def control_name(endpoint: Endpoint, part: ControlPart) -> str:
    """The AsyncAPI message name of an endpoint's request or reply: its schema `$id` minus
    the URN prefix, e.g. `ttp.ctl.state.set.request`."""
    return control_schema_id(endpoint.value, part).removeprefix(SCHEMA_BASE)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))
    return loaded


def _offline(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # nothing is fetched: the vendored file is self-contained


def test_validates_offline_against_the_official_asyncapi_3_0_0_schema(
    document: dict[str, Any],
) -> None:
    meta = json.loads(VENDORED.read_text(encoding="utf-8"))
    assert meta["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    registry: Registry[Any] = Registry(retrieve=_offline)  # type: ignore[call-arg]
    validator = Draft7Validator(meta, registry=registry)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    assert document["asyncapi"] == "3.0.0"


def test_the_validation_is_not_vacuous(document: dict[str, Any]) -> None:
    """The vendored schema does reject a broken document (so the test above means something)."""
    meta = json.loads(VENDORED.read_text(encoding="utf-8"))
    validator = Draft7Validator(meta, registry=Registry(retrieve=_offline))  # type: ignore[call-arg]
    broken = json.loads(json.dumps(document))
    broken["operations"]["workerPublishTagged"]["action"] = "publish"  # AsyncAPI 2 wording
    broken["operations"]["consumerReceiveTagged"]["bindings"]["nats"]["queue"] = 7
    # A reply address must be a runtime expression (`$message.header#/...`), not a header name.
    broken["operations"]["masterServeStateSet"]["reply"] = {"address": {"location": "reply-to"}}
    failing = {tuple(e.absolute_path) for e in validator.iter_errors(broken)}
    assert failing == {
        ("operations", "workerPublishTagged"),
        ("operations", "consumerReceiveTagged"),
        ("operations", "masterServeStateSet"),
    }


def _template_to_subject(address: str, parameters: dict[str, Any]) -> str:
    names = re.findall(r"\{([^}]+)\}", address)
    assert sorted(names) == sorted(parameters), f"{address}: parameters {sorted(parameters)}"
    return re.sub(r"\{[^}]+\}", SAMPLE, address)


def channel_problems(document: dict[str, Any]) -> list[str]:
    """How the document's channels disagree with the subjects the code builds: a channel on
    a subject the code does not build, or carrying another type; a subject, a control
    endpoint or a control reply without a channel."""
    problems: list[str] = []
    covered: set[str] = set()
    endpoints: set[Endpoint] = set()
    replies: set[str] = set()
    for key, channel in document["channels"].items():
        address = channel.get("address")
        messages = channel.get("messages", {})
        names = [_resolve(document, m["$ref"]).get("name") for m in messages.values()]
        if address is None:
            # The reply channel: the requester's reply subject, chosen per request.
            replies.update(n for n in names if isinstance(n, str))
            continue
        subject = _template_to_subject(address, channel.get("parameters", {}))
        if subject in CONTROL:
            endpoint = CONTROL[subject]
            endpoints.add(endpoint)
            if names != [control_name(endpoint, "request")]:
                problems.append(f"channel {key}: {address} carries {names}, not the request")
            continue
        matches = [name for name in BUILDERS if built(name) == subject]
        if not matches:
            problems.append(f"channel {key}: {address} is not a subject the code builds")
            continue
        covered.add(matches[0])
        # The parameters stand for exactly one token each, like the builders require.
        for parameter in channel.get("parameters", {}):
            if parameter not in {"rule_id", "source_kind", "worker_id"}:
                problems.append(f"channel {key}: unknown parameter {parameter}")
        # The channel carries the type the code publishes on that subject.
        if names != [BUILDERS[matches[0]][1]]:
            problems.append(f"channel {key}: {address} carries {names}")
    problems.extend(f"no channel for {name}" for name in sorted(set(BUILDERS) - covered))
    problems.extend(
        f"no channel for control endpoint {endpoint.value} ({subjects.control(endpoint.value)})"
        for endpoint in Endpoint
        if endpoint not in endpoints
    )
    problems.extend(
        f"no reply channel carries {control_name(endpoint, 'reply')}"
        for endpoint in Endpoint
        if control_name(endpoint, "reply") not in replies
    )
    return problems


def test_every_channel_is_a_subject_the_code_builds_and_every_subject_has_one(
    document: dict[str, Any],
) -> None:
    assert channel_problems(document) == []
    # Exactly one channel has no address: the replies of the control protocol.
    assert [k for k, c in document["channels"].items() if c.get("address") is None] == ["ctlReply"]
    # The streams the code configures carry exactly the stored channels' subjects.
    stored = {
        subjects.STREAM_RULES: set(subjects.RULES_STREAM_SUBJECTS),
        subjects.STREAM_EVENTS: set(subjects.EVENTS_STREAM_SUBJECTS),
        subjects.STREAM_TAGS: set(subjects.TAGS_STREAM_SUBJECTS),
        subjects.STREAM_DEADLETTER: set(subjects.DEADLETTER_STREAM_SUBJECTS),
    }
    text = (DOCS / "asyncapi.yaml").read_text(encoding="utf-8")
    for stream, subject_set in stored.items():
        for wildcard in subject_set:
            assert f"**{stream}** (" in text and f"`{wildcard}`" in text, (stream, wildcard)


def test_the_channel_check_fails_when_an_endpoint_or_subject_is_missing_or_wrong(
    document: dict[str, Any],
) -> None:
    broken = json.loads(json.dumps(document))
    del broken["channels"]["ctlAudit"]
    broken["channels"]["ctlFleet"]["address"] = "ttp.ctl.fleets"
    del broken["channels"]["ctlReply"]["messages"]["ctlRevisionReply"]
    del broken["channels"]["workerStatus"]
    assert channel_problems(broken) == [
        "channel ctlFleet: ttp.ctl.fleets is not a subject the code builds",
        "no channel for worker_status",
        "no channel for control endpoint audit (ttp.ctl.audit)",
        "no channel for control endpoint fleet (ttp.ctl.fleet)",
        "no reply channel carries ttp.ctl.revision.reply",
    ]


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    assert isinstance(node, dict)
    if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        return _resolve(document, node["$ref"])  # a channel's message is a reference
    return node


def test_messages_reference_the_committed_schema_of_their_type(document: dict[str, Any]) -> None:
    control = {
        control_name(endpoint, part): (endpoint, part)
        for endpoint in Endpoint
        for part in CONTROL_PARTS
    }
    names = set()
    for key, message in document["components"]["messages"].items():
        name = message["name"]
        names.add(name)
        payload = message["payload"]
        assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
        target = (DOCS / payload["schema"]["$ref"]).resolve()
        schema = json.loads(target.read_text(encoding="utf-8"))
        assert message["contentType"] == "application/json"
        if name in control:
            endpoint, part = control[name]
            expected = DOCS / "schemas" / "control" / f"{endpoint.value}.{part}.json"
            assert target == expected.resolve(), key
            assert schema["$id"] == control_schema_id(endpoint.value, part)
            headers = "traceHeaders" if part == "request" else "controlReplyHeaders"
            assert message["headers"]["$ref"] == f"#/components/schemas/{headers}", key
        else:
            assert target == (DOCS / "schemas" / f"{name}.json").resolve(), key
            assert schema["$id"] == schema_id(name)
    assert names == {m.event_type for m in DATA_MODELS} | set(control)


def test_the_documented_control_errors_are_those_of_the_code(document: dict[str, Any]) -> None:
    headers = document["components"]["schemas"]["controlReplyHeaders"]["properties"]
    code_header = headers["Nats-Service-Error-Code"]
    assert sorted(code_header["enum"]) == sorted({str(code.status) for code in ErrorCode})
    assert "Nats-Service-Error" in headers
    description = " ".join(document["info"]["description"].split())
    for code in ErrorCode:
        assert f"`{code.value}` {code.status}" in description, code
    for verb in ("PING", "INFO", "STATS"):
        assert f"$SRV.{verb}.{SERVICE_NAME}" in description, verb


def test_operations_resolve_and_cover_master_worker_and_third_parties(
    document: dict[str, Any],
) -> None:
    roles: dict[str, set[str]] = {}
    sent: set[str] = set()
    replied: dict[str, set[str]] = {}
    for key, operation in document["operations"].items():
        channel = _resolve(document, operation["channel"]["$ref"])
        channel_key = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        for message in operation["messages"]:
            ref = message["$ref"]
            assert ref.startswith(f"#/channels/{channel_key}/messages/"), (key, ref)
            _resolve(document, ref)
        assert operation["bindings"]["nats"]["bindingVersion"] == "0.1.0"
        if operation["action"] == "send":
            sent.add(channel_key)
        endpoint = CONTROL.get(channel["address"])
        reply = operation.get("reply")
        # Exactly the control operations are request/reply.
        assert (reply is None) == (endpoint is None), key
        if reply is not None and endpoint is not None:
            reply_key = reply["channel"]["$ref"].rsplit("/", 1)[-1]
            assert _resolve(document, reply["channel"]["$ref"]).get("address") is None, key
            [message] = reply["messages"]
            assert message["$ref"].startswith(f"#/channels/{reply_key}/messages/"), key
            assert _resolve(document, message["$ref"])["name"] == control_name(endpoint, "reply")
            if operation["action"] == "receive":
                sent.add(reply_key)  # the receiver of a request sends its reply
            replied.setdefault(operation["action"], set()).add(endpoint.value)
        for tag in operation["tags"]:
            roles.setdefault(tag["name"], set()).add(f"{operation['action']}:{channel['address']}")
    assert {"send:ttp.rule.reloaded.{rule_id}", "send:ttp.ruleset.revision"} <= roles["master"]
    assert {
        "receive:ttp.rule.reloaded.{rule_id}",
        "receive:ttp.event.{source_kind}",
        "send:ttp.tagged.{source_kind}",
        "send:ttp.worker.status.{worker_id}",
    } <= roles["worker"]
    assert {"send:ttp.event.{source_kind}", "receive:ttp.tagged.{source_kind}"} <= roles[
        "third-party"
    ]
    # The master serves every control endpoint; operators send to every one; both with reply.
    assert {f"receive:{subject}" for subject in CONTROL} <= roles["master"]
    assert {f"send:{subject}" for subject in CONTROL} == roles["operator"]
    every = {endpoint.value for endpoint in Endpoint}
    assert replied == {"receive": every, "send": every}
    # Every channel is sent by someone.
    assert sent == set(document["channels"])
