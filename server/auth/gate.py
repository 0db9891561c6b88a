"""A request's share of its key's limits, and the answer when a limit refuses it.

A `Lease` holds what a request took from its key's limits (one stream slot, reserved tokens)
and gives it back once, when the request ends, settling the tokens with the real usage; it keeps the
decision of each take, so that each part goes back where, and in the epoch, it was counted. A
detached browser stream takes the lease over from the request that started it. While it is held,
the key's ring knows of it: a reload that revokes the key ends the request through it (`revoke`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..errors import RateLimitedError
from ..validation import requested_choices
from .gateway_keys import GatewayKey, KeyRing
from .limits import Decision, Exceeded, LimitStore, rate_limit_headers

# Bytes of the request body per token for the prompt estimate: OpenAI's rule of thumb of 4
# characters a token for English text.
BYTES_PER_TOKEN = 4

_MESSAGES = {
    Exceeded.REQUESTS: "Rate limit reached for requests per minute on key {name!r}; retry after {retry}s.",
    Exceeded.TOKENS: "Rate limit reached for tokens per minute on key {name!r}; retry after {retry}s.",
    Exceeded.STREAMS: "Key {name!r} has as many live requests as it may; retry when one ends.",
}


class Lease:
    """What one request took from its key's limits, given back once when it ends."""

    def __init__(
        self, store: LimitStore, key: GatewayKey, ring: KeyRing | None = None, slot: Decision | None = None
    ) -> None:
        """`ring`: the key's ring, which holds the lease until it is released (see `revoke`).

        `slot`: the decision of the take that took the request's stream slot (`take_limits`).
        """
        self._store = store
        self.key = key
        self._ring = ring
        self.reserved_tokens = 0
        self.prompt_estimate = 0
        self._streams = 1
        self._released = False
        self.transferred = False
        self.revoked = False
        self._end: Callable[[], None] | None = None
        # The take of each part, which its give-back names: where it was counted, and in which epoch.
        self._slot = slot
        self.last_decision: Decision | None = None  # the reservation's; also for the response's headers

    def end_with(self, end: Callable[[], None]) -> None:
        """Call `end` (it stops the request's stream) if the key is revoked while the lease is held; now if it was."""
        self._end = end
        if self.revoked:
            end()

    def revoke(self) -> None:
        """The key was removed or rotated (KeyRing.adopt): end the request, or have it end once it says how."""
        self.revoked = True
        if self._end is not None:
            self._end()

    async def reserve(self, body: dict[str, Any]) -> Decision | None:
        """Reserve `body`'s estimate on the key's tpm; the refusing decision, or None when reserved.

        The estimate is the prompt plus the completion's `max_tokens`, or the key's
        `completion_reserve` when the request sets none, for each of its `n` choices (a limit is
        per choice): reserving the prompt alone, or one choice of 64, let a burst overrun tpm many
        times over before any of it settled. The prompt is the whole body as it goes upstream (4
        bytes a token), not its `messages` alone: the upstream reads and bills `tools`,
        `functions`, `response_format`, `prediction` and the rest too, and a prompt moved there
        was neither reserved nor, when the stream ended without usage, charged.

        An estimate over the key's whole tpm (a tpm below `completion_reserve`) is taken whole from a
        full bucket, which stays in debt until the request settles: its 429s say when the bucket is
        full again (Retry-After, past a minute while the debt lasts), and a retry then goes. Capped
        at tpm, the next request could start while this one may still use the rest; refused outright
        (OpenAI's "request too large"), no request without max_tokens could ever pass on such a key.
        """
        if not self.key.limits.tpm:
            return None
        prompt = len(orjson.dumps(body)) // BYTES_PER_TOKEN
        most = [body.get(name) for name in ("max_completion_tokens", "max_tokens")]
        completion = (max(map(_token_limit, most)) or self.key.limits.completion_reserve) * requested_choices(body)
        decision = await self._store.take(
            self.key.name, self.key.limits, requests=0, tokens=prompt + completion, streams=0
        )
        if not decision.allowed:
            return decision
        self.last_decision = decision
        self.prompt_estimate = prompt
        self.reserved_tokens = prompt + completion
        return None

    async def release(
        self, usage: dict[str, Any] | None, relayed_tokens: int = 0, *, answered_unseen: bool = False
    ) -> None:
        """Give back the stream slot, and the reserved tokens the request did not use.

        Without usage, the request is charged its prompt and the tokens relayed; `answered_unseen`
        (a completion whose client left while an upstream worked on it: the upstream may have
        generated it all, and a provider bills it) charges the whole reservation instead.
        Charged its prompt alone, a key could run requests past its tpm by leaving each just before
        its answer.
        """
        if self._released:
            return
        self._released = True
        self._end = None  # the stream it stops is over
        if self._ring is not None:
            self._ring.let_go(self.key, self)
        used = _total_tokens(usage)
        if used is None and answered_unseen:
            used = self.reserved_tokens
        elif used is None:
            used = self.prompt_estimate + relayed_tokens if self.reserved_tokens else 0
        await self._store.give_back(
            self.key.name,
            self.key.limits,
            tokens=self.reserved_tokens - used,
            streams=self._streams,
            slot=self._slot,
            reservation=self.last_decision,
        )


def rate_limited(key: GatewayKey, decision: Decision) -> RateLimitedError:
    """The 429 for a refused take, with Retry-After and OpenAI's rate-limit headers."""
    assert decision.exceeded is not None
    headers = rate_limit_headers(decision)
    message = _MESSAGES[decision.exceeded].format(name=key.name, retry=headers["Retry-After"])
    error = RateLimitedError(message, headers=headers)
    error.type = str(decision.exceeded)
    return error


def _token_limit(value: Any) -> int:
    """A request's `max_tokens` as a number of tokens; 0 when absent or not a number."""
    # `5000.0` is an integer to JSON Schema and to an upstream: counting it as none let a request
    # past the up-front reservation.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def _total_tokens(usage: dict[str, Any] | None) -> int | None:
    if not usage:
        return None
    total = usage.get("total_tokens")
    return total if isinstance(total, int) else None
