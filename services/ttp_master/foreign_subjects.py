"""Which TTP_RULES messages are on subjects the stream was never meant to hold, and how to
purge them without touching a rule subject.

Pure decisions, no I/O. A push consumer of another stream can deliver its messages on a
TTP_RULES subject, and the stream then stores a copy under the message's own subject (the
known gap in docs/security.md): `ttp.event.ssh` or `ttp.tagged.ssh` inside TTP_RULES. Workers
never read such a copy, but it takes room in a stream that refuses new messages when full.
"""

from __future__ import annotations

from ttp_core.contract import subjects


def _tokens_overlap(a: list[str], b: list[str]) -> bool:
    """Whether some subject matches both token patterns (`*` one token, `>` the rest)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x == ">" or y == ">":
            # `>` needs at least one token here, which the other side has at position i.
            return True
        if "*" not in (x, y) and x != y:
            return False
        if i == len(a) - 1 or i == len(b) - 1:
            return len(a) == len(b)
    return False


def overlaps(a: str, b: str) -> bool:
    """Whether a subject exists that both NATS subject patterns match."""
    return _tokens_overlap(a.split("."), b.split("."))


def is_stream_subject(subject: str) -> bool:
    """Whether TTP_RULES is meant to hold messages of this (literal) subject."""
    return any(overlaps(subject, pattern) for pattern in subjects.RULES_STREAM_SUBJECTS)


def purge_filter(subject: str) -> str:
    """The widest filter to purge a foreign `subject` with that matches no rule subject.

    Its siblings (`ttp.event.*` for `ttp.event.ssh`) when that wildcard cannot match any
    subject of the stream, so one purge clears a flood of copies under many event kinds;
    else the subject alone. Never called with a subject of the stream.
    """
    if is_stream_subject(subject):
        raise ValueError(f"{subject} is a subject of {subjects.STREAM_RULES}: never purged")
    parent, _, _ = subject.rpartition(".")
    if parent:
        siblings = subjects.wildcard(parent)
        if not any(overlaps(siblings, p) for p in subjects.RULES_STREAM_SUBJECTS):
            return siblings
    return subject
