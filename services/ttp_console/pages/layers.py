"""ATT&CK Navigator layer downloads (layer format 4.5): rule coverage, and what was observed."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from ttp_console.pages.common import console
from ttp_console.tag_store import parse_window
from ttp_core.attack.navigator import (
    ObservedEntry,
    coverage_layer,
    observed_layer,
)

__all__ = ["coverage_download", "observed_download"]


def _download(layer: dict[str, object], filename: str) -> Response:
    return Response(
        json.dumps(layer, indent=2, ensure_ascii=False) + "\n",
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


async def coverage_download(request: Request) -> Response:
    """``/layers/coverage.json``: score = best confidence of the rules in play per technique,
    comment = their rule ids."""
    context = console(request)
    layer = coverage_layer(context.rules.coverage(), context.catalogue)
    return _download(layer, f"ttp-coverage-{_stamp()}.json")


async def observed_download(request: Request) -> Response:
    """``/layers/observed.json?window=24h``: the techniques tagged in the window."""
    context = console(request)
    window = parse_window(request.query_params.get("window"))
    entries = []
    for technique, count in sorted(context.tags.observed(window, time.time()).items()):
        parent, dot, _ = technique.partition(".")
        entries.append(
            ObservedEntry(parent, technique if dot else None, count.tags, count.best_confidence)
        )
    layer = observed_layer(entries, context.catalogue, window_label=window.value)
    return _download(layer, f"ttp-observed-{window.value}-{_stamp()}.json")
