"""Every metric a service exports is documented in docs/operations.md, and nothing more."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from prometheus_client import Counter, Gauge, Histogram

from ttp_console import metrics as console_metrics
from ttp_master import metrics as master_metrics
from ttp_worker import metrics as worker_metrics

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def exported(module: ModuleType) -> set[str]:
    names = set()
    for value in vars(module).values():
        if isinstance(value, Counter | Gauge | Histogram):
            name = value.describe()[0].name
            names.add(f"{name}_total" if isinstance(value, Counter) else name)
    return names


def test_every_exported_metric_has_a_row_and_every_row_is_exported() -> None:
    code = exported(master_metrics) | exported(worker_metrics) | exported(console_metrics)
    assert len(code) > 20  # the scan found the metrics at all
    assert any(name.startswith("ttp_console_") for name in code)
    rows = set(
        re.findall(
            r"^\| `(ttp_(?:master|worker|console)_[a-z_]+)` \|", OPERATIONS.read_text(), re.M
        )
    )
    assert code - rows == set(), "exported but not documented"
    assert rows - code == set(), "documented but not exported"
