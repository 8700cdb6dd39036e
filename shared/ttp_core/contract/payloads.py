"""CloudEvents 1.0 payload models for every subject (see docs/contract.md).

Consumers ignore unknown fields (`extra="ignore"`), so producers may add fields within
a type version; removing or renaming one needs a new `type` (`.v2`).
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from ttp_core.contract import subjects
from ttp_core.contract.events import MAX_SOURCE_ID, check_event

SPECVERSION: Final = "1.0"
MASTER_SOURCE: Final = "ttp-rulebus/master"
SCHEMA_BASE: Final = "urn:ttp-rulebus:schema:"


def worker_source(worker_id: str) -> str:
    return f"ttp-rulebus/worker/{worker_id}"


class _Data(BaseModel):
    """Base of every `data` model; subclasses name their CloudEvents type."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    event_type: ClassVar[str]


class RuleReloaded(_Data):
    """`ttp.rule.reloaded.<rule_id>`: a rule's definition changed, or it was deleted."""

    event_type: ClassVar[str] = "ttp.rule.reloaded.v1"

    rule_id: str
    revision: int
    rule_version: int | None
    content_sha256: str | None
    source_path: str
    deleted: bool = False
    rule: dict[str, Any] | None = None


StateName = Literal["enabled", "disabled", "clipped"]


class RuleStateChanged(_Data):
    """`ttp.rule.state.<rule_id>`: the operator state of a rule."""

    event_type: ClassVar[str] = "ttp.rule.state.v1"

    rule_id: str
    revision: int
    state: StateName
    confidence_max: float | None = None
    expires_at: datetime | None = None
    reason: str | None = None
    set_by: str | None = None
    set_at: datetime | None = None
    cause: Literal["operator", "expired"] = "operator"


class RulesetRevision(_Data):
    """`ttp.ruleset.revision`: totals after every change batch."""

    event_type: ClassVar[str] = "ttp.ruleset.revision.v1"

    revision: int
    rules: int
    active: int
    external: int
    rejected: int
    digest: str


class RejectionError(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    line: int
    column: int
    message: str


class RuleRejected(_Data):
    """`ttp.rule.rejected.<rule_id>`: a rule file failed validation."""

    event_type: ClassVar[str] = "ttp.rule.rejected.v1"

    rule_id: str
    source_path: str
    errors: list[RejectionError]


class HoneypotEvent(_Data):
    """`ttp.event.<source_kind>`: one honeypot observation."""

    # Validation is `ttp_core.contract.events.check_event`, the worker's own check; the
    # field types below give the JSON Schema, and a test proves the two agree.

    event_type: ClassVar[str] = "ttp.event.v1"

    source_kind: Annotated[str, Field(pattern=f"^{subjects.TOKEN_PATTERN}$")]
    source_id: Annotated[str, Field(min_length=1, max_length=MAX_SOURCE_ID)]
    attacker_uuid: str | None = None
    identity_uuid: str | None = None
    session_id: str | None = None
    decky_id: str | None = None
    payload: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _valid_event(cls, data: Any) -> Any:
        # MalformedEventError is a ValueError: pydantic reports it as a validation error.
        return check_event(data)


class TagData(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    uuid: str
    rule_id: str
    rule_version: int
    tactic: str
    technique_id: str
    sub_technique_id: str | None
    confidence: float
    evidence: dict[str, Any]
    attack_version: str
    mitre_url: str


class EventTagged(_Data):
    """`ttp.tagged.<source_kind>`: the tags one event produced."""

    event_type: ClassVar[str] = "ttp.tagged.v1"

    source_kind: str
    source_id: str
    attacker_uuid: str | None = None
    identity_uuid: str | None = None
    session_id: str | None = None
    decky_id: str | None = None
    revision: int
    tags: list[TagData]


class DeadLetter(_Data):
    """`ttp.deadletter.<source_kind>`: an event a worker could not process."""

    event_type: ClassVar[str] = "ttp.deadletter.v1"

    source_kind: str
    received: str
    """The event's bytes as UTF-8 text (invalid sequences as U+FFFD), cut at a cap."""
    truncated: bool = False
    error: str
    """`<reason>: <detail>`."""
    worker_id: str
    reason: str | None = None
    """The reason alone (see `docs/contract.md`); absent from older workers' dead letters."""
    deliveries: int | None = None
    """Times the event had been delivered to workers when it was dead-lettered."""


class WorkerStatus(_Data):
    """`ttp.worker.status.<worker_id>`: a worker's heartbeat."""

    event_type: ClassVar[str] = "ttp.worker.status.v1"

    worker_id: str
    revision: int
    rules: int
    active: int
    external: int
    ready: bool
    events_processed: int
    index_digest: str | None = None
    apply_latency_ms: float | None = None
    status_interval_s: float | None = None
    """Seconds between heartbeats: a worker silent for three of them is gone."""


DataT = TypeVar("DataT", bound=_Data)


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 structured-mode envelope around one `data` model."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"] = SPECVERSION
    id: str
    source: str
    type: str
    time: datetime
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    # SerializeAsAny: an unparametrised envelope still serialises every field of its data.
    data: SerializeAsAny[DataT]


DATA_MODELS: Final[tuple[type[_Data], ...]] = (
    RuleReloaded,
    RuleStateChanged,
    RulesetRevision,
    RuleRejected,
    HoneypotEvent,
    EventTagged,
    DeadLetter,
    WorkerStatus,
)


def schema_id(event_type: str) -> str:
    return f"{SCHEMA_BASE}{event_type}"


def control_schema_id(endpoint: str, part: Literal["request", "reply"]) -> str:
    """The `$id` of a control endpoint's request or reply schema, e.g.
    `urn:ttp-rulebus:schema:ttp.ctl.state.set.request`."""
    return schema_id(f"{subjects.control(endpoint)}.{part}")


def envelope(
    data: DataT,
    *,
    source: str,
    subject: str,
    event_id: str | None = None,
    time: datetime | None = None,
) -> CloudEvent[DataT]:
    """Wrap `data` in a CloudEvents envelope of its type."""
    return CloudEvent[DataT](
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=data.event_type,
        time=time or datetime.now(UTC),
        subject=subject,
        dataschema=schema_id(data.event_type),
        data=data,
    )


def encode(event: CloudEvent[Any]) -> bytes:
    """The JSON bytes published on NATS."""
    return event.model_dump_json(exclude_none=False).encode("utf-8")


@functools.cache
def _envelope_model(model: type[_Data]) -> type[CloudEvent[Any]]:
    # Parametrising a generic model costs more than validating a small message.
    return CloudEvent[model]  # type: ignore[valid-type]


def decode(raw: bytes | str, model: type[DataT]) -> CloudEvent[DataT]:
    """Parse a CloudEvents message whose data is `model`; raises pydantic.ValidationError."""
    return _envelope_model(model).model_validate_json(raw)
