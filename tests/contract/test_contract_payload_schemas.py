"""The committed payload schemas (`docs/schemas/payloads/<kind>.json`) are exactly what the
field catalogue generates, one per catalogued source kind, and describe real payloads.

- `ttpctl schema export` regenerates them byte for byte; the drift check names a changed,
  missing or stale payload schema;
- each is JSON Schema 2020-12, open (`additionalProperties: true`, nothing required: honeypots
  send more than the catalogue lists) and identified by `payload_schema_id(kind)`;
- docs/contract.md lists every kind (with its default field and schema file) and every field
  (with its type), and nothing else;
- the payloads of the demo events `ttpctl dev` publishes, and every inline test event of
  the starter pack, validate against the schema of their kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from ttp_core.contract.field_catalogue import BUILTIN, NETWORK_FIELDS, payload_schema_id
from ttp_core.rules.validator import RuleValidator
from ttpctl.app import app
from ttpctl.schema_commands import drift, export

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "schemas" / "payloads"
KINDS = sorted(BUILTIN.kinds)


def committed(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((COMMITTED / f"{kind}.json").read_text("utf-8"))
    return loaded


def test_export_regenerates_the_committed_payload_schemas_exactly(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    fresh = tmp_path / "schemas" / "payloads"
    assert sorted(p.name for p in fresh.glob("*.json")) == [f"{k}.json" for k in KINDS]
    assert sorted(p.name for p in COMMITTED.glob("*.json")) == [f"{k}.json" for k in KINDS], (
        "docs/schemas/payloads/ and the field catalogue disagree on the kinds; "
        "run `ttpctl schema export docs`"
    )
    for kind in KINDS:
        assert (fresh / f"{kind}.json").read_text("utf-8") == (
            COMMITTED / f"{kind}.json"
        ).read_text("utf-8"), f"docs/schemas/payloads/{kind}.json drifted from the catalogue"


def test_the_check_reports_changed_missing_and_stale_payload_schemas(tmp_path: Path) -> None:
    export(tmp_path)
    payloads = tmp_path / "schemas" / "payloads"
    (payloads / "email.json").unlink()
    (payloads / "command.json").write_text("{}\n", encoding="utf-8")
    (payloads / "smb_session.json").write_text("{}\n", encoding="utf-8")
    assert drift(tmp_path) == [
        f"{payloads}/command.json: differs from the models",
        f"{payloads}/email.json: missing",
        f"{payloads}/smb_session.json: no such kind in the field catalogue",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_each_payload_schema_is_open_2020_12_and_lists_the_catalogue(kind: str) -> None:
    schema = committed(kind)
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == payload_schema_id(kind)
    assert schema["additionalProperties"] is True
    assert "required" not in schema
    assert set(schema["properties"]) == set(BUILTIN.kinds[kind].fields)
    default = BUILTIN.kinds[kind].default_field
    assert default is not None and default in schema["properties"]


def test_demo_and_inline_test_payloads_fit_their_kind() -> None:
    checked: dict[str, int] = {}

    def fits(kind: str, payload: dict[str, Any]) -> None:
        errors = list(Draft202012Validator(committed(kind)).iter_errors(payload))
        assert errors == [], (kind, payload, [e.message for e in errors])
        checked[kind] = checked.get(kind, 0) + 1

    for line in (REPO / "services" / "ttpctl" / "demo_events.jsonl").read_text().splitlines():
        event = json.loads(line)
        fits(event["source_kind"], event["payload"])
    for report in RuleValidator().validate_tree(REPO / "rules"):
        assert report.rule is not None
        for test in report.rule.tests:
            fits(test.source_kind or report.rule.applies_to[0], test.event)
    assert set(checked) == set(KINDS)


def test_contract_doc_lists_the_catalogue_exactly() -> None:
    text = (REPO / "docs" / "contract.md").read_text("utf-8")
    section = text[text.index("## Field catalogue") : text.index("## Compatibility rules")]
    network = {f.name for f in NETWORK_FIELDS}
    expected: set[str] = set()
    for kind in BUILTIN.kinds.values():
        expected.add(
            f"| `{kind.name}` | {kind.description} | `{kind.default_field}` | "
            f"[`payloads/{kind.name}.json`](schemas/payloads/{kind.name}.json) |"
        )
        assert network <= set(kind.fields)
        for field in kind.fields.values():
            if field.name in network:
                continue
            kind_type = field.type if isinstance(field.type, str) else " or ".join(field.type)
            default = " (default field)" if field.name == kind.default_field else ""
            expected.add(
                f"| `{kind.name}` | `{field.name}` | {kind_type} | {field.description}{default} |"
            )
    for field in NETWORK_FIELDS:
        expected.add(f"| every kind | `{field.name}` | {field.type} | {field.description} |")
    rows = {
        line
        for line in section.splitlines()
        if line.startswith("| `") or line.startswith("| every")
    }
    assert rows == expected
