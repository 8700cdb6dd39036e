"""Run the Alembic migrations programmatically (no alembic.ini needed), or check them."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine

from ttp_master.db.target import DatabaseTarget


class SchemaNotAtHeadError(RuntimeError):
    """The database schema is not the one this master needs, and it may not migrate it."""


def alembic_config(database_url: str | None = None) -> Config:
    """The Alembic configuration; the URL only matters to `alembic` run without a connection."""
    config = Config()
    config.set_main_option("script_location", "ttp_master:migrations")
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration this code knows."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads: {heads}")
    return heads[0]


def _engine(database: DatabaseTarget | SecretStr | str) -> Engine:
    target = DatabaseTarget.of(database)
    return create_engine(target.sqlalchemy_url(), **target.engine_kwargs())


def upgrade_to_head(database: DatabaseTarget | SecretStr | str) -> None:
    """Bring the schema to the newest revision; safe to run concurrently (advisory lock)."""
    engine = _engine(database)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def current_revision(database: DatabaseTarget | SecretStr | str) -> str | None:
    """The schema revision the database is at (None: never migrated)."""
    engine = _engine(database)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def require_head(database: DatabaseTarget | SecretStr | str) -> None:
    """Raise `SchemaNotAtHeadError` unless the schema is at the newest revision.

    For a master that runs with a DML-only role (`TTP_MIGRATE_AT_START=false`): it cannot
    migrate, and running against another schema would fail later and less clearly.
    """
    wanted = head_revision()
    found = current_revision(database)
    if found != wanted:
        state = "not migrated" if found is None else f"at revision {found}"
        raise SchemaNotAtHeadError(
            f"database schema is {state}, this master needs revision {wanted}: run "
            "`ttp-master migrate` with a role that may change the schema (the migrate Job), "
            "or set TTP_MIGRATE_AT_START=true"
        )
