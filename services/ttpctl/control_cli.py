"""What every ttpctl control command shares: running a :class:`ControlClient` against the
master, turning failures into the documented exit codes (:class:`ExitCode`), the options
they all take, and the console they print to.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, NoReturn, TypeVar

import typer
from rich.console import Console

from ttp_core.contract import subjects
from ttp_core.contract.control import ErrorCode
from ttp_runtime.control_client import ControlClient, ControlClientError
from ttpctl.durations import parse_duration
from ttpctl.exit_codes import EXIT_CODES_HELP, ExitCode, exit_code_for
from ttpctl.nats_session import NatsSessionError, fail, open_nats

__all__ = [
    "JsonOption",
    "check_rule_id",
    "command",
    "console",
    "control_help",
    "fail_with",
    "option_duration",
    "run_control",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_SESSION_NAME: Final = "ttpctl-control"

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")
]


def control_help(func: Callable[..., Any]) -> str:
    """A control command's help: its docstring, then the exit codes every one shares.

    Each paragraph becomes one line: typer's rich help would keep the docstring's line
    breaks and wrap again around them.
    """
    paragraphs = inspect.cleandoc(func.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in [*paragraphs, EXIT_CODES_HELP] if p.strip())


def command(app: typer.Typer, name: str) -> Callable[[F], F]:
    """Register a control command on ``app`` with :func:`control_help` as its help."""

    def register(func: F) -> F:
        return app.command(name, help=control_help(func))(func)

    return register


_PIPE_WIDTH: Final = 4096


def console() -> Console:
    """stdout, no markup (rule ids and reasons are printed as they are), no highlighting."""
    # Into a pipe or file, one table row stays one line (grep, awk) instead of being wrapped
    # to rich's default 80 columns.
    width = None if sys.stdout.isatty() else _PIPE_WIDTH
    return Console(highlight=False, markup=False, soft_wrap=True, width=width)


_FORBIDDEN_HINT: Final = (
    " (the master acts on the NATS identity the server authenticated: connect as a role"
    " that may do this, e.g. with --env-file <data-dir>/credentials/<role>.env)"
)


def fail_with(command: str, error: ControlClientError) -> NoReturn:
    """Report ``error`` on stderr (``ttpctl <command>: error: <message>``) and exit with the
    exit code of its error code; a refusal of the caller's identity says so and how to act
    as another role."""
    if error.code is ErrorCode.FORBIDDEN:
        fail(command, f"forbidden: {error}{_FORBIDDEN_HINT}", int(exit_code_for(error.code)))
    fail(command, f"error: {error}", int(exit_code_for(error.code)))


def check_rule_id(value: str) -> str:
    """A typer callback refusing what cannot be a rule id before anything is sent."""
    if not subjects.is_token(value):
        raise typer.BadParameter(f"{value!r} is not a rule id ([A-Za-z0-9_-]{{1,64}})")
    return value


def option_duration(text: str, option: str) -> float:
    """Seconds of a duration option, or a usage error naming ``option``."""
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def run_control(
    command: str, nats_url: str | None, work: Callable[[ControlClient], Awaitable[T]]
) -> T:
    """Connect to NATS, run ``work`` with a client of the control service, and return what it
    returns. A :class:`ControlClientError` or an unusable NATS ends the command with the
    matching exit code (4 for NATS itself)."""

    async def session() -> T:
        async with open_nats(nats_url, name=_SESSION_NAME, announce_reconnects=False) as nats:
            return await work(ControlClient(nats.nc))

    try:
        return asyncio.run(session())
    except ControlClientError as exc:
        fail_with(command, exc)
    except NatsSessionError as exc:
        fail(command, f"error: {exc}", int(ExitCode.UNAVAILABLE))
    except KeyboardInterrupt:
        fail(command, "interrupted", 130)
