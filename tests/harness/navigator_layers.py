"""Checking ATT&CK Navigator layers with MITRE's own layer library (``mitreattack.navlayers``).

navlayers reports a problem by printing it (and drops the field, or the whole layer), so a
layer is valid for it when loading prints nothing and writing it back changes nothing. The
package ships no JSON Schema of the format, so :func:`check_layer` also checks what format
4.5 asks beyond types: the versions, tactic names, technique ids and gradient bounds.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from typing import Any

from mitreattack.navlayers import Layer

from ttp_core.attack import AttackCatalogue

__all__ = ["check_layer", "layer_metadata", "navigator_round_trip", "technique_entries"]

_TECHNIQUE_ID = re.compile(r"T\d{4}(\.\d{3})?")


def navigator_round_trip(document: dict[str, Any]) -> dict[str, Any]:
    """Load ``document`` (as a file holds it) with navlayers, strictly, and write it back;
    fails on any complaint navlayers prints."""
    as_file = json.loads(json.dumps(document))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        layer = Layer(as_file, strict=True)
        back = layer.to_dict()
    assert printed.getvalue() == "", printed.getvalue()
    assert back is not None, "navlayers refused the layer"
    return back


def check_layer(document: dict[str, Any], catalogue: AttackCatalogue) -> None:
    """Valid for navlayers and for the constraints of format 4.5 it does not check."""
    back = navigator_round_trip(document)
    expected = document
    if not document["techniques"]:
        # navlayers leaves out an empty list when it writes a layer back.
        expected = {key: value for key, value in document.items() if key != "techniques"}
    assert back == expected
    versions = document["versions"]
    assert versions["layer"] == "4.5"
    assert versions["attack"] == catalogue.version
    major, minor, *_ = (int(part) for part in versions["navigator"].split("."))
    assert (major, minor) >= (4, 9)  # the format asks for at least 4.9.0
    assert document["domain"] == "enterprise-attack"
    shortnames = {tactic.shortname for tactic in catalogue.tactics()}
    for entry in document["techniques"]:
        assert _TECHNIQUE_ID.fullmatch(entry["techniqueID"])
        assert catalogue.technique(entry["techniqueID"]) is not None
        assert entry["tactic"] in shortnames
        assert isinstance(entry["score"], int)
        assert 0 <= entry["score"] <= document["gradient"]["maxValue"]
        assert entry["enabled"] is True
    gradient = document["gradient"]
    assert len(gradient["colors"]) >= 2
    assert gradient["maxValue"] > gradient["minValue"]
    assert document["legendItems"]
    assert all(item["label"] and item["color"] for item in document["legendItems"])


def layer_metadata(document: dict[str, Any]) -> dict[str, str]:
    """The layer's metadata as a mapping of name to value."""
    return {item["name"]: item["value"] for item in document["metadata"]}


def technique_entries(document: dict[str, Any], technique_id: str) -> list[dict[str, Any]]:
    """The layer's entries (one per tactic) of one technique id."""
    return [e for e in document["techniques"] if e["techniqueID"] == technique_id]
