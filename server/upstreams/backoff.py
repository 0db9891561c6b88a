"""When to retry an upstream failure, and how long to wait first.

Retried (before the first content byte only): connection failures and resets, an error event or an
end before the first token, 408, 429, 500, 502, 503, 504 and 529. Never another 4xx: the request
itself is wrong, and `context_length_exceeded` or `content_policy_violation` would only repeat. Nor
a 429 `insufficient_quota` on the same upstream: its account's quota is spent.
A silent upstream (no headers, no first token in time) and refused credentials are not retried on
the same upstream: the next candidate is tried instead.

The wait honours the upstream's `Retry-After` / `retry-after-ms` when it fits the request's retry
budget; otherwise full jitter, uniform in [0, min(4 s, 0.25 s * 2^n)].
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import NEVER_RETRIED_CODES, UpstreamError

RETRYABLE_REASONS = frozenset(
    {"connect", "reset", "error_event", "upstream_timeout", "408", "429", "500", "502", "503", "504", "529"}
)
# Failures after which the same upstream is not asked again, but another candidate may be.
NEXT_CANDIDATE_REASONS = frozenset({"header_timeout", "first_token_timeout", "401", "403", "malformed_reply"})
# 4xx codes that a fallback model may rescue.
CONTEXT_WINDOW_CODE = "context_length_exceeded"

BASE_DELAY = 0.25
MAX_DELAY = 4.0
# Never two attempts at one upstream this soon after its 429.
RATE_LIMIT_SPACING = 1.5


def retryable(error: UpstreamError) -> bool:
    """True when the same request may be sent again to the same upstream."""
    return error.reason in RETRYABLE_REASONS and error.code not in NEVER_RETRIED_CODES


def tries_next_candidate(error: UpstreamError) -> bool:
    """True when another upstream or model may still answer (retryable or not the request's fault)."""
    return error.reason in RETRYABLE_REASONS or error.reason in NEXT_CANDIDATE_REASONS


def jitter(retry: int, rng: random.Random) -> float:
    """Full jitter for retry number `retry` (0 for the first)."""
    return rng.uniform(0.0, min(MAX_DELAY, BASE_DELAY * 2**retry))


@dataclass
class RetryBudget:
    """The seconds one request may still spend waiting between attempts."""

    seconds: float
    rng: random.Random = field(default_factory=random.Random)
    spent: float = 0.0

    @property
    def left(self) -> float:
        """Seconds still available."""
        return max(0.0, self.seconds - self.spent)

    def delay_for(self, error: UpstreamError, retry: int) -> float | None:
        """Seconds to wait before retrying after `error`, or None when that would overrun the budget."""
        wanted = error.retry_after
        if wanted is None:
            wanted = jitter(retry, self.rng)
            if error.reason == "429":
                wanted = max(wanted, RATE_LIMIT_SPACING)
        elif error.reason == "429":
            wanted = max(wanted, RATE_LIMIT_SPACING)
        if wanted > self.left:
            return None
        return wanted

    def spend(self, seconds: float) -> None:
        """Count a wait against the budget."""
        self.spent += seconds
