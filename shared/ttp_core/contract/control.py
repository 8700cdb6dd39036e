"""The operator control protocol: request/reply on `ttp.ctl.<endpoint>` (see docs/operations.md).

The master serves these endpoints as a NATS micro service named `ttp-ctl`; `ttpctl` and any
other client send a JSON request and receive a :class:`Reply`: `{"ok": true, "result": ...}`
or `{"ok": false, "error": {"code", "message", "field"}}`. Error replies also carry the micro
service headers `Nats-Service-Error` and `Nats-Service-Error-Code` (the numeric `status`).

Requests are strict (unknown fields are refused: a typo must not be silently dropped); replies
are tolerant, like every consumer model of the contract.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ttp_core.contract.payloads import RejectionError, StateName

SERVICE_NAME: Final = "ttp-ctl"
SERVICE_VERSION: Final = "1.3.0"

DEADLINE_HEADER: Final = "Ttp-Deadline"
"""Optional request header: the Unix time, in seconds, after which the caller stops waiting.

A master does not act on a request it gets to after that time (give or take its allowance for
clock skew): a refusal or a timeout the caller already saw is then never undone by a master
that was frozen, or cut off, with the request queued. Without the header a request has no
deadline."""
_DEADLINE_TEXT: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def format_deadline(unix_time: float) -> str:
    """The `Ttp-Deadline` header value for a deadline at `unix_time` (milliseconds kept)."""
    return f"{unix_time:.3f}"


def parse_deadline(text: str) -> float:
    """The Unix time a `Ttp-Deadline` header names; ValueError saying why when it names none.

    Plain decimal seconds only: no sign, exponent, `nan` or `inf`, which Python's float()
    would take and a deadline must not be."""
    value = text.strip()
    if _DEADLINE_TEXT.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(
            f"{DEADLINE_HEADER} header {shown!r} is not a Unix time in seconds (like 1765000000.5)"
        )
    return float(value)


_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def _storable(value: str) -> str:
    # PostgreSQL refuses NUL, and a lone surrogate cannot be encoded as UTF-8: JSON can
    # carry both (`\u0000`, `\ud800`), so the request is refused here rather than there.
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain a NUL character or a lone surrogate")
    return value


_ACTOR_NOTE: Final = (
    "The user the web console acts for, which the master stores as `on_behalf_of` beside the"
    " actor (the caller's NATS identity as the server authenticated it, never this field)."
    " Only the console role may send it; from any other role the request is refused"
    " `forbidden`."
)

RuleIdText = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ActorText = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_storable)]
ReasonText = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_storable)]


class Endpoint(StrEnum):
    """Endpoint names; the subject is `subjects.control(endpoint)`."""

    STATE_SET = "state.set"
    STATE_CLEAR = "state.clear"
    STATE_GET = "state.get"
    RULES_LIST = "rules.list"
    RULES_SHOW = "rules.show"
    REVISION = "revision"
    AUDIT = "audit"
    FLEET = "fleet"


class ErrorCode(StrEnum):
    """Machine-readable error codes; `status` maps each to a number for micro headers."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_RULE = "unknown_rule"
    NOT_LEADER = "not_leader"
    UNAVAILABLE = "unavailable"
    BUSY = "busy"
    """The master is already working on its cap of concurrent requests: retry shortly."""
    INTERNAL = "internal"
    """An unexpected failure; the message carries a correlation id to find it in the log."""
    FORBIDDEN = "forbidden"
    """The caller's NATS identity may not do this (or the master cannot verify it)."""

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS: Final = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_RULE: 404,
    ErrorCode.NOT_LEADER: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.BUSY: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.FORBIDDEN: 403,
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class StateSetRequest(_Request):
    """Set a rule's operator state. `clipped` needs `confidence_max` in (0, 1]."""

    # Who makes the change is the caller's NATS identity, which the master takes from the
    # server (docs/contract.md, caller identity); `actor`, from the console role only, names
    # the user it acts for.

    rule_id: RuleIdText
    state: StateName
    confidence_max: Annotated[float, Field(gt=0, le=1)] | None = None
    expires_at: datetime | None = None
    reason: ReasonText
    actor: Annotated[ActorText | None, Field(description=_ACTOR_NOTE)] = None
    force: bool = False
    """Allow a state for a rule_id the master does not know (yet); needs the admin role."""

    @field_validator("reason", "actor")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a UTC offset (e.g. 2026-11-22T03:00:00Z)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StateSetRequest:
        if self.state == "clipped" and self.confidence_max is None:
            raise ValueError("state 'clipped' needs confidence_max in (0, 1]")
        if self.state != "clipped" and self.confidence_max is not None:
            raise ValueError(f"confidence_max applies only to 'clipped', not {self.state!r}")
        if self.state == "enabled" and self.expires_at is not None:
            raise ValueError("'enabled' is the default state and cannot expire")
        return self


class StateClearRequest(_Request):
    """Back to `enabled` (the default); cancels any scheduled expiry."""

    rule_id: RuleIdText
    actor: Annotated[ActorText | None, Field(description=_ACTOR_NOTE)] = None
    reason: Annotated[str, Field(max_length=1024), AfterValidator(_storable)] | None = None


class StateGetRequest(_Request):
    """One rule's state, or every non-default state when `rule_id` is omitted."""

    rule_id: RuleIdText | None = None


RuleStatus = Literal["active", "external", "rejected", "deleted"]


class RulesListRequest(_Request):
    status: RuleStatus | None = None


class RuleShowRequest(_Request):
    rule_id: RuleIdText


class RevisionRequest(_Request):
    pass


class AuditRequest(_Request):
    """Changes in revision order, oldest first; `limit` keeps the newest ones."""

    rule_id: RuleIdText | None = None
    since: datetime | None = None
    limit: Annotated[int, Field(ge=1, le=10_000)] = 1000


class FleetRequest(_Request):
    pass


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class OperatorState(_Result):
    """A rule's operator state as persisted (`enabled` with no row means the default)."""

    rule_id: str
    state: StateName
    confidence_max: float | None = None
    expires_at: datetime | None = None
    reason: str | None = None
    set_by: str | None = None
    """The caller's identity as the NATS server authenticated it (`<ACCOUNT>/<user>`)."""
    set_at: datetime | None = None
    revision: int | None = None
    on_behalf_of: str | None = None
    """The user the console acted for (the request's `actor`): the console verified that
    user, the server verified the console."""


class StateChanged(_Result):
    """Reply of `state.set` / `state.clear`: the new state and the revision it took."""

    state: OperatorState
    revision: int
    changed: bool = True
    """False when the request asked for the state the rule already had (nothing written)."""


class StateList(_Result):
    states: list[OperatorState]


class RuleSummary(_Result):
    rule_id: str
    status: RuleStatus
    name: str | None = None
    rule_version: int | None = None
    source_path: str | None = None
    revision: int | None = None
    updated_at: datetime | None = None
    state: OperatorState
    errors: list[RejectionError] = Field(default_factory=list)
    """Validation errors of a rejected file (the last good version, if any, keeps serving)."""


class RulesList(_Result):
    revision: int
    rules: list[RuleSummary]
    held_deletes: str | None = None
    """Why rule deletes are held back (the rules directory is missing, or most rule files
    vanished at once) and until when; null when nothing is held."""


class RuleDetail(RuleSummary):
    content_sha256: str | None = None
    definition: dict[str, Any] | None = None
    yaml_text: str | None = None


class RevisionInfo(_Result):
    revision: int
    rules: int
    active: int
    external: int
    rejected: int
    digest: str


class AuditEntry(_Result):
    revision: int
    at: datetime
    rule_id: str | None
    kind: str
    """`reloaded`, `deleted`, `rejected` or `state`."""
    actor: str | None
    """Who made the change: `<ACCOUNT>/<user>` as the NATS server authenticated the caller,
    `unverified`, or `ttp-master` for the master's own changes."""
    summary: str
    data: dict[str, Any]
    published_at: datetime | None = None
    on_behalf_of: str | None = None
    """The user the console acted for (the request's `actor`): the console verified that
    user, the server verified the console."""


class AuditLog(_Result):
    entries: list[AuditEntry]


class WorkerView(_Result):
    worker_id: str
    revision: int
    ready: bool
    lag: int
    """Revisions behind the master's published revision (0 when caught up)."""
    digest_matches: bool | None = None
    digest: str | None = None
    """The digest of the index the worker tags with, from its status (None: it sent none)."""
    rules: int
    active: int
    external: int
    events_processed: int
    last_seen: datetime
    age_s: float
    gone: bool
    """No status for three intervals: not counted for convergence."""


class FleetInfo(_Result):
    revision: int
    digest: str
    status_interval_s: float
    workers: list[WorkerView]
    converged: bool
    """Every live worker is ready, at or past `revision`, with the master's digest."""


class ControlError(_Result):
    code: ErrorCode
    message: str
    field: str | None = None


ResultT = TypeVar("ResultT", bound=BaseModel)


class Reply(BaseModel, Generic[ResultT]):
    model_config = ConfigDict(extra="ignore", frozen=True)

    ok: bool
    result: ResultT | None = None
    error: ControlError | None = None


REQUESTS: Final[dict[Endpoint, type[_Request]]] = {
    Endpoint.STATE_SET: StateSetRequest,
    Endpoint.STATE_CLEAR: StateClearRequest,
    Endpoint.STATE_GET: StateGetRequest,
    Endpoint.RULES_LIST: RulesListRequest,
    Endpoint.RULES_SHOW: RuleShowRequest,
    Endpoint.REVISION: RevisionRequest,
    Endpoint.AUDIT: AuditRequest,
    Endpoint.FLEET: FleetRequest,
}

RESULTS: Final[dict[Endpoint, type[_Result]]] = {
    Endpoint.STATE_SET: StateChanged,
    Endpoint.STATE_CLEAR: StateChanged,
    Endpoint.STATE_GET: StateList,
    Endpoint.RULES_LIST: RulesList,
    Endpoint.RULES_SHOW: RuleDetail,
    Endpoint.REVISION: RevisionInfo,
    Endpoint.AUDIT: AuditLog,
    Endpoint.FLEET: FleetInfo,
}
