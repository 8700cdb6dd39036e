"""A real nats-server running the shipped accounts config, and a client per role.

:func:`role_nats` starts :class:`EmbeddedNats` with ``ttp_runtime/nats_accounts.conf`` (the
file every deployment uses) and fresh random passwords, and yields a :class:`RoleNats` whose
``env(role)`` is what a process of that role runs with, and whose ``connect(role)`` opens a
client as that role. Permission violations show in the server log, which
:meth:`RoleNats.violations` reads, so a test can prove a refusal happened at the server. A
fixture that owns the server fails the test on :meth:`RoleNats.unexpected_violations`: a
process refused something its role needs shows a missing grant, unless the test said with
:meth:`RoleNats.expect_violations` that the refusal is what it proves.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from ttp_runtime.embedded import EmbeddedNats
from ttp_runtime.nats_roles import (
    Role,
    RoleCredentials,
    embedded_server_options,
    generate_credentials,
)

__all__ = ["RoleNats", "role_nats"]

_VIOLATION = re.compile(
    r'"(?P<account>[A-Z]+)/user:(?P<user>\w+)" - (?P<kind>\w+) Violation'
    r' - Subject "(?P<subject>[^"]*)"'
)


@dataclass(frozen=True)
class RoleNats:
    """A running nats-server with the shipped roles, and every role's credentials."""

    server: EmbeddedNats
    credentials: dict[Role, RoleCredentials]
    expected: list[tuple[Role, re.Pattern[str]]] = field(default_factory=list)
    """(role, subject pattern) of the violations the test provokes on purpose."""

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
        options.setdefault("max_reconnect_attempts", 0)
        return await nats.connect(
            self.url,
            user=creds.user,
            password=creds.password,
            inbox_prefix=creds.inbox_prefix,
            **options,
        )

    @contextlib.asynccontextmanager
    async def client(self, role: Role) -> AsyncIterator[Client]:
        """A client as `role` that reconnects forever (the server may be restarted); closed
        at the end."""
        nc = await self.connect(
            role, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        try:
            yield nc
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    def expect_violations(self, role: Role, subject: str = ".*") -> None:
        """Violations of `role` on subjects matching the regular expression `subject` are
        what the test proves, not a missing grant."""
        self.expected.append((role, re.compile(subject)))

    def violations(self, role: Role | None = None) -> list[str]:
        """Lines of the server log reporting a publish or subscribe violation (of `role`)."""
        lines = self.server.log_path.read_text(errors="replace").splitlines()
        found = []
        for line in lines:
            match = _VIOLATION.search(line)
            if match and (role is None or match["user"] == role):
                found.append(line)
        return found

    def refusals(self, role: Role) -> list[tuple[str, str]]:
        """(kind, subject) of every violation of `role`: ("Publish", "ttp.event.x"), ..."""
        found = []
        for line in self.violations(role):
            match = _VIOLATION.search(line)
            assert match is not None
            found.append((match["kind"], match["subject"]))
        return found

    def unexpected_violations(self) -> list[str]:
        """Violations the test did not say it provokes (:meth:`expect_violations`)."""
        unexpected = []
        for line in self.violations():
            match = _VIOLATION.search(line)
            assert match is not None
            if not any(
                match["user"] == role and pattern.fullmatch(match["subject"])
                for role, pattern in self.expected
            ):
                unexpected.append(line)
        return unexpected


@contextlib.contextmanager
def role_nats(directory: Path) -> Iterator[RoleNats]:
    """Start a JetStream nats-server with ``nats_accounts.conf`` and fresh passwords."""
    credentials = generate_credentials()
    server = EmbeddedNats(data_dir=directory / "nats", **embedded_server_options(credentials))
    with server:
        yield RoleNats(server, credentials)
