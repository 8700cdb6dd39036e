"""What the chaos scenarios share: the servers they break, and the row each one reports.

A scenario is an async function that runs real `ttp-master` / `ttp-worker` processes against
real servers, injects its faults from outside (signals, server kills and restarts, a cut
`TcpProxy`), and returns a `ChaosRow`: what it did and what it found afterwards. The tests in
tests/chaos call a scenario with small sizes and assert the row shows no loss; bench/chaos.py
calls the same function with bigger sizes and prints the rows as a table.
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
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from harness.master import (
    STARTER_RULES,
    StoredEntry,
    StoredLog,
    nats_client,
    query,
    rule_text,
    with_version,
)
from harness.processes import Procs, fleet_matches, master_summary, status_feed, stop, until
from harness.tcp_proxy import proxy_to, via
from ttp_core.contract import subjects
from ttp_core.contract.control import StateSetRequest
from ttp_runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from ttp_worker.rulebook import RuleBook, RuleChange, decode_rule_message
from ttpctl.control_client import ControlClient, ControlClientError


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


def starter_pack_in(rules: Path) -> Path:
    """`rules` created holding the starter pack, flat (one directory, files by rule_id)."""
    rules.mkdir(parents=True)
    for path in STARTER_RULES.rglob("*.yaml"):
        (rules / path.name).write_bytes(path.read_bytes())
    return rules


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
# Scenario: kill -9 of the master during rule edits
# --------------------------------------------------------------------------------------------


async def master_kill_storm(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    *,
    edits: int = 300,
    kills: int = 5,
    standby: bool = False,
    seed: int = 1,
) -> ChaosRow:
    """kill -9 of the leading master at random moments while rule files are created, changed
    and deleted; without a standby the killed master is restarted (as a supervisor would),
    with one the standby takes over and the killed process comes back as the new standby.

    Recovery is, per kill, from the fault healed (the restart; with a standby, the kill itself)
    to a master answering /readyz 200 (leader, outbox published); the row has the longest.
    Lost: outbox rows for TTP_RULES the stream never stored; duplicated: revisions it stored
    twice. `details` says whether PostgreSQL equals the disk and every worker the master."""
    rng = random.Random(seed)
    masters = ("master-a", "master-b") if standby else ("master-a",)
    async with running_fleet(servers, rules, workdir, ("k1", "k2")) as fleet:
        await start_and_converge(fleet, masters)
        start = await master_summary(fleet.nc)
        assert start is not None
        stored = await StoredLog(fleet.js).start()
        editor = RuleEditor(rules, rng)
        recoveries: list[float] = []

        async def killer() -> None:
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                victim = await fleet.leader(masters) or rng.choice(masters)
                fleet.kill_9(victim)
                healed = time.monotonic()
                if not standby:
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    healed = time.monotonic()
                fleet.start_master(victim)

                async def led() -> bool:
                    return await fleet.leader(masters) is not None

                await until("a leading master again", led, fleet.procs, timeout=60)
                recoveries.append(time.monotonic() - healed)

        kill_task = asyncio.create_task(killer())
        try:
            while editor.total < edits or not kill_task.done():
                editor.step()
                await asyncio.sleep(rng.uniform(0.005, 0.05))
            await kill_task
        finally:
            kill_task.cancel()
        edited = time.monotonic()

        async def disk_in_postgres() -> bool:
            return not await postgres_differences(servers.database_dsn, rules)

        await until("PostgreSQL to equal the disk", disk_in_postgres, fleet.procs, timeout=60)
        final = await fleet.converged()
        converged_s = time.monotonic() - edited
        count, lost, duplicated = await outbox_against_stream(
            servers.database_dsn, await stored.complete(), start["revision"]
        )
        await stored.stop()
        return ChaosRow(
            scenario="master-kill-storm" + ("-standby" if standby else ""),
            faults=f"{kills}x kill -9 master" + (" (standby)" if standby else ""),
            edits=editor.total,
            events=count,
            lost=lost,
            duplicated=duplicated,
            recovery_s=round(max(recoveries), 2),
            details={
                "edit_kinds": dict(editor.counts),
                "recoveries_s": [round(r, 2) for r in recoveries],
                "converged_after_last_edit_s": round(converged_s, 2),
                "postgres_differences": await postgres_differences(servers.database_dsn, rules),
                "rules": final["rules"],
                "workers_on_master_digest": fleet_matches(fleet.statuses, final, fleet.workers),
            },
        )


# --------------------------------------------------------------------------------------------
# Events and their tags
# --------------------------------------------------------------------------------------------


def fire_examples() -> list[tuple[str, dict[str, Any]]]:
    """(source kind, payload) of every inline `fire` example of the starter pack."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(STARTER_RULES.rglob("*.yaml")):
        rule = yaml.safe_load(path.read_text())
        for case in rule.get("tests", []) or []:
            if case.get("expect") == "fire":
                found.append((rule["applies_to"][0], case["event"]))
    return found


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
    sub = await js.pull_subscribe(
        "",
        stream=subjects.STREAM_RULES,
        # TTP_RULES keeps one message per subject: "all" is the last of each.
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    total = (await js.stream_info(subjects.STREAM_RULES)).state.messages
    changes: list[RuleChange] = []
    seen = 0
    while seen < total:
        for msg in await sub.fetch(min(500, total - seen), timeout=5):
            seen += 1
            change = decode_rule_message(msg.subject, msg.data)
            if change is not None:
                changes.append(change)
    await sub.unsubscribe()
    book = RuleBook()
    book.load_snapshot(changes)
    return book


async def read_tags(js: JetStreamContext) -> tuple[dict[str, set[str]], Counter[str]]:
    """Everything TTP_TAGS holds: the tag uuids of each event (by source_id), and how many
    tag messages each event has."""
    total = (await js.stream_info(subjects.STREAM_TAGS)).state.messages
    sub = await js.pull_subscribe(
        "",
        stream=subjects.STREAM_TAGS,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    uuids: dict[str, set[str]] = {}
    messages: Counter[str] = Counter()
    read = 0
    while read < total:
        for msg in await sub.fetch(min(1000, total - read), timeout=5):
            read += 1
            data = json.loads(msg.data)["data"]
            messages[data["source_id"]] += 1
            uuids[data["source_id"]] = {t["uuid"] for t in data["tags"]}
    await sub.unsubscribe()
    return uuids, messages


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


# --------------------------------------------------------------------------------------------
# Scenario: NATS restarted during event flow and rule edits
# --------------------------------------------------------------------------------------------


async def nats_restart(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    *,
    events: int = 3_000,
    restarts: int = 2,
    seed: int = 2,
) -> ChaosRow:
    """NATS restarted (the first time kill -9, then an orderly restart) while a producer
    publishes events and rule files are created, changed and deleted. Every acknowledged event
    must be tagged exactly once (one message per firing event in TTP_TAGS: the workers' tags
    carry a Nats-Msg-Id, so a redelivered event's tag is dropped as a duplicate), and the
    workers converge on the master's digest. The edits never delete a starter rule (only the
    copies they created), so which events fire does not depend on when they are tagged.

    Recovery is, per restart, from NATS serving again to every worker reporting (afresh)
    that it holds the master's digest; the row has the longest."""
    rng = random.Random(seed)
    async with running_fleet(servers, rules, workdir, ("n1", "n2", "n3")) as fleet:
        await start_and_converge(fleet, ("master",))
        book = await snapshot_index(fleet.js)
        batch = make_events(events, seed, prefix="nr")
        firing = {e["source_id"] for e in batch if book.current.index.evaluate(e)}
        editor = RuleEditor(rules, rng, only_delete_created=True)
        recoveries: list[float] = []
        retried = 0
        # The flow lasts through every restart, so some publishes meet a server away.
        pause = (2.5 * restarts + 2.0) / max(1, events // 100)
        done = asyncio.Event()

        outage = asyncio.Event()
        sent_in_outage = 0
        readiness: Counter[str] = Counter()

        async def watch_readiness() -> None:
            while not done.is_set():
                if outage.is_set():
                    code, reason = await fleet.readyz_reason("master")
                    readiness[f"{code} {reason}"] += 1
                await asyncio.sleep(0.1)

        async def produce() -> None:
            nonlocal retried, sent_in_outage
            for start in range(0, events, 100):
                chunk = batch[start : start + 100]
                sent_in_outage += len(chunk) if outage.is_set() else 0
                retried += await publish_acked(fleet.js, chunk)
                await asyncio.sleep(pause)

        async def edit() -> None:
            while not done.is_set():
                editor.step()
                await asyncio.sleep(rng.uniform(0.05, 0.3))

        async def restart_nats() -> None:
            for number in range(restarts):
                await asyncio.sleep(rng.uniform(0.8, 1.6))
                outage.set()
                if number % 2 == 0:
                    await asyncio.to_thread(servers.nats.kill)
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    await asyncio.to_thread(servers.nats.start)
                else:
                    await asyncio.to_thread(servers.nats.restart)
                outage.clear()
                healed = time.monotonic()
                fleet.statuses.clear()  # only statuses sent after the restart count
                await fleet.converged()
                recoveries.append(time.monotonic() - healed)

        editing = asyncio.create_task(edit())
        watching = asyncio.create_task(watch_readiness())
        try:
            await asyncio.gather(produce(), restart_nats())
        finally:
            done.set()
            await editing
            await watching
        produced = time.monotonic()

        async def all_tagged() -> bool:
            if not await consumer_drained(fleet.js):
                return False
            _, messages = await read_tags(fleet.js)
            return firing <= messages.keys()

        with contextlib.suppress(AssertionError):  # what is missing is counted below
            await until("every firing event tagged", all_tagged, fleet.procs, timeout=60)
        final = await fleet.converged()
        settled_s = time.monotonic() - produced
        _, messages = await read_tags(fleet.js)
        return ChaosRow(
            scenario="nats-restart",
            faults=f"{restarts}x NATS restart (kill -9, orderly)",
            edits=editor.total,
            events=events,
            lost=len(firing - messages.keys()),
            duplicated=sum(n - 1 for n in messages.values() if n > 1),
            recovery_s=round(max(recoveries), 2),
            details={
                "firing_events": len(firing),
                "unexpected_tags": len(messages.keys() - firing),
                "publishes_retried": retried,
                "published_while_nats_away": sent_in_outage,
                "master_readyz_while_nats_away": dict(readiness),
                "recoveries_s": [round(r, 2) for r in recoveries],
                "settled_after_last_event_s": round(settled_s, 2),
                "postgres_differences": await postgres_differences(servers.database_dsn, rules),
                "workers_on_master_digest": fleet_matches(fleet.statuses, final, fleet.workers),
            },
        )


# --------------------------------------------------------------------------------------------
# Scenario: kill -9 of a worker during an event flood
# --------------------------------------------------------------------------------------------


async def worker_kill_flood(
    servers: ChaosServers, rules: Path, workdir: Path, *, events: int = 6_000
) -> ChaosRow:
    """Two workers tag a flood of events; one gets kill -9 a sixth of the way in and is not
    restarted. The survivor must tag every event exactly once: TTP_TAGS must hold, per event,
    the tag uuids an offline evaluation gives on an index built from TTP_RULES, in one message.
    Then the survivor gets SIGTERM and must exit 0 within 10 s.

    Recovery is from the kill to the shared consumer drained (the killed worker's unacked
    events come back after `ack_wait` and the survivor tags them)."""
    async with running_fleet(servers, rules, workdir, ("w1", "w2")) as fleet:
        await start_and_converge(fleet, ("master",))
        summary = await master_summary(fleet.nc)
        assert summary is not None
        js = fleet.js
        batch = make_events(events)

        async def publish_all() -> None:
            for start in range(0, events, 250):
                chunk = batch[start : start + 250]
                await asyncio.gather(
                    *(
                        js.publish(subjects.event(e["source_kind"]), json.dumps(e).encode())
                        for e in chunk
                    )
                )
                await asyncio.sleep(0.02)

        publisher = asyncio.create_task(publish_all())

        async def w1_busy() -> bool:
            return bool(fleet.statuses.get("w1", {}).get("events_processed", 0) >= events // 6)

        await until("w1 tagging", w1_busy, fleet.procs, "master", "w2", timeout=60)
        fleet.kill_9("w1")
        killed = time.monotonic()
        w1_processed = int(fleet.statuses["w1"]["events_processed"])
        await publisher

        async def drained() -> bool:
            return await consumer_drained(js)

        await until("every event acked", drained, fleet.procs, "master", "w2", timeout=90)
        recovery = time.monotonic() - killed

        book = await snapshot_index(js)
        expected = {
            e["source_id"]: {t.uuid for t in tags}
            for e in batch
            if (tags := book.current.index.evaluate(e))
        }
        got, messages = await read_tags(js)
        w2_processed = int(fleet.statuses["w2"]["events_processed"])
        survivor_stop_s = await stop(fleet.procs.procs["w2"], "w2", fleet.procs)
        return ChaosRow(
            scenario="worker-kill-flood",
            faults="1x kill -9 worker (of 2)",
            events=events,
            lost=sum(1 for sid, uuids in expected.items() if got.get(sid) != uuids),
            duplicated=sum(n - 1 for n in messages.values() if n > 1),
            recovery_s=round(recovery, 2),
            details={
                "firing_events": len(expected),
                "unexpected_tags": len(got.keys() - expected.keys()),
                "index_is_masters": book.current.index.digest() == summary["digest"],
                "w1_processed_before_kill": w1_processed,
                "w2_processed": w2_processed,
                "survivor_sigterm_exit_s": round(survivor_stop_s, 2),
            },
        )


# --------------------------------------------------------------------------------------------
# Scenario: PostgreSQL unreachable while rules change and operators send state requests
# --------------------------------------------------------------------------------------------


@dataclass
class StateAttempt:
    """One `ttp.ctl.state.set` sent during the outage, and how it ended."""

    seconds: float
    code: str
    message: str


async def postgres_outage(
    servers: ChaosServers,
    rules: Path,
    workdir: Path,
    *,
    outage_s: float = 6.0,
    edits: int = 8,
    state_requests: int = 3,
    freeze: bool = False,
    seed: int = 3,
) -> ChaosRow:
    """The master's path to PostgreSQL is cut (a `TcpProxy`: connections reset, new ones
    refused) or, with `freeze`, frozen (nothing gets through and nobody is told, as when
    packets are dropped) for `outage_s` while rule files change and `state.set` requests
    arrive through `ControlClient` (what `ttpctl state` uses). Then the path is restored.

    Found: the master's /readyz codes during the outage; each state request's error code,
    message and time to answer; whether TTP_RULES stored anything PostgreSQL does not hold
    ("unpersisted"); recovery is from the path restored to PostgreSQL equal to the disk and
    every worker on the master's digest. Lost: differences between PostgreSQL and the disk
    plus outbox rows never stored; duplicated: revisions stored twice."""
    rng = random.Random(seed)
    with proxy_to(servers.database_url, 5432) as db_path:
        async with running_fleet(
            servers, rules, workdir, ("p1", "p2"), database_url=via(servers.database_url, db_path)
        ) as fleet:
            await start_and_converge(fleet, ("master",))
            start = await master_summary(fleet.nc)
            assert start is not None
            stored = await StoredLog(fleet.js).start()
            client = ControlClient(fleet.nc, timeout_s=15)
            editor = RuleEditor(rules, rng)
            readiness: Counter[str] = Counter()
            attempts: list[StateAttempt] = []
            outage_over = asyncio.Event()

            async def watch_readiness() -> None:
                while not outage_over.is_set():
                    code, reason = await fleet.readyz_reason("master")
                    readiness[f"{code} {reason}"] += 1
                    await asyncio.sleep(0.1)

            async def ask_for_state(rule_id: str) -> None:
                asked = time.monotonic()
                request = StateSetRequest(
                    rule_id=rule_id, state="disabled", reason="chaos: outage", actor="chaos"
                )
                try:
                    await client.state_set(request)
                    code, message = "ok", ""
                except ControlClientError as exc:
                    code, message = exc.code.value, str(exc)
                attempts.append(StateAttempt(round(time.monotonic() - asked, 2), code, message))

            watcher = asyncio.create_task(watch_readiness())
            if freeze:
                db_path.freeze()
            else:
                db_path.cut()
            cut = time.monotonic()
            requests: list[asyncio.Task[None]] = []
            steps = max(edits, state_requests)
            for step in range(steps):
                await asyncio.sleep(outage_s / (steps + 1))
                if step < edits:
                    editor.step()
                if step < state_requests:
                    rule_id = rng.choice(sorted(rule_files(rules)))
                    requests.append(asyncio.create_task(ask_for_state(rule_id)))
            await asyncio.gather(*requests)
            await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - cut)))
            db_path.restore()
            healed = time.monotonic()
            outage_over.set()
            await watcher

            async def disk_in_postgres() -> bool:
                return not await postgres_differences(servers.database_dsn, rules)

            with contextlib.suppress(AssertionError):  # what differs is counted below
                await until("PostgreSQL to equal the disk", disk_in_postgres, fleet.procs)
            await fleet.converged()
            recovery = time.monotonic() - healed
            after = time.monotonic()
            await client.state_set(
                StateSetRequest(
                    rule_id=sorted(rule_files(rules))[0],
                    state="disabled",
                    reason="chaos: after the outage",
                    actor="chaos",
                )
            )
            state_after_s = time.monotonic() - after
            final = await fleet.converged()  # the state change reached the workers too
            entries = await stored.complete()
            await stored.stop()
            count, unstored, duplicated = await outbox_against_stream(
                servers.database_dsn, entries, start["revision"]
            )
            persisted = {
                r["revision"] for r in await query(servers.database_dsn, _OUTBOX_REVISIONS)
            }
            unpersisted = [
                e.revision
                for e in entries
                if e.subject != subjects.RULESET_REVISION
                and e.revision is not None
                and e.revision not in persisted
            ]
            differences = await postgres_differences(servers.database_dsn, rules)
            return ChaosRow(
                scenario="postgres-frozen" if freeze else "postgres-outage",
                faults=f"PostgreSQL {'frozen' if freeze else 'cut'} {outage_s:g} s (proxy)",
                edits=editor.total,
                events=count,
                lost=len(differences) + unstored,
                duplicated=duplicated,
                recovery_s=round(recovery, 2),
                details={
                    "readyz_during_outage": dict(readiness),
                    "state_requests": [asdict(a) for a in attempts],
                    "state_set_after_outage_s": round(state_after_s, 2),
                    "unpersisted_published": unpersisted,
                    "postgres_differences": differences,
                    "workers_on_master_digest": fleet_matches(fleet.statuses, final, fleet.workers),
                },
            )


_OUTBOX_REVISIONS = "SELECT revision FROM ttp_rule_event"
