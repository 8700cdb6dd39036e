"""The `ttpctl` command tree.

Each command's module is imported only when that command runs (see
:mod:`ttpctl.lazy_group`): a CLI call pays for what it uses, not for NATS, aiohttp and the
contract models of every other command.
"""

from __future__ import annotations

import typer

from ttpctl.env_file_option import EnvFileOption, load_env_file_option
from ttpctl.lazy_group import LazyCommand, lazy_group

app = typer.Typer(
    name="ttpctl",
    help="Operate ttp-rulebus: validate and test rules, publish events, follow tags; and,"
    " through the master, disable or clip rules, list them, watch the fleet converge and read"
    " the audit trail.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=lazy_group(
        {
            "audit": LazyCommand(
                "ttpctl.audit_commands:audit_app",
                "Show the change log, oldest first: revision, time, rule, kind (reloaded, deleted,"
                " rejected, state), actor and a summary. The actor is the NATS identity that made"
                " the change, e.g. OPERATORS/operator or CONSOLE/console, then the user the"
                " console acted for, e.g. (for alice).",
                "audit",
            ),
            "dev": LazyCommand(
                "ttpctl.dev_command:dev_app",
                "Run NATS, PostgreSQL, the master and workers locally with a live status.",
                "dev",
            ),
            "rules": LazyCommand(
                "ttpctl.rules_group:rules_app",
                "Validate and test rule files; list and show the rules the master serves.",
            ),
            "schema": LazyCommand(
                "ttpctl.schema_commands:schema_app",
                "The JSON Schemas of the public NATS contract.",
            ),
            "events": LazyCommand(
                "ttpctl.events_commands:events_app", "Publish honeypot events to the bus."
            ),
            "tags": LazyCommand(
                "ttpctl.tags_commands:tags_app",
                "Follow the ATT&CK tags workers publish, or count them into a Navigator layer.",
            ),
            "coverage": LazyCommand(
                "ttpctl.coverage_commands:coverage_app",
                "Which ATT&CK techniques the rules in force cover, read from TTP_RULES.",
                "coverage",
            ),
            "state": LazyCommand(
                "ttpctl.state_commands:state_app",
                "Disable or clip a rule, or put it back to enabled, through the master.",
            ),
            "fleet": LazyCommand(
                "ttpctl.fleet_commands:fleet_app", "The workers as the master sees them."
            ),
        }
    ),
)


@app.callback()
def global_options(env_file: EnvFileOption = None) -> None:
    # Runs before any command, so every setting a command reads already holds the file's.
    load_env_file_option(env_file)


def main() -> None:
    """Console-script entry point; exit codes: 0 ok, 1 findings, 2 usage."""
    app()
