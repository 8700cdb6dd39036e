"""Helpers shared by the master's integration and end-to-end tests.

Nothing here replaces a server: the tests run the real master against real NATS and
PostgreSQL, and these helpers only *observe* what it does, the way a third party would:

- :class:`BusRecorder` records every message the master publishes on ``ttp.>`` (a core
  subscription, so it sees each publish, including the core-only ``ttp.rule.rejected.*``);
- :class:`Markers` turns "nothing else happened" into something a test can wait for instead of
  sleeping: it writes a *marker* rule file and waits for that rule's ``reloaded`` event. The
  watcher reads inotify events in order and handles one batch at a time, every batch commits
  its revisions before the next one starts, and the relay publishes in revision order over
  one connection (NATS keeps one publisher's order for a subscriber). So once the marker's
  event has arrived, every event the master will ever publish for the edits made before the
  marker was written has arrived before it;
- :class:`StoredLog` counts what TTP_RULES *stored* (not what was published), for the
  crash/dedup tests;
- small PostgreSQL readers (psycopg) for ``ttp_rule``, ``ttp_rule_event``,
  ``ttp_rule_rejection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import psycopg
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from psycopg.rows import dict_row

from harness.nats_roles import RoleNats
from ttp_core.contract import subjects
from ttp_core.rules.validator import RuleValidator
from ttp_master.db.repository import RuleUpsert

REPO = Path(__file__).resolve().parents[2]
STARTER_RULES = REPO / "rules"
TIMEOUT_S = 30.0
"""Generous bound for anything the master should do in well under a second."""

MARKER_PREFIX = "zz-marker-"
_marker_numbers = itertools.count(1)
_validator = RuleValidator()


# --------------------------------------------------------------------------------------------
# Rule files
# --------------------------------------------------------------------------------------------


def starter_rule(rule_id: str) -> Path:
    """The file of a rule of the project's starter pack."""
    found = sorted(STARTER_RULES.rglob(f"{rule_id}.yaml"))
    if not found:
        raise LookupError(f"no starter rule {rule_id}")
    return found[0]


def starter_ids(count: int) -> list[str]:
    """The first `count` rule ids of the starter pack, in id order."""
    ids = sorted(p.stem for p in STARTER_RULES.rglob("*.yaml"))
    if len(ids) < count:
        raise LookupError(f"the starter pack has only {len(ids)} rules")
    return ids[:count]


def rule_text(rule_id: str, *, as_id: str | None = None) -> str:
    """A starter rule's YAML, optionally renamed to `as_id` (whose file stem must match)."""
    text = starter_rule(rule_id).read_text()
    if as_id is not None:
        text, replaced = re.subn(r"(?m)^rule_id: .*$", f"rule_id: {as_id}", text, count=1)
        assert replaced == 1
    return text


def with_version(text: str, version: int) -> str:
    """The same rule with another `rule_version` (a real change of the rule)."""
    changed, replaced = re.subn(
        r"(?m)^rule_version: \d+$", f"rule_version: {version}", text, count=1
    )
    assert replaced == 1
    return changed


def rule_upsert(rule_id: str, version: int = 1) -> RuleUpsert:
    """Starter rule R0001 as `rule_id` at `version`, validated, as the repository takes it."""
    text = with_version(rule_text("R0001", as_id=rule_id), version)
    report = RuleValidator().validate_bytes(text.encode(), f"{rule_id}.yaml", stem=rule_id)
    assert report.ok and report.compiled is not None, report.errors
    compiled = report.compiled
    return RuleUpsert(
        rule_id=rule_id,
        rule_version=compiled.rule_version,
        name=compiled.rule.name,
        content_sha256=compiled.content_sha256,
        definition=compiled.rule.normalised(),
        yaml_text=text,
        source_path=f"{rule_id}.yaml",
        is_external=compiled.is_external,
    )


def cosmetic_variant(text: str) -> str:
    """The same rule spelled differently: comments, blank lines, trailing spaces, indent."""
    lines = ["# a comment the canonical hash must ignore", ""]
    for line in text.splitlines():
        lines.append(line + "   " if line.strip() else line)
        if line.startswith("name:"):
            lines.append("# another comment")
    lines.append("")
    lines.append("# trailing comment")
    return "\n".join(lines) + "\n\n"


def install(rules_dir: Path, rule_ids: list[str], *, flat: bool = False) -> dict[str, Path]:
    """Copy starter rules into `rules_dir` (in their category subdirectory unless `flat`)."""
    placed: dict[str, Path] = {}
    for rule_id in rule_ids:
        source = starter_rule(rule_id)
        target = rules_dir / source.name if flat else rules_dir / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        placed[rule_id] = target
    return placed


def starter_pack_in(rules: Path) -> Path:
    """`rules` created holding the starter pack, flat (one directory, files by rule_id)."""
    rules.mkdir(parents=True)
    for path in STARTER_RULES.rglob("*.yaml"):
        (rules / path.name).write_bytes(path.read_bytes())
    return rules


def fire_examples() -> list[tuple[str, dict[str, Any]]]:
    """(source kind, payload) of every inline `fire` example of the starter pack."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(STARTER_RULES.rglob("*.yaml")):
        rule = yaml.safe_load(path.read_text())
        for case in rule.get("tests", []) or []:
            if case.get("expect") == "fire":
                found.append((rule["applies_to"][0], case["event"]))
    return found


def expected_rule(path: Path, rel: str) -> Any:
    """What ttp_core makes of a rule file: the compiled rule (asserts it is valid)."""
    report = _validator.validate_file(path, rel)
    assert report.ok, report.errors
    assert report.compiled is not None
    return report.compiled


# --------------------------------------------------------------------------------------------
# Observing NATS
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One message the master published, as a subscriber received it."""

    subject: str
    event: dict[str, Any]
    headers: dict[str, str]

    @property
    def data(self) -> dict[str, Any]:
        return self.event["data"]

    @property
    def kind(self) -> str:
        if self.subject == subjects.RULESET_REVISION:
            return "ruleset"
        return self.subject.split(".")[2]  # ttp.rule.<kind>.<rule_id>

    @property
    def rule_id(self) -> str:
        return subjects.last_token(self.subject)

    @property
    def is_marker(self) -> bool:
        return self.kind != "ruleset" and self.rule_id.startswith(MARKER_PREFIX)


class BusRecorder:
    """Every message on ``ttp.>``, in arrival order (a core subscription)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.messages: list[Seen] = []
        self._arrived = asyncio.Condition()
        self._sub: Any = None

    async def start(self) -> BusRecorder:
        self._sub = await self.nc.subscribe("ttp.>", cb=self._on_message)
        await self.nc.flush()
        return self

    async def _on_message(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        self.messages.append(Seen(msg.subject, event, dict(msg.headers or {})))
        async with self._arrived:
            self._arrived.notify_all()

    async def wait_for(
        self, accept: Callable[[Seen], bool], *, after: int = 0, timeout: float = TIMEOUT_S
    ) -> int:
        """Index of the first message at or after `after` that `accept` accepts."""

        def found() -> int | None:
            for index in range(after, len(self.messages)):
                if accept(self.messages[index]):
                    return index
            return None

        async def wait() -> int:
            async with self._arrived:
                while (index := found()) is None:
                    await self._arrived.wait()
                return index

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            seen = [f"{m.subject} rev={m.data.get('revision')}" for m in self.messages[after:]]
            raise AssertionError(
                f"no matching message within {timeout} s; seen since: {seen}"
            ) from None


def rule_events(messages: list[Seen], kind: str = "reloaded") -> list[Seen]:
    """The messages of one kind (reloaded, rejected, state), markers left out."""
    return [m for m in messages if m.kind == kind and not m.is_marker]


class Markers:
    """Sync points through the whole pipeline: watcher -> PostgreSQL -> relay -> NATS."""

    def __init__(self, bus: BusRecorder, where: Path) -> None:
        self.bus = bus
        self.where = where
        self.position = 0

    async def sync(self) -> int:
        """Write a marker rule and wait until everything up to it is published; return the
        index in `bus.messages` just after that.

        One watcher batch commits in one transaction but not in file-event order (upserts
        take their revisions before deletes and rejections), so the marker's own event is
        not necessarily the batch's last. The relay publishes every row of a transaction in
        the same pass (all are visible at once) and ends a pass that drained the outbox
        with a ``ttp.ruleset.revision`` message, so the first such message after the
        marker's event closes the batch the marker was in. (The edits of these tests stay
        well below the relay's batch size, so each pass drains the outbox.)
        """
        name = f"{MARKER_PREFIX}{next(_marker_numbers)}"
        (self.where / f"{name}.yaml").write_text(rule_text("R0001", as_id=name))
        subject = subjects.rule_reloaded(name)
        index = await self.bus.wait_for(lambda m: m.subject == subject, after=self.position)
        end = await self.bus.wait_for(lambda m: m.kind == "ruleset", after=index + 1)
        self.position = end + 1
        return self.position

    async def observe(self, edit: Callable[[], Any]) -> list[Seen]:
        """Everything published because of `edit` (a function, sync or async), provably
        complete: the messages between a marker before and a marker after the edit (the
        markers' own events and the ruleset summaries left out)."""
        start = await self.sync()
        outcome = edit()
        if isinstance(outcome, Awaitable):
            await outcome
        end = await self.sync()
        return [m for m in self.bus.messages[start:end] if not m.is_marker and m.kind != "ruleset"]


async def stream_last(js: JetStreamContext, subject: str) -> dict[str, Any] | None:
    """The envelope TTP_RULES holds for `subject`, None if none."""
    import nats.js.errors

    try:
        msg = await js.get_last_msg(subjects.STREAM_RULES, subject)
    except nats.js.errors.NotFoundError:
        return None
    return json.loads(msg.data or b"{}")


async def stream_messages(js: JetStreamContext, stream: str, chunk: int = 500) -> list[Msg]:
    """Every message `stream` holds, oldest first, read through a throwaway pull consumer
    (for TTP_RULES, which keeps one message per subject, that is the last of each)."""
    sub = await js.pull_subscribe(
        "",
        stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    total = (await js.stream_info(stream)).state.messages
    messages: list[Msg] = []
    unavailable = 0
    try:
        while len(messages) < total:
            try:
                messages += await sub.fetch(min(chunk, total - len(messages)), timeout=5)
            except nats.js.errors.ServiceUnavailableError:
                # A replicated stream's new consumer answers 503 until its leader is
                # elected: wait for it, as any client of a cluster would.
                unavailable += 1
                if unavailable > 50:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await sub.unsubscribe()
    return messages


@dataclass
class StoredEntry:
    stream_seq: int
    subject: str
    msg_id: str | None
    revision: int | None


@dataclass
class StoredLog:
    """Every message TTP_RULES *stores* from now on, by stream sequence.

    A core subscriber sees every publish, including the ones JetStream then drops as
    duplicates (same ``Nats-Msg-Id``), so it cannot prove deduplication. This is an ordered
    push consumer on all of TTP_RULES starting at the next message: it receives stored
    messages with their stream sequence. TTP_RULES keeps one message per subject, so a
    message could in principle be replaced before it is delivered; :meth:`complete` therefore
    checks that the sequences received are exactly every sequence the stream assigned since
    the start (``state.last_seq``): no gap means no stored message went unseen, so counting
    the entries counts what the stream stored.
    """

    js: JetStreamContext
    first_seq: int = 0
    entries: list[StoredEntry] = field(default_factory=list)
    _sub: Any = None

    async def start(self) -> StoredLog:
        info = await self.js.stream_info(subjects.STREAM_RULES)
        self.first_seq = info.state.last_seq + 1
        self._sub = await self.js.subscribe(
            subjects.RULES_STREAM_SUBJECTS[0],
            stream=subjects.STREAM_RULES,
            cb=self._on_message,
            ordered_consumer=True,
            config=ConsumerConfig(
                filter_subjects=list(subjects.RULES_STREAM_SUBJECTS),
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.first_seq,
            ),
        )
        return self

    async def _on_message(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        self.entries.append(
            StoredEntry(
                msg.metadata.sequence.stream,
                msg.subject,
                (msg.headers or {}).get("Nats-Msg-Id"),
                event.get("data", {}).get("revision"),
            )
        )

    async def complete(self, timeout: float = TIMEOUT_S) -> list[StoredEntry]:
        """Wait until every message stored so far has been received; the entries."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            info = await self.js.stream_info(subjects.STREAM_RULES)
            last = info.state.last_seq
            received = [e.stream_seq for e in self.entries]
            if (received and received[-1] >= last) or last < self.first_seq:
                expected = list(range(self.first_seq, last + 1))
                assert received[: len(expected)] == expected, (
                    f"stored sequences {expected} but received {received}: a stored message "
                    "went unseen, so the count would not be sound"
                )
                return list(self.entries)
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"stream at seq {last}, received only {received}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


async def query(dsn: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall() if cur.description is not None else []


async def db_rules(dsn: str) -> dict[str, dict[str, Any]]:
    """``ttp_rule`` by rule_id."""
    return {r["rule_id"]: r for r in await query(dsn, "SELECT * FROM ttp_rule")}


async def db_events(dsn: str, rule_id: str | None = None) -> list[dict[str, Any]]:
    """``ttp_rule_event`` in revision order (of one rule if given)."""
    if rule_id is None:
        return await query(dsn, "SELECT * FROM ttp_rule_event ORDER BY revision")
    return await query(
        dsn, "SELECT * FROM ttp_rule_event WHERE rule_id = %s ORDER BY revision", rule_id
    )


async def db_rejections(dsn: str) -> dict[str, dict[str, Any]]:
    """``ttp_rule_rejection`` by source path."""
    return {r["source_path"]: r for r in await query(dsn, "SELECT * FROM ttp_rule_rejection")}


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = TIMEOUT_S
) -> None:
    """Poll an async condition until true; fail naming `what` after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Payload checks
# --------------------------------------------------------------------------------------------


def check_reloaded(
    seen: Seen, rules_dir: Path, rel: str, db_row: dict[str, Any], *, traced: bool = False
) -> None:
    """`seen` is the right ``reloaded`` event for the live rule file `rel`: CloudEvents
    envelope, revision equal to PostgreSQL's, payload equal to what ttp_core makes of it.
    `traced`: the W3C trace context must be in the headers (only when the publishing process
    installed the OpenTelemetry SDK, as `ttp-master` does; an in-process Master does not)."""
    compiled = expected_rule(rules_dir / rel, rel)
    event, data = seen.event, seen.data
    revision = data["revision"]
    assert seen.subject == subjects.rule_reloaded(compiled.rule_id)
    assert event["specversion"] == "1.0"
    assert event["type"] == "ttp.rule.reloaded.v1"
    assert event["source"] == "ttp-rulebus/master"
    assert event["subject"] == compiled.rule_id
    assert event["datacontenttype"] == "application/json"
    assert event["id"] == f"ttp-rev-{revision}"
    assert seen.headers.get("Nats-Msg-Id") == event["id"]
    if traced:
        assert "traceparent" in seen.headers
    assert data["rule_id"] == compiled.rule_id
    assert data["deleted"] is False
    assert data["source_path"] == rel
    assert data["rule_version"] == compiled.rule_version
    assert data["content_sha256"] == compiled.content_sha256
    assert data["rule"] == json.loads(json.dumps(compiled.rule.normalised()))
    assert db_row["revision"] == revision
    assert db_row["content_sha256"] == compiled.content_sha256
    assert db_row["source_path"] == rel
    assert db_row["deleted"] is False


def check_tombstone(seen: Seen, rule_id: str, rel: str, db_row: dict[str, Any]) -> None:
    """`seen` is the tombstone of `rule_id`, whose file was `rel`."""
    data = seen.data
    assert seen.subject == subjects.rule_reloaded(rule_id)
    assert seen.event["type"] == "ttp.rule.reloaded.v1"
    assert seen.event["id"] == f"ttp-rev-{data['revision']}"
    assert data["rule_id"] == rule_id
    assert data["deleted"] is True
    assert data["rule"] is None
    assert data["source_path"] == rel
    assert db_row["deleted"] is True
    assert db_row["revision"] == data["revision"]


@contextlib.asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[Client]:
    import nats

    nc = await nats.connect(
        url, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


# --------------------------------------------------------------------------------------------
# The master, in-process
# --------------------------------------------------------------------------------------------


def master_settings(nats_url: str, database_url: str, rules_dir: Path, **overrides: Any) -> Any:
    """MasterSettings for a test: loopback health server on a free port, 30 ms debounce.

    The test servers of these tests authenticate nobody, so the control service serves
    requests without a verified identity (as admin, actor ``unverified``); a test on the
    roles-secured server (tests/harness/nats_roles.py) passes
    ``control_require_verified_identity=True`` and its role's settings."""
    from ttp_master.settings import MasterSettings

    values: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "rules_dir": rules_dir,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "debounce_ms": 30,
        "log_format": "console",
        "control_require_verified_identity": False,
    }
    values.update(overrides)
    return MasterSettings(**values)


def master_role_settings(
    roles: RoleNats, database_url: str, rules_dir: Path, **overrides: Any
) -> Any:
    """:func:`master_settings` of a master logged in as the ``master`` role on `roles`, in
    the default identity mode (verified), exactly as a master process of that role runs."""
    role_settings = {
        name.removeprefix("TTP_").lower(): value for name, value in roles.env("master").items()
    }
    return master_settings(
        **{**role_settings, "database_url": database_url, "rules_dir": rules_dir},
        control_require_verified_identity=True,
        **overrides,
    )


async def wait_ready(master: Any, task: asyncio.Task[None], timeout: float = 60.0) -> None:
    """Wait until `master` is leader and caught up; fail early if it died."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not master.state.readiness()[0]:
        if task.done():
            task.result()  # raises what killed it
            raise AssertionError("master stopped before it became ready")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"master not ready after {timeout} s: {master.state.readiness()}")
        await asyncio.sleep(0.02)


@dataclass
class InProcessMaster:
    master: Any
    task: asyncio.Task[None]

    async def ready(self, timeout: float = 60.0) -> None:
        await wait_ready(self.master, self.task, timeout)

    async def stop(self, timeout: float = 20.0) -> None:
        """request_stop() and wait for run() to return; re-raises what it raised."""
        self.master.request_stop()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


@contextlib.asynccontextmanager
async def running_master(settings: Any, *, ready: bool = True) -> AsyncIterator[InProcessMaster]:
    """`Master(settings).run()` as a task; stopped (and its failure raised) on exit."""
    from ttp_master.bootstrap import Master

    master = Master(settings)
    handle = InProcessMaster(master, asyncio.create_task(master.run(), name="test-master"))
    try:
        if ready:
            await handle.ready()
        yield handle
    finally:
        if not handle.task.done():
            master.request_stop()
            try:
                await asyncio.wait_for(handle.task, 20.0)
            except BaseException:
                handle.task.cancel()
                with contextlib.suppress(BaseException):
                    await handle.task
                raise
        else:
            handle.task.result()


@dataclass
class MasterRig:
    """One in-process master test's world: its NATS, its database, its rules directory, a
    directory outside it, and a recorder of the bus."""

    nats_url: str
    database_url: str
    dsn: str
    rules: Path
    outside: Path
    nc: Client
    bus: BusRecorder

    def settings(self, **overrides: Any) -> Any:
        return master_settings(self.nats_url, self.database_url, self.rules, **overrides)

    def master(self, **overrides: Any) -> Any:
        return running_master(self.settings(**overrides))

    def markers(self, where: Path | None = None) -> Markers:
        return Markers(self.bus, where or self.rules)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.rules).as_posix()

    async def expect_reloaded(self, seen: Seen, path: Path) -> None:
        rows = await db_rules(self.dsn)
        check_reloaded(seen, self.rules, self.rel(path), rows[seen.rule_id])

    async def expect_stream_holds(self, seen: Seen) -> None:
        """TTP_RULES' message for the subject is exactly this event."""
        held = await stream_last(self.nc.jetstream(), seen.subject)
        assert held == seen.event


async def service_roles(nc: Client) -> list[str]:
    """The `role` metadata of every `ttp-ctl` instance answering `$SRV.INFO`."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.INFO.ttp-ctl", b"", reply=inbox)
    roles = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            roles.append(json.loads(msg.data)["metadata"]["role"])
    except (TimeoutError, nats.errors.TimeoutError):
        pass
    finally:
        await sub.unsubscribe()
    return roles
