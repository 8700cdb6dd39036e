"""Rule-file validation for the master, in this process or on a pool of processes.

A startup reconcile validates every file of the rules directory, which is CPU work for all
cores. The pool's processes are forked from a forkserver that imported only this module
(the validator, not the master's database, NATS and HTTP stacks), so they are ready in
milliseconds, and the forkserver is started early (`start_early`), while the master itself
is still importing, so that even its one import overlaps the master's start. What crosses
back is a `FileVerdict`: plain data, the rule already normalised, cheap to unpickle.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    # Not imported here at run time: `start_early` must cost nothing before the forkserver
    # is on its way; the forkserver imports the validator itself (`_PRELOAD`).
    from ttp_core.contract.field_catalogue import FieldCatalogue
    from ttp_core.rules.diagnostics import Diagnostic
    from ttp_core.rules.validator import RuleReport, RuleValidator

_log = logging.getLogger(__name__)

POOL_THRESHOLD: Final = 64
"""Files to validate in one call before the work goes to the process pool (all cores)."""

_ORPHAN_CHECK_S: Final = 1.0
_CHUNKS_PER_PROCESS: Final = 4
"""Work items per process: enough to even out slow files, few enough to keep IPC cheap."""
_PRELOAD: Final = ("__main__", __name__, "ttp_core.rules.validator")
"""What the forkserver imports once for every process it forks. `__main__`: each process
would otherwise import the program's entry point again (multiprocessing re-runs it), which
`ttp_master.cli` keeps light."""


@dataclass(frozen=True, slots=True)
class RuleFacts:
    """What the master writes of a valid rule: no model objects, so it crosses processes
    as a few strings and one dict."""

    rule_id: str
    rule_version: int
    name: str
    is_external: bool
    definition: dict[str, Any]
    """The normalised rule (the form hashed, stored and published)."""


@dataclass(frozen=True, slots=True)
class FileVerdict:
    """What validation said about one file, in a form that crosses process boundaries."""

    rule: RuleFacts | None
    diagnostics: tuple[Diagnostic, ...]
    text: str | None
    content_sha256: str | None

    @classmethod
    def of(cls, report: RuleReport) -> FileVerdict:
        rule = report.rule
        facts = (
            None
            if rule is None
            else RuleFacts(
                rule.rule_id, rule.rule_version, rule.name, rule.is_external, rule.normalised()
            )
        )
        return cls(facts, report.diagnostics, report.text, report.content_sha256)

    @property
    def ok(self) -> bool:
        return self.content_sha256 is not None and not self.errors

    @property
    def rule_id(self) -> str | None:
        return self.rule.rule_id if self.rule is not None else None

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)


def _pool_cores() -> int:
    return os.cpu_count() or 1


def start_early() -> None:
    """Start the forkserver (it imports this module meanwhile) when the pool may be used.

    Call once, as early as possible: it returns at once, and the import runs on another
    core while the caller goes on with its own start."""
    if _pool_cores() < 2:
        return
    try:
        _context()
        forkserver.ensure_running()
    except (OSError, ValueError) as exc:
        _log.debug("could not start the validation forkserver early: %s", exc)


def _context() -> Any:
    # forkserver, not fork: the master runs an event loop and other threads. Not spawn
    # either: spawn imports the entry point and the validator again in every process; the
    # forkserver imports them once and forks ready processes.
    forkserver.set_forkserver_preload(list(_PRELOAD))
    return multiprocessing.get_context("forkserver")


_pool_validator: RuleValidator | None = None


def _start_pool_process(fields: FieldCatalogue, master_pid: int) -> None:
    from ttp_core.rules.validator import RuleValidator  # preloaded by the forkserver

    global _pool_validator  # noqa: PLW0603 - one validator per pool process
    _pool_validator = RuleValidator(fields=fields)
    threading.Thread(
        target=_exit_with_master, args=(master_pid,), name="orphan-watch", daemon=True
    ).start()


def _exit_with_master(master_pid: int) -> None:
    """End this validation process once the master is gone.

    A master killed with SIGKILL never shuts its pool down, and an idle pool process blocks
    on its task queue, so without this it would outlive the master for good (about 80 MB
    each, a pool per kill). The parent is no help: it is the forkserver, which waits for its
    children to let go of the pipe that tells it the master is gone."""
    try:
        handle = os.pidfd_open(master_pid)
    except ProcessLookupError:
        os._exit(0)
    except OSError:  # a kernel without pidfd: poll the master's /proc entry instead
        while _alive(master_pid):
            time.sleep(_ORPHAN_CHECK_S)
        os._exit(0)
    select.select([handle], [], [])  # readable once the master has exited
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; its parent just has not looked


def _validate_chunk(root: str, rels: list[str]) -> list[tuple[str, FileVerdict]]:
    assert _pool_validator is not None, "pool processes start with _start_pool_process"
    validator = _pool_validator
    return [(rel, FileVerdict.of(validator.validate_file(Path(root, rel), rel))) for rel in rels]


class ValidationPool:
    """Validates batches of rule files: small ones here, large ones on all cores."""

    def __init__(self, validator: RuleValidator) -> None:
        self.validator = validator
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        """Stop the validation processes, if any were started."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def validate(self, root: Path, rels: list[str]) -> dict[str, FileVerdict]:
        """The verdict of each file `rels` names (relative to `root`). Blocking: call it
        from a worker thread."""
        cores = _pool_cores()
        if len(rels) < POOL_THRESHOLD or cores < 2:
            return self._here(root, rels)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=cores,
                mp_context=_context(),
                initializer=_start_pool_process,
                initargs=(self.validator.fields, os.getpid()),
            )
        size = -(-len(rels) // (cores * _CHUNKS_PER_PROCESS))
        chunks = [rels[i : i + size] for i in range(0, len(rels), size)]
        try:
            futures = [self._pool.submit(_validate_chunk, str(root), chunk) for chunk in chunks]
            return {rel: verdict for future in futures for rel, verdict in future.result()}
        except BrokenProcessPool:
            _log.exception("validation process pool broke; validating in this process")
            self.close()
            return self._here(root, rels)

    def _here(self, root: Path, rels: list[str]) -> dict[str, FileVerdict]:
        return {rel: FileVerdict.of(self.validator.validate_file(root / rel, rel)) for rel in rels}


__all__ = ["POOL_THRESHOLD", "FileVerdict", "RuleFacts", "ValidationPool", "start_early"]
