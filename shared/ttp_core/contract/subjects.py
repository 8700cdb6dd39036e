"""Every NATS subject and stream name of ttp-rulebus (see docs/contract.md).

This module is the only place that formats a subject string; everything else calls it.
"""

from __future__ import annotations

import re
from typing import Final

TOKEN_PATTERN: Final = r"[A-Za-z0-9_-]{1,64}"  # noqa: S105 - a pattern, not a secret
"""One subject token: rule ids, source kinds and worker ids are all one."""
_TOKEN: Final = re.compile(TOKEN_PATTERN)

RULE_RELOADED_PREFIX: Final = "ttp.rule.reloaded"
RULE_STATE_PREFIX: Final = "ttp.rule.state"
RULE_REJECTED_PREFIX: Final = "ttp.rule.rejected"
RULESET_REVISION: Final = "ttp.ruleset.revision"
EVENT_PREFIX: Final = "ttp.event"
TAGGED_PREFIX: Final = "ttp.tagged"
DEADLETTER_PREFIX: Final = "ttp.deadletter"
WORKER_STATUS_PREFIX: Final = "ttp.worker.status"
CONTROL_PREFIX: Final = "ttp.ctl"

STREAM_RULES: Final = "TTP_RULES"
STREAM_EVENTS: Final = "TTP_EVENTS"
STREAM_TAGS: Final = "TTP_TAGS"
STREAM_DEADLETTER: Final = "TTP_DEADLETTER"

UNKNOWN_KIND: Final = "unknown"


class SubjectError(ValueError):
    """A value cannot be one token of a NATS subject."""


def token(value: str) -> str:
    """`value` if it is a valid single subject token (`[A-Za-z0-9_-]{1,64}`)."""
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise SubjectError(f"{value!r} is not a valid subject token ([A-Za-z0-9_-]{{1,64}})")
    return value


def is_token(value: object) -> bool:
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def wildcard(prefix: str) -> str:
    """The subscription subject matching every `<prefix>.<token>`."""
    return f"{prefix}.*"


def rule_reloaded(rule_id: str) -> str:
    return f"{RULE_RELOADED_PREFIX}.{token(rule_id)}"


def rule_state(rule_id: str) -> str:
    return f"{RULE_STATE_PREFIX}.{token(rule_id)}"


def rule_rejected(rule_id: str) -> str:
    return f"{RULE_REJECTED_PREFIX}.{token(rule_id)}"


def event(source_kind: str) -> str:
    return f"{EVENT_PREFIX}.{token(source_kind)}"


def tagged(source_kind: str) -> str:
    return f"{TAGGED_PREFIX}.{token(source_kind)}"


def deadletter(source_kind: str) -> str:
    """Dead-letter subject; an unreadable kind becomes `unknown`."""
    return f"{DEADLETTER_PREFIX}.{source_kind if is_token(source_kind) else UNKNOWN_KIND}"


def worker_status(worker_id: str) -> str:
    return f"{WORKER_STATUS_PREFIX}.{token(worker_id)}"


def control(endpoint: str) -> str:
    return f"{CONTROL_PREFIX}.{endpoint}"


def last_token(subject: str) -> str:
    """The final token of a subject (the rule_id, kind or worker id)."""
    return subject.rsplit(".", 1)[-1]


RULES_STREAM_SUBJECTS: Final = (
    wildcard(RULE_RELOADED_PREFIX),
    wildcard(RULE_STATE_PREFIX),
    RULESET_REVISION,
)
EVENTS_STREAM_SUBJECTS: Final = (wildcard(EVENT_PREFIX),)
TAGS_STREAM_SUBJECTS: Final = (wildcard(TAGGED_PREFIX),)
DEADLETTER_STREAM_SUBJECTS: Final = (wildcard(DEADLETTER_PREFIX),)
