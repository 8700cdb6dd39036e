"""Reading back role credential files: only a private file of ours keeps its password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ttp_runtime.nats_roles import (
    ACCOUNTS_CONFIG,
    ROLES,
    embedded_server_options,
    generate_credentials,
    read_credential_files,
    write_credential_files,
)

URL = "nats://127.0.0.1:4999"


def test_written_files_read_back_as_the_same_credentials(tmp_path: Path) -> None:
    credentials = generate_credentials()
    write_credential_files(tmp_path, URL, credentials)
    stored = read_credential_files(tmp_path)
    assert stored.usable == credentials
    assert stored.unusable == {}


def test_a_missing_file_is_neither_usable_nor_a_problem(tmp_path: Path) -> None:
    write_credential_files(tmp_path, URL, generate_credentials(("master",)))
    stored = read_credential_files(tmp_path)
    assert set(stored.usable) == {"master"}
    assert stored.unusable == {}
    assert read_credential_files(tmp_path / "nowhere").usable == {}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_a_file_other_users_may_read_or_change_is_not_used(tmp_path: Path, mode: int) -> None:
    paths = write_credential_files(tmp_path, URL, generate_credentials())
    paths["admin"].chmod(mode)
    stored = read_credential_files(tmp_path)
    assert "admin" not in stored.usable
    assert f"mode {mode:04o}" in stored.unusable["admin"]
    assert set(stored.usable) == set(ROLES) - {"admin"}


def test_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    paths = write_credential_files(elsewhere, URL, generate_credentials(("operator",)))
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "operator.env").symlink_to(paths["operator"])
    stored = read_credential_files(directory)
    assert stored.usable == {}
    assert "symbolic link" in stored.unusable["operator"]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "viewer.env", 0o600)
    stored = read_credential_files(tmp_path, ("viewer",))
    assert "not a regular file" in stored.unusable["viewer"]


@pytest.mark.parametrize(
    "text",
    [
        "TTP_NATS_USER=operator\nTTP_NATS_PASSWORD=p0123456789abcdef0123\n",  # another role
        "TTP_NATS_USER=viewer\n",  # no password
        "TTP_NATS_USER=viewer\nTTP_NATS_PASSWORD=short1\n",
        "TTP_NATS_USER=viewer\nTTP_NATS_PASSWORD=-0123456789abcdef0123\n",  # read as a number
        "TTP_NATS_USER=viewer\nTTP_NATS_PASSWORD=p0123456789abcdef}{\n",
        "TTP_NATS_USER=viewer\nnot a setting\n",
    ],
)
def test_a_file_without_the_role_and_a_generated_password_is_not_used(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "viewer.env"
    path.write_text(text)
    path.chmod(0o600)
    stored = read_credential_files(tmp_path, ("viewer",))
    assert stored.usable == {}
    assert str(path) in stored.unusable["viewer"]
    assert "0123456789abcdef" not in stored.unusable["viewer"]


def test_embedded_server_options_name_the_accounts_config_and_every_password() -> None:
    credentials = generate_credentials()
    options = embedded_server_options(credentials)
    assert options["extra_args"] == ("--config", str(ACCOUNTS_CONFIG))
    assert options["extra_env"] == {
        f"TTP_NATS_PASSWORD_{role.upper()}": credentials[role].password for role in ROLES
    }
