"""The web console under `ttpctl dev`: its dev logins, its session key and its port.

`ttpctl dev` runs one ``ttp-console`` beside the master and the workers: as the NATS role
``console``, in users mode, on 127.0.0.1 over plain HTTP. What a browser relies on across
restarts of `make run` is kept under ``<data-dir>/console/`` (mode 0700):

- ``users.txt``: the console's users file (argon2id hashes, mode 0600), written through
  ``ttp-console users add``. It holds the dev logins ``dev`` (operator) and ``viewer``
  (viewer), and whoever else is added with ``ttp-console users add --file`` on it.
- ``logins.env`` (mode 0600): the dev logins' passwords and the key that signs session
  cookies, random at the first start and reused by later ones, so a login survives a restart.

The UI's port is chosen free at the first start and kept in ``ports.json`` as ``console``,
like the embedded servers' ports, so the URL stays the same.

The users file is written by the console's own command rather than by importing the
console: services depend on nothing but the shared packages, and the command is the
documented way to write that file.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ttp_runtime.embedded import free_port
from ttp_runtime.env_file import read_private_env_file, write_private_file

__all__ = [
    "CONSOLE_DIRECTORY",
    "ConsoleSetupError",
    "DevConsole",
    "DevLogin",
    "choose_console_port",
    "prepare_dev_console",
    "private_directory_problem",
]

CONSOLE_DIRECTORY: Final = "console"
"""The console's directory under the data directory."""

_USERS_FILE: Final = "users.txt"
_LOGINS_FILE: Final = "logins.env"
_SESSION_KEY_VARIABLE: Final = "TTP_CONSOLE_SESSION_SECRET"
_LOOPBACK: Final = "127.0.0.1"
# What a kept value must look like to be used again: what secrets.token_urlsafe makes.
_KEPT_PASSWORD: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_KEPT_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{32,256}")
_COMMAND_TIMEOUT_S: Final = 60.0

ConsoleRole = Literal["operator", "viewer"]


@dataclass(frozen=True, slots=True)
class _DevUser:
    name: str
    role: ConsoleRole
    variable: str
    """Its password's key in logins.env (the operator's is compose's name for it)."""


_DEV_USERS: Final = (
    _DevUser("dev", "operator", "CONSOLE_DEV_PASSWORD"),
    _DevUser("viewer", "viewer", "CONSOLE_VIEWER_PASSWORD"),
)


class ConsoleSetupError(Exception):
    """The console's files cannot be prepared; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class DevLogin:
    """A login of the dev console, with its password in clear (it is a dev machine's)."""

    name: str
    role: ConsoleRole
    password: str


@dataclass(frozen=True, slots=True)
class DevConsole:
    """The console's files under the data directory, ready for a ``ttp-console`` start."""

    directory: Path
    users_file: Path
    logins_file: Path
    session_secret: str
    logins: tuple[DevLogin, ...]

    def environment(self, port: int) -> dict[str, str]:
        """The ``TTP_CONSOLE_*`` settings of the dev console serving on ``port``."""
        return {
            "TTP_CONSOLE_HOST": _LOOPBACK,
            "TTP_CONSOLE_PORT": str(port),
            "TTP_CONSOLE_AUTH": "users",
            "TTP_CONSOLE_USERS_FILE": str(self.users_file),
            _SESSION_KEY_VARIABLE: self.session_secret,
            # Plain HTTP on loopback: a Secure cookie would never be sent back.
            "TTP_CONSOLE_COOKIE_SECURE": "false",
        }

    @staticmethod
    def url(port: int) -> str:
        """Where a browser on this machine finds the console."""
        return f"http://{_LOOPBACK}:{port}/"

    def banner(self, port: int) -> list[str]:
        """What `ttpctl dev` prints once at start: the URL and every dev login."""
        logins = "   ".join(
            f"{login.name} / {login.password} ({login.role})" for login in self.logins
        )
        return [
            f"console:     {self.url(port)}",
            f"log in as:   {logins}   (kept in {self.logins_file})",
        ]

    def status_line(self, port: int) -> str:
        """The console's line in the live status: the URL and where the passwords are."""
        names = ", ".join(f"{login.name} ({login.role})" for login in self.logins)
        return f"console {self.url(port)}  logins {names}: passwords in {self.logins_file}"


def private_directory_problem(directory: Path) -> str | None:
    """Make ``directory`` (mode 0700) unless it exists; returns why it cannot hold secrets.

    It must be a directory of this user's, not a symbolic link; its mode is set to 0700.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return (
                f"{directory} must be a directory of your own (it holds passwords);"
                " remove it or choose another --data-dir"
            )
        directory.chmod(0o700)
    except OSError as exc:
        return f"cannot use {directory}: {exc.strerror or exc}"
    return None


def choose_console_port(kept: int | None) -> tuple[int, str | None]:
    """The UI's port: ``kept`` while nothing else listens on it, else a free one.

    Returns the port and, when the kept one had to be left, a sentence saying so.
    """
    if kept is not None and 0 < kept < 65536:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the console binds: a port whose old connections linger in TIME_WAIT after a
            # quick restart is free for it, and only a listener makes it busy.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((_LOOPBACK, kept))
            except OSError:
                port = free_port()
                return port, (
                    f"the console's port {kept} is taken by another program: it serves on"
                    f" {port} this time (kept from now on)"
                )
        return kept, None
    return free_port(), None


def prepare_dev_console(directory: Path, warn: Callable[[str], None]) -> DevConsole:
    """The console's files in ``directory``: kept ones when still private, new ones otherwise.

    A kept logins file that another user may read (or that is not ours, or not a plain file)
    is not used: its passwords may be known, so every dev login gets a new password, the
    sessions a new key, and ``warn`` says so. The dev logins are (re)written into the users
    file when missing from it, given another role there, or given a new password; other users
    of the file are left as they are. Raises :class:`ConsoleSetupError`.
    """
    problem = private_directory_problem(directory)
    if problem is not None:
        raise ConsoleSetupError(problem)
    users_file = directory / _USERS_FILE
    logins_file = directory / _LOGINS_FILE
    kept = _read_kept(logins_file, warn)
    values = dict(kept)
    if not _KEPT_SECRET.fullmatch(values.get(_SESSION_KEY_VARIABLE, "")):
        values[_SESSION_KEY_VARIABLE] = secrets.token_urlsafe(32)
    renewed: set[str] = set()
    for user in _DEV_USERS:
        if not _KEPT_PASSWORD.fullmatch(values.get(user.variable, "")):
            values[user.variable] = secrets.token_urlsafe(18)
            renewed.add(user.name)
    if values != kept:
        # Before the users file: a password that reached it is always one we can print.
        _write_logins(logins_file, values)
    listed = _list_users(users_file)
    logins = tuple(DevLogin(u.name, u.role, values[u.variable]) for u in _DEV_USERS)
    for login in logins:
        if login.name in renewed or listed.get(login.name) != login.role:
            _add_user(users_file, login)
    return DevConsole(directory, users_file, logins_file, values[_SESSION_KEY_VARIABLE], logins)


def _read_kept(path: Path, warn: Callable[[str], None]) -> dict[str, str]:
    """The values of the kept logins file; ``{}`` when there is none or it must not be used."""
    try:
        problem, values = read_private_env_file(path, "logins file")
    except FileNotFoundError:
        return {}
    if problem is None:
        return values
    warn(
        f"warning: {path} {problem}: not used; the console's dev logins get new passwords"
        " and its sessions a new key"
    )
    try:
        # Replaced, not rewritten in place: it may be a link or belong to someone else.
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise ConsoleSetupError(f"cannot replace {path}: {exc.strerror or exc}") from None
    return {}


def _write_logins(path: Path, values: dict[str, str]) -> None:
    """Replace ``path`` with ``values``: private from birth, renamed into place whole."""
    lines = [
        "# ttpctl dev: the web console's dev logins and session key (kept across runs;"
        " delete this file for new ones)",
        *(f"{key}={value}" for key, value in values.items()),
    ]
    try:
        write_private_file(path, "\n".join(lines) + "\n")
    except OSError as exc:
        raise ConsoleSetupError(f"cannot write {path}: {exc.strerror or exc}") from None


def _console_command(*arguments: str, password: str | None = None) -> str:
    """Run ``ttp-console ARGUMENTS``; its standard output, or ConsoleSetupError."""
    program = Path(sys.executable).parent / "ttp-console"
    try:
        done = subprocess.run(  # noqa: S603
            [str(program), *arguments],
            input=None if password is None else password + "\n",
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConsoleSetupError(f"cannot run {program}: {exc}") from None
    if done.returncode != 0:
        message = done.stderr.strip().removeprefix("ttp-console: ") or f"exit {done.returncode}"
        raise ConsoleSetupError(message)
    return done.stdout


def _list_users(users_file: Path) -> dict[str, str]:
    """The users of the file by name, with their role; ``{}`` when there is no file yet."""
    try:
        listing = _console_command("users", "list", "--file", str(users_file))
    except ConsoleSetupError as exc:
        raise ConsoleSetupError(
            f"the console's users file cannot be used: {exc} (fix it, or remove it to start"
            " again with the dev logins only)"
        ) from None
    users: dict[str, str] = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 2:
            users[fields[0]] = fields[1]
    return users


def _add_user(users_file: Path, login: DevLogin) -> None:
    arguments = ["users", "add", login.name, "--role", login.role, "--password-stdin"]
    try:
        _console_command(
            *arguments, "--replace", "--file", str(users_file), password=login.password
        )
    except ConsoleSetupError as exc:
        raise ConsoleSetupError(f"cannot add the dev login {login.name}: {exc}") from None
