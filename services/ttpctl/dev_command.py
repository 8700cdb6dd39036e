"""`ttpctl dev`: the whole system on one machine, for trying it out (`make run`).

Starts embedded NATS and PostgreSQL (unless ``TTP_NATS_URL`` / ``TTP_DATABASE_URL`` are set),
the master and N workers as child processes, and shows a live status until Ctrl-C / SIGTERM.
Data and logs live under ``--data-dir`` (default ``.ttp``) and persist between runs; the
embedded servers' ports are chosen once and kept in ``<data-dir>/ports.json``.

The embedded NATS runs the shipped accounts config (``ttp_runtime/nats_accounts.conf``, see
docs/security.md), so every process connects as its role: the master as ``master``, workers as
``worker``, the demo feed as ``producer`` and the live status as ``consumer``. Each role's
settings are in ``<data-dir>/credentials/<role>.env`` (mode 0600), made once per data
directory and reused by later runs, so a shell using them keeps working across restarts.

The web console runs beside them with ``console.env`` (its own account and ``_INBOX_console``
inbox), on 127.0.0.1 at the port kept in ``ports.json`` as ``console``, with the dev logins
and session key kept under ``<data-dir>/console/`` (see :mod:`ttpctl.dev_console`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ttp_core.contract import subjects
from ttp_core.contract.payloads import HoneypotEvent, encode, envelope
from ttp_runtime.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError
from ttp_runtime.nats import publish_js
from ttp_runtime.nats_roles import (
    ROLES,
    Role,
    RoleCredentials,
    embedded_server_options,
    generate_credentials,
    read_credential_files,
    write_credential_files,
)
from ttp_runtime.settings import ServiceSettings
from ttpctl.dev_console import (
    CONSOLE_DIRECTORY,
    ConsoleSetupError,
    DevConsole,
    choose_console_port,
    prepare_dev_console,
    private_directory_problem,
)
from ttpctl.nats_session import NatsSessionError, open_nats

__all__ = ["RefusalCounter", "dev_app", "dev_command"]

_STOP_TIMEOUT_S = 10.0
_DEMO_SOURCE = "ttp-rulebus/ttpctl-dev-demo"
_RATE_WINDOW_S = 5.0
_CREDENTIALS_DIR = "credentials"
# The variables of the caller's environment that configure a NATS client; with the embedded
# server each child gets its role's instead, never a token or TLS file meant for another one.
_NATS_CLIENT_PREFIX = "TTP_NATS_"
_ENV_FILE_VARIABLE = "TTP_ENV_FILE"
# The console never touches PostgreSQL nor reads the rules directory: it is not told where.
_NOT_FOR_CONSOLE = frozenset({"TTP_DATABASE_URL", "TTP_RULES_DIR"})


class _StopRequestedError(Exception):
    """Raised by the SIGTERM handler while servers start (before the event loop runs)."""


@dataclass(frozen=True)
class _Bus:
    """How dev's processes reach NATS.

    With the embedded server, ``credentials`` holds every role's and ``credentials_dir`` their
    files. With a server of the caller's (``TTP_NATS_URL`` set) both are None, and every
    process uses the caller's ``TTP_NATS_*`` settings as they are.
    """

    url: str
    credentials: dict[Role, RoleCredentials] | None = None
    credentials_dir: Path | None = None

    def child_environment(self, base: dict[str, str], role: Role) -> dict[str, str]:
        """``base`` with the NATS settings of ``role``."""
        if self.credentials is None:
            return {**base, "TTP_NATS_URL": self.url}
        inherited = {
            k: v
            for k, v in base.items()
            if not k.startswith(_NATS_CLIENT_PREFIX) and k != _ENV_FILE_VARIABLE
        }
        return {**inherited, **self.credentials[role].client_environment(self.url)}

    def settings(self, role: Role) -> ServiceSettings | None:
        """The client settings of ``role``; None: the caller's environment."""
        if self.credentials is None:
            return None
        return self.credentials[role].client_settings(self.url)

    def hints(self) -> list[str]:
        """Ready-to-paste command lines acting as the operator, a viewer and a consumer."""
        program = _ttpctl_program()
        directory = self.credentials_dir
        if directory is None:
            return [
                f"follow tags: {program} tags tail   fleet: {program} fleet status",
                f"mute a rule: {program} state set RULE --disable --for 1h --reason TEXT",
            ]

        def as_role(role: Role, command: str) -> str:
            path = shlex.quote(str(directory / f"{role}.env"))
            return f"{program} --env-file {path} {command}"

        return [
            "as operator: "
            + as_role("operator", "state set RULE --disable --for 1h --reason TEXT"),
            f"as viewer:   {as_role('viewer', 'state show')}",
            f"follow tags: {as_role('consumer', 'tags tail')}",
        ]


def _ttpctl_program() -> str:
    """How to call this ttpctl from a shell: its name when PATH finds it, else its path."""
    invoked = sys.argv[0]
    on_path = shutil.which("ttpctl")
    with contextlib.suppress(OSError):
        if on_path and os.path.samefile(on_path, invoked):
            return "ttpctl"
    return shlex.quote(invoked) if os.sep in invoked else "ttpctl"


_ChildKind = Literal["master", "worker", "console"]


@dataclass
class _Child:
    name: str
    kind: _ChildKind
    process: subprocess.Popen[bytes]
    log_path: Path
    http_port: int


@dataclass(frozen=True)
class _Processes:
    """What dev started: the children, the embedded servers, and the console's status line."""

    children: list[_Child]
    servers: list[EmbeddedNats | EmbeddedPostgres]
    console_line: str


@dataclass
class _Status:
    """What the subscriptions saw; rendered about once a second."""

    ruleset: dict[str, Any] | None = None
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    tagged_events: int = 0
    tags: int = 0
    tag_times: deque[tuple[float, int]] = field(default_factory=deque)
    demo_published: int = 0
    demo_total: int = 0
    last_tags: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    refusals: RefusalCounter | None = None


@dataclass
class RefusalCounter:
    """Counts the "... Violation" lines nats-server logs from now on.

    A publish or subscribe violation means a process called something its role may not (a
    grant missing from the accounts config, or a process overstepping); an authorization
    violation, a login refused. Either is worth a developer's look.
    """

    path: Path
    offset: int = 0
    count: int = 0

    @classmethod
    def from_end_of(cls, path: Path) -> RefusalCounter:
        # The log is appended across runs: only this run's lines count.
        with contextlib.suppress(OSError):
            return cls(path, path.stat().st_size)
        return cls(path)

    def update(self) -> int:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except OSError:
            return self.count
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        self.count += sum(b" Violation" in line for line in complete.splitlines())
        return self.count


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child if ttpctl dies without cleaning up."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)


def _check_traversable(path: Path) -> str | None:
    """When root, PostgreSQL runs as ``nobody``: every ancestor needs o+x. Returns a problem."""
    if os.geteuid() != 0:
        return None
    for directory in [path, *path.parents]:
        if directory.exists() and not directory.stat().st_mode & 0o001:
            return (
                f"{directory} is not traversable by other users, but embedded PostgreSQL runs"
                f" as 'nobody' when ttpctl runs as root: run `chmod o+x {directory}` or choose"
                " another --data-dir"
            )
    return None


def _load_ports(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return (
        {k: int(v) for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}
    )


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _StopRequestedError


def _demo_events() -> list[dict[str, Any]]:
    text = resources.files("ttpctl").joinpath("demo_events.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


dev_app = typer.Typer()
"""Holds `ttpctl dev`; the app registers the command from here when it is used."""


@dev_app.command("dev")
def dev_command(
    demo: Annotated[bool, typer.Option("--demo", help="Feed a sample of honeypot events.")] = False,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Worker processes.")] = 2,
    data_dir: Annotated[Path, typer.Option(help="Data, ports and logs.")] = Path(".ttp"),
    rules_dir: Annotated[Path, typer.Option(help="Rules directory.")] = Path("rules"),
    http_port: Annotated[
        int,
        typer.Option(
            help="Master HTTP port (probes, metrics); the workers and then the console use"
            " the following ones."
        ),
    ] = 8080,
    exit_after_demo: Annotated[
        bool, typer.Option("--exit-after-demo", help="With --demo: exit once it was processed.")
    ] = False,
) -> None:
    """Run NATS, PostgreSQL, the master and workers locally with a live status.

    The embedded NATS enforces the shipped roles (docs/security.md); each
    process logs in as its own. Every role's settings are written once to
    DATA_DIR/credentials/ROLE.env (mode 0600) and reused by later runs.

    The web console runs too, on http://127.0.0.1 at the port kept in
    DATA_DIR/ports.json as "console"; ttpctl dev prints its URL and the dev logins
    dev (operator) and viewer (viewer), whose passwords are made once and kept
    in DATA_DIR/console/logins.env (mode 0600).

    Act as a role with ttpctl's global --env-file option, for example:

    ttpctl --env-file .ttp/credentials/operator.env state set RULE --disable --reason TEXT

    ttpctl --env-file .ttp/credentials/viewer.env state show

    A viewer may only read (state show, rules list, audit, fleet status).
    """
    console = Console()
    data_dir = data_dir.absolute()
    if not rules_dir.is_dir():
        console.print(f"[red]rules directory {rules_dir} does not exist[/red]")
        raise typer.Exit(2)
    data_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    nats_url = os.environ.get("TTP_NATS_URL")
    database_url = os.environ.get("TTP_DATABASE_URL")
    servers: list[EmbeddedNats | EmbeddedPostgres] = []
    children: list[_Child] = []
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)
    code = 0
    try:
        try:
            web = prepare_dev_console(
                data_dir / CONSOLE_DIRECTORY,
                lambda line: console.print(Text(line, style="yellow"), soft_wrap=True),
            )
        except ConsoleSetupError as exc:
            console.print(Text(f"cannot prepare the web console: {exc}", style="red"))
            raise typer.Exit(1) from None
        try:
            ports = _load_ports(data_dir / "ports.json")
            console_port, moved = choose_console_port(ports.get("console"))
            if moved:
                console.print(Text(f"warning: {moved}", style="yellow"), soft_wrap=True)
            ports["console"] = console_port
            bus, database_url = _start_servers(
                console, data_dir, nats_url, database_url, servers, ports
            )
        except EmbeddedServerError as exc:
            console.print(f"[red]could not start an embedded server:[/red] {exc}")
            raise typer.Exit(1) from None
        for line in [*bus.hints(), *web.banner(console_port)]:
            console.print(Text(line), soft_wrap=True)
        base_env = {
            **os.environ,
            "TTP_DATABASE_URL": database_url,
            "TTP_RULES_DIR": str(rules_dir.absolute()),
            "TTP_HTTP_HOST": "127.0.0.1",
            "TTP_LOG_FORMAT": "console",
            "TTP_STATUS_INTERVAL_S": "1",
        }
        _spawn_children(children, bus, base_env, data_dir, http_port, workers)
        children.append(
            _spawn(
                "console",
                "console",
                "ttp-console",
                _console_environment(bus, base_env, web, console_port),
                data_dir,
                http_port + workers + 1 if http_port else 0,
            )
        )
        code = asyncio.run(
            _supervise(
                console,
                bus,
                children,
                servers,
                web.status_line(console_port),
                demo,
                demo and exit_after_demo,
            )
        )
    except (KeyboardInterrupt, _StopRequestedError):
        code = 0
    finally:
        signal.signal(signal.SIGTERM, _raise_stop)
        with contextlib.suppress(KeyboardInterrupt, _StopRequestedError):
            _stop_children(console, children)
        for server in reversed(servers):
            with contextlib.suppress(KeyboardInterrupt, _StopRequestedError):
                server.close()
        signal.signal(signal.SIGTERM, previous_term)
    if not console.is_terminal:
        console.line()
    console.print("ttpctl dev: stopped; data kept in " + str(data_dir))
    raise typer.Exit(code)


def _spawn_children(
    children: list[_Child],
    bus: _Bus,
    base_env: dict[str, str],
    data_dir: Path,
    http_port: int,
    workers: int,
) -> None:
    """Start the master and the workers, each added to ``children`` as soon as it runs (so a
    failure on the way still stops the ones started)."""
    master_env = bus.child_environment(base_env, "master")
    children.append(_spawn("master", "master", "ttp-master", master_env, data_dir, http_port))
    worker_env = bus.child_environment(base_env, "worker")
    for number in range(1, workers + 1):
        port = http_port + number if http_port else 0
        name = f"dev-w{number}"
        worker = {**worker_env, "TTP_WORKER_ID": name}
        children.append(_spawn(name, "worker", "ttp-worker", worker, data_dir, port))


def _console_environment(
    bus: _Bus, base: dict[str, str], web: DevConsole, port: int
) -> dict[str, str]:
    """The console's environment: its NATS role's settings and the dev console's own."""
    kept = {k: v for k, v in base.items() if k not in _NOT_FOR_CONSOLE}
    return {**bus.child_environment(kept, "console"), **web.environment(port)}


def _start_servers(
    console: Console,
    data_dir: Path,
    nats_url: str | None,
    database_url: str | None,
    servers: list[EmbeddedNats | EmbeddedPostgres],
    ports: dict[str, int],
) -> tuple[_Bus, str]:
    """Start the embedded servers not replaced by the caller's, then write ``ports`` (the
    kept ones with the servers' added) to ``ports.json``."""
    ports_file = data_dir / "ports.json"
    if nats_url:
        bus = _Bus(nats_url)
    else:
        credentials_dir = data_dir / _CREDENTIALS_DIR
        credentials = _role_credentials(console, credentials_dir)
        nats_server = EmbeddedNats(
            data_dir=data_dir / "nats",
            port=ports.get("nats"),
            monitor_port=ports.get("nats_monitor"),
            server_name="ttp-dev",
            **embedded_server_options(credentials),
        )
        servers.append(nats_server)
        console.print(f"starting embedded NATS (data {nats_server.data_dir}) ...")
        nats_server.start()
        ports |= {"nats": nats_server.port, "nats_monitor": nats_server.monitor_port}
        # Written after the start: the URL is final only once the server listens.
        try:
            write_credential_files(credentials_dir, nats_server.url, credentials)
        except OSError as exc:
            raise EmbeddedServerError(f"cannot write {credentials_dir}: {exc}") from None
        console.print(
            Text(f"NATS role settings: {credentials_dir}/ROLE.env (mode 0600, kept across runs)"),
            soft_wrap=True,
        )
        bus = _Bus(nats_server.url, credentials, credentials_dir)
    if not database_url:
        problem = _check_traversable(data_dir)
        if problem:
            raise EmbeddedServerError(problem)
        pg = EmbeddedPostgres(data_dir=data_dir / "postgres", port=ports.get("postgres"))
        servers.append(pg)
        console.print(f"starting embedded PostgreSQL (data {pg.data_dir}) ...")
        pg.start()
        pg.ensure_database("ttp")
        ports |= {"postgres": pg.port}
        database_url = pg.url_for("ttp")
    ports_file.write_text(json.dumps(ports, indent=2) + "\n", encoding="utf-8")
    return bus, database_url


def _role_credentials(console: Console, directory: Path) -> dict[Role, RoleCredentials]:
    """Every role's credentials: the ones stored in ``directory`` when still private to us,
    fresh ones for the others.

    A stored file that another user may read (or that is not ours, or not a plain file) is not
    used: its password may be known, so that role gets a new one and the file is replaced.
    Fixing the mode instead would keep a password that may already have been read.
    """
    problem = private_directory_problem(directory)
    if problem is not None:
        raise EmbeddedServerError(problem)
    stored = read_credential_files(directory)
    for role, problem in stored.unusable.items():
        console.print(
            Text(
                f"warning: {problem}: not used; the {role} role gets a new password"
                " (re-read the new file wherever the old one was used)",
                style="yellow",
            ),
            soft_wrap=True,
        )
        try:
            # Replaced, not rewritten in place: it may be a link or belong to someone else.
            (directory / f"{role}.env").unlink(missing_ok=True)
        except OSError as exc:
            raise EmbeddedServerError(f"cannot replace {directory / role}.env: {exc}") from None
    fresh = generate_credentials([r for r in ROLES if r not in stored.usable])
    return {role: stored.usable.get(role) or fresh[role] for role in ROLES}


def _spawn(
    name: str, kind: _ChildKind, program: str, env: dict[str, str], data_dir: Path, port: int
) -> _Child:
    log_path = data_dir / "logs" / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603
            [str(Path(sys.executable).parent / program)],
            env={**env, "TTP_HTTP_PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl-C reaches ttpctl only, which stops children in order.
            process_group=0,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
    return _Child(name, kind, process, log_path, port)


def _stop_children(console: Console, children: list[_Child]) -> None:
    # The console first (a client of the master), then the workers, then the master; all
    # are signalled at once and share one grace.
    ordered = list(reversed(children))
    for child in ordered:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    for child in ordered:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            console.print(f"{child.name} did not stop within {_STOP_TIMEOUT_S:.0f} s; killing it")
            child.process.kill()
            child.process.wait()


async def _supervise(
    console: Console,
    bus: _Bus,
    children: list[_Child],
    servers: list[EmbeddedNats | EmbeddedPostgres],
    console_line: str,
    demo: bool,
    exit_after_demo: bool,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # The live status only reads: tags, rule and worker subjects, TTP_RULES.
        async with open_nats(
            None,
            settings=bus.settings("consumer"),
            name="ttpctl-dev",
            announce_reconnects=False,
        ) as session:
            return await _watch(
                console,
                bus,
                session.nc,
                _Processes(children, servers, console_line),
                demo,
                exit_after_demo,
                stop,
            )
    except (NatsSessionError, ValidationError) as exc:
        console.print(Text(f"ttpctl dev: cannot watch the bus: {exc}", style="red"))
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _watch(
    console: Console,
    bus: _Bus,
    nc: Client,
    processes: _Processes,
    demo: bool,
    exit_after_demo: bool,
    stop: asyncio.Event,
) -> int:
    status = _Status()
    children = processes.children
    for server in processes.servers:
        if isinstance(server, EmbeddedNats):
            status.refusals = RefusalCounter.from_end_of(server.log_path)
    subscriptions = await _subscribe(nc, status)
    demo_task: asyncio.Task[None] | None = None
    started = time.monotonic()
    code = 0
    try:
        with Live(_render(status, processes, bus), console=console, refresh_per_second=1) as live:
            while not stop.is_set():
                dead = [c for c in children if c.process.poll() is not None]
                if dead:
                    live.stop()
                    if not console.is_terminal:
                        console.line()
                    for child in dead:
                        console.print(
                            f"[red]{child.name} exited with code {child.process.returncode};"
                            f" see {child.log_path}[/red]"
                        )
                    code = 1
                    break
                if status.ruleset is None:
                    status.ruleset = await _last_ruleset(nc)
                if demo and demo_task is None and status.ruleset is not None:
                    demo_task = asyncio.create_task(_publish_demo(bus, status))
                failure = _demo_failure(demo_task)
                if failure is not None:
                    live.stop()
                    console.print(Text(f"ttpctl dev: the demo feed failed: {failure}", style="red"))
                    code = 1
                    break
                demo_done = demo_task is not None and demo_task.done()
                if exit_after_demo and demo_done and _demo_processed(status):
                    live.stop()
                    if not console.is_terminal:
                        console.line()
                    elapsed = time.monotonic() - started
                    console.print(
                        f"ttpctl dev: demo done: {status.demo_published} events published,"
                        f" {_processed(status)} processed, {status.tagged_events} tagged"
                        f" events, {status.tags} tags in {elapsed:.1f} s"
                    )
                    break
                live.update(_render(status, processes, bus))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        if demo_task is not None and not demo_task.done():
            demo_task.cancel()
        for sub in subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    return code


def _demo_failure(task: asyncio.Task[None] | None) -> BaseException | None:
    if task is None or not task.done() or task.cancelled():
        return None
    return task.exception()


def _processed(status: _Status) -> int:
    return sum(int(w.get("events_processed", 0)) for w in status.workers.values())


def _demo_processed(status: _Status) -> bool:
    return (
        status.demo_published >= status.demo_total > 0
        and _processed(status) >= status.demo_total
        and status.tags > 0
    )


async def _last_ruleset(nc: Client) -> dict[str, Any] | None:
    try:
        msg = await nc.jetstream().get_last_msg(subjects.STREAM_RULES, subjects.RULESET_REVISION)
    except Exception:
        return None
    if msg.data is None:
        return None
    data: dict[str, Any] = json.loads(msg.data)["data"]
    return data


async def _subscribe(nc: Client, status: _Status) -> list[Any]:
    async def on_ruleset(msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            status.ruleset = json.loads(msg.data)["data"]

    async def on_worker(msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data = json.loads(msg.data)["data"]
            status.workers[str(data["worker_id"])] = data

    async def on_tagged(msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data = json.loads(msg.data)["data"]
            tags = data.get("tags", [])
            status.tagged_events += 1
            status.tags += len(tags)
            status.tag_times.append((time.monotonic(), len(tags)))
            for tag in tags:
                status.last_tags.append(
                    f"{data['source_kind']}/{data['source_id']}: {tag['rule_id']}"
                    f" -> {tag.get('sub_technique_id') or tag['technique_id']}"
                    f" ({tag['confidence']:.2f})"
                )

    return [
        await nc.subscribe(subjects.RULESET_REVISION, cb=on_ruleset),
        await nc.subscribe(subjects.wildcard(subjects.WORKER_STATUS_PREFIX), cb=on_worker),
        await nc.subscribe(subjects.wildcard(subjects.TAGGED_PREFIX), cb=on_tagged),
    ]


async def _publish_demo(bus: _Bus, status: _Status) -> None:
    # As the producer role: honeypots may publish events and nothing else.
    async with open_nats(
        None, settings=bus.settings("producer"), name="ttpctl-dev-demo", announce_reconnects=False
    ) as session:
        await _publish_events(session.js, status)


async def _publish_events(js: JetStreamContext, status: _Status) -> None:
    events = _demo_events()
    status.demo_total = len(events)
    # Unique ids per run: JetStream would drop a re-published msg id as a duplicate.
    run = uuid.uuid4().hex[:8]
    for raw in events:
        data = HoneypotEvent.model_validate({**raw, "source_id": f"{raw['source_id']}-{run}"})
        message = envelope(data, source=_DEMO_SOURCE, subject=data.source_id)
        await publish_js(
            js,
            subjects.event(data.source_kind),
            encode(message),
            msg_id=message.id,
            expected_stream=subjects.STREAM_EVENTS,
        )
        status.demo_published += 1


def _rates(status: _Status) -> tuple[float, float]:
    now = time.monotonic()
    while status.tag_times and status.tag_times[0][0] < now - _RATE_WINDOW_S:
        status.tag_times.popleft()
    events = len(status.tag_times) / _RATE_WINDOW_S
    tags = sum(n for _, n in status.tag_times) / _RATE_WINDOW_S
    return events, tags


def _render(status: _Status, processes: _Processes, bus: _Bus) -> Group:
    ruleset = status.ruleset
    head = Text()
    if ruleset is None:
        head.append("ruleset: waiting for the master ...", style="yellow")
        revision = None
    else:
        revision = ruleset.get("revision")
        head.append(
            f"ruleset revision {revision}: {ruleset.get('rules')} rules,"
            f" {ruleset.get('active')} active, {ruleset.get('external')} external,"
            f" {ruleset.get('rejected')} rejected",
            style="bold",
        )
    table = Table(title="processes")
    for column in ("name", "pid", "revision", "ready", "events processed", "log"):
        table.add_column(column)
    children = processes.children
    for child in children:
        worker = status.workers.get(child.name, {})
        alive = child.process.poll() is None
        is_worker = child.kind == "worker"
        shown_revision = worker.get("revision", "-") if is_worker else ""
        table.add_row(
            child.name,
            str(child.process.pid) if alive else f"exited {child.process.returncode}",
            str(revision if child.kind == "master" else shown_revision),
            str(worker.get("ready", "-")) if is_worker else "",
            str(worker.get("events_processed", "-")) if is_worker else "",
            str(child.log_path),
        )
    worker_names = [c.name for c in children if c.kind == "worker"]
    worker_revisions = {status.workers.get(name, {}).get("revision") for name in worker_names}
    converged = revision is not None and worker_revisions == {revision}
    events_s, tags_s = _rates(status)
    summary = Text(
        f"workers converged: {'yes' if converged else 'no'}   events tagged/s: {events_s:.1f}"
        f"   tags/s: {tags_s:.1f}   total: {status.tagged_events} tagged events,"
        f" {status.tags} tags"
    )
    if status.demo_total:
        summary.append(f"   demo: {status.demo_published}/{status.demo_total} published")
    where = [f"NATS {bus.url}"]
    for server in processes.servers:
        if isinstance(server, EmbeddedNats):
            where.append(f"NATS monitoring {server.monitor_url}  log {server.log_path}")
        else:
            where.append(f"PostgreSQL {server.dsn_for('ttp')}  log {server.log_path}")
    where += [
        f"{c.name} metrics http://127.0.0.1:{c.http_port}/metrics" for c in children if c.http_port
    ]
    where.append(processes.console_line)
    where += bus.hints()
    where.append("Ctrl-C stops all; data is kept")
    recent = Text("\n".join(status.last_tags) or "no tags yet", style="green")
    parts: list[RenderableType] = [head, table, summary, Text("recent tags:"), recent]
    parts.append(Text("\n".join(where)))
    counter = status.refusals
    if counter is not None and counter.update():
        parts.append(
            Text(
                f"NATS refused {counter.count} call(s) or login(s) in this run: see the"
                f" 'Violation' lines of {counter.path}",
                style="red",
            )
        )
    return Group(*parts)
