"""Hold back rule deletes when the rules directory vanishes (docs/operations.md).

An unmounted volume, a ConfigMap that is briefly empty, `rm -rf` of the wrong directory or a
root directory replaced by an empty one all look, file by file, like rules being deleted.
Publishing those deletes would switch detection off fleet-wide. So before a batch is synced
the master asks this guard, which holds the batch back (no delete is committed or published;
workers keep the last good rule set) when

- the rules directory itself is missing: held for as long as it is missing; or
- the files of more than half of the live rules, and of more than a few, are missing (and
  the files that appeared cannot account for them as moves): held until the files return,
  or until the condition has lasted ``confirm_s`` seconds, which confirms it as intended.

When the hold ends the caller rescans the whole tree: files that came back unchanged publish
nothing, and whatever changed while the batches were held is picked up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final

from ttp_core.rules.validator import iter_rule_files
from ttp_master import metrics
from ttp_master.db.repository import Catalog

_log = logging.getLogger(__name__)

FEW_RULES: Final = 5
"""Deleting this many rules at once is never held, whatever share of the set it is."""


class Verdict(Enum):
    """What the caller does with the batch in hand."""

    SYNC = "sync"
    """Sync the batch as it is."""
    RESCAN = "rescan"
    """A hold just ended: sync the whole tree instead of the batch."""
    HOLD = "hold"
    """Commit nothing; ask again later (`holding` is set)."""


@dataclass(frozen=True)
class Hold:
    """Deletes being held back, and why."""

    reason: str
    """`root-missing` or `mass-delete`."""
    missing: int
    """Live rules whose file is missing."""
    live: int
    since: float
    """Monotonic time the condition was first seen."""

    def describe(self, confirm_s: float) -> str:
        if self.reason == "root-missing":
            return (
                f"rules directory missing: holding every rule ({self.live}) until it returns;"
                " no delete is published"
            )
        return (
            f"files of {self.missing} of {self.live} rules are missing: holding their deletes"
            f" until the files return or the condition has lasted {confirm_s:g} s"
        )


class MassDeleteGuard:
    """Decides, batch by batch, whether vanished rule files may be published as deletes."""

    def __init__(
        self,
        root: Path,
        confirm_s: float,
        *,
        few: int = FEW_RULES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.confirm_s = confirm_s
        self.few = few
        self._clock = clock
        self.holding: Hold | None = None
        self.missing = 0
        """Live rules whose file was missing at the last `assess`."""

    def status(self) -> str | None:
        """What is held and why, for probes and logs; None when nothing is held."""
        return None if self.holding is None else self.holding.describe(self.confirm_s)

    def assess(self, catalog: Catalog) -> Verdict:
        """Look at the tree as it is now against the rules `catalog` holds."""
        live = [known for known in catalog.rules.values() if not known.deleted]
        if not self.root.is_dir():
            self.missing = len(live)
            return self._hold("root-missing", len(live), len(live))
        missing = sum(1 for known in live if not (self.root / known.source_path).is_file())
        self.missing = missing
        if self._tolerable(missing, len(live)) or self._tolerable(
            missing - self._unclaimed_files(catalog), len(live)
        ):
            return self._release("the files are back")
        verdict = self._hold("mass-delete", missing, len(live))
        assert self.holding is not None
        if self._clock() - self.holding.since >= self.confirm_s:
            _log.warning(
                "files of %d of %d rules have been missing for %g s: deleting them",
                missing,
                len(live),
                self.confirm_s,
                extra={"missing": missing, "live": len(live)},
            )
            return self._release(None)
        return verdict

    def _tolerable(self, deletes: int, live: int) -> bool:
        return deletes <= self.few or 2 * deletes <= live

    def _unclaimed_files(self, catalog: Catalog) -> int:
        """Rule files no live rule is defined by: each may carry a moved rule on."""
        count = 0
        for path in iter_rule_files(self.root):
            try:
                rel = path.relative_to(self.root).as_posix()
            except ValueError:
                continue
            if catalog.owner_of(rel) is None:
                count += 1
        return count

    def _hold(self, reason: str, missing: int, live: int) -> Verdict:
        current = self.holding
        if current is None or current.reason != reason:
            # A new condition (or the root back but empty) starts its own confirmation clock.
            self.holding = Hold(reason, missing, live, self._clock())
            _log.warning("%s", self.holding.describe(self.confirm_s), extra={"reason": reason})
        elif current.missing != missing or current.live != live:
            self.holding = Hold(reason, missing, live, current.since)
        metrics.HELD_DELETES.set(missing)
        return Verdict.HOLD

    def _release(self, why: str | None) -> Verdict:
        if self.holding is None:
            return Verdict.SYNC
        if why is not None:
            _log.warning("rule deletes no longer held: %s; rescanning", why)
        self.holding = None
        metrics.HELD_DELETES.set(0)
        return Verdict.RESCAN
