"""`ttpctl tags tail`: follow the ATT&CK tags the workers publish on TTP_TAGS.

An ephemeral ordered consumer (no state left on the server, nothing to acknowledge) reads
``ttp.tagged.*`` (or one kind's subject), from now on by default, or from a point in the
past. Each message is decoded with the contract's models, filtered, and printed as readable
lines or, with ``--json``, as one JSON object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final

import typer
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from ttp_core.contract import subjects
from ttp_core.contract.payloads import CloudEvent, EventTagged, TagData, decode
from ttpctl.durations import parse_since
from ttpctl.nats_session import NatsSessionError, NatsUrlOption, fail, open_nats, require_stream

__all__ = ["TagFilter", "tags_app"]

tags_app = typer.Typer(help="Follow the ATT&CK tags workers publish.", no_args_is_help=True)

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
    when = message.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
                    typer.echo(
                        f"ttpctl {_COMMAND}: skipped message{_sequence(msg)} on {msg.subject}:"
                        f" not a valid {EventTagged.event_type} message ({_first_error(exc)})",
                        err=True,
                    )
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
