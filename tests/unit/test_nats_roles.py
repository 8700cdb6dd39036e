"""The role credentials that `ttpctl dev` and the tests hand to nats-server and the services."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from ttp_runtime.nats_roles import (
    ACCOUNT_OF,
    ACCOUNTS_CONFIG,
    ROLES,
    generate_credentials,
    server_environment,
    write_credential_files,
)


def test_every_role_has_a_user_and_a_password_variable_in_the_accounts_config() -> None:
    config = ACCOUNTS_CONFIG.read_text()
    for role in ROLES:
        assert re.search(rf"user: {role}\b", config), role
        assert f"$TTP_NATS_PASSWORD_{role.upper()}" in config, role
        assert re.search(rf"^  {ACCOUNT_OF[role]} {{", config, re.M), ACCOUNT_OF[role]


def test_server_environment_refuses_a_missing_role() -> None:
    credentials = generate_credentials(("master", "worker"))
    with pytest.raises(ValueError, match="producer"):
        server_environment(credentials)


def test_passwords_are_fresh_and_distinct() -> None:
    first, second = generate_credentials(), generate_credentials()
    passwords = [c.password for c in first.values()] + [c.password for c in second.values()]
    assert len(set(passwords)) == len(passwords)


def test_credential_files_are_private_and_hold_the_role_settings(tmp_path: Path) -> None:
    credentials = generate_credentials()
    paths = write_credential_files(tmp_path / "credentials", "nats://127.0.0.1:4999", credentials)
    assert stat.S_IMODE((tmp_path / "credentials").stat().st_mode) == 0o700
    for role, path in paths.items():
        assert path.name == f"{role}.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        lines = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        assert lines == {
            "TTP_NATS_URL": "nats://127.0.0.1:4999",
            "TTP_NATS_USER": role,
            "TTP_NATS_PASSWORD": credentials[role].password,
            "TTP_NATS_INBOX_PREFIX": f"_INBOX_{role}",
        }


def test_passwords_read_as_plain_strings_by_the_nats_config_parser() -> None:
    # nats-server parses a variable's value as a config value: a leading "-" or digit could
    # turn it into a number or a date and stop the server from starting.
    for _ in range(50):
        for creds in generate_credentials().values():
            assert re.fullmatch(r"[a-z][0-9a-f]{48}", creds.password), creds.password
