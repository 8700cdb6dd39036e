"""`docs/asyncapi.yaml` is a valid AsyncAPI 3.0.0 document and agrees with the code.

- it validates, offline, against the official AsyncAPI 3.0.0 JSON Schema (vendored from the
  npm package `@asyncapi/specs`; any attempt to fetch a remote schema fails the test);
- every channel address is a subject the code builds (`ttp_core.contract.subjects`), with its
  `{parameter}`s declared, and every subject of SPEC section 4 has a channel;
- every message references the committed `schemas/<type>.json` of the type the code
  publishes on that subject, and every type has a message;
- every operation's channel and messages resolve inside the document.
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
from ttp_core.contract.payloads import (
    DATA_MODELS,
    DeadLetter,
    EventTagged,
    HoneypotEvent,
    RuleRejected,
    RuleReloaded,
    RulesetRevision,
    RuleStateChanged,
    WorkerStatus,
    schema_id,
)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
VENDORED = Path(__file__).parent / "vendor" / "asyncapi-specs" / "3.0.0.json"

# The subject builders of the public contract (SPEC section 4) and the type each carries.
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
    failing = {tuple(e.absolute_path) for e in validator.iter_errors(broken)}
    assert failing == {
        ("operations", "workerPublishTagged"),
        ("operations", "consumerReceiveTagged"),
    }


def _template_to_subject(address: str, parameters: dict[str, Any]) -> str:
    names = re.findall(r"\{([^}]+)\}", address)
    assert sorted(names) == sorted(parameters), f"{address}: parameters {sorted(parameters)}"
    return re.sub(r"\{[^}]+\}", SAMPLE, address)


def test_every_channel_is_a_subject_the_code_builds_and_every_subject_has_one(
    document: dict[str, Any],
) -> None:
    covered: dict[str, str] = {}
    for key, channel in document["channels"].items():
        address = channel["address"]
        subject = _template_to_subject(address, channel.get("parameters", {}))
        matches = [name for name in BUILDERS if built(name) == subject]
        assert matches, f"channel {key}: {address} is not a subject the code builds"
        covered[matches[0]] = key
        # The parameters stand for exactly one token each, like the builders require.
        for parameter in channel.get("parameters", {}):
            assert parameter in {"rule_id", "source_kind", "worker_id"}, parameter
        # The channel carries the type the code publishes on that subject.
        [message] = channel["messages"].values()
        resolved = _resolve(document, message["$ref"])
        assert resolved["name"] == BUILDERS[matches[0]][1]
    assert set(covered) == set(BUILDERS), f"no channel for {set(BUILDERS) - set(covered)}"
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


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    assert isinstance(node, dict)
    return node


def test_messages_reference_the_committed_schema_of_their_type(document: dict[str, Any]) -> None:
    names = set()
    for key, message in document["components"]["messages"].items():
        event_type = message["name"]
        names.add(event_type)
        payload = message["payload"]
        assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
        target = (DOCS / payload["schema"]["$ref"]).resolve()
        assert target == (DOCS / "schemas" / f"{event_type}.json").resolve(), key
        schema = json.loads(target.read_text(encoding="utf-8"))
        assert schema["$id"] == schema_id(event_type)
        assert message["contentType"] == "application/json"
    assert names == {m.event_type for m in DATA_MODELS}


def test_operations_resolve_and_cover_master_worker_and_third_parties(
    document: dict[str, Any],
) -> None:
    roles: dict[str, set[str]] = {}
    for key, operation in document["operations"].items():
        channel = _resolve(document, operation["channel"]["$ref"])
        channel_key = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        for message in operation["messages"]:
            ref = message["$ref"]
            assert ref.startswith(f"#/channels/{channel_key}/messages/"), (key, ref)
            _resolve(document, ref)
        assert operation["bindings"]["nats"]["bindingVersion"] == "0.1.0"
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
    # Every channel is sent by someone.
    sent = {a.split(":", 1)[1] for r in roles.values() for a in r if a.startswith("send:")}
    assert sent == {c["address"] for c in document["channels"].values()}
