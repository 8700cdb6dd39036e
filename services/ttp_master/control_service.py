"""The operator control service: NATS micro service `ttp-ctl` on `ttp.ctl.>`.

See docs/operations.md (operator state) and docs/contract.md (the protocol).

Every master process runs it, so `$SRV.PING/INFO/STATS.ttp-ctl` finds the leader and the
standbys (metadata `role`). The leader's endpoints and the standbys' sit in different queue
groups, so each request reaches the leader and one standby: the leader answers at once; a
standby answers `not_leader` only after a pause, which a client sees only when no leader
answered (the leader is down or frozen); while the standby cannot reach PostgreSQL either, no
master can lead, and it answers `unavailable` instead. Handlers run as tasks, so a slow audit
query never holds up a state change; at most `max_concurrent` of them at once
(TTP_CONTROL_MAX_CONCURRENT), and a request beyond that is answered `busy` at once, so a flood
of requests cannot exhaust the master's memory or its PostgreSQL pool. An unexpected failure is
answered `internal` with a correlation id that the master logs with the exception: the reply
never carries the exception's text, which may name tables, queries or hosts.

Who calls is the NATS server's word, not the client's: the leader takes the caller's identity
and role from the `Nats-Request-Info` header the server stamps on each request
(:mod:`ttp_master.caller_identity`), refuses what that role may not do with `forbidden`, and
records the identity as the actor. A request's own `actor` (the user the console acts for) is
kept as `on_behalf_of`, and only from the console role: from any other it is `forbidden`.

A request may carry a deadline (header `Ttp-Deadline`, the time its caller stops waiting).
A master that gets to it later than that, give or take TTP_CONTROL_CLOCK_SKEW_S, neither acts
on it nor answers: the caller has already seen a standby's refusal or its own timeout, and a
master that was frozen with the request queued must not change state behind that answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import nats.errors
import pydantic
import sqlalchemy.exc
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from pydantic import BaseModel

from ttp_core.contract import subjects
from ttp_core.contract.control import (
    DEADLINE_HEADER,
    REQUESTS,
    SERVICE_NAME,
    SERVICE_VERSION,
    AuditLog,
    AuditRequest,
    ControlError,
    Endpoint,
    ErrorCode,
    Reply,
    RevisionInfo,
    RuleShowRequest,
    RulesList,
    RulesListRequest,
    StateChanged,
    StateClearRequest,
    StateGetRequest,
    StateList,
    StateSetRequest,
    parse_deadline,
)
from ttp_core.contract.payloads import RulesetRevision
from ttp_master import metrics
from ttp_master.bounded import within
from ttp_master.caller_identity import (
    Caller,
    ForbiddenError,
    IdentityPolicy,
    unauthenticated_server_refusal,
)
from ttp_master.db.queries import ControlQueries, default_state, state_from_row
from ttp_master.db.repository import ChangeSet, LeadershipLostError, RuleRepository, StateWrite
from ttp_master.expiry_scheduler import ExpiryScheduler
from ttp_master.fleet_tracker import FleetTracker
from ttp_runtime.nats import RepeatThrottle, flush_subscriptions, keep_pongs_paired
from ttp_runtime.tracing import get_tracer, inject_headers, start_consumer_span

_log = logging.getLogger(__name__)

STANDBY_REPLY_DELAY_S: Final = 1.5
"""How long a standby waits before saying so: a live leader has answered long before."""
ANSWER_BOUND_S: Final = 4.0
"""Longest a leader works on one request before it answers `unavailable`: below ttpctl's 5 s
timeout, so an operator learns that PostgreSQL is not answering, not that the master is."""
DEFAULT_CLOCK_SKEW_S: Final = 2.0
"""How far a caller's clock may run behind the master's before its deadlines come too early
(TTP_CONTROL_CLOCK_SKEW_S)."""
DEFAULT_MAX_CONCURRENT: Final = 32
"""Control requests one master works on at once (TTP_CONTROL_MAX_CONCURRENT)."""
REFUSAL_LOG_WINDOW_S: Final = 60.0
"""One log line per distinct refusal per window: a caller retrying in a loop cannot flood
the log."""
REGISTER_ATTEMPTS: Final = 3
"""Round trips tried to confirm that the NATS server holds a new service's subscriptions."""
REGISTER_FLUSH_TIMEOUT_S: Final = 5
"""Longest wait for one of those round trips."""
_LEADER_GROUP: Final = "ttp-ctl-leader"
_STANDBY_GROUP: Final = "ttp-ctl-standby"


class ControlRequestError(Exception):
    """A request that cannot be served, with the error the client gets."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.error = ControlError(code=code, message=message, field=field)


@dataclass(frozen=True, slots=True)
class LeaderTerm:
    """What the control service needs from the current leadership term."""

    repository: RuleRepository
    queries: ControlQueries
    scheduler: ExpiryScheduler
    summary: Callable[[], Awaitable[RulesetRevision]]
    held_deletes: Callable[[], str | None] = lambda: None
    """Rule deletes the master holds back because the rules directory vanished, or None."""


class ControlHandlers:
    """Validate a request, do it, and build the reply: everything but the transport."""

    def __init__(
        self,
        term: LeaderTerm,
        fleet: FleetTracker,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._term = term
        self._fleet = fleet
        self._clock = clock
        self._routes: dict[Endpoint, Callable[[Any, Caller], Awaitable[BaseModel]]] = {
            Endpoint.STATE_SET: self.state_set,
            Endpoint.STATE_CLEAR: self.state_clear,
            Endpoint.STATE_GET: self.state_get,
            Endpoint.RULES_LIST: self.rules_list,
            Endpoint.RULES_SHOW: self.rules_show,
            Endpoint.REVISION: self.revision,
            Endpoint.AUDIT: self.audit,
            Endpoint.FLEET: self.fleet,
        }

    async def handle(self, endpoint: Endpoint, raw: bytes, caller: Caller) -> BaseModel:
        """The result for a raw request of `caller`; raises :class:`ControlRequestError`.

        What the caller may not call is refused before the body is even read."""
        try:
            caller.check_endpoint(endpoint)
        except ForbiddenError as refusal:
            raise ControlRequestError(ErrorCode.FORBIDDEN, str(refusal)) from None
        request = parse_request(endpoint, raw)
        try:
            return await self._routes[endpoint](request, caller)
        except ControlRequestError:
            raise
        except LeadershipLostError as exc:
            raise ControlRequestError(ErrorCode.NOT_LEADER, str(exc)) from exc
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError) as exc:
            raise ControlRequestError(
                ErrorCode.UNAVAILABLE, f"PostgreSQL is unavailable: {type(exc).__name__}"
            ) from exc

    async def state_set(self, request: StateSetRequest, caller: Caller) -> StateChanged:
        term = self._term
        _check_acting_for(request.actor, caller)
        if request.force:
            try:
                caller.check_force()
            except ForbiddenError as refusal:
                raise ControlRequestError(ErrorCode.FORBIDDEN, str(refusal), "force") from None
        if request.expires_at is not None and request.expires_at <= self._clock():
            raise ControlRequestError(
                ErrorCode.BAD_REQUEST,
                f"expires_at {request.expires_at.isoformat()} is in the past",
                "expires_at",
            )
        # One read for both: is the rule known, and what is its state now.
        current, known = await term.queries.state_and_known(request.rule_id)
        if not request.force and not known:
            raise ControlRequestError(
                ErrorCode.UNKNOWN_RULE,
                f"no rule {request.rule_id!r} is known to the master; an admin may force it "
                "(ttpctl: --force) to set a state for a rule that will be added later",
                "rule_id",
            )
        if (
            current.state == request.state
            and current.confidence_max == request.confidence_max
            and current.expires_at == request.expires_at
            and current.reason == request.reason
        ):
            return StateChanged(state=current, revision=current.revision or 0, changed=False)
        write = StateWrite(
            rule_id=request.rule_id,
            state=request.state,
            set_by=caller.actor,
            reason=request.reason,
            confidence_max=request.confidence_max,
            expires_at=request.expires_at,
            on_behalf_of=request.actor,
        )
        return await self._write(write)

    async def state_clear(self, request: StateClearRequest, caller: Caller) -> StateChanged:
        term = self._term
        _check_acting_for(request.actor, caller)
        current, known = await term.queries.state_and_known(request.rule_id)
        if current.revision is None:  # no row: already the default
            if not known:
                raise ControlRequestError(
                    ErrorCode.UNKNOWN_RULE, f"no rule {request.rule_id!r} and no state", "rule_id"
                )
            return StateChanged(state=current, revision=0, changed=False)
        write = StateWrite(
            rule_id=request.rule_id,
            state="enabled",
            set_by=caller.actor,
            reason=request.reason or "cleared",
            on_behalf_of=request.actor,
        )
        return await self._write(write)

    async def _write(self, write: StateWrite) -> StateChanged:
        term = self._term
        with get_tracer().start_as_current_span(
            "ttp.ctl state change", attributes={"ttp.rule_id": write.rule_id}
        ):
            applied = await term.repository.apply_changes(
                ChangeSet(state_writes=[write]),
                actor=write.set_by,
                trace_headers=inject_headers(),
            )
        # Only an expiry can make a revert due sooner than the scheduler already plans.
        term.scheduler.expiry_written(write.expires_at)
        revision = applied.revisions[0]
        _log.info(
            "operator state changed",
            extra={
                "rule_id": write.rule_id,
                "state": write.state,
                "confidence_max": write.confidence_max,
                "expires_at": write.expires_at.isoformat() if write.expires_at else None,
                "actor": write.set_by,
                "on_behalf_of": write.on_behalf_of,
                "reason": write.reason,
                "revision": revision,
            },
        )
        # The reply is what the transaction wrote (no read back): the stored row, or for
        # `enabled` (the row is deleted) the default state with who, why and when.
        row = applied.states.get(write.rule_id)
        if row is not None:
            state = state_from_row(row)
        else:
            state = default_state(write.rule_id).model_copy(
                update={
                    "reason": write.reason,
                    "set_by": write.set_by,
                    "set_at": self._clock(),
                    "revision": revision,
                    "on_behalf_of": write.on_behalf_of,
                }
            )
        return StateChanged(state=state, revision=revision)

    async def state_get(self, request: StateGetRequest, _: Caller) -> StateList:
        queries = self._term.queries
        if request.rule_id is None:
            return StateList(states=await queries.states())
        state, known = await queries.state_and_known(request.rule_id)
        if state.revision is None and not known:
            raise ControlRequestError(
                ErrorCode.UNKNOWN_RULE, f"no rule {request.rule_id!r}", "rule_id"
            )
        return StateList(states=[state])

    async def rules_list(self, request: RulesListRequest, _: Caller) -> RulesList:
        summary = await self._term.summary()
        rules = await self._term.queries.rules(request.status)
        return RulesList(
            revision=summary.revision, rules=rules, held_deletes=self._term.held_deletes()
        )

    async def rules_show(self, request: RuleShowRequest, _: Caller) -> BaseModel:
        detail = await self._term.queries.rule(request.rule_id)
        if detail is None:
            raise ControlRequestError(
                ErrorCode.UNKNOWN_RULE, f"no rule {request.rule_id!r}", "rule_id"
            )
        return detail

    async def revision(self, _: object, __: Caller) -> RevisionInfo:
        summary = await self._term.summary()
        return RevisionInfo(**summary.model_dump())

    async def audit(self, request: AuditRequest, _: Caller) -> AuditLog:
        entries = await self._term.queries.audit(request.rule_id, request.since, request.limit)
        return AuditLog(entries=entries)

    async def fleet(self, _: object, __: Caller) -> BaseModel:
        summary = await self._term.summary()
        return self._fleet.view(summary.revision, summary.digest)


def _check_acting_for(actor: str | None, caller: Caller) -> None:
    """A request naming whom it acts for is refused `forbidden` unless the console sent it."""
    if actor is None:
        return
    try:
        caller.check_acting_for()
    except ForbiddenError as refusal:
        raise ControlRequestError(ErrorCode.FORBIDDEN, str(refusal), "actor") from None


def parse_request(endpoint: Endpoint, raw: bytes) -> Any:
    """The endpoint's request model; an empty body is an empty object."""
    model = REQUESTS[endpoint]
    try:
        return model.model_validate_json(raw or b"{}")
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"]
        if first["type"] == "missing":
            message = "is required"
        elif first["type"] == "extra_forbidden":
            message = "is not a field of this request"
        text = f"{where}: {message}" if where else message
        if len(exc.errors()) > 1:
            text += f" (and {len(exc.errors()) - 1} more)"
        raise ControlRequestError(ErrorCode.BAD_REQUEST, text, where) from exc


_REPLY: Final = Reply[Any]
"""Parametrised once, not per reply."""


def internal_error(correlation_id: str) -> ControlError:
    """The reply to an unexpected failure: the code and the id the master logged it with."""
    return ControlError(
        code=ErrorCode.INTERNAL, message=f"internal error; correlation id {correlation_id}"
    )


def encode_reply(result: BaseModel) -> bytes:
    return _REPLY(ok=True, result=result).model_dump_json().encode()


def encode_error(error: ControlError) -> bytes:
    return _REPLY(ok=False, error=error).model_dump_json().encode()


class ControlService:
    """The micro service of one master process, re-registered when its role changes.

    The new role's service is registered before the old one is retired, so there is no
    moment without responders. A request the old standby service held while leadership
    arrived is answered by the new leader's handlers, unless it reached the new leader
    service too (it arrived after that registration), in which case the leader answers it.
    """

    def __init__(
        self,
        nc: Client,
        fleet: FleetTracker,
        *,
        postgres_error: Callable[[], str | None] = lambda: None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        identity: IdentityPolicy | None = None,
        clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        if clock_skew_s < 0:
            raise ValueError(f"clock_skew_s must not be negative, not {clock_skew_s}")
        self._clock_skew_s = clock_skew_s
        self._nc = nc
        self._fleet = fleet
        self._postgres_error = postgres_error
        """Why this process cannot reach PostgreSQL (None: it can), for a standby's refusal."""
        self._service: Service | None = None
        self._handlers: ControlHandlers | None = None
        self._leader_since = float("inf")
        """Monotonic time the leader service was live (inf: not leading)."""
        self._tasks: set[asyncio.Task[None]] = set()
        """Requests in flight: a leader's being worked on, a standby's being held."""
        self._max_concurrent = max_concurrent
        self._identity = identity if identity is not None else IdentityPolicy()
        """Who may call what; verified identities only unless configured otherwise."""
        self._refusals = RepeatThrottle(REFUSAL_LOG_WINDOW_S)
        self.instance = socket.gethostname()
        self.leading = asyncio.Event()
        """Set once the leader service is registered (its subscriptions confirmed by the
        NATS server, or given up on after every attempt, which is logged); cleared when
        the process serves as a standby again or stops."""

    @property
    def role(self) -> str:
        return "leader" if self._handlers is not None else "standby"

    def server_authenticates(self) -> bool | None:
        """Whether the NATS server this process is connected to requires authentication
        (its INFO's `auth_required`; None: not known, no INFO yet).

        nats-py keeps the server's INFO in a private attribute (refreshed on every
        reconnect); ttp_runtime.nats relies on its INFO handling as well."""
        info = getattr(self._nc, "_server_info", None)
        if not isinstance(info, dict) or not info:
            return None
        return info.get("auth_required") is True

    def _caller(self, request: Request) -> Caller:
        """The request's caller, or a `forbidden` :class:`ControlRequestError`."""
        try:
            return self._identity.caller(
                request.headers, server_authenticates=self.server_authenticates()
            )
        except ForbiddenError as refusal:
            raise ControlRequestError(ErrorCode.FORBIDDEN, str(refusal)) from None

    def _announce_identity_mode(self) -> None:
        if not self._identity.require_verified:
            _log.warning(
                "control requests without a Nats-Request-Info header are served as admin, "
                "actor 'unverified' (TTP_CONTROL_REQUIRE_VERIFIED_IDENTITY=false)"
            )
        elif not self.server_authenticates():
            _log.error(unauthenticated_server_refusal())

    async def serve_standby(self) -> None:
        self.leading.clear()
        self._handlers = None
        self._leader_since = float("inf")
        await self._register("standby")

    async def serve_leader(self, term: LeaderTerm) -> None:
        self._handlers = ControlHandlers(term, self._fleet)
        await self._register("leader")

    async def stop(self) -> None:
        """Unregister; requests in flight are finished (a standby's pending refusal too)."""
        self.leading.clear()
        service, self._service = self._service, None
        await self._retire(service)

    async def _retire(self, service: Service | None) -> None:
        if service is not None:
            with contextlib.suppress(Exception):
                await service.stop()
        pending = list(self._tasks)
        if pending:
            # Cancelling would leave their clients waiting for a timeout; a handler is short.
            _, late = await asyncio.wait(pending, timeout=STANDBY_REPLY_DELAY_S + 5.0)
            for task in late:
                task.cancel()

    async def _register(self, role: str) -> None:
        group = _LEADER_GROUP if role == "leader" else _STANDBY_GROUP
        try:
            service = await add_service(
                self._nc,
                ServiceConfig(
                    name=SERVICE_NAME,
                    version=SERVICE_VERSION,
                    description="ttp-rulebus operator control: rule state, status, audit, fleet",
                    metadata={"role": role, "host": self.instance},
                    queue_group=group,
                ),
            )
        except nats.errors.FlushTimeoutError:
            # The micro library's own flush timed out: same hazard as ours.
            keep_pongs_paired(self._nc)
            raise
        for endpoint in Endpoint:
            await service.add_endpoint(
                EndpointConfig(
                    name=endpoint.value.replace(".", "-"),
                    subject=subjects.control(endpoint.value),
                    handler=self._dispatcher(endpoint, role),
                    queue_group=group,
                )
            )
        await self._confirm_subscriptions(role, service.id)
        if role == "leader":
            self._leader_since = time.monotonic()
            self.leading.set()
        old, self._service = self._service, service
        _log.info("control service serving", extra={"role": role, "service_id": service.id})
        self._announce_identity_mode()
        await self._retire(old)

    async def _confirm_subscriptions(self, role: str, service_id: str) -> None:
        """Return once the NATS server holds the new service's subscriptions, so that a
        request from any other connection reaches them; retried, each failure logged.

        Unconfirmed after every attempt (NATS unreachable), the service is kept all the
        same: nats-py subscribes its subscriptions again when it reconnects, and the old
        service is retired only after the new one's subscriptions in this connection's
        command order, which the server follows, so there is never a moment without
        responders on the server this connection reaches."""
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                await flush_subscriptions(self._nc, REGISTER_FLUSH_TIMEOUT_S)
                return
            except Exception as exc:
                _log.warning(
                    "the NATS server has not confirmed the control service's subscriptions",
                    extra={
                        "role": role,
                        "service_id": service_id,
                        "attempt": attempt,
                        "attempts": REGISTER_ATTEMPTS,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
        _log.error(
            "control service subscriptions unconfirmed: requests may find no responders "
            "until the NATS connection is re-established",
            extra={"role": role, "service_id": service_id},
        )

    def _dispatcher(self, endpoint: Endpoint, role: str) -> Callable[[Request], Awaitable[None]]:
        as_standby = role == "standby"

        async def dispatch(request: Request) -> None:
            # Never raises: the micro library would answer an exception with its repr (and
            # show it in $SRV.STATS as last_error).
            try:
                if len(self._tasks) >= self._max_concurrent:
                    await self._refuse_busy(endpoint, request, as_standby)
                    return
                task = asyncio.create_task(
                    self._answer(endpoint, request, as_standby, time.monotonic())
                )
                self._tasks.add(task)
                metrics.CONTROL_IN_FLIGHT.inc()
                task.add_done_callback(self._finished)
            except Exception:
                await self._fail_internal(endpoint, request)

        return dispatch

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        metrics.CONTROL_IN_FLIGHT.dec()

    async def _refuse_busy(self, endpoint: Endpoint, request: Request, as_standby: bool) -> None:
        metrics.CONTROL_REQUESTS.labels(endpoint.value, ErrorCode.BUSY.value).inc()
        if as_standby:
            # A standby's answer is deliberately late so the leader's comes first; answering
            # now would beat it. The leader answers its own copy (with none, the client's
            # timeout says no master answered).
            return
        await self._respond_error(
            request,
            ControlError(
                code=ErrorCode.BUSY,
                message=(
                    f"master on {self.instance} is busy: {self._max_concurrent} control "
                    "requests are in flight (TTP_CONTROL_MAX_CONCURRENT); retry shortly"
                ),
            ),
        )

    async def _answer(
        self, endpoint: Endpoint, request: Request, as_standby: bool, arrived: float
    ) -> None:
        handlers = self._handlers
        try:
            if as_standby:
                await asyncio.sleep(STANDBY_REPLY_DELAY_S)
                if arrived >= self._leader_since:
                    return  # this process's leader service received it as well
                handlers = self._handlers  # leadership may have been won meanwhile
            if self._past_deadline(endpoint, request):
                return
            if handlers is None:
                if (reason := self._postgres_error()) is not None:
                    # No master leads while PostgreSQL is away, and "not leader" would send
                    # the operator looking for a broken master.
                    raise ControlRequestError(
                        ErrorCode.UNAVAILABLE,
                        f"PostgreSQL is unreachable from the master on {self.instance} "
                        f"({reason}): no master can change state until it is back",
                    )
                raise ControlRequestError(
                    ErrorCode.NOT_LEADER,
                    f"master on {self.instance} is a standby and no leader answered within "
                    f"{STANDBY_REPLY_DELAY_S:g} s: the leader is down, still starting, frozen "
                    "or slow. A frozen or slow leader still carries out a change it gets to "
                    "before the request's deadline: read the state back before retrying",
                )
            caller = self._caller(request)
            with start_consumer_span(
                f"{subjects.CONTROL_PREFIX}.{{endpoint}}",
                request.headers,
                subject=request.subject,
                operation="process",
            ):
                try:
                    result = await within(
                        handlers.handle(endpoint, request.data, caller), ANSWER_BOUND_S
                    )
                except TimeoutError:
                    raise ControlRequestError(
                        ErrorCode.UNAVAILABLE,
                        f"PostgreSQL did not answer the master on {self.instance} within "
                        f"{ANSWER_BOUND_S:g} s; a change may or may not have been applied "
                        "(read it back once PostgreSQL answers)",
                    ) from None
            await request.respond(encode_reply(result))
            metrics.CONTROL_REQUESTS.labels(endpoint.value, "ok").inc()
        except ControlRequestError as failure:
            metrics.CONTROL_REQUESTS.labels(endpoint.value, failure.error.code.value).inc()
            if failure.error.code is ErrorCode.FORBIDDEN:
                self._log_refusal(endpoint, failure.error.message)
            await self._respond_error(request, failure.error)
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._fail_internal(endpoint, request)

    def _past_deadline(self, endpoint: Endpoint, request: Request) -> bool:
        """Whether the caller stopped waiting for `request` (its `Ttp-Deadline` passed more
        than the clock-skew allowance ago): then it is counted and logged, not acted on and
        not answered. A deadline that is no Unix time is a `bad_request`."""
        text = (request.headers or {}).get(DEADLINE_HEADER)
        if text is None:
            return False
        try:
            deadline = parse_deadline(text)
        except ValueError as exc:
            raise ControlRequestError(ErrorCode.BAD_REQUEST, str(exc)) from None
        late_s = time.time() - deadline
        if late_s <= self._clock_skew_s:
            return False
        metrics.CONTROL_REQUESTS.labels(endpoint.value, "expired").inc()
        held = self._refusals.admit(f"{endpoint.value}: expired")
        if held is not None:
            # Either this master got to the request late (frozen, cut off, overloaded), or
            # the caller's clock runs behind by more than the allowance.
            _log.warning(
                "control request not acted on: its caller had stopped waiting",
                extra={
                    "endpoint": endpoint.value,
                    "late_s": round(late_s, 3),
                    "clock_skew_allowance_s": self._clock_skew_s,
                    "repeats_held": held,
                },
            )
        return True

    def _log_refusal(self, endpoint: Endpoint, message: str) -> None:
        held = self._refusals.admit(f"{endpoint.value}: {message}")
        if held is not None:
            _log.warning(
                "control request forbidden",
                extra={"endpoint": endpoint.value, "reason": message, "repeats_held": held},
            )

    async def _fail_internal(self, endpoint: Endpoint, request: Request) -> None:
        """Log the exception being handled under a new correlation id and answer with it.

        The exception's text may name tables, queries or hosts: it goes to the log only, and
        the client gets the id to find it there."""
        correlation_id = uuid.uuid4().hex
        _log.exception(
            "control request failed",
            extra={"endpoint": endpoint.value, "correlation_id": correlation_id},
        )
        metrics.CONTROL_REQUESTS.labels(endpoint.value, ErrorCode.INTERNAL.value).inc()
        await self._respond_error(request, internal_error(correlation_id))

    async def _respond_error(self, request: Request, error: ControlError) -> None:
        with contextlib.suppress(Exception):
            await request.respond_error(str(error.code.status), error.message, encode_error(error))
