"""ttpctl imports a command's module only when that command is used, and that changes nothing
a user sees: the help listings (built from each lazy command's summary) are the ones the
loaded commands give, unknown commands still get suggestions, and a local command such as
`rules validate` runs without importing the NATS client or the control modules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ttpctl.app import app
from ttpctl.lazy_group import LazyCommand

REPO = Path(__file__).resolve().parents[2]
# Wide enough that no summary is cut; the comparison is of whole listings.
WIDE = {"COLUMNS": "200", "TERM": "dumb"}


@pytest.mark.parametrize("argv", [["--help"], [], ["rules", "--help"], ["rules"]])
def test_help_listings_are_those_of_the_loaded_commands(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    lazy = runner.invoke(app, argv, env=WIDE)
    monkeypatch.setattr(LazyCommand, "listing", LazyCommand.load)
    loaded = runner.invoke(app, argv, env=WIDE)
    assert (lazy.exit_code, lazy.output) == (loaded.exit_code, loaded.output)
    assert "Commands" in lazy.output


def test_the_listing_names_every_command_in_order() -> None:
    top = CliRunner().invoke(app, ["--help"], env=WIDE).output
    names = ["audit", "dev", "rules", "schema", "events", "tags", "state", "fleet"]
    positions = [top.index(f"│ {name} ") for name in names]
    assert positions == sorted(positions)
    rules = CliRunner().invoke(app, ["rules", "--help"], env=WIDE).output
    names = ["validate", "test", "list", "show", "status"]
    positions = [rules.index(f"│ {name} ") for name in names]
    assert positions == sorted(positions)


@pytest.mark.parametrize(("argv", "suggested"), [(["rulez"], "rules"), (["rules", "lst"], "list")])
def test_an_unknown_command_is_a_usage_error_with_a_suggestion(
    argv: list[str], suggested: str
) -> None:
    result = CliRunner().invoke(app, argv, env=WIDE)
    assert result.exit_code == 2
    assert f"'{suggested}'" in result.output


_MARK = "--- exit code and modules ---"


def _modules_after(argv: list[str]) -> tuple[int, set[str]]:
    """Run ttpctl with ``argv`` in a fresh interpreter; its exit code and imported modules."""
    script = (
        "import sys\n"
        f"MARK = {_MARK!r}\n"
        f"sys.argv = ['ttpctl', *{argv!r}]\n"
        "from ttpctl.app import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(MARK, code)\n"
        "print(*sorted(sys.modules), sep='\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    _, _, report = done.stdout.partition(_MARK)
    code, *modules = report.split()
    return int(code), set(modules)


NATS_SIDE = {"nats", "aiohttp", "ttp_runtime.control_client", "ttpctl.nats_session"}


def test_rules_validate_imports_nothing_of_the_nats_side() -> None:
    code, modules = _modules_after(["rules", "validate", "rules/"])
    assert code == 0
    assert "ttpctl.rules_commands" in modules
    assert not modules & NATS_SIDE


def test_help_imports_no_command_module() -> None:
    code, modules = _modules_after(["--help"])
    assert code == 0
    commands = {
        m for m in modules if m.startswith("ttpctl.") and m.endswith(("_commands", "_command"))
    }
    assert not commands
    assert not modules & NATS_SIDE
