"""Read-only access to the packaged MITRE ATT&CK Enterprise catalogue.

The catalogue is a JSON file shipped inside this package and produced by
``scripts/build_attack_catalogue.py``; nothing here touches the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TypeVar

__all__ = ["AttackCatalogue", "Tactic", "Technique", "load_catalogue"]

_PACKAGE = "ttp_core.attack"
_RESOURCE = "enterprise-attack.json"
_TECHNIQUES_BASE_URL = "https://attack.mitre.org/techniques/"
_TECHNIQUE_ID = re.compile(r"T\d{4}(?:\.\d{3})?")

_Entry = TypeVar("_Entry", "Tactic", "Technique")
_Value = TypeVar("_Value")


@dataclass(frozen=True, slots=True)
class Tactic:
    """An ATT&CK tactic such as ``TA0002`` (Execution)."""

    id: str
    shortname: str
    name: str
    url: str


@dataclass(frozen=True, slots=True)
class Technique:
    """An ATT&CK technique (``T1059``) or sub-technique (``T1059.004``).

    Revoked and deprecated entries are kept so callers can report them;
    ``revoked_by`` names the direct replacement when ATT&CK records one.
    """

    id: str
    name: str
    tactics: tuple[str, ...]
    revoked: bool
    deprecated: bool
    revoked_by: str | None
    url: str

    @property
    def is_subtechnique(self) -> bool:
        """Whether this is a sub-technique (its id has a ``.NNN`` suffix)."""
        return "." in self.id

    @property
    def parent_id(self) -> str | None:
        """The parent technique id for a sub-technique, else ``None``."""
        parent, dot, _ = self.id.partition(".")
        return parent if dot else None


class AttackCatalogue:
    """Indexed, immutable view of one ATT&CK domain release.

    Lookups take canonical ids exactly as ATT&CK writes them (``T1059.004``,
    ``TA0002``); anything else is simply unknown.
    """

    __slots__ = ("_tactics", "_techniques", "attribution", "domain", "version")

    version: str
    domain: str
    attribution: str

    def __init__(
        self,
        *,
        version: str,
        domain: str,
        attribution: str,
        tactics: Iterable[Tactic],
        techniques: Iterable[Technique],
    ) -> None:
        """Build a catalogue; tactic and technique ids must be unique."""
        self.version = version
        self.domain = domain
        self.attribution = attribution
        self._tactics = _index(tactics, "tactic")
        self._techniques = _index(techniques, "technique")

    def __repr__(self) -> str:
        return (
            f"AttackCatalogue(domain={self.domain!r}, version={self.version!r}, "
            f"tactics={len(self._tactics)}, techniques={len(self._techniques)})"
        )

    def tactic(self, tactic_id: str) -> Tactic | None:
        """Return the tactic with this id (e.g. ``TA0002``), or ``None`` if unknown."""
        return self._tactics.get(tactic_id)

    def technique(self, technique_id: str) -> Technique | None:
        """Return the technique or sub-technique with this id, or ``None`` if unknown."""
        return self._techniques.get(technique_id)

    def tactics(self) -> tuple[Tactic, ...]:
        """All tactics, in the domain's kill-chain (matrix) order."""
        return tuple(self._tactics.values())

    def tactics_of(self, technique: Technique) -> tuple[Tactic, ...]:
        """The tactics ``technique`` belongs to, in matrix order (the order ATT&CK lists
        them in a technique is not that one); ids this release does not know are left out."""
        return tuple(tactic for tactic in self._tactics.values() if tactic.id in technique.tactics)

    def techniques(self) -> tuple[Technique, ...]:
        """All techniques and sub-techniques, including revoked and deprecated, by id."""
        return tuple(self._techniques.values())

    def url_for(self, technique_id: str) -> str:
        """Return the attack.mitre.org page for a technique id.

        Ids missing from this release still get a URL built from the id, so
        references to newer techniques remain linkable.

        Raises:
            ValueError: if ``technique_id`` is not shaped like ``T1234`` or ``T1234.567``.
        """
        known = self._techniques.get(technique_id)
        if known is not None:
            return known.url
        if not _TECHNIQUE_ID.fullmatch(technique_id):
            raise ValueError(f"not an ATT&CK technique id: {technique_id!r}")
        return f"{_TECHNIQUES_BASE_URL}{technique_id.replace('.', '/')}/"


def _index(items: Iterable[_Entry], kind: str) -> dict[str, _Entry]:
    index: dict[str, _Entry] = {}
    for item in items:
        if item.id in index:
            raise ValueError(f"duplicate {kind} id {item.id!r}")
        index[item.id] = item
    return index


def _field(entry: Mapping[str, object], key: str, expected: type[_Value]) -> _Value:
    value = entry.get(key)
    if not isinstance(value, expected):
        raise ValueError(f"catalogue entry {entry.get('id')!r}: bad {key!r}: {value!r}")
    return value


def _entries(document: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    raw = document.get(key)
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ValueError(f"catalogue {key!r} must be a list of objects")
    return raw


def _parse_tactic(entry: Mapping[str, object]) -> Tactic:
    return Tactic(
        id=_field(entry, "id", str),
        shortname=_field(entry, "shortname", str),
        name=_field(entry, "name", str),
        url=_field(entry, "url", str),
    )


def _parse_technique(entry: Mapping[str, object]) -> Technique:
    tactics = _field(entry, "tactics", list)
    if not all(isinstance(t, str) for t in tactics):
        raise ValueError(f"catalogue entry {entry.get('id')!r}: tactics must be strings")
    revoked_by = entry.get("revoked_by")
    if revoked_by is not None and not isinstance(revoked_by, str):
        raise ValueError(f"catalogue entry {entry.get('id')!r}: bad 'revoked_by'")
    return Technique(
        id=_field(entry, "id", str),
        name=_field(entry, "name", str),
        tactics=tuple(tactics),
        revoked=_field(entry, "revoked", bool),
        deprecated=_field(entry, "deprecated", bool),
        revoked_by=revoked_by,
        url=_field(entry, "url", str),
    )


def _parse_catalogue(text: str) -> AttackCatalogue:
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("catalogue must be a JSON object")
    return AttackCatalogue(
        version=_field(document, "attack_version", str),
        domain=_field(document, "domain", str),
        attribution=_field(document, "attribution", str),
        tactics=(_parse_tactic(e) for e in _entries(document, "tactics")),
        techniques=(_parse_technique(e) for e in _entries(document, "techniques")),
    )


@cache
def load_catalogue() -> AttackCatalogue:
    """Return the packaged ATT&CK Enterprise catalogue (parsed once per process)."""
    text = resources.files(_PACKAGE).joinpath(_RESOURCE).read_text(encoding="utf-8")
    return _parse_catalogue(text)
