"""The cyclic garbage collector's process-wide state, put back after a test changed it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_restored() -> Iterator[None]:
    """On exit: nothing frozen any more, and the collector enabled or disabled as on entry."""
    enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        else:
            gc.disable()
