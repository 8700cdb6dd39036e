"""Exit codes of the ``ttpctl`` control commands, from the control protocol's error codes.

The client itself is :mod:`ttp_runtime.control_client` (the web console uses it too); this
module is the one place that maps its error codes to exit codes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from ttp_core.contract.control import ErrorCode

__all__ = ["EXIT_CODES_HELP", "ExitCode", "exit_code_for"]


class ExitCode(IntEnum):
    """Exit codes of the ttpctl control commands (state, rules list/show, fleet, audit)."""

    OK = 0
    """The command did what was asked."""
    NEGATIVE = 1
    """The answer is no: the fleet is not converged, or a wait timed out."""
    USAGE = 2
    """Bad usage or a request the master refused as invalid (``bad_request``)."""
    UNKNOWN_RULE = 3
    """The master knows no such rule (``unknown_rule``)."""
    UNAVAILABLE = 4
    """No usable answer: NATS unreachable, no master (or no route to it for this identity),
    not the leader, the master busy (retry), or a master failure."""
    FORBIDDEN = 5
    """The caller's NATS identity may not do this (``forbidden``): a viewer changing state,
    an operator forcing an unknown rule, or an identity the master cannot verify."""


_EXIT_CODES: Final = {
    ErrorCode.BAD_REQUEST: ExitCode.USAGE,
    ErrorCode.UNKNOWN_RULE: ExitCode.UNKNOWN_RULE,
    ErrorCode.NOT_LEADER: ExitCode.UNAVAILABLE,
    ErrorCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    ErrorCode.BUSY: ExitCode.UNAVAILABLE,
    ErrorCode.INTERNAL: ExitCode.UNAVAILABLE,
    ErrorCode.FORBIDDEN: ExitCode.FORBIDDEN,
}

EXIT_CODES_HELP: Final = (
    "Exit codes: 0 success; 1 negative answer (not converged, wait timed out); 2 usage"
    " error or request refused as invalid; 3 unknown rule; 4 NATS or the master unavailable"
    " (no master, not the leader, master busy: retry, master failure); 5 forbidden: your NATS"
    " identity may not do this."
)
"""The exit-code paragraph every control command's help ends with."""


def exit_code_for(code: ErrorCode) -> ExitCode:
    """The exit code for an error code of the control protocol."""
    return _EXIT_CODES.get(code, ExitCode.UNAVAILABLE)
