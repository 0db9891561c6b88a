"""What the auth middleware leaves on a request: the key it presented and the lease on its limits.

A `Lease` holds what a request took from its key's limits (one stream slot, reserved tokens)
and gives it back once, when the request ends, settling the tokens with the real usage. A
detached browser stream takes the lease over from the request that started it.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..errors import RateLimitedError
from ..keys import GATEWAY_KEY, LEASE, LIMITS, METRICS
from .gateway_keys import GatewayKey
from .limits import Decision, Exceeded, LimitStore, rate_limit_headers

# Characters per token for the prompt estimate: OpenAI's rule of thumb for English text.
CHARS_PER_TOKEN = 4

_MESSAGES = {
    Exceeded.REQUESTS: "Rate limit reached for requests per minute on key {name!r}; retry after {retry}s.",
    Exceeded.TOKENS: "Rate limit reached for tokens per minute on key {name!r}; retry after {retry}s.",
    Exceeded.STREAMS: "Key {name!r} has as many live requests as it may; retry when one ends.",
}


class Lease:
    """What one request took from its key's limits, given back once when it ends."""

    def __init__(self, store: LimitStore, key: GatewayKey) -> None:
        self._store = store
        self.key = key
        self.reserved_tokens = 0
        self.prompt_estimate = 0
        self._streams = 1
        self._released = False
        self.transferred = False

    async def release(self, usage: dict[str, Any] | None, relayed_tokens: int = 0) -> None:
        """Give back the stream slot, and the reserved tokens the request did not use."""
        if self._released:
            return
        self._released = True
        used = _total_tokens(usage)
        if used is None:
            used = self.prompt_estimate + relayed_tokens if self.reserved_tokens else 0
        await self._store.give_back(
            self.key.name, self.key.limits, tokens=self.reserved_tokens - used, streams=self._streams
        )


def refuse(request: web.Request, key: GatewayKey, decision: Decision) -> RateLimitedError:
    """The 429 for a refused take, with Retry-After and OpenAI's rate-limit headers."""
    assert decision.exceeded is not None
    metrics = request.app[METRICS]
    metrics.child(metrics.rate_limited, key.name, str(decision.exceeded)).inc()
    headers = rate_limit_headers(decision)
    message = _MESSAGES[decision.exceeded].format(name=key.name, retry=headers["Retry-After"])
    error = RateLimitedError(message, headers=headers)
    error.type = str(decision.exceeded)
    return error


async def reserve_tokens(request: web.Request, body: dict[str, Any]) -> None:
    """Reserve the prompt estimate plus the body's max tokens on the key's tpm; 429 when over it."""
    lease = request.get(LEASE)
    if lease is None or not lease.key.limits.tpm:
        return
    prompt = len(orjson.dumps(body.get("messages"))) // CHARS_PER_TOKEN
    most = [body.get(name) for name in ("max_completion_tokens", "max_tokens")]
    completion = max((n for n in most if isinstance(n, int)), default=0)
    decision = await request.app[LIMITS].take(
        lease.key.name, lease.key.limits, requests=0, tokens=prompt + completion, streams=0
    )
    if not decision.allowed:
        raise refuse(request, lease.key, decision)
    lease.prompt_estimate = prompt
    lease.reserved_tokens = prompt + completion


def take_lease(request: web.Request) -> Lease | None:
    """Take the request's lease over (a detached stream settles it when it ends)."""
    lease = request.get(LEASE)
    if lease is not None:
        lease.transferred = True
    return lease


def request_key(request: web.Request) -> GatewayKey | None:
    """The key the request was authenticated with; None while auth is off."""
    return request.get(GATEWAY_KEY)


def _total_tokens(usage: dict[str, Any] | None) -> int | None:
    if not usage:
        return None
    total = usage.get("total_tokens")
    return total if isinstance(total, int) else None
