"""Tags and their deterministic identity (see docs/contract.md)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, Final

TAG_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "decnet:ttp_tag:v1")
_NAMESPACE_SHA1: Final = hashlib.sha1(TAG_NAMESPACE.bytes)  # noqa: S324 - RFC 4122 uuid5 is SHA-1
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def tag_uuid_from_name(name: str) -> str:
    """uuid5(TAG_NAMESPACE, name) as text: the value `uuid.uuid5` gives, at half the cost."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(name.encode("utf-8"))
    return uuid_text(digest.hexdigest())


def tag_uuid_prefix(source_kind: str, source_id: str) -> Any:
    """The uuid5 hash fed with the event's part of every tag name (`kind|source_id|`).

    An event's tags differ only after that part, so the evaluation of one event feeds it
    once and each tag continues from a `.copy()` of it (`tag_uuid_after`).
    """
    digest = _NAMESPACE_SHA1.copy()
    digest.update(f"{source_kind}|{source_id}|".encode())
    return digest


def tag_uuid_after(prefix: Any, suffix: bytes) -> str:
    """The tag uuid whose name is `prefix`'s text then `suffix` (UTF-8 of `rule_id|...`)."""
    digest = prefix.copy()
    digest.update(suffix)
    return uuid_text(digest.hexdigest())


def uuid_text(x: str) -> str:
    """A SHA-1 hex digest as uuid5 text.

    Runs once per tag on the worker's hot path, hence the hand-rolled formatting: version
    nibble 5 and the RFC 4122 variant bits are written straight into the hex text.
    """
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def tag_uuid(
    source_kind: str,
    source_id: str,
    rule_id: str,
    rule_version: int,
    technique_id: str,
    sub_technique_id: str | None,
) -> str:
    """The identity of one tag: redelivering an event yields the same uuids."""
    name = (
        f"{source_kind}|{source_id}|{rule_id}|{rule_version}|"
        f"{technique_id}|{sub_technique_id or ''}"
    )
    return tag_uuid_from_name(name)


# Not frozen: a frozen dataclass costs twice as much to build, and tags are built per event.
@dataclass(slots=True)
class Tag:
    """One ATT&CK technique observed in one event by one rule."""

    uuid: str
    rule_id: str
    rule_version: int
    tactic: str
    technique_id: str
    sub_technique_id: str | None
    confidence: float
    evidence: dict[str, Any]
    attack_version: str
    mitre_url: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "tactic": self.tactic,
            "technique_id": self.technique_id,
            "sub_technique_id": self.sub_technique_id,
            "confidence": self.confidence,
            "evidence": self.evidence,
            "attack_version": self.attack_version,
            "mitre_url": self.mitre_url,
        }
