"""Static configuration of one simulator app: default pacing, models, auth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MODELS: tuple[str, ...] = ("sluice-sim-1", "sluice-sim-1-mini")


@dataclass(frozen=True, slots=True)
class Pace:
    """Default pacing of a reply; a request may override each field.

    ttft_ms: wait before the first content token.
    gap_ms: wait between consecutive content tokens.
    tokens: number of content tokens in a generated reply.
    """

    ttft_ms: float = 0.0
    gap_ms: float = 0.0
    tokens: int = 16

    def __post_init__(self) -> None:
        if self.ttft_ms < 0 or self.gap_ms < 0 or self.tokens < 0:
            raise ValueError(f"Pace values must be non-negative: {self!r}")


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """Everything fixed at app creation time."""

    defaults: Pace
    models: tuple[str, ...]
    api_key: str | None

    @classmethod
    def build(cls, defaults: Pace | None, models: Sequence[str], api_key: str | None) -> SimulatorSettings:
        """Normalise the public constructor arguments."""
        return cls(defaults or Pace(), tuple(models), api_key or None)
