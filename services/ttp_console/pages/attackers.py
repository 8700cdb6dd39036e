"""One attacker's techniques, and the attackers seen most recently."""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from ttp_console.pages.common import console, render
from ttp_console.tag_store import MAX_ID_CHARS

__all__ = ["attacker_page", "attackers_page"]

RECENT: Final = 100


async def attacker_page(request: Request) -> Response:
    """``/attackers/{attacker_uuid}``: techniques observed for one attacker, with counts and
    the highest confidence, since the console started holding it."""
    context = console(request)
    attacker_uuid = str(request.path_params["attacker_uuid"])[: MAX_ID_CHARS + 1]
    view = context.tags.attacker(attacker_uuid)
    stats = context.tags.stats()
    return render(
        request,
        "attacker.html",
        {
            "attacker_uuid": attacker_uuid,
            "view": view,
            "stats": stats,
            "names": {
                t.technique: context.catalogue.technique(t.technique)
                for t in (view.techniques if view else [])
            },
        },
        active_nav="attackers",
        status_code=200 if view is not None else 404,
    )


async def attackers_page(request: Request) -> Response:
    """``/attackers``: the attackers seen most recently, newest first."""
    context = console(request)
    return render(
        request,
        "attackers.html",
        {
            "attackers": [
                context.tags.attacker(uuid) for uuid in context.tags.recent_attackers(RECENT)
            ],
            "stats": context.tags.stats(),
        },
        active_nav="attackers",
    )
