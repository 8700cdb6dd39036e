"""A real nats-server running the shipped accounts config, and a client per role.

:func:`role_nats` starts :class:`EmbeddedNats` with ``ttp_runtime/nats_accounts.conf`` (the
file every deployment uses) and fresh random passwords, and yields a :class:`RoleNats` whose
``env(role)`` is what a process of that role runs with, and whose ``connect(role)`` opens a
client as that role. Permission violations show in the server log, which
:meth:`RoleNats.violations` reads, so a test can prove a refusal happened at the server.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from ttp_runtime.embedded import EmbeddedNats
from ttp_runtime.nats_roles import (
    ACCOUNTS_CONFIG,
    Role,
    RoleCredentials,
    generate_credentials,
    server_environment,
)

__all__ = ["RoleNats", "role_nats"]

_VIOLATION = re.compile(r'"(?P<account>[A-Z]+)/user:(?P<user>\w+)" - (?P<kind>\w+) Violation')


@dataclass(frozen=True)
class RoleNats:
    """A running nats-server with the shipped roles, and every role's credentials."""

    server: EmbeddedNats
    credentials: dict[Role, RoleCredentials]

    @property
    def url(self) -> str:
        return self.server.url

    def env(self, role: Role) -> dict[str, str]:
        """The ``TTP_NATS_*`` variables of `role`."""
        return self.credentials[role].client_environment(self.url)

    async def connect(self, role: Role, **options: Any) -> Client:
        """A client authenticated as `role`; permission errors go to ``error_cb`` if given."""
        creds = self.credentials[role]

        async def quiet(_: Exception) -> None:
            return None

        options.setdefault("error_cb", quiet)
        return await nats.connect(
            self.url,
            user=creds.user,
            password=creds.password,
            inbox_prefix=creds.inbox_prefix,
            max_reconnect_attempts=0,
            **options,
        )

    def violations(self, role: Role | None = None) -> list[str]:
        """Lines of the server log reporting a publish or subscribe violation (of `role`)."""
        lines = self.server.log_path.read_text(errors="replace").splitlines()
        found = []
        for line in lines:
            match = _VIOLATION.search(line)
            if match and (role is None or match["user"] == role):
                found.append(line)
        return found


@contextlib.contextmanager
def role_nats(directory: Path) -> Iterator[RoleNats]:
    """Start a JetStream nats-server with ``nats_accounts.conf`` and fresh passwords."""
    credentials = generate_credentials()
    server = EmbeddedNats(
        data_dir=directory / "nats",
        extra_args=("--config", str(ACCOUNTS_CONFIG)),
        extra_env=server_environment(credentials),
    )
    with server:
        yield RoleNats(server, credentials)
