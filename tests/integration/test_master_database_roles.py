"""The master against PostgreSQL with least privilege: a DML-only role that does not migrate
(`TTP_MIGRATE_AT_START=false`), and a database password that shows in no log or error.

The roles are made with the SQL docs/operations.md gives ("PostgreSQL roles"), on a private
server, so the cluster-wide roles and the rewritten pg_hba.conf touch no other test.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from harness.master import db_rules, master_settings, rule_text, running_master
from ttp_master.db.migrate import SchemaNotAtHeadError, upgrade_to_head
from ttp_master.db.target import DatabaseTarget
from ttp_master.leader import LeaderLock

PASSWORD = "Pw-0f-the-ttp-app-r0le"

# The statements of docs/operations.md, "PostgreSQL roles" ({db} is the database).
ROLES_SQL = """
CREATE ROLE ttp_owner LOGIN PASSWORD '{password}';
CREATE ROLE ttp_app LOGIN PASSWORD '{password}';
ALTER DATABASE {db} OWNER TO ttp_owner;
REVOKE ALL ON DATABASE {db} FROM PUBLIC;
GRANT CONNECT ON DATABASE {db} TO ttp_app;
"""
GRANTS_SQL = """
ALTER SCHEMA public OWNER TO ttp_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO ttp_app;
ALTER DEFAULT PRIVILEGES FOR ROLE ttp_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ttp_app;
ALTER DEFAULT PRIVILEGES FOR ROLE ttp_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO ttp_app;
"""


def as_role(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


def make_roles(private_postgres: Any) -> str:
    """A database owned by `ttp_owner`, with `ttp_app` allowed DML only; returns its URL."""
    url = private_postgres.create_database()
    db = urlsplit(url).path.lstrip("/")
    with psycopg.connect(private_postgres.dsn, autocommit=True) as conn:
        for statement in ROLES_SQL.format(password=PASSWORD, db=db).split(";"):
            if statement.strip():
                conn.execute(statement.encode())
    admin_db = private_postgres.dsn.rsplit("/", 1)[0] + f"/{db}"
    with psycopg.connect(admin_db, autocommit=True) as conn:
        for statement in GRANTS_SQL.split(";"):
            if statement.strip():
                conn.execute(statement.encode())
    return url


def require_passwords(private_postgres: Any) -> None:
    """Make the private server check passwords (it trusts every local login otherwise)."""
    with psycopg.connect(private_postgres.dsn, autocommit=True) as conn:
        row = conn.execute("SHOW hba_file").fetchone()
        assert row is not None
        lines = [
            "host all postgres 127.0.0.1/32 trust",
            "host all all 127.0.0.1/32 scram-sha-256",
            "local all postgres trust",
        ]
        # One row per line: COPY's text format would escape newlines inside one value.
        conn.execute(
            sql.SQL("COPY (SELECT unnest({}::text[])) TO {}").format(
                sql.Literal(lines), sql.Literal(row[0])
            )
        )
        conn.execute("SELECT pg_reload_conf()")
        errors = conn.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
        assert errors.fetchone() == (0,)


async def test_a_dml_only_master_syncs_rules_when_the_schema_was_migrated_for_it(
    private_nats: Any, private_postgres: Any, tmp_path: Any
) -> None:
    url = make_roles(private_postgres)
    await asyncio.to_thread(upgrade_to_head, as_role(url, "ttp_owner", PASSWORD))
    rules = tmp_path / "rules"
    rules.mkdir()
    for rule_id in ("R0001", "R0002", "R0003"):
        (rules / f"{rule_id}.yaml").write_text(rule_text("R0001", as_id=rule_id))
    app_url = as_role(url, "ttp_app", PASSWORD)
    settings = master_settings(private_nats.url, app_url, rules, migrate_at_start=False)
    async with running_master(settings):
        owner_dsn = as_role(url, "ttp_owner", PASSWORD).replace("+psycopg", "")
        assert set(await db_rules(owner_dsn)) == {"R0001", "R0002", "R0003"}
    # The role really is DML only: it cannot change the schema.
    with (
        psycopg.connect(app_url.replace("+psycopg", "")) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CREATE TABLE ttp_intruder (id int)")


async def test_a_dml_only_master_refuses_an_unmigrated_schema_clearly(
    private_nats: Any, private_postgres: Any, tmp_path: Any
) -> None:
    url = make_roles(private_postgres)
    settings = master_settings(
        private_nats.url, as_role(url, "ttp_app", PASSWORD), tmp_path, migrate_at_start=False
    )
    with pytest.raises(SchemaNotAtHeadError, match=r"not migrated.*ttp-master migrate"):
        async with running_master(settings):
            pass


def failure_texts(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    shown = "".join(traceback.format_exception(exc))
    records = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in caplog.records)
    return f"{shown}\n{records}\n{caplog.text}"


@pytest.mark.parametrize("migrate_at_start", [True, False])
async def test_a_wrong_database_password_shows_in_no_log_or_error(
    private_nats: Any,
    private_postgres: Any,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    migrate_at_start: bool,
) -> None:
    url = make_roles(private_postgres)
    require_passwords(private_postgres)
    wrong = "Wr0ng-pa55word-of-ttp-app"
    settings = master_settings(
        private_nats.url,
        as_role(url, "ttp_app", wrong),
        tmp_path,
        migrate_at_start=migrate_at_start,
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as failed:
        async with running_master(settings):
            pass
    texts = failure_texts(failed.value, caplog)
    assert "password authentication failed" in texts  # the cause is shown...
    assert wrong not in texts  # ...the password is not
    assert wrong not in repr(settings) and wrong not in settings.model_dump_json()


async def test_an_unreachable_database_shows_its_password_in_no_log_or_error(
    private_nats: Any, private_postgres: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = urlsplit(private_postgres.url).port
    private_postgres.close()  # nothing listens on its port any more
    url = f"postgresql+psycopg://ttp_app:{PASSWORD}@127.0.0.1:{port}/ttp"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as failed:
        async with running_master(master_settings(private_nats.url, url, tmp_path)):
            pass
    texts = failure_texts(failed.value, caplog)
    assert "refused" in texts.lower()
    assert PASSWORD not in texts


async def test_the_leader_lock_shows_no_password_in_logs_or_readiness(
    private_postgres: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_roles(private_postgres)
    require_passwords(private_postgres)
    wrong = "An0ther-wr0ng-pa55word"
    lock = LeaderLock(DatabaseTarget.of(as_role(url, "ttp_app", wrong)), 77, poll_interval=0.05)
    stop = asyncio.Event()
    caplog.set_level(logging.DEBUG)
    attempt = asyncio.create_task(lock.acquire(stop))
    async with asyncio.timeout(30):
        while lock.postgres_error is None:
            await asyncio.sleep(0.02)
    stop.set()
    assert await attempt is False
    assert "password authentication failed" in caplog.text
    assert wrong not in caplog.text
    assert wrong not in lock.waiting_because
