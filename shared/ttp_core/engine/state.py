"""Operator state of a rule as the engine applies it (docs/contract.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class StateKind(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    CLIPPED = "clipped"


@dataclass(frozen=True, slots=True)
class RuleState:
    """What an operator set on a rule; `expires_at` is a POSIX timestamp."""

    state: StateKind = StateKind.ENABLED
    confidence_max: float | None = None
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if self.state is StateKind.CLIPPED and (
            self.confidence_max is None or not 0 < self.confidence_max <= 1
        ):
            raise ValueError("a clipped state needs confidence_max in (0, 1]")

    @classmethod
    def of(cls, state: str, confidence_max: float | None, expires_at: datetime | None) -> RuleState:
        """The state a `ttp.rule.state` message names; ValueError when it names none (an
        unknown state, or a clip without a confidence_max in (0, 1])."""
        expires = None if expires_at is None else expires_at.timestamp()
        return cls(StateKind(state), confidence_max, expires)

    def effective(self, now: float) -> StateKind:
        """The state in force at `now`: an expired state counts as enabled."""
        if self.expires_at is not None and now >= self.expires_at:
            return StateKind.ENABLED
        return self.state

    def apply(self, confidence: float, now: float) -> float | None:
        """The confidence to report, or None when the rule must not fire."""
        kind = self.effective(now)
        if kind is StateKind.DISABLED:
            return None
        if kind is StateKind.CLIPPED and self.confidence_max is not None:
            return min(confidence, self.confidence_max)
        return confidence


ENABLED = RuleState()
