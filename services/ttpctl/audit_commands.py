"""`ttpctl audit`: the master's change log (definitions, states, deletes, rejections), with
who and why, oldest first.

A single command (`ttpctl audit`, not a group): :data:`audit_app` holds it, with
:func:`ttpctl.control_cli.control_help` as its help, for the app to register.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ttp_core.contract.control import AuditRequest
from ttp_runtime.control_client import ControlClientError, build_request
from ttpctl.control_cli import (
    JsonOption,
    check_rule_id,
    command,
    console,
    fail_with,
    run_control,
)
from ttpctl.control_output import audit_table, json_document
from ttpctl.durations import parse_since
from ttpctl.nats_session import NatsUrlOption

__all__ = ["audit", "audit_app"]

_COMMAND = "audit"

audit_app = typer.Typer()


@command(audit_app, _COMMAND)
def audit(
    rule: Annotated[
        str | None,
        typer.Argument(metavar="RULE", help="Only changes of this rule_id.", show_default=False),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only changes since this long ago (30s, 15m, 1h30m, 2d) or since an ISO 8601"
            " time with an offset or Z.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", min=1, max=10_000, help="At most N changes (the newest N)."),
    ] = 1000,
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Show the change log, oldest first: revision, time, rule, kind (reloaded, deleted,
    rejected, state), actor and a summary. The actor is the NATS identity that made the change,
    e.g. OPERATORS/operator or CONSOLE/console, then the user the console acted for, e.g.
    (for alice)."""
    if rule is not None:
        check_rule_id(rule)
    start = None
    if since is not None:
        try:
            start = parse_since(since)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
    try:
        request = build_request(AuditRequest, rule_id=rule, since=start, limit=limit)
    except ControlClientError as exc:
        fail_with(_COMMAND, exc)
    log = run_control(_COMMAND, nats_url, lambda client: client.audit(request))
    if as_json:
        typer.echo(json_document(log))
        raise typer.Exit(0)
    out = console()
    if log.entries:
        out.print(audit_table(log.entries))
    else:
        out.print("No changes recorded" + (" for that selection." if rule or since else "."))
    raise typer.Exit(0)
