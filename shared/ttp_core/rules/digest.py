"""One digest of a rule set, computed alike by the master (from PostgreSQL) and by each
worker (from its index), so `ttpctl fleet status` can tell whether they hold the same rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def ruleset_digest(
    rules: Iterable[tuple[str, str]],
    states: Iterable[tuple[str, str, float | None, float | None]],
) -> str:
    """SHA-256 over sorted `(rule_id, content_sha256)` and `(rule_id, state, max, expires)`."""
    h = hashlib.sha256()
    for rule_id, sha in sorted(rules):
        h.update(f"r|{rule_id}|{sha}\n".encode())
    for rule_id, state, confidence_max, expires_at in sorted(states, key=lambda s: s[0]):
        h.update(f"s|{rule_id}|{state}|{confidence_max}|{expires_at}\n".encode())
    return h.hexdigest()
