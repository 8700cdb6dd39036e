"""Telling "PostgreSQL refuses this row" from "PostgreSQL is unwell", and saying why.

A refusal (a value a column or constraint will not take, a trigger raising, a row the
driver cannot encode) belongs to one file and becomes that file's rejection. Anything else
(connection lost, disk full, shutdown, a lost leader lock) is an outage of the whole master
and is left to the caller, which retries or steps down as before.
"""

from __future__ import annotations

from typing import Final

import psycopg
from sqlalchemy import exc as sa_exc

MAX_MESSAGE: Final = 500
"""Characters of the database's message kept in a rejection."""


def is_refusal(error: BaseException) -> bool:
    """True if `error` is PostgreSQL (or its driver) refusing the data written."""
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return False
        original = error.orig
        return not isinstance(original, psycopg.OperationalError | psycopg.InterfaceError)
    if isinstance(error, sa_exc.StatementError):
        # A parameter that could not be bound (wrapped by SQLAlchemy).
        return True
    return isinstance(error, UnicodeError | psycopg.DataError)


def refusal_message(error: BaseException) -> str:
    """The database's own words, one line, storable as text and JSON (no NUL, no surrogate)."""
    original = getattr(error, "orig", None) or error
    diag = getattr(original, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or (str(original).strip().splitlines() or [type(original).__name__])[0]
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate:
        text = f"{text} (SQLSTATE {sqlstate})"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return storable(text)


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates escaped, so PostgreSQL and UTF-8 accept it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
