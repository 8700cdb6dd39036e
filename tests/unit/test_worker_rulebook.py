"""The worker's rule book: decoding TTP_RULES messages and revision ordering (no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    MASTER_SOURCE,
    RuleReloaded,
    RulesetRevision,
    RuleStateChanged,
    encode,
    envelope,
)
from ttp_core.engine.state import RuleState, StateKind
from ttp_core.rules.canonical import content_sha256
from ttp_core.rules.digest import ruleset_digest
from ttp_core.rules.model import Rule
from ttp_worker.rulebook import (
    ChangeKind,
    RuleBook,
    RuleChange,
    RuleMessageError,
    decode_rule_message,
    evaluated_kinds,
)


def definition(rule_id: str, version: int = 1, text: str | None = None) -> dict[str, Any]:
    return Rule.model_validate(
        {
            "rule_id": rule_id,
            "rule_version": version,
            "name": rule_id.lower(),
            "applies_to": ["command"],
            "match": {"field": "command_text", "contains": text or rule_id.lower()},
            "emits": [{"tactic": "TA0002", "technique_id": "T1059", "confidence": 0.9}],
        }
    ).normalised()


def reloaded(rule_id: str, revision: int, version: int = 1, deleted: bool = False) -> bytes:
    body = None if deleted else definition(rule_id, version)
    data = RuleReloaded(
        rule_id=rule_id,
        revision=revision,
        rule_version=None if deleted else version,
        content_sha256=None if body is None else content_sha256(Rule.model_validate(body)),
        source_path=f"{rule_id}.yaml",
        deleted=deleted,
        rule=body,
    )
    return encode(envelope(data, source=MASTER_SOURCE, subject=rule_id))


def state(rule_id: str, revision: int, name: str, cmax: float | None = None) -> bytes:
    data = RuleStateChanged(
        rule_id=rule_id,
        revision=revision,
        state=name,  # type: ignore[arg-type]
        confidence_max=cmax,
        expires_at=datetime(2100, 1, 1, tzinfo=UTC) if name != "enabled" else None,
    )
    return encode(envelope(data, source=MASTER_SOURCE, subject=rule_id))


def change(subject: str, raw: bytes) -> RuleChange:
    decoded = decode_rule_message(subject, raw)
    assert decoded is not None
    return decoded


def rdef(rule_id: str, revision: int, version: int = 1) -> RuleChange:
    return change(subjects.rule_reloaded(rule_id), reloaded(rule_id, revision, version))


def rdel(rule_id: str, revision: int) -> RuleChange:
    return change(subjects.rule_reloaded(rule_id), reloaded(rule_id, revision, deleted=True))


def rstate(rule_id: str, revision: int, name: str, cmax: float | None = None) -> RuleChange:
    return change(subjects.rule_state(rule_id), state(rule_id, revision, name, cmax))


def versions(book: RuleBook) -> dict[str, int]:
    return {rid: c.rule_version for rid, c in book.current.index.rules.items()}


# --- decoding -------------------------------------------------------------------------------


def test_reloaded_decodes_to_a_compiled_rule_with_the_masters_hash() -> None:
    raw = reloaded("R1", 5, version=3)
    decoded = change(subjects.rule_reloaded("R1"), raw)
    assert decoded.kind is ChangeKind.DEFINITION
    assert (decoded.rule_id, decoded.revision) == ("R1", 5)
    assert decoded.compiled is not None and decoded.compiled.rule_version == 3
    assert decoded.compiled.content_sha256 == content_sha256(
        Rule.model_validate(definition("R1", 3))
    )


def test_tombstone_and_states_decode() -> None:
    tomb = rdel("R1", 9)
    assert tomb.compiled is None and tomb.state is None and tomb.revision == 9
    assert rstate("R1", 10, "enabled").state is None
    clipped = rstate("R1", 11, "clipped", 0.4)
    assert clipped.kind is ChangeKind.STATE
    assert clipped.state == RuleState(
        StateKind.CLIPPED, 0.4, datetime(2100, 1, 1, tzinfo=UTC).timestamp()
    )


def test_ruleset_revision_is_not_a_rule_change() -> None:
    data = RulesetRevision(revision=1, rules=0, active=0, external=0, rejected=0, digest="x")
    raw = encode(envelope(data, source=MASTER_SOURCE, subject="1"))
    assert decode_rule_message(subjects.RULESET_REVISION, raw) is None


@pytest.mark.parametrize(
    ("subject", "raw"),
    [
        ("ttp.rule.reloaded.R1", b"{nope"),
        ("ttp.rule.reloaded.R1", b'{"data": 3}'),
        ("ttp.rule.reloaded.R1", b'{"data": {"rule_id": "R1"}}'),
        ("ttp.rule.reloaded.R2", reloaded("R1", 1)),  # subject and rule_id disagree
        ("ttp.rule.state.R1", state("R1", 1, "clipped", None)),  # clipped needs a maximum
        (
            "ttp.rule.reloaded.R1",
            reloaded("R1", 1).replace(b'"contains":"r1"', b'"contains":5'),
        ),
    ],
)
def test_unprocessable_messages_raise(subject: str, raw: bytes) -> None:
    with pytest.raises(RuleMessageError):
        decode_rule_message(subject, raw)


# --- revision ordering ------------------------------------------------------------------------


def test_older_and_duplicate_revisions_are_ignored_per_kind() -> None:
    book = RuleBook()
    book.load_snapshot([rdef("A", 5), rdef("B", 6)])
    assert book.current.revision == 6
    before = book.current
    assert book.apply([rdef("A", 5, version=9)]) == []  # duplicate revision
    assert book.apply([rdef("A", 4, version=9)]) == []  # older
    assert book.apply([rdel("A", 3)]) == []  # older tombstone
    assert book.current is before
    # A state has its own revision line: revision 1 is new for A's state.
    assert len(book.apply([rstate("A", 1, "disabled")])) == 1
    assert book.current.index.state("A").state is StateKind.DISABLED
    assert book.current.revision == 6  # the top revision never goes back


def test_a_tombstone_blocks_an_older_definition_and_a_newer_one_revives() -> None:
    book = RuleBook()
    book.load_snapshot([rdef("A", 5)])
    book.apply([rdel("A", 7)])
    assert "A" not in book.current.index.rules
    book.apply([rdef("A", 6, version=2)])
    assert "A" not in book.current.index.rules
    book.apply([rdef("A", 8, version=3)])
    assert versions(book) == {"A": 3}
    assert book.current.revision == 8


def test_a_state_may_arrive_before_its_rule() -> None:
    book = RuleBook()
    book.load_snapshot([])
    book.apply([rstate("NEW", 3, "disabled")])
    book.apply([rdef("NEW", 2)])
    event = {"source_kind": "command", "source_id": "1", "payload": {"command_text": "new"}}
    assert "NEW" in book.current.index.rules
    assert book.current.index.evaluate(event) == []
    book.apply([rstate("NEW", 4, "enabled")])
    assert [t.rule_id for t in book.current.index.evaluate(event)] == ["NEW"]
    assert book.current.index.states == {}


def test_snapshot_keeps_the_newest_message_per_rule_and_kind() -> None:
    book = RuleBook()
    book.load_snapshot(
        [rdef("A", 2, version=1), rdef("A", 9, version=4), rdef("A", 3, version=2), rdel("B", 5)]
    )
    assert versions(book) == {"A": 4}
    assert book.held_definition("A") == 9 and book.held_definition("B") == 5
    # A snapshot resets what is held: the stream is the truth.
    book.load_snapshot([rdef("A", 1)])
    assert book.held_definition("B") == 0 and versions(book) == {"A": 1}


def test_a_batch_applies_as_one_swap_with_the_last_change_winning() -> None:
    book = RuleBook()
    book.load_snapshot([rdef("A", 1), rdef("B", 2)])
    applied = book.apply([rdef("C", 3), rdel("C", 4), rdel("B", 5), rdef("B", 6, version=2)])
    assert len(applied) == 4
    assert versions(book) == {"A": 1, "B": 2}
    assert book.current.revision == 6


def test_index_digest_equals_the_masters_formula() -> None:
    book = RuleBook()
    book.load_snapshot([rdef("A", 1), rdef("B", 2), rstate("B", 3, "clipped", 0.5)])
    expires = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
    expected = ruleset_digest(
        [
            ("A", content_sha256(Rule.model_validate(definition("A")))),
            ("B", content_sha256(Rule.model_validate(definition("B")))),
        ],
        [("B", "clipped", 0.5, expires)],
    )
    assert book.current.index.digest() == expected
    assert book.current.kinds == frozenset({"command"})


def test_event_time_reads_the_cloudevents_time_or_gives_none() -> None:
    from ttp_worker.rulebook import event_time

    assert event_time(b'{"time": "2026-11-21T10:00:00.5+00:00"}') == 1795255200.5
    assert event_time(b'{"time": "2026-11-21T10:00:00Z"}') == 1795255200.0
    assert event_time(b'{"time": "yesterday"}') is None
    assert event_time(b'{"no": "time"}') is None
    assert event_time(b"[1, 2]") is None
    assert event_time(b"not json") is None


# --- what the fast decoder accepts ------------------------------------------------------------


def _relaxed(raw: bytes) -> bytes:
    """The same message with its numbers and flags spelled as strings, which only pydantic's
    lax validation accepts."""
    event = json.loads(raw)
    data = event["data"]
    data["revision"] = str(data["revision"])
    if "deleted" in data:
        data["deleted"] = "false" if not data["deleted"] else "true"
    if data.get("confidence_max") is not None:
        data["confidence_max"] = str(data["confidence_max"])
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    ("subject", "raw"),
    [
        (subjects.rule_reloaded("R1"), reloaded("R1", 7, version=2)),
        (subjects.rule_reloaded("R1"), reloaded("R1", 7, deleted=True)),
        (subjects.rule_state("R1"), state("R1", 7, "clipped", 0.4)),
        (subjects.rule_state("R1"), state("R1", 7, "enabled")),
    ],
)
def test_a_message_decodes_alike_in_its_exact_and_its_lax_spelling(
    subject: str, raw: bytes
) -> None:
    exact, lax = change(subject, raw), change(subject, _relaxed(raw))
    assert (exact.kind, exact.rule_id, exact.revision, exact.state) == (
        lax.kind,
        lax.rule_id,
        lax.revision,
        lax.state,
    )
    assert (exact.compiled is None) == (lax.compiled is None)
    if exact.compiled is not None and lax.compiled is not None:
        assert exact.compiled.content_sha256 == lax.compiled.content_sha256


def test_a_change_carries_the_messages_commit_time() -> None:
    raw = reloaded("R1", 3)
    expected = datetime.fromisoformat(json.loads(raw)["time"]).timestamp()
    assert change(subjects.rule_reloaded("R1"), raw).committed_at == expected
    event = json.loads(raw)
    event["time"] = "yesterday"
    decoded = change(subjects.rule_reloaded("R1"), json.dumps(event).encode())
    assert decoded.committed_at is None and decoded.compiled is not None


def test_the_kinds_a_ruleset_evaluates_follow_every_change() -> None:
    book = RuleBook()
    book.load_snapshot([rdef("A", 1), rdef("B", 2)])
    assert book.current.kinds == frozenset({"command"})
    book.apply([rdel("A", 3)])
    assert book.current.kinds == frozenset({"command"})
    book.apply([rdel("B", 4)])
    assert book.current.kinds == frozenset()
    book.apply([rdef("C", 5), rdef("C", 6, version=2)])
    assert book.current.kinds == evaluated_kinds(book.current.index, {})
    assert book.current.kinds == frozenset({"command"})


def _external(rule_id: str, revision: int) -> RuleChange:
    body = Rule.model_validate(
        {
            "rule_id": rule_id,
            "rule_version": 1,
            "name": rule_id.lower(),
            "applies_to": ["command"],
            "match": {"kind": "lifter:sigma"},
            "emits": [{"tactic": "TA0002", "technique_id": "T1059", "confidence": 0}],
        }
    ).normalised()
    data = RuleReloaded(
        rule_id=rule_id,
        revision=revision,
        rule_version=1,
        content_sha256=content_sha256(Rule.model_validate(body)),
        source_path=f"{rule_id}.yaml",
        rule=body,
    )
    raw = encode(envelope(data, source=MASTER_SOURCE, subject=rule_id))
    return change(subjects.rule_reloaded(rule_id), raw)


def test_ruleset_counts_equal_the_index_counts_through_every_change() -> None:
    book = RuleBook()
    book.load_snapshot([rdef("A", 1), rdef("B", 2), _external("X", 3), rstate("A", 4, "disabled")])
    steps = [
        [_external("Y", 5)],
        [rdel("X", 6)],
        [rstate("B", 7, "disabled"), rstate("Y", 8, "disabled")],
        [rdef("X", 9)],  # an external rule becomes a built-in one
        [rstate("A", 10, "enabled"), rdel("B", 11)],
    ]
    later = datetime(2101, 1, 1, tzinfo=UTC).timestamp()  # every state has expired by then
    for changes in [[], *steps]:
        book.apply(changes)
        ruleset = book.current
        for now in (None, later):
            assert ruleset.counts(now) == ruleset.index.counts(now)
    assert book.current.external == 1


def test_a_message_pattern_is_checked_again_only_for_backtracking_constructs() -> None:
    # The master checked the patterns; the worker checks again only those with a
    # backtracking construct, which run bounded as on the master. A forged one no engine
    # accepts decodes and only its leaf never matches (the index logs it), the rest of the
    # rule keeps working.
    def with_match(rule_id: str, revision: int, match: dict[str, Any]) -> RuleChange:
        raw = reloaded(rule_id, revision)
        event = json.loads(raw)
        event["data"]["rule"]["match"] = match
        return change(subjects.rule_reloaded(rule_id), json.dumps(event).encode())

    bounded = with_match("R1", 1, {"field": "command_text", "pattern": "foo(?=bar)"})
    forged = with_match(
        "R2",
        2,
        {
            "any": [
                {"field": "command_text", "pattern": "("},
                {"field": "command_text", "contains": "ok"},
            ]
        },
    )
    assert bounded.compiled is not None
    assert bounded.compiled.bounded_patterns == ((("match", "pattern"), "foo(?=bar)"),)
    book = RuleBook()
    book.load_snapshot([bounded, forged])

    def fired(text: str) -> list[str]:
        event = {"source_kind": "command", "source_id": "e", "payload": {"command_text": text}}
        return [tag.rule_id for tag in book.current.index.evaluate(event)]

    assert fired("x foobar") == ["R1"]
    assert fired("x foobaz (") == []
    assert fired("ok foobar") == ["R1", "R2"]
