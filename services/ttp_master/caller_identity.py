"""Who is calling the control service, as the NATS server says, and what that caller may do.

The people's accounts (OPERATORS, VIEWERS, ADMIN in `ttp_runtime/nats_accounts.conf`) reach
`ttp.ctl.>` only through a service import with `share: true`, so the server stamps each
request with a `Nats-Request-Info` header (JSON: `acc`, `user`, ...) naming the account and
user it authenticated, and replaces any copy the client sent. The caller's actor is
`<ACCOUNT>/<user>`; its role comes from the account (TTP_CONTROL_ACCOUNT_ROLES). A request
body's `actor` names the person the caller acts for (`on_behalf_of`); only the console role,
which logs its users in itself, may send one.

The header proves nothing on a server that does not authenticate its clients (anyone may
publish on `ttp.ctl.>` with a header of their choosing), so in verified mode
(TTP_CONTROL_REQUIRE_VERIFIED_IDENTITY, the default) the master refuses every control request
there. docs/contract.md (caller identity) describes it for clients.

Everything here is pure: the header text in, a :class:`Caller` or a :class:`ForbiddenError` out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from ttp_core.contract.control import Endpoint

__all__ = [
    "DEFAULT_ACCOUNT_ROLES",
    "MAX_REQUEST_INFO_BYTES",
    "REQUEST_INFO_HEADER",
    "UNVERIFIED_ACTOR",
    "Caller",
    "ForbiddenError",
    "IdentityPolicy",
    "Role",
    "parse_request_info",
    "unauthenticated_server_refusal",
]

REQUEST_INFO_HEADER: Final = "Nats-Request-Info"
MAX_REQUEST_INFO_BYTES: Final = 4096
"""The server's header is a few hundred bytes; anything far larger is not the server's."""
UNVERIFIED_ACTOR: Final = "unverified"
"""The actor of a request served without a verified identity (verified mode off)."""

# An account or user name: printable ASCII without space or `/` (the separator of the
# actor), at most 128 characters. Names in nats-server configs and nkeys (56 characters) fit.
_NAME: Final = re.compile(r"[!-.0-~]{1,128}")


class Role(StrEnum):
    """What a caller may do; each includes the ones before it."""

    VIEWER = "viewer"
    """Reads: state.get, rules.*, revision, audit, fleet."""
    OPERATOR = "operator"
    """Also state.set and state.clear (without `force`)."""
    CONSOLE = "console"
    """The web console: an operator's endpoints, and it alone may name the user it acts for
    (the request's `actor`). Never `force`: a console user is an operator at most."""
    ADMIN = "admin"
    """Also `force` (a state for a rule the master does not know)."""


DEFAULT_ACCOUNT_ROLES: Final[Mapping[str, Role]] = {
    "OPERATORS": Role.OPERATOR,
    "VIEWERS": Role.VIEWER,
    "CONSOLE": Role.CONSOLE,
    "ADMIN": Role.ADMIN,
}

# The console ranks with operators: it changes states for the users it logged in as
# operators (it refuses its viewers itself), and no console user may force.
_RANK: Final = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.CONSOLE: 1, Role.ADMIN: 2}
_WRITES: Final = frozenset({Endpoint.STATE_SET, Endpoint.STATE_CLEAR})
_SECURITY_DOC: Final = "docs/security.md"


class ForbiddenError(Exception):
    """The request is refused `forbidden`; the message says why (it names no secret)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller of one control request."""

    actor: str
    """`<ACCOUNT>/<user>` as the server authenticated it, or `unverified`."""
    role: Role
    verified: bool

    def may(self, role: Role) -> bool:
        """True when the caller's role includes `role`."""
        return _RANK[self.role] >= _RANK[role]

    def check_endpoint(self, endpoint: Endpoint) -> None:
        """Raise :class:`ForbiddenError` unless the caller may call `endpoint` at all."""
        if endpoint in _WRITES and not self.may(Role.OPERATOR):
            raise ForbiddenError(
                f"{self.actor} has the {self.role} role, which may not call {endpoint.value}: "
                "only operators, the console and admins change rule state"
            )

    def check_acting_for(self) -> None:
        """Raise :class:`ForbiddenError` unless the caller may name whom it acts for.

        Only the console's verified identity may: it authenticates its own users, and the
        audit shows its identity as the actor and the user as `on_behalf_of`. From anyone
        else a name would be an unproven claim beside the actor, so it is refused rather
        than recorded."""
        if not (self.verified and self.role is Role.CONSOLE):
            raise ForbiddenError(
                f"{self.actor} has the {self.role} role: only the console role may name a "
                "user it acts for (actor); send the request without it, the audit records "
                "your own identity"
            )

    def check_force(self) -> None:
        """Raise :class:`ForbiddenError` unless the caller may use `force`."""
        if not self.may(Role.ADMIN):
            raise ForbiddenError(
                f"{self.actor} has the {self.role} role: force (a state for a rule the master "
                "does not know) needs the admin role"
            )


def parse_request_info(value: object) -> tuple[str, str]:
    """`(account, user)` of a `Nats-Request-Info` header value, or :class:`ForbiddenError`.

    Anything but a JSON object of at most :data:`MAX_REQUEST_INFO_BYTES` with string `acc`
    and `user` that are plain names is refused; nothing here raises anything else.
    """
    if not isinstance(value, str):
        raise ForbiddenError(f"the {REQUEST_INFO_HEADER} header is not text")
    if len(value.encode("utf-8", "replace")) > MAX_REQUEST_INFO_BYTES:
        raise ForbiddenError(
            f"the {REQUEST_INFO_HEADER} header is longer than {MAX_REQUEST_INFO_BYTES} bytes"
        )
    try:
        info: Any = json.loads(value)
    except (ValueError, RecursionError):
        raise ForbiddenError(f"the {REQUEST_INFO_HEADER} header is not JSON") from None
    if not isinstance(info, dict):
        raise ForbiddenError(f"the {REQUEST_INFO_HEADER} header is not a JSON object")
    return _name(info, "acc"), _name(info, "user")


def _name(info: dict[str, Any], key: str) -> str:
    name = info.get(key)
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ForbiddenError(
            f"the {REQUEST_INFO_HEADER} header has no usable {key!r} (a name of 1 to 128 "
            "printable ASCII characters without space or '/')"
        )
    return name


def unauthenticated_server_refusal() -> str:
    """Why every control request is refused on a server that does not authenticate clients."""
    return (
        "the NATS server does not require authentication, so any client could forge the "
        f"{REQUEST_INFO_HEADER} header that names the caller: this master refuses every "
        "control request (set TTP_CONTROL_REQUIRE_VERIFIED_IDENTITY=false only on a private "
        f"test server; see {_SECURITY_DOC})"
    )


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """How the control service identifies callers (TTP_CONTROL_* settings)."""

    account_roles: Mapping[str, Role] = field(default_factory=lambda: dict(DEFAULT_ACCOUNT_ROLES))
    require_verified: bool = True
    """Refuse requests without the server's header, and every request on an unauthenticated
    server; when false, a request without the header is served as admin, `unverified`."""

    def caller(
        self, headers: Mapping[str, str] | None, *, server_authenticates: bool | None
    ) -> Caller:
        """The caller of a request with `headers`, or :class:`ForbiddenError`.

        `server_authenticates`: whether the NATS server the master is connected to requires
        authentication (None: unknown, treated as no).
        """
        if self.require_verified and not server_authenticates:
            raise ForbiddenError(unauthenticated_server_refusal())
        value = headers.get(REQUEST_INFO_HEADER) if headers else None
        if value is None:
            if self.require_verified:
                raise ForbiddenError(
                    f"the request carries no {REQUEST_INFO_HEADER} header, so the master cannot "
                    "tell who sent it: connect as an operator, viewer or admin, whose accounts "
                    f"reach ttp.ctl through the server's service import (see {_SECURITY_DOC})"
                )
            return Caller(UNVERIFIED_ACTOR, Role.ADMIN, verified=False)
        account, user = parse_request_info(value)
        role = self.account_roles.get(account)
        actor = f"{account}/{user}"
        if role is None:
            raise ForbiddenError(
                f"{actor}: account {account!r} has no control role (TTP_CONTROL_ACCOUNT_ROLES)"
            )
        return Caller(actor, role, verified=True)
