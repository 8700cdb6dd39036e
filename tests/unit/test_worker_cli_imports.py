"""`ttp-worker` imports the worker with the cyclic collector paused, then freezes what the
imports made and resumes collection as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from harness.gc_state import collector_restored
from ttp_worker import bootstrap
from ttp_worker.cli import import_worker
from ttp_worker.settings import WorkerSettings


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    with collector_restored():
        yield


def test_the_worker_imports_then_collection_resumes_with_the_imports_frozen() -> None:
    gc.enable()
    gc.unfreeze()
    run, settings = import_worker()
    assert run is bootstrap.run
    assert settings is WorkerSettings
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    import_worker()
    assert not gc.isenabled()
