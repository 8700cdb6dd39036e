"""`ttpctl schema export DIR`: the JSON Schemas of the public contract, from the models.

- One file per CloudEvents `type` (`DIR/schemas/<type>.json`), each describing the whole
  message (the CloudEvents envelope and its `data`), with `$id` equal to the `dataschema` URI
  the producers put in every message (`payloads.schema_id`).
- Two files per endpoint of the operator control protocol (`ttp.ctl.<endpoint>`):
  `DIR/schemas/control/<endpoint>.request.json` (the strict request model) and
  `DIR/schemas/control/<endpoint>.reply.json` (the tolerant `{"ok", "result", "error"}`
  reply around the endpoint's result model), with `$id` `payloads.control_schema_id`.

- One file per source kind of the field catalogue (`DIR/schemas/payloads/<kind>.json`): the
  `payload` of a `ttp.event.v1` event of that kind, open to more fields (`$id`
  `field_catalogue.payload_schema_id`).

All are JSON Schema 2020-12. The files under `docs/schemas/` are this command's output; a
contract test regenerates them and fails on any difference (`--check` does the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import typer
from pydantic import BaseModel

from ttp_core.contract import subjects
from ttp_core.contract.control import REQUESTS, RESULTS, Endpoint, ErrorCode, Reply
from ttp_core.contract.field_catalogue import BUILTIN as FIELD_CATALOGUE
from ttp_core.contract.field_catalogue import payload_schema
from ttp_core.contract.payloads import DATA_MODELS, CloudEvent, control_schema_id, schema_id

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS_SUBDIR: Final = "schemas"
CONTROL_SUBDIR: Final = "control"
PAYLOADS_SUBDIR: Final = "payloads"

ControlPart = Literal["request", "reply"]
CONTROL_PARTS: Final[tuple[ControlPart, ...]] = ("request", "reply")

# Every CloudEvents attribute our producers set; all are always present in a message.
_ENVELOPE_REQUIRED: Final = tuple(CloudEvent.model_fields)

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


def _control_document(
    endpoint: Endpoint, part: ControlPart, description: str, generated: dict[str, Any]
) -> dict[str, Any]:
    body = {k: v for k, v in generated.items() if k not in ("title", "description", "$defs")}
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": control_schema_id(endpoint.value, part),
        "title": f"{subjects.control(endpoint.value)}.{part}",
        "description": description,
        **body,
    }
    if generated.get("$defs"):
        schema["$defs"] = generated["$defs"]
    return schema


def request_schema(endpoint: Endpoint, model: type[BaseModel] | None = None) -> dict[str, Any]:
    """The JSON Schema of a request to `ttp.ctl.<endpoint>` (`model` defaults to
    `REQUESTS[endpoint]`). Requests are strict: `additionalProperties: false`."""
    model = model or REQUESTS[endpoint]
    generated = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
    doc = (model.__doc__ or "").strip()
    description = (
        f"{doc}\n\nThe request body of `{subjects.control(endpoint.value)}` (JSON; an empty "
        "body is the empty object). Strict: a field this service version does not know is "
        "refused with `bad_request`. The master may check more than this schema states "
        "(e.g. that a time lies in the future) and then also answers `bad_request`, naming "
        "the offending `field`."
    ).strip()
    return _control_document(endpoint, "request", description, generated)


def reply_schema(endpoint: Endpoint, result: type[BaseModel] | None = None) -> dict[str, Any]:
    """The JSON Schema of a reply from `ttp.ctl.<endpoint>`: `Reply[result]` (`result`
    defaults to `RESULTS[endpoint]`). Replies are tolerant: unknown fields are allowed."""
    result = result or RESULTS[endpoint]
    generated = Reply[result].model_json_schema(  # type: ignore[valid-type]
        mode="validation", ref_template="#/$defs/{model}"
    )
    statuses = ", ".join(f"`{code.value}` {code.status}" for code in ErrorCode)
    description = (
        f"The reply to `{subjects.control(endpoint.value)}`: "
        f'`{{"ok": true, "result": <{result.__name__}>, "error": null}}` on success, '
        '`{"ok": false, "result": null, "error": {"code", "message", "field"}}` on failure. '
        "An error reply also carries the NATS micro headers `Nats-Service-Error` (the "
        "message) and `Nats-Service-Error-Code` (the numeric status of the code: "
        f"{statuses}). Clients must ignore unknown fields; a field with a `default` may be "
        "absent and then has that value."
    )
    return _control_document(endpoint, "reply", description, generated)


def control_schema(endpoint: Endpoint, part: ControlPart) -> dict[str, Any]:
    return request_schema(endpoint) if part == "request" else reply_schema(endpoint)


def all_control_schemas() -> dict[tuple[Endpoint, ControlPart], dict[str, Any]]:
    """The request and reply schema of every control endpoint."""
    return {
        (endpoint, part): control_schema(endpoint, part)
        for endpoint in Endpoint
        for part in CONTROL_PARTS
    }


def render(schema: dict[str, Any]) -> str:
    """The exact text of a schema file (stable, so files can be compared byte for byte)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def schema_path(directory: Path, event_type: str) -> Path:
    return directory / SCHEMAS_SUBDIR / f"{event_type}.json"


def control_schema_path(directory: Path, endpoint: Endpoint, part: ControlPart) -> Path:
    return directory / SCHEMAS_SUBDIR / CONTROL_SUBDIR / f"{endpoint.value}.{part}.json"


def payload_schema_path(directory: Path, kind: str) -> Path:
    return directory / SCHEMAS_SUBDIR / PAYLOADS_SUBDIR / f"{kind}.json"


def expected_files(directory: Path) -> dict[Path, str]:
    """Every file `export` writes under `directory`, with its exact text."""
    files = {schema_path(directory, t): render(s) for t, s in all_schemas().items()}
    files.update(
        (control_schema_path(directory, endpoint, part), render(schema))
        for (endpoint, part), schema in all_control_schemas().items()
    )
    files.update(
        (payload_schema_path(directory, name), render(payload_schema(kind)))
        for name, kind in FIELD_CATALOGUE.kinds.items()
    )
    return files


def export(directory: Path) -> list[Path]:
    """Write every schema file (CloudEvents types and control endpoints); the paths written."""
    written: list[Path] = []
    for path, text in expected_files(directory).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """The schema files under `directory/schemas/` (and `control/`, `payloads/`) that differ from
    the models, are missing, or are stale leftovers of a type or endpoint that no longer
    exists."""
    expected = expected_files(directory)
    problems: list[str] = []
    for path, text in expected.items():
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from the models")
    folders = (
        (directory / SCHEMAS_SUBDIR, "no such type in the models"),
        (directory / SCHEMAS_SUBDIR / CONTROL_SUBDIR, "no such control endpoint in the models"),
        (directory / SCHEMAS_SUBDIR / PAYLOADS_SUBDIR, "no such kind in the field catalogue"),
    )
    for folder, what in folders:
        if folder.is_dir():
            problems.extend(
                f"{extra}: {what}"
                for extra in sorted(folder.glob("*.json"))
                if extra not in expected
            )
    return problems


@schema_app.command("export")
def export_command(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Output directory; files go to DIR/schemas/<type>.json, "
            "DIR/schemas/control/<endpoint>.{request,reply}.json and "
            "DIR/schemas/payloads/<kind>.json."
        ),
    ],
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the files differ from the models."),
    ] = False,
) -> None:
    """Write the JSON Schema of every CloudEvents type (envelope + data), of every control
    endpoint's request and reply, and of each source kind's payload."""
    if check:
        problems = drift(directory)
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1 if problems else 0)
    for path in export(directory):
        typer.echo(str(path))
