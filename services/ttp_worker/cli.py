"""`ttp-worker`: run one worker (configuration from the `TTP_` environment only)."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="ttp-worker",
    help=(
        "Run a ttp-rulebus worker: rebuild the rule index from TTP_RULES and tag TTP_EVENTS "
        "into TTP_TAGS. Configured by TTP_* environment variables (TTP_NATS_URL, "
        "TTP_WORKER_ID, TTP_HTTP_PORT, TTP_LOG_FORMAT, ...)."
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def _run() -> None:
    from ttp_worker.bootstrap import run
    from ttp_worker.settings import WorkerSettings

    sys.exit(run(WorkerSettings()))


def main() -> None:
    app()
