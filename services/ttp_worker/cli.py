"""`ttp-worker`: run one worker (configuration from the `TTP_` environment only).

The worker takes no arguments, so a plain start skips the command-line framework: typer
(and rich under it) would cost a cold start about a tenth of a second of imports. Any
argument (`--help`, or a mistake) goes through the typer app, which answers as before.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

    from ttp_worker.settings import WorkerSettings

HELP = (
    "Run a ttp-rulebus worker: rebuild the rule index from TTP_RULES and tag TTP_EVENTS "
    "into TTP_TAGS. Configured by TTP_* environment variables (TTP_NATS_URL, "
    "TTP_WORKER_ID, TTP_HTTP_PORT, TTP_LOG_FORMAT, ...)."
)


def import_worker() -> tuple[Callable[[WorkerSettings | None], int], type[WorkerSettings]]:
    """The worker's `run` and its settings class, imported with the cyclic collector paused.

    Importing the worker creates some hundred thousand objects that all live as long as the
    process (modules, classes, pydantic schemas), so every collection during the imports is
    wasted work: about a tenth of the imports' CPU time. What the imports made is then
    frozen out of the collector's sight (:func:`gc.freeze`), so later full collections do
    not walk it either, and collection resumes as it was.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        from ttp_worker.bootstrap import run
        from ttp_worker.settings import WorkerSettings
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return run, WorkerSettings


def run_worker() -> None:
    """Run the worker configured by the environment; exits with its exit code."""
    run, settings = import_worker()
    sys.exit(run(settings()))


def make_app() -> typer.Typer:
    """The typer app of `ttp-worker` (for `--help` and argument errors)."""
    import typer

    app = typer.Typer(
        name="ttp-worker", help=HELP, add_completion=False, pretty_exceptions_enable=False
    )
    app.command(help=HELP)(run_worker)
    return app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        run_worker()
    make_app()(args=args, prog_name="ttp-worker")


if __name__ == "__main__":
    main()
