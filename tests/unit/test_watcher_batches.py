"""When a batch of file events is due, and what it says (ttp_master.watcher.BatchCollector).

Pure logic on an explicit clock; the real-inotify behaviour is in
tests/integration/test_directory_watcher.py.
"""

from __future__ import annotations

from pathlib import Path

from ttp_master.watcher import BatchCollector, WatchBatch

R1 = Path("/rules/R1.yaml")
R2 = Path("/rules/R2.yaml")


def collector() -> BatchCollector:
    return BatchCollector(debounce=0.03, max_wait=0.25)


def test_nothing_pending_is_never_due() -> None:
    pending = collector()
    assert pending.due_at() is None
    pending.touch(1.0)  # an event on an ignored name (swap file, `4913`) opens no batch
    assert pending.due_at() is None


def test_quiet_period_closes_a_batch() -> None:
    pending = collector()
    pending.add(R1, 10.0)
    assert pending.due_at() == 10.0 + 0.03


def test_any_activity_extends_the_quiet_period() -> None:
    pending = collector()
    pending.add(R1, 10.0)
    pending.touch(10.02)  # e.g. the editor still writing its temporary file
    assert pending.due_at() == 10.02 + 0.03


def test_steady_stream_is_capped() -> None:
    pending = collector()
    pending.add(R1, 10.0)
    for step in range(1, 100):
        pending.add(R2, 10.0 + step * 0.01)
    assert pending.due_at() == 10.0 + 0.25


def test_take_hands_out_changes_and_starts_over() -> None:
    pending = collector()
    pending.add(R1, 1.0)
    pending.add(R1, 1.01)
    pending.add(R2, 1.02)
    assert pending.take() == WatchBatch(frozenset({R1, R2}), full_rescan=False, reason="changes")
    assert pending.due_at() is None
    assert pending.take() == WatchBatch(frozenset(), full_rescan=False, reason="changes")


def test_rescan_opens_a_batch_and_keeps_paths() -> None:
    pending = collector()
    pending.rescan("periodic", 5.0)
    assert pending.due_at() == 5.0 + 0.03
    pending.add(R1, 5.01)
    assert pending.take() == WatchBatch(frozenset({R1}), full_rescan=True, reason="periodic")


def test_strongest_rescan_reason_is_reported() -> None:
    pending = collector()
    for reason in ("periodic", "configmap-swap", "overflow"):
        pending.rescan(reason, 1.0)
    assert pending.take().reason == "overflow"
    pending.rescan("overflow", 2.0)
    pending.rescan("root-replaced", 2.0)
    assert pending.take().reason == "root-replaced"


def test_unknown_reason_is_still_a_full_rescan() -> None:
    pending = collector()
    pending.rescan("operator-request", 1.0)
    assert pending.take() == WatchBatch(frozenset(), full_rescan=True, reason="operator-request")


def test_whole_change_is_due_at_once() -> None:
    # A rename into place: the file is complete, so there is no quiet period to wait for.
    pending = collector()
    pending.touch(9.99)  # the editor writing its temporary file just before
    pending.add(R1, 10.0, whole=True)
    assert pending.due_at() == 10.0


def test_a_written_file_makes_the_batch_wait_for_quiet() -> None:
    pending = collector()
    pending.add(R1, 10.0, whole=True)
    pending.add(R2, 10.001)  # closed after a write: more may follow (git checkout, cp -r)
    assert pending.due_at() == 10.001 + 0.03


def test_a_path_is_as_settled_as_its_latest_event() -> None:
    # JetBrains: the rule renamed away (it may be coming back), then the new file renamed in.
    pending = collector()
    pending.add(R1, 10.0)
    assert pending.due_at() == 10.0 + 0.03
    pending.add(R1, 10.001, whole=True)
    assert pending.due_at() == 10.0
    # And a write after the rename (a chmod, an append) waits again.
    pending.add(R1, 10.002)
    assert pending.due_at() == 10.002 + 0.03


def test_whole_rescan_is_due_at_once_but_not_after_an_overflow() -> None:
    pending = collector()
    pending.rescan("configmap-swap", 5.0, whole=True)
    assert pending.due_at() == 5.0
    pending.rescan("overflow", 5.001)  # the events lost may be a write burst
    assert pending.due_at() == 5.001 + 0.03
    assert pending.take() == WatchBatch(frozenset(), full_rescan=True, reason="overflow")
    pending.add(R1, 6.0)
    assert pending.due_at() == 6.0 + 0.03  # taking a batch forgets what was unsettled
