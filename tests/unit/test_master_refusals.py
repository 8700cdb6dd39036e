"""Which database errors cost one file (a refusal) and which are an outage of the master."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from sqlalchemy import exc as sa_exc

from ttp_master.db.refusals import is_refusal, refusal_message, storable


def wrapped(original: Exception, cls: type[sa_exc.DBAPIError] = sa_exc.DBAPIError) -> Exception:
    return cls("INSERT ...", {}, original)


@pytest.mark.parametrize(
    "original",
    [
        errors.CheckViolation("new row violates check constraint"),
        errors.UntranslatableCharacter("unsupported Unicode escape sequence"),
        errors.RaiseException("refused by a trigger"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ],
)
def test_a_row_postgresql_will_not_take_is_a_refusal(original: Exception) -> None:
    assert is_refusal(wrapped(original))


def test_a_value_the_driver_cannot_encode_is_a_refusal() -> None:
    assert is_refusal(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert is_refusal(sa_exc.StatementError("bind failed", "INSERT ...", {}, ValueError()))


@pytest.mark.parametrize(
    "original",
    [
        errors.DiskFull("could not extend file"),
        errors.AdminShutdown("terminating connection"),
        psycopg.OperationalError("connection refused"),
        psycopg.InterfaceError("the connection is closed"),
    ],
)
def test_an_unwell_database_is_not_a_refusal(original: Exception) -> None:
    assert not is_refusal(wrapped(original))


def test_a_lost_connection_and_other_failures_are_not_refusals() -> None:
    lost = sa_exc.DBAPIError(
        "SELECT 1", {}, errors.CheckViolation("x"), connection_invalidated=True
    )
    assert not is_refusal(lost)
    assert not is_refusal(RuntimeError("leader lock lost"))


def test_the_message_is_one_storable_line() -> None:
    message = refusal_message(wrapped(psycopg.DataError("bad \x00 value \ud800\nDETAIL: row")))
    assert message == "bad \\x00 value \\ud800"
    assert refusal_message(wrapped(psycopg.DataError("x" * 600))).endswith("...")
    assert len(refusal_message(wrapped(psycopg.DataError("x" * 600)))) == 500
    assert storable("ok é 😀") == "ok é 😀"
