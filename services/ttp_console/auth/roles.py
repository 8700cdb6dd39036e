"""What each role may do: viewers look, operators also change rule state."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request

from ttp_console.context import ConsoleUser

__all__ = ["current_user", "require_operator"]


def current_user(request: Request) -> ConsoleUser:
    """The verified user of ``request``; 401 when there is none (a public path)."""
    user = getattr(request.state, "user", None)
    if not isinstance(user, ConsoleUser):
        raise HTTPException(401, "Log in first.")
    return user


def require_operator(request: Request) -> ConsoleUser:
    """The user of ``request`` if they are an operator; ``HTTPException(403)`` otherwise.

    Every endpoint that changes state calls this first: hiding the controls from viewers is
    a courtesy, this check is the rule.
    """
    user = current_user(request)
    if not user.can_change_state:
        raise HTTPException(403, "Only operators may change rule state.")
    return user
