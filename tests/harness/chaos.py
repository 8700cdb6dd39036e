"""What the chaos scenarios share: the servers they break, and the row each one reports.

A scenario is an async function that runs real `ttp-master` / `ttp-worker` processes against
real servers, injects its faults from outside (signals, server kills and restarts, a cut
`TcpProxy`), and returns a `ChaosRow`: what it did and what it found afterwards. The tests in
tests/chaos call a scenario with small sizes and assert the row shows no loss; bench/chaos.py
calls the same function with bigger sizes and prints the rows as a table. The scenarios live
in the `chaos_*` modules next to this one; here is what they share: the running fleet, rule
edits and PostgreSQL against the disk, events and the tags they got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from harness.master import (
    STARTER_RULES,
    StoredEntry,
    fire_examples,
    nats_client,
    query,
    rule_text,
    stream_messages,
    with_version,
)
from harness.processes import (
    TIMEOUT_S,
    Procs,
    fleet_matches,
    master_summary,
    status_feed,
    until,
)
from ttp_core.contract import subjects
from ttp_runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from ttp_worker.rulebook import RuleBook, RuleChange, decode_rule_message


@dataclass
class ChaosRow:
    """One scenario's outcome, in the columns of the bench/chaos.py table.

    `recovery_s` is the longest time, over the scenario's faults, from the moment a fault was
    healed (a process restarted, a server back, a proxy restored) to the moment the system was
    whole again (every worker on the master's digest, every event tagged); None when the
    scenario has no such moment.
    """

    scenario: str
    faults: str
    edits: int = 0
    events: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """Nothing lost and nothing duplicated."""
        return self.lost == 0 and self.duplicated == 0

    def as_json(self) -> dict[str, Any]:
        """The row as plain JSON-able data."""
        return asdict(self)


@dataclass
class ChaosServers:
    """A NATS server and a PostgreSQL database that a scenario may kill, restart or cut."""

    nats: EmbeddedNats
    postgres: EmbeddedPostgres
    database_url: str

    @property
    def nats_url(self) -> str:
        """Client URL of the NATS server."""
        return self.nats.url

    @property
    def database_dsn(self) -> str:
        """libpq form of `database_url`, for psycopg."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextlib.contextmanager
def own_servers(database: str = "ttp_chaos") -> Iterator[ChaosServers]:
    """Fresh embedded NATS and PostgreSQL servers, closed afterwards (for bench/chaos.py)."""
    with EmbeddedNats() as nats_server, EmbeddedPostgres() as postgres:
        postgres.ensure_database(database)
        yield ChaosServers(nats_server, postgres, postgres.url_for(database))


# --------------------------------------------------------------------------------------------
# A running fleet
# --------------------------------------------------------------------------------------------

WORKER_ENV = {
    "TTP_ACK_WAIT_S": "2",
    "TTP_FETCH_BATCH": "100",
    "TTP_STATUS_INTERVAL_S": "0.3",
    "TTP_FETCH_TIMEOUT_S": "0.3",
    "TTP_NATS_PING_INTERVAL_S": "1",
}
CONVERGE_TIMEOUT_S = 90.0
"""Generous: the chaos tier runs on a loaded 2-core machine."""
_NEWEST_STREAM_REVISION = "SELECT max(revision) AS newest FROM ttp_rule_event WHERE jetstream"


@dataclass
class Fleet:
    """Real processes of one scenario, a NATS client of the test's own, and the workers'
    latest `ttp.worker.status`."""

    procs: Procs
    nc: Client
    statuses: dict[str, dict[str, Any]]
    workers: tuple[str, ...]
    http_ports: dict[str, int] = field(default_factory=dict)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    def start_master(self, name: str, **env: str) -> None:
        """A `ttp-master` with a /readyz port of its own (kept across restarts of `name`)."""
        port = self.http_ports.setdefault(name, free_port())
        # The chaos servers authenticate nobody: control requests carry no verified identity.
        env = {"TTP_CONTROL_REQUIRE_VERIFIED_IDENTITY": "false", **env}
        self.procs.start(name, "ttp-master", TTP_HTTP_PORT=str(port), **env)

    def start_workers(self) -> None:
        for worker in self.workers:
            self.procs.worker(worker, **WORKER_ENV)

    def alive(self, name: str) -> bool:
        proc = self.procs.procs.get(name)
        return proc is not None and proc.poll() is None

    def kill_9(self, name: str) -> None:
        proc = self.procs.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    async def readyz(self, name: str) -> int | None:
        """HTTP status of `name`'s /readyz; None while nothing answers."""
        return (await self.readyz_reason(name))[0]

    async def readyz_reason(self, name: str) -> tuple[int | None, str]:
        """HTTP status and `reason` of `name`'s /readyz; (None, "") while nothing answers."""
        return await asyncio.to_thread(http_readyz, self.http_ports[name])

    async def leader(self, masters: Sequence[str]) -> str | None:
        """The master whose /readyz is 200 (leader and caught up), if any."""
        for name in masters:
            if self.alive(name) and await self.readyz(name) == 200:
                return name
        return None

    async def converged(self, timeout: float = CONVERGE_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the master has published everything PostgreSQL holds and every worker
        is ready on that summary; the summary."""
        dsn = self.procs.base_env["TTP_DATABASE_URL"].replace("+psycopg", "", 1)

        async def check() -> dict[str, Any] | None:
            summary = await master_summary(self.nc)
            if summary is None or not fleet_matches(self.statuses, summary, self.workers):
                return None
            newest = await query(dsn, _NEWEST_STREAM_REVISION)
            return summary if summary["revision"] >= (newest[0]["newest"] or 0) else None

        result: dict[str, Any] = await until(
            "every worker on the master's digest", check, self.procs, timeout=timeout
        )
        return result

    async def converged_afresh(self) -> dict[str, Any]:
        """`converged`, counting only the statuses workers send from now on (after a fault
        healed, a status sent before it proves nothing)."""
        self.statuses.clear()
        return await self.converged()


@contextlib.asynccontextmanager
async def running_fleet(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    workers: tuple[str, ...],
    *,
    database_url: str | None = None,
) -> AsyncIterator[Fleet]:
    """A `Procs` over the servers (the master's PostgreSQL URL may be a proxy's), a NATS
    client and the status feed; every process is killed on the way out."""
    procs = Procs(workdir, servers.nats_url, database_url or servers.database_url, rules)
    try:
        async with nats_client(servers.nats_url) as nc, status_feed(nc) as statuses:
            yield Fleet(procs, nc, statuses, workers)
    finally:
        procs.kill_all()


async def start_and_converge(fleet: Fleet, masters: Sequence[str], **master_env: str) -> float:
    """Masters (the first leads) and workers up, every worker on the master's digest; the
    seconds it took."""
    started = time.monotonic()
    fleet.start_master(masters[0], **master_env)
    expected = len(rule_files(Path(fleet.procs.base_env["TTP_RULES_DIR"])))

    async def loaded() -> dict[str, Any] | None:
        summary = await master_summary(fleet.nc)
        return summary if summary is not None and summary["rules"] == expected else None

    await until("the master's rule set", loaded, fleet.procs, masters[0], timeout=60)
    for name in masters[1:]:
        fleet.start_master(name, **master_env)
    fleet.start_workers()
    await fleet.converged()
    return time.monotonic() - started


def http_readyz(port: int) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return int(response.status), str(json.loads(response.read())["reason"])
    except urllib.error.HTTPError as error:
        return int(error.code), str(json.loads(error.read() or b"{}").get("reason", ""))
    except (urllib.error.URLError, OSError, ValueError):
        return None, ""


def rule_files(rules: Path) -> dict[str, Path]:
    """The rule files of a flat rules directory, by rule_id (the file stem)."""
    return {path.stem: path for path in sorted(rules.glob("*.yaml"))}


# --------------------------------------------------------------------------------------------
# Rule edits, and PostgreSQL against the disk
# --------------------------------------------------------------------------------------------


class RuleEditor:
    """Random creates, changes and deletes of the rule files of a flat rules directory, as
    editors and deploy tools make them (a change is a temporary file renamed over the old)."""

    def __init__(
        self,
        rules: Path,
        rng: random.Random,
        *,
        keep_at_least: int = 40,
        only_delete_created: bool = False,
    ) -> None:
        self.rules = rules
        self.rng = rng
        self.keep_at_least = keep_at_least
        self.only_delete_created = only_delete_created
        self.templates = sorted(STARTER_RULES.rglob("*.yaml"))
        self.created = 0
        self.counts: Counter[str] = Counter()

    def step(self) -> str:
        """One edit; its kind (`create`, `change`, `delete`)."""
        files = rule_files(self.rules)
        roll = self.rng.random()
        if roll < 0.25 or not files:
            kind = "create"
            self.created += 1
            rule_id = f"X{self.created:04d}"
            template = self.rng.choice(self.templates)
            (self.rules / f"{rule_id}.yaml").write_text(rule_text(template.stem, as_id=rule_id))
        elif roll < 0.5 and (deletable := self.deletable(files)):
            kind = "delete"
            files[self.rng.choice(deletable)].unlink()
        else:
            kind = "change"
            self.change(files[self.rng.choice(sorted(files))])
        self.counts[kind] += 1
        return kind

    def deletable(self, files: dict[str, Path]) -> list[str]:
        if self.only_delete_created:
            return sorted(rule_id for rule_id in files if rule_id.startswith("X"))
        return sorted(files) if len(files) > self.keep_at_least else []

    def change(self, path: Path) -> None:
        """A new rule_version of the rule in `path`, saved as temporary file + rename."""
        text = path.read_text()
        found = re.search(r"(?m)^rule_version: (\d+)$", text)
        assert found is not None, path
        temp = path.with_name(f".{path.name}.swp")
        temp.write_text(with_version(text, int(found.group(1)) + 1))
        os.replace(temp, path)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def postgres_differences(dsn: str, rules: Path) -> list[str]:
    """How PostgreSQL's live rules differ from the files on disk (empty when they agree):
    each file must be a live rule row holding exactly its text, and nothing else may live."""
    rows = await query(
        dsn, "SELECT rule_id, source_path, yaml_text FROM ttp_rule WHERE NOT deleted"
    )
    live = {r["rule_id"]: (r["source_path"], r["yaml_text"]) for r in rows}
    disk = {rule_id: (path.name, path.read_text()) for rule_id, path in rule_files(rules).items()}
    problems = [f"{r}: on disk, not live in PostgreSQL" for r in sorted(disk.keys() - live.keys())]
    problems += [f"{r}: live in PostgreSQL, not on disk" for r in sorted(live.keys() - disk.keys())]
    problems += [
        f"{r}: PostgreSQL holds another text or path"
        for r in sorted(disk.keys() & live.keys())
        if disk[r] != live[r]
    ]
    rejected = await query(dsn, "SELECT source_path FROM ttp_rule_rejection")
    problems += [f"{r['source_path']}: rejected" for r in rejected]
    return problems


async def wait_disk_in_postgres(
    fleet: Fleet, dsn: str, rules: Path, *, timeout: float = TIMEOUT_S
) -> None:
    """Wait until `postgres_differences` finds none; AssertionError on `timeout`."""

    async def disk_in_postgres() -> bool:
        return not await postgres_differences(dsn, rules)

    await until("PostgreSQL to equal the disk", disk_in_postgres, fleet.procs, timeout=timeout)


async def outbox_against_stream(
    dsn: str, entries: Sequence[StoredEntry], after_revision: int
) -> tuple[int, int, int]:
    """(stored, lost, duplicated) rule events: outbox rows for TTP_RULES newer than
    `after_revision` that the stream never stored, and revisions it stored more than once.
    The per-ruleset summaries are left out: they repeat the last revision by design."""
    revisions = [
        e.revision
        for e in entries
        if e.subject != subjects.RULESET_REVISION and e.revision is not None
    ]
    rows = await query(
        dsn,
        "SELECT revision FROM ttp_rule_event WHERE jetstream AND revision > %s",
        after_revision,
    )
    outbox = {r["revision"] for r in rows}
    counts = Counter(revisions)
    lost = len(outbox - counts.keys())
    duplicated = sum(n - 1 for n in counts.values())
    return len(revisions), lost, duplicated


# --------------------------------------------------------------------------------------------
# Events and their tags
# --------------------------------------------------------------------------------------------


def make_events(count: int, seed: int = 4, prefix: str = "ev") -> list[dict[str, Any]]:
    """Events that fire the starter pack's rules, one in five a harmless command."""
    examples = fire_examples()
    rng = random.Random(seed)
    events = []
    for number in range(count):
        if number % 5 == 4:
            kind, payload = "command", {"command_text": f"echo harmless {number}"}
        else:
            kind, payload = rng.choice(examples)
        events.append(
            {
                "source_kind": kind,
                "source_id": f"{prefix}-{number}",
                "session_id": f"s-{number % 17}",
                "payload": payload,
            }
        )
    return events


async def snapshot_index(js: JetStreamContext) -> RuleBook:
    """An index built offline from everything TTP_RULES holds (as a new worker would)."""
    changes: list[RuleChange] = []
    for msg in await stream_messages(js, subjects.STREAM_RULES):
        change = decode_rule_message(msg.subject, msg.data)
        if change is not None:
            changes.append(change)
    book = RuleBook()
    book.load_snapshot(changes)
    return book


async def read_tags(js: JetStreamContext) -> tuple[dict[str, set[str]], Counter[str]]:
    """Everything TTP_TAGS holds: the tag uuids of each event (by source_id), and how many
    tag messages each event has."""
    uuids: dict[str, set[str]] = {}
    messages: Counter[str] = Counter()
    for msg in await stream_messages(js, subjects.STREAM_TAGS, chunk=1000):
        data = json.loads(msg.data)["data"]
        messages[data["source_id"]] += 1
        uuids[data["source_id"]] = {t["uuid"] for t in data["tags"]}
    return uuids, messages


def firing_ids(book: RuleBook, events: Iterable[dict[str, Any]]) -> set[str]:
    """The source_ids of the `events` that fire a rule of `book`'s current index."""
    return {e["source_id"] for e in events if book.current.index.evaluate(e)}


def extra_tag_messages(messages: Counter[str]) -> int:
    """Tag messages beyond the first of each event (`read_tags`' counts): the duplicates."""
    return sum(n - 1 for n in messages.values() if n > 1)


async def wait_tagged(fleet: Fleet, firing: set[str], *, timeout: float) -> None:
    """Wait until the workers' consumer is drained and every event in `firing` has a tag
    message; on `timeout` return all the same: the caller counts what is missing."""

    async def all_tagged() -> bool:
        if not await consumer_drained(fleet.js):
            return False
        _, messages = await read_tags(fleet.js)
        return firing <= messages.keys()

    with contextlib.suppress(AssertionError):
        await until("every firing event tagged", all_tagged, fleet.procs, timeout=timeout)


async def consumer_drained(js: JetStreamContext) -> bool:
    """The workers' shared consumer has nothing pending and nothing unacknowledged."""
    info = await js.consumer_info(subjects.STREAM_EVENTS, "ttp-workers")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def publish_acked(js: JetStreamContext, events: Sequence[dict[str, Any]]) -> int:
    """Publish `events` as a producer that retries until every one is acknowledged: each
    carries `Nats-Msg-Id: <source_id>`, so a retry of a message that was stored but whose
    PubAck was lost is dropped by the stream. Returns how many publishes were retried."""
    retried = 0
    pending = list(events)
    while pending:
        outcomes = await asyncio.gather(
            *(
                js.publish(
                    subjects.event(e["source_kind"]),
                    json.dumps(e).encode(),
                    timeout=3,
                    headers={"Nats-Msg-Id": e["source_id"]},
                )
                for e in pending
            ),
            return_exceptions=True,
        )
        pending = [
            e
            for e, outcome in zip(pending, outcomes, strict=True)
            if isinstance(outcome, Exception)
        ]
        if pending:
            retried += len(pending)
            await asyncio.sleep(0.2)
    return retried
