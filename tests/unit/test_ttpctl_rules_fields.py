"""`ttpctl rules validate/test --fields FILE` (or $TTP_FIELD_CATALOGUE) extends the field
catalogue; a typo'd kind or field is a warning, and an error under --strict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rule_samples import SPEC_RULE
from typer.testing import CliRunner

from ttpctl.app import app

SMB_RULE = (
    SPEC_RULE.replace("applies_to: [command]", "applies_to: [smb_session]")
    .replace("field: command_text", "field: share")
    .replace("evidence_fields: [command_text]", "evidence_fields: [share]")
    .replace("{command_text:", "{share:")
)
EXTENSION = "kinds:\n  smb_session:\n    fields:\n      share: string\n"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "R0010.yaml").write_text(SMB_RULE)
    (tmp_path / "fields.yaml").write_text(EXTENSION)
    return directory


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env or {"TTP_FIELD_CATALOGUE": ""})
    return result.exit_code, result.output


def test_an_uncatalogued_kind_fails_strict_validation(rules: Path) -> None:
    code, output = run("rules", "validate", "--strict", str(rules))
    assert code == 1
    assert "R0010.yaml:5:14: error: source kind 'smb_session' is not in the field catalogue" in (
        output.replace("\n", "")
    )
    code, output = run("rules", "validate", str(rules))
    assert code == 0 and "1 warning(s)" in output


def test_fields_option_and_environment_extend_the_catalogue(rules: Path) -> None:
    fields = str(rules.parent / "fields.yaml")
    code, output = run("rules", "validate", "--strict", "--fields", fields, str(rules))
    assert (code, output.strip()) == (0, "1 file(s): 1 valid, 0 invalid, 0 warning(s)")
    code, output = run(
        "rules", "validate", "--strict", "--json", str(rules), env={"TTP_FIELD_CATALOGUE": fields}
    )
    assert code == 0
    assert json.loads(output)["summary"]["warnings"] == 0
    code, output = run("rules", "test", "--fields", fields, str(rules))
    assert code == 0 and "2/2 inline test(s) passed" in output


def test_a_typo_in_a_rule_is_named_with_its_fix(tmp_path: Path) -> None:
    (tmp_path / "R0010.yaml").write_text(
        SPEC_RULE.replace("applies_to: [command]", "applies_to: [comand]")
    )
    code, output = run("rules", "validate", "--strict", str(tmp_path))
    assert code == 1
    assert "(did you mean 'command'?)" in output


def test_a_bad_catalogue_file_is_a_usage_error_naming_its_line(rules: Path) -> None:
    bad = rules.parent / "bad.yaml"
    bad.write_text("kinds:\n  smb_session:\n    fields:\n      share: text\n")
    code, output = run("rules", "validate", "--fields", str(bad), str(rules))
    assert code == 2
    assert "bad.yaml:4:14" in output.replace("\n", "").replace("│", "").replace(" ", "")
    code, output = run("rules", "validate", "--fields", str(rules / "missing.yaml"), str(rules))
    assert code == 2
