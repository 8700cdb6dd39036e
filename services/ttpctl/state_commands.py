"""`ttpctl state set | clear | show`: a rule's operator state, through the master.

The master validates, persists and publishes every change; these commands only build the
request, send it and print the answer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from ttp_core.contract.control import (
    StateChanged,
    StateClearRequest,
    StateGetRequest,
    StateList,
    StateSetRequest,
)
from ttp_runtime.control_client import ControlClientError, build_request
from ttpctl.control_cli import (
    JsonOption,
    check_rule_id,
    command,
    console,
    fail_with,
    option_duration,
    run_control,
)
from ttpctl.control_output import json_document, state_changed_text, states_table
from ttpctl.durations import parse_instant
from ttpctl.nats_session import NatsUrlOption

__all__ = ["state_app"]

state_app = typer.Typer(
    help="Disable or clip a rule, or put it back to enabled, through the master.",
    no_args_is_help=True,
)

RuleArgument = Annotated[
    str, typer.Argument(metavar="RULE", help="The rule_id.", callback=check_rule_id)
]


def _expiry(for_: str | None, until: str | None, now: datetime) -> datetime | None:
    if for_ is not None and until is not None:
        raise typer.BadParameter("use --for or --until, not both", param_hint="--for/--until")
    if for_ is not None:
        return now + timedelta(seconds=option_duration(for_, "--for"))
    if until is not None:
        try:
            moment = parse_instant(until)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--until") from None
        if moment <= now:
            raise typer.BadParameter(f"{until!r} is in the past", param_hint="--until")
        return moment
    return None


@command(state_app, "set")
def set_state(
    rule: RuleArgument,
    reason: Annotated[
        str,
        typer.Option("--reason", help="Why (required; recorded in the audit).", show_default=False),
    ],
    disable: Annotated[bool, typer.Option("--disable", help="The rule never fires.")] = False,
    clip: Annotated[
        float | None,
        typer.Option(
            "--clip",
            metavar="MAX",
            help="Cap the rule's confidence at MAX, in (0, 1].",
            show_default=False,
        ),
    ] = None,
    for_: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="DURATION",
            help="Revert to enabled after this long: 90s, 15m, 2h, 1d, 1h30m.",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            metavar="ISO8601",
            help="Revert to enabled at this time; needs an offset or Z (2026-12-01T08:00:00Z).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Allow a rule_id the master does not know (yet); needs the admin role.",
        ),
    ] = False,
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Set RULE's operator state: --disable, or --clip MAX; until cleared, or for a while.

    Prints the new state and the revision it was published with (or that nothing changed).
    """
    if disable == (clip is not None):
        raise typer.BadParameter("give exactly one of --disable and --clip MAX")
    if clip is not None and not 0 < clip <= 1:
        raise typer.BadParameter(f"{clip:g} is not in (0, 1]", param_hint="--clip")
    now = datetime.now(UTC)
    expires_at = _expiry(for_, until, now)
    name = "state set"
    try:
        request = build_request(
            StateSetRequest,
            rule_id=rule,
            state="disabled" if disable else "clipped",
            confidence_max=clip,
            expires_at=expires_at,
            reason=reason,
            force=force,
        )
    except ControlClientError as exc:
        fail_with(name, exc)
    changed = run_control(name, nats_url, lambda client: client.state_set(request))
    _print_changed(changed, as_json)


@command(state_app, "clear")
def clear_state(
    rule: RuleArgument,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why (recorded in the audit).", show_default=False),
    ] = None,
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Put RULE back to enabled (the default), cancelling any expiry."""
    name = "state clear"
    try:
        request = build_request(
            StateClearRequest,
            rule_id=rule,
            reason=reason,
        )
    except ControlClientError as exc:
        fail_with(name, exc)
    changed = run_control(name, nats_url, lambda client: client.state_clear(request))
    _print_changed(changed, as_json)


@command(state_app, "show")
def show_state(
    rule: Annotated[
        str | None,
        typer.Argument(
            metavar="RULE",
            help="One rule_id; without it, every rule with a non-default state.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Show RULE's state, or every rule that is not plainly enabled.

    A state past its expiry shows as enabled: workers already ignore it and the master
    reverts it within a second.
    """
    if rule is not None:
        check_rule_id(rule)
    request = StateGetRequest(rule_id=rule)
    states: StateList = run_control("state show", nats_url, lambda c: c.state_get(request))
    if as_json:
        typer.echo(json_document(states))
        raise typer.Exit(0)
    out = console()
    if not states.states:
        out.print("No rule has an operator state: every rule is enabled.")
    else:
        out.print(states_table(states.states, datetime.now(UTC)))
    raise typer.Exit(0)


def _print_changed(changed: StateChanged, as_json: bool) -> None:
    if as_json:
        typer.echo(json_document(changed))
    else:
        console().print(state_changed_text(changed, datetime.now(UTC)))
    raise typer.Exit(0)
