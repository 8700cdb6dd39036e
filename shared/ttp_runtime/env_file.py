"""Reading ``KEY=VALUE`` settings files, such as the role credentials ``ttpctl dev`` writes,
and writing files only their owner may read.

The format is the plain one shells, compose and systemd agree on: one ``KEY=VALUE`` per line,
blank lines and lines starting with ``#`` ignored, an optional ``export`` before the key, and a
value optionally wrapped in one pair of matching quotes (taken literally: no escapes, no
``$VAR`` expansion, no comment after the value). Anything else is an error naming the line,
never its value, which may be a password.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Final

__all__ = [
    "MAX_ENV_FILE_BYTES",
    "EnvFileError",
    "parse_env_text",
    "read_env_file",
    "read_private_env_file",
    "write_private_file",
]

MAX_ENV_FILE_BYTES: Final = 64 * 1024
"""A settings file is a few lines; anything larger is not one."""

_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(ValueError):
    """The file cannot be read or is not a ``KEY=VALUE`` file; the message names the line."""


def parse_env_text(text: str, source: str = "<text>") -> dict[str, str]:
    """The variables of ``text``, in file order; the last of a repeated key wins.

    ``source`` names the file in error messages.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line.removeprefix("export ").lstrip()
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            raise EnvFileError(f"{source}, line {number}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif value[:1] in ("'", '"'):
            raise EnvFileError(f"{source}, line {number}: {key}'s value has an unclosed quote")
        if "\0" in value:
            raise EnvFileError(f"{source}, line {number}: {key}'s value holds a NUL byte")
        values[key] = value
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of the file at ``path`` (see :func:`parse_env_text`).

    Raises :class:`EnvFileError` when the file cannot be read, is larger than
    :data:`MAX_ENV_FILE_BYTES`, is not UTF-8 or holds a line that is not ``KEY=VALUE``.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise EnvFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise EnvFileError(f"{path} is larger than {MAX_ENV_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvFileError(f"{path} is not UTF-8 text") from None
    return parse_env_text(text, str(path))


def read_private_env_file(path: Path, what: str) -> tuple[str | None, dict[str, str]]:
    """``(problem, variables)`` of a file only its owner may read (credentials, logins):
    ``problem`` says why it cannot be used (a link, not a regular file, another owner,
    readable by others, too large, not ``KEY=VALUE``; ``what`` names the file in it), with
    no variables then. Raises FileNotFoundError when it does not exist."""
    try:
        # No following a link, no blocking on a FIFO someone put there.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if path.is_symlink():
            return "is a symbolic link", {}
        return f"cannot be read ({exc.strerror or exc})", {}
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file", {}
        if info.st_uid != os.geteuid():
            return f"belongs to another user (uid {info.st_uid})", {}
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            return f"may be read or changed by other users (mode {mode:04o})", {}
        data = handle.read(MAX_ENV_FILE_BYTES + 1)
    if len(data) > MAX_ENV_FILE_BYTES:
        return f"is too large for a {what}", {}
    try:
        return None, parse_env_text(data.decode("utf-8"), str(path))
    except (UnicodeDecodeError, EnvFileError):
        return "is not a KEY=VALUE file", {}


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8), mode 0600 from birth and atomically: the text
    goes to a new file beside it, synced and renamed into place, so a reader sees the old file
    or the new one, never half of one, and never a moment when others could read it.

    Raises OSError when it cannot be written; no temporary file is left behind then.
    """
    directory = path.parent
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            # mkstemp makes it 0600 already; said again so no umask or platform changes it.
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):
        # The rename is durable only once the directory entry is.
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
