"""The master's Alembic migrations against a real PostgreSQL (`alembic check` clean).

`alembic check` autogenerates a comparison of the models (`ttp_master.db.schema.metadata`)
with a migrated database and fails on any difference; the same comparison is also done
directly so a failure lists the differences.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from ttp_master.db.migrate import alembic_config, upgrade_to_head
from ttp_master.db.schema import metadata

TABLES = {"ttp_rule", "ttp_rule_state", "ttp_rule_rejection", "ttp_rule_event"}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, metadata)


def head() -> str:
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    heads = script.get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    return heads[0]


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migrated_database_matches_the_models(database_url: str, engine: Engine) -> None:
    upgrade_to_head(database_url)
    assert current(engine) == head()
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert differences(engine) == []
    # `alembic check` itself, through the project's env.py.
    with engine.connect() as conn:
        config = alembic_config(database_url)
        config.attributes["connection"] = conn
        command.check(config)


def test_upgrade_is_idempotent_and_reversible(database_url: str, engine: Engine) -> None:
    upgrade_to_head(database_url)
    upgrade_to_head(database_url)  # a second master starting: nothing to do
    assert current(engine) == head()
    with engine.connect() as conn:
        config = alembic_config(database_url)
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass('ttp_revision_seq')")) is None
    upgrade_to_head(database_url)
    assert current(engine) == head()
    assert differences(engine) == []
