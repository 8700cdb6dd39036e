"""The rule consumer pauses the cyclic collector while its first snapshot arrives and is
built, then freezes what is alive; a snapshot left unfinished (a resync) only resumes it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from harness.gc_state import collector_restored
from ttp_worker.rule_consumer import _CollectorPause


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    with collector_restored():
        yield


def test_a_built_snapshot_freezes_what_is_alive_and_resumes_collection() -> None:
    gc.enable()
    pause = _CollectorPause()
    assert not gc.isenabled()
    kept = [[n] for n in range(1000)]
    pause.end(freeze=True)
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)


def test_an_unfinished_snapshot_only_resumes_collection() -> None:
    gc.enable()
    frozen = gc.get_freeze_count()
    _CollectorPause().end(freeze=False)
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    _CollectorPause().end(freeze=False)
    assert not gc.isenabled()
