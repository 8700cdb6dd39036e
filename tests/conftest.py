"""Shared pytest fixtures.

Real servers for integration tests
==================================

``nats_server`` (NATS with JetStream) and ``postgres_server`` (PostgreSQL) are session-scoped
and start only when a test asks for them, so unit tests never pay for them. Each is found by
the first rung of this ladder that works:

1. a URL from the environment: ``TTP_TEST_NATS_URL`` (``nats://host:port``, JetStream on) and
   ``TTP_TEST_DATABASE_URL`` (a PostgreSQL *server*, SQLAlchemy style, e.g.
   ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``; its database is only used to
   create and drop per-test databases);
2. a testcontainers container, when a Docker engine answers within a second (set
   ``TTP_TEST_DOCKER=0`` to skip this rung; images from ``TTP_TEST_NATS_IMAGE`` and
   ``TTP_TEST_POSTGRES_IMAGE``);
3. a server process started by the suite from pip-installed binaries
   (:mod:`ttp_runtime.embedded`), on free random ports with data in temporary directories;
   every embedded PostgreSQL starts from a copy of one cluster, made by the session's only
   ``initdb``.

Per test: ``nats_url``; ``database_url`` / ``database_dsn`` name a fresh database dropped
afterwards; ``js_names`` gives unique JetStream stream names and subject prefixes.
Fault injection: the server handles have ``kill()`` / ``restart()`` when the suite launched the
server itself; ``private_nats`` / ``private_postgres`` always give a test its own embedded
server, whatever the ladder chose, so a test may crash it without disturbing others.

Compiled modules are cached
===========================

The suite starts hundreds of Python processes (masters, workers, ``ttpctl``, the master's
validation processes), and each imports pydantic, SQLAlchemy, nats-py and the services. Where
``PYTHONDONTWRITEBYTECODE`` is set (container images often set it) and no ``.pyc`` exists yet (a
fresh clone, or a venv installed without compiling), every one of them compiled all of that
from source again: most of a master's start-up. The session therefore writes ``__pycache__``
(git- and docker-ignored) for itself and every process it starts, so each module is compiled
once. ``TTP_TEST_BYTECODE_CACHE=0`` keeps the environment's setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import socket
import sys
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

Source = Literal["env", "testcontainers", "embedded"]


def _cache_compiled_modules() -> None:
    # Before the test modules import the services, so the session's own imports fill the
    # cache that the processes it starts then read. Children inherit os.environ.
    if os.environ.get("TTP_TEST_BYTECODE_CACHE", "").lower() in {"0", "false", "no", "off"}:
        return
    sys.dont_write_bytecode = False
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_cache_compiled_modules()

_DOCKER_PROBE_TIMEOUT_S = 1.0
# What each session-scoped server turned out to be, for the terminal summary.
_chosen: dict[str, str] = {}


# --------------------------------------------------------------------------------------------
# URL helpers
# --------------------------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """Turn a SQLAlchemy URL (``postgresql+psycopg://...``) into a libpq/psycopg one."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{database}"))


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _require_reachable(variable: str, url: str, default_port: int) -> None:
    # An explicit URL is a promise: if it does not answer, fail loudly rather than quietly
    # testing against something else.
    host, port = _host_port(url, default_port)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"{variable}={url} is not reachable: {exc}", pytrace=False)


# --------------------------------------------------------------------------------------------
# Docker probe (rung 2)
# --------------------------------------------------------------------------------------------

_docker_answer: bool | None = None


def docker_engine_available() -> bool:
    """True when a Docker engine answers ``/_ping`` quickly; cached for the session.

    Talks to the socket directly: a docker CLI without an engine, or the Docker SDK waiting on
    a dead socket, must cost nothing and print nothing.
    """
    global _docker_answer  # noqa: PLW0603 (one probe per session)
    if _docker_answer is None:
        _docker_answer = _probe_docker()
    return _docker_answer


def _probe_docker() -> bool:
    if os.environ.get("TTP_TEST_DOCKER", "").lower() in {"0", "false", "no", "off"}:
        return False
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    parts = urllib.parse.urlsplit(host)
    try:
        if parts.scheme == "unix":
            if not os.path.exists(parts.path):
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_DOCKER_PROBE_TIMEOUT_S)
            sock.connect(parts.path)
        elif parts.scheme == "tcp":
            sock = socket.create_connection(
                (parts.hostname or "127.0.0.1", parts.port or 2375),
                timeout=_DOCKER_PROBE_TIMEOUT_S,
            )
        else:
            # ssh://, npipe://: not worth a slow probe; the embedded rung works everywhere.
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return b" 200" in status_line


# --------------------------------------------------------------------------------------------
# Server handles
# --------------------------------------------------------------------------------------------


@dataclass
class _ServerHandle:
    """A test server from any rung; fault injection only on servers the suite launched."""

    source: Source
    url: str
    embedded: Any = None  # the ttp_runtime.embedded server when source == "embedded"
    _container: Any = None

    # For the error message when a test tries to crash a server that is not the suite's.
    _what: ClassVar[str] = "server"
    _private_fixture: ClassVar[str] = "a private server"

    @property
    def supports_faults(self) -> bool:
        """True when the suite owns the process, so kill()/restart() are possible."""
        return self.embedded is not None

    def kill(self) -> None:
        """SIGKILL the server (only for servers the suite launched)."""
        self._owned().kill()

    def restart(self) -> None:
        """Start the server again on the same port with the same data."""
        self._owned().restart()

    def ensure_running(self) -> None:
        """Bring back a suite-launched server that a previous test left killed."""
        if self.embedded is not None and not self.embedded.is_running:
            self.embedded.start()

    def _owned(self) -> Any:
        if self.embedded is None:
            raise RuntimeError(
                f"the {self.source} {self._what} is not the suite's to kill;"
                f" use {self._private_fixture}"
            )
        return self.embedded

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.close()
        if self._container is not None:
            self._container.stop()


@dataclass
class NatsServer(_ServerHandle):
    """A NATS server (JetStream on) for tests, whichever rung it came from."""

    _what: ClassVar[str] = "NATS server"
    _private_fixture: ClassVar[str] = "private_nats"


@dataclass
class PostgresServer(_ServerHandle):
    """A PostgreSQL server for tests; ``url`` names its administrative database."""

    _what: ClassVar[str] = "PostgreSQL server"
    _private_fixture: ClassVar[str] = "private_postgres"
    _databases: set[str] = field(default_factory=set)

    @property
    def dsn(self) -> str:
        """libpq form of :attr:`url`."""
        return libpq_url(self.url)

    def create_database(self) -> str:
        """Create a uniquely named database; return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = f"ttp_test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._databases.add(name)
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, disconnecting its sessions."""
        import psycopg
        from psycopg import sql

        name = urllib.parse.urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        self._databases.discard(name)


# --------------------------------------------------------------------------------------------
# The ladder
# --------------------------------------------------------------------------------------------


def _start_embedded_nats() -> NatsServer:
    from ttp_runtime.embedded import EmbeddedNats

    with contextlib.ExitStack() as guard:
        server = EmbeddedNats()
        guard.callback(server.close)
        server.start()
        guard.pop_all()
    return NatsServer(source="embedded", url=server.url, embedded=server)


# A cluster made by the session's one initdb and stopped cleanly. Every embedded PostgreSQL
# starts from a copy of it: initdb took most of a private server's start, a copy a fraction.
_postgres_template: Any = None


def _postgres_cluster_template() -> Path:
    """The template cluster's data directory (pgdata), made on first use."""
    global _postgres_template  # noqa: PLW0603 (one initdb per session)
    if _postgres_template is None:
        from ttp_runtime.embedded import EmbeddedPostgres

        template = EmbeddedPostgres()
        try:
            template.start()
            template.stop()
        except BaseException:
            template.close()
            raise
        _postgres_template = template
    pgdata: Path = _postgres_template.pgdata
    return pgdata


def _copy_cluster(template: Path, pgdata: Path) -> None:
    shutil.copytree(template, pgdata, symlinks=True)
    owner = template.stat()
    if os.geteuid() == 0 and owner.st_uid != 0:
        # Run as root, PostgreSQL runs as another account, which must own its files.
        for path in [pgdata, *pgdata.rglob("*")]:
            os.lchown(path, owner.st_uid, owner.st_gid)


def _start_embedded_postgres() -> PostgresServer:
    from ttp_runtime.embedded import EmbeddedPostgres

    with contextlib.ExitStack() as guard:
        server = EmbeddedPostgres()
        guard.callback(server.close)
        _copy_cluster(_postgres_cluster_template(), server.pgdata)
        server.start()
        guard.pop_all()
    return PostgresServer(source="embedded", url=server.url, embedded=server)


def _start_nats_container() -> NatsServer | None:
    try:
        from testcontainers.community.nats import NatsContainer
    except ImportError:  # older testcontainers releases: top-level module
        from testcontainers.nats import NatsContainer  # type: ignore[no-redef]

    image = os.environ.get("TTP_TEST_NATS_IMAGE", "nats:latest")
    container = None
    try:
        # The image's default command loads a config file; ours replaces it, so JetStream and
        # the monitoring port are switched on explicitly. The constructor already talks to
        # the engine, hence inside the try.
        container = NatsContainer(image=image).with_command("-js -m 8222")
        container.start()
    except Exception as exc:  # any failure means: use the next rung
        warnings.warn(f"NATS container did not start ({exc}); using embedded", stacklevel=2)
        if container is not None:
            with contextlib.suppress(Exception):
                container.stop()
        return None
    return NatsServer(source="testcontainers", url=container.nats_uri(), _container=container)


def _start_postgres_container() -> PostgresServer | None:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # older testcontainers releases: top-level module
        from testcontainers.postgres import PostgresContainer  # type: ignore[no-redef]

    image = os.environ.get("TTP_TEST_POSTGRES_IMAGE", "postgres:18")
    container = None
    try:
        container = PostgresContainer(
            image=image,
            username="postgres",
            password="postgres",
            dbname="postgres",
            driver="psycopg",
        )
        container.start()
    except Exception as exc:  # any failure means: use the next rung
        warnings.warn(f"PostgreSQL container did not start ({exc}); using embedded", stacklevel=2)
        if container is not None:
            with contextlib.suppress(Exception):
                container.stop()
        return None
    url = container.get_connection_url()
    return PostgresServer(source="testcontainers", url=url, _container=container)


def _find_nats() -> NatsServer:
    url = os.environ.get("TTP_TEST_NATS_URL")
    if url:
        _require_reachable("TTP_TEST_NATS_URL", url, 4222)
        return NatsServer(source="env", url=url)
    if docker_engine_available():
        server = _start_nats_container()
        if server is not None:
            return server
    return _start_embedded_nats()


def _find_postgres() -> PostgresServer:
    url = os.environ.get("TTP_TEST_DATABASE_URL")
    if url:
        _require_reachable("TTP_TEST_DATABASE_URL", url, 5432)
        return PostgresServer(source="env", url=url)
    if docker_engine_available():
        server = _start_postgres_container()
        if server is not None:
            return server
    return _start_embedded_postgres()


# --------------------------------------------------------------------------------------------
# JetStream names
# --------------------------------------------------------------------------------------------

_SESSION_TOKEN = secrets.token_hex(3)
_name_counter = itertools.count(1)
# Every stream name handed out, so streams left on an outside server can be deleted.
_issued_streams: set[str] = set()


@dataclass(frozen=True)
class JetStreamNames:
    """Unique JetStream names for one test, so tests sharing a server never collide.

    ``token`` is one NATS subject token (letters and digits) unique in the test session.
    """

    token: str

    def stream(self, base: str) -> str:
        """A stream name: ``<base>_<token>``."""
        name = f"{base}_{self.token}"
        _issued_streams.add(name)
        return name

    def subject(self, subject: str) -> str:
        """``subject`` under this test's prefix: ``<token>.<subject>``."""
        return f"{self.token}.{subject}"

    @property
    def prefix(self) -> str:
        """The subject prefix, ``<token>.``."""
        return f"{self.token}."


async def _delete_streams(url: str, names: set[str]) -> None:
    import nats
    from nats.js.errors import NotFoundError

    client = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = client.jetstream()
        for name in sorted(names):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """The session's NATS server (env URL -> testcontainers -> embedded)."""
    started = time.monotonic()
    server = _find_nats()
    _chosen["nats"] = f"{server.source} {server.url} ({time.monotonic() - started:.1f} s)"
    try:
        yield server
    finally:
        if server.source == "env" and _issued_streams:
            # An outside server outlives the session: take our streams away with us.
            try:
                asyncio.run(_delete_streams(server.url, _issued_streams))
            except Exception as exc:  # cleanup must not fail the session
                warnings.warn(f"could not delete test streams: {exc}", stacklevel=1)
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (env URL -> testcontainers -> embedded)."""
    started = time.monotonic()
    server = _find_postgres()
    safe_url = urllib.parse.urlsplit(server.url)._replace(netloc=_host_netloc(server.url))
    _chosen["postgres"] = (
        f"{server.source} {urllib.parse.urlunsplit(safe_url)} ({time.monotonic() - started:.1f} s)"
    )
    try:
        yield server
    finally:
        server.close()


def _host_netloc(url: str) -> str:
    # Passwords stay out of the terminal summary.
    host, port = _host_port(url, 5432)
    return f"{host}:{port}"


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """URL of the session's NATS server, running."""
    nats_server.ensure_running()
    return nats_server.url


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database of this test's own, dropped afterwards."""
    postgres_server.ensure_running()
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.ensure_running()
        postgres_server.drop_database(url)


@pytest.fixture
def database_dsn(database_url: str) -> str:
    """libpq/psycopg URL of this test's database (the same database as ``database_url``)."""
    return libpq_url(database_url)


@pytest.fixture
def js_names() -> JetStreamNames:
    """Unique JetStream stream names and subject prefix for this test."""
    return JetStreamNames(token=f"t{_SESSION_TOKEN}n{next(_name_counter)}")


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    """An embedded NATS server for this test alone, free to kill and restart."""
    server = _start_embedded_nats()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """An embedded PostgreSQL server for this test alone, free to kill and restart."""
    server = _start_embedded_postgres()
    try:
        yield server
    finally:
        server.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the template cluster (the launchers' exit hook would, a little later)."""
    if _postgres_template is not None:
        _postgres_template.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which servers the integration tests ran against."""
    if _chosen:
        terminalreporter.section("ttp test servers")
        for name, description in sorted(_chosen.items()):
            terminalreporter.write_line(f"{name}: {description}")
