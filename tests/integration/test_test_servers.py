"""The test-server ladder works: real JetStream and real PostgreSQL, crash and come back.

These tests prove the foundation the other integration tests stand on (tests/conftest.py and
ttp_runtime.embedded), whichever rung of the ladder supplied the servers.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from ttp_runtime.embedded import (
    RESERVED_PORTS,
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
)

if TYPE_CHECKING:
    from tests.conftest import JetStreamNames, NatsServer, PostgresServer


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------
# JetStream
# --------------------------------------------------------------------------------------------


async def test_publish_with_msg_id_is_deduplicated(
    nc: NatsClient, js_names: JetStreamNames
) -> None:
    js = nc.jetstream()
    stream = js_names.stream("DEDUP")
    subject = js_names.subject("ttp.rule.reloaded.R0001")
    await js.add_stream(StreamConfig(name=stream, subjects=[subject], duplicate_window=60.0))

    headers = {"Nats-Msg-Id": "rule-R0001-rev-1"}
    first = await js.publish(subject, b"one", headers=headers)
    second = await js.publish(subject, b"one again", headers=headers)
    third = await js.publish(subject, b"two", headers={"Nats-Msg-Id": "rule-R0001-rev-2"})

    assert not first.duplicate
    assert second.duplicate
    assert second.seq == first.seq
    assert third.seq == first.seq + 1
    info = await js.stream_info(stream)
    assert info.state.messages == 2


async def test_max_msgs_per_subject_keeps_last_message(
    nc: NatsClient, js_names: JetStreamNames
) -> None:
    js = nc.jetstream()
    stream = js_names.stream("RULES")
    await js.add_stream(
        StreamConfig(
            name=stream,
            subjects=[js_names.subject("ttp.rule.>")],
            max_msgs_per_subject=1,
            storage=StorageType.FILE,
        )
    )
    for revision in range(1, 4):
        await js.publish(js_names.subject("ttp.rule.reloaded.A"), f"A{revision}".encode())
    for revision in range(1, 3):
        await js.publish(js_names.subject("ttp.rule.reloaded.B"), f"B{revision}".encode())

    info = await js.stream_info(stream)
    assert info.state.messages == 2
    last_a = await js.get_last_msg(stream, js_names.subject("ttp.rule.reloaded.A"))
    last_b = await js.get_last_msg(stream, js_names.subject("ttp.rule.reloaded.B"))
    assert last_a.data == b"A3"
    assert last_b.data == b"B2"


async def test_pull_consumer_fetch_and_ack(nc: NatsClient, js_names: JetStreamNames) -> None:
    js = nc.jetstream()
    stream = js_names.stream("EVENTS")
    subject = js_names.subject("ttp.event.command")
    await js.add_stream(StreamConfig(name=stream, subjects=[js_names.subject("ttp.event.>")]))
    for number in range(5):
        await js.publish(subject, f"event-{number}".encode())

    sub = await js.pull_subscribe(
        subject,
        durable="workers",
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
    )
    received: list[bytes] = []
    while len(received) < 5:
        for msg in await sub.fetch(5 - len(received), timeout=5):
            received.append(msg.data)
            await msg.ack_sync()

    assert received == [f"event-{number}".encode() for number in range(5)]
    consumer = await js.consumer_info(stream, "workers")
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0
    await sub.unsubscribe()


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def test_database_url_is_sqlalchemy_style(database_url: str, database_dsn: str) -> None:
    assert database_url.startswith("postgresql+psycopg://")
    assert database_dsn.startswith("postgresql://")
    assert urllib.parse.urlsplit(database_url).path == urllib.parse.urlsplit(database_dsn).path


def test_write_and_read_in_per_test_database(database_dsn: str) -> None:
    with psycopg.connect(database_dsn) as conn:
        conn.execute("CREATE TABLE rule (rule_id text PRIMARY KEY, revision bigint NOT NULL)")
        conn.execute("INSERT INTO rule VALUES (%s, %s), (%s, %s)", ("R0001", 1, "R0002", 2))
        conn.commit()
    with psycopg.connect(database_dsn) as conn:
        rows = conn.execute("SELECT rule_id, revision FROM rule ORDER BY rule_id").fetchall()
    assert rows == [("R0001", 1), ("R0002", 2)]


_seen_databases: list[str] = []


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_its_own_fresh_database(database_dsn: str, attempt: int) -> None:
    with psycopg.connect(database_dsn) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        # Fresh: whatever the other attempt created is not here, in whichever order they run.
        assert tables == (0,)
        conn.execute("CREATE TABLE marker (attempt int)")
        conn.execute("INSERT INTO marker VALUES (%s)", (attempt,))
        conn.commit()
    assert name is not None
    assert name[0] == urllib.parse.urlsplit(database_dsn).path.lstrip("/")
    assert name[0] not in _seen_databases
    _seen_databases.append(name[0])


def test_per_test_database_is_dropped_afterwards(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    postgres_server.drop_database(url)
    with psycopg.connect(postgres_server.dsn) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None


# --------------------------------------------------------------------------------------------
# Crash and restart
# --------------------------------------------------------------------------------------------


async def test_nats_killed_and_restarted_keeps_stream_and_client_reconnects(
    private_nats: NatsServer, js_names: JetStreamNames
) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    async def quiet(_: Exception) -> None:
        # Connection errors while the server is down are the point of this test.
        return None

    client = await nats.connect(
        private_nats.url,
        connect_timeout=2,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        reconnected_cb=on_reconnect,
        error_cb=quiet,
    )
    try:
        js = client.jetstream()
        stream = js_names.stream("DURABLE")
        subject = js_names.subject("ttp.rule.reloaded.R1")
        await js.add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE))
        for number in range(3):
            await js.publish(subject, f"m{number}".encode(), headers={"Nats-Msg-Id": str(number)})
        port, pid = private_nats.embedded.port, private_nats.embedded.pid

        private_nats.kill()
        assert not private_nats.embedded.is_running
        private_nats.restart()

        assert private_nats.embedded.port == port
        assert private_nats.embedded.pid != pid
        await asyncio.wait_for(reconnected.wait(), timeout=30)
        info = await js.stream_info(stream)
        assert info.state.messages == 3
        assert (await js.get_last_msg(stream, subject)).data == b"m2"
        # The dedup window survived too: a replay of an acknowledged id stores nothing.
        replay = await js.publish(subject, b"m2", headers={"Nats-Msg-Id": "2"})
        assert replay.duplicate
        fresh = await js.publish(subject, b"m3", headers={"Nats-Msg-Id": "3"})
        assert fresh.seq == 4
    finally:
        await client.close()


def test_postgres_killed_and_restarted_keeps_data(private_postgres: PostgresServer) -> None:
    dsn = libpq(private_postgres.create_database())
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE outbox (revision bigint PRIMARY KEY, body text)")
        conn.execute("INSERT INTO outbox VALUES (1, 'committed')")
        conn.commit()
    port = private_postgres.embedded.port

    open_conn = psycopg.connect(dsn)
    private_postgres.kill()
    with pytest.raises(psycopg.OperationalError):
        open_conn.execute("SELECT 1")
    open_conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)

    private_postgres.restart()
    assert private_postgres.embedded.port == port
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT revision, body FROM outbox").fetchall()
    assert rows == [(1, "committed")]


def test_shared_server_fault_injection_is_explicit(nats_server: NatsServer) -> None:
    if nats_server.supports_faults:
        assert nats_server.source == "embedded"
    else:
        with pytest.raises(RuntimeError, match="private_nats"):
            nats_server.kill()


# --------------------------------------------------------------------------------------------
# The launchers themselves (ttp_runtime.embedded), as `ttpctl dev` will use them
# --------------------------------------------------------------------------------------------


async def test_embedded_nats_persistent_data_dir_survives_close(tmp_path: Path) -> None:
    data_dir = tmp_path / ".ttp" / "nats"
    with EmbeddedNats(data_dir=data_dir) as server:
        port = server.port
        assert port not in RESERVED_PORTS
        client = await nats.connect(server.url)
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
        await js.publish("keep.one", b"1")
        await client.close()
    assert (data_dir / "jetstream").is_dir()

    with EmbeddedNats(data_dir=data_dir, port=port) as server:
        client = await nats.connect(server.url)
        info = await client.jetstream().stream_info("KEEP")
        await client.close()
    assert info.state.messages == 1


def test_embedded_postgres_persistent_data_dir_survives_close() -> None:
    # Not tmp_path: pytest makes it 0700, and as root the server runs as another account
    # that must be able to enter the data directory.
    with tempfile.TemporaryDirectory(prefix="ttp-test-") as parent:
        Path(parent).chmod(0o755)
        data_dir = Path(parent) / "pg"
        with EmbeddedPostgres(data_dir=data_dir) as server:
            assert server.durable
            assert server.port not in RESERVED_PORTS
            assert server.ensure_database("ttp")
            assert not server.ensure_database("ttp")
            with psycopg.connect(server.dsn_for("ttp")) as conn:
                conn.execute("CREATE TABLE kept (x int)")
                conn.execute("INSERT INTO kept VALUES (42)")
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        with (
            EmbeddedPostgres(data_dir=data_dir) as server,
            psycopg.connect(server.dsn_for("ttp")) as conn,
        ):
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_embedded_start_failure_reports_log_tail() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedNats(port=port)
        with pytest.raises(EmbeddedServerError, match="address already in use") as caught:
            server.start()
        server.close()
    assert "nats-server.log" in str(caught.value)
    assert not server.is_running


def libpq(url: str) -> str:
    """libpq form of a SQLAlchemy URL."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(scheme="postgresql"))
