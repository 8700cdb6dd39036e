"""Which TTP_RULES rule messages the master produced, and how a forged one is answered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ttp_core.contract.payloads import RuleReloaded, RuleStateChanged, decode
from ttp_master.forged_rules import (
    claimed_revision,
    is_rule_subject,
    judge,
    reissued,
    replacement_for_unknown,
    rule_id_of,
)

SUBJECT = "ttp.rule.state.R0001"


def _event(revision: int, state: str = "disabled") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"ttp-rev-{revision}",
        "source": "ttp-master",
        "type": "ttp.rule.state.v1",
        "subject": "R0001",
        "time": "2026-12-06T05:00:00Z",
        "data": {"rule_id": "R0001", "state": state, "revision": revision},
    }


def _raw(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def test_the_stored_event_under_its_revision_is_genuine() -> None:
    payload = _event(7)
    assert judge(SUBJECT, _raw(payload), (SUBJECT, payload)) is None


def test_key_order_and_spacing_do_not_make_a_message_forged() -> None:
    payload = _event(7)
    reordered = json.dumps(dict(reversed(list(payload.items()))), indent=2).encode()
    assert judge(SUBJECT, reordered, (SUBJECT, payload)) is None


def test_a_revision_postgresql_never_produced_is_forged() -> None:
    forgery = judge(SUBJECT, _raw(_event(10**9)), None)
    assert forgery is not None
    assert (forgery.subject, forgery.revision) == (SUBJECT, 10**9)
    assert forgery.reason == "revision never produced"


def test_other_content_under_a_real_revision_is_forged() -> None:
    stored = _event(7, state="enabled")
    forgery = judge(SUBJECT, _raw(_event(7, state="disabled")), (SUBJECT, stored))
    assert forgery is not None
    assert (forgery.revision, forgery.reason) == (7, "content differs")


def test_a_real_revision_replayed_on_another_subject_is_forged() -> None:
    payload = _event(7)
    forgery = judge("ttp.rule.state.R0002", _raw(payload), (SUBJECT, payload))
    assert forgery is not None
    assert forgery.reason == f"revision belongs to {SUBJECT}"


def test_a_message_claiming_no_integer_revision_is_left_to_the_workers_rejection() -> None:
    # Workers refuse it as unprocessable and hold nothing from it.
    assert judge(SUBJECT, b"not json", None) is None
    assert judge(SUBJECT, _raw({"data": {"revision": "9"}}), None) is None
    assert claimed_revision(_raw({"data": {"revision": True}})) is None


def test_only_definition_and_state_subjects_are_checked() -> None:
    assert is_rule_subject("ttp.rule.reloaded.R0001")
    assert is_rule_subject(SUBJECT)
    assert not is_rule_subject("ttp.ruleset.revision")
    assert not is_rule_subject("ttp.rule.statefoo")


def test_a_reissue_keeps_the_content_under_the_new_revision() -> None:
    stored = _event(7)
    again = reissued(stored, 10**9 + 1, "2026-12-06T05:10:00+00:00")
    assert again["data"] == {**stored["data"], "revision": 10**9 + 1}
    assert again["id"] == f"ttp-rev-{10**9 + 1}"
    assert again["time"] == "2026-12-06T05:10:00+00:00"
    assert {k: v for k, v in again.items() if k not in ("id", "time", "data")} == {
        k: v for k, v in stored.items() if k not in ("id", "time", "data")
    }
    assert stored["data"]["revision"] == 7  # the stored event is not changed in place


def test_a_forged_state_of_a_rule_never_stated_is_answered_with_enabled() -> None:
    now = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    kind, payload = replacement_for_unknown("ttp.rule.state.R0042", 10**9 + 1, now)
    assert kind == "state"
    event = decode(json.dumps(payload).encode(), RuleStateChanged)
    assert event.id == f"ttp-rev-{10**9 + 1}"
    assert (event.data.rule_id, event.data.revision, event.data.state) == (
        "R0042",
        10**9 + 1,
        "enabled",
    )


def test_a_forged_definition_of_a_rule_never_published_is_answered_with_a_tombstone() -> None:
    now = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    kind, payload = replacement_for_unknown("ttp.rule.reloaded.R0042", 12, now)
    assert kind == "deleted"
    event = decode(json.dumps(payload).encode(), RuleReloaded)
    assert (event.data.rule_id, event.data.revision, event.data.deleted) == ("R0042", 12, True)


def test_a_subject_naming_no_valid_rule_id_has_nothing_to_answer_with() -> None:
    assert rule_id_of("ttp.rule.state.R0042") == "R0042"
    assert rule_id_of("ttp.rule.state." + "x" * 65) is None
