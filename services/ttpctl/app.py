"""The `ttpctl` command tree."""

from __future__ import annotations

import typer

from ttpctl.dev_command import dev_command
from ttpctl.rules_commands import rules_app
from ttpctl.schema_commands import schema_app

app = typer.Typer(
    name="ttpctl",
    help="Operate ttp-rulebus: validate and test rules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(rules_app, name="rules")
app.add_typer(schema_app, name="schema")
app.command("dev")(dev_command)


def main() -> None:
    """Console-script entry point; exit codes: 0 ok, 1 findings, 2 usage."""
    app()
