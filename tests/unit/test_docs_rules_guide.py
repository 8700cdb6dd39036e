"""docs/rules.md cannot drift from the validator: its example rules and outputs are run.

Markers in the guide (HTML comments, invisible when rendered):

- ``<!-- rule-example: valid|warnings|invalid [path=rules/x/ID.yaml] -->`` before a
  ```` ```yaml ```` block: a rule file (default path ``rules/<rule_id>.yaml``). ``valid``:
  no finding at all under ``--strict`` and every inline test passes; ``warnings``: valid,
  with warnings only; ``invalid``: at least one error.
- ``<!-- rule-example-output [: replace 'OLD' 'NEW' ...] -->`` before a ```` ```text ````
  block: a shell transcript run against the latest example (edited by the replacements).
  Each ``$ ttpctl ...`` line is run through the real CLI in a scratch directory holding that
  one file; the lines up to the next ``$`` must equal its output (trailing spaces aside), and
  ``$ echo $?`` must be followed by its exit code.
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ttp_core.rules.validator import RuleValidator
from ttpctl.app import app

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "rules.md"

_EXAMPLE = re.compile(
    r"^(?P<indent>[ \t]*)<!-- rule-example: (?P<kind>valid|warnings|invalid)"
    r"(?: path=(?P<path>\S+))? -->\n"
    r"(?P=indent)```yaml\n(?P<body>.*?)\n(?P=indent)```",
    re.S | re.M,
)
_OUTPUT = re.compile(
    r"^(?P<indent>[ \t]*)<!-- rule-example-output(?:: (?P<edits>.*?))? -->\n"
    r"(?P=indent)```text\n(?P<body>.*?)\n(?P=indent)```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Example:
    kind: str
    path: str
    text: str
    offset: int

    @property
    def rule_id(self) -> str:
        return str(yaml.safe_load(self.text)["rule_id"])


@dataclass(frozen=True)
class Transcript:
    example: Example
    text: str
    edits: tuple[tuple[str, str], ...]
    offset: int

    def rule_text(self) -> str:
        text = self.example.text
        for old, new in self.edits:
            assert old in text, f"{old!r} is not in the example this transcript follows"
            text = text.replace(old, new)
        return text


def _examples() -> list[Example]:
    source = GUIDE.read_text(encoding="utf-8")
    found = []
    for m in _EXAMPLE.finditer(source):
        text = textwrap.dedent(m["body"]) + "\n"
        rule_id = yaml.safe_load(text)["rule_id"]
        found.append(Example(m["kind"], m["path"] or f"rules/{rule_id}.yaml", text, m.start()))
    return found


def _transcripts() -> list[Transcript]:
    source = GUIDE.read_text(encoding="utf-8")
    examples = _examples()
    found = []
    for m in _OUTPUT.finditer(source):
        before = [e for e in examples if e.offset < m.start()]
        assert before, "an output block comes before any rule example"
        words = shlex.split(m["edits"] or "")
        if words:
            assert words[0] == "replace" and len(words) % 2 == 1, m["edits"]
        edits = tuple(zip(words[1::2], words[2::2], strict=True))
        found.append(Transcript(before[-1], textwrap.dedent(m["body"]), edits, m.start()))
    return found


EXAMPLES = _examples()
TRANSCRIPTS = _transcripts()


def test_the_guide_has_examples_of_every_kind_and_transcripts() -> None:
    assert {e.kind for e in EXAMPLES} == {"valid", "warnings", "invalid"}
    assert len(TRANSCRIPTS) >= 4


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e.kind}-{e.path}")
def test_example_rule_validates_as_the_guide_says(example: Example, tmp_path: Path) -> None:
    path = tmp_path / example.path
    path.parent.mkdir(parents=True)
    path.write_text(example.text, encoding="utf-8")
    strict = RuleValidator(strict=True).validate_tree(tmp_path / "rules")
    lenient = RuleValidator().validate_tree(tmp_path / "rules")
    assert len(strict) == len(lenient) == 1
    if example.kind == "valid":
        assert strict[0].ok and not strict[0].diagnostics, strict[0].diagnostics
        assert strict[0].tests and all(t.passed for t in strict[0].tests)
    elif example.kind == "warnings":
        assert lenient[0].ok and lenient[0].warnings and not lenient[0].errors
        assert not strict[0].ok
    else:
        assert not lenient[0].ok and lenient[0].errors


def _run(command: str, cwd: Path) -> tuple[str, int]:
    argv = shlex.split(command)
    assert argv[0] == "ttpctl", f"only ttpctl commands can be checked: {command}"
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, argv[1:])
    finally:
        os.chdir(previous)
    return result.output, result.exit_code


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda t: f"after-{t.example.path}")
def test_transcript_matches_the_real_cli(transcript: Transcript, tmp_path: Path) -> None:
    path = tmp_path / transcript.example.path
    path.parent.mkdir(parents=True)
    path.write_text(transcript.rule_text(), encoding="utf-8")
    exit_code: int | None = None
    lines = transcript.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"expected a command, found {line!r}"
        command = line[2:]
        expected = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i].rstrip())
            i += 1
        if command == "echo $?":
            assert expected == [str(exit_code)]
            continue
        output, exit_code = _run(command, tmp_path)
        actual = [out.rstrip() for out in output.splitlines()]
        assert actual == expected, f"{command}\n" + "\n".join(actual)
