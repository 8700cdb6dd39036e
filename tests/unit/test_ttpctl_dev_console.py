"""`ttpctl dev`'s console files: private, kept across starts, and the logins they print work.

The users file is written by the real `ttp-console users` command, and the passwords are
checked against its argon2id hashes, so a printed login is one the console accepts.
"""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError

from ttp_console.settings import ConsoleSettings
from ttpctl.dev_console import (
    ConsoleSetupError,
    DevConsole,
    choose_console_port,
    prepare_dev_console,
)

TTP_CONSOLE = Path(sys.executable).parent / "ttp-console"


@pytest.fixture(scope="module")
def made_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A console directory after a first start (hashing the logins is the slow part)."""
    directory = tmp_path_factory.mktemp("made-once") / "console"
    prepare(directory)
    return directory


@pytest.fixture
def started_before(made_once: Path, tmp_path: Path) -> DevConsole:
    """What a start finds in a copy of ``made_once``: the state after an earlier start."""
    directory = tmp_path / "console"
    shutil.copytree(made_once, directory)
    web, warnings = prepare(directory)
    assert warnings == []
    return web


def prepare(directory: Path) -> tuple[DevConsole, list[str]]:
    warnings: list[str] = []
    return prepare_dev_console(directory, warnings.append), warnings


def hashes(users_file: Path) -> dict[str, tuple[str, str]]:
    """{name: (role, hash)} of a users file."""
    found = {}
    for line in users_file.read_text().splitlines():
        if line and not line.startswith("#"):
            name, role, password_hash = line.split(":")
            found[name] = (role, password_hash)
    return found


def add_user(users_file: Path, name: str, role: str, password: str, *options: str) -> None:
    """``ttp-console users add`` as a person would run it on the dev console's file."""
    command = [str(TTP_CONSOLE), "users", "add", name, "--role", role, "--password-stdin"]
    added = subprocess.run(
        [*command, *options, "--file", str(users_file)],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr


def accepts(password_hash: str, password: str) -> bool:
    try:
        return PasswordHasher().verify(password_hash, password)
    except VerifyMismatchError:
        return False


def assert_logins_work(web: DevConsole) -> None:
    stored = hashes(web.users_file)
    for login in web.logins:
        role, password_hash = stored[login.name]
        assert role == login.role
        assert accepts(password_hash, login.password), login.name


def test_the_first_start_makes_private_files_whose_logins_work(tmp_path: Path) -> None:
    web, warnings = prepare(tmp_path / "console")
    assert warnings == []
    assert stat.S_IMODE(web.directory.stat().st_mode) == 0o700
    for path in (web.users_file, web.logins_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert [(login.name, login.role) for login in web.logins] == [
        ("dev", "operator"),
        ("viewer", "viewer"),
    ]
    assert len({login.password for login in web.logins}) == 2
    assert_logins_work(web)
    banner = "\n".join(web.banner(8090))
    assert "http://127.0.0.1:8090/" in banner
    for login in web.logins:
        assert f"{login.name} / {login.password} ({login.role})" in banner
    assert str(web.logins_file) in web.status_line(8090)
    # The status line stays on screen: it names the file, never a password.
    assert all(login.password not in web.status_line(8090) for login in web.logins)


def test_a_restart_keeps_logins_key_and_users_added_by_hand(started_before: DevConsole) -> None:
    first = started_before
    add_user(first.users_file, "alice", "viewer", "alice-password")
    users_before = first.users_file.read_bytes()
    again, warnings = prepare(first.directory)
    assert warnings == []
    assert again == first
    # Nothing to change: the file is not rewritten, alice is still there.
    assert first.users_file.read_bytes() == users_before
    assert "alice" in hashes(first.users_file)


def test_a_logins_file_others_may_read_gets_new_passwords_and_key(
    started_before: DevConsole,
) -> None:
    first = started_before
    first.logins_file.chmod(0o644)
    again, warnings = prepare(first.directory)
    assert len(warnings) == 1
    assert "mode 0644" in warnings[0]
    assert str(first.logins_file) in warnings[0]
    assert stat.S_IMODE(again.logins_file.stat().st_mode) == 0o600
    assert again.session_secret != first.session_secret
    old = {login.name: login.password for login in first.logins}
    assert all(login.password != old[login.name] for login in again.logins)
    # The users file follows: the new passwords log in, the old ones no longer do.
    assert_logins_work(again)
    stored = hashes(again.users_file)
    assert not accepts(stored["dev"][1], old["dev"])


def test_a_dev_login_changed_by_hand_is_set_back(started_before: DevConsole) -> None:
    first = started_before
    add_user(first.users_file, "dev", "viewer", "another-password", "--replace")
    again, _ = prepare(first.directory)
    assert again == first
    assert_logins_work(again)


def test_an_unusable_users_file_stops_the_start_with_its_reason(
    started_before: DevConsole,
) -> None:
    started_before.users_file.chmod(0o640)
    with pytest.raises(ConsoleSetupError, match=r"users file cannot be used: .*mode 0640"):
        prepare(started_before.directory)


def test_a_directory_that_is_not_ours_to_keep_secrets_in_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "console").symlink_to(target)
    with pytest.raises(ConsoleSetupError, match="must be a directory of your own"):
        prepare(tmp_path / "console")


def test_the_kept_port_is_kept_while_free_and_left_when_taken() -> None:
    port, moved = choose_console_port(None)
    assert moved is None
    assert choose_console_port(port) == (port, None)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        other, moved = choose_console_port(port)
    assert other != port
    assert moved is not None
    assert str(port) in moved
    assert str(other) in moved


def test_the_environment_is_a_valid_console_configuration(
    started_before: DevConsole, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = started_before
    for key, value in web.environment(40123).items():
        monkeypatch.setenv(key, value)
    settings = ConsoleSettings()
    assert settings.console_host == "127.0.0.1"
    assert settings.console_port == 40123
    assert settings.console_auth == "users"
    assert settings.console_users_file == web.users_file
    assert settings.console_cookie_secure is False
    assert settings.console_session_secret is not None
    assert settings.console_session_secret.get_secret_value() == web.session_secret
