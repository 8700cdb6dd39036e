"""The console's local users file: who may log in, with which role (users mode).

Format (UTF-8 text, one user per line, written by ``ttp-console users add``)::

    # comment lines and blank lines are ignored
    alice:operator:$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>
    bob:viewer:$argon2id$v=19$...

A line is ``NAME:ROLE:HASH``: NAME is 1-64 of ``A-Z a-z 0-9 . _ @ + -`` starting with a
letter or digit, ROLE is ``viewer`` or ``operator``, HASH an argon2id PHC string (it holds
no ``:``). A name appears once.

The file holds password hashes, so it must be private: a regular file that neither group
nor others may read or write (mode 0600 or 0400), or it is refused as a whole. It is always
rewritten whole, through a new private file renamed into place, so a reader never sees half
of it. Anything malformed is a :class:`UsersFileError` naming ``file:line``, never a crash.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ttp_console.context import CONSOLE_ROLES, ConsoleRole
from ttp_runtime.env_file import write_private_file

__all__ = [
    "MAX_USERS_FILE_BYTES",
    "LocalUser",
    "UsersFileError",
    "check_name",
    "read_users",
    "write_users",
]

MAX_USERS_FILE_BYTES: Final = 1024 * 1024
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
# The PHC string of an argon2id hash: only these characters, so no separator can hide in it.
_HASH_PATTERN: Final = re.compile(
    r"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
_HEADER: Final = (
    "# ttp-console users: NAME:ROLE:ARGON2ID-HASH, one a line (see docs/console.md).\n"
    "# Written by `ttp-console users add|remove`; keep it private (mode 0600).\n"
)


class UsersFileError(Exception):
    """The users file cannot be used; ``str()`` says where and why."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class LocalUser:
    """One line of the users file."""

    name: str
    role: ConsoleRole
    password_hash: str


def check_name(name: str) -> str:
    """``name`` if it may be a user name of the file; ``ValueError`` saying why otherwise."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            "a user name is 1-64 characters of letters, digits and . _ @ + -,"
            " starting with a letter or digit"
        )
    return name


def read_users(path: Path, *, missing_ok: bool = False) -> dict[str, LocalUser]:
    """The users of ``path`` by name; ``{}`` for a missing file when ``missing_ok``.

    Raises :class:`UsersFileError` for a file that is not private, not a regular file, too
    large, not UTF-8, or holds a malformed line (the first one found is named).
    """
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the console. Links are followed:
        # Kubernetes mounts secrets through them; the mode checked is the target's.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise UsersFileError(
            path, "does not exist (create it with `ttp-console users add`)"
        ) from None
    except OSError as exc:
        raise UsersFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise UsersFileError(path, "is not a regular file")
    with os.fdopen(descriptor, "rb") as handle:
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise UsersFileError(
                path,
                f"may be read or changed by other users (mode {mode:04o}); it holds password"
                f" hashes: chmod 600 {path}",
            )
        data = handle.read(MAX_USERS_FILE_BYTES + 1)
    if len(data) > MAX_USERS_FILE_BYTES:
        raise UsersFileError(path, f"is larger than {MAX_USERS_FILE_BYTES} bytes")
    return parse_users(data, path)


def parse_users(data: bytes, path: Path) -> dict[str, LocalUser]:
    """The users in the bytes of a users file (``path`` only names it in errors)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsersFileError(
            path, "is not UTF-8 text", data[: exc.start].count(b"\n") + 1
        ) from None
    users: dict[str, LocalUser] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise UsersFileError(path, "expected NAME:ROLE:HASH", number)
        name, role, password_hash = (part.strip() for part in parts)
        if not NAME_PATTERN.fullmatch(name):
            raise UsersFileError(path, "the user name is not 1-64 of A-Z a-z 0-9 . _ @ + -", number)
        if role not in CONSOLE_ROLES:
            raise UsersFileError(path, "the role must be viewer or operator", number)
        if not _HASH_PATTERN.fullmatch(password_hash):
            raise UsersFileError(path, "the password hash is not an argon2id hash", number)
        if name in users:
            raise UsersFileError(path, f"user {name} appears twice", number)
        users[name] = LocalUser(name, _role(role), password_hash)
    return users


def _role(text: str) -> ConsoleRole:
    return "operator" if text == "operator" else "viewer"


def render_users(users: Iterable[LocalUser]) -> str:
    """The text of a users file holding ``users`` (sorted by name)."""
    lines = [f"{u.name}:{u.role}:{u.password_hash}\n" for u in sorted(users, key=lambda u: u.name)]
    return _HEADER + "".join(lines)


def write_users(path: Path, users: Mapping[str, LocalUser]) -> None:
    """Replace ``path`` with a file holding ``users``, atomically and mode 0600 from birth."""
    write_private_file(path, render_users(users.values()))
