"""NATS plumbing shared by the ttpctl commands that talk to the bus.

- :data:`NatsUrlOption`: the ``--nats-url`` option every such command offers;
- :func:`open_nats`: an async context manager giving a connected :class:`NatsSession`
  (client + JetStream context), configured like the services (``TTP_NATS_*`` through
  :class:`~ttp_runtime.settings.ServiceSettings`: credentials, TLS), failing fast with a
  :class:`NatsSessionError` whose message is fit for an operator, and drained on exit;
- :func:`require_stream`: the stream's info, or a plain "does not exist" error.

A command catches :class:`NatsSessionError`, prints it and exits 2 (see :func:`fail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Final, NoReturn

import nats.errors
import nats.js.errors
import typer
from nats.aio.client import Client
from nats.js.api import StreamInfo
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from ttp_runtime.nats import connect, drain
from ttp_runtime.settings import ServiceSettings

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "NatsSession",
    "NatsSessionError",
    "NatsUrlOption",
    "fail",
    "open_nats",
    "require_stream",
]

DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
# A CLI run is short: waiting the services' full drain budget on exit would only feel stuck.
_DRAIN_TIMEOUT_S: Final = 3.0
_RUNTIME_NATS_LOGGER: Final = "ttp_runtime.nats"

NatsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        help="NATS server URL(s), comma separated. Default: $TTP_NATS_URL, else"
        " nats://127.0.0.1:4222. Credentials and TLS come from the TTP_NATS_* variables.",
        show_default=False,
    ),
]


class NatsSessionError(RuntimeError):
    """NATS cannot be used as asked; the message is meant for the operator as it is."""


@dataclass(frozen=True)
class NatsSession:
    """A connected client and its JetStream context."""

    nc: Client
    js: JetStreamContext
    servers: str
    """Where we connected, for messages (host:port only, never credentials)."""


def _display(urls: list[str]) -> str:
    # Only host and port: a URL may carry a user and password.
    shown = []
    for url in urls:
        parts = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
        shown.append(f"{parts.hostname or '?'}:{parts.port or 4222}")
    return ", ".join(shown)


def _settings(url: str | None) -> ServiceSettings:
    try:
        return ServiceSettings() if url is None else ServiceSettings(nats_url=url)
    except ValidationError as exc:
        problems = "; ".join(
            f"TTP_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise NatsSessionError(f"invalid NATS settings: {problems}") from None


class _QuietRuntimeLog(logging.Filter):
    """Drops the runtime's NATS life-cycle records below ERROR while a session is open.

    ttpctl configures no logging, so Python's last-resort handler would print every
    "NATS error" of a connect retry to stderr; the session reports connection trouble in its
    own words instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _reason(failures: list[Exception], outcome: BaseException | None, timeout_s: float) -> str:
    # The client's own errors (refused, TLS, authorization) say more than our timeout.
    error = failures[-1] if failures else outcome
    if error is None or isinstance(error, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return str(error) or type(error).__name__


def _note(message: str) -> None:
    print(f"ttpctl: {message}", file=sys.stderr, flush=True)


class _Link:
    """The client callbacks of one session and what they observed."""

    def __init__(self, servers: int, where: str, announce: bool) -> None:
        self.servers = servers
        self.where = where
        self.announce = announce
        self.connected = False
        self.closing = False
        self.failures: list[Exception] = []
        self.gave_up = asyncio.Event()

    async def on_error(self, error: Exception) -> None:
        # Before the first connection every error is a failed attempt; the client would retry
        # forever, so stop once each server has had its chance.
        if not self.connected:
            self.failures.append(error)
            if len(self.failures) >= self.servers:
                self.gave_up.set()

    async def on_disconnected(self) -> None:
        # Our own drain/close also reports a disconnect: not news for the operator.
        if self.connected and self.announce and not self.closing:
            _note(f"lost the connection to NATS ({self.where}); reconnecting ...")

    async def on_reconnected(self) -> None:
        if self.announce:
            _note("reconnected to NATS")


async def _connect(settings: ServiceSettings, name: str, link: _Link, timeout_s: float) -> Client:
    attempt = asyncio.ensure_future(
        connect(
            settings,
            name,
            initial_timeout_s=timeout_s,
            error_cb=link.on_error,
            disconnected_cb=link.on_disconnected,
            reconnected_cb=link.on_reconnected,
        )
    )
    gave_up = asyncio.ensure_future(link.gave_up.wait())
    try:
        await asyncio.wait({attempt, gave_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gave_up.cancel()
        if not attempt.done():
            # Cancelling connect() closes its half-open client.
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await attempt
    outcome = None if attempt.cancelled() else attempt.exception()
    if attempt.cancelled() or outcome is not None:
        reason = _reason(link.failures, outcome, timeout_s)
        raise NatsSessionError(f"cannot connect to NATS at {link.where}: {reason}")
    link.connected = True
    return attempt.result()


@contextlib.asynccontextmanager
async def open_nats(
    url: str | None,
    *,
    settings: ServiceSettings | None = None,
    name: str = "ttpctl",
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    announce_reconnects: bool = True,
) -> AsyncIterator[NatsSession]:
    """Connect to NATS (``url`` overrides ``TTP_NATS_URL``) and yield the session.

    ``settings``, when given, replaces the ``TTP_NATS_*`` environment altogether (``url``
    must then be None): ``ttpctl dev`` connects as a role of its own server that way.

    Fails with :class:`NatsSessionError` when the settings are invalid or when no server
    accepts a connection: as soon as every listed server has refused once, or after
    ``connect_timeout_s`` (a black-holed address). Once connected, the client reconnects on
    its own; with ``announce_reconnects`` a short note goes to stderr when the link drops and
    comes back. On exit the client is drained (bounded), so acknowledged work is flushed.
    """
    if settings is not None and url is not None:
        raise ValueError("give url or settings, not both")
    if settings is None:
        settings = _settings(url)
    servers = settings.nats_servers()
    if not servers:
        raise NatsSessionError("no NATS server URL given")
    link = _Link(len(servers), _display(servers), announce_reconnects)
    runtime_log = logging.getLogger(_RUNTIME_NATS_LOGGER)
    quiet = _QuietRuntimeLog()
    runtime_log.addFilter(quiet)
    try:
        client = await _connect(settings, name, link, connect_timeout_s)
        try:
            yield NatsSession(client, client.jetstream(), link.where)
        finally:
            link.closing = True
            await drain(client, _DRAIN_TIMEOUT_S)
    finally:
        runtime_log.removeFilter(quiet)


async def require_stream(js: JetStreamContext, stream: str) -> StreamInfo:
    """The info of ``stream``, or :class:`NatsSessionError` saying plainly what is missing."""
    try:
        return await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        raise NatsSessionError(
            f"JetStream stream {stream} does not exist; it is created when ttp-master or a"
            " ttp-worker starts against this NATS server"
        ) from None
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
        raise NatsSessionError(
            "JetStream is not enabled on this NATS server (start nats-server with -js)"
        ) from None
    except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
        raise NatsSessionError(f"cannot look up JetStream stream {stream}: {exc}") from None


def fail(command: str, message: str, code: int = 2) -> NoReturn:
    """Print ``ttpctl <command>: <message>`` to stderr and exit with ``code`` (no traceback)."""
    typer.echo(f"ttpctl {command}: {message}", err=True)
    raise typer.Exit(code)
