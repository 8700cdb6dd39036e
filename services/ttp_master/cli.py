"""`ttp-master`: run the master, or only migrate the schema (for a Kubernetes Job)."""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(
    name="ttp-master",
    help="The ttp-rulebus master: rules directory -> PostgreSQL -> JetStream.",
    add_completion=False,
    pretty_exceptions_enable=False,
    invoke_without_command=True,
)


@app.callback()
def _default(ctx: typer.Context) -> None:
    """Run the master (the default when no command is given)."""
    if ctx.invoked_subcommand is None:
        from ttp_master.validation_pool import start_early

        # Before the master's own (long) import: the validation processes' one import then
        # runs on another core meanwhile.
        start_early()
        from ttp_master.bootstrap import run
        from ttp_master.settings import MasterSettings

        sys.exit(run(MasterSettings()))


@app.command()
def migrate() -> None:
    """Bring the PostgreSQL schema to the newest revision, then exit."""
    from ttp_master.db.migrate import upgrade_to_head
    from ttp_master.settings import MasterSettings
    from ttp_runtime.logging import configure_logging

    settings = MasterSettings()
    configure_logging(settings.log_format, settings.log_level)
    upgrade_to_head(settings.database_target())
    logging.getLogger(__name__).info("schema is at the newest revision")


def main() -> None:
    app()
