"""The dead-letter reasons the worker can give are the ones the docs list, no more, no less."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from ttp_core.contract.events import DeadLetterReason, parse_event

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_contract_doc_has_one_row_per_dead_letter_reason() -> None:
    text = (DOCS / "contract.md").read_text(encoding="utf-8")
    section = text.split("### Dead letters", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert rows == [reason.value for reason in DeadLetterReason]


def test_operations_doc_lists_every_reason_label_of_the_dead_letter_metric() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    [row] = [line for line in text.splitlines() if "`ttp_worker_dead_letters_total`" in line]
    labels = re.search(r"`reason` \(([^)]*)\)", row)
    assert labels is not None
    listed = re.findall(r"`([a-z_]+)`", labels.group(1))
    assert listed == [reason.value for reason in DeadLetterReason]


def test_the_demo_events_are_valid_events() -> None:
    text = resources.files("ttpctl").joinpath("demo_events.jsonl").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    for line in lines:
        event = parse_event(line.encode(), 1024 * 1024)
        assert event == json.loads(line)
