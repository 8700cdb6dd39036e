"""What every page of the console reaches: the wiring the bootstrap hands to the app.

The app keeps one :class:`ConsoleContext` as ``app.state.console``; the auth middleware puts
the logged-in :class:`ConsoleUser` on ``request.state.user``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from starlette.templating import Jinja2Templates

    from ttp_console.rule_feed import RuleFeed
    from ttp_console.settings import ConsoleSettings
    from ttp_console.stream_reader import FeedProgress
    from ttp_console.tag_store import TagStore
    from ttp_core.attack.catalogue import AttackCatalogue
    from ttp_runtime.control_client import ControlClient

ConsoleRole = Literal["viewer", "operator"]
CONSOLE_ROLES: Final[tuple[ConsoleRole, ...]] = ("viewer", "operator")


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """A person the console verified: from its users file, or from a trusted proxy."""

    name: str
    role: ConsoleRole
    email: str | None = None

    @property
    def can_change_state(self) -> bool:
        """Operators disable, clip and clear rules; viewers only look."""
        return self.role == "operator"


@dataclass(slots=True)
class ConsoleContext:
    """The console's adapters, built once by the bootstrap (tests build their own)."""

    settings: ConsoleSettings
    control: ControlClient
    tags: TagStore
    rules: RuleFeed
    catalogue: AttackCatalogue
    templates: Jinja2Templates
    tag_progress: Callable[[], FeedProgress | None]
    """The tag feed's progress (the matrix page says while it is still loading); None
    when no feed fills ``tags``."""
