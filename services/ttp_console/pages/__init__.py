"""The console's pages: matrix, technique inspector, rules and their state controls, fleet,
live tags, attackers and the ATT&CK Navigator layer downloads.

:func:`page_routes` lists them for the app; every endpoint reads the console's adapters from
``request.app.state.console`` and the logged-in user from ``request.state.user``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from ttp_console.pages.attackers import attacker_page, attackers_page
from ttp_console.pages.fleet import fleet_fragment, fleet_page
from ttp_console.pages.layers import coverage_download, observed_download
from ttp_console.pages.live import close_live_streams, live_page, live_stream
from ttp_console.pages.matrix import matrix_page, technique_page
from ttp_console.pages.rules import rule_page, rules_page, state_clear, state_set

__all__ = ["close_live_streams", "page_routes"]


def page_routes() -> list[BaseRoute]:
    """Every page of the console (the app adds its login routes and static files)."""
    return [
        Route("/", matrix_page, methods=["GET"], name="matrix"),
        Route("/techniques/{technique_id}", technique_page, methods=["GET"], name="technique"),
        Route("/rules", rules_page, methods=["GET"], name="rules"),
        Route("/rules/{rule_id}", rule_page, methods=["GET"], name="rule"),
        Route("/rules/{rule_id}/state", state_set, methods=["POST"], name="rule_state_set"),
        Route(
            "/rules/{rule_id}/state/clear",
            state_clear,
            methods=["POST"],
            name="rule_state_clear",
        ),
        Route("/fleet", fleet_page, methods=["GET"], name="fleet"),
        Route("/fleet/fragment", fleet_fragment, methods=["GET"], name="fleet_fragment"),
        Route("/live", live_page, methods=["GET"], name="live"),
        Route("/live/stream", live_stream, methods=["GET"], name="live_stream"),
        Route("/attackers", attackers_page, methods=["GET"], name="attackers"),
        Route("/attackers/{attacker_uuid:path}", attacker_page, methods=["GET"], name="attacker"),
        Route("/layers/coverage.json", coverage_download, methods=["GET"], name="layer_coverage"),
        Route("/layers/observed.json", observed_download, methods=["GET"], name="layer_observed"),
    ]
