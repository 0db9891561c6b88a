"""The request body bytes one process holds at once, bounded (`server.max_body_bytes_held`).

A body is held for as long as its request runs: a stream keeps its prompt for retries and
continuation. A browser stream started with `POST /chat/streams` holds it until the stream ends,
past the request's 201 (the stream registry gives it back). `max_body_bytes` bounds one body;
this bounds them all, so that many large bodies at once (a burst of image uploads, or a client set
on exhausting memory) meet 503 `overloaded` before they are read, rather than the process's
memory. One body is always let in when none is held, so a limit below `max_body_bytes` never
refuses every large body for good.
"""

from __future__ import annotations

from .errors import ServiceUnavailableError


class BodyBudget:
    """Bytes of request bodies held by the requests running in this process."""

    __slots__ = ("held", "limit", "retry_after")

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.held = 0

    def take(self, size: int, mine: int = 0) -> int:
        """Hold `size` bytes more, and return it; 503 `overloaded` with Retry-After when past the limit.

        `mine`: what the same body holds already (one read as it comes): held alone, it goes on.
        """
        if self.held > mine and self.held + size > self.limit:
            raise ServiceUnavailableError(
                "Sluice holds too many request bodies right now; retry shortly.",
                code="overloaded",
                headers={"Retry-After": str(self.retry_after)},
            )
        self.held += size
        return size

    def give_back(self, size: int) -> None:
        """The request holding `size` bytes ended."""
        self.held -= size
