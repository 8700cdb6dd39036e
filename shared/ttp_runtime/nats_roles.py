"""The NATS roles of ttp-rulebus and the credentials each one connects with.

The server side is one file, ``nats_accounts.conf`` beside this module: every deployment
(``ttpctl dev``, compose, Kubernetes) runs nats-server with it unchanged and gives it the
passwords through the environment (``TTP_NATS_PASSWORD_<ROLE>``). The client side of a role is
the ``TTP_NATS_*`` settings every service already reads, plus the role's own reply-inbox
prefix. See docs/security.md.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

__all__ = [
    "ACCOUNTS_CONFIG",
    "ROLES",
    "Role",
    "RoleCredentials",
    "generate_credentials",
    "server_environment",
    "write_credential_files",
]

Role = Literal["master", "worker", "producer", "consumer", "operator", "viewer", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

ACCOUNTS_CONFIG: Final = Path(__file__).with_name("nats_accounts.conf")
"""The server's accounts and permissions; nats-server reads it with ``-c`` or ``include``."""

ACCOUNT_OF: Final[Mapping[Role, str]] = {
    "master": "RULEBUS",
    "worker": "RULEBUS",
    "producer": "RULEBUS",
    "consumer": "RULEBUS",
    "operator": "OPERATORS",
    "viewer": "VIEWERS",
    "admin": "ADMIN",
}
"""The account each role's user lives in, as ``nats_accounts.conf`` declares it."""


@dataclass(frozen=True, slots=True)
class RoleCredentials:
    """What one role presents to the server."""

    role: Role
    password: str

    @property
    def user(self) -> str:
        return self.role

    @property
    def inbox_prefix(self) -> str:
        """The only inbox subjects the role may subscribe to (``_INBOX_<role>.>``)."""
        return f"_INBOX_{self.role}"

    @property
    def server_variable(self) -> str:
        """The environment variable ``nats_accounts.conf`` reads this role's password from."""
        return f"TTP_NATS_PASSWORD_{self.role.upper()}"

    def client_environment(self, nats_url: str) -> dict[str, str]:
        """The ``TTP_NATS_*`` settings a process of this role runs with."""
        return {
            "TTP_NATS_URL": nats_url,
            "TTP_NATS_USER": self.user,
            "TTP_NATS_PASSWORD": self.password,
            "TTP_NATS_INBOX_PREFIX": self.inbox_prefix,
        }


def generate_credentials(roles: Iterable[Role] = ROLES) -> dict[Role, RoleCredentials]:
    """A fresh random password for each role (192 random bits)."""
    return {role: RoleCredentials(role, _password()) for role in roles}


def _password() -> str:
    # nats-server parses an environment variable's value as a config value, not as a plain
    # string: "-x..." is read as a number and "12-x..." as a date (both refuse to start),
    # "123" becomes an integer. A letter followed by hex digits is always a plain string.
    return "p" + secrets.token_hex(24)


def server_environment(credentials: Mapping[Role, RoleCredentials]) -> dict[str, str]:
    """The variables nats-server needs to load ``nats_accounts.conf``; all roles required."""
    missing = [role for role in ROLES if role not in credentials]
    if missing:
        raise ValueError(f"no credentials for the role(s) {', '.join(missing)}")
    return {c.server_variable: c.password for c in credentials.values()}


def write_credential_files(
    directory: Path, nats_url: str, credentials: Mapping[Role, RoleCredentials]
) -> dict[Role, Path]:
    """Write ``<directory>/<role>.env`` (mode 0600) for each role; returns the paths.

    The file is created with its final mode, so the password is never readable by others,
    not even for a moment.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    written: dict[Role, Path] = {}
    for role, creds in credentials.items():
        path = directory / f"{role}.env"
        lines = [f"# ttp-rulebus NATS credentials of the {role} role"]
        lines += [f"{key}={value}" for key, value in creds.client_environment(nats_url).items()]
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write("\n".join(lines) + "\n")
        written[role] = path
    return written
