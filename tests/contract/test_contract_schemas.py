"""The committed JSON Schemas (`docs/schemas/*.json` and `docs/schemas/control/*.json`) are
exactly what the models generate.

- regenerating them with `ttpctl schema export` into a temporary directory gives the
  committed files byte for byte (no drift, no missing and no stale file), for the CloudEvents
  types and for every control endpoint's request and reply;
- each is a valid JSON Schema 2020-12 document whose `$id` is the `dataschema` URI the
  producers put in messages (`payloads.control_schema_id` for the control protocol); request
  schemas are strict (`additionalProperties: false`), every other schema is tolerant;
- the master's real reply encoding and ttpctl's request encoding validate against them;
- renaming a field of a model changes the generated schema (the drift check fails) and a
  message produced by the renamed model fails validation against the committed schema.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import create_model
from typer.testing import CliRunner

from ttp_core.contract.control import (
    REQUESTS,
    RESULTS,
    SERVICE_NAME,
    SERVICE_VERSION,
    ControlError,
    Endpoint,
    ErrorCode,
    OperatorState,
    StateChanged,
    StateSetRequest,
)
from ttp_core.contract.payloads import (
    DATA_MODELS,
    MASTER_SOURCE,
    RuleReloaded,
    control_schema_id,
    encode,
    envelope,
    schema_id,
)
from ttp_master.control_service import encode_error, encode_reply
from ttpctl.app import app
from ttpctl.schema_commands import (
    CONTROL_PARTS,
    ControlPart,
    drift,
    export,
    message_schema,
    render,
    request_schema,
)

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
COMMITTED = DOCS / "schemas"
COMMITTED_CONTROL = COMMITTED / "control"
CONTROL_FILES = sorted(f"{e.value}.{part}.json" for e in Endpoint for part in CONTROL_PARTS)


def committed(event_type: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((COMMITTED / f"{event_type}.json").read_text("utf-8"))
    return loaded


def committed_control(endpoint: Endpoint, part: ControlPart) -> dict[str, Any]:
    path = COMMITTED_CONTROL / f"{endpoint.value}.{part}.json"
    loaded: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return loaded


def test_export_regenerates_the_committed_schemas_exactly(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    generated = sorted(p.name for p in (tmp_path / "schemas").glob("*.json"))
    assert generated == sorted(p.name for p in COMMITTED.glob("*.json")), (
        "docs/schemas/ and the models disagree on the set of types; run `ttpctl schema export docs`"
    )
    assert generated == sorted(f"{m.event_type}.json" for m in DATA_MODELS)
    for name in generated:
        fresh = (tmp_path / "schemas" / name).read_text(encoding="utf-8")
        assert fresh == (COMMITTED / name).read_text(encoding="utf-8"), (
            f"docs/schemas/{name} drifted from the models; run `ttpctl schema export docs`"
        )
    # The control protocol: one request and one reply schema per endpoint.
    control = sorted(p.name for p in (tmp_path / "schemas" / "control").glob("*.json"))
    assert control == sorted(p.name for p in COMMITTED_CONTROL.glob("*.json")), (
        "docs/schemas/control/ and the control models disagree on the set of endpoints;"
        " run `ttpctl schema export docs`"
    )
    assert control == CONTROL_FILES
    for name in control:
        fresh = (tmp_path / "schemas" / "control" / name).read_text(encoding="utf-8")
        assert fresh == (COMMITTED_CONTROL / name).read_text(encoding="utf-8"), (
            f"docs/schemas/control/{name} drifted from the models; run `ttpctl schema export docs`"
        )
    # The CLI's own check agrees.
    check = CliRunner().invoke(app, ["schema", "export", str(DOCS), "--check"])
    assert check.exit_code == 0, check.output


def test_the_check_reports_missing_changed_and_stale_control_schemas(tmp_path: Path) -> None:
    export(tmp_path)
    assert drift(tmp_path) == []
    control = tmp_path / "schemas" / "control"
    (control / "audit.reply.json").unlink()
    (control / "fleet.request.json").write_text("{}\n", encoding="utf-8")
    (control / "state.purge.request.json").write_text("{}\n", encoding="utf-8")
    assert drift(tmp_path) == [
        f"{control}/audit.reply.json: missing",
        f"{control}/fleet.request.json: differs from the models",
        f"{control}/state.purge.request.json: no such control endpoint in the models",
    ]
    check = CliRunner().invoke(app, ["schema", "export", str(tmp_path), "--check"])
    assert check.exit_code == 1


@pytest.mark.parametrize("model", DATA_MODELS, ids=lambda m: m.event_type)
def test_each_schema_is_valid_2020_12_and_identified_by_its_dataschema(model: Any) -> None:
    schema = committed(model.event_type)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == schema_id(model.event_type)
    assert schema["properties"]["dataschema"]["const"] == schema["$id"]
    assert schema["properties"]["type"]["const"] == model.event_type
    # Consumers ignore unknown fields: the schema must not forbid them anywhere.
    assert '"additionalProperties": false' not in json.dumps(schema)


@pytest.mark.parametrize("endpoint", list(Endpoint), ids=lambda e: e.value)
def test_each_control_schema_is_valid_2020_12_strict_request_tolerant_reply(
    endpoint: Endpoint,
) -> None:
    for part in CONTROL_PARTS:
        schema = committed_control(endpoint, part)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == control_schema_id(endpoint.value, part)
        assert schema["$id"] == f"urn:ttp-rulebus:schema:ttp.ctl.{endpoint.value}.{part}"
        assert schema["title"] == f"ttp.ctl.{endpoint.value}.{part}"
    request = committed_control(endpoint, "request")
    assert request["additionalProperties"] is False  # strict: unknown fields are refused
    validator = Draft202012Validator(request)
    assert not validator.is_valid({"no_such_field": 1})
    reply = committed_control(endpoint, "reply")
    assert set(reply["properties"]) == {"ok", "result", "error"}
    assert reply["required"] == ["ok"]
    # Clients ignore unknown reply fields: the schema must not forbid them anywhere.
    assert '"additionalProperties": false' not in json.dumps(reply)
    Draft202012Validator(reply).validate({"ok": True, "result": None, "later_field": 1})


def test_the_wire_encodings_validate_against_the_committed_control_schemas() -> None:
    at = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    state = OperatorState(rule_id="R0014", state="clipped", confidence_max=0.5, expires_at=at)
    set_reply = json.loads(encode_reply(StateChanged(state=state, revision=42)))
    Draft202012Validator(committed_control(Endpoint.STATE_SET, "reply")).validate(set_reply)
    error = ControlError(code=ErrorCode.UNKNOWN_RULE, message="no rule 'R9'", field="rule_id")
    for endpoint in Endpoint:
        failure = json.loads(encode_error(error))
        Draft202012Validator(committed_control(endpoint, "reply")).validate(failure)
        # ttpctl sends `model_dump_json(exclude_none=True)` of the request model; a request
        # without required fields may also be the empty object.
        model = REQUESTS[endpoint]
        if not any(field.is_required() for field in model.model_fields.values()):
            validator = Draft202012Validator(committed_control(endpoint, "request"))
            validator.validate(json.loads(model().model_dump_json(exclude_none=True)))
            validator.validate({})
    request = StateSetRequest(
        rule_id="R0014",
        state="clipped",
        confidence_max=0.5,
        expires_at=at,
        reason="noisy",
        actor="alice",
    )
    body = json.loads(request.model_dump_json(exclude_none=True))
    Draft202012Validator(committed_control(Endpoint.STATE_SET, "request")).validate(body)
    # A result whose field type changed no longer matches the published reply.
    set_reply["result"]["revision"] = "42"
    assert not Draft202012Validator(committed_control(Endpoint.STATE_SET, "reply")).is_valid(
        set_reply
    )


def test_a_model_built_message_validates_against_its_committed_schema() -> None:
    data = RuleReloaded(
        rule_id="R0001",
        revision=3,
        rule_version=None,
        content_sha256=None,
        source_path="R0001.yaml",
        deleted=True,
    )
    message = json.loads(encode(envelope(data, source=MASTER_SOURCE, subject="R0001")))
    Draft202012Validator(committed(RuleReloaded.event_type)).validate(message)


def _renamed(model: Any, old: str, new: str) -> Any:
    """A copy of `model` with field `old` renamed to `new` (same type, default and config)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[new if name == old else name] = (info.annotation, info)
    copy = create_model(
        model.__name__, __doc__=model.__doc__, __config__=model.model_config, **fields
    )
    if hasattr(model, "event_type"):
        copy.event_type = model.event_type
    return copy


def test_renaming_a_field_is_caught(tmp_path: Path) -> None:
    # Sanity: the unmodified copy generates exactly the committed schema, so any
    # difference below comes from the rename alone.
    same = _renamed(RuleReloaded, "source_path", "source_path")
    assert render(message_schema(same)) == render(committed(RuleReloaded.event_type))

    renamed = _renamed(RuleReloaded, "source_path", "path")
    schema = message_schema(renamed)
    # 1. The regenerated file differs from the committed one: the drift check fails.
    assert render(schema) != render(committed(RuleReloaded.event_type))
    export(tmp_path)
    for model in DATA_MODELS:
        text = render(message_schema(renamed if model is RuleReloaded else model))
        (tmp_path / "schemas" / f"{model.event_type}.json").write_text(text, encoding="utf-8")
    assert drift(tmp_path) == [
        f"{tmp_path}/schemas/ttp.rule.reloaded.v1.json: differs from the models"
    ]

    # 2. A message from a producer built on the renamed model breaks the published contract.
    message = {
        "specversion": "1.0",
        "id": "x",
        "source": MASTER_SOURCE,
        "type": RuleReloaded.event_type,
        "time": datetime.now(UTC).isoformat(),
        "subject": "R0001",
        "datacontenttype": "application/json",
        "dataschema": schema_id(RuleReloaded.event_type),
        "data": renamed(
            rule_id="R0001", revision=1, rule_version=1, content_sha256="0" * 64, path="a.yaml"
        ).model_dump(mode="json"),
    }
    errors = list(Draft202012Validator(committed(RuleReloaded.event_type)).iter_errors(message))
    assert any("'source_path' is a required property" in e.message for e in errors), errors


def test_renaming_a_request_field_is_caught(tmp_path: Path) -> None:
    same = _renamed(StateSetRequest, "reason", "reason")
    committed_request = committed_control(Endpoint.STATE_SET, "request")
    assert render(request_schema(Endpoint.STATE_SET, same)) == render(committed_request)

    renamed = _renamed(StateSetRequest, "reason", "why")
    schema = request_schema(Endpoint.STATE_SET, renamed)
    # 1. The regenerated file differs: the drift check names it.
    export(tmp_path)
    path = tmp_path / "schemas" / "control" / "state.set.request.json"
    path.write_text(render(schema), encoding="utf-8")
    assert drift(tmp_path) == [f"{path}: differs from the models"]

    # 2. A client built on the renamed model sends a request the published contract refuses
    #    (the strict master would answer `bad_request`).
    body = renamed(rule_id="R0014", state="disabled", why="noisy", actor="alice")
    errors = list(
        Draft202012Validator(committed_request).iter_errors(
            json.loads(body.model_dump_json(exclude_none=True))
        )
    )
    messages = {e.message for e in errors}
    assert "'reason' is a required property" in messages, messages
    assert any("'why' was unexpected" in m for m in messages), messages


def test_contract_md_documents_every_control_endpoint_with_its_request_fields() -> None:
    text = (DOCS / "contract.md").read_text(encoding="utf-8")
    section = text[text.index("## Operator control protocol") :]
    assert f"**`{SERVICE_NAME}`**" in section
    assert f"currently `{SERVICE_VERSION}`" in section, "contract.md states another version"
    for code in ErrorCode:
        assert f"| `{code.value}` | {code.status} |" in section, code
    table = section[section.index("### Endpoints") : section.index("### With the `nats` CLI")]
    rows = {
        line.split("|")[1].strip(): line
        for line in table.splitlines()
        if line.startswith("| `") and line.count("|") == 5
    }
    assert set(rows) == {f"`{endpoint.value}`" for endpoint in Endpoint}
    for endpoint in Endpoint:
        row = rows[f"`{endpoint.value}`"]
        _, _, fields, result, _, _ = row.split("|")
        for name in REQUESTS[endpoint].model_fields:
            assert f"`{name}`" in fields, (endpoint.value, name)
        if not REQUESTS[endpoint].model_fields:
            assert fields.strip() == "none", endpoint.value
        assert f"`{RESULTS[endpoint].__name__}`" in result, endpoint.value
