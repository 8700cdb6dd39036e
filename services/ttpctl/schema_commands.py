"""`ttpctl schema export DIR`: the JSON Schemas of the public contract, from the models.

One file per CloudEvents `type` (`DIR/schemas/<type>.json`), each describing the whole
message (the CloudEvents envelope and its `data`), JSON Schema 2020-12, with `$id` equal to
the `dataschema` URI the producers put in every message (`payloads.schema_id`). The files
under `docs/schemas/` are this command's output; a contract test regenerates them and fails
on any difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from pydantic import BaseModel

from ttp_core.contract.payloads import DATA_MODELS, CloudEvent, schema_id

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS_SUBDIR: Final = "schemas"

# Every CloudEvents attribute our producers set; all are always present in a message.
_ENVELOPE_REQUIRED: Final = (
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
)

schema_app = typer.Typer(help="The JSON Schemas of the public NATS contract.", no_args_is_help=True)


def message_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a whole message (envelope + `data`) whose data is `model`.

    `model` is one of `payloads.DATA_MODELS` (or a class shaped like one: a pydantic model
    with an `event_type` class variable). Unknown fields stay allowed (no
    `additionalProperties: false`): consumers ignore them, producers may add fields within
    a type version.
    """
    event_type: str = getattr(model, "event_type")  # noqa: B009 - a ClassVar of the model
    generated = CloudEvent[model].model_json_schema(  # type: ignore[valid-type]
        mode="validation", ref_template="#/$defs/{model}"
    )
    properties: dict[str, Any] = dict(generated["properties"])
    properties["type"] = {
        "const": event_type,
        "title": "Type",
        "description": "The CloudEvents type; the trailing `.vN` is the contract version.",
        "type": "string",
    }
    properties["dataschema"] = {
        "const": schema_id(event_type),
        "title": "Dataschema",
        "description": "The `$id` of this schema.",
        "type": "string",
    }
    doc = (model.__doc__ or "").strip()
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_id(event_type),
        "title": event_type,
        "description": (
            f"{doc}\n\nThe whole NATS message: a CloudEvents 1.0 structured-mode envelope "
            "(JSON) whose `data` is described below. Consumers must ignore unknown fields; "
            "a field with a `default` may be absent and then has that value."
        ).strip(),
        "type": "object",
        "properties": properties,
        "required": list(_ENVELOPE_REQUIRED),
        "$defs": generated.get("$defs", {}),
    }
    return schema


def all_schemas() -> dict[str, dict[str, Any]]:
    """Every published schema by CloudEvents type."""
    return {model.event_type: message_schema(model) for model in DATA_MODELS}


def render(schema: dict[str, Any]) -> str:
    """The exact text of a schema file (stable, so files can be compared byte for byte)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def schema_path(directory: Path, event_type: str) -> Path:
    return directory / SCHEMAS_SUBDIR / f"{event_type}.json"


def export(directory: Path) -> list[Path]:
    """Write `directory/schemas/<type>.json` for every type; the paths written."""
    written: list[Path] = []
    for event_type, schema in all_schemas().items():
        path = schema_path(directory, event_type)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """The schema files under `directory/schemas/` that differ from the models (or are
    missing, or are stale leftovers of a type that no longer exists)."""
    expected = {schema_path(directory, t).name: render(s) for t, s in all_schemas().items()}
    problems: list[str] = []
    for name, text in expected.items():
        path = directory / SCHEMAS_SUBDIR / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from the models")
    folder = directory / SCHEMAS_SUBDIR
    if folder.is_dir():
        problems.extend(
            f"{extra}: no such type in the models"
            for extra in sorted(folder.glob("*.json"))
            if extra.name not in expected
        )
    return problems


@schema_app.command("export")
def export_command(
    directory: Annotated[
        Path, typer.Argument(help="Output directory; files go to DIR/schemas/<type>.json.")
    ],
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the files differ from the models."),
    ] = False,
) -> None:
    """Write the JSON Schema of every CloudEvents type (envelope + data)."""
    if check:
        problems = drift(directory)
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1 if problems else 0)
    for path in export(directory):
        typer.echo(str(path))
