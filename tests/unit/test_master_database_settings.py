"""The database URL is a secret, and the PostgreSQL TLS settings reach every connection."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from ttp_master import bootstrap
from ttp_master.db import migrate
from ttp_master.db.target import DatabaseTarget, DatabaseUrlError
from ttp_master.leader import LeaderLock
from ttp_master.outbox_relay import OutboxRelay
from ttp_master.settings import MasterSettings

PASSWORD = "s3cr3t-pw-never-shown"
URL = f"postgresql+psycopg://ttp:{PASSWORD}@db.example:5432/ttp"


def test_the_database_password_is_in_no_repr_dump_or_target_text() -> None:
    settings = MasterSettings(database_url=URL)  # type: ignore[arg-type]
    target = settings.database_target()
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        repr(target),
        repr(target.sqlalchemy_url()),
        str(target.sqlalchemy_url()),
    ]
    for text in shown:
        assert PASSWORD not in text
    assert PASSWORD in target.libpq_conninfo()  # only what psycopg itself is given


def test_an_unparseable_database_url_is_refused_without_quoting_it() -> None:
    target = DatabaseTarget.of(f"not a url {PASSWORD}")
    with pytest.raises(DatabaseUrlError) as refused:
        target.sqlalchemy_url()
    assert PASSWORD not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def test_ssl_settings_become_libpq_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTP_DATABASE_URL", URL)
    monkeypatch.setenv("TTP_DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("TTP_DATABASE_SSLROOTCERT", "/run/secrets/pg/ca.crt")
    monkeypatch.setenv("TTP_DATABASE_SSLCERT", "/run/secrets/pg/tls.crt")
    monkeypatch.setenv("TTP_DATABASE_SSLKEY", "/run/secrets/pg/tls.key")
    target = MasterSettings().database_target()
    expected = {
        "sslmode": "verify-full",
        "sslrootcert": "/run/secrets/pg/ca.crt",
        "sslcert": "/run/secrets/pg/tls.crt",
        "sslkey": "/run/secrets/pg/tls.key",
    }
    assert target.engine_kwargs() == {"connect_args": expected}
    assert target.psycopg_kwargs() == expected


def test_unset_ssl_settings_leave_the_url_and_libpq_defaults_alone() -> None:
    target = MasterSettings(database_url=f"{URL}?sslmode=require").database_target()  # type: ignore[arg-type]
    assert target.psycopg_kwargs() == {}
    assert target.libpq_conninfo().endswith("?sslmode=require")


def test_an_unknown_sslmode_is_refused() -> None:
    with pytest.raises(ValueError, match="database_sslmode"):
        MasterSettings(database_sslmode="sometimes")  # type: ignore[arg-type]


async def test_the_leader_lock_connects_with_the_ssl_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    async def fake_connect(conninfo: str, **kwargs: Any) -> Any:
        seen.update(kwargs, conninfo=conninfo)
        raise OSError("stop here")

    monkeypatch.setattr("psycopg.AsyncConnection.connect", fake_connect)
    target = DatabaseTarget.from_parts(
        MasterSettings(database_url=URL).database_url,  # type: ignore[arg-type]
        sslmode="verify-ca",
        sslrootcert=Path("/ca.crt"),
    )
    with pytest.raises(OSError, match="stop here"):
        await LeaderLock(target, 1)._try_acquire()
    assert seen["sslmode"] == "verify-ca"
    assert seen["sslrootcert"] == "/ca.crt"
    assert seen["conninfo"].startswith("postgresql://ttp:")


def test_the_migration_engine_gets_the_ssl_parameters(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, Any] = {}

    def fake_create_engine(url: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, url=url)
        raise OSError("stop here")

    monkeypatch.setattr(migrate, "create_engine", fake_create_engine)
    target = DatabaseTarget.from_parts(
        MasterSettings(database_url=URL).database_url,  # type: ignore[arg-type]
        sslmode="require",
        sslkey=Path("/k"),
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(OSError, match="stop here"):
        migrate.upgrade_to_head(target)
    assert seen["connect_args"] == {"sslmode": "require", "sslkey": "/k"}
    assert seen["url"].password == PASSWORD
    assert PASSWORD not in caplog.text


async def test_the_relay_listen_connection_gets_the_ssl_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stop = asyncio.Event()
    seen: dict[str, Any] = {}

    async def fake_connect(conninfo: str, **kwargs: Any) -> Any:
        seen.update(kwargs, conninfo=conninfo)
        stop.set()
        raise psycopg.OperationalError("stop here")

    monkeypatch.setattr("psycopg.AsyncConnection.connect", fake_connect)
    target = DatabaseTarget.from_parts(
        MasterSettings(database_url=URL).database_url,  # type: ignore[arg-type]
        sslmode="verify-full",
        sslcert=Path("/c"),
    )
    engine = create_async_engine(target.sqlalchemy_url())  # never connects here
    relay = OutboxRelay(engine, target, publisher=None, is_leader=lambda: True)  # type: ignore[arg-type]
    await asyncio.wait_for(relay._listen(stop), 10)
    await engine.dispose()
    assert seen["sslmode"] == "verify-full" and seen["sslcert"] == "/c"
    assert seen["application_name"] == "ttp-master-relay"


@pytest.mark.parametrize("migrate_at_start", [True, False])
async def test_the_master_engine_gets_the_ssl_parameters(
    monkeypatch: pytest.MonkeyPatch, migrate_at_start: bool
) -> None:
    schema: list[tuple[str, DatabaseTarget]] = []
    seen: dict[str, Any] = {}

    def fake_create_async_engine(url: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, url=url)
        raise OSError("stop here")

    monkeypatch.setattr(bootstrap, "upgrade_to_head", lambda t: schema.append(("upgrade", t)))
    monkeypatch.setattr(bootstrap, "require_head", lambda t: schema.append(("check", t)))
    monkeypatch.setattr(bootstrap, "create_async_engine", fake_create_async_engine)
    settings = MasterSettings(
        database_url=URL,  # type: ignore[arg-type]
        database_sslmode="require",
        database_sslrootcert=Path("/ca"),
        migrate_at_start=migrate_at_start,
        http_host="127.0.0.1",
        http_port=0,
    )
    with pytest.raises(OSError, match="stop here"):
        await bootstrap.Master(settings).run()
    expected = {"sslmode": "require", "sslrootcert": "/ca"}
    assert seen["connect_args"] == expected
    assert [(kind, dict(t.connect_args)) for kind, t in schema] == [
        ("upgrade" if migrate_at_start else "check", expected)
    ]
