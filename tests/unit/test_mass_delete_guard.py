"""The master's guard against publishing a vanished rules directory as mass deletes."""

from __future__ import annotations

from pathlib import Path

from ttp_master.db.repository import Catalog, KnownRule
from ttp_master.mass_delete_guard import MassDeleteGuard, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tree(root: Path, count: int) -> Catalog:
    """`count` rule files under `root`, and the catalog that holds them as live rules."""
    root.mkdir(exist_ok=True)
    catalog = Catalog()
    for number in range(count):
        rel = f"R{number:04d}.yaml"
        (root / rel).write_text("rule")
        catalog.rules[f"R{number:04d}"] = KnownRule(f"R{number:04d}", "sha", rel, False, number)
    return catalog


def remove(root: Path, count: int) -> None:
    for path in sorted(root.glob("*.yaml"))[:count]:
        path.unlink()


def test_a_few_deletes_or_fewer_than_half_are_never_held(tmp_path: Path) -> None:
    catalog = tree(tmp_path / "rules", 20)
    guard = MassDeleteGuard(tmp_path / "rules", confirm_s=60, clock=Clock())
    remove(tmp_path / "rules", 10)
    assert guard.assess(catalog) is Verdict.SYNC
    small = tree(tmp_path / "small", 8)
    small_guard = MassDeleteGuard(tmp_path / "small", confirm_s=60)
    remove(tmp_path / "small", 5)
    assert small_guard.assess(small) is Verdict.SYNC
    assert guard.holding is None and small_guard.holding is None


def test_most_files_missing_are_held_until_they_return_then_a_rescan(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    catalog = tree(root, 20)
    clock = Clock()
    guard = MassDeleteGuard(root, confirm_s=60, clock=clock)
    remove(root, 11)
    assert guard.assess(catalog) is Verdict.HOLD
    assert guard.holding is not None and guard.holding.missing == 11
    status = guard.status()
    assert status is not None and "11 of 20" in status
    clock.now += 59
    assert guard.assess(catalog) is Verdict.HOLD
    tree(root, 20)  # the files are back
    assert guard.assess(catalog) is Verdict.RESCAN
    assert guard.holding is None
    assert guard.assess(catalog) is Verdict.SYNC


def test_a_mass_delete_that_lasts_the_confirmation_period_goes_through(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    catalog = tree(root, 20)
    clock = Clock()
    guard = MassDeleteGuard(root, confirm_s=60, clock=clock)
    remove(root, 20)
    assert guard.assess(catalog) is Verdict.HOLD
    clock.now += 60
    assert guard.assess(catalog) is Verdict.RESCAN
    assert guard.holding is None


def test_a_missing_root_is_held_however_long_it_lasts(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    catalog = tree(root, 20)
    clock = Clock()
    guard = MassDeleteGuard(root, confirm_s=0, clock=clock)
    for path in root.iterdir():
        path.unlink()
    root.rmdir()
    assert guard.assess(catalog) is Verdict.HOLD
    clock.now += 10_000
    assert guard.assess(catalog) is Verdict.HOLD
    status = guard.status()
    assert status is not None and "rules directory missing" in status
    # Back but empty: a new condition with a clock of its own (here: confirmed at once).
    root.mkdir()
    assert guard.assess(catalog) is Verdict.RESCAN


def test_rules_moved_to_new_files_are_not_held(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    catalog = tree(root, 20)
    guard = MassDeleteGuard(root, confirm_s=60)
    (root / "moved").mkdir()
    for path in sorted(root.glob("*.yaml")):
        path.rename(root / "moved" / path.name)
    assert guard.assess(catalog) is Verdict.SYNC
