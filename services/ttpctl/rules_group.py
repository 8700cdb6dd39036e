"""The `rules` group: the rule author's local checks and what the master serves, each
command imported only when it is used (see :mod:`ttpctl.lazy_group`)."""

from __future__ import annotations

import typer

from ttpctl.lazy_group import LazyCommand, lazy_group

__all__ = ["rules_app"]

_LOCAL = "ttpctl.rules_commands:rules_app"
_SERVED = "ttpctl.rule_status_commands:rule_status_app"

rules_app = typer.Typer(
    help="Validate and test rule files; list and show the rules the master serves.",
    no_args_is_help=True,
    cls=lazy_group(
        {
            "validate": LazyCommand(
                _LOCAL,
                "Validate rule files; exit 0 if all are valid, 1 if any is not (or none was"
                " found).",
                "validate",
            ),
            "test": LazyCommand(
                _LOCAL,
                "Run every rule's inline tests; exit 1 on any failure or invalid rule.",
                "test",
            ),
            "list": LazyCommand(
                _SERVED,
                "List the rules the master knows: status, version, effective state, source file.",
                "list",
            ),
            "show": LazyCommand(
                _SERVED,
                "Show one rule as the master holds it: status, version, revision, hash, source"
                " path, effective state, validation errors and the definition.",
                "show",
            ),
            "status": LazyCommand(
                _SERVED,
                "What needs attention: counts by status, then every rule that is not plainly"
                " active (rejected files with their errors, external and deleted rules,"
                " non-default states).",
                "status",
            ),
        }
    ),
)
