"""The console's users file: its format, its privacy, and hostile content as located errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttp_console.auth.local_users import LocalUsers
from ttp_console.auth.users_file import (
    MAX_USERS_FILE_BYTES,
    LocalUser,
    UsersFileError,
    parse_users,
    read_users,
    write_users,
)

HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
HASH = HASHER.hash("correct horse")


def _private(path: Path, text: str | bytes) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_written_file_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    users = {
        "bob": LocalUser("bob", "viewer", HASH),
        "alice@example.org": LocalUser("alice@example.org", "operator", HASH),
    }
    write_users(path, users)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_users(path) == users
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == [f"alice@example.org:operator:{HASH}", f"bob:viewer:{HASH}"]
    # Rewriting leaves no temporary file behind.
    write_users(path, {"bob": users["bob"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.txt"]


def test_rewrite_replaces_a_file_others_could_read_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("")
    path.chmod(0o644)
    write_users(path, {"bob": LocalUser("bob", "viewer", HASH)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602])
def test_a_file_group_or_others_may_use_is_refused(tmp_path: Path, mode: int) -> None:
    path = _private(tmp_path / "users.txt", f"bob:viewer:{HASH}\n")
    path.chmod(mode)
    with pytest.raises(UsersFileError, match=rf"mode {mode:04o}.*chmod 600"):
        read_users(path)


def test_read_only_private_file_and_links_to_it_are_used(tmp_path: Path) -> None:
    target = _private(tmp_path / "real.txt", f"bob:viewer:{HASH}\n")
    target.chmod(0o400)
    link = tmp_path / "users.txt"
    link.symlink_to(target)  # how Kubernetes mounts a secret
    assert list(read_users(link)) == ["bob"]


def test_missing_file(tmp_path: Path) -> None:
    assert read_users(tmp_path / "none.txt", missing_ok=True) == {}
    with pytest.raises(UsersFileError, match="does not exist"):
        read_users(tmp_path / "none.txt")


def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "users.txt"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsersFileError, match="not a regular file"):
        read_users(fifo)  # and does not hang waiting for a writer
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(UsersFileError):
        read_users(directory)


def test_too_large(tmp_path: Path) -> None:
    path = _private(tmp_path / "users.txt", b"#" * (MAX_USERS_FILE_BYTES + 1))
    with pytest.raises(UsersFileError, match="larger than"):
        read_users(path)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (f"# c\n\nbob:viewer:{HASH}\nbob:operator:{HASH}\n", 4, "appears twice"),
        ("bob:viewer\n", 1, "expected NAME:ROLE:HASH"),
        (f"bob:admin:{HASH}\n", 1, "viewer or operator"),
        (f"-bob:viewer:{HASH}\n", 1, "user name"),
        (f"{'a' * 65}:viewer:{HASH}\n", 1, "user name"),
        (f"b\u00f6b:viewer:{HASH}\n", 1, "user name"),
        ("bob:viewer:plaintext-password\n", 1, "argon2id"),
        ("bob:viewer:$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g\n", 1, "argon2id"),
        (f"bob:viewer:{HASH}:extra\n", 1, "expected NAME:ROLE:HASH"),
        (f"\n\nbob:viewer:{HASH}\x00\n", 3, "argon2id"),
    ],
)
def test_malformed_lines_are_located(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _private(tmp_path / "users.txt", text)
    with pytest.raises(UsersFileError, match=message) as caught:
        read_users(path)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_not_utf8_is_located(tmp_path: Path) -> None:
    path = _private(tmp_path / "users.txt", f"bob:viewer:{HASH}\n".encode() + b"\xff\xfe\n")
    with pytest.raises(UsersFileError, match="not UTF-8") as caught:
        read_users(path)
    assert caught.value.line == 2


def test_windows_line_ends_and_surrounding_space_are_accepted(tmp_path: Path) -> None:
    path = _private(tmp_path / "users.txt", f"  bob : viewer : {HASH}  \r\n")
    assert read_users(path)["bob"].password_hash == HASH


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_any_bytes_give_users_or_a_located_error(data: bytes) -> None:
    try:
        users = parse_users(data, Path("users.txt"))
    except UsersFileError as error:
        assert str(error).startswith("users.txt")
    else:
        assert all(user.role in {"viewer", "operator"} for user in users.values())


def test_verify_checks_the_password_and_hides_unknown_names(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    write_users(path, {"bob": LocalUser("bob", "viewer", HASH)})
    users = LocalUsers(path, HASHER)
    assert users.verify("bob", "correct horse") == LocalUser("bob", "viewer", HASH)
    assert users.verify("bob", "wrong horse") is None
    assert users.verify("nobody", "correct horse") is None
    assert users.verify("bob", "correct horse" + "x" * 5000) is None


def test_verify_follows_changes_of_the_file_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    write_users(path, {"bob": LocalUser("bob", "viewer", HASH)})
    users = LocalUsers(path, HASHER)
    assert users.get("bob") is not None
    write_users(path, {"carol": LocalUser("carol", "operator", HASH)})
    assert users.get("bob") is None
    assert users.verify("carol", "correct horse") is not None
    path.chmod(0o644)
    assert users.get("carol") is None
    assert users.problem is not None and "mode 0644" in users.problem
    path.chmod(0o600)
    assert users.get("carol") is not None


def test_fingerprint_changes_with_role_and_hash() -> None:
    user = LocalUser("bob", "viewer", HASH)
    fingerprint = LocalUsers.fingerprint(user)
    assert LocalUsers.same_fingerprint(user, fingerprint)
    assert not LocalUsers.same_fingerprint(LocalUser("bob", "operator", HASH), fingerprint)
    other = LocalUser("bob", "viewer", HASHER.hash("correct horse"))
    assert not LocalUsers.same_fingerprint(other, fingerprint)
    assert not LocalUsers.same_fingerprint(user, None)
    assert not LocalUsers.same_fingerprint(user, 12)


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.checked: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.checked.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


def test_an_unknown_name_costs_one_check_of_a_dummy_hash_of_the_same_parameters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "users.txt"
    hasher = CountingHasher()
    write_users(path, {"bob": LocalUser("bob", "viewer", hasher.hash("correct horse"))})
    users = LocalUsers(path, hasher)
    assert users.verify("nobody", "correct horse") is None
    assert users.verify("bob", "wrong") is None
    dummy, real = hasher.checked
    assert dummy != real
    # Same algorithm and cost, so the same work: only the salt and hash differ.
    assert dummy.rsplit("$", 2)[0] == real.rsplit("$", 2)[0]
