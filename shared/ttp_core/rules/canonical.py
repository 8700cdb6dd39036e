"""The canonical form of a rule and its content hash (see docs/rules.md).

Hashing the normalised model rather than the file means whitespace, comments, key
order and scalar spelling (`0.9` vs `.90`) change nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ttp_core.rules.model import Rule


def canonical_json(data: Any) -> str:
    """Compact JSON with sorted keys: equal data gives equal text."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def content_sha256(rule: Rule) -> str:
    """Hex SHA-256 of the rule's canonical JSON."""
    return hashlib.sha256(canonical_json(rule.normalised()).encode("utf-8")).hexdigest()
