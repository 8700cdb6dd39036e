"""`ttpctl fleet status`: every worker's revision against the master's, and whether the fleet
has converged; with ``--wait``, poll until it has (a deploy script's "is my change live?").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Final

import typer

from ttp_core.contract.control import ErrorCode, FleetInfo
from ttp_runtime.control_client import ControlClient, ControlClientError
from ttpctl.control_cli import JsonOption, command, console, option_duration, run_control
from ttpctl.control_output import (
    FleetVerdict,
    fleet_header,
    fleet_table,
    fleet_verdict,
    json_document,
)
from ttpctl.nats_session import NatsUrlOption

__all__ = ["fleet_app", "parse_wait_target", "wait_for_fleet"]

fleet_app = typer.Typer(help="The workers as the master sees them.", no_args_is_help=True)

LATEST: Final = "latest"
POLL_INTERVAL_S: Final = 0.1
# Below this, a poll would time out before even a healthy leader answers.
_MIN_REQUEST_TIMEOUT_S: Final = 0.25
# Errors a failing-over master gives for a moment; a wait rides them out until its deadline.
_TRANSIENT: Final = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.NOT_LEADER})


def parse_wait_target(text: str) -> int | None:
    """``--wait``: a revision number, or None for ``latest`` (the master's revision now)."""
    value = text.strip().lower()
    if value == LATEST:
        return None
    try:
        revision = int(value)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a revision number nor {LATEST!r}", param_hint="--wait"
        ) from None
    if revision < 0:
        raise typer.BadParameter(f"{revision} is not a revision (>= 0)", param_hint="--wait")
    return revision


@dataclass(frozen=True, slots=True)
class WaitOutcome:
    """The last fleet view of a wait, its verdict, and the target it was judged against."""

    info: FleetInfo
    verdict: FleetVerdict
    target: int
    timed_out: bool


async def wait_for_fleet(
    client: ControlClient,
    target: int | None,
    timeout_s: float,
    *,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> WaitOutcome:
    """Poll ``fleet`` until every live worker is ready at or past ``target`` (None: the
    master's revision at the start) with at least one live worker, or until ``timeout_s``.

    The first request must be answered (a missing master fails at once); afterwards
    ``unavailable`` / ``not_leader`` answers are retried until the deadline, so a leader
    change during a deploy does not end the wait.
    """
    deadline = time.monotonic() + timeout_s
    if target is None:
        target = (await client.revision()).revision
    info = await client.fleet()
    last_error: ControlClientError | None = None
    while True:
        verdict = fleet_verdict(info, target)
        if verdict.converged:
            return WaitOutcome(info, verdict, target, timed_out=False)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if last_error is not None:
                verdict = FleetVerdict(
                    False, f"{verdict.sentence} Last poll failed: {last_error.message}"
                )
            return WaitOutcome(info, verdict, target, timed_out=True)
        await asyncio.sleep(min(poll_interval_s, remaining))
        request_timeout = max(_MIN_REQUEST_TIMEOUT_S, min(client.timeout_s, remaining))
        try:
            info = await client.fleet(timeout_s=request_timeout)
            last_error = None
        except ControlClientError as exc:
            if exc.code not in _TRANSIENT:
                raise
            last_error = exc


def _print_fleet(info: FleetInfo, sentence: str) -> None:
    out = console()
    out.print(fleet_header(info))
    if info.workers:
        out.print(fleet_table(info.workers))
    out.print(sentence)


@command(fleet_app, "status")
def status(
    wait: Annotated[
        str | None,
        typer.Option(
            "--wait",
            metavar="REVISION|latest",
            help="Wait until every live worker is ready at REVISION or later (latest: the"
            " master's revision now), polling every 0.1 s.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        str,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            help="How long --wait waits: 30s, 2m, 1h30m.",
        ),
    ] = "10s",
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Show each worker (revision, lag, readiness, digest, rules active/total, events, last
    seen, gone) and say whether the fleet has converged.

    Converged: at least one live worker, and every live one (gone = silent for three status
    intervals) ready at the master's revision with its digest. With --wait: exit 0 as soon
    as every live worker is ready at REVISION or later, 1 when --timeout runs out first
    (the table and the reason are printed either way). Without --wait: exit 0 if converged,
    1 if not.
    """
    timeout_s = option_duration(timeout, "--timeout")
    if wait is None:
        info = run_control("fleet status", nats_url, lambda client: client.fleet())
        verdict = fleet_verdict(info)
        if as_json:
            typer.echo(json_document(info))
        else:
            _print_fleet(info, verdict.sentence)
        raise typer.Exit(0 if verdict.converged else 1)
    target = parse_wait_target(wait)
    outcome = run_control(
        "fleet status", nats_url, lambda client: wait_for_fleet(client, target, timeout_s)
    )
    sentence = outcome.verdict.sentence
    if outcome.timed_out:
        sentence = (
            f"Timed out after {timeout_s:g} s waiting for revision {outcome.target}. {sentence}"
        )
    if as_json:
        typer.echo(json_document(outcome.info))
        if outcome.timed_out:
            typer.echo(f"ttpctl fleet status: {sentence}", err=True)
    else:
        _print_fleet(outcome.info, sentence)
    raise typer.Exit(0 if outcome.verdict.converged else 1)
