"""The committed JSON Schemas (`docs/schemas/*.json`) are exactly what the models generate.

- regenerating them with `ttpctl schema export` into a temporary directory gives the
  committed files byte for byte (no drift, no missing and no stale file);
- each is a valid JSON Schema 2020-12 document whose `$id` is the `dataschema` URI the
  producers put in messages;
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

from ttp_core.contract.payloads import (
    DATA_MODELS,
    MASTER_SOURCE,
    RuleReloaded,
    encode,
    envelope,
    schema_id,
)
from ttpctl.app import app
from ttpctl.schema_commands import drift, message_schema, render

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
COMMITTED = DOCS / "schemas"


def committed(event_type: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((COMMITTED / f"{event_type}.json").read_text("utf-8"))
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
    # The CLI's own check agrees.
    check = CliRunner().invoke(app, ["schema", "export", str(DOCS), "--check"])
    assert check.exit_code == 0, check.output


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
    """A copy of `model` with field `old` renamed to `new` (same type and default)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[new if name == old else name] = (info.annotation, info)
    copy = create_model(model.__name__, __doc__=model.__doc__, **fields)
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
    (tmp_path / "schemas").mkdir()
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
