"""What the chaos scenarios share: the servers they break, and the row each one reports.

A scenario is an async function that runs real `ttp-master` / `ttp-worker` processes against
real servers, injects its faults from outside (signals, server kills and restarts, a cut
`TcpProxy`), and returns a `ChaosRow`: what it did and what it found afterwards. The tests in
tests/chaos call a scenario with small sizes and assert the row shows no loss; bench/chaos.py
calls the same function with bigger sizes and prints the rows as a table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ttp_runtime.embedded import EmbeddedNats, EmbeddedPostgres


@dataclass
class ChaosRow:
    """One scenario's outcome, in the columns of the bench/chaos.py table.

    `recovery_s` is the longest time, over the scenario's faults, from the moment a fault was
    healed (a process restarted, a server back, a proxy restored) to the moment the system was
    whole again (every worker on the master's digest, every event tagged); None when the
    scenario has no such moment.
    """

    scenario: str
    faults: str
    edits: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """Nothing lost and nothing duplicated."""
        return self.lost == 0 and self.duplicated == 0

    def as_json(self) -> dict[str, Any]:
        """The row as plain JSON-able data."""
        return asdict(self)


@dataclass
class ChaosServers:
    """A NATS server and a PostgreSQL database that a scenario may kill, restart or cut."""

    nats: EmbeddedNats
    postgres: EmbeddedPostgres
    database_url: str

    @property
    def nats_url(self) -> str:
        """Client URL of the NATS server."""
        return self.nats.url


@contextlib.contextmanager
def own_servers(database: str = "ttp_chaos") -> Iterator[ChaosServers]:
    """Fresh embedded NATS and PostgreSQL servers, closed afterwards (for bench/chaos.py)."""
    with EmbeddedNats() as nats_server, EmbeddedPostgres() as postgres:
        postgres.ensure_database(database)
        yield ChaosServers(nats_server, postgres, postgres.url_for(database))
