"""`ttpctl events publish`: feed honeypot events from a JSON Lines file into TTP_EVENTS.

Each non-blank line is one event: the bare event object (``source_kind``, ``source_id``,
``payload``, ...) or a CloudEvents envelope whose ``data`` is that object (workers accept
both; see docs/contract.md). The line is published unchanged on ``ttp.event.<source_kind>``
with a JetStream acknowledgement, many at a time.

Deduplication: ``Nats-Msg-Id`` is a hash of the event itself (the bare object, or the
envelope's ``data``, in canonical JSON), so publishing the same events again, from the same
file or another one, whatever the formatting or key order and whether wrapped or not, stores
nothing new while the stream's duplicate window lasts (TTP_EVENTS: 2 minutes by default).
After the window the events are stored again, which is the way to have them re-tagged. Two
lines with the same ``source_kind`` and ``source_id`` but different content are different
messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Final

import nats.errors
import nats.js.errors
import typer
from nats.js.api import PubAck
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ttp_core.contract import subjects
from ttp_core.contract.events import MalformedEventError, parse_event
from ttp_runtime.nats import DEFAULT_PUBLISH_TIMEOUT_S, MSG_ID_HEADER
from ttpctl.nats_session import (
    NatsSession,
    NatsSessionError,
    NatsUrlOption,
    fail,
    open_nats,
    require_stream,
)

__all__ = ["events_app", "message_id"]

events_app = typer.Typer(help="Publish honeypot events to the bus.", no_args_is_help=True)

_COMMAND: Final = "events publish"
STDIN: Final = "-"
# Publishes awaiting their acknowledgement: enough to keep the link busy (thousands per
# second on a LAN), few enough that memory stays small and a stalled server shows quickly.
_MAX_IN_FLIGHT: Final = 1000
_ACK_TIMEOUT_S: Final = DEFAULT_PUBLISH_TIMEOUT_S
# Reads the reader thread may be ahead of the publisher (bounds memory on a fast disk).
_READ_AHEAD: Final = 32
_CHUNK_BYTES: Final = 64 * 1024
# Auto mode shows a progress bar on a terminal only for input that takes a moment.
_PROGRESS_MIN_BYTES: Final = 1024 * 1024
# Problems echoed one by one; beyond that, counted only (a broken file must not flood).
_MAX_PROBLEMS_SHOWN: Final = 100
_MAX_PROBLEMS_KEPT: Final = 1000
_MSG_ID_PREFIX: Final = "ttpctl-ev-"


# --------------------------------------------------------------------------------------------
# Checking one line
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ready:
    """A line that can be published."""

    subject: str
    payload: bytes
    msg_id: str


def message_id(event: dict[str, Any]) -> str:
    """``Nats-Msg-Id`` of an event object: a hash of its canonical JSON.

    Canonical = top-level nulls dropped (an absent optional id and ``null`` are the same
    event, and envelopes written through the models spell every id out), sorted keys, no
    insignificant whitespace, ASCII escapes (so a lone surrogate from a ``\\ud800`` escape
    still hashes). The same event thus gets the same id however it was written and whether
    or not it came in a CloudEvents envelope.
    """
    present = {key: value for key, value in event.items() if value is not None}
    canonical = json.dumps(present, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _MSG_ID_PREFIX + hashlib.sha256(canonical.encode("ascii")).hexdigest()[:40]


def check_line(raw: bytes, max_payload: int) -> _Ready | str | None:
    """What to do with one line: publish it (:class:`_Ready`), skip it (the reason), or
    ignore it (``None``: a blank line).

    A line is skipped exactly when a worker would dead-letter it: the check is the workers'
    own (:func:`ttp_core.contract.events.parse_event`), and the reason is the dead letter's
    (``<reason>: <detail>``).
    """
    body = raw.strip()
    if not body:
        return None
    if len(body) > max_payload:
        return f"line is {len(body)} bytes, more than the server's max_payload ({max_payload})"
    try:
        event = parse_event(body, max_payload)
    except MalformedEventError as error:
        return str(error)
    return _Ready(subjects.event(event["source_kind"]), body, message_id(event))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    raw: bytes
    too_long: int = 0  # the length of a line over the bound (then ``raw`` is empty)


@dataclass(frozen=True, slots=True)
class _Batch:
    lines: list[_Line]
    offset: int  # bytes read so far, for the progress bar


class _ReadError(Exception):
    """The input could not be read any further."""


class _LineReader:
    """Reads the input in a thread and hands batches of lines to the event loop.

    A thread, because stdin may be a pipe or a terminal: reading it in the event loop would
    block the loop, and with it every acknowledgement in flight. Batches, because handing
    over line by line makes the two threads take turns per line (and nats-py then writes
    one socket send per message); a batch is whatever one read returned, so a slow producer
    on a pipe still gets each line published as soon as it arrives.
    """

    def __init__(self, stream: IO[bytes], max_line: int) -> None:
        self._stream = stream
        self._max_line = max_line
        self._queue: asyncio.Queue[_Batch | _ReadError | None] = asyncio.Queue()
        self._slots = threading.Semaphore(_READ_AHEAD)
        self._stopped = threading.Event()
        self._loop = asyncio.get_running_loop()
        # Daemon: a thread blocked on an idle terminal must not keep the process alive.
        self._thread = threading.Thread(target=self._run, name="ttpctl-reader", daemon=True)
        self._number = 0
        self._partial = bytearray()
        self._dropping = 0  # bytes so far of a line over the bound, which is not kept

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._slots.release()  # wake the thread if it waits for room

    def idle(self) -> bool:
        """True when no batch is waiting (the input is slower than we are)."""
        return self._queue.empty()

    async def next(self) -> _Batch | None:
        """The next batch of lines, or ``None`` at the end; raises :class:`_ReadError`."""
        item = await self._queue.get()
        if isinstance(item, _ReadError):
            raise item
        if item is not None:
            self._slots.release()
        return item

    def _put(self, item: _Batch | _ReadError | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (interrupted)
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _line(self, piece: bytes) -> _Line:
        self._number += 1
        if self._dropping:
            line = _Line(self._number, b"", self._dropping + len(piece))
        else:
            raw = bytes(self._partial) + piece if self._partial else piece
            line = _Line(self._number, raw)
        self._partial.clear()
        self._dropping = 0
        return line

    def _keep(self, tail: bytes) -> None:
        # The start of a line whose end is in a later read. Bounded, so a huge line without
        # a newline cannot exhaust memory: past the bound it is only measured.
        if self._dropping:
            self._dropping += len(tail)
            return
        self._partial += tail
        if len(self._partial) > self._max_line:
            self._dropping = len(self._partial)
            self._partial.clear()

    def _split(self, chunk: bytes) -> list[_Line]:
        lines = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            lines.append(self._line(chunk[start : end + 1]))
            start = end + 1
        self._keep(chunk[start:])
        return lines

    def _run(self) -> None:
        # read1: whatever one read returns, without waiting for a full buffer from a pipe.
        read = getattr(self._stream, "read1", self._stream.read)
        offset = 0
        try:
            while not self._stopped.is_set():
                chunk = read(_CHUNK_BYTES)
                if not chunk:
                    break
                offset += len(chunk)
                lines = self._split(chunk)
                if not lines:
                    continue
                self._slots.acquire()
                if self._stopped.is_set():
                    return
                self._put(_Batch(lines, offset))
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            self._put(_ReadError(str(exc)))
            return
        if self._partial or self._dropping:
            # The last line has no newline: still a line.
            self._put(_Batch([self._line(b"")], offset))
        self._put(None)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class _Problem:
    line: int
    kind: str  # "skipped" (the line is not an event) or "failed" (the publish failed)
    reason: str


@dataclass
class _Run:
    """Counters of one run; read by the summary even after an interruption."""

    label: str
    lines: int = 0
    published: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list[_Problem] = field(default_factory=list)
    duplicate_window_s: float | None = None
    stopped: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return not (self.skipped or self.failed or self.stopped)


class _Ui:
    """Where problems and progress go: stderr, never stdout (which --json keeps clean)."""

    def __init__(self, run: _Run, show_progress: bool, total: int | None) -> None:
        self._run = run
        self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._shown = 0
        if show_progress:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[published]} published"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._task = self._progress.add_task(run.label, total=total, published=0)

    def __enter__(self) -> _Ui:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, offset: int | None) -> None:
        """Show ``offset`` bytes read (None: keep the position, refresh the counts)."""
        if self._progress is not None and self._task is not None:
            done = self._run.published + self._run.duplicates
            self._progress.update(self._task, completed=offset, published=done)

    def problem(self, line: int, kind: str, reason: str) -> None:
        """Count a skipped or failed line and report it as ``FILE:LINE: reason``."""
        run = self._run
        if kind == "skipped":
            run.skipped += 1
        else:
            run.failed += 1
        if len(run.problems) < _MAX_PROBLEMS_KEPT:
            run.problems.append(_Problem(line, kind, reason))
        self._shown += 1
        if self._shown <= _MAX_PROBLEMS_SHOWN:
            self._console.print(f"{run.label}:{line}: {reason}", markup=False)
        elif self._shown == _MAX_PROBLEMS_SHOWN + 1:
            self._console.print(
                f"{run.label}: more problems; only the count is shown from here", markup=False
            )

    def note(self, message: str) -> None:
        """One line on stderr, above the progress bar if there is one."""
        self._console.print(message, markup=False)


def _publish_error(exc: BaseException, subject: str) -> str:
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
        return f"publish failed: no JetStream stream stores {subject}"
    return f"publish failed: {exc or type(exc).__name__}"


class _Publisher:
    """Pipelined JetStream publishes: many in flight, each with its own deadline.

    ``publish_async`` sends at once and resolves a future when the PubAck arrives, which is
    far cheaper per message than a request per publish. Acks come back in publish order,
    so the oldest future is the one whose deadline matters: a sweep cancels it once it is
    past (no ack in time: a failure) and the window of in-flight publishes stays bounded.
    """

    def __init__(self, session: NatsSession, run: _Run, ui: _Ui) -> None:
        self._session = session
        self._run = run
        self._ui = ui
        self._in_flight: deque[tuple[float, asyncio.Future[PubAck]]] = deque()
        self._unsettled = 0
        """Publishes whose outcome is not counted yet: a done future's callback runs on a
        later loop iteration, after `_in_flight` may already have dropped it."""
        self._abandoned = False

    async def send(self, number: int, ready: _Ready) -> None:
        """Publish one line; waits only while the window is full."""
        while len(self._in_flight) >= _MAX_IN_FLIGHT:
            await self._wait_oldest()
        try:
            future = await self._session.js.publish_async(
                ready.subject,
                ready.payload,
                # No wait_stall: our window is below nats-py's own limit, so it never stalls,
                # and with a stall timeout every publish would yield to the loop (one send
                # per message).
                stream=subjects.STREAM_EVENTS,
                # A fresh dict per message: nats-py adds the expected-stream header to it.
                headers={MSG_ID_HEADER: ready.msg_id},
            )
        except nats.errors.Error as exc:
            # Not sent at all: the connection is closed, or its buffer is full while it
            # reconnects.
            self._ui.problem(number, "failed", _publish_error(exc, ready.subject))
            self._stop_if_disconnected(number)
            return
        self._unsettled += 1
        future.add_done_callback(functools.partial(self._settled, number, ready.subject))
        self._in_flight.append((time.monotonic() + _ACK_TIMEOUT_S, future))

    async def finish(self) -> None:
        """Wait for every ack still due (each at most until its deadline), and counted."""
        while self._in_flight:
            await self._wait_oldest()
        while self._unsettled:
            await asyncio.sleep(0)

    def abandon(self) -> None:
        """Stop waiting: what is still in flight is not counted."""
        self._abandoned = True
        for _deadline, future in self._in_flight:
            future.cancel()
        self._in_flight.clear()

    def sweep(self) -> None:
        """Drop settled publishes from the window; fail the ones past their deadline."""
        now = time.monotonic()
        while self._in_flight:
            deadline, future = self._in_flight[0]
            if not future.done() and deadline > now:
                return
            self._in_flight.popleft()
            future.cancel()  # no-op when settled; else _settled reports the timeout

    async def _wait_oldest(self) -> None:
        self.sweep()
        if self._in_flight:
            deadline, future = self._in_flight[0]
            await asyncio.wait({future}, timeout=max(0.0, deadline - time.monotonic()))
            self.sweep()

    def _settled(self, number: int, subject: str, future: asyncio.Future[PubAck]) -> None:
        run = self._run
        self._unsettled -= 1
        if self._abandoned:
            return
        if future.cancelled():
            self._ui.problem(number, "failed", "publish failed: no acknowledgement in time")
        elif (error := future.exception()) is not None:
            self._ui.problem(number, "failed", _publish_error(error, subject))
        elif future.result().duplicate:
            run.duplicates += 1
        else:
            run.published += 1
        if future.cancelled() or future.exception() is not None:
            self._stop_if_disconnected(number)

    def _stop_if_disconnected(self, number: int) -> None:
        if self._run.stopped is None and not self._session.nc.is_connected:
            # Every further publish would wait out its deadline too: stop instead.
            self._run.stopped = f"lost the connection to NATS; stopped after line {number}"


async def _handle(line: _Line, limit: int, publisher: _Publisher, run: _Run, ui: _Ui) -> None:
    run.lines = line.number
    checked = (
        f"line is {line.too_long} bytes, more than the server's max_payload ({limit})"
        if line.too_long
        else check_line(line.raw, limit)
    )
    if checked is None:
        return
    if isinstance(checked, str):
        ui.problem(line.number, "skipped", checked)
        return
    await publisher.send(line.number, checked)


async def _publish_stream(
    stream: IO[bytes], url: str | None, run: _Run, progress: bool | None, size: int | None
) -> None:
    async with open_nats(url, name="ttpctl-events-publish") as session:
        run.duplicate_window_s = await require_events_stream(session)
        limit = session.nc.max_payload
        reader = _LineReader(stream, limit)
        show = progress if progress is not None else _auto_progress(size)
        with _Ui(run, show, size) as ui:
            publisher = _Publisher(session, run, ui)
            reader.start()
            try:
                while run.stopped is None:
                    try:
                        batch = await reader.next()
                    except _ReadError as exc:
                        run.stopped = f"cannot read further: {exc}"
                        break
                    if batch is None:
                        break
                    for line in batch.lines:
                        await _handle(line, limit, publisher, run, ui)
                    ui.advance(batch.offset)
                    if reader.idle():
                        # A slow producer on stdin: settle what is due now, not lines later.
                        publisher.sweep()
                await publisher.finish()
            finally:
                reader.stop()
                publisher.abandon()
            ui.advance(None)
            if run.stopped is not None:
                ui.note(f"{run.label}: {run.stopped}")


async def require_events_stream(session: NatsSession) -> float | None:
    """Check TTP_EVENTS exists; its duplicate window in seconds (None: server default)."""
    info = await require_stream(session.js, subjects.STREAM_EVENTS)
    window = info.config.duplicate_window
    return float(window) if window else None


def _auto_progress(size: int | None) -> bool:
    # A bar only where someone watches, and only when there is something to wait for.
    return sys.stderr.isatty() and (size is None or size >= _PROGRESS_MIN_BYTES)


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _summary_json(run: _Run, elapsed: float) -> str:
    return json.dumps(
        {
            "file": run.label,
            "stream": subjects.STREAM_EVENTS,
            "lines": run.lines,
            "published": run.published,
            "duplicates": run.duplicates,
            "skipped": run.skipped,
            "failed": run.failed,
            "problems": [
                {"line": p.line, "kind": p.kind, "reason": p.reason} for p in run.problems
            ],
            "problems_truncated": len(run.problems) < run.skipped + run.failed,
            "stopped": run.stopped,
            "duplicate_window_s": run.duplicate_window_s,
            "elapsed_s": round(elapsed, 3),
            "ok": run.ok,
        }
    )


def _summary_text(run: _Run, elapsed: float) -> str:
    done = run.published + run.duplicates
    rate = f", {done / elapsed:.0f}/s" if elapsed > 0 and done else ""
    window = (
        f"; dedup window {_duration(run.duplicate_window_s)}"
        if run.duplicate_window_s is not None
        else ""
    )
    return (
        f"{run.label}: {run.published} published to {subjects.STREAM_EVENTS},"
        f" {run.duplicates} duplicate(s) (already stored{window}),"
        f" {run.skipped} line(s) skipped, {run.failed} failed"
        f" ({run.lines} line(s) in {elapsed:.1f} s{rate})"
    )


def _open(file: str) -> tuple[IO[bytes], str, int | None]:
    """The input stream, its label for messages and its size when known."""
    if file == STDIN:
        return sys.stdin.buffer, "<stdin>", None
    path = Path(file)
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        fail(_COMMAND, f"{file}: no such file")
    except IsADirectoryError:
        fail(_COMMAND, f"{file}: is a directory")
    except OSError as exc:
        fail(_COMMAND, f"{file}: cannot open: {exc.strerror or exc}")
    size = path.stat().st_size if path.is_file() else None
    return stream, file, size


@events_app.command("publish")
def publish(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE.jsonl", help="JSON Lines file of events (bare or CloudEvents); - = stdin."
        ),
    ],
    nats_url: NatsUrlOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr. Default: on a terminal, for input of 1 MiB or more"
            " or stdin.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Publish each line of FILE.jsonl to TTP_EVENTS on ttp.event.<source_kind>.

    Lines that are not events are skipped and reported as FILE:LINE: reason (stderr).
    Re-publishing the same events within the stream's duplicate window (2 min by default)
    stores nothing new: the message id is a hash of the event. Exit 0 when every line was
    published (duplicates count as published), 1 when lines were skipped or failed, 2 when
    the file, NATS or the TTP_EVENTS stream is missing.
    """
    stream, label, size = _open(file)
    run = _Run(label)
    interrupted = False
    try:
        asyncio.run(_publish_stream(stream, nats_url, run, progress, size))
    except NatsSessionError as exc:
        fail(_COMMAND, str(exc))
    except KeyboardInterrupt:
        interrupted = True
        run.stopped = f"interrupted after line {run.lines}"
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    elapsed = time.monotonic() - run.started
    if as_json:
        typer.echo(_summary_json(run, elapsed))
    else:
        if interrupted:
            typer.echo(f"{label}: {run.stopped}", err=True)
        typer.echo(_summary_text(run, elapsed))
    raise typer.Exit(0 if run.ok else 1)
