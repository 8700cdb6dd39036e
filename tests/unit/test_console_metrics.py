"""The console's metrics move when what they count happens: tags read by the tag feed (once
per pull round), a feed catching up or recreating its consumer, logins, live streams and
control requests.

The metrics live in prometheus_client's process-wide registry, so each test reads how much a
sample grew across what it does, never an absolute value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse

from harness.bus_messages import tag_data, tagged_payload
from ttp_console import metrics
from ttp_console.auth.session import Authenticator, LoginOutcome
from ttp_console.auth.throttle import LoginThrottle
from ttp_console.auth.users_file import LocalUser
from ttp_console.pages import close_live_streams
from ttp_console.pages.live import QUEUE_CAPACITY, live_stream
from ttp_console.rule_feed import RuleFeed
from ttp_console.settings import ConsoleSettings
from ttp_console.stream_reader import FeedProgress
from ttp_console.tag_feed import TagFeed
from ttp_console.tag_store import DropReason, TagStore
from ttp_core.attack.catalogue import load_catalogue
from ttp_core.contract.control import (
    Endpoint,
    ErrorCode,
    Reply,
    RevisionInfo,
    RevisionRequest,
    RuleShowRequest,
)
from ttp_runtime.control_client import ControlClientError

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC).timestamp()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def growth(name: str, action: Callable[[], object], **labels: str) -> float:
    before = sample(name, **labels)
    action()
    return sample(name, **labels) - before


class _NoNats:
    """Enough of a NATS client for a feed that is never started."""

    def jetstream(self) -> None:
        return None


def _deliver(feed: TagFeed, sequence: int, raw: bytes, pending: int) -> None:
    # What the reader does with one delivery of a pull round (its ack subject carries the
    # stream sequence and what the consumer still holds).
    reply = f"$JS.ACK.TTP_TAGS.c.1.{sequence}.{sequence}.1733490000000000000.{pending}"
    feed._reader._take("ttp.tagged.command", reply, raw)


def _message(*tags: Any, attacker: str | None = "a-1") -> bytes:
    when = datetime.fromtimestamp(NOW - 60, UTC)
    return tagged_payload("evt-1", tags, attacker_uuid=attacker, time=when)


def test_a_pull_round_moves_the_tag_counters_once_for_its_whole_batch() -> None:
    store = TagStore(load_catalogue(), max_attackers=1)
    feed = TagFeed(cast(Any, _NoNats()), store, clock=lambda: NOW)
    before = {
        name: sample(name)
        for name in (
            "ttp_console_tag_messages_total",
            "ttp_console_tags_ingested_total",
            "ttp_console_attackers_evicted_total",
        )
    }
    unknown_before = sample("ttp_console_tags_dropped_total", reason="unknown_technique")
    unreadable_before = sample("ttp_console_tags_dropped_total", reason="unreadable_message")

    _deliver(feed, 1, _message(tag_data(), tag_data(), attacker="a-1"), 3)
    _deliver(feed, 2, _message(tag_data("T9999", None), attacker="a-2"), 2)
    _deliver(feed, 3, b"not json", 1)
    _deliver(feed, 4, _message(tag_data(), attacker="a-3"), 0)
    # Nothing moves per message: only the round's end does.
    assert sample("ttp_console_tag_messages_total") == before["ttp_console_tag_messages_total"]

    feed.update_metrics()
    assert sample("ttp_console_tag_messages_total") - before["ttp_console_tag_messages_total"] == 4
    assert (
        sample("ttp_console_tags_ingested_total") - before["ttp_console_tags_ingested_total"] == 3
    )
    assert (
        sample("ttp_console_tags_dropped_total", reason="unknown_technique") - unknown_before == 1
    )
    assert (
        sample("ttp_console_tags_dropped_total", reason="unreadable_message") - unreadable_before
        == 1
    )
    # One attacker held at a time: a-1 then a-3 came with counted tags, a-1 was forgotten.
    assert (
        sample("ttp_console_attackers_evicted_total")
        - before["ttp_console_attackers_evicted_total"]
        == 1
    )
    assert sample("ttp_console_attackers") == 1

    # A second update without new deliveries adds nothing.
    assert growth("ttp_console_tag_messages_total", feed.update_metrics) == 0


def test_every_drop_reason_is_a_series_from_the_start() -> None:
    names = {
        s.labels["reason"]
        for family in REGISTRY.collect()
        if family.name == "ttp_console_tags_dropped"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert names == {reason.value for reason in DropReason}


def test_feed_metrics_follow_catching_up_and_consumer_restarts() -> None:
    tracked = metrics.FeedMetrics("rules")

    def progress(caught_up: bool, restarts: int) -> FeedProgress:
        return FeedProgress(10, 0, caught_up, restarts, 10, None)

    restarts = "ttp_console_feed_restarts_total"
    tracked.update(progress(False, 0))
    assert sample("ttp_console_feed_caught_up", feed="rules") == 0
    assert growth(restarts, lambda: tracked.update(progress(True, 2)), feed="rules") == 2
    assert sample("ttp_console_feed_caught_up", feed="rules") == 1
    assert growth(restarts, lambda: tracked.update(progress(True, 2)), feed="rules") == 0
    with pytest.raises(ValueError):
        metrics.FeedMetrics("events")


def test_the_tag_feed_reports_caught_up_once_its_reader_has_read_everything() -> None:
    feed = TagFeed(cast(Any, _NoNats()), TagStore(load_catalogue()), clock=lambda: NOW)
    feed.update_metrics()
    assert sample("ttp_console_feed_caught_up", feed="tags") == 0
    feed._reader._caught_up.set()
    feed.update_metrics()
    assert sample("ttp_console_feed_caught_up", feed="tags") == 1


def test_a_rule_feed_reports_its_state() -> None:
    metrics.FeedMetrics("rules").update(FeedProgress(0, None, False, 0, 0, None))
    assert sample("ttp_console_feed_caught_up", feed="rules") == 0
    # Without NATS a rule feed has nothing more to read: it is caught up.
    RuleFeed().update_metrics()
    assert sample("ttp_console_feed_caught_up", feed="rules") == 1


# --------------------------------------------------------------------------------------------
# Logins
# --------------------------------------------------------------------------------------------


class _Users:
    def verify(self, name: str, password: str) -> LocalUser | None:
        return LocalUser(name, "viewer", "h") if password == "right" else None


async def test_logins_are_counted_by_outcome_and_never_by_user() -> None:
    auth = Authenticator(
        "users",
        users=cast(Any, _Users()),
        proxy=None,
        throttle=LoginThrottle(2, 60.0),
        max_age_s=3600,
    )
    before = {o: sample("ttp_console_logins_total", outcome=o.value) for o in LoginOutcome}
    assert await auth.login("alice", "right", "10.0.0.1") is LoginOutcome.OK
    assert await auth.login("mallory", "guess", "10.0.0.2") is LoginOutcome.WRONG
    assert await auth.login("mallory", "guess", "10.0.0.2") is LoginOutcome.WRONG
    assert await auth.login("mallory", "right", "10.0.0.2") is LoginOutcome.THROTTLED
    grew = {o: sample("ttp_console_logins_total", outcome=o.value) - before[o] for o in before}
    assert grew == {
        LoginOutcome.OK: 1,
        LoginOutcome.WRONG: 2,
        LoginOutcome.THROTTLED: 1,
        LoginOutcome.BUSY: 0,
        LoginOutcome.UNAVAILABLE: 0,
    }
    no_users = Authenticator(
        "proxy", users=None, proxy=None, throttle=LoginThrottle(2, 60.0), max_age_s=3600
    )
    before_unavailable = sample("ttp_console_logins_total", outcome="unavailable")
    assert await no_users.login("alice", "right", "10.0.0.1") is LoginOutcome.UNAVAILABLE
    assert sample("ttp_console_logins_total", outcome="unavailable") == before_unavailable + 1
    for family in REGISTRY.collect():
        if family.name == "ttp_console_logins":
            for s in family.samples:
                assert set(s.labels) == {"outcome"}
                assert "alice" not in s.labels.values() and "mallory" not in s.labels.values()


# --------------------------------------------------------------------------------------------
# Control requests
# --------------------------------------------------------------------------------------------


class _Answers:
    """A NATS client whose requests get the given answer (bytes) or raise it."""

    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer

    async def request(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return SimpleNamespace(data=self.answer, headers=None, subject=subject)


async def test_control_requests_are_counted_by_endpoint_and_outcome() -> None:
    name = "ttp_console_control_requests_total"
    info = RevisionInfo(revision=7, rules=3, active=2, external=0, rejected=1, digest="d")
    ok = Reply[RevisionInfo](ok=True, result=info).model_dump_json().encode()
    before_ok = sample(name, endpoint="revision", outcome="ok")
    client = metrics.CountedControlClient(cast(Any, _Answers(ok)))
    result = await client.call(Endpoint.REVISION, RevisionRequest())
    assert isinstance(result, RevisionInfo) and result.revision == 7
    assert sample(name, endpoint="revision", outcome="ok") == before_ok + 1

    unknown = b'{"ok": false, "error": {"code": "unknown_rule", "message": "no rule r1"}}'
    before_unknown = sample(name, endpoint="rules.show", outcome="unknown_rule")
    with pytest.raises(ControlClientError):
        await metrics.CountedControlClient(cast(Any, _Answers(unknown))).rules_show(
            RuleShowRequest(rule_id="r1")
        )
    assert sample(name, endpoint="rules.show", outcome="unknown_rule") == before_unknown + 1

    before_down = sample(name, endpoint="revision", outcome="unavailable")
    nobody = metrics.CountedControlClient(cast(Any, _Answers(nats.errors.NoRespondersError())))
    with pytest.raises(ControlClientError) as raised:
        await nobody.call(Endpoint.REVISION, RevisionRequest())
    assert raised.value.code is ErrorCode.UNAVAILABLE
    assert sample(name, endpoint="revision", outcome="unavailable") == before_down + 1


# --------------------------------------------------------------------------------------------
# Live streams
# --------------------------------------------------------------------------------------------


async def test_live_streams_are_counted_open_and_rows_dropped_for_a_slow_browser() -> None:
    catalogue = load_catalogue()
    store = TagStore(catalogue)
    app = Starlette()
    app.state.console = SimpleNamespace(tags=store, catalogue=catalogue, settings=ConsoleSettings())
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/live/stream",
        "query_string": b"",
        "headers": [],
        "app": app,
    }
    open_before = sample("ttp_console_live_streams")
    dropped_before = sample("ttp_console_live_rows_dropped_total")
    response = await live_stream(Request(scope))
    assert isinstance(response, StreamingResponse)
    body = cast(Any, response.body_iterator)

    assert str(await body.__anext__()).startswith("retry:")
    assert sample("ttp_console_live_streams") == open_before + 1

    # The browser reads nothing while more rows than its queue holds arrive.
    for _ in range(QUEUE_CAPACITY + 7):
        store.ingest(_message(tag_data()), NOW)
    events = str(await asyncio.wait_for(body.__anext__(), 5))
    assert events.startswith("event: dropped")
    assert sample("ttp_console_live_rows_dropped_total") == dropped_before + 7

    close_live_streams(app)
    async for _rest in body:
        pass
    assert sample("ttp_console_live_streams") == open_before
    assert store.stats().subscribers == 0
