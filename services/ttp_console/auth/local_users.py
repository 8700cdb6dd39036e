"""Password checks against the users file, as the running console does them.

The file is read again whenever it changes on disk (``ttp-console users add`` takes effect
without a restart, and a removed user's sessions end at their next request). While the file
is unusable nobody logs in and no session is honoured: the console fails closed and logs
the located error once per change of the file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ttp_console.auth.users_file import LocalUser, UsersFileError, read_users

__all__ = ["MAX_PASSWORD_CHARS", "LocalUsers"]

_log = logging.getLogger(__name__)

# Argon2 costs the same for any length, but a megabyte password need not be hashed at all.
MAX_PASSWORD_CHARS: Final = 1024

_FileStamp = tuple[int, int, int, int]


class LocalUsers:
    """The users of one users file, checked by password.

    :meth:`verify` takes as long for an unknown user as for a known one with a wrong
    password: it checks the password against a dummy hash made with the same parameters, so
    response times do not tell which names exist.
    """

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))
        self._users: dict[str, LocalUser] = {}
        self._stamp: _FileStamp | None = None
        self._problem: str | None = None
        # verify() runs in worker threads; one reload at a time.
        self._lock = threading.Lock()

    @property
    def problem(self) -> str | None:
        """Why the file cannot be used right now (located), or None."""
        self._refresh()
        return self._problem

    def count(self) -> int:
        """How many users the file holds (0 while it is unusable)."""
        self._refresh()
        return len(self._users)

    def get(self, name: str) -> LocalUser | None:
        """The user called ``name``, or None (also while the file is unusable)."""
        self._refresh()
        return self._users.get(name)

    def verify(self, name: str, password: str) -> LocalUser | None:
        """The user if ``password`` is theirs; None otherwise (blocking: run in a thread)."""
        user = self.get(name)
        candidate = password[:MAX_PASSWORD_CHARS]
        stored = user.password_hash if user is not None else self._dummy_hash
        try:
            self._hasher.verify(stored, candidate)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or len(password) > MAX_PASSWORD_CHARS:
            return None
        return user

    @staticmethod
    def fingerprint(user: LocalUser) -> str:
        """A short digest of the user's hash and role: kept in the session, so a changed
        password or role (a new line in the file) ends the sessions made before it."""
        digest = hashlib.sha256(f"{user.role}:{user.password_hash}".encode()).hexdigest()
        return digest[:32]

    @staticmethod
    def same_fingerprint(user: LocalUser, fingerprint: object) -> bool:
        """Whether a session's stored fingerprint still matches ``user``."""
        if not isinstance(fingerprint, str):
            return False
        return hmac.compare_digest(LocalUsers.fingerprint(user), fingerprint)

    def _refresh(self) -> None:
        stamp = _stamp(self.path)
        if stamp == self._stamp and stamp is not None:
            return
        with self._lock:
            if stamp == self._stamp and stamp is not None:
                return
            try:
                users = read_users(self.path)
            except UsersFileError as exc:
                if self._problem != str(exc) or stamp != self._stamp:
                    _log.error("console users file unusable; nobody can log in: %s", exc)
                self._users, self._problem = {}, str(exc)
            else:
                if not users:
                    _log.warning(
                        "console users file %s holds no users: add one with"
                        " `ttp-console users add NAME --role operator`",
                        self.path,
                    )
                self._users, self._problem = users, None
            self._stamp = stamp


def _stamp(path: Path) -> _FileStamp | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode)
