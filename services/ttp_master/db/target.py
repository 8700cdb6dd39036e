"""Where the master's PostgreSQL is, and how to connect to it, without ever showing the password.

The URL arrives as a secret (it carries the password). Everything that opens a connection (the
SQLAlchemy engines, the migrations, the leader lock and the relay's LISTEN connection) takes a
`DatabaseTarget`, so the TLS settings reach every one of them and no code needs the URL's
text: SQLAlchemy's `URL` masks the password in its `repr`, and libpq's own messages never
contain it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

SSL_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
"""The libpq parameters the settings pass through (libpq's own names)."""


class DatabaseUrlError(ValueError):
    """The database URL cannot be parsed (its text, which holds the password, is not shown)."""


@dataclass(frozen=True)
class DatabaseTarget:
    """A PostgreSQL database: the secret URL plus libpq connection parameters (TLS)."""

    url: SecretStr
    connect_args: Mapping[str, str] = field(default_factory=dict)
    """libpq parameters given to every connection (`sslmode`, `sslrootcert`, ...)."""

    def __repr__(self) -> str:
        return f"DatabaseTarget({self.sqlalchemy_url()!r}, connect_args={dict(self.connect_args)})"

    @classmethod
    def of(cls, url: str | SecretStr | DatabaseTarget) -> DatabaseTarget:
        """A target from a plain URL (tests, tools); a target is returned as it is."""
        if isinstance(url, DatabaseTarget):
            return url
        return cls(url if isinstance(url, SecretStr) else SecretStr(url))

    @classmethod
    def from_parts(
        cls,
        url: SecretStr,
        *,
        sslmode: str | None = None,
        sslrootcert: Path | None = None,
        sslcert: Path | None = None,
        sslkey: Path | None = None,
    ) -> DatabaseTarget:
        """A target whose unset TLS parameters are left to the URL and libpq's defaults."""
        given = {
            "sslmode": sslmode,
            "sslrootcert": sslrootcert,
            "sslcert": sslcert,
            "sslkey": sslkey,
        }
        return cls(url, {name: str(value) for name, value in given.items() if value is not None})

    def sqlalchemy_url(self) -> URL:
        """The URL for SQLAlchemy (`postgresql+psycopg://`); its `repr` masks the password."""
        try:
            return make_url(self.url.get_secret_value())
        except ArgumentError:
            # SQLAlchemy's message quotes the whole string, password included.
            raise DatabaseUrlError(
                "TTP_DATABASE_URL is not a database URL "
                "(expected postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)"
            ) from None

    def libpq_conninfo(self) -> str:
        """The URL in libpq form (`postgresql://`), for psycopg. Holds the password: never log."""
        url = self.sqlalchemy_url().set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def psycopg_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `psycopg.connect` besides the conninfo."""
        return dict(self.connect_args)

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `create_engine`/`create_async_engine` (the TLS parameters)."""
        return {"connect_args": dict(self.connect_args)}
