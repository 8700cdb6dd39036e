"""`ttpctl rules list`, `rules status` and `rules show`: the rules the master serves, with
their status and effective operator state. :data:`rule_status_app` holds them;
:mod:`ttpctl.rules_group` lists them in the `rules` group after the local `rules validate` /
`rules test`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from ttp_core.contract.control import RuleShowRequest, RulesListRequest, RuleStatus
from ttpctl.control_cli import JsonOption, check_rule_id, command, console, run_control
from ttpctl.control_output import json_document, rejection_lines, rule_detail_lines, rules_table
from ttpctl.nats_session import NatsUrlOption

__all__ = ["list_rules", "rule_status_app", "rules_status", "show_rule"]

rule_status_app = typer.Typer()


@command(rule_status_app, "list")
def list_rules(
    status: Annotated[
        RuleStatus | None,
        typer.Option(
            "--status", help="Only rules of this status (rejected: files that failed validation)."
        ),
    ] = None,
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """List the rules the master knows: status, version, effective state, source file.

    The errors of rejected files follow the table as FILE:LINE:COL: message (the last good
    version of such a rule, if any, keeps serving). Listing is a success (exit 0) whatever
    it finds.
    """
    request = RulesListRequest(status=status)
    listing = run_control("rules list", nats_url, lambda client: client.rules_list(request))
    if as_json:
        typer.echo(json_document(listing))
        raise typer.Exit(0)
    out = console()
    if listing.rules:
        out.print(rules_table(listing.rules, datetime.now(UTC)))
    for rule in listing.rules:
        for line in rejection_lines(rule):
            out.print(line)
    count = len(listing.rules)
    what = ("rule" if count == 1 else "rules") if status is None else f"{status} rule"
    if status is not None and count != 1:
        what += "s"
    out.print(f"{count} {what} at revision {listing.revision}.")
    raise typer.Exit(0)


@command(rule_status_app, "show")
def show_rule(
    rule: Annotated[
        str, typer.Argument(metavar="RULE", help="The rule_id.", callback=check_rule_id)
    ],
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Show one rule as the master holds it: status, version, revision, hash, source path,
    effective state, validation errors and the definition."""
    request = RuleShowRequest(rule_id=rule)
    detail = run_control("rules show", nats_url, lambda client: client.rules_show(request))
    if as_json:
        typer.echo(json_document(detail))
        raise typer.Exit(0)
    out = console()
    for line in rule_detail_lines(detail, datetime.now(UTC)):
        out.print(line)
    raise typer.Exit(0)


@command(rule_status_app, "status")
def rules_status(as_json: JsonOption = False, nats_url: NatsUrlOption = None) -> None:
    """What needs attention: counts by status, then every rule that is not plainly active
    (rejected files with their errors, external and deleted rules, non-default states).

    Exit 0 when no file is rejected and no delete is held, 1 otherwise (scripts can gate
    on it).
    """
    request = RulesListRequest()
    listing = run_control("rules status", nats_url, lambda client: client.rules_list(request))
    counts: dict[str, int] = {}
    for rule in listing.rules:
        counts[rule.status] = counts.get(rule.status, 0) + 1
    attention = [r for r in listing.rules if r.status != "active" or r.state.state != "enabled"]
    rejected = counts.get("rejected", 0)
    failed = bool(rejected or listing.held_deletes)
    if as_json:
        typer.echo(json_document(listing.model_copy(update={"rules": attention})))
        raise typer.Exit(1 if failed else 0)
    out = console()
    totals = ", ".join(
        f"{counts.get(s, 0)} {s}" for s in ("active", "external", "rejected", "deleted")
    )
    out.print(f"revision {listing.revision}: {totals}")
    if attention:
        out.print(rules_table(attention, datetime.now(UTC)))
    for rule in attention:
        for line in rejection_lines(rule):
            out.print(line)
    out.print(
        f"{rejected} rejected file(s): the last good version of each keeps serving."
        if rejected
        else "No rejected rule files."
    )
    if listing.held_deletes:
        out.print(f"Deletes held: {listing.held_deletes}.")
    raise typer.Exit(1 if failed else 0)
