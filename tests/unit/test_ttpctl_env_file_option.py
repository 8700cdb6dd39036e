"""ttpctl's global --env-file: the file's TTP_* settings, and who wins over whom."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ttp_runtime.env_file import EnvFileError
from ttpctl.env_file_option import apply_env_file

TTPCTL = Path(sys.executable).parent / "ttpctl"


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_file_replaces_the_environment_and_says_so(tmp_path: Path) -> None:
    path = private_file(
        tmp_path / "operator.env",
        "TTP_NATS_URL=nats://127.0.0.1:4999\nTTP_NATS_USER=operator\nTTP_NATS_PASSWORD=pw\n",
    )
    environ = {
        "TTP_NATS_URL": "nats://127.0.0.1:4999",
        "TTP_NATS_USER": "viewer",
        "TTP_NATS_TLS_CA": "/etc/ca.pem",
    }
    notes = apply_env_file(path, environ)
    assert environ == {
        "TTP_NATS_URL": "nats://127.0.0.1:4999",
        "TTP_NATS_USER": "operator",
        "TTP_NATS_PASSWORD": "pw",
        "TTP_NATS_TLS_CA": "/etc/ca.pem",
    }
    # Only a value that differs is worth a note; never the values themselves.
    assert notes == [f"{path}: replaces the environment's TTP_NATS_USER"]


def test_only_ttp_settings_are_taken(tmp_path: Path) -> None:
    path = private_file(
        tmp_path / "hostile.env",
        "LD_PRELOAD=/tmp/evil.so\nPATH=/tmp\nTTP_ENV_FILE=/elsewhere.env\nTTP_LOG_LEVEL=DEBUG\n",
    )
    environ: dict[str, str] = {"PATH": "/usr/bin"}
    notes = apply_env_file(path, environ)
    assert environ == {"PATH": "/usr/bin", "TTP_LOG_LEVEL": "DEBUG"}
    assert notes == [
        f"{path}: ignored LD_PRELOAD, PATH, TTP_ENV_FILE (only TTP_* settings are read)"
    ]


def test_a_secret_other_users_may_read_is_pointed_out(tmp_path: Path) -> None:
    shared = private_file(tmp_path / "shared.env", "TTP_NATS_PASSWORD=pw\n", 0o644)
    notes = apply_env_file(shared, {})
    assert any("other users may read" in note and "0644" in note for note in notes)
    plain = private_file(tmp_path / "plain.env", "TTP_LOG_LEVEL=DEBUG\n", 0o644)
    assert apply_env_file(plain, {}) == []


def test_a_broken_file_changes_nothing(tmp_path: Path) -> None:
    path = private_file(tmp_path / "broken.env", "TTP_NATS_USER=operator\nnot a setting\n")
    environ = {"TTP_NATS_USER": "viewer"}
    with pytest.raises(EnvFileError, match="line 2"):
        apply_env_file(path, environ)
    assert environ == {"TTP_NATS_USER": "viewer"}


def run_ttpctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TTP_")}
    return subprocess.run(
        [str(TTPCTL), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_command_line_beats_file_beats_environment(tmp_path: Path, closed_port: int) -> None:
    # Nothing listens on these ports: the error names where the command tried to connect.
    from_file = private_file(tmp_path / "a.env", f"TTP_NATS_URL=nats://127.0.0.1:{closed_port}\n")
    environment = {"TTP_NATS_URL": "nats://127.0.0.2:1"}
    result = run_ttpctl("--env-file", str(from_file), "state", "show", env=environment)
    assert result.returncode == 4, result.stderr
    assert f"127.0.0.1:{closed_port}" in result.stderr
    result = run_ttpctl(
        "--env-file",
        str(from_file),
        "state",
        "show",
        "--nats-url",
        "nats://127.0.0.3:1",
        env=environment,
    )
    assert result.returncode == 4, result.stderr
    assert "127.0.0.3:1" in result.stderr
    # TTP_ENV_FILE names the file as well as the option does.
    result = run_ttpctl("state", "show", env={**environment, "TTP_ENV_FILE": str(from_file)})
    assert f"127.0.0.1:{closed_port}" in result.stderr


def test_an_unusable_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_ttpctl("--env-file", str(tmp_path / "missing.env"), "state", "show", env={})
    assert result.returncode == 2
    assert "--env-file: cannot read" in result.stderr
