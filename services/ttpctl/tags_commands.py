"""`ttpctl tags tail` and `ttpctl tags layer`: the ATT&CK tags the workers publish on TTP_TAGS.

An ephemeral ordered consumer (no state left on the server, nothing to acknowledge) reads
``ttp.tagged.*`` (or one kind's subject), from now on by default, or from a point in the
past. Each message is decoded with the contract's models.

- ``tail`` filters the messages and prints them as readable lines or, with ``--json``, as
  one JSON object per line.
- ``layer`` reads the tags stored since a point in the past up to the stream's end when it
  starts, counts them per technique (only counts are kept, so memory does not grow with
  the window) and writes an ATT&CK Navigator layer
  (:func:`ttp_core.attack.navigator.observed_layer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import typer
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from ttp_core.attack import AttackCatalogue, load_catalogue
from ttp_core.attack.navigator import ObservedEntry, observed_layer
from ttp_core.contract import subjects
from ttp_core.contract.payloads import CloudEvent, EventTagged, TagData, decode
from ttpctl.control_output import plural, utc_text
from ttpctl.durations import parse_duration, parse_since
from ttpctl.layer_file import write_layer
from ttpctl.nats_session import NatsSessionError, NatsUrlOption, fail, open_nats, require_stream

__all__ = ["TagFilter", "TagTally", "tags_app"]

tags_app = typer.Typer(
    help="Follow the ATT&CK tags workers publish, or count them into a Navigator layer.",
    no_args_is_help=True,
)

_COMMAND: Final = "tags tail"
_TECHNIQUE: Final = re.compile(r"T\d{4}(?:\.\d{3})?", re.IGNORECASE)
_EVIDENCE_WIDTH: Final = 80


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def _techniques(values: list[str] | None) -> tuple[str, ...]:
    found = []
    for value in values or []:
        if _TECHNIQUE.fullmatch(value.strip()) is None:
            raise typer.BadParameter(
                f"{value!r} is not an ATT&CK technique id (T1059 or T1059.004)",
                param_hint="--technique",
            )
        found.append(value.strip().upper())
    return tuple(found)


def _deliver(since: str | None, all_: bool, new: bool) -> tuple[DeliverPolicy, datetime | None]:
    if sum((since is not None, all_, new)) > 1:
        raise typer.BadParameter("use only one of --since, --all and --new")
    if all_:
        return DeliverPolicy.ALL, None
    if since is not None:
        try:
            return DeliverPolicy.BY_START_TIME, parse_since(since)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
    return DeliverPolicy.NEW, None


# --------------------------------------------------------------------------------------------
# Filtering and printing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagFilter:
    """Which tags to show; values of one option are alternatives, options combine with AND.

    A technique without a sub-technique part (``T1059``) matches the technique and all its
    sub-techniques (``T1059.004``); with one, only that sub-technique.
    """

    techniques: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    kind: str | None = None

    def tag_matches(self, tag: TagData) -> bool:
        """True when ``tag`` passes the technique and rule filters."""
        if self.rules and tag.rule_id not in self.rules:
            return False
        if not self.techniques:
            return True
        sub = tag.sub_technique_id or ""
        for wanted in self.techniques:
            if "." in wanted:
                if sub.upper() == wanted:
                    return True
            elif wanted in (tag.technique_id.upper(), sub.split(".", 1)[0].upper()):
                return True
        return False

    def matching_tags(self, data: EventTagged) -> list[TagData] | None:
        """The tags of ``data`` to show, or None when the message does not match at all."""
        if self.kind is not None and data.source_kind != self.kind:
            return None
        if not (self.techniques or self.rules):
            return list(data.tags)
        tags = [tag for tag in data.tags if self.tag_matches(tag)]
        return tags or None


def _evidence(evidence: dict[str, object]) -> str:
    text = " ".join(
        f"{key}={json.dumps(value, ensure_ascii=False, default=str)}"
        for key, value in evidence.items()
    )
    return text if len(text) <= _EVIDENCE_WIDTH else text[: _EVIDENCE_WIDTH - 1] + "…"


def human_lines(message: CloudEvent[EventTagged], tags: list[TagData]) -> list[str]:
    """One readable line per tag: time, event, technique, tactic, rule, confidence, evidence."""
    data = message.data
    when = utc_text(message.time)
    event = f"{data.source_kind}/{data.source_id}"
    if not tags:
        return [f"{when}  {event}  (no tags)"]
    return [
        f"{when}  {event}  {tag.sub_technique_id or tag.technique_id}  {tag.tactic}"
        f"  {tag.rule_id} v{tag.rule_version}  {tag.confidence:.2f}  {_evidence(tag.evidence)}"
        for tag in tags
    ]


def _sequence(msg: Msg) -> str:
    with contextlib.suppress(Exception):
        return f" {msg.metadata.sequence.stream}"
    return ""


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _note_skipped(command: str, msg: Msg, exc: ValidationError) -> None:
    """Say on stderr which message ``command`` skipped as not a tag message, and why."""
    typer.echo(
        f"ttpctl {command}: skipped message{_sequence(msg)} on {msg.subject}:"
        f" not a valid {EventTagged.event_type} message ({_first_error(exc)})",
        err=True,
    )


# --------------------------------------------------------------------------------------------
# The tail
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    url: str | None
    tag_filter: TagFilter
    as_json: bool
    policy: DeliverPolicy
    start: datetime | None
    count: int | None


def _emit(line: str) -> bool:
    """Print one line; False once stdout is gone (``| head``), which ends the tail quietly."""
    try:
        typer.echo(line)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return False
    return True


async def _follow(options: _Options) -> None:
    async with open_nats(options.url, name="ttpctl-tags-tail") as session:
        await require_stream(session.js, subjects.STREAM_TAGS)
        kind = options.tag_filter.kind
        # A kind narrows the consumer's subject, so the server does that filtering.
        subject = subjects.tagged(kind) if kind else subjects.wildcard(subjects.TAGGED_PREFIX)
        config = ConsumerConfig(opt_start_time=options.start) if options.start else None
        sub = await session.js.subscribe(
            subject,
            stream=subjects.STREAM_TAGS,
            ordered_consumer=True,
            deliver_policy=options.policy,
            config=config,
        )
        matched = 0
        try:
            while options.count is None or matched < options.count:
                msg = await sub.next_msg(timeout=None)
                try:
                    message = decode(msg.data, EventTagged)
                except ValidationError as exc:
                    _note_skipped(_COMMAND, msg, exc)
                    continue
                tags = options.tag_filter.matching_tags(message.data)
                if tags is None:
                    continue
                matched += 1
                lines = (
                    [json.dumps(message.model_dump(mode="json"), ensure_ascii=False)]
                    if options.as_json
                    else human_lines(message, tags)
                )
                if not all(_emit(line) for line in lines):
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def _run(options: _Options) -> None:
    """Follow until done (``--count``), or until SIGINT/SIGTERM, which end it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not possible outside the main thread: Ctrl-C then arrives as KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    follow = asyncio.ensure_future(_follow(options))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if follow.done():
            follow.result()  # NatsSessionError and the like
        else:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
    finally:
        stopped.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)


@tags_app.command("tail")
def tail(
    technique: Annotated[
        list[str] | None,
        typer.Option(
            "--technique",
            "-t",
            help="Only tags of this technique (T1059 also matches T1059.004); repeatable.",
            show_default=False,
        ),
    ] = None,
    rule: Annotated[
        list[str] | None,
        typer.Option(
            "--rule", "-r", help="Only tags of this rule id; repeatable.", show_default=False
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", "-k", help="Only events of this source_kind (e.g. command)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per message (the decoded message).")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Start with tags stored since this long ago (30s, 10m, 1h30m, 2d) or since"
            " an ISO 8601 time with an offset (2026-12-01T08:00:00Z).",
            show_default=False,
        ),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Start with every tag TTP_TAGS still holds.")
    ] = False,
    new: Annotated[
        bool, typer.Option("--new", help="Only tags published from now on (the default).")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option("--count", "-n", min=1, help="Exit after N matching messages."),
    ] = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """Follow TTP_TAGS and print the tagged events that match the filters.

    Without --json: one line per matching tag (time, source_kind/source_id, technique,
    tactic, rule and version, confidence, evidence). Messages that cannot be decoded are
    reported on stderr and skipped. Ctrl-C ends it with exit 0; exit 2 when NATS or the
    TTP_TAGS stream is missing.
    """
    if kind is not None and not subjects.is_token(kind):
        raise typer.BadParameter(
            f"{kind!r} is not a source_kind ([A-Za-z0-9_-]{{1,64}})", param_hint="--kind"
        )
    policy, start = _deliver(since, all_, new)
    options = _Options(
        url=nats_url,
        tag_filter=TagFilter(_techniques(technique), tuple(rule or ()), kind),
        as_json=as_json,
        policy=policy,
        start=start,
        count=count,
    )
    try:
        asyncio.run(_run(options))
    except NatsSessionError as exc:
        fail(_COMMAND, str(exc))
    except KeyboardInterrupt:
        pass
    raise typer.Exit(0)


# --------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------

_LAYER_COMMAND: Final = "tags layer"
_LAYER_GENERATOR: Final = "ttpctl tags layer"
# Distinct technique ids the catalogue does not know that are counted one by one; a forged
# stream could name millions, whose tags are then only added up.
_MAX_UNKNOWN_KEYS: Final = 1024
# Undecodable messages described on stderr one by one; the rest are only counted.
_MAX_SKIP_NOTES: Final = 10
_PROGRESS_EVERY_S: Final = 2.0
# No message for this long while the consumer says more are pending: the read is stuck.
_IDLE_TIMEOUT_S: Final = 15.0

_TechniqueKey = tuple[str, str | None]


@dataclass(slots=True)
class _Count:
    tags: int = 0
    best_confidence: float = 0.0


@dataclass
class TagTally:
    """Tags counted per (technique, sub-technique), in memory bounded by the catalogue.

    Every technique the catalogue knows gets its own count (a sub-technique only under its
    own parent's id); other ids get one until :data:`_MAX_UNKNOWN_KEYS` of them are held, and
    the tags of any further one are only added to :attr:`overflow`.
    """

    catalogue: AttackCatalogue
    counts: dict[_TechniqueKey, _Count] = field(default_factory=dict)
    unknown_keys: int = 0
    overflow: int = 0

    def add(self, tag: TagData) -> None:
        """Count one tag."""
        technique, sub = tag.technique_id, tag.sub_technique_id or None
        key = (technique, sub)
        count = self.counts.get(key)
        if count is None:
            known = self.catalogue.technique(sub or technique) is not None and (
                sub is None or sub.startswith(technique + ".")
            )
            if not known:
                if self.unknown_keys >= _MAX_UNKNOWN_KEYS:
                    self.overflow += 1
                    return
                self.unknown_keys += 1
            count = self.counts[key] = _Count()
        count.tags += 1
        # max keeps its first argument against a NaN: a NaN confidence counts as none.
        count.best_confidence = max(count.best_confidence, tag.confidence)

    @property
    def tags(self) -> int:
        """Tags counted one by one (all but :attr:`overflow`)."""
        return sum(count.tags for count in self.counts.values())

    def entries(self) -> list[ObservedEntry]:
        """The counts as the layer builder takes them."""
        return [
            ObservedEntry(technique, sub, count.tags, count.best_confidence)
            for (technique, sub), count in self.counts.items()
        ]


@dataclass
class _Read:
    tally: TagTally
    messages: int = 0
    skipped: int = 0


def _skip(read: _Read, msg: Msg, exc: ValidationError) -> None:
    read.skipped += 1
    if read.skipped <= _MAX_SKIP_NOTES:
        _note_skipped(_LAYER_COMMAND, msg, exc)


def _progress(read: _Read, pending: int) -> None:
    typer.echo(
        f"ttpctl {_LAYER_COMMAND}: read {read.messages:,} messages, {pending:,} to go",
        err=True,
    )


class _Counter:
    """The subscription's callback: counts each delivered message until the end of the read.

    A callback, not ``next_msg`` in a loop: nats-py runs a callback straight from the
    subscription's queue, where ``next_msg`` starts a task and a timer per message, which
    costs more than decoding and counting the tag message.
    """

    def __init__(self, read: _Read, end_sequence: int) -> None:
        self.read = read
        self.end_sequence = end_sequence
        self.pending = 0
        self.last_seen = time.monotonic()
        self.done = asyncio.get_running_loop().create_future()

    async def on_message(self, msg: Msg) -> None:
        """Count one message; the last one of the read ends it."""
        if self.done.done():
            return  # delivered before the unsubscribe took effect
        try:
            self._count(msg)
        except Exception as exc:  # nats-py would only log it: end the read with it instead
            self.done.set_exception(exc)

    def _count(self, msg: Msg) -> None:
        read = self.read
        read.messages += 1
        self.last_seen = time.monotonic()
        try:
            message = decode(msg.data, EventTagged)
        except ValidationError as exc:
            _skip(read, msg, exc)
        else:
            for tag in message.data.tags:
                read.tally.add(tag)
        meta = msg.metadata
        self.pending = meta.num_pending
        if meta.num_pending == 0 or meta.sequence.stream >= self.end_sequence:
            self.done.set_result(None)


async def _count_tags(url: str | None, start: datetime, kind: str | None, read: _Read) -> None:
    """Count every tag stored since ``start`` up to the last message the stream held when
    the read began (later ones belong to the next layer)."""
    async with open_nats(url, name="ttpctl-tags-layer") as session:
        info = await require_stream(session.js, subjects.STREAM_TAGS)
        counter = _Counter(read, info.state.last_seq)
        subject = subjects.tagged(kind) if kind else subjects.wildcard(subjects.TAGGED_PREFIX)
        sub = await session.js.subscribe(
            subject,
            stream=subjects.STREAM_TAGS,
            cb=counter.on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            config=ConsumerConfig(opt_start_time=start),
        )
        try:
            consumer = await sub.consumer_info()
            if consumer.num_pending == 0 and not (
                consumer.delivered and consumer.delivered.consumer_seq
            ):
                return
            counter.pending = consumer.num_pending or 0
            while not counter.done.done():
                await asyncio.wait({counter.done}, timeout=_PROGRESS_EVERY_S)
                if counter.done.done():
                    counter.done.result()  # what stopped the callback, if anything did
                    break
                if time.monotonic() - counter.last_seen > _IDLE_TIMEOUT_S:
                    raise NatsSessionError(
                        f"TTP_TAGS delivered nothing for {_IDLE_TIMEOUT_S:g} s while tags"
                        " were still pending"
                    )
                _progress(read, counter.pending)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _window_label(since: str) -> str:
    """``24h`` for a duration as typed, ``since <UTC time>`` for an instant."""
    try:
        parse_duration(since)
    except ValueError:
        return f"since {utc_text(parse_since(since))}"
    return since.strip().lower()


@tags_app.command("layer")
def layer(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="Where to write the layer ('-' for stdout).", show_default=False
        ),
    ],
    since: Annotated[
        str,
        typer.Option(
            "--since",
            help="Count the tags stored since this long ago (30m, 24h, 7d) or since an ISO"
            " 8601 time with an offset (2026-12-01T08:00:00Z).",
        ),
    ] = "24h",
    kind: Annotated[
        str | None,
        typer.Option("--kind", "-k", help="Only events of this source_kind (e.g. command)."),
    ] = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """Count the tags stored since --since into an ATT&CK Navigator layer (format 4.5).

    A technique's score is its number of tags in the window (the gradient runs up to the
    largest count); its comment gives the count, the window and the best confidence.
    Techniques ATT&CK does not list are left out and counted in the layer's metadata.
    Progress goes to stderr during a long read. Needs only read access to TTP_TAGS (the
    consumer role). Exit 0; 2 when NATS or TTP_TAGS is missing or FILE cannot be written.
    """
    if kind is not None and not subjects.is_token(kind):
        raise typer.BadParameter(
            f"{kind!r} is not a source_kind ([A-Za-z0-9_-]{{1,64}})", param_hint="--kind"
        )
    try:
        start = parse_since(since)
        window = _window_label(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    catalogue = load_catalogue()
    read = _Read(TagTally(catalogue))
    try:
        asyncio.run(_count_tags(nats_url, start, kind, read))
    except NatsSessionError as exc:
        fail(_LAYER_COMMAND, str(exc))
    end = datetime.now(UTC)
    tally = read.tally
    extra = [
        ("window start", utc_text(start)),
        ("window end", utc_text(end)),
        ("source kind", kind or "all"),
        ("messages read", str(read.messages)),
        ("undecodable messages skipped", str(read.skipped)),
    ]
    if tally.overflow:
        extra.append(("tags of further unknown technique ids (left out)", str(tally.overflow)))
    document = observed_layer(
        tally.entries(),
        catalogue,
        window_label=window,
        generator=_LAYER_GENERATOR,
        generated_at=end,
        extra_metadata=extra,
    )
    try:
        write_layer(file, document)
    except OSError as exc:
        fail(_LAYER_COMMAND, f"cannot write {file}: {exc.strerror or exc}")
    observed = len({entry["techniqueID"] for entry in document["techniques"]})
    tags = tally.tags + tally.overflow
    where = "the layer" if str(file) == "-" else str(file)
    note = (
        f"wrote {where}: {plural(observed, 'technique')} observed in {plural(tags, 'tag')}"
        f" of {plural(read.messages, 'message')}"
    )
    if read.skipped:
        note += f" ({plural(read.skipped, 'undecodable message')} skipped)"
    typer.echo(f"ttpctl {_LAYER_COMMAND}: {note}.", err=True)
    raise typer.Exit(0)
