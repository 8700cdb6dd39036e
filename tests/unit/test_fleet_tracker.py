"""The master's view of the fleet: lag, digest, gone workers, convergence."""

from __future__ import annotations

from ttp_core.contract.payloads import WorkerStatus
from ttp_master.fleet_tracker import FleetTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(worker_id: str, revision: int, *, digest: str = "d", ready: bool = True) -> WorkerStatus:
    return WorkerStatus(
        worker_id=worker_id,
        revision=revision,
        rules=10,
        active=9,
        external=1,
        ready=ready,
        events_processed=5,
        index_digest=digest,
        status_interval_s=2.0,
    )


def test_a_fleet_at_the_masters_revision_and_digest_has_converged() -> None:
    tracker = FleetTracker(clock=Clock())
    tracker.observe(status("w1", 7))
    tracker.observe(status("w2", 7))
    view = tracker.view(7, "d")
    assert view.converged
    assert [w.lag for w in view.workers] == [0, 0]


def test_a_worker_behind_or_on_another_digest_or_not_ready_blocks_convergence() -> None:
    for other in (status("w2", 5), status("w2", 7, digest="x"), status("w2", 7, ready=False)):
        tracker = FleetTracker(clock=Clock())
        tracker.observe(status("w1", 7))
        tracker.observe(other)
        view = tracker.view(7, "d")
        assert not view.converged, other
    tracker = FleetTracker(clock=Clock())
    tracker.observe(status("w2", 5))
    assert tracker.view(7, "d").workers[0].lag == 2


def test_a_silent_worker_is_gone_after_three_intervals_and_stops_counting() -> None:
    clock = Clock()
    tracker = FleetTracker(clock=clock)
    tracker.observe(status("old", 3))
    clock.now += 5.9  # under 3 x 2 s
    tracker.observe(status("w1", 7))
    view = tracker.view(7, "d")
    assert [w.gone for w in view.workers] == [False, False]
    assert not view.converged
    clock.now += 0.2
    view = tracker.view(7, "d")
    assert {w.worker_id: w.gone for w in view.workers} == {"old": True, "w1": False}
    assert view.converged


def test_no_live_worker_is_not_convergence() -> None:
    assert not FleetTracker(clock=Clock()).view(1, "d").converged


def test_a_long_gone_worker_is_forgotten() -> None:
    clock = Clock()
    tracker = FleetTracker(clock=clock)
    tracker.observe(status("w1", 1))
    clock.now += 4000
    assert tracker.view(1, "d").workers == []


def test_each_worker_shows_its_own_digest_beside_whether_it_matches() -> None:
    tracker = FleetTracker(clock=Clock())
    tracker.observe(status("w1", 7))
    tracker.observe(status("w2", 7, digest="x"))
    views = {w.worker_id: w for w in tracker.view(7, "d").workers}
    assert (views["w1"].digest, views["w1"].digest_matches) == ("d", True)
    assert (views["w2"].digest, views["w2"].digest_matches) == ("x", False)
