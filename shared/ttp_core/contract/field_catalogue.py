"""The field catalogue: the known event source kinds and the payload fields each carries.

Part of the public contract (docs/contract.md, `docs/schemas/payloads/<kind>.json`). Rule
validation uses it to catch typos that would leave a rule silently dead (`applies_to:
[comand]`, `field: command_txt`): a kind or field missing from the catalogue is a warning,
and an error under `ttpctl rules validate --strict`. It describes what honeypots are
expected to send; it never restricts what they may send (payloads may carry more fields).

A deployment extends it with its own kinds and fields from a YAML or JSON document
(:func:`parse_extension`; the master reads the file named by `TTP_FIELD_CATALOGUE`,
`ttpctl rules validate --fields FILE` reads one too):

    kinds:
      fingerprint:                       # a new kind
        description: TLS and SSH client fingerprints.
        fields:
          ja3: {type: string, description: JA3 hash of the TLS ClientHello}
          hassh: string                  # a type alone is enough
      command:                           # more fields for a known kind
        fields:
          tty: string

Default fields (a leaf without `field`) are not part of an extension: workers compile rules
without the catalogue, so the default of a kind is fixed in `ttp_core.rules.model`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ttp_core.rules.model import DEFAULT_FIELDS, TOKEN_PATTERN
from ttp_core.rules.yaml_source import YamlSourceError, parse_document

FIELD_TYPES: Final = ("string", "integer", "number", "boolean", "object", "array")
PAYLOAD_SCHEMA_BASE: Final = "urn:ttp-rulebus:schema:payload."


@dataclass(frozen=True, slots=True)
class PayloadField:
    """One top-level key of a kind's payload."""

    name: str
    type: str | tuple[str, ...]
    """A JSON Schema type name (one of :data:`FIELD_TYPES`), or several a value may have."""
    description: str = ""


@dataclass(frozen=True, slots=True)
class SourceKind:
    """An event source kind (`ttp.event.<kind>`) and its payload fields."""

    name: str
    description: str
    fields: Mapping[str, PayloadField]

    @property
    def default_field(self) -> str | None:
        """The field a match leaf without `field` reads."""
        return DEFAULT_FIELDS.get(self.name)


@dataclass(frozen=True, slots=True)
class FieldCatalogue:
    """Kinds by name. Treat as immutable: :meth:`extended` returns a new catalogue. (Plain
    dicts, not read-only proxies, so that a catalogue pickles into validation processes.)"""

    kinds: Mapping[str, SourceKind] = field(default_factory=dict)

    def kind(self, name: str) -> SourceKind | None:
        return self.kinds.get(name)

    def fields_of(self, kinds: Iterable[str]) -> set[str]:
        """Every field known in at least one of `kinds` (unknown kinds add nothing)."""
        found: set[str] = set()
        for name in kinds:
            known = self.kinds.get(name)
            if known is not None:
                found.update(known.fields)
        return found

    def suggest_kind(self, name: str) -> str | None:
        return _closest(name, self.kinds)

    def extended(self, extension: FieldCatalogue) -> FieldCatalogue:
        """This catalogue plus `extension`'s kinds and fields (its descriptions win)."""
        kinds = dict(self.kinds)
        for name, extra in extension.kinds.items():
            base = kinds.get(name)
            if base is None:
                kinds[name] = extra
                continue
            merged = {**base.fields, **extra.fields}
            kinds[name] = SourceKind(name, extra.description or base.description, merged)
        return FieldCatalogue(kinds)


def suggest_field(name: str, known: Iterable[str]) -> str | None:
    """The known field `name` was most likely meant to be, if any is close."""
    return _closest(name, known)


def _closest(name: str, known: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, sorted(known), n=1)
    return found[0] if found else None


def payload_schema_id(kind: str) -> str:
    """The `$id` of a kind's payload schema, e.g. `urn:ttp-rulebus:schema:payload.command`."""
    return f"{PAYLOAD_SCHEMA_BASE}{kind}"


def payload_schema(kind: SourceKind) -> dict[str, Any]:
    """The JSON Schema (2020-12) of `kind`'s payload. Open: honeypots may send more fields,
    and no field is required (a rule on a missing field simply does not fire)."""
    default = kind.default_field
    note = f" A match leaf without `field` reads `{default}`." if default else ""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": payload_schema_id(kind.name),
        "title": f"payload of ttp.event.{kind.name}",
        "description": (
            f"{kind.description} The `payload` of a `ttp.event.v1` event whose `source_kind` is "
            f"`{kind.name}`: the fields rules can name.{note} Every field is optional and "
            "other fields are allowed."
        ),
        "type": "object",
        "properties": {
            f.name: {
                "type": f.type if isinstance(f.type, str) else list(f.type),
                "description": f.description,
            }
            for f in kind.fields.values()
        },
        "additionalProperties": True,
    }


class CatalogueError(ValueError):
    """An extension document that is not a valid catalogue, located in its source."""

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        super().__init__(f"{source}:{line}:{column}: {message}")
        self.source = source
        self.line = line
        self.column = column
        self.message = message


def parse_extension(text: str, source: str) -> FieldCatalogue:
    """A catalogue extension from YAML (or JSON) `text`; `source` names it in errors."""
    try:
        document = parse_document(text)
    except YamlSourceError as exc:
        raise CatalogueError(source, exc.line, exc.column, exc.message) from None

    def fail(path: tuple[str | int, ...], message: str) -> CatalogueError:
        position = document.position_of(path)
        return CatalogueError(source, position.line, position.column, message)

    data = document.data
    if not isinstance(data, dict) or set(data) != {"kinds"} or not isinstance(data["kinds"], dict):
        raise fail((), "a field catalogue is a mapping with one key, `kinds: {<kind>: ...}`")
    kinds: dict[str, SourceKind] = {}
    for name, spec in data["kinds"].items():
        where: tuple[str | int, ...] = ("kinds", name)
        if not isinstance(name, str) or not _is_token(name):
            raise fail(where, f"kind {name!r} does not match {TOKEN_PATTERN}")
        if not isinstance(spec, dict) or not set(spec) <= {"description", "fields"}:
            raise fail(where, f"kind {name!r} is a mapping of `description` and `fields`")
        description = spec.get("description", "")
        if not isinstance(description, str):
            raise fail((*where, "description"), "description must be text")
        fields_spec = spec.get("fields", {})
        if not isinstance(fields_spec, dict):
            raise fail((*where, "fields"), "fields must be a mapping of field name to type")
        fields: dict[str, PayloadField] = {}
        for field_name, field_spec in fields_spec.items():
            at = (*where, "fields", field_name)
            fields[field_name] = _field(fail, at, field_name, field_spec)
        kinds[name] = SourceKind(name, description, fields)
    return FieldCatalogue(kinds)


def _field(fail: Any, where: tuple[str | int, ...], name: Any, spec: Any) -> PayloadField:
    if not isinstance(name, str) or not name or "." in name or len(name) > 256:
        raise fail(where, f"field name {name!r} must be text of 1-256 characters without '.'")
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or not set(spec) <= {"type", "description"}:
        raise fail(where, f"field {name!r} is a type name or `{{type, description}}`")
    kind = spec.get("type")
    types: list[Any] = kind if isinstance(kind, list) else [kind]
    if not types or any(t not in FIELD_TYPES for t in types):
        raise fail(
            where, f"field {name!r} has type {kind!r}; use {', '.join(FIELD_TYPES)} or a list"
        )
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise fail(where, f"the description of field {name!r} must be text")
    return PayloadField(name, kind if isinstance(kind, str) else tuple(types), description)


def _is_token(name: str) -> bool:
    return re.fullmatch(TOKEN_PATTERN, name) is not None


def _kind(name: str, description: str, *fields: PayloadField) -> SourceKind:
    return SourceKind(name, description, {f.name: f for f in fields})


NETWORK_FIELDS: Final = (
    PayloadField("src_ip", "string", "The attacker's IP address as the honeypot saw it."),
    PayloadField("src_port", "integer", "The attacker's source port."),
    PayloadField("dst_ip", "string", "The honeypot address that was contacted."),
    PayloadField("dst_port", "integer", "The honeypot port that was contacted."),
    PayloadField("protocol", "string", "The service protocol: ssh, telnet, http, smtp, ..."),
)
"""Fields every built-in kind carries: where the attack came from and went to."""

BUILTIN: Final = FieldCatalogue(
    {
        k.name: k
        for k in (
            _kind(
                "command",
                "A command line an attacker ran in an emulated shell.",
                PayloadField("command_text", "string", "The command line as typed."),
                PayloadField("username", "string", "The account of the shell session."),
                PayloadField("shell", "string", "The emulated shell (bash, sh, busybox)."),
                PayloadField("cwd", "string", "The working directory of the command."),
                *NETWORK_FIELDS,
            ),
            _kind(
                "http_request",
                "An HTTP request a web honeypot received.",
                PayloadField("method", "string", "The request method (GET, POST, ...)."),
                PayloadField(
                    "raw_url", "string", "The request target as received, query included."
                ),
                PayloadField("path", "string", "The path part of the request target."),
                PayloadField("query", "string", "The query string, without the `?`."),
                PayloadField("http_version", "string", "HTTP/1.0, HTTP/1.1, HTTP/2."),
                PayloadField(
                    "headers",
                    "object",
                    "Request headers by lower-case name (`headers.user-agent`).",
                ),
                PayloadField("body", "string", "The request body as text."),
                *NETWORK_FIELDS,
            ),
            _kind(
                "auth_attempt",
                "A login attempt (ssh, telnet, ftp, http basic, ...).",
                PayloadField("username", "string", "The user name tried."),
                PayloadField("password", "string", "The password tried."),
                PayloadField("success", "boolean", "Whether the honeypot let it in."),
                PayloadField("auth_method", "string", "password, publickey, keyboard-interactive."),
                *NETWORK_FIELDS,
            ),
            _kind(
                "payload",
                "Raw bytes sent to a service that does not parse them (a port listener).",
                PayloadField("payload_text", "string", "The bytes received, decoded as text."),
                PayloadField("payload_hex", "string", "The bytes received, hex-encoded."),
                PayloadField("payload_size", "integer", "How many bytes were received."),
                *NETWORK_FIELDS,
            ),
            _kind(
                "email",
                "A message a mail honeypot accepted.",
                PayloadField("subject", "string", "The Subject header."),
                PayloadField("from", "string", "The sender address."),
                PayloadField(
                    "to", ("string", "array"), "The recipient address, or a list of them."
                ),
                PayloadField("cc", ("string", "array"), "The Cc address, or a list of them."),
                PayloadField("body", "string", "The message text."),
                PayloadField(
                    "attachments",
                    "array",
                    "The attached files' names (or objects with `filename`).",
                ),
                PayloadField("headers", "object", "Message headers by lower-case name."),
                *NETWORK_FIELDS,
            ),
        )
    }
)
"""The kinds and fields this project knows; see docs/contract.md#field-catalogue."""
