"""Regular expressions under the product's safety rule (see docs/rules.md).

Every pattern RE2 accepts runs in linear time. A pattern only a backtracking engine
accepts (lookaround, backreferences, atomic groups) runs through the `regex` module
with a hard time limit and a cap on the input it sees, and is reported as a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import re2

if TYPE_CHECKING:
    import regex

# `regex` is imported where a backtracking pattern is compiled: most rule sets have none,
# and a worker's start does not pay for the module (~12 ms) unless one of its rules does.

BACKTRACK_TIMEOUT_S: Final = 0.002
BACKTRACK_MAX_INPUT: Final = 4096
RE2_MAX_MEM: Final = 64 << 20


class PatternError(ValueError):
    """The pattern is not a valid regular expression for any supported engine."""


def re2_options() -> re2.Options:
    """Options for every RE2 object the engine builds: quiet, with room for large sets."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    return options


_OPTIONS: Final = re2_options()


@dataclass(frozen=True, slots=True)
class BoundedPattern:
    """A backtracking-only pattern, searched with a time limit on a capped input."""

    source: str
    compiled: regex.Pattern[str]

    def search(self, text: str) -> bool:
        """True if the pattern matches; a search that hits the limit counts as no match."""
        try:
            found = self.compiled.search(text[:BACKTRACK_MAX_INPUT], timeout=BACKTRACK_TIMEOUT_S)
            if found is None or len(text) <= BACKTRACK_MAX_INPUT:
                return found is not None
            # The cut is not the end of the text: `$`, `\b` or a lookahead may have matched
            # only there, so the match must also hold, from where it starts, on the whole text.
            return self.compiled.match(text, found.start(), timeout=BACKTRACK_TIMEOUT_S) is not None
        except TimeoutError:
            return False


@dataclass(frozen=True, slots=True)
class PatternCheck:
    """How a pattern will run: linearly under RE2, or bounded with the reason RE2 refused it."""

    linear: bool
    re2_error: str | None = None


def check_pattern(pattern: str) -> PatternCheck:
    """Classify `pattern`, raising `PatternError` if no engine accepts it."""
    try:
        # The RE2 a filter builds for a pattern is the one `re2.compile` builds, without
        # the wrapper's per-call copy of the options (a third of the check's cost).
        re2.Filter().Add(pattern, _OPTIONS)
        return PatternCheck(linear=True)
    except re2.error:
        pass
    try:
        re2.compile(pattern, _OPTIONS)  # again, for RE2's reason (the filter does not give it)
        return PatternCheck(linear=True)
    except re2.error as exc:
        reason = _re2_reason(exc)
    import regex

    try:
        regex.compile(pattern, regex.VERSION0)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise PatternError(f"invalid regular expression: {exc}") from None
    return PatternCheck(linear=False, re2_error=reason)


_BACKTRACKING_HINT: Final = re.compile(
    r"\\[^\W_dDsSwWbBAzpPxnrtfvaQE]"  # an escape RE2 lacks: \1, \Z, \G, \K, \k<..>, \u...
    r"|\(\?(?!:|P<|[imsU-]+[:)])"  # a group RE2 lacks: lookaround, (?>, (?(, (?P=, (?R...
    r"|[*+?}]\+"  # a possessive quantifier
)


def may_need_backtracking(pattern: str) -> bool:
    """False when `pattern` has none of the constructs RE2 refuses and a backtracking
    engine accepts (lookaround, backreferences, atomic groups, possessive quantifiers,
    conditionals, escapes RE2 lacks); True when it may have one.

    One regular-expression search (a worker runs it on every pattern it loads), conservative
    by design: it reads every position, escaped or not, and no character class, so `\\(?`
    or `\\\\k` also answer True, which only costs a full `check_pattern`. A pattern it clears
    that RE2 still refuses is caught by the filter that compiles it.
    """
    return _BACKTRACKING_HINT.search(pattern) is not None


def compile_bounded(pattern: str, ignore_case: bool = False) -> BoundedPattern:
    """Compile a pattern for the bounded backtracking path."""
    import regex

    flags = regex.VERSION0 | (regex.IGNORECASE if ignore_case else 0)
    try:
        return BoundedPattern(pattern, regex.compile(pattern, flags))
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise PatternError(f"invalid regular expression: {exc}") from None


def _re2_reason(exc: BaseException) -> str:
    text = exc.args[0] if exc.args else exc
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text)
