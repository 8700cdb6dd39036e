"""The NATS roles of ttp-rulebus and the credentials each one connects with.

The server side is one file, ``nats_accounts.conf`` beside this module: every deployment
(``ttpctl dev``, compose, Kubernetes) runs nats-server with it unchanged and gives it the
passwords through the environment (``TTP_NATS_PASSWORD_<ROLE>``). The client side of a role is
the ``TTP_NATS_*`` settings every service already reads, plus the role's own reply-inbox
prefix. See docs/security.md.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypedDict, get_args

from pydantic import SecretStr

from ttp_runtime.env_file import read_private_env_file
from ttp_runtime.settings import ServiceSettings

__all__ = [
    "ACCOUNTS_CONFIG",
    "ROLES",
    "Role",
    "RoleCredentials",
    "ServerOptions",
    "StoredCredentials",
    "embedded_server_options",
    "generate_credentials",
    "read_credential_files",
    "server_environment",
    "write_credential_files",
]

Role = Literal["master", "worker", "producer", "consumer", "operator", "viewer", "console", "admin"]
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
    "console": "CONSOLE",
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

    def client_settings(self, nats_url: str) -> ServiceSettings:
        """Client settings of this role alone: every NATS field is named, so a token or TLS
        file in the caller's environment (meant for another server) cannot slip in."""
        return ServiceSettings(
            nats_url=nats_url,
            nats_user=self.user,
            nats_password=SecretStr(self.password),
            nats_inbox_prefix=self.inbox_prefix,
            nats_token=None,
            nats_creds_file=None,
            nats_tls_ca=None,
            nats_tls_cert=None,
            nats_tls_key=None,
        )


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


class ServerOptions(TypedDict):
    """Keyword arguments of :class:`~ttp_runtime.embedded.EmbeddedNats` for the roles."""

    extra_args: tuple[str, ...]
    extra_env: dict[str, str]


def embedded_server_options(credentials: Mapping[Role, RoleCredentials]) -> ServerOptions:
    """``EmbeddedNats(..., **embedded_server_options(creds))``: the accounts config, and the
    passwords it reads from the server's environment."""
    return {
        "extra_args": ("--config", str(ACCOUNTS_CONFIG)),
        "extra_env": server_environment(credentials),
    }


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


# What a stored password must look like to be used again: a letter, then letters and digits
# only, so nats-server reads it as a plain string (see _password) and no character of it can
# mean something else in the config.
_REUSABLE_PASSWORD: Final = re.compile(r"[A-Za-z][A-Za-z0-9]{15,127}")


@dataclass(frozen=True, slots=True)
class StoredCredentials:
    """What :func:`read_credential_files` found in a credentials directory."""

    usable: dict[Role, RoleCredentials] = field(default_factory=dict)
    """The roles whose file is private to us and holds the role's user and a password."""
    unusable: dict[Role, str] = field(default_factory=dict)
    """The roles whose file exists but must not be used, and why (a missing file is neither)."""


def read_credential_files(directory: Path, roles: Iterable[Role] = ROLES) -> StoredCredentials:
    """Read back the ``<directory>/<role>.env`` files :func:`write_credential_files` wrote.

    A file is used only when it is a regular file (not a symbolic link) owned by this process's
    user, readable and writable by nobody else, and holds the role's user and a password of
    the generated shape. Any other file is reported in ``unusable``: its password may be known
    to another user, or be one that user chose, so it is never handed to nats-server.
    """
    usable: dict[Role, RoleCredentials] = {}
    unusable: dict[Role, str] = {}
    for role in roles:
        path = directory / f"{role}.env"
        try:
            problem, values = read_private_env_file(path, "credentials file")
        except FileNotFoundError:
            continue
        if problem is None:
            password = values.get("TTP_NATS_PASSWORD", "")
            if values.get("TTP_NATS_USER") != role or not _REUSABLE_PASSWORD.fullmatch(password):
                problem = "does not hold this role's user and a generated password"
            else:
                usable[role] = RoleCredentials(role, password)
                continue
        unusable[role] = f"{path} {problem}"
    return StoredCredentials(usable, unusable)
