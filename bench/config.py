"""What one load-generator run does: a frozen config that crosses the process boundary as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Api(StrEnum):
    """Which request body and stream markers a run uses."""

    OPENAI = "openai"  # /v1/chat/completions: `messages`, the `sim` body field, `data:` chunks
    NATIVE = "native"  # /chat and /chat/stream: `message` with a `#sim` line, `event: token`


class Shape(StrEnum):
    """How the load generator sends its requests."""

    LOOP = "loop"  # `clients` workers send requests back to back until the window ends
    WAVE = "wave"  # `streams` streams open evenly over `ramp_s`; each is read to its end
    LEAVE = "leave"  # like LOOP, but every client leaves `leave_after_ms` into its stream
    CROWD = "crowd"  # `streams` clients arrive at the same instant and all leave `leave_after_ms` later
    STALL = "stall"  # `streams` clients read the headers, stop reading for `hold_s`, then all leave


@dataclass(frozen=True, slots=True)
class Pace:
    """How the simulated upstream answers: steered per request, see server/simulator/plan.py."""

    tokens: int
    gap_ms: float = 0.0
    ttft_ms: float = 0.0

    def sim_field(self) -> dict[str, float | int]:
        """The `sim` body field of the OpenAI route."""
        return {"tokens": self.tokens, "ttft_ms": self.ttft_ms, "gap_ms": self.gap_ms}

    def directive(self) -> str:
        """The `#sim` line of the native route, whose body has no room for a `sim` field."""
        return f"#sim tokens={self.tokens} ttft_ms={self.ttft_ms:g} gap_ms={self.gap_ms:g}"


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """One run of `python -m bench.loadgen`: where to send what, in which shape, and what to watch."""

    url: str
    api: Api
    stream: bool
    pace: Pace
    shape: Shape
    clients: int = 1
    warmup_s: float = 0.5
    duration_s: float = 5.0
    streams: int = 0
    ramp_s: float = 0.0
    leave_after_ms: float = 0.0
    # STALL: seconds the readers stay stalled; CROWD: how many crowds, one after another.
    hold_s: float = 0.0
    rounds: int = 1
    # LEAVE and CROWD only: the simulator whose records say when each upstream stream closed.
    sim_url: str | None = None
    # Role ("gateway", "upstream") -> pid whose CPU time and RSS the run samples.
    watch: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """The config as one JSON line."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadConfig:
        """Parse `to_json`'s output."""
        raw: dict[str, Any] = json.loads(text)
        raw["api"] = Api(raw["api"])
        raw["shape"] = Shape(raw["shape"])
        raw["pace"] = Pace(**raw["pace"])
        return cls(**raw)
