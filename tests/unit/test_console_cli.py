"""`ttp-console users add|list|remove`: the users file from the command line."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from typer.testing import CliRunner

from ttp_console import cli
from ttp_console.auth.users_file import read_users


def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.make_app(), list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_add_list_remove(tmp_path: Path) -> None:
    file = str(tmp_path / "users.txt")
    code, out, _ = _run(
        "users",
        "add",
        "alice",
        "--role",
        "operator",
        "--password-stdin",
        "--file",
        file,
        stdin="s3cret-password\n",
    )
    assert code == 0, out
    assert "added alice (operator)" in out
    code, _, _ = _run(
        "users",
        "add",
        "bob",
        "--role",
        "viewer",
        "--password-stdin",
        "--file",
        file,
        stdin="another-password\n",
    )
    assert code == 0
    path = Path(file)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = read_users(path)
    assert PasswordHasher().verify(users["alice"].password_hash, "s3cret-password")
    assert users["alice"].password_hash.startswith("$argon2id$")

    code, out, _ = _run("users", "list", "--file", file)
    assert (code, out.split()) == (0, ["alice", "operator", "bob", "viewer"])

    code, out, _ = _run("users", "remove", "alice", "--file", file)
    assert code == 0 and "removed alice" in out
    assert list(read_users(path)) == ["bob"]
    code, _, err = _run("users", "remove", "alice", "--file", file)
    assert code == 1 and "no user alice" in err


def test_the_file_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env-users.txt"
    monkeypatch.setenv("TTP_CONSOLE_USERS_FILE", str(path))
    code, _, _ = _run(
        "users", "add", "carol", "--role", "viewer", "--password-stdin", stdin="password-123\n"
    )
    assert code == 0
    assert list(read_users(path)) == ["carol"]


def test_prompted_password_must_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = str(tmp_path / "users.txt")
    answers = iter(["first-password", "other-password"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda _prompt: next(answers))
    code, _, err = _run("users", "add", "alice", "--role", "viewer", "--file", file)
    assert code == 1 and "differ" in err
    assert not Path(file).exists()

    answers = iter(["same-password", "same-password"])
    code, _, _ = _run("users", "add", "alice", "--role", "viewer", "--file", file)
    assert code == 0
    assert PasswordHasher().verify(read_users(Path(file))["alice"].password_hash, "same-password")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["users", "add", "bad name", "--role", "viewer"], "password-1", "user name"),
        (["users", "add", "alice", "--role", "admin"], "password-1", "viewer or operator"),
        (["users", "add", "alice", "--role", "viewer"], "short\n", "8 to 1024"),
        (["users", "add", "alice", "--role", "viewer"], "", "8 to 1024"),
    ],
)
def test_refusals(tmp_path: Path, args: list[str], stdin: str, message: str) -> None:
    file = str(tmp_path / "users.txt")
    code, _, err = _run(*args, "--password-stdin", "--file", file, stdin=stdin)
    assert code == 1
    assert message in err
    assert not Path(file).exists()


def test_an_existing_user_is_replaced_only_when_asked(tmp_path: Path) -> None:
    file = str(tmp_path / "users.txt")
    base = ["users", "add", "alice", "--password-stdin", "--file", file]
    assert _run(*base, "--role", "viewer", stdin="password-one\n")[0] == 0
    code, _, err = _run(*base, "--role", "operator", stdin="password-two\n")
    assert code == 1 and "--replace" in err
    code, out, _ = _run(*base, "--role", "operator", "--replace", stdin="password-two\n")
    assert code == 0 and "replaced alice (operator)" in out
    assert read_users(Path(file))["alice"].role == "operator"


def test_an_unusable_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("alice:viewer:not-a-hash\n")
    path.chmod(0o600)
    code, _, err = _run(
        "users",
        "add",
        "bob",
        "--role",
        "viewer",
        "--password-stdin",
        "--file",
        str(path),
        stdin="password-123\n",
    )
    assert code == 1
    assert f"{path}:1:" in err
    assert path.read_text() == "alice:viewer:not-a-hash\n"
    path.chmod(0o644)
    code, _, err = _run("users", "list", "--file", str(path))
    assert code == 1 and "mode 0644" in err


def test_help_does_not_start_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "run_console", lambda: pytest.fail("console started"))
    code, out, _ = _run("--help")
    assert code == 0
    assert "users" in out


def test_wrong_settings_are_named_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TTP_CONSOLE_PORT", "99999")
    with pytest.raises(SystemExit) as stopped:
        cli.main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == "ttp-console: TTP_CONSOLE_PORT: Input should be less than or equal to 65535\n"

    monkeypatch.delenv("TTP_CONSOLE_PORT")
    monkeypatch.setenv("TTP_CONSOLE_AUTH", "proxy")
    with pytest.raises(SystemExit) as stopped:
        cli.main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "TTP_CONSOLE_AUTH=proxy needs TTP_CONSOLE_TRUSTED_PROXIES" in err
    assert "Traceback" not in err
