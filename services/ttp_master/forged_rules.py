"""Telling a TTP_RULES rule message PostgreSQL produced from one it never did.

Pure decisions, no I/O: the stream guard reads the messages and the outbox rows and asks
here. A rule message is genuine only when the outbox holds its revision, for the same
subject, with the same payload; anything else was published by someone other than the
master (see "Forged rule messages" in docs/operations.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ttp_core.contract import subjects
from ttp_core.contract.payloads import MASTER_SOURCE, RuleReloaded, RuleStateChanged, envelope
from ttp_master.db.repository import event_msg_id

MAX_ANSWERABLE_REVISION = 2**53
"""Above this a forged revision is not answered with a newer one: advancing the revision
sequence that far would let a forger exhaust it, and JSON readers lose integer precision
past 2**53. Such a message is still reported and the stream's copy republished."""


def is_rule_subject(subject: str) -> bool:
    """Whether workers apply messages of this subject (definitions and operator states)."""
    return subject.startswith(
        (subjects.RULE_RELOADED_PREFIX + ".", subjects.RULE_STATE_PREFIX + ".")
    )


@dataclass(frozen=True, slots=True)
class Forgery:
    """A rule message in TTP_RULES that PostgreSQL never produced."""

    subject: str
    revision: int | None
    """The revision the message claims (None: it names none a worker would read)."""
    reason: str


def claimed_revision(raw: bytes) -> int | None:
    """The `data.revision` a rule message claims, if it is an integer."""
    try:
        revision = json.loads(raw)["data"]["revision"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else None


def judge(subject: str, raw: bytes, produced: tuple[str, Any] | None) -> Forgery | None:
    """None when the message is the one PostgreSQL produced, else why it is forged.

    `produced`: the (subject, payload) of the outbox row with the revision the message
    claims, or None when the outbox has no such row.
    """
    revision = claimed_revision(raw)
    if revision is None:
        # Workers reject it as unprocessable and resync; nothing they would hold.
        return None
    if produced is None:
        return Forgery(subject, revision, "revision never produced")
    row_subject, payload = produced
    if row_subject != subject:
        return Forgery(subject, revision, f"revision belongs to {row_subject}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return Forgery(subject, revision, "content differs")
    if body != payload:
        return Forgery(subject, revision, "content differs")
    return None


def reissued(payload: dict[str, Any], revision: int, time: str) -> dict[str, Any]:
    """PostgreSQL's latest event of a subject, carried again under a new revision."""
    data = dict(payload.get("data") or {})
    data["revision"] = revision
    return {**payload, "id": event_msg_id(revision), "time": time, "data": data}


REPLACED_REASON = "forged message replaced"


def rule_id_of(subject: str) -> str | None:
    """The rule id a rule subject names, None when it is no valid rule id."""
    rule_id = subjects.last_token(subject)
    try:
        return subjects.token(rule_id)
    except subjects.SubjectError:
        return None


def replacement_for_unknown(subject: str, revision: int, now: datetime) -> tuple[str, Any]:
    """(outbox kind, payload) to put over a forged message of a subject PostgreSQL never
    published: what it holds for such a rule, no operator state (`enabled`) or no rule (a
    tombstone).
    """
    rule_id = subjects.last_token(subject)
    data: RuleStateChanged | RuleReloaded
    if subject.startswith(subjects.RULE_STATE_PREFIX + "."):
        kind = "state"
        data = RuleStateChanged(
            rule_id=rule_id,
            revision=revision,
            state="enabled",
            reason=REPLACED_REASON,
            set_by=MASTER_SOURCE,
            set_at=now,
        )
    else:
        kind = "deleted"
        data = RuleReloaded(
            rule_id=rule_id,
            revision=revision,
            rule_version=None,
            content_sha256=None,
            source_path="",
            deleted=True,
        )
    event = envelope(
        data, source=MASTER_SOURCE, subject=rule_id, event_id=event_msg_id(revision), time=now
    )
    return kind, event.model_dump(mode="json")
