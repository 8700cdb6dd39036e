"""Logout revokes the session id inside the signed cookie: RevokedSessions and the
Authenticator's use of it (a copied session dict stands for a copied cookie)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from ttp_console.auth.local_users import LocalUsers
from ttp_console.auth.revocation import RevokedSessions
from ttp_console.auth.session import SESSION_ID_KEY, Authenticator
from ttp_console.auth.throttle import LoginThrottle
from ttp_console.auth.users_file import LocalUser, write_users

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_revoked_id_is_refused_and_others_are_not() -> None:
    clock = Clock()
    revoked = RevokedSessions(3600, clock=clock)
    revoked.revoke("a", clock.now - 10)
    assert revoked.is_revoked("a", clock.now - 10)
    assert not revoked.is_revoked("b", clock.now - 10)
    revoked.revoke("a", clock.now - 10)  # twice: one entry
    assert len(revoked) == 1


def test_an_id_is_forgotten_once_its_session_has_expired_anyway() -> None:
    clock = Clock()
    revoked = RevokedSessions(3600, clock=clock)
    revoked.revoke("old", clock.now - 3000)
    revoked.revoke("new", clock.now)
    clock.now += 601  # "old" is now 3601 s past its login: expired by its age
    revoked.revoke("newer", clock.now)
    assert len(revoked) == 2
    assert not revoked.is_revoked("old", clock.now - 3601)
    assert revoked.is_revoked("new", clock.now - 601)
    revoked.revoke("expired", clock.now - 3601)  # nothing left to refuse
    assert len(revoked) == 2


def test_a_logout_flood_stays_bounded_and_no_revoked_session_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    start = clock.now
    revoked = RevokedSessions(8 * 3600, max_entries=100, clock=clock)
    logins = []
    with caplog.at_level(logging.WARNING, logger="ttp_console.auth.revocation"):
        for i in range(5000):
            clock.now += 0.2  # one argon2 check each, the fastest logins can come
            logins.append((f"id-{i}", clock.now))
            revoked.revoke(f"id-{i}", clock.now)
            assert len(revoked) <= 100
    assert all(revoked.is_revoked(session_id, at) for session_id, at in logins)
    # Sessions newer than the oldest id still remembered are untouched.
    assert not revoked.is_revoked("someone-else", clock.now)
    assert revoked.refused_up_to < logins[-100][1]
    overflow = [r for r in caplog.records if "logged-out sessions" in r.getMessage()]
    assert 1 <= len(overflow) <= (clock.now - start) // 60 + 1  # at most once a minute


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RevokedSessions(0)
    with pytest.raises(ValueError, match="positive"):
        RevokedSessions(60, max_entries=0)


@pytest.fixture
def auth(tmp_path: Path) -> Authenticator:
    path = tmp_path / "users.txt"
    write_users(path, {"alice": LocalUser("alice", "operator", FAST_HASHER.hash("alice-password"))})
    return Authenticator(
        "users",
        users=LocalUsers(path),
        proxy=None,
        throttle=LoginThrottle(5, 60.0),
        max_age_s=3600,
    )


def test_logout_ends_copies_of_the_session_but_not_the_users_other_sessions(
    auth: Authenticator,
) -> None:
    laptop: dict[str, Any] = {}
    phone: dict[str, Any] = {}
    auth.start_session(laptop, "alice")
    auth.start_session(phone, "alice")
    assert laptop[SESSION_ID_KEY] != phone[SESSION_ID_KEY]
    stolen = dict(laptop)
    assert auth.session_user(stolen) is not None
    auth.end_session(laptop)
    assert laptop == {}
    assert auth.session_user(stolen) is None
    user = auth.session_user(phone)
    assert user is not None and user.name == "alice"


def test_logging_in_again_ends_the_session_it_replaces(auth: Authenticator) -> None:
    session: dict[str, Any] = {}
    auth.start_session(session, "alice")
    before = dict(session)
    auth.start_session(session, "alice")
    assert auth.session_user(before) is None
    assert auth.session_user(session) is not None


def test_a_session_without_an_id_is_not_honoured(auth: Authenticator) -> None:
    session: dict[str, Any] = {}
    auth.start_session(session, "alice")
    del session[SESSION_ID_KEY]
    assert auth.session_user(session) is None
    session[SESSION_ID_KEY] = 12345
    assert auth.session_user(session) is None


def test_ending_a_session_that_is_not_a_login_only_empties_it(auth: Authenticator) -> None:
    session: dict[str, Any] = {"proxy_user": "bob", "csrf": "t" * 43}
    auth.end_session(session)
    assert session == {}
    assert len(auth.revoked) == 0
