"""The console's tag store: windows, bounds, hostile tags and live fan-out back-pressure."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from harness.bus_messages import tag_data, tagged_payload
from ttp_console import tag_store
from ttp_console.tag_store import (
    DropReason,
    LiveFilter,
    TagStore,
    TooManySubscribersError,
    TooManySubscribersForOwnerError,
    Window,
    decode_tagged,
    parse_window,
    rollup,
)
from ttp_core.attack.catalogue import load_catalogue
from ttp_core.contract.payloads import EventTagged, TagData

NOW = 1_800_000_000.0  # a fixed "now": nothing in the store reads a clock
HOUR = 3600.0
DAY = 24 * HOUR


def tag(
    technique: str = "T1059",
    sub: str | None = "T1059.004",
    *,
    rule_id: str = "linux-reverse-shell",
    confidence: float = 0.8,
    evidence: dict[str, Any] | None = None,
) -> TagData:
    return tag_data(
        technique,
        sub,
        rule_id=rule_id,
        rule_version=3,
        confidence=confidence,
        evidence=evidence,
        mitre_url="https://attack.mitre.org/techniques/T1059/004/",
    )


def message(
    at: float = NOW - 60,
    *tags: TagData,
    attacker: str | None = "a-1",
    kind: str = "command",
    source_id: str = "evt-1",
) -> bytes:
    when = datetime.fromtimestamp(at, UTC)
    return tagged_payload(
        source_id, tags or [tag()], kind=kind, attacker_uuid=attacker, revision=9, time=when
    )


def as_json(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(raw)
    return value


@pytest.fixture
def store() -> TagStore:
    return TagStore(load_catalogue())


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


def test_each_window_counts_the_tags_whose_time_falls_in_it(store: TagStore) -> None:
    for at in (NOW - 30 * 60, NOW - 2 * HOUR, NOW - 2 * DAY, NOW - 6 * DAY):
        assert store.ingest(message(at), NOW) == 1

    assert store.observed(Window.HOUR, NOW)["T1059.004"].tags == 1
    assert store.observed(Window.DAY, NOW)["T1059.004"].tags == 2
    assert store.observed(Window.WEEK, NOW)["T1059.004"].tags == 4


def test_windows_slide_as_time_passes_without_new_tags(store: TagStore) -> None:
    store.ingest(message(NOW - 10 * 60), NOW)

    assert store.observed(Window.HOUR, NOW + 40 * 60)["T1059.004"].tags == 1
    assert store.observed(Window.HOUR, NOW + 2 * HOUR) == {}
    assert store.observed(Window.DAY, NOW + 2 * HOUR)["T1059.004"].tags == 1
    assert store.observed(Window.DAY, NOW + 2 * DAY) == {}
    assert store.observed(Window.WEEK, NOW + 8 * DAY) == {}


def test_a_window_reports_the_best_confidence_and_rolls_sub_techniques_up(
    store: TagStore,
) -> None:
    store.ingest(message(NOW - 60, tag(confidence=0.4), tag(confidence=0.9)), NOW)
    store.ingest(message(NOW - 60, tag("T1059", None, confidence=0.5)), NOW)

    counts = store.observed(Window.HOUR, NOW)
    assert counts["T1059.004"].tags == 2
    assert counts["T1059.004"].best_confidence == 0.9
    parents = rollup(counts, ["T1059", "T1110"])
    assert parents["T1059"].tags == 3
    assert parents["T1059"].best_confidence == 0.9
    assert "T1110" not in parents


def test_a_cached_window_changes_once_a_new_tag_is_counted(store: TagStore) -> None:
    store.ingest(message(), NOW)
    assert store.observed(Window.DAY, NOW)["T1059.004"].tags == 1
    store.ingest(message(), NOW)
    assert store.observed(Window.DAY, NOW)["T1059.004"].tags == 2


def test_unknown_window_names_fall_back_to_the_default() -> None:
    assert parse_window("7d") is Window.WEEK
    assert parse_window("1y") is Window.DAY
    assert parse_window(None, Window.HOUR) is Window.HOUR


# --------------------------------------------------------------------------------------------
# Hostile tags: counted or dropped-and-counted, never a crash
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"data": {}}',
        b"{" * 100_000,
        json.dumps({"time": "2026-01-01T00:00:00Z", "data": {"tags": "x"}}).encode(),
        b'{"time": "yesterday", "data": {"source_kind": "c", "source_id": "s", "revision": 1,'
        b' "tags": []}}',
    ],
)
def test_unreadable_messages_are_counted(store: TagStore, raw: bytes) -> None:
    assert store.ingest(raw, NOW) == 0
    assert store.stats().dropped == {DropReason.UNREADABLE: 1}


def test_evidence_that_is_not_an_object_is_refused_like_the_contract_refuses_it(
    store: TagStore,
) -> None:
    doc = as_json(message())
    doc["data"]["tags"][0]["evidence"] = ["a", "list"]
    assert store.ingest(json.dumps(doc).encode(), NOW) == 0
    assert store.stats().dropped == {DropReason.UNREADABLE: 1}


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        (tag("T9999", None), DropReason.UNKNOWN_TECHNIQUE),
        (tag("T1059", "T9999.001"), DropReason.UNKNOWN_TECHNIQUE),
        (tag("T1110", "T1059.004"), DropReason.UNKNOWN_TECHNIQUE),
        (tag("<script>", None), DropReason.UNKNOWN_TECHNIQUE),
        (tag(confidence=1.5), DropReason.BAD_CONFIDENCE),
        (tag(confidence=-0.1), DropReason.BAD_CONFIDENCE),
        (tag(rule_id="a.b>c"), DropReason.BAD_RULE_ID),
        (tag(rule_id="r" * 65), DropReason.BAD_RULE_ID),
    ],
)
def test_hostile_tags_are_dropped_and_counted_beside_good_ones(
    store: TagStore, hostile: TagData, reason: DropReason
) -> None:
    assert store.ingest(message(NOW - 60, hostile, tag()), NOW) == 1
    assert store.stats().dropped == {reason: 1}
    assert store.observed(Window.HOUR, NOW)["T1059.004"].tags == 1


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (NOW + DAY, DropReason.FUTURE),
        (253402300000.0 - 1, DropReason.FUTURE),  # year 9999
        (NOW - 30 * DAY, DropReason.EXPIRED),
        (0.0, DropReason.EXPIRED),
    ],
)
def test_absurd_times_are_dropped_and_counted(
    store: TagStore, at: float, reason: DropReason
) -> None:
    assert store.ingest(message(at, tag(), tag()), NOW) == 0
    assert store.stats().dropped == {reason: 2}
    assert store.observed(Window.WEEK, NOW) == {}


def test_a_time_without_offset_is_read_as_utc(store: TagStore) -> None:
    doc = as_json(message())
    doc["time"] = datetime.fromtimestamp(NOW - 60, UTC).replace(tzinfo=None).isoformat()
    assert store.ingest(json.dumps(doc).encode(), NOW) == 1


def test_huge_evidence_is_cut_and_flagged(store: TagStore) -> None:
    huge = {"command_text": "A" * 5_000_000}
    store.ingest(message(NOW - 60, tag(evidence=huge)), NOW)

    [record] = store.latest_for_technique("T1059.004")
    assert record.evidence_truncated
    assert len(record.evidence_json) == store.max_evidence_chars
    [(name, text)] = record.evidence_items()
    assert name == "evidence"
    assert text.endswith("(cut)")


def test_too_many_tags_in_one_message_are_dropped_beyond_the_cap(store: TagStore) -> None:
    many = [tag() for _ in range(tag_store.MAX_TAGS_PER_MESSAGE + 10)]
    assert store.ingest(message(NOW - 60, *many), NOW) == tag_store.MAX_TAGS_PER_MESSAGE
    assert store.stats().dropped == {DropReason.TOO_MANY_TAGS: 10}


def test_an_overlong_attacker_id_counts_the_tag_but_not_the_attacker(store: TagStore) -> None:
    attacker = "x" * 10_000
    assert store.ingest(message(attacker=attacker), NOW) == 1
    assert store.attacker(attacker) is None
    assert store.stats().attackers == 0
    assert store.stats().dropped == {DropReason.ATTACKER_ID_TOO_LONG: 1}


def test_identifiers_are_capped_in_the_records(store: TagStore) -> None:
    store.ingest(message(source_id="s" * 100_000, kind="bad kind!"), NOW)
    [record] = store.latest_for_rule("linux-reverse-shell")
    assert len(record.source_id) == tag_store.MAX_ID_CHARS
    assert record.source_kind == "?"


# --------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------


def test_attackers_are_capped_and_the_least_recently_seen_is_evicted_first() -> None:
    store = TagStore(load_catalogue(), max_attackers=3)
    for name in ("a", "b", "c"):
        store.ingest(message(attacker=name), NOW)
    store.ingest(message(attacker="a"), NOW)  # "a" is now the most recently seen
    store.ingest(message(attacker="d"), NOW)

    assert store.attacker("b") is None
    assert {"a", "c", "d"} == set(store.recent_attackers())
    assert store.recent_attackers()[0] == "d"
    stats = store.stats()
    assert (stats.attackers, stats.attackers_evicted) == (3, 1)


def test_an_attacker_holds_counts_and_highest_confidence_per_technique(store: TagStore) -> None:
    store.ingest(message(NOW - 120, tag(confidence=0.3)), NOW)
    store.ingest(message(NOW - 60, tag(confidence=0.7), tag("T1110", None)), NOW)

    view = store.attacker("a-1")
    assert view is not None
    assert view.tags == 3
    assert [(t.technique, t.tags, t.best_confidence) for t in view.techniques] == [
        ("T1059.004", 2, 0.7),
        ("T1110", 1, 0.8),
    ]
    assert (view.first_seen, view.last_seen) == (NOW - 120, NOW - 60)


def test_an_attackers_techniques_are_capped() -> None:
    store = TagStore(load_catalogue(), max_techniques_per_attacker=1)
    store.ingest(message(NOW - 60, tag(), tag("T1110", None)), NOW)

    view = store.attacker("a-1")
    assert view is not None
    assert [t.technique for t in view.techniques] == ["T1059.004"]
    assert view.techniques_not_kept == 1
    assert store.stats().dropped == {DropReason.ATTACKER_TECHNIQUES_FULL: 1}


def test_latest_tags_are_capped_per_technique_and_per_rule_and_rules_are_evicted() -> None:
    store = TagStore(load_catalogue(), latest_per_key=5, max_rules=2)
    for n in range(20):
        store.ingest(message(NOW - 100 + n, tag(rule_id=f"rule-{n % 2}")), NOW)
    store.ingest(message(NOW - 50, tag(rule_id="rule-new")), NOW)

    latest = store.latest_for_technique("T1059")  # the parent includes its sub-techniques
    assert len(latest) == 5
    assert [r.time for r in latest] == [NOW - 50, NOW - 81, NOW - 82, NOW - 83, NOW - 84]
    assert [r.time for r in store.latest_for_rule("rule-1")] == [
        NOW - 81,
        NOW - 83,
        NOW - 85,
        NOW - 87,
        NOW - 89,
    ]
    assert store.latest_for_rule("rule-0") == []  # the least recently seen rule went first
    stats = store.stats()
    assert (stats.rules_tracked, stats.rules_evicted) == (2, 1)


def test_endless_new_attackers_leave_memory_flat() -> None:
    """The store's size stops growing once its caps are reached, however many attackers."""
    store = TagStore(load_catalogue(), max_attackers=1000)
    template = message(NOW - 60, attacker="ATTACKER-00000000")

    def feed(first: int, count: int) -> None:
        for n in range(first, first + count):
            store.ingest(template.replace(b"ATTACKER-00000000", b"ATTACKER-%08d" % n), NOW)

    tracemalloc.start()
    try:
        feed(0, 5_000)  # the caps are reached
        held, _peak = tracemalloc.get_traced_memory()
        feed(5_000, 20_000)
        grown, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown - held < 64 * 1024, f"grew by {grown - held} bytes over 20,000 new attackers"
    stats = store.stats()
    assert stats.attackers == 1000
    assert stats.attackers_evicted == 24_000
    assert stats.tags == 25_000


# --------------------------------------------------------------------------------------------
# Live fan-out
# --------------------------------------------------------------------------------------------


def test_a_slow_subscriber_loses_rows_and_is_told_how_many(store: TagStore) -> None:
    slow = store.subscribe(LiveFilter(), capacity=3)
    woken: list[int] = []
    slow.on_ready = lambda: woken.append(1)
    for n in range(10):
        store.ingest(message(NOW - 60, source_id=f"e{n}"), NOW)

    records, dropped = slow.take()
    assert [r.source_id for r in records] == ["e0", "e1", "e2"]
    assert dropped == 7
    assert woken == [1]  # woken once, when its queue stopped being empty
    assert slow.take() == ([], 0)
    assert store.stats().tags == 10  # ingestion never waited for it


def test_subscribers_get_only_what_their_filter_asks_for(store: TagStore) -> None:
    by_technique = store.subscribe(LiveFilter(technique="T1059"))
    by_sub = store.subscribe(LiveFilter(technique="T1059.001"))
    by_rule = store.subscribe(LiveFilter(rule_id="brute"))
    by_kind = store.subscribe(LiveFilter(source_kind="ssh"))
    by_attacker = store.subscribe(LiveFilter(attacker_uuid="a-2"))
    store.ingest(message(NOW - 60, tag(), tag("T1110", None, rule_id="brute"), kind="ssh"), NOW)
    store.ingest(message(NOW - 60, tag(), attacker="a-2"), NOW)

    assert [r.technique for r in by_technique.take()[0]] == ["T1059.004", "T1059.004"]
    assert by_sub.take() == ([], 0)
    assert [r.rule_id for r in by_rule.take()[0]] == ["brute"]
    assert len(by_kind.take()[0]) == 2
    assert [r.attacker_uuid for r in by_attacker.take()[0]] == ["a-2"]


def test_subscribers_are_capped_and_can_leave() -> None:
    store = TagStore(load_catalogue(), max_subscribers=2)
    first = store.subscribe(LiveFilter())
    store.subscribe(LiveFilter())
    with pytest.raises(TooManySubscribersError):
        store.subscribe(LiveFilter())
    store.unsubscribe(first)
    store.subscribe(LiveFilter())
    assert store.stats().subscribers == 2
    store.ingest(message(), NOW)
    assert len(first) == 0


def test_one_owner_at_its_cap_is_refused_while_another_owner_still_subscribes() -> None:
    store = TagStore(load_catalogue(), max_subscribers=10)
    alice = [store.subscribe(LiveFilter(), owner="alice", max_per_owner=2) for _ in range(2)]
    assert isinstance(store.refusal("alice", 2), TooManySubscribersForOwnerError)
    with pytest.raises(TooManySubscribersForOwnerError):
        store.subscribe(LiveFilter(), owner="alice", max_per_owner=2)
    store.subscribe(LiveFilter(), owner="bob", max_per_owner=2)
    assert (store.subscribers_of("alice"), store.subscribers_of("bob")) == (2, 1)

    store.unsubscribe(alice[0])
    store.unsubscribe(alice[0])  # a second release frees nothing more
    assert store.subscribers_of("alice") == 1
    assert store.refusal("alice", 2) is None
    store.subscribe(LiveFilter(), owner="alice", max_per_owner=2)
    assert store.subscribers_of("alice") == 2
    assert store.stats().subscribers == 3


def test_an_owner_that_left_holds_nothing_and_the_store_cap_still_applies() -> None:
    store = TagStore(load_catalogue(), max_subscribers=2)
    alice = store.subscribe(LiveFilter(), owner="alice", max_per_owner=1)
    store.unsubscribe(alice)
    assert store._owned == {}  # an owner is forgotten with its last subscriber
    store.subscribe(LiveFilter(), owner="alice", max_per_owner=1)
    store.subscribe(LiveFilter(), owner="bob", max_per_owner=1)
    # At both caps, the owner's is the refusal its owner can act on; anyone else gets the
    # store's.
    with pytest.raises(TooManySubscribersForOwnerError):
        store.subscribe(LiveFilter(), owner="alice", max_per_owner=1)
    with pytest.raises(TooManySubscribersError):
        store.subscribe(LiveFilter(), owner="carol", max_per_owner=1)
    assert isinstance(store.refusal("carol", 1), TooManySubscribersError)
    assert store.subscribers_of("carol") == 0


# --------------------------------------------------------------------------------------------
# Decoding parity with the contract's model
# --------------------------------------------------------------------------------------------


def _fields(struct: type[msgspec.Struct]) -> dict[str, bool]:
    return {f.name: f.required for f in msgspec.structs.fields(struct)}


@pytest.mark.parametrize(
    ("mirror", "model"),
    [(tag_store._Tag, TagData), (tag_store._TaggedData, EventTagged)],
)
def test_the_msgspec_mirrors_read_contract_fields_with_the_same_required_ones(
    mirror: type[msgspec.Struct], model: type[Any]
) -> None:
    fields = _fields(mirror)
    for name, required in fields.items():
        assert name in model.model_fields, f"{name} is not a field of {model.__name__}"
        assert model.model_fields[name].is_required() == required, name


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"confidence": 1},
        {"sub_technique_id": None},
        {"evidence": {}},
        {"evidence": {"nested": {"list": [1, 2.5, None, True]}, "text": "é\u2028<b>"}},
    ],
)
def test_fast_and_contract_decoding_agree(variant: dict[str, Any]) -> None:
    doc = as_json(message())
    doc["data"]["tags"][0].update(variant)
    doc["data"]["extra_field_of_a_newer_worker"] = 1
    raw = json.dumps(doc).encode()

    fast = decode_tagged(raw)
    lax = tag_store._decode_lax(raw)
    assert fast is not None
    assert lax is not None
    assert fast.time == lax.time
    assert fast.source_kind == lax.source_kind
    assert fast.attacker_uuid == lax.attacker_uuid
    assert [t[:6] for t in fast.tags] == [t[:6] for t in lax.tags]
    assert [json.loads(t[6]) for t in fast.tags] == [json.loads(t[6]) for t in lax.tags]
