"""`ttpctl rules validate` and `ttpctl rules test`: the rule author's checks.

:data:`rules_app` holds them; `rules list`, `rules show` and `rules status` (what the master
serves) live in :mod:`ttpctl.rule_status_commands`; :mod:`ttpctl.rules_group` puts them all
in the `rules` group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ttp_core.contract.field_catalogue import CatalogueError
from ttp_core.rules.diagnostics import Diagnostic
from ttp_core.rules.validator import RuleReport, RuleValidator
from ttp_runtime.field_catalogue import load_field_catalogue

rules_app = typer.Typer()

PathArgument = Annotated[
    Path,
    typer.Argument(
        exists=True, readable=True, resolve_path=False, help="A rule file or a directory of rules."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document for machines.")]
FieldsOption = Annotated[
    Path | None,
    typer.Option(
        "--fields",
        envvar="TTP_FIELD_CATALOGUE",
        help="YAML or JSON file adding source kinds and payload fields to the field "
        "catalogue (default: $TTP_FIELD_CATALOGUE, else the built-in catalogue only).",
    ),
]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _diagnostic_line(diagnostic: Diagnostic) -> str:
    colour = "red" if diagnostic.is_error else "yellow"
    where = f"{diagnostic.source}:{diagnostic.line}:{diagnostic.column}"
    return (
        f"{escape(where)}: [{colour}]{diagnostic.severity.value}[/]: {escape(diagnostic.message)}"
    )


def _report_json(report: RuleReport) -> dict[str, object]:
    return {
        "source": report.source,
        "rule_id": report.rule_id,
        "valid": report.ok,
        "content_sha256": report.content_sha256,
        "diagnostics": [d.as_dict() for d in report.diagnostics],
        "tests": [
            {
                "number": t.number,
                "expect": t.expect,
                "fired": t.fired,
                "passed": t.passed,
                "source_kind": t.source_kind,
            }
            for t in report.tests
        ],
    }


def _load(path: Path, strict: bool, fields: Path | None) -> list[RuleReport]:
    try:
        catalogue = load_field_catalogue(fields)
    except CatalogueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fields") from None
    return RuleValidator(strict=strict, fields=catalogue).validate_tree(path)


@rules_app.command("validate")
def validate(
    path: PathArgument,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    as_json: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List valid files too.")] = False,
    fields: FieldsOption = None,
) -> None:
    """Validate rule files; exit 0 if all are valid, 1 if any is not (or none was found)."""
    reports = _load(path, strict, fields)
    invalid = [r for r in reports if not r.ok]
    warnings = sum(len(r.warnings) for r in reports)
    if as_json:
        summary = {
            "files": len(reports),
            "valid": len(reports) - len(invalid),
            "invalid": len(invalid),
            "warnings": warnings,
        }
        typer.echo(
            json.dumps({"summary": summary, "files": [_report_json(r) for r in reports]}, indent=2)
        )
    else:
        console = _console()
        for report in reports:
            if verbose and report.ok:
                console.print(f"[green]ok[/]  {escape(report.source)}  {report.rule_id}")
            for diagnostic in report.diagnostics:
                console.print(_diagnostic_line(diagnostic))
        if not reports:
            console.print(
                f"[red]no rule files found under {escape(str(path))}[/] "
                "(names must match [A-Za-z0-9_-]+.yaml)"
            )
        else:
            colour = "red" if invalid else "green"
            console.print(
                f"[{colour}]{len(reports)} file(s): {len(reports) - len(invalid)} valid, "
                f"{len(invalid)} invalid[/], {warnings} warning(s)"
            )
    raise typer.Exit(1 if invalid or not reports else 0)


@rules_app.command("test")
def test(path: PathArgument, as_json: JsonOption = False, fields: FieldsOption = None) -> None:
    """Run every rule's inline tests; exit 1 on any failure or invalid rule."""
    reports = _load(path, strict=False, fields=fields)
    failed_rules = [r for r in reports if not r.ok or any(not t.passed for t in r.tests)]
    total = sum(len(r.tests) for r in reports)
    passed = sum(t.passed for r in reports for t in r.tests)
    if as_json:
        summary = {
            "rules": len(reports),
            "failed_rules": len(failed_rules),
            "tests": total,
            "passed": passed,
        }
        typer.echo(
            json.dumps({"summary": summary, "files": [_report_json(r) for r in reports]}, indent=2)
        )
        raise typer.Exit(1 if failed_rules or not reports else 0)
    console = _console()
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("rule")
    table.add_column("name")
    table.add_column("tests", justify="right")
    table.add_column("result")
    for report in reports:
        ok_tests = sum(t.passed for t in report.tests)
        name = report.rule.name if report.rule is not None else ""
        if not report.ok:
            result = "[red]INVALID[/]"
        elif not report.tests:
            result = "[yellow]no tests[/]"
        else:
            result = "[green]pass[/]"
        table.add_row(
            escape(report.rule_id or report.source),
            escape(name),
            f"{ok_tests}/{len(report.tests)}",
            result,
        )
    console.print(table)
    for report in failed_rules:
        for diagnostic in report.errors:
            console.print(_diagnostic_line(diagnostic))
    if not reports:
        console.print(f"[red]no rule files found under {escape(str(path))}[/]")
    colour = "red" if failed_rules else "green"
    console.print(
        f"[{colour}]{passed}/{total} inline test(s) passed; "
        f"{len(reports) - len(failed_rules)}/{len(reports)} rule(s) clean[/]"
    )
    raise typer.Exit(1 if failed_rules or not reports else 0)
