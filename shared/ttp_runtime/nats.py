"""NATS connection and JetStream helpers shared by every process (docs/contract.md).

- :func:`connect`: a client configured from :class:`~ttp_runtime.settings.ServiceSettings` that
  reconnects forever with jittered waits, notices a dead link fast, and logs its life cycle.
- :func:`ensure_streams`: creates the four streams of the contract, or brings an existing
  stream's configuration up to date, idempotently and without ever deleting data.
- :func:`publish_js`: a JetStream publish with ``Nats-Msg-Id`` (server-side dedup) and the
  current trace context in the headers, inside a PRODUCER span.
- :func:`drain`: a bounded graceful shutdown of a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict, Unpack

import nats.errors
import nats.js.errors
from nats.aio.client import Client, Server
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.manager import JetStreamManager
from opentelemetry.util.types import AttributeValue

from ttp_core.contract import subjects
from ttp_runtime.settings import ServiceSettings
from ttp_runtime.tracing import (
    MESSAGING_MESSAGE_BODY_SIZE,
    MESSAGING_MESSAGE_ID,
    inject_headers,
    start_producer_span,
    subject_template,
)

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_PUBLISH_TIMEOUT_S",
    "MSG_ID_HEADER",
    "ConnectCallbacks",
    "RepeatThrottle",
    "StreamConfigError",
    "StreamOutcome",
    "TlsFilesError",
    "configured_streams",
    "connect",
    "drain",
    "ensure_configured_streams",
    "ensure_stream",
    "ensure_streams",
    "publish_js",
    "stream_configs",
]

_log = logging.getLogger(__name__)

MSG_ID_HEADER: Final = "Nats-Msg-Id"
DEFAULT_PUBLISH_TIMEOUT_S: Final = 5.0
# A SIGTERM gets 10 s in all (docs/operations.md); draining takes at most half of it.
DEFAULT_DRAIN_TIMEOUT_S: Final = 5.0

# Reconnect pacing. A fleet of workers that lost the same server must not come back in one
# burst, hence the jitter on top of the base wait (as the Go client's ReconnectJitter).
_RECONNECT_WAIT_S: Final = 2
_RECONNECT_JITTER_S: Final = 1.0
# Per attempt (TCP + TLS + CONNECT); the number of attempts is unlimited.
_ATTEMPT_TIMEOUT_S: Final = 5
# Unanswered pings before the link is declared dead: ~2-3 ping intervals to notice.
_MAX_OUTSTANDING_PINGS: Final = 2
# The same error text is logged at most once per this many seconds.
_ERROR_LOG_WINDOW_S: Final = 10.0

_RULES_DUPLICATE_WINDOW_S: Final = 24 * 3600.0
_TAGS_DUPLICATE_WINDOW_S: Final = 10 * 60.0
# The server's own default; producers of events and dead letters may set Nats-Msg-Id too.
_DEFAULT_DUPLICATE_WINDOW_S: Final = 2 * 60.0
# Float round-trip through nanoseconds in the stream API.
_SECONDS_TOLERANCE: Final = 1e-6

Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


class ConnectCallbacks(TypedDict, total=False):
    """Extra nats-py callbacks for :func:`connect`; each runs after the built-in logging."""

    error_cb: ErrorCallback
    disconnected_cb: Callback
    reconnected_cb: Callback
    closed_cb: Callback
    discovered_server_cb: Callback
    lame_duck_mode_cb: Callback


# --------------------------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------------------------


class RepeatThrottle:
    """Lets one occurrence of each text through per `window_s`; counts the others."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, text: str) -> int | None:
        """None to stay quiet; else how many of `text` were held back since it last passed."""
        now = self._clock()
        last = self._last.get(text)
        if last is not None and now - last < self._window_s:
            self._held[text] = self._held.get(text, 0) + 1
            return None
        if len(self._last) > 1000:  # error texts may carry ids: keep the memory bounded
            self._last.clear()
            self._held.clear()
        self._last[text] = now
        return self._held.pop(text, 0)


class TlsFilesError(RuntimeError):
    """A NATS TLS file of the settings cannot be read or holds no usable certificate or key."""


def _file_problem(error: OSError) -> str:
    # ssl reports a missing file without its name and a bad one as "[X509: ...] ..."
    return error.strerror or str(error) or type(error).__name__


def _tls_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    if settings.nats_tls_ca is None and settings.nats_tls_cert is None:
        # A tls:// URL without our own CA still gets TLS: nats-py then uses the system store.
        return None
    ca = settings.nats_tls_ca
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except OSError as exc:  # ssl.SSLError included
        raise TlsFilesError(f"TTP_NATS_TLS_CA={ca}: {_file_problem(exc)}") from exc
    if settings.nats_tls_cert is not None:
        cert, key = settings.nats_tls_cert, settings.nats_tls_key
        try:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
        except OSError as exc:
            raise TlsFilesError(
                f"TTP_NATS_TLS_CERT={cert}, TTP_NATS_TLS_KEY={key}: {_file_problem(exc)}"
            ) from exc
    return context


def _wants_tls(settings: ServiceSettings) -> bool:
    if settings.nats_tls_ca is not None or settings.nats_tls_cert is not None:
        return True
    return any(url.lower().startswith("tls://") for url in settings.nats_servers())


class _TlsOnlyClient(Client):
    """A client that sends nothing past the server's greeting unless the link is TLS.

    nats-py upgrades to TLS only when the server's plaintext INFO says ``tls_required``, even
    for a ``tls://`` URL with our own CA: a server without TLS, or anyone in the path who
    strips that flag, would receive CONNECT, credentials included, in clear. INFO is handled
    before CONNECT is written, so refusing here sends nothing.
    """

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and not info.get("tls_required", False):
            raise nats.errors.Error(
                "nats: TLS is configured (TTP_NATS_TLS_* or a tls:// URL) but the server does"
                " not require it; not connecting in clear"
            )
        await super()._process_info(info, initial_connection)


def _auth_options(settings: ServiceSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"inbox_prefix": settings.nats_inbox_prefix}
    if settings.nats_user is not None:
        options["user"] = settings.nats_user
    if settings.nats_password is not None:
        options["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token is not None:
        options["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds_file is not None:
        options["user_credentials"] = str(settings.nats_creds_file)
    tls = _tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    return options


def _jittered_reconnect(servers: list[Server], _info: dict[str, Any]) -> tuple[Server, float]:
    """Pick the least-tried server and how long to wait before trying it.

    A server not tried since the link was lost (another cluster member) is tried almost at
    once; one that already failed waits the base time. Both get random jitter.
    """
    fewest = min(server.reconnects for server in servers)
    server = random.choice([s for s in servers if s.reconnects == fewest])
    base = 0.0 if fewest == 0 else float(_RECONNECT_WAIT_S)
    return server, base + random.uniform(0.0, _RECONNECT_JITTER_S)


def _where(client: Client) -> str:
    # host:port only: the URL may carry credentials, which never reach a log line.
    url = client.connected_url
    if url is None:
        return "?"
    return f"{url.hostname}:{url.port}"


async def _call_user(name: str, callback: Callable[[], Awaitable[None]] | None) -> None:
    if callback is None:
        return
    try:
        await callback()
    except Exception:
        # A failing user callback must not break the client's reconnect loop.
        _log.exception("NATS %s callback failed", name)


async def connect(
    settings: ServiceSettings,
    name: str,
    *,
    initial_timeout_s: float | None = None,
    **callbacks: Unpack[ConnectCallbacks],
) -> Client:
    """Connect to the NATS servers of ``settings`` as connection ``name``.

    The client reconnects forever (``max_reconnect_attempts=-1``) with a jittered wait, pings
    every ``settings.nats_ping_interval_s`` (rounded up to whole seconds, as nats-py wants) so
    a dead link shows within a few intervals, and authenticates with the user/password,
    token, ``.creds`` file and TLS files of ``settings``. With TLS configured (a TLS file or a
    ``tls://`` URL) a server that does not require TLS is refused before CONNECT, never talked
    to in clear. Disconnects, reconnects, errors and closing are logged; ``callbacks``
    (``error_cb``, ``disconnected_cb``, ...) run after that.

    By default the first connection is awaited for as long as it takes (a service waits for
    NATS to come up). ``initial_timeout_s`` bounds it for callers that must fail fast, such as
    the CLI: ``TimeoutError`` is raised and the half-made client closed. A TLS file that
    cannot be read or used raises :class:`TlsFilesError` (naming the variable) at once.
    """
    client = _TlsOnlyClient() if _wants_tls(settings) else Client()
    user_error_cb = callbacks.get("error_cb")

    repeats = RepeatThrottle(_ERROR_LOG_WINDOW_S)

    async def on_error(error: Exception) -> None:
        text = str(error) or type(error).__name__
        # A full stream answers every refused publish with the same error (nats-py reports
        # asynchronous publish errors here): one line per window, with the count, not a flood.
        suppressed = repeats.admit(text)
        if suppressed is not None:
            _log.warning(
                "NATS error: %s%s",
                text,
                f" (and {suppressed} more like it)" if suppressed else "",
                extra={"nats_connection": name, "error_type": type(error).__name__},
            )
        if user_error_cb is not None:
            try:
                await user_error_cb(error)
            except Exception:
                _log.exception("NATS error callback failed")

    async def on_disconnected() -> None:
        # nats-py also reports a deliberate close() as a disconnect; only a lost link warns.
        level = logging.DEBUG if client.is_closed else logging.WARNING
        _log.log(level, "NATS disconnected", extra={"nats_connection": name})
        await _call_user("disconnected", callbacks.get("disconnected_cb"))

    async def on_reconnected() -> None:
        _log.info(
            "NATS reconnected", extra={"nats_connection": name, "nats_server": _where(client)}
        )
        await _call_user("reconnected", callbacks.get("reconnected_cb"))

    async def on_closed() -> None:
        _log.info("NATS connection closed", extra={"nats_connection": name})
        await _call_user("closed", callbacks.get("closed_cb"))

    async def on_lame_duck() -> None:
        # The server is shutting down for maintenance; the client moves to another one.
        _log.warning("NATS server entered lame duck mode", extra={"nats_connection": name})
        await _call_user("lame_duck_mode", callbacks.get("lame_duck_mode_cb"))

    async def on_discovered() -> None:
        _log.info("NATS discovered a new server", extra={"nats_connection": name})
        await _call_user("discovered_server", callbacks.get("discovered_server_cb"))

    attempt = client.connect(
        servers=settings.nats_servers(),
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=_RECONNECT_WAIT_S,
        reconnect_to_server_handler=_jittered_reconnect,
        connect_timeout=_ATTEMPT_TIMEOUT_S,
        ping_interval=max(1, math.ceil(settings.nats_ping_interval_s)),
        max_outstanding_pings=_MAX_OUTSTANDING_PINGS,
        drain_timeout=math.ceil(DEFAULT_DRAIN_TIMEOUT_S),
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        closed_cb=on_closed,
        lame_duck_mode_cb=on_lame_duck,
        discovered_server_cb=on_discovered,
        **_auth_options(settings),
    )
    try:
        if initial_timeout_s is None:
            await attempt
        else:
            await asyncio.wait_for(attempt, initial_timeout_s)
    except BaseException:
        with contextlib.suppress(Exception):
            await client.close()
        raise
    _log.info("NATS connected", extra={"nats_connection": name, "nats_server": _where(client)})
    return client


async def flush_subscriptions(nc: Client, timeout: int) -> None:
    """Return once the server has handled every command written on `nc` so far, the
    subscriptions of :meth:`Client.subscribe` included; raise when it does not answer.

    `Client.flush` alone does not promise that: nats-py writes its PING straight to the
    socket, while the SUB commands of `subscribe` wait in the client's pending buffer until
    its flusher task writes them. The PONG can then come back before the server has read the
    SUBs, and a request another connection sends at once finds no responders. Handing the
    flusher a future of our own first (it resolves it once everything pending before it is
    written) puts the PING behind the SUBs; the server answers a connection's commands in
    order. A client without those internals gets a plain flush twice, which is likely but
    not certain to be enough: the first one's wait normally lets its flusher write the SUBs."""
    try:
        flush_queue = getattr(nc, "_flush_queue", None)
        if isinstance(flush_queue, asyncio.Queue) and nc.is_connected:
            written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(flush_queue.put(written), timeout)
            try:
                await asyncio.wait_for(asyncio.shield(written), timeout)
            except TimeoutError:
                raise nats.errors.FlushTimeoutError() from None
        else:
            await nc.flush(timeout=timeout)
        await nc.flush(timeout=timeout)
    except nats.errors.FlushTimeoutError:
        keep_pongs_paired(nc)
        raise


def keep_pongs_paired(nc: Client) -> None:
    """After a flush timed out: put a fresh future in place of each one nats-py cancelled.

    nats-py cancels a timed-out flush's PONG future but leaves it in its queue of PONG
    waiters; when the late PONG arrives, setting the cancelled future's result raises in
    the client's read loop, which then stops reading for good (the connection looks up but
    delivers nothing until the stale-connection check, minutes later). A fresh future takes
    that PONG harmlessly, and every later PONG still meets its own PING."""
    pongs = getattr(nc, "_pongs", None)
    if not isinstance(pongs, list):
        return
    loop = asyncio.get_running_loop()
    for index, waiter in enumerate(pongs):
        if isinstance(waiter, asyncio.Future) and waiter.cancelled():
            pongs[index] = loop.create_future()


async def drain(client: Client, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
    """Drain ``client`` (finish subscriptions' pending messages, flush publishes) and close it.

    Never takes longer than ``timeout_s``: past it, or when the client cannot drain (it is
    reconnecting), the client is closed outright. Closing an already closed client is a no-op.
    """
    if client.is_closed:
        return
    try:
        await asyncio.wait_for(client.drain(), timeout_s)
    except (TimeoutError, nats.errors.Error) as exc:
        _log.warning(
            "NATS drain did not complete; closing", extra={"error_type": type(exc).__name__}
        )
    finally:
        if not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


class StreamConfigError(RuntimeError):
    """A stream could not be created or brought up to date."""


@dataclass(frozen=True)
class StreamOutcome:
    """What :func:`ensure_stream` did to one stream."""

    name: str
    action: Literal["created", "updated", "unchanged"]
    config: StreamConfig
    changed_fields: tuple[str, ...] = ()


def _identity(value: str) -> str:
    return value


def stream_configs(
    replicas: int,
    events_max_age_s: float,
    events_max_bytes: int,
    tags_max_age_s: float,
    *,
    tags_max_bytes: int = -1,
    deadletter_max_age_s: float | None = None,
    deadletter_max_bytes: int = -1,
    rules_max_bytes: int = -1,
    stream_name: Callable[[str], str] | None = None,
    subject_name: Callable[[str], str] | None = None,
) -> list[StreamConfig]:
    """The desired configurations of TTP_RULES, TTP_EVENTS, TTP_TAGS and TTP_DEADLETTER.

    Sizes in bytes (-1: unlimited), ages in seconds (0: unlimited). Dead letters are kept as
    long as events unless ``deadletter_max_age_s`` says otherwise, so a dead-lettered event
    can be replayed while its history still exists. ``stream_name``/``subject_name`` rename
    streams and subjects (tests use them to run side by side on one server).

    Every stream discards *new* messages at its size limit: a full stream refuses the
    publish, so the producer gets an error and keeps (or retries) the message. Discarding
    old ones instead would silently drop events not yet tagged, tags not yet read, or a
    rule's only message. Ages still expire messages (retention, not overflow). TTP_RULES has
    a size limit of its own, so no event backlog can take the room rule changes need
    (docs/operations.md, "A stream is full").
    """
    rename = stream_name or _identity
    resubject = subject_name or _identity

    def limits(
        name: str,
        subject_list: Sequence[str],
        description: str,
        max_age: float,
        max_bytes: int,
        duplicate_window: float,
        **extra: Any,
    ) -> StreamConfig:
        if max_age > 0:
            # The server rejects a duplicate window longer than the stream's max age.
            duplicate_window = min(duplicate_window, max_age)
        return StreamConfig(
            name=rename(name),
            description=description,
            subjects=[resubject(subject) for subject in subject_list],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            discard=DiscardPolicy.NEW,
            max_age=max_age,
            max_bytes=max_bytes,
            duplicate_window=duplicate_window,
            **extra,
        )

    return [
        limits(
            subjects.STREAM_RULES,
            subjects.RULES_STREAM_SUBJECTS,
            "ttp-rulebus: current state of every rule (last message per subject)",
            max_age=0.0,
            max_bytes=rules_max_bytes,
            # The outbox relay may republish a revision after a crash; a day covers any
            # realistic restart, and Nats-Msg-Id makes the replay a no-op.
            duplicate_window=_RULES_DUPLICATE_WINDOW_S,
            max_msgs_per_subject=1,
        ),
        limits(
            subjects.STREAM_EVENTS,
            subjects.EVENTS_STREAM_SUBJECTS,
            "ttp-rulebus: honeypot events, kept for re-tagging",
            max_age=events_max_age_s,
            max_bytes=events_max_bytes,
            duplicate_window=_DEFAULT_DUPLICATE_WINDOW_S,
        ),
        limits(
            subjects.STREAM_TAGS,
            subjects.TAGS_STREAM_SUBJECTS,
            "ttp-rulebus: ATT&CK tags produced by workers",
            max_age=tags_max_age_s,
            max_bytes=tags_max_bytes,
            # A redelivered event yields the same tag message id; this window absorbs it.
            duplicate_window=_TAGS_DUPLICATE_WINDOW_S,
        ),
        limits(
            subjects.STREAM_DEADLETTER,
            subjects.DEADLETTER_STREAM_SUBJECTS,
            "ttp-rulebus: events workers could not process",
            max_age=events_max_age_s if deadletter_max_age_s is None else deadletter_max_age_s,
            max_bytes=deadletter_max_bytes,
            duplicate_window=_DEFAULT_DUPLICATE_WINDOW_S,
        ),
    ]


# JetStream API error code of "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE: Final = 10058


# Fields ensure_stream manages; every other field of an existing stream is left as it is.
_MANAGED_FIELDS: Final = (
    "description",
    "subjects",
    "retention",
    "storage",
    "num_replicas",
    "discard",
    "max_age",
    "max_bytes",
    "max_msgs",
    "max_msgs_per_subject",
    "duplicate_window",
)
# Changing these needs the data moved (backup and restore): the operator's decision, never ours.
_IMMUTABLE_FIELDS: Final = frozenset({"storage"})


def _seconds(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _differs(field: str, current: object, desired: object) -> bool:
    if field in {"max_age", "duplicate_window"}:
        # None and 0 both mean "unlimited"/"server default" in these two fields.
        return abs(_seconds(current) - _seconds(desired)) > _SECONDS_TOLERANCE
    if field == "subjects":
        have = sorted(current) if isinstance(current, list) else []
        want = sorted(desired) if isinstance(desired, list) else []
        return have != want
    return current != desired


async def ensure_stream(js: JetStreamManager, desired: StreamConfig) -> StreamOutcome:
    """Create stream ``desired.name``, or update it to ``desired`` where it differs.

    Only the fields of ``desired`` that are set are compared (and only those listed in
    ``_MANAGED_FIELDS``); the rest of an existing configuration is kept. A change of storage
    type is not applied (it would need the stream recreated, losing data): it is logged and
    the existing storage kept. Raises :class:`StreamConfigError` if the server refuses.
    """
    name = desired.name
    if name is None:
        raise ValueError("a stream configuration needs a name")
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            created = await js.add_stream(desired)
        except nats.js.errors.BadRequestError as exc:
            # Another process created it between our lookup and create: compare again.
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise StreamConfigError(f"cannot create stream {name}: {exc}") from exc
            return await ensure_stream(js, desired)
        except nats.js.errors.APIError as exc:
            raise StreamConfigError(f"cannot create stream {name}: {exc}") from exc
        _log.info("JetStream stream created", extra={"stream": name})
        return StreamOutcome(name, "created", created.config)

    current = info.config
    changes: dict[str, Any] = {}
    for field in _MANAGED_FIELDS:
        wanted = getattr(desired, field)
        if wanted is None or (field == "duplicate_window" and not wanted):
            # Not asked for: whatever the stream has stays. (nats-py defaults the duplicate
            # window to 0, which the server turns into its own 2 min: not a request either.)
            continue
        have = getattr(current, field)
        if not _differs(field, have, wanted):
            continue
        if field in _IMMUTABLE_FIELDS:
            _log.error(
                "JetStream stream %s has %s=%s, configuration asks for %s; not changed"
                " (it needs the stream recreated from a backup)",
                name,
                field,
                getattr(have, "value", have),
                getattr(wanted, "value", wanted),
                extra={"stream": name},
            )
            continue
        changes[field] = wanted
    if not changes:
        return StreamOutcome(name, "unchanged", current)

    updated_config = dataclasses.replace(current, **changes)
    try:
        updated = await js.update_stream(updated_config)
    except nats.js.errors.APIError as exc:
        raise StreamConfigError(
            f"cannot update stream {name} ({', '.join(sorted(changes))}): {exc}"
        ) from exc
    _log.info(
        "JetStream stream updated",
        extra={"stream": name, "changed_fields": sorted(changes)},
    )
    return StreamOutcome(name, "updated", updated.config, tuple(sorted(changes)))


async def ensure_streams(
    js: JetStreamManager,
    replicas: int,
    events_max_age_s: float,
    events_max_bytes: int,
    tags_max_age_s: float,
    *,
    tags_max_bytes: int = -1,
    deadletter_max_age_s: float | None = None,
    deadletter_max_bytes: int = -1,
    rules_max_bytes: int = -1,
    stream_name: Callable[[str], str] | None = None,
    subject_name: Callable[[str], str] | None = None,
) -> list[StreamOutcome]:
    """Create or update TTP_RULES, TTP_EVENTS, TTP_TAGS and TTP_DEADLETTER; idempotent.

    Run by every process that publishes at start (any of them may be first). See
    :func:`stream_configs` for the parameters and :func:`ensure_stream` for the rules of an
    update. Returns what was done to each stream, in that order.
    """
    configs = stream_configs(
        replicas,
        events_max_age_s,
        events_max_bytes,
        tags_max_age_s,
        tags_max_bytes=tags_max_bytes,
        deadletter_max_age_s=deadletter_max_age_s,
        deadletter_max_bytes=deadletter_max_bytes,
        rules_max_bytes=rules_max_bytes,
        stream_name=stream_name,
        subject_name=subject_name,
    )
    return [await ensure_stream(js, config) for config in configs]


def configured_streams(settings: ServiceSettings) -> list[StreamConfig]:
    """:func:`stream_configs` with the replicas, ages and size limits of ``settings``."""
    return stream_configs(
        settings.stream_replicas,
        settings.events_max_age_s,
        settings.events_max_bytes,
        settings.tags_max_age_s,
        tags_max_bytes=settings.tags_max_bytes,
        deadletter_max_bytes=settings.deadletter_max_bytes,
        rules_max_bytes=settings.rules_max_bytes,
    )


async def ensure_configured_streams(
    js: JetStreamManager, settings: ServiceSettings
) -> list[StreamOutcome]:
    """:func:`ensure_streams` with the configuration of ``settings``."""
    return [await ensure_stream(js, config) for config in configured_streams(settings)]


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------


async def publish_js(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_PUBLISH_TIMEOUT_S,
    *,
    expected_stream: str | None = None,
    name_template: str | None = None,
) -> PubAck:
    """Publish ``payload`` to JetStream with ``Nats-Msg-Id: msg_id`` and trace headers.

    Runs in a PRODUCER span ``publish <template>`` (``name_template``, by default
    :func:`~ttp_runtime.tracing.subject_template` of ``subject``) whose context goes into
    the headers, so consumers continue this trace. The server drops a message whose id it
    has seen within the stream's duplicate window and answers with ``duplicate=True`` and
    the original sequence: callers treat that as success. ``headers`` is not modified.
    Raises ``nats.errors.TimeoutError`` / ``nats.js.errors.APIError`` as nats-py does.
    """
    if not msg_id:
        raise ValueError("publish_js needs a non-empty msg_id (JetStream dedup relies on it)")
    template = name_template or subject_template(subject)
    attributes: dict[str, AttributeValue] = {
        MESSAGING_MESSAGE_ID: msg_id,
        MESSAGING_MESSAGE_BODY_SIZE: len(payload),
    }
    with start_producer_span(template, subject, attributes) as span:
        message_headers = inject_headers(headers)
        message_headers[MSG_ID_HEADER] = msg_id
        ack = await js.publish(
            subject,
            payload,
            timeout=timeout,
            stream=expected_stream,
            headers=message_headers,
        )
        span.set_attribute("nats.stream", ack.stream)
        span.set_attribute("nats.sequence", ack.seq)
        span.set_attribute("nats.duplicate", bool(ack.duplicate))
    if ack.duplicate:
        _log.debug(
            "JetStream publish was a duplicate",
            extra={"subject": subject, "msg_id": msg_id, "stream": ack.stream, "seq": ack.seq},
        )
    return ack
