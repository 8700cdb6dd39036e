"""`docs/contract.md` states the tag identity the code computes (formula and golden value)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from ttp_core.engine.tags import tag_uuid

DOC = Path(__file__).resolve().parents[2] / "docs" / "contract.md"


def test_the_documented_tag_uuid_formula_and_golden_value_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    golden = "9aa491e5-f03b-5d8f-9eb5-161becedcdd6"
    assert f"| command | cmd_42 | R0014 | 2 | T1083 | none | `{golden}` |" in text
    assert tag_uuid("command", "cmd_42", "R0014", 2, "T1083", None) == golden
    # The documented formula, evaluated literally, gives the same value.
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "decnet:ttp_tag:v1")
    assert str(namespace) in text
    assert str(uuid.uuid5(namespace, "command|cmd_42|R0014|2|T1083|")) == golden
    assert re.search(r'"source_kind\|source_id\|rule_id\|rule_version\|technique_id\|', text)
