"""How the console's middleware answers a request it refuses (rendered by the app)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ErrorPage"]

ErrorPage = Callable[[Request, int, str], Response]
"""``(request, status, message) -> response``: the error page, saying no more than ``message``."""
