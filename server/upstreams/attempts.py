"""Route one chat request to an upstream: pools, retries, fallbacks and breakers, before the first token.

For the requested model, then each model of its `fallbacks` chain (or, after a
`context_length_exceeded`, its `context_window_fallbacks` chain):

1. pick an upstream of the model's pool whose breaker lets it through (power of two choices);
2. send; an attempt succeeds once the upstream's first token arrived (streams) or its reply did;
3. on a failure the client did not cause, try another upstream of the pool at once, or the same
   one again after a backoff (backoff.py) while the retry budget lasts, `retries` times at most;
4. a client's own 4xx (400, 404, 413, 422, a content policy refusal) is returned at once.

An attempt that holds a half-open breaker's trial ends it however it ends (breaker.py): its
success closes the breaker, a failure counted against it reopens it, and any other ending (a
client's own 4xx, the client leaving, a hedge winning) frees the trial for the next request.

Every attempt is noted (the access line's `attempts`, `sluice_upstream_attempts_total`) with how it
ended: 200, the upstream's own status (500, not the 502 the client gets), a reason (`reset`,
`header_timeout`...), `hedge_lost` (the other route of a hedge had its first token first) or
`cancelled` (the client left, or a deadline or the drain ended the request first).

A fallback model the request may not use (`allows`, its gateway key's model list) is left out of
both chains, as if it were not configured: a key must not reach a model through a fallback that
it could not ask for.

When no candidate of any model could even be tried because every breaker is open, the answer
is 503 with Retry-After at once. Otherwise the last upstream error is returned.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from ..access import RequestRecord
from ..errors import UpstreamError, UpstreamRateLimitError, UpstreamUnavailableError
from ..metrics import Metrics, count
from ..settings import RoutingSettings
from .backoff import CONTEXT_WINDOW_CODE, RetryBudget, retryable, tries_next_candidate
from .breaker import Breakers, BreakerState
from .client import UpstreamClient
from .failures import retry_after_header
from .hedging import Only, hedged
from .pool import SERVING_CACHE_SIZE, Pool
from .stream import UpstreamStream

log = structlog.get_logger("sluice.routing")

T = TypeVar("T")
# Whether the request may use a model (its gateway key's list); passed as None, it may use any.
Allows = Callable[[str], bool]
Send = Callable[[UpstreamClient, dict[str, Any]], Awaitable[T]]
Sleep = Callable[[float], Coroutine[Any, Any, None]]


class _Hedge:
    """The attempts of a hedged stream's routes still waiting for an answer: (upstream, model, start) by token.

    The losing route is cancelled, not awaited (hedging.py), so its attempt would be noted only after
    the stream's access line was written: `open_stream` notes what is left here the moment the hedge
    ends, and the route, finding its token gone, does not note it again.
    """

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting: dict[object, tuple[UpstreamClient, str, float]] = {}


class Upstream:
    """Every upstream behind one object: open a stream or complete a chat, with the routing above."""

    def __init__(
        self,
        pool: Pool,
        breakers: Breakers,
        routing: RoutingSettings,
        metrics: Metrics,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.breakers = breakers
        self._routing = routing
        self._metrics = metrics
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Whether a model's upstreams can continue a cut stream, by model: asked once per stream.
        self._continues: dict[str, bool] = {}

    def open_stream(
        self,
        body: dict[str, Any],
        request_id: str,
        record: RequestRecord | None = None,
        on_accepted: Callable[[], None] | None = None,
        allows: Allows | None = None,
    ) -> Awaitable[UpstreamStream]:
        """A stream whose first token has arrived, from the first candidate that produced one.

        `on_accepted` is called each time an upstream answers 200, before its first token;
        `allows` keeps out the fallback models the request may not use.
        """

        # Not a coroutine of its own: the attempt awaits the client's directly.
        def send(client: UpstreamClient, attempt_body: dict[str, Any]) -> Awaitable[UpstreamStream]:
            return client.open_stream(attempt_body, request_id, on_accepted, record=record)

        after = self._routing.hedge_after_seconds
        if after <= 0:
            # Without hedging the routing's own coroutine is the stream's: no layer of this one.
            return self._route(body, record, send, allows)
        return self._open_hedged(body, record, send, allows, after)

    async def _open_hedged(
        self,
        body: dict[str, Any],
        record: RequestRecord | None,
        send: Send[UpstreamStream],
        allows: Allows | None,
        after: float,
    ) -> UpstreamStream:
        """`open_stream` with a hedge: a second route starts when the first has no token after `after` s."""
        hedge = _Hedge()

        def route(only: Only | None, busy: set[tuple[str, str]]) -> Awaitable[UpstreamStream]:
            return self._route(body, record, send, allows, only, busy, hedge)

        try:
            stream = await hedged(route, after, self._metrics.hedges.inc)
        except BaseException as exc:
            self._note_unanswered(record, hedge, _unanswered(exc))
            raise
        self._note_unanswered(record, hedge, "hedge_lost")
        return stream

    async def complete(
        self,
        body: dict[str, Any],
        request_id: str,
        record: RequestRecord | None = None,
        allows: Allows | None = None,
    ) -> bytes:
        """A non-streaming reply from the first candidate that gave one (fallbacks as in `open_stream`)."""

        def send(client: UpstreamClient, attempt_body: dict[str, Any]) -> Awaitable[bytes]:
            return client.complete(attempt_body, request_id, record=record)

        return await self._route(body, record, send, allows)

    async def ready(self) -> bool:
        """True while any upstream's breaker would let a request through."""
        for client in self.pool.clients:
            if await self.breakers.state(client.name) is not BreakerState.OPEN:
                return True
        return False

    def continues(self, model: str) -> bool:
        """True when an upstream serving `model` can continue a cut stream (assistant prefill)."""
        found = self._continues.get(model)
        if found is None:
            if len(self._continues) >= SERVING_CACHE_SIZE:
                self._continues.clear()  # models named freely (`models = ["*"]`): stay bounded, as Pool does
            found = self._continues[model] = any(
                client.entry.continuation != "none" for client in self.pool.serving(model)
            )
        return found

    async def open_continuation(
        self,
        body: dict[str, Any],
        text: str,
        request_id: str,
        record: RequestRecord | None = None,
        allows: Allows | None = None,
    ) -> UpstreamStream:
        """Ask an upstream that declares `assistant-prefill` to go on after `text`, the reply so far.

        `allows` keeps out the fallback models the request may not use, as in `open_stream`.
        """
        messages = [*body.get("messages", []), {"role": "assistant", "content": text}]

        def send(client: UpstreamClient, attempt_body: dict[str, Any]) -> Awaitable[UpstreamStream]:
            continued = {**attempt_body, "messages": messages, **client.entry.continuation_body}
            return client.open_stream(continued, request_id, record=record)

        return await self._route(body, record, send, allows, only=lambda client, _: client.entry.continuation != "none")

    async def _route(
        self,
        body: dict[str, Any],
        record: RequestRecord | None,
        send: Send[T],
        allows: Allows | None,
        only: Only | None = None,
        busy: set[tuple[str, str]] | None = None,
        hedge: _Hedge | None = None,
    ) -> T:
        requested = str(body.get("model", ""))
        chain = _chain(requested, self._routing.fallbacks, allows)
        # The request's retry budget, made by the first backoff (_back_off): most requests have none.
        budget: list[RetryBudget] = []
        last_error: UpstreamError | None = None
        index = 0
        try:
            while index < len(chain):
                model = chain[index]
                if index > 0:
                    self._metrics.child(
                        self._metrics.fallbacks, "context_window" if _context(last_error) else "exhausted"
                    ).inc()
                    log.info("upstream_fallback", requested=requested, model=model)
                index += 1
                try:
                    return await self._try_model(model, body, budget, record, send, only, busy, hedge)
                except UpstreamError as error:
                    last_error = error if error.reason != "breaker_open" or last_error is None else last_error
                    if _context(error):
                        more = _chain(model, self._routing.context_window_fallbacks, allows)[1:]
                        chain = chain[:index] + [m for m in more if m not in chain[:index]]
                    elif not tries_next_candidate(error) and error.reason != "breaker_open":
                        raise
            if last_error is not None and last_error.reason != "breaker_open":
                if "retry-after-ms" in last_error.headers:
                    await self._no_sooner_than_reopened(last_error, chain)
                raise last_error
            raise await self._all_open(chain)
        finally:
            # The raised error's traceback holds this frame: a local naming an error would keep
            # them both, and the whole request with them, for the collector.
            last_error = None

    async def _try_model(
        self,
        model: str,
        body: dict[str, Any],
        budget: list[RetryBudget],
        record: RequestRecord | None,
        send: Send[T],
        only: Only | None = None,
        busy: set[tuple[str, str]] | None = None,
        hedge: _Hedge | None = None,
    ) -> T:
        """Try `model` on its pool; raise the last error when the pool gave no answer.

        `only` narrows the candidates; `busy` gathers each (upstream, model) asked so far, kept after
        its attempt ends (a hedge must not ask a pair the route is waiting out: its Retry-After, its
        backoff, its retry count), and `hedge` the attempts without an answer yet (both for hedging).
        """
        serving = self.pool.serving(model)
        candidates = serving if only is None else tuple(client for client in serving if only(client, model))
        attempt_body = body if body.get("model") == model else {**body, "model": model}
        # Until an attempt fails or is skipped every candidate is untried, and the round below is a
        # pick from the whole pool: most requests end with that first attempt, so the retry
        # bookkeeping (tries per upstream) is built only once one does not.
        tries: dict[str, int] | None = None
        errors: dict[str, UpstreamError] = {}
        excluded: set[str] = set()
        breakers = self.breakers
        try:
            while True:
                if tries is None:
                    client = self.pool.pick(candidates)
                    if client is None:
                        raise _no_candidate(model, bool(candidates))
                else:
                    retries = self._routing.retries
                    available = [c for c in candidates if c.name not in excluded and tries[c.name] <= retries]
                    # Spread over the pool first: an upstream is retried only once every other one was tried.
                    fewest = min((tries[c.name] for c in available), default=0)
                    client = self.pool.pick([c for c in available if tries[c.name] == fewest])
                    if client is None:
                        raise _last(errors) or _no_candidate(model, bool(available))
                    retry = tries[client.name]
                    if retry and not await self._back_off(errors[client.name], retry - 1, budget):
                        excluded.add(client.name)
                        continue
                # Both breakers closed (in memory): nothing to await.
                trials = [] if breakers.closed(client.name, model) else await breakers.admit(client.name, model)
                if trials is None:
                    tries = tries if tries is not None else dict.fromkeys((c.name for c in candidates), 0)
                    excluded.add(client.name)
                    continue
                if tries is not None:
                    tries[client.name] += 1
                started = time.perf_counter()
                token: object = None
                if busy is not None:
                    busy.add((client.name, model))
                if hedge is not None:
                    token = object()
                    hedge.waiting[token] = (client, model, started)
                try:
                    result = await send(client, attempt_body)
                except UpstreamError as error:
                    if hedge is not None:
                        # Noted here, once: the verdict below awaits, and a hedge ending meanwhile
                        # must not note this attempt again as lost (open_stream, _Hedge).
                        hedge.waiting.pop(token, None)
                    if tries is None:
                        tries = dict.fromkeys((c.name for c in candidates), 0)
                        tries[client.name] = 1
                    # The upstream's own status (its 500, not the 502 the client is answered with).
                    reason = error.reason
                    self._note(record, client, model, int(reason) if reason.isdigit() else reason, started)
                    # Ends the attempt's trials too, whatever the failure (see breaker.py); shielded
                    # while it holds one, so a client leaving meanwhile (Redis) does not keep it held.
                    verdict = breakers.judge(client.name, model, error, trials)
                    await (asyncio.shield(verdict) if trials else verdict)
                    # Move to the end, so _last() finds the newest.
                    errors.pop(client.name, None)
                    errors[client.name] = error
                    if not tries_next_candidate(error):
                        raise
                    if not retryable(error):
                        excluded.add(client.name)
                    continue
                except BaseException as exc:
                    # Noted before any await: the access line may be written meanwhile. A hedge's
                    # attempt may have been noted already, by open_stream (see _Hedge).
                    if hedge is None or hedge.waiting.pop(token, None) is not None:
                        self._note(record, client, model, _unanswered(exc), started)
                    # No verdict (the client left, a hedge won, a deadline passed): free the trials,
                    # so the next request may be the trial at once.
                    await breakers.end_trials(trials)
                    raise
                finally:
                    if hedge is not None:
                        hedge.waiting.pop(token, None)
                self._note(record, client, model, 200, started)
                if not breakers.settled(client.name, model):
                    closing = breakers.answered(client.name, model)
                    await (asyncio.shield(closing) if trials else closing)
                if record is not None:
                    record.extra["upstream"] = client.name
                    record.extra["served_model"] = model
                return result
        finally:
            errors.clear()  # the raised error's traceback holds this frame: see _route

    async def _back_off(self, error: UpstreamError, retry: int, budgets: list[RetryBudget]) -> bool:
        """Wait before retry number `retry` after `error`; False when the budget cannot cover it.

        `budgets` holds the request's budget once one was made (here, at its first backoff).
        """
        if not budgets:
            budgets.append(RetryBudget(self._routing.retry_budget_seconds, self._rng))
        budget = budgets[0]
        delay = budget.delay_for(error, retry)
        if delay is None:
            return False
        self._metrics.child(self._metrics.retries, error.reason).inc()
        await self._sleep(delay)
        budget.spend(delay)
        return True

    def _note(
        self, record: RequestRecord | None, client: UpstreamClient, model: str, status: object, started: float
    ) -> None:
        ms = round((time.perf_counter() - started) * 1000, 1)
        count(self._metrics.child(self._metrics.attempts, client.name, str(status)))
        if record is not None:
            attempt = {"upstream": client.name, "model": model, "status": status, "ms": ms}
            if record.upstream_request_ids and (upstream_id := record.upstream_request_ids.pop(client.name, None)):
                attempt["request_id"] = upstream_id
            record.attempts.append(attempt)

    def _note_unanswered(self, record: RequestRecord | None, hedge: _Hedge, status: str) -> None:
        """Note the hedge's attempts still waiting, as `status`, now that the hedge is over."""
        waiting = list(hedge.waiting.values())
        hedge.waiting.clear()
        for client, model, started in waiting:
            self._note(record, client, model, status, started)

    async def _no_sooner_than_reopened(self, error: UpstreamError, chain: list[str]) -> None:
        """Raise the wait `error` tells the client to when one of the chain's upstreams lets a request through.

        A client that retries when the upstream said, while Sluice's own breaker still holds that
        upstream (after a 429 for at least RATE_LIMIT_SPACING, with breaker_on_rate_limit on), met
        a 503 from Sluice, and spent one of its SDK's retries on it.
        """
        told = int(error.headers["retry-after-ms"]) / 1000
        reopens = [
            await self.breakers.pair_reopens_in(c.name, model) for model in chain for c in self.pool.serving(model)
        ]
        soonest = min(reopens, default=0.0)
        if soonest > told:
            error.headers.update(retry_after_header(soonest))

    async def _all_open(self, chain: list[str]) -> UpstreamError:
        """The answer when no candidate of the chain would take a request now.

        When each is held only for a rate limit (its upstream's breaker closed, the model's held
        after a 429), that is what the client hears: a 429 with the wait, as from the upstream, so
        code that handles a rate limit (an SDK's RateLimitError) still does. Otherwise a 503.
        """
        waits: list[float] = []
        rate_limited = True
        for model in chain:
            for client in self.pool.serving(model):
                upstream_wait = await self.breakers.reopens_in(client.name)
                wait = await self.breakers.pair_reopens_in(client.name, model)
                rate_limited = rate_limited and upstream_wait == 0 and wait > 0
                waits.append(wait)
        error: UpstreamError
        if rate_limited and waits:
            error = UpstreamRateLimitError(
                "The upstream is rate limiting this model; retry after the time in Retry-After.",
                headers=retry_after_header(min(waits)),
            )
        else:
            error = UpstreamUnavailableError(
                "Every upstream for this model is unavailable right now; retry later.",
                code="upstream_unavailable",
                headers={"Retry-After": str(max(1, math.ceil(min(waits, default=1.0))))},
            )
        error.reason = "breaker_open"
        return error


def _chain(model: str, table: dict[str, tuple[str, ...]], allows: Allows | None) -> list[str]:
    """`model`, then the models of its entry of `table` (or the `*` entry) that `allows` lets through, without repeats.

    `model` itself is not checked: the request's own model was checked at the edge (a 404 there).
    """
    chain = [model]
    if not table:
        return chain  # no fallbacks configured: the common case, nothing to look up
    for other in table.get(model, table.get("*", ())):
        if other not in chain and (allows is None or allows(other)):
            chain.append(other)
    return chain


def _unanswered(failure: BaseException) -> str:
    """How an attempt that got no answer ended: `cancelled` (the request ended first), else `error`."""
    return "cancelled" if isinstance(failure, asyncio.CancelledError) else "error"


def _last(errors: dict[str, UpstreamError]) -> UpstreamError | None:
    return next(reversed(errors.values()), None)


def _context(error: UpstreamError | None) -> bool:
    return error is not None and error.code == CONTEXT_WINDOW_CODE


def _no_candidate(model: str, saturated: bool) -> UpstreamError:
    if saturated:
        error = UpstreamUnavailableError(
            "Every upstream for this model is at its concurrency cap.", code="upstream_saturated"
        )
        error.reason = "saturated"
        return error
    error = UpstreamUnavailableError(
        f"No upstream is available for model {model[:200]!r}.", code="upstream_unavailable"
    )
    error.reason = "breaker_open"
    return error
