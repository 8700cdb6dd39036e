"""Fixtures of the process-level tests: a roles-secured NATS, a rules directory, the processes.

Every process and every client of these tests connects as one role of the shipped accounts
config (shared/ttp_runtime/nats_accounts.conf), so a grant the product needs and the config
lacks fails here: the server logs the refusal, and `roles` fails the test on any violation
the test did not provoke on purpose (`RoleNats.expect_violations`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.master import starter_pack_in
from harness.nats_roles import RoleNats, role_nats
from harness.processes import Procs


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[RoleNats]:
    """A nats-server with the shipped accounts; fails the test on an unexpected violation."""
    with role_nats(tmp_path) as rn:
        yield rn
        unexpected = rn.unexpected_violations()
    if unexpected:
        pytest.fail(
            "the server refused a role something it was not expected to be refused (a missing"
            " grant in nats_accounts.conf, or a role doing what it must not):\n"
            + "\n".join(unexpected),
            pytrace=False,
        )


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    return starter_pack_in(tmp_path / "rules")


@pytest.fixture
def procs(tmp_path: Path, roles: RoleNats, database_url: str, rules_dir: Path) -> Iterator[Procs]:
    handle = Procs(tmp_path, roles.url, database_url, rules_dir, roles)
    try:
        yield handle
    finally:
        handle.kill_all()
