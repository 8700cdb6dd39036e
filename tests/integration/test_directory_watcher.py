"""DirectoryWatcher on a real filesystem with real inotify (see docs/operations.md).

Each test makes a change the way a real tool does, then writes a *marker* rule file: inotify
delivers events in order, so once the marker's batch arrives every event of the change has
been batched, and the test can assert exactly which rule paths appeared, without sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ttp_master.watcher import DirectoryWatcher, WatchBatch

TIMEOUT_S = 30.0
OLD = "rule_id: R1\n# old\n"
NEW = "rule_id: R1\n# new\n"
_markers = itertools.count()


class Batches:
    """Reads one watcher's batches at the test's own pace."""

    def __init__(self, watcher: DirectoryWatcher) -> None:
        self.watcher = watcher
        self._batches = watcher.batches()

    async def until(self, done: Callable[[WatchBatch], bool]) -> list[WatchBatch]:
        """Every batch up to and including the first one `done` accepts."""
        got: list[WatchBatch] = []

        async def read() -> None:
            while True:
                got.append(await anext(self._batches))
                if done(got[-1]):
                    return

        await asyncio.wait_for(read(), TIMEOUT_S)
        return got

    async def settle(self, where: Path | None = None) -> list[WatchBatch]:
        """Every batch up to the marker written now (in `where`, default the root); the
        marker itself is removed from the returned batches."""
        marker = (where or self.watcher.root) / f"zz-marker-{next(_markers)}.yaml"
        marker.write_text("marker\n")
        got = await self.until(lambda batch: marker in batch.paths)
        return [
            WatchBatch(b.paths - {marker}, b.full_rescan, b.reason)
            for b in got
            if b.paths - {marker} or b.full_rescan
        ]

    async def changed(self, where: Path | None = None) -> set[Path]:
        """The rule paths that appeared up to a marker written now."""
        return {path for batch in await self.settle(where) for path in batch.paths}


@asynccontextmanager
async def watching(root: Path, **options: float) -> AsyncIterator[Batches]:
    async with DirectoryWatcher(root, **options) as watcher:
        yield Batches(watcher)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "R1.yaml").write_text(OLD)
    return rules


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    place = tmp_path / "outside"
    place.mkdir()
    return place


# -- editors and tools -------------------------------------------------------------------


def vim_save(path: Path) -> None:
    swap = path.with_name(f".{path.name}.swp")
    swap.write_text("swap")
    probe = path.with_name("4913")  # vim's "can I create files here" probe
    probe.write_text("")
    probe.unlink()
    backup = path.with_name(f"{path.name}~")
    path.rename(backup)
    path.write_text(NEW)
    path.chmod(0o644)
    backup.unlink()
    swap.unlink()


def emacs_save(path: Path) -> None:
    lock = path.with_name(f".#{path.name}")
    lock.symlink_to("user@host.4242:1700000000")
    autosave = path.with_name(f"#{path.name}#")
    autosave.write_text(NEW)
    path.rename(path.with_name(f"{path.name}~"))  # the backup stays behind, as in emacs
    path.write_text(NEW)
    autosave.unlink()
    lock.unlink()


def jetbrains_save(path: Path) -> None:
    tmp = path.with_name(f"{path.name}___jb_tmp___")
    tmp.write_text(NEW)
    old = path.with_name(f"{path.name}___jb_old___")
    path.rename(old)
    tmp.rename(path)
    old.unlink()


def atomic_rename_save(path: Path) -> None:
    # VS Code (files.saveAtomically), many libraries: write a hidden sibling, rename over.
    tmp = path.with_name(f".{path.name}.4f2a9c.tmp")
    tmp.write_text(NEW)
    os.replace(tmp, path)


def sed_in_place(path: Path) -> None:
    # GNU sed writes ./sedXXXXXX, then renames it over the file.
    subprocess.run(["sed", "-i", "s/old/new/", str(path)], check=True)


def in_place_write(path: Path) -> None:
    # nano, VS Code's default, `cp new R1.yaml`, `echo > R1.yaml`: truncate and write.
    with path.open("w") as handle:
        handle.write(NEW)


@pytest.mark.parametrize(
    "save",
    [vim_save, emacs_save, jetbrains_save, atomic_rename_save, sed_in_place, in_place_write],
    ids=lambda save: save.__name__,
)
async def test_editor_save_is_exactly_the_rule_in_one_batch(
    root: Path, save: Callable[[Path], None]
) -> None:
    if save is sed_in_place and shutil.which("sed") is None:
        pytest.skip("no sed")
    rule = root / "R1.yaml"
    # A generous debounce makes "one batch" independent of how loaded the machine is.
    async with watching(root, debounce=0.3) as batches:
        save(rule)
        got = await batches.settle()
    assert [batch.paths for batch in got] == [{rule}]
    assert rule.read_text() == NEW


@pytest.mark.parametrize(
    "save", [atomic_rename_save, jetbrains_save, sed_in_place], ids=lambda save: save.__name__
)
async def test_rename_into_place_is_handed_out_without_the_debounce(
    root: Path, save: Callable[[Path], None]
) -> None:
    if save is sed_in_place and shutil.which("sed") is None:
        pytest.skip("no sed")
    rule = root / "R1.yaml"
    # A debounce longer than the test's timeout: only a batch that skips it can arrive.
    async with watching(root, debounce=2 * TIMEOUT_S, max_batch_wait=2 * TIMEOUT_S) as batches:
        save(rule)
        got = await batches.until(lambda batch: rule in batch.paths)
    assert [batch.paths for batch in got] == [{rule}]


async def test_rename_does_not_cut_a_write_burst_short(root: Path) -> None:
    written = [root / f"W{n}.yaml" for n in range(20)]
    rule = root / "R1.yaml"
    async with watching(root, debounce=0.3) as batches:
        for path in written:
            path.write_text(OLD)
        atomic_rename_save(rule)
        got = await batches.settle()
    assert [batch.paths for batch in got] == [{*written, rule}]


async def test_configmap_swap_is_handed_out_without_the_debounce(tmp_path: Path) -> None:
    mount = tmp_path / "rules"
    mount.mkdir()
    configmap_publish(mount, {"R1.yaml": OLD}, "2024_01_01_00_00_00.1")
    async with watching(mount, debounce=2 * TIMEOUT_S, max_batch_wait=2 * TIMEOUT_S) as batches:
        configmap_publish(mount, {"R1.yaml": NEW}, "2024_01_01_00_05_00.2")
        got = await batches.until(lambda batch: batch.full_rescan)
    assert got[-1].reason == "configmap-swap"


async def test_ignored_names_never_appear(root: Path) -> None:
    async with watching(root) as batches:
        for name in (
            ".hidden.yaml",
            "4913",
            "R1.yaml~",
            "R1.yaml.swp",
            ".R1.yaml.swp",
            "notes.txt",
            "R1.json",
            "sedAbC123",
            "R 1.yaml",
            "#R1.yaml#",
            "R1.YAML",
        ):
            (root / name).write_text("x")
            (root / name).unlink()
        for hidden in (".git", "..2024_01_01_00_00_00.1"):
            (root / hidden).mkdir()
            (root / hidden / "R9.yaml").write_text("x")
            (root / hidden / "sub").mkdir()
            (root / hidden / "sub" / "R9.yaml").write_text("x")
        got = await batches.settle()
    assert got == []


async def test_mv_in_out_and_within(root: Path, outside: Path) -> None:
    async with watching(root) as batches:
        (outside / "R2.yaml").write_text(OLD)
        (outside / "R2.yaml").rename(root / "R2.yaml")
        assert await batches.changed() == {root / "R2.yaml"}

        (root / "R2.yaml").rename(root / "R3.yaml")
        assert await batches.changed() == {root / "R2.yaml", root / "R3.yaml"}

        (root / "R3.yaml").rename(outside / "R3.yaml")
        assert await batches.changed() == {root / "R3.yaml"}

        (outside / "draft.txt").write_text(OLD)
        (outside / "draft.txt").rename(root / "R4.yml")
        (root / "R1.yaml").rename(root / "R1.disabled")
        assert await batches.changed() == {root / "R4.yml", root / "R1.yaml"}


async def test_links_are_whole_when_created(root: Path, outside: Path) -> None:
    (outside / "R5.yaml").write_text(OLD)
    async with watching(root) as batches:
        (root / "R5.yaml").symlink_to(outside / "R5.yaml")
        os.link(outside / "R5.yaml", root / "R6.yaml")
        assert await batches.changed() == {root / "R5.yaml", root / "R6.yaml"}


async def test_deletes(root: Path) -> None:
    (root / "R2.yaml").write_text(OLD)
    (root / "README.md").write_text("docs")
    async with watching(root) as batches:
        (root / "R1.yaml").unlink()
        (root / "README.md").unlink()
        assert await batches.changed() == {root / "R1.yaml"}


async def test_file_still_being_written_waits_for_close(root: Path) -> None:
    async with watching(root) as batches:
        with (root / "R2.yaml").open("w") as handle:
            handle.write("rule_id: R2\n")
            handle.flush()
            assert await batches.changed() == set()  # half a rule is not worth validating
        assert await batches.changed() == {root / "R2.yaml"}


async def test_chmod_is_reported(root: Path) -> None:
    # A rule rejected as unreadable must come back when its permissions are fixed.
    async with watching(root) as batches:
        (root / "R1.yaml").chmod(0o600)
        assert await batches.changed() == {root / "R1.yaml"}


# -- directories -------------------------------------------------------------------------


async def test_new_directories_are_watched_at_once(root: Path) -> None:
    async with watching(root) as batches:
        (root / "sub").mkdir()
        (root / "sub" / "R5.yaml").write_text(OLD)
        # Created faster than any watch can be added: found by listing the new directory.
        (root / "a" / "b" / "c").mkdir(parents=True)
        (root / "a" / "b" / "c" / "R6.yaml").write_text(OLD)
        assert await batches.changed() == {root / "sub/R5.yaml", root / "a/b/c/R6.yaml"}

        (root / "a" / "b" / "c" / "R6.yaml").write_text(NEW)
        assert await batches.changed() == {root / "a/b/c/R6.yaml"}


async def test_directory_moved_in_brings_its_rules(root: Path, outside: Path) -> None:
    pack = outside / "pack"
    (pack / "nested").mkdir(parents=True)
    (pack / "R7.yaml").write_text(OLD)
    (pack / "nested" / "R8.yaml").write_text(OLD)
    (pack / "notes.txt").write_text("x")
    (pack / ".hidden").mkdir()
    (pack / ".hidden" / "R9.yaml").write_text(OLD)
    async with watching(root) as batches:
        pack.rename(root / "pack")
        assert await batches.changed() == {root / "pack/R7.yaml", root / "pack/nested/R8.yaml"}

        (root / "pack" / "nested" / "R8.yaml").write_text(NEW)
        assert await batches.changed() == {root / "pack/nested/R8.yaml"}


async def test_directory_moved_out_takes_its_rules(root: Path, outside: Path) -> None:
    (root / "team" / "deep").mkdir(parents=True)
    (root / "team" / "R2.yaml").write_text(OLD)
    (root / "team" / "deep" / "R3.yaml").write_text(OLD)
    async with watching(root) as batches:
        (root / "team").rename(outside / "team")
        assert await batches.changed() == {root / "team/R2.yaml", root / "team/deep/R3.yaml"}

        (outside / "team" / "R2.yaml").write_text(NEW)  # no longer ours
        (outside / "team" / "deep" / "R3.yaml").write_text(NEW)
        assert await batches.changed() == set()


async def test_directory_renamed_within(root: Path) -> None:
    (root / "a").mkdir()
    (root / "a" / "R2.yaml").write_text(OLD)
    async with watching(root) as batches:
        (root / "a").rename(root / "b")
        assert await batches.changed() == {root / "a/R2.yaml", root / "b/R2.yaml"}

        (root / "b" / "R2.yaml").write_text(NEW)
        assert await batches.changed() == {root / "b/R2.yaml"}


async def test_directory_removed_and_recreated(root: Path) -> None:
    (root / "team" / "deep").mkdir(parents=True)
    (root / "team" / "R2.yaml").write_text(OLD)
    (root / "team" / "deep" / "R3.yaml").write_text(OLD)
    async with watching(root) as batches:
        shutil.rmtree(root / "team")
        assert await batches.changed() == {root / "team/R2.yaml", root / "team/deep/R3.yaml"}

        (root / "team").mkdir()
        (root / "team" / "R4.yaml").write_text(OLD)
        assert await batches.changed() == {root / "team/R4.yaml"}


async def test_symlinked_directories_are_followed(root: Path, outside: Path) -> None:
    (outside / "shared").mkdir()
    (outside / "later").mkdir()
    (outside / "later" / "R3.yaml").write_text(OLD)
    (root / "shared").symlink_to(outside / "shared")
    async with watching(root) as batches:
        (outside / "shared" / "R2.yaml").write_text(OLD)
        assert await batches.changed() == {root / "shared/R2.yaml"}

        (root / "later").symlink_to(outside / "later")
        assert await batches.changed() == {root / "later/R3.yaml"}

        (root / "later").unlink()
        (outside / "later" / "R3.yaml").write_text(NEW)
        assert await batches.changed() == {root / "later/R3.yaml"}


# -- many files at once --------------------------------------------------------------------


async def test_hundreds_of_files_and_a_mass_rename(root: Path) -> None:
    names = [f"r{i:03d}" for i in range(500)]

    def write_all() -> None:
        for name in names:
            (root / f"{name}.yaml").write_text(OLD)

    def rename_all() -> None:
        (root / "moved").mkdir()
        for name in names:
            (root / f"{name}.yaml").rename(root / "moved" / f"{name}.yml")

    async with watching(root) as batches:
        await asyncio.to_thread(write_all)
        assert await batches.changed() == {root / f"{name}.yaml" for name in names}

        await asyncio.to_thread(rename_all)
        got = await batches.settle()
    assert {path for batch in got for path in batch.paths} == {
        *(root / f"{name}.yaml" for name in names),
        *(root / "moved" / f"{name}.yml" for name in names),
    }
    assert not any(batch.full_rescan for batch in got)


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
async def test_git_checkout_of_many_files(root: Path) -> None:
    def paths(folder: str, numbers: range) -> set[Path]:
        return {root / folder / f"R{n:03d}.yaml" for n in numbers}

    def write(files: set[Path], text: str) -> None:
        for path in files:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)

    unchanged, modified = paths("core", range(100)), paths("core", range(100, 250))
    dropped, added = paths("old", range(60)), paths("extra", range(60))
    (root / "R1.yaml").unlink()
    git(root, "init", "-q", "-b", "main")
    write(unchanged | modified | dropped, OLD)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "main")
    git(root, "checkout", "-q", "-b", "next")
    write(modified, NEW)
    write(added, OLD)
    shutil.rmtree(root / "old")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "next")
    git(root, "checkout", "-q", "main")

    async with watching(root) as batches:
        await asyncio.to_thread(git, root, "checkout", "-q", "next")
        assert await batches.changed() == modified | dropped | added
        await asyncio.to_thread(git, root, "checkout", "-q", "main")
        assert await batches.changed() == modified | dropped | added
    assert not (root / "extra").exists()


async def test_events_during_processing_go_into_the_next_batch(root: Path) -> None:
    async with watching(root) as batches:
        (root / "R1.yaml").write_text(NEW)
        first = await batches.until(lambda batch: bool(batch.paths))
        assert [batch.paths for batch in first] == [{root / "R1.yaml"}]
        # The consumer is "busy" with that batch while these land.
        (root / "R2.yaml").write_text(OLD)
        (root / "R3.yaml").write_text(OLD)
        await asyncio.sleep(0.3)
        nxt = await batches.until(lambda batch: True)
        assert [batch.paths for batch in nxt] == [{root / "R2.yaml", root / "R3.yaml"}]


# -- full rescans ----------------------------------------------------------------------------


def configmap_publish(mount: Path, data: dict[str, str], stamp: str) -> None:
    """What the kubelet's AtomicWriter does to a ConfigMap volume."""
    fresh = mount / f"..{stamp}"
    fresh.mkdir()
    for key, text in data.items():
        (fresh / key).write_text(text)
    previous = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    (mount / "..data_tmp").symlink_to(fresh.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    for key in data:
        if not (mount / key).is_symlink():
            (mount / key).symlink_to(f"..data/{key}")
    for entry in mount.iterdir():
        if not entry.name.startswith(".") and entry.name not in data:
            entry.unlink()
    if previous is not None:
        shutil.rmtree(mount / previous)


async def test_configmap_swap_asks_for_a_full_rescan(tmp_path: Path) -> None:
    mount = tmp_path / "rules"
    mount.mkdir()
    configmap_publish(mount, {"R1.yaml": OLD, "R3.yaml": OLD}, "2024_01_01_00_00_00.1")
    async with watching(mount) as batches:
        configmap_publish(mount, {"R1.yaml": NEW, "R2.yaml": OLD}, "2024_01_01_00_05_00.2")
        got = await batches.settle()
    assert any(batch.full_rescan and batch.reason == "configmap-swap" for batch in got)
    # The new key's link appears and the removed key's link goes; no `..` name ever shows.
    assert {path for batch in got for path in batch.paths} == {mount / "R2.yaml", mount / "R3.yaml"}
    assert (mount / "R1.yaml").read_text() == NEW


def rescan(reason: str) -> Callable[[WatchBatch], bool]:
    return lambda batch: batch.full_rescan and batch.reason == reason


async def test_root_removed_and_recreated(root: Path) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "R2.yaml").write_text(OLD)
    async with watching(root) as batches:
        shutil.rmtree(root)
        root.mkdir()
        await batches.until(rescan("root-replaced"))

        (root / "R3.yaml").write_text(OLD)
        (root / "sub").mkdir()
        (root / "sub" / "R4.yaml").write_text(OLD)
        assert await batches.changed() == {root / "R3.yaml", root / "sub/R4.yaml"}


async def test_root_swapped_by_rename(root: Path, tmp_path: Path) -> None:
    staged = tmp_path / "rules.new"
    staged.mkdir()
    (staged / "R2.yaml").write_text(OLD)
    async with watching(root) as batches:
        root.rename(tmp_path / "rules.old")
        staged.rename(root)
        got = await batches.until(rescan("root-replaced"))
        assert all(not batch.paths for batch in got)  # no rule "deleted" by the swap

        (tmp_path / "rules.old" / "R1.yaml").write_text(NEW)  # no longer watched
        (root / "R2.yaml").write_text(NEW)
        assert await batches.changed() == {root / "R2.yaml"}


async def test_root_that_appears_later(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    async with watching(root) as batches:
        root.mkdir()
        await batches.until(rescan("root-replaced"))
        (root / "R1.yaml").write_text(OLD)
        assert await batches.changed() == {root / "R1.yaml"}


async def test_root_symlink_repointed(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "releases" / "v1", tmp_path / "releases" / "v2"
    v1.mkdir(parents=True)
    v2.mkdir()
    root = tmp_path / "current"
    root.symlink_to(v1)
    async with watching(root) as batches:
        (v1 / "R1.yaml").write_text(OLD)
        assert await batches.changed() == {root / "R1.yaml"}  # as seen through the root

        (tmp_path / "current.tmp").symlink_to(v2)
        os.replace(tmp_path / "current.tmp", root)  # no inotify event reports this
        await batches.until(rescan("root-replaced"))

        (v1 / "R1.yaml").write_text(NEW)
        (v2 / "R2.yaml").write_text(OLD)
        assert await batches.changed() == {root / "R2.yaml"}


async def test_periodic_rescan(root: Path) -> None:
    async with watching(root, rescan_interval=0.2) as batches:
        await batches.until(rescan("periodic"))
        got = await batches.until(rescan("periodic"))
    assert all(not batch.paths for batch in got)


def queue_limit() -> int:
    try:
        return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except (OSError, ValueError):
        return 0


async def test_queue_overflow_rescans_and_rewatches(root: Path) -> None:
    # A real IN_Q_OVERFLOW without touching the machine's sysctl: the event loop (and so
    # the watcher) is kept busy while more events than the queue holds are produced.
    limit = queue_limit()
    if not 0 < limit <= 200_000:
        pytest.skip(f"inotify queue limit {limit} unknown or too large to overflow quickly")
    async with watching(root) as batches:
        flood = root / "flood"
        flood.mkdir()
        await batches.settle()  # the flood directory is watched
        for n in range(limit // 2 + 500):  # CREATE + CLOSE_WRITE per file
            (flood / f"f{n}.txt").write_bytes(b"")
        (root / "sub").mkdir()  # its IN_CREATE is lost in the overflow
        await batches.until(rescan("overflow"))

        (root / "sub" / "R2.yaml").write_text(OLD)
        assert await batches.changed() == {root / "sub/R2.yaml"}


# -- robustness ------------------------------------------------------------------------------


async def test_unreadable_directory_is_logged_and_skipped(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Tests may run as root, where chmod 000 denies nothing: deny the listing instead.
    locked = root / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="ttp_master.watcher"):
        async with watching(root) as batches:
            (root / "R1.yaml").write_text(NEW)
            assert await batches.changed() == {root / "R1.yaml"}
    assert any(str(locked) in record.getMessage() for record in caplog.records)


async def test_directories_vanishing_while_being_watched(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    churn = root / "churn"

    def flap() -> None:
        for _ in range(300):
            (churn / "a" / "b").mkdir(parents=True)
            (churn / "a" / "b" / "R9.yaml").write_text(OLD)
            shutil.rmtree(churn)

    with caplog.at_level(logging.WARNING, logger="ttp_master.watcher"):
        async with watching(root) as batches:
            await asyncio.to_thread(flap)
            (root / "R1.yaml").write_text(NEW)
            changed = await batches.changed()
    assert root / "R1.yaml" in changed
    assert changed <= {root / "R1.yaml", churn / "a/b/R9.yaml"}
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_close_ends_the_batches(root: Path) -> None:
    watcher = DirectoryWatcher(root)
    async with watcher:
        reader = asyncio.create_task(anext(watcher.batches(), None))
        await asyncio.sleep(0)
        await watcher.close()
        assert await asyncio.wait_for(reader, TIMEOUT_S) is None
    await watcher.close()  # idempotent
