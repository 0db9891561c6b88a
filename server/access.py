"""What the access log and metrics learn about one request while it is served."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .guard import Outcome


@dataclass(slots=True)
class RequestRecord:
    """Filled by handlers and the relay; read once by the access log when the request ends."""

    started: float
    route: str = "unmatched"
    model: str | None = None
    key: str | None = None  # the gateway key's name, never the key
    malformed_chunks: int = 0
    stream: bool | None = None
    response_status: int | None = None
    outcome: Outcome | None = None
    error_code: str | None = None
    error_param: str | None = None
    client: str | None = None
    # True when another worker forwarded this request here (worker_proxy.py) and this one logs it.
    via_worker: bool = False
    # Set when another worker served the request (worker_proxy.py): that worker logs and counts it.
    forwarded_to: int | None = None
    first_token_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    chunks_relayed: int = 0
    heartbeats: int = 0
    # The body's bytes held against the process's budget (body_budget.py), given back when the
    # request ends; 0 once a browser stream took them over (it holds the prompt until it ends).
    body_held: int = 0
    # One entry per upstream attempt: {"upstream", "model", "status", "ms"}, and "request_id" when the
    # upstream named its own id of the request; the last one answered.
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # The upstream's own id of the attempt on its way, by upstream name, until the attempt is noted.
    upstream_request_ids: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def ttft_ms(self) -> float | None:
        """Milliseconds from the request's arrival to the first token written, if any was."""
        if self.first_token_at is None:
            return None
        return round((self.first_token_at - self.started) * 1000, 2)

    def usage_for_log(self) -> dict[str, Any] | None:
        """The upstream's usage when it sent one, else the completion chunks Sluice relayed."""
        if self.usage is not None:
            return {**self.usage, "counted_by": "upstream"}
        if self.stream and self.outcome is not None:
            return {"completion_tokens": self.chunks_relayed, "counted_by": "sluice"}
        return None
