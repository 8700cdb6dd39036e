"""The rules directory as batches of possibly changed rule files (docs/operations.md).

`DirectoryWatcher` keeps an inotify watch on every visible directory of the rules tree and
turns the events into `WatchBatch`es: the rule-file paths that may have changed, or a request
to rescan the whole tree when events cannot say what changed (queue overflow, a ConfigMap
`..data` swap, the root directory replaced, the periodic backstop). It never reads a rule: the
caller re-validates what a batch names and decides what really changed.

Editors' atomic saves, `sed -i`, `mv` and `git checkout` need no special cases: temporary names
are not rule files, and every step that lands on a rule name (close after write, rename onto
it, delete, rename away) names the same path, so a save collapses into one path of one batch.

Only writes wait for the debounce. A file renamed into place (an editor's atomic save, `sed -i`,
`mv`), a link created, or a ConfigMap's `..data` swap is whole the moment its event arrives, so
a batch holding nothing else is handed out at once; a batch with any file written in place (or
deleted, or renamed away) still waits for the tree to be quiet, so a `git checkout` or a copy
of many files is never cut short in the middle of a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

from asyncinotify import Inotify, Mask, Watch

from ttp_core.rules.validator import is_rule_file

log = logging.getLogger(__name__)

CONFIGMAP_DATA: Final = "..data"
# Full-rescan reasons, strongest first: a batch asking for several names the first.
RESCAN_REASONS: Final = ("root-replaced", "overflow", "configmap-swap", "watch-error", "periodic")

_WATCH_MASK: Final = (
    Mask.CLOSE_WRITE
    | Mask.ATTRIB  # a chmod can turn an unreadable (rejected) rule into a readable one
    | Mask.CREATE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
    | Mask.EXCL_UNLINK
)
_GONE: Final = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED | Mask.UNMOUNT
_ARRIVED: Final = Mask.CREATE | Mask.MOVED_TO
_LEFT: Final = Mask.DELETE | Mask.MOVED_FROM
_WRITTEN: Final = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.ATTRIB
_ROOT_POLL_S: Final = 0.05  # while the root is missing: replacing it is usually quick
_ROOT_CHECK_S: Final = 1.0  # while present: catches a repointed root symlink (no event for that)
_EVENTS_PER_READ: Final = 256  # asyncinotify reads this many full-size events per syscall


@dataclass(frozen=True)
class WatchBatch:
    """What changed under the rules directory since the previous batch."""

    paths: frozenset[Path]
    """Rule files (absolute, under the root as given) created, modified, deleted or moved."""
    full_rescan: bool
    """The events cannot tell what changed: the caller must rescan the whole tree."""
    reason: str
    """`changes`, or the first applicable entry of `RESCAN_REASONS`."""


@dataclass
class BatchCollector:
    """Changes gathered since the last batch, and when that batch is due.

    A batch is due once the tree has been quiet for `debounce` seconds, or `max_wait` seconds
    after its first change, whichever comes first, so a steady stream still yields batches.
    A batch whose every change is `whole` (the file's latest event put a complete file in
    place: a rename onto it, a link) is due at once: nothing about it can still be in
    progress, so waiting for quiet would only add latency.
    Times are the caller's monotonic clock.
    """

    debounce: float
    max_wait: float
    paths: set[Path] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)
    opened_at: float | None = None
    last_activity: float = float("-inf")
    unsettled: set[Path | str] = field(default_factory=set)
    """Paths (and rescan reasons) whose latest event may be part of an edit still going on."""

    def touch(self, now: float) -> None:
        """Any event, even on an ignored name, means an edit may still be in progress."""
        self.last_activity = max(self.last_activity, now)

    def add(self, path: Path, now: float, *, whole: bool = False) -> None:
        """Record a possibly changed rule file; `whole` when the event put a complete file
        in place (a later write to it makes it unsettled again, and the reverse)."""
        self.touch(now)
        self.paths.add(path)
        self._settle(path, whole)
        if self.opened_at is None:
            self.opened_at = now

    def rescan(self, reason: str, now: float, *, whole: bool = False) -> None:
        """Ask for a full rescan in the next batch; `whole` when what triggered it was
        complete when it happened (a ConfigMap's atomic `..data` swap)."""
        self.touch(now)
        self.reasons.add(reason)
        self._settle(reason, whole)
        if self.opened_at is None:
            self.opened_at = now

    def _settle(self, key: Path | str, whole: bool) -> None:
        if whole:
            self.unsettled.discard(key)
        else:
            self.unsettled.add(key)

    def due_at(self) -> float | None:
        """When the pending batch should be handed out; None when nothing is pending."""
        if self.opened_at is None:
            return None
        if not self.unsettled:
            return self.opened_at
        return min(self.last_activity + self.debounce, self.opened_at + self.max_wait)

    def take(self) -> WatchBatch:
        """The pending batch; the collector starts over empty."""
        reason: str | None = next((r for r in RESCAN_REASONS if r in self.reasons), None)
        if reason is None and self.reasons:
            reason = min(self.reasons)
        batch = WatchBatch(frozenset(self.paths), reason is not None, reason or "changes")
        self.paths, self.reasons, self.opened_at = set(), set(), None
        self.unsettled = set()
        return batch


@dataclass
class _WatchedDir:
    watch: Watch
    path: Path
    # Rule file names seen in it, so that a directory moved away can name what it took along.
    files: set[str]


class DirectoryWatcher:
    """Recursive inotify watch of a rules directory, yielding `WatchBatch`es.

    Use as `async with DirectoryWatcher(root) as watcher: async for batch in
    watcher.batches(): ...`. The consumer handles one batch at a time; events arriving
    meanwhile go into the next batch. Hidden directories (`.git`, ConfigMap `..2024_...`
    timestamp dirs) are not watched, except that a `..data` swap asks for a full rescan.
    Symlinked directories are followed; one reached again through a second path (a link to
    a directory already watched) reports its files under the first path only.
    The startup scan is the caller's: batches only report what happened after `__aenter__`.
    Iterate `batches()` from one consumer only.

    Why 30 ms: a `git checkout` or an in-place save issues its writes back-to-back
    (microseconds apart), so 30 ms of quiet groups one operation even on a busy host while
    keeping a hand edit's latency unnoticeable. Renames into place skip it (see
    `BatchCollector`). The 250 ms cap bounds the latency under a writer that never pauses.
    """

    def __init__(
        self,
        root: Path,
        *,
        debounce: float = 0.03,
        rescan_interval: float = 300.0,
        max_batch_wait: float | None = None,
    ) -> None:
        """`debounce`: quiet seconds that close a batch; `max_batch_wait` caps a batch's
        total wait (default: the larger of 0.25 s and 8 x debounce); `rescan_interval`:
        seconds between backstop full rescans."""
        # abspath, not resolve: paths must read as the operator configured them, through
        # any symlink (a ConfigMap mount, a `current -> release-42` deploy link).
        self._root = Path(os.path.abspath(root))
        cap = max(0.25, 8 * debounce) if max_batch_wait is None else max(max_batch_wait, debounce)
        self._pending = BatchCollector(debounce=debounce, max_wait=cap)
        self._rescan_interval = rescan_interval
        self._inotify: Inotify | None = None
        self._by_wd: dict[int, _WatchedDir] = {}
        self._by_path: dict[Path, int] = {}
        self._root_wd: int | None = None
        self._root_id: tuple[int, int] | None = None
        self._failed_root_id: tuple[int, int] | None = None
        self._root_missing = False
        self._wake = asyncio.Event()
        self._nudge_root = asyncio.Event()
        self._closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None

    @property
    def root(self) -> Path:
        """The watched directory, as paths in batches spell it."""
        return self._root

    async def __aenter__(self) -> DirectoryWatcher:
        """Watch the tree (or wait for the root to appear) and start reading events."""
        self._inotify = Inotify(cache_size=_EVENTS_PER_READ)
        if not self._rewatch():
            self._root_missing = True
            log.warning("rules directory %s is missing; waiting for it to appear", self._root)
        for job in (self._read_events(), self._watch_root(), self._rescan_periodically()):
            task = asyncio.create_task(job)
            task.add_done_callback(self._task_done)
            self._tasks.append(task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Same as `close`."""
        await self.close()

    async def close(self) -> None:
        """Stop watching; `batches()` ends. Pending changes are dropped (startup rescans)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inotify is not None:
            self._inotify.close()

    async def batches(self) -> AsyncIterator[WatchBatch]:
        """Batches of changes, each once it is due, until `close()`.

        Raises RuntimeError if event reading failed: the caller should restart the watcher.
        """
        if self._inotify is None:
            raise RuntimeError("DirectoryWatcher.batches() needs `async with` first")
        loop = asyncio.get_running_loop()
        while True:
            if self._failure is not None:
                raise RuntimeError("directory watcher failed") from self._failure
            if self._closed.is_set():
                return
            # Cleared before reading the due time: a change recorded after this wakes the
            # wait below, so a whole change can end a debounce wait early.
            self._wake.clear()
            due = self._pending.due_at()
            if due is None:
                await self._wake.wait()
            elif due > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due - loop.time())
            else:
                yield self._pending.take()

    # -- background tasks ---------------------------------------------------------------

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            self._wake.set()

    async def _read_events(self) -> None:
        assert self._inotify is not None
        async for event in self._inotify:
            watch = event.watch
            name = None if event.name is None else str(event.name)
            try:
                self._on_event(-1 if watch is None else watch.wd, event.mask, name)
            except Exception:
                # A bug or an odd filesystem must not end watching: rebuild and rescan.
                log.exception("failed to handle inotify event %r; rescanning", event)
                self._rebuild("watch-error")

    async def _watch_root(self) -> None:
        while True:
            interval = _ROOT_CHECK_S if self._root_wd is not None else _ROOT_POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge_root.wait(), interval)
            self._nudge_root.clear()
            self._check_root()

    async def _rescan_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._rescan_interval)
            if self._root_wd is None:
                self._failed_root_id = None  # permissions may have been fixed: try again
                self._check_root()
            else:
                self._rebuild("periodic")  # also repairs any watch a race made us miss

    # -- event handling -----------------------------------------------------------------

    def _on_event(self, wd: int, mask: Mask, name: str | None) -> None:
        self._pending.touch(asyncio.get_running_loop().time())
        if mask & Mask.Q_OVERFLOW:
            log.warning("inotify queue overflowed under %s; rescanning everything", self._root)
            self._rebuild("overflow")
            return
        directory = self._by_wd.get(wd)
        if directory is None:
            return  # late events of a watch already dropped
        if mask & _GONE:
            if wd == self._root_wd:
                self._lose_root()
            elif self._by_path.get(directory.path) == wd:
                self._forget(directory.path, announce=True)
            else:  # its path already names a newer directory (renamed over it)
                del self._by_wd[wd]
            return
        if name is None:
            return
        if name == CONFIGMAP_DATA and mask & _ARRIVED:
            # The kubelet writes the new timestamped directory in full before the swap.
            self._request_rescan("configmap-swap", whole=True)
            return
        path = directory.path / name
        if mask & _LEFT:
            if path in self._by_path:
                self._forget(path, announce=True)
            directory.files.discard(name)
            if is_rule_file(name):
                self._changed(path)
            return
        if name.startswith("."):
            return
        if (mask & _ARRIVED and (mask & Mask.ISDIR or _is_dir_link(path))) or (
            mask & Mask.ISDIR and path not in self._by_path  # chmod may make it watchable
        ):
            for found in self._scan(path, self._by_wd, self._by_path):
                self._changed(found)
            return
        if mask & Mask.ISDIR or not is_rule_file(name):
            return
        directory.files.add(name)
        if mask & Mask.MOVED_TO:
            self._changed(path, whole=True)  # a rename moves a complete file into place
        elif mask & _WRITTEN:
            self._changed(path)
        elif _complete_on_create(path):
            self._changed(path, whole=True)

    def _changed(self, path: Path, *, whole: bool = False) -> None:
        self._pending.add(path, asyncio.get_running_loop().time(), whole=whole)
        self._wake.set()

    def _rebuild(self, reason: str) -> None:
        """Rewatch the whole tree and ask for a full rescan (none while the root is missing:
        rescanning nothing would read as every rule deleted)."""
        if self._rewatch():
            self._request_rescan(reason)
        else:
            self._lose_root()

    def _request_rescan(self, reason: str, *, whole: bool = False) -> None:
        self._pending.rescan(reason, asyncio.get_running_loop().time(), whole=whole)
        self._wake.set()

    # -- watches ------------------------------------------------------------------------

    def _rewatch(self) -> bool:
        """Rebuild every watch from the tree on disk; False (nothing watched) without a root."""
        identity = _dir_identity(self._root)
        fresh: dict[int, _WatchedDir] = {}
        fresh_paths: dict[Path, int] = {}
        if identity is not None:
            self._scan(self._root, fresh, fresh_paths)
        for wd, old in self._by_wd.items():
            if wd not in fresh:
                self._unwatch(old.watch)
        self._by_wd, self._by_path = fresh, fresh_paths
        self._root_wd = self._by_path.get(self._root)
        self._root_id = identity if self._root_wd is not None else None
        return self._root_wd is not None

    def _scan(self, top: Path, into: dict[int, _WatchedDir], paths: dict[Path, int]) -> list[Path]:
        """Watch `top` and the visible directories below it; the rule files found there."""
        assert self._inotify is not None
        found: list[Path] = []
        stack = [top]
        while stack:
            path = stack.pop()
            watch = _add_watch(self._inotify, path)
            if watch is None or watch.wd in into:
                continue  # gone, unreadable, already watched, or reached again via a symlink
            if path in paths:  # a directory renamed over a watched one: the old one is gone
                self._forget(path, announce=True)
            # Listed only after the watch exists, so nothing created meanwhile is missed.
            entries = _list_dir(path)
            files = {name for name, is_dir in entries if not is_dir and is_rule_file(name)}
            into[watch.wd] = _WatchedDir(watch, path, files)
            paths[path] = watch.wd
            found.extend(path / name for name in files)
            stack.extend(path / n for n, is_dir in entries if is_dir and not n.startswith("."))
        return found

    def _forget(self, top: Path, *, announce: bool) -> None:
        """Drop the watches of `top` and below; with `announce`, their rule files changed."""
        for path in [p for p in self._by_path if p.is_relative_to(top)]:
            directory = self._by_wd.pop(self._by_path.pop(path))
            self._unwatch(directory.watch)
            if announce:
                for name in directory.files:
                    self._changed(path / name)

    def _unwatch(self, watch: Watch) -> None:
        assert self._inotify is not None
        with contextlib.suppress(OSError):  # the kernel may have dropped it already
            self._inotify.rm_watch(watch)

    def _lose_root(self) -> None:
        # No per-file announcement: `mv rules rules.old && mv rules.new rules` must not look
        # like every rule being deleted. The root-replaced rescan settles it when it is back.
        if not self._root_missing:
            self._root_missing = True
            log.info("rules directory %s went away; waiting for it", self._root)
        self._forget(self._root, announce=False)
        self._by_wd.clear()
        self._by_path.clear()
        self._root_wd = self._root_id = None
        self._check_root()
        self._nudge_root.set()

    def _check_root(self) -> None:
        identity = _dir_identity(self._root)
        if self._root_wd is not None:
            if identity == self._root_id:
                return
            self._lose_root()  # the path now names another directory, or nothing
            return
        if identity is None or identity == self._failed_root_id:
            return
        if self._rewatch():
            self._failed_root_id = None
            self._root_missing = False
            log.info("rules directory %s is (re)established; full rescan", self._root)
            self._request_rescan("root-replaced")
        else:
            self._failed_root_id = identity  # logged once by _add_watch; retried periodically


def _add_watch(inotify: Inotify, path: Path) -> Watch | None:
    try:
        return inotify.add_watch(path, _WATCH_MASK)
    except (FileNotFoundError, NotADirectoryError):
        return None  # removed while we looked: its parent's events say so
    except OSError as exc:
        hint = " (raise fs.inotify.max_user_watches)" if exc.errno == 28 else ""  # ENOSPC
        log.warning("cannot watch %s: %s%s; skipped", path, exc.strerror, hint)
        return None


def _list_dir(path: Path) -> list[tuple[str, bool]]:
    """(name, is a directory, following symlinks) per entry; [] if gone or unreadable."""
    try:
        with os.scandir(path) as entries:
            return [(entry.name, _entry_is_dir(entry)) for entry in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot list %s: %s; skipped", path, exc.strerror)
        return []


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_dir_link(path: Path) -> bool:
    return path.is_symlink() and path.is_dir()


def _complete_on_create(path: Path) -> bool:
    """A symlink or hard link is whole when created; a new file only once closed."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISLNK(info.st_mode) or info.st_nlink > 1


def _dir_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


__all__ = ["CONFIGMAP_DATA", "RESCAN_REASONS", "BatchCollector", "DirectoryWatcher", "WatchBatch"]
