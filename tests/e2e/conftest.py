"""Fixtures of the process-level tests: a roles-secured NATS, a rules directory, the processes.

Every process and every client of these tests connects as one role of the shipped accounts
config (shared/ttp_runtime/nats_accounts.conf), so a grant the product needs and the config
lacks fails here: the server logs the refusal, and `roles` fails the test on any violation
the test did not provoke on purpose (`RoleNats.expect_violations`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.console import ChromiumVerdict, chromium_verdict
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


# --------------------------------------------------------------------------------------------
# The console's browser tests need Chromium: fail without it in CI, skip loudly elsewhere
# --------------------------------------------------------------------------------------------

_CHROMIUM_FIXTURE = "chromium_executable"
_browser_tests_not_run = pytest.StashKey[tuple[ChromiumVerdict, int]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the browser tests when no Chromium is found, except under CI (where the
    ``chromium_executable`` fixture fails them): ``.ci/run`` installs Debian's package, so
    CI always runs them, and a plain ``make test`` elsewhere says loudly that it did not."""
    browser_tests = [i for i in items if _CHROMIUM_FIXTURE in getattr(i, "fixturenames", ())]
    if not browser_tests:
        return
    verdict = chromium_verdict(os.environ)
    if verdict.action == "run":
        return
    config.stash[_browser_tests_not_run] = (verdict, len(browser_tests))
    if verdict.action == "skip":
        skip = pytest.mark.skip(reason=verdict.reason)
        for item in browser_tests:
            item.add_marker(skip)
        warnings.warn(pytest.PytestWarning(verdict.reason), stacklevel=1)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The Chromium the browser tests drive; fails the tests under CI when there is none."""
    verdict = chromium_verdict(os.environ)
    if verdict.action == "fail":
        pytest.fail(verdict.reason, pytrace=False)
    if verdict.executable is None:
        pytest.skip(verdict.reason)
    return verdict.executable


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """A banner that cannot be missed when the browser tests did not run."""
    entry = config.stash.get(_browser_tests_not_run, None)
    if entry is None:
        return
    verdict, count = entry
    outcome = "SKIPPED" if verdict.action == "skip" else "FAILED"
    terminalreporter.section("CHROMIUM NOT FOUND", sep="!", red=True, bold=True)
    terminalreporter.write_line(
        f"{count} browser tests of the web console {outcome}: {verdict.reason}",
        red=True,
        bold=True,
    )
