"""Hostile events through the worker's real per-batch logic, without a server.

Every input, whatever its bytes, must end as a tag message, a no-match or a dead letter,
and every message the worker would publish must be strict JSON (no NaN or Infinity, no lone
surrogate, valid UTF-8) that validates as `EventTagged` or `DeadLetter`. One bad event must
never change what happens to the others in its batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from unittest import mock

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttp_core.contract import events as contract_events
from ttp_core.contract.events import (
    DeadLetterReason,
    MalformedEventError,
    check_event,
    parse_event,
)
from ttp_core.contract.payloads import DeadLetter, EventTagged, HoneypotEvent, decode
from ttp_core.engine.compiler import compile_rule
from ttp_core.engine.index import RuleIndex
from ttp_core.engine.tags import Tag
from ttp_core.rules.model import Rule
from ttp_worker.event_consumer import EventConsumer
from ttp_worker.rulebook import Ruleset
from ttpctl.events_commands import check_line

MAX_EVENT_BYTES = 1024 * 1024
MAX_PAYLOAD = 1024 * 1024
GOLDEN_UUID = "9aa491e5-f03b-5d8f-9eb5-161becedcdd6"


def _rule(rule_id: str, pattern: str, evidence: list[str], version: int = 1) -> Rule:
    return Rule.model_validate(
        {
            "rule_id": rule_id,
            "rule_version": version,
            "name": rule_id.lower(),
            "applies_to": ["command"],
            "match": {"field": "command_text", "pattern": pattern},
            "emits": [{"tactic": "TA0007", "technique_id": "T1083", "confidence": 0.8}],
            "evidence_fields": evidence,
        }
    )


RULESET = Ruleset(
    RuleIndex.build(
        [
            compile_rule(_rule("R0014", r"\bls\b", ["command_text"], version=2)),
            # Fires on any non-empty command and copies arbitrary values into its evidence.
            compile_rule(_rule("R0100", r"(?s).", ["command_text", "password", "extra"])),
        ]
    ),
    revision=7,
    kinds=frozenset({"command"}),
)


# --------------------------------------------------------------------------------------------
# A worker's batch logic on fake messages
# --------------------------------------------------------------------------------------------


class FakeMsg:
    """What the event consumer reads from a JetStream message."""

    def __init__(self, data: bytes, *, subject: str = "ttp.event.command", delivered: int = 1):
        self.data = data
        self.subject = subject
        self.headers: dict[str, str] | None = None
        self.metadata = SimpleNamespace(
            num_delivered=delivered,
            num_pending=0,
            stream="TTP_EVENTS",
            sequence=SimpleNamespace(stream=id(self)),
        )


def consumer(current: Callable[[], Ruleset] = lambda: RULESET, **options: Any) -> EventConsumer:
    values: dict[str, Any] = {"max_event_bytes": MAX_EVENT_BYTES, "deadletter_text_cap": 4096}
    values.update(options)
    return EventConsumer(
        SimpleNamespace(max_payload=MAX_PAYLOAD),  # type: ignore[arg-type]
        SimpleNamespace(),  # type: ignore[arg-type]
        current,
        worker_id="w1",
        **values,
    )


def refuse_constant(literal: str) -> Any:
    raise AssertionError(f"{literal} in a published message")


def strict_json(payload: bytes) -> Any:
    """Decode as strict JSON: UTF-8, no NaN/Infinity, no lone surrogate."""
    value = json.loads(payload.decode("utf-8"), parse_constant=refuse_constant)
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # raises on a lone surrogate escape that decoded to one
    return value


def outcomes(raws: list[bytes], **options: Any) -> list[tuple[str, Any]]:
    """(`tagged`/`none`/reason, decoded message) of each event of one batch."""
    worker = consumer(**options)
    msgs = [raw if isinstance(raw, FakeMsg) else FakeMsg(raw) for raw in raws]
    items, _counts = worker._evaluate(msgs)  # type: ignore[arg-type]
    found: list[tuple[str, Any]] = []
    for item in items:
        out = item.out
        if out is None:
            found.append(("none", None))
            continue
        strict_json(out.payload)
        if out.subject.startswith("ttp.tagged."):
            found.append(("tagged", decode(out.payload, EventTagged)))
        else:
            assert out.subject.startswith("ttp.deadletter.")
            letter = decode(out.payload, DeadLetter)
            assert letter.data.reason is not None
            assert letter.data.error.startswith(letter.data.reason + ": ")
            found.append((letter.data.reason, letter))
    return found


# --------------------------------------------------------------------------------------------
# Hypothesis: any event text ends as a valid message
# --------------------------------------------------------------------------------------------

LONE = ["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d"]
texts = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.sampled_from(["a", "ls", " ", "é", "\x00", "😀", "\ufffd", *LONE]), max_size=12
    ).map("".join),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
# Raw JSON text put where the placeholder string was: what json.dumps cannot produce.
HUGE_TEXT = {
    "big-float": "1e999",
    "negative-big-float": "-1e999",
    "nan": "NaN",
    "infinity": "-Infinity",
    "int-4300-digits": "9" * 4300,
    "int-5000-digits": "9" * 5000,
    "deep-100k": "[" * 100_000 + "]" * 100_000,
    "deep-900": '{"a":' * 900 + "1" + "}" * 900,
    "list-30k": "[" + ",".join(["1.5"] * 30_000) + "]",
    "surrogate-pair": '"\\ud83d\\ude00"',
    "lone-upper-case": '"\\uD800 x \\uDFFF"',
    "escaped-backslash": '"\\\\ud800"',
}
PLACEHOLDER = "@@raw@@"


@st.composite
def events(draw: st.DrawFn) -> bytes:
    payload: dict[str, Any] = {"command_text": draw(st.one_of(texts, texts, json_values))}
    if draw(st.booleans()):
        payload["password"] = draw(json_values)
    if draw(st.booleans()):
        payload["extra"] = PLACEHOLDER
    # Most events are well formed around their hostile values, so they reach the tagging.
    hostile = draw(st.integers(0, 3)) == 0
    event: dict[str, Any] = {
        "source_kind": draw(st.sampled_from(["command", "auth", "a.b", "", None, 7]))
        if hostile
        else "command",
        "source_id": draw(st.one_of(texts, st.integers(), st.none()))
        if hostile
        else draw(st.text(min_size=1, max_size=20) | texts.filter(bool)),
        "payload": draw(json_values) if hostile else payload,
    }
    for name in ("attacker_uuid", "session_id"):
        if draw(st.booleans()):
            event[name] = draw(st.one_of(texts, st.none(), st.integers()) if hostile else texts)
    if draw(st.integers(0, 4)) == 0:
        event = {"specversion": "1.0", "type": "ttp.event.v1", "data": event}
    text = json.dumps(event, ensure_ascii=draw(st.booleans()))
    text = text.replace(json.dumps(PLACEHOLDER), draw(st.sampled_from(sorted(HUGE_TEXT.values()))))
    # `surrogatepass`: a lone surrogate written raw is CESU-8 bytes, which is not UTF-8.
    raw = text.encode("utf-8", "surrogatepass")
    size = draw(st.sampled_from([None, MAX_EVENT_BYTES - 1, MAX_EVENT_BYTES, MAX_EVENT_BYTES + 1]))
    if size is not None and raw.endswith(b"}") and len(raw) < size:
        # Pad the top-level object to exactly `size` bytes: just under, at and over the limit.
        pad = b',"pad":"' + b"p" * max(0, size - len(raw) - 9) + b'"'
        raw = raw[:-1] + pad + b"}"
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=6))
def test_every_event_ends_as_a_valid_tag_no_match_or_dead_letter(raws: list[bytes]) -> None:
    results = outcomes(raws)
    assert len(results) == len(raws)
    for raw, (outcome, message) in zip(raws, results, strict=True):
        if outcome == "tagged":
            assert message.data.tags
            assert message.data.revision == RULESET.revision
            assert message.data.source_id == parse_event(raw, MAX_EVENT_BYTES)["source_id"]
        elif outcome != "none":
            assert outcome in {reason.value for reason in DeadLetterReason}
            assert message.data.received == raw[:4096].decode("utf-8", "replace")
            assert message.data.deliveries == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), min_size=1, max_size=4), st.integers(0, 4))
def test_a_batch_gives_each_event_what_it_gets_alone(raws: list[bytes], at: int) -> None:
    good = json.dumps(
        {"source_kind": "command", "source_id": "g", "payload": {"command_text": "ls"}}
    )
    batch = [*raws[:at], good.encode(), *raws[at:]]
    alone = [outcomes([raw])[0][0] for raw in batch]
    assert [outcome for outcome, _ in outcomes(batch)] == alone
    assert alone[min(at, len(raws))] == "tagged"


def decision(raw: bytes) -> Any:
    """What `parse_event` makes of `raw`: the event, or the refusal's reason, text and kind."""
    try:
        return parse_event(raw, MAX_EVENT_BYTES)
    except MalformedEventError as error:
        return (error.reason, str(error), error.deadletter_kind)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_the_msgspec_decoder_decides_every_event_as_the_standard_one(raw: bytes) -> None:
    fast = decision(raw)
    with mock.patch.object(contract_events, "_DEEP_BRACKETS", 0):  # the standard path only
        standard = decision(raw)
    assert fast == standard
    assert json.dumps(fast, sort_keys=True, default=str) == json.dumps(
        standard, sort_keys=True, default=str
    )  # also the same types: 1 stays an int, 1.0 a float


def test_nesting_near_the_recursion_limit_takes_the_standard_decoder() -> None:
    # msgspec would still decode this deep (a few levels past the standard decoder's limit);
    # the standard decoder, as before, refuses it.
    raw = raw_event().replace(b'"uname -a"', b"[" * 997 + b"]" * 997)
    assert decision(raw)[0] is DeadLetterReason.BAD_JSON


# --------------------------------------------------------------------------------------------
# The cases of the issue, one by one
# --------------------------------------------------------------------------------------------


def raw_event(source_id: str = "x", text: str = "uname -a", **payload: Any) -> bytes:
    body = {
        "source_kind": "command",
        "source_id": source_id,
        "payload": {"command_text": text, **payload},
    }
    return json.dumps(body).encode()


def test_lone_surrogate_in_source_id_is_dead_lettered_as_invalid_text() -> None:
    [(reason, letter)] = outcomes([raw_event("x\ud800", "uname -a \udfff")])
    assert reason == "invalid_text"
    assert letter.data.source_kind == "command"
    assert "source_id" in letter.data.error


def test_lone_surrogates_in_the_payload_become_u_fffd_in_the_evidence() -> None:
    [(outcome, message)] = outcomes([raw_event("x1", "ls \udfff \ud83d\ude00", password="\ud800")])
    assert outcome == "tagged"
    evidence = {t.rule_id: t.evidence for t in message.data.tags}
    assert evidence["R0014"] == {"command_text": "ls \ufffd 😀"}
    assert evidence["R0100"]["password"] == "\ufffd"


def test_upper_case_surrogate_escapes_are_found_too() -> None:
    raw = b'{"source_kind":"command","source_id":"x\\uDBFF","payload":{"command_text":"ls"}}'
    assert outcomes([raw])[0][0] == "invalid_text"


def test_raw_surrogate_bytes_are_not_utf8() -> None:
    raw = '{"source_kind":"command","source_id":"\ud800","payload":{}}'.encode(
        "utf-8", "surrogatepass"
    )
    [(reason, letter)] = outcomes([raw])
    assert reason == "bad_json"
    assert letter.data.error.startswith("bad_json: not UTF-8")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1E+400"])
def test_non_finite_numbers_are_dead_lettered(literal: str) -> None:
    raw = raw_event("x1", "ls").replace(b'"ls"}', b'"ls", "password": ' + literal.encode() + b"}")
    [(reason, letter)] = outcomes([raw])
    assert reason == "non_finite_number"
    assert literal in letter.data.error


def test_huge_but_finite_numbers_are_tagged_as_written() -> None:
    raw = raw_event("x1", "ls").replace(
        b'"ls"}', b'"ls", "password": [1e308, ' + b"9" * 4300 + b"]}"
    )
    [(outcome, message)] = outcomes([raw])
    assert outcome == "tagged"
    password = message.data.tags[1].evidence["password"]
    assert password[0] == 1e308 and password[1] == int("9" * 4300)


def test_integers_over_4300_digits_are_bad_json() -> None:
    raw = raw_event("x1", "ls").replace(b'"ls"}', b'"ls", "password": ' + b"9" * 4301 + b"}")
    assert outcomes([raw])[0][0] == "bad_json"


def test_100k_deep_nesting_is_bad_json_and_30k_lists_are_tagged() -> None:
    deep = raw_event().replace(b'"uname -a"', b"[" * 100_000 + b"]" * 100_000)
    wide = raw_event("x1", "ls", extra=list(range(30_000)))
    results = outcomes([deep, wide])
    assert [outcome for outcome, _ in results] == ["bad_json", "tagged"]
    assert len(results[1][1].data.tags[1].evidence["extra"]) == 32  # evidence is bounded


def test_sizes_at_the_limit() -> None:
    def sized(size: int) -> bytes:
        base = raw_event("x1", "ls")
        padded = base[:-1] + b', "pad": "' + b"p" * (size - len(base) - 11) + b'"}'
        assert len(padded) == size
        return padded

    results = outcomes(
        [sized(MAX_EVENT_BYTES - 1), sized(MAX_EVENT_BYTES), sized(MAX_EVENT_BYTES + 1)]
    )
    assert [outcome for outcome, _ in results] == ["tagged", "tagged", "oversize"]


def test_an_exception_while_tagging_dead_letters_only_that_event() -> None:
    class Exploding:
        def __init__(self, inner: RuleIndex) -> None:
            self.inner = inner

        def evaluate(self, event: dict[str, Any]) -> list[Tag]:
            if event["source_id"] == "boom":
                raise UnicodeEncodeError("utf-8", "x\ud800", 1, 2, "surrogates not allowed")
            return self.inner.evaluate(event)

    ruleset = Ruleset(Exploding(RULESET.index), revision=7, kinds=RULESET.kinds)  # type: ignore[arg-type]
    batch = [raw_event("a", "ls"), raw_event("boom", "ls"), raw_event("b", "ls")]
    results = outcomes(batch, current=lambda: ruleset)
    assert [outcome for outcome, _ in results] == ["tagged", "evaluation_error", "tagged"]
    letter = results[1][1]
    assert letter.data.source_kind == "command"
    assert letter.data.error.startswith("evaluation_error: UnicodeEncodeError: ")


def test_a_tag_message_over_max_payload_is_an_evaluation_error() -> None:
    # 32 evidence items of 32 texts of 1 KiB: about 1 MiB of evidence in each of two tags.
    nested = [["x" * 1024] * 32] * 32
    [(reason, letter)] = outcomes([raw_event("x1", "ls", extra=nested)], max_event_bytes=10**7)
    assert reason == "evaluation_error"
    assert "OutputTooLargeError" in letter.data.error and "bytes" in letter.data.error


def test_an_event_past_its_delivery_limit_is_dead_lettered_unprocessed() -> None:
    good = raw_event("x1", "ls")
    batch = [
        FakeMsg(good, delivered=5),
        FakeMsg(good, delivered=6),
        FakeMsg(b"anything", subject="ttp.event.auth", delivered=9),
    ]
    results = outcomes(batch, max_deliveries=5)  # type: ignore[arg-type]
    assert [outcome for outcome, _ in results] == ["tagged", "max_deliveries", "max_deliveries"]
    assert [r[1].data.deliveries for r in results[1:]] == [6, 9]
    assert [r[1].data.source_kind for r in results[1:]] == ["command", "auth"]
    assert results[1][1].data.error == (
        "max_deliveries: delivered 6 times; processing never finished (the limit is 5)"
    )


def test_golden_tag_identity_is_unchanged() -> None:
    [(outcome, message)] = outcomes([raw_event("cmd_42", "ls -la \ud800")])
    assert outcome == "tagged"
    assert [t.uuid for t in message.data.tags if t.rule_id == "R0014"] == [GOLDEN_UUID]


# --------------------------------------------------------------------------------------------
# One validator: the model and its JSON Schema agree with it
# --------------------------------------------------------------------------------------------

clean_texts = st.text(max_size=12)
finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(clean_texts, inner, max_size=3),
    max_leaves=8,
)
id_values: st.SearchStrategy[Any] = st.one_of(
    st.none(), clean_texts, st.integers(), st.booleans(), st.just([])
)


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    fields: dict[str, st.SearchStrategy[Any]] = {
        "source_kind": st.one_of(
            st.sampled_from(["command", "a_b-C9", "x" * 64, "x" * 65, "a.b", "", "é"]),
            id_values,
        ),
        "source_id": st.one_of(
            st.text(min_size=250, max_size=260), clean_texts, st.integers(), st.none()
        ),
        "payload": st.one_of(st.dictionaries(clean_texts, finite_json, max_size=3), finite_json),
        "attacker_uuid": id_values,
        "decky_id": id_values,
        "other": finite_json,
    }
    for name, strategy in fields.items():
        if draw(st.integers(0, 5)) > 0:
            obj[name] = draw(strategy)
    return obj


EVENT_SCHEMA = HoneypotEvent.model_json_schema()


def accepted_by_check(obj: dict[str, Any]) -> bool:
    try:
        check_event(obj)
    except MalformedEventError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(event_objects())
def test_check_event_the_model_and_the_json_schema_agree(obj: dict[str, Any]) -> None:
    by_check = accepted_by_check(obj)
    by_schema = jsonschema.Draft202012Validator(EVENT_SCHEMA).is_valid(obj)
    try:
        HoneypotEvent.model_validate(obj)
        by_model = True
    except ValueError:
        by_model = False
    assert by_check == by_schema == by_model, obj
    if by_check:
        # What the worker parses from the same object's JSON is the same decision.
        assert parse_event(json.dumps(obj).encode(), 10**7)["source_id"] == obj["source_id"]


def test_the_model_applies_the_repairs_and_refusals_of_the_worker() -> None:
    event = HoneypotEvent.model_validate(
        {"source_kind": "c", "source_id": "x", "payload": {"k\udfff": ["\ud800"]}}
    )
    assert event.payload == {"k\ufffd": ["\ufffd"]}
    for bad in (
        {"source_kind": "c", "source_id": "x\ud800", "payload": {}},
        {"source_kind": "c", "source_id": "x", "payload": {"n": math.nan}},
        {"source_kind": "c", "source_id": "x", "payload": {"n": [math.inf]}},
        {"source_kind": "c", "source_id": "x", "payload": {"n": 10**4300}},
    ):
        with pytest.raises(ValueError):
            HoneypotEvent.model_validate(bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_ttpctl_events_publish_skips_exactly_what_a_worker_dead_letters(raw: bytes) -> None:
    [(outcome, message)] = outcomes([raw])
    checked = check_line(raw, MAX_EVENT_BYTES)
    if outcome in ("tagged", "none"):
        assert not isinstance(checked, str) and checked is not None
        kind = parse_event(raw, MAX_EVENT_BYTES)["source_kind"]
        assert checked.subject == f"ttp.event.{kind}"
    elif outcome == "oversize":
        assert isinstance(checked, str) and "max_payload" in checked
    else:
        assert checked == message.data.error
