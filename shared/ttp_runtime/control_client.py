"""A thin async client of the master's control service (``ttp.ctl.<endpoint>``).

:class:`ControlClient` sends a request model of :mod:`ttp_core.contract.control` as JSON
and returns the endpoint's result model, or raises :class:`ControlClientError` carrying the
error code of the reply (or ``unavailable`` when no master answered). ttpctl and the web
console both call the master through it.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final, TypeVar

import nats.errors
import pydantic
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel

from ttp_core.contract import subjects
from ttp_core.contract.control import (
    DEADLINE_HEADER,
    REQUESTS,
    RESULTS,
    AuditLog,
    AuditRequest,
    Endpoint,
    ErrorCode,
    FleetInfo,
    FleetRequest,
    Reply,
    RevisionInfo,
    RevisionRequest,
    RuleDetail,
    RuleShowRequest,
    RulesList,
    RulesListRequest,
    StateChanged,
    StateClearRequest,
    StateGetRequest,
    StateList,
    StateSetRequest,
    format_deadline,
)

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT_S",
    "ControlClient",
    "ControlClientError",
    "build_request",
    "decode_reply",
    "no_responders_message",
]

DEFAULT_REQUEST_TIMEOUT_S: Final = 5.0
_ERROR_HEADER: Final = "Nats-Service-Error"
_ERROR_CODE_HEADER: Final = "Nats-Service-Error-Code"
# For an error reply whose body is not a Reply (only the micro headers are readable).
_CODE_OF_STATUS: Final = {
    400: ErrorCode.BAD_REQUEST,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.UNKNOWN_RULE,
    503: ErrorCode.UNAVAILABLE,
}

ModelT = TypeVar("ModelT", bound=BaseModel)


def no_responders_message(subject: str) -> str:
    """What "no responders" means for a control request on ``subject``.

    NATS cannot tell the two apart: no master serves the subject, or the server routes it
    nowhere for the caller's identity (a viewer's account does not import the endpoints that
    change state)."""
    return (
        f"no master is serving {subject}, or your NATS identity may not call it (a viewer cannot"
        " set or clear state): is ttp-master running, and are you connected as the right role?"
    )


class ControlClientError(Exception):
    """The control request failed: an error reply, or no (readable) reply at all."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message if self.field is None else f"{self.message} (field: {self.field})"


def build_request(model: type[ModelT], **fields: Any) -> ModelT:
    """A request ``model`` from ``fields``; invalid input is a ``bad_request``
    :class:`ControlClientError` (checked here, so a bad value never reaches the master)."""
    try:
        return model(**fields)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        text = f"{where}: {message}" if where else message
        raise ControlClientError(ErrorCode.BAD_REQUEST, text, where) from None


def _expect(model: type[ModelT], result: BaseModel) -> ModelT:
    if not isinstance(result, model):
        raise TypeError(f"expected {model.__name__}, got {type(result).__name__}")
    return result


def _header_error(msg: Msg) -> ControlClientError | None:
    headers = msg.headers or {}
    text = headers.get(_ERROR_HEADER)
    if text is None:
        return None
    try:
        status = int(headers.get(_ERROR_CODE_HEADER, "500"))
    except ValueError:
        status = 500
    code = _CODE_OF_STATUS.get(status, ErrorCode.INTERNAL)
    return ControlClientError(code, text or f"the master answered with error {status}")


def decode_reply(endpoint: Endpoint, msg: Msg) -> BaseModel:
    """The result model of a reply to ``endpoint``, or :class:`ControlClientError`."""
    try:
        reply = Reply[Any].model_validate_json(msg.data)
    except pydantic.ValidationError:
        reply = None
    if reply is not None and not reply.ok and reply.error is not None:
        raise ControlClientError(reply.error.code, reply.error.message, reply.error.field)
    if reply is None or not reply.ok:
        # Not our protocol's body; the micro headers may still say what went wrong.
        error = _header_error(msg)
        if error is not None:
            raise error
        raise ControlClientError(
            ErrorCode.INTERNAL,
            f"unreadable reply from the master on {subjects.control(endpoint.value)}:"
            f" {msg.data[:200]!r}",
        )
    try:
        return RESULTS[endpoint].model_validate(reply.result)
    except pydantic.ValidationError as exc:
        raise ControlClientError(
            ErrorCode.INTERNAL,
            f"the master's {endpoint.value} result does not match the contract:"
            f" {json.dumps(exc.errors(include_url=False, include_input=False), default=str)[:300]}",
        ) from None


class ControlClient:
    """Requests to the master's control service over a connected NATS client.

    Each method sends one request and returns the typed result; every failure is a
    :class:`ControlClientError` whose ``code`` is the reply's error code, or ``unavailable``
    when nobody answered in ``timeout_s`` (the leader answers at once; a standby answers
    ``not_leader`` after about 1.5 s when no leader does). Each request carries its deadline
    (``Ttp-Deadline``): no master acts on it once this client has stopped waiting.
    """

    def __init__(self, nc: Client, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self._nc = nc
        self.timeout_s = timeout_s

    async def call(
        self, endpoint: Endpoint, request: BaseModel, *, timeout_s: float | None = None
    ) -> BaseModel:
        """Send ``request`` to ``ttp.ctl.<endpoint>``; the result model of ``RESULTS[endpoint]``."""
        expected = REQUESTS[endpoint]
        if not isinstance(request, expected):
            raise TypeError(f"{endpoint.value} takes a {expected.__name__}")
        subject = subjects.control(endpoint.value)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        # The master does not act on the request once this client has stopped waiting.
        deadline = {DEADLINE_HEADER: format_deadline(time.time() + timeout)}
        try:
            msg = await self._nc.request(
                subject,
                request.model_dump_json(exclude_none=True).encode(),
                timeout=timeout,
                headers=deadline,
            )
        except nats.errors.NoRespondersError:
            raise ControlClientError(
                ErrorCode.UNAVAILABLE, no_responders_message(subject)
            ) from None
        except nats.errors.TimeoutError:
            raise ControlClientError(
                ErrorCode.UNAVAILABLE,
                f"no answer from the master on {subject} within {timeout:g} s"
                " (is the leader overloaded or cut off from NATS?)",
            ) from None
        except nats.errors.Error as exc:
            raise ControlClientError(
                ErrorCode.UNAVAILABLE, f"request on {subject} failed: {exc or type(exc).__name__}"
            ) from None
        return decode_reply(endpoint, msg)

    async def state_set(self, request: StateSetRequest) -> StateChanged:
        """Set a rule's operator state (``state.set``)."""
        return _expect(StateChanged, await self.call(Endpoint.STATE_SET, request))

    async def state_clear(self, request: StateClearRequest) -> StateChanged:
        """Put a rule back to enabled (``state.clear``)."""
        return _expect(StateChanged, await self.call(Endpoint.STATE_CLEAR, request))

    async def state_get(self, request: StateGetRequest | None = None) -> StateList:
        """One rule's state, or every non-default state (``state.get``)."""
        return _expect(StateList, await self.call(Endpoint.STATE_GET, request or StateGetRequest()))

    async def rules_list(self, request: RulesListRequest | None = None) -> RulesList:
        """The rules the master knows, optionally of one status (``rules.list``)."""
        return _expect(
            RulesList, await self.call(Endpoint.RULES_LIST, request or RulesListRequest())
        )

    async def rules_show(self, request: RuleShowRequest) -> RuleDetail:
        """One rule in detail (``rules.show``)."""
        return _expect(RuleDetail, await self.call(Endpoint.RULES_SHOW, request))

    async def revision(self, request: RevisionRequest | None = None) -> RevisionInfo:
        """The master's current ruleset revision and digest (``revision``)."""
        return _expect(
            RevisionInfo, await self.call(Endpoint.REVISION, request or RevisionRequest())
        )

    async def audit(self, request: AuditRequest | None = None) -> AuditLog:
        """The change log, oldest first (``audit``)."""
        return _expect(AuditLog, await self.call(Endpoint.AUDIT, request or AuditRequest()))

    async def fleet(
        self, request: FleetRequest | None = None, *, timeout_s: float | None = None
    ) -> FleetInfo:
        """Every worker's last status against the master's revision (``fleet``)."""
        result = await self.call(Endpoint.FLEET, request or FleetRequest(), timeout_s=timeout_s)
        return _expect(FleetInfo, result)
