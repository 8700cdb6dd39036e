"""The `ttpctl` command tree."""

from __future__ import annotations

import typer

import ttpctl.rule_status_commands  # noqa: F401  (registers `rules list` and `rules show`)
from ttpctl.audit_commands import audit
from ttpctl.control_cli import control_help
from ttpctl.dev_command import dev_command
from ttpctl.env_file_option import EnvFileOption, load_env_file_option
from ttpctl.events_commands import events_app
from ttpctl.fleet_commands import fleet_app
from ttpctl.rules_commands import rules_app
from ttpctl.schema_commands import schema_app
from ttpctl.state_commands import state_app
from ttpctl.tags_commands import tags_app

app = typer.Typer(
    name="ttpctl",
    help="Operate ttp-rulebus: validate and test rules, publish events, follow tags; and,"
    " through the master, disable or clip rules, list them, watch the fleet converge and read"
    " the audit trail.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def global_options(env_file: EnvFileOption = None) -> None:
    # Runs before any command, so every setting a command reads already holds the file's.
    load_env_file_option(env_file)


app.add_typer(rules_app, name="rules")
app.add_typer(schema_app, name="schema")
app.add_typer(events_app, name="events")
app.add_typer(tags_app, name="tags")
app.add_typer(state_app, name="state")
app.add_typer(fleet_app, name="fleet")
app.command("audit", help=control_help(audit))(audit)
app.command("dev")(dev_command)


def main() -> None:
    """Console-script entry point; exit codes: 0 ok, 1 findings, 2 usage."""
    app()
