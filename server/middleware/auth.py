"""Require a gateway key on every chat route and take each request's share of its key's limits.

With no keys configured, every route stays open (only a /metrics key, if set, is checked).
With keys, chat routes and model lists need one, as `Authorization: Bearer KEY`, `api-key` or
`x-api-key`; EventSource routes may carry a browser token (`?token=`) instead. Probes, the demo
page and CORS preflights stay open. A request that starts a generation takes one request and
one stream slot from its key's limits, given back (tokens settled) when it ends. The chain runs
`admit` (the key) after the connection cap and before the body is read, `take_limits` once the body
is in, and `settle` once the handler is done.

Handlers use the helpers at the end: the key's models, its token reservation, and handing the
lease to a detached stream.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from aiohttp import web

from ..access import RequestRecord
from ..auth.gate import Lease, rate_limited
from ..auth.gateway_keys import GatewayKey, presented_key
from ..auth.limits import Decision, rate_limit_headers
from ..auth.tokens import ONE_STEP_SCOPE
from ..errors import AuthenticationError, KeyRevokedError, ModelNotFoundError, RateLimitedError
from ..guard import Outcome, StreamGuard
from ..keys import (
    GATEWAY_KEY,
    KEYRING,
    LEASE,
    LIMITS,
    METRICS,
    MODELS,
    RATE_LIMITS,
    TOKEN_BEARING,
    TOKENS,
)
from ..streams.resume import resume_point


class Access(Enum):
    """What a route requires."""

    OPEN = "open"
    METRICS = "metrics"
    KEY = "key"
    GENERATE = "generate"


# (method, route) -> what it requires; any route not listed is open (probes, the page, 404s).
_ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/metrics"): Access.METRICS,
    # The dashboard shows what /metrics shows: closed by the same key.
    ("GET", "/dashboard/feed"): Access.METRICS,
    ("GET", "/models"): Access.KEY,
    ("GET", "/v1/models"): Access.KEY,
    ("GET", "/v1/models/{model_id}"): Access.KEY,
    ("POST", "/chat"): Access.GENERATE,
    ("POST", "/chat/stream"): Access.GENERATE,
    ("POST", "/v1/chat/completions"): Access.GENERATE,
    ("POST", "/chat/streams"): Access.GENERATE,
    ("POST", "/chat/stream/token"): Access.KEY,
    ("GET", "/chat/streams/{stream_id}"): Access.KEY,
    ("DELETE", "/chat/streams/{stream_id}"): Access.KEY,
    ("GET", "/chat/stream"): Access.GENERATE,
}

ONE_STEP = "/chat/stream"

_MISSING = "Missing gateway key: send it as 'Authorization: Bearer KEY' (or 'api-key' / 'x-api-key')."
_WRONG = "Incorrect gateway key provided."
# /metrics and the dashboard's feed take the metrics key (auth.metrics_key_sha256), never a gateway key.
_METRICS_MISSING = "Missing metrics key: send it as 'Authorization: Bearer KEY' (or 'api-key' / 'x-api-key')."
_METRICS_WRONG = "Incorrect metrics key provided (a gateway key does not open /metrics)."
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sluice"'}


def admit(request: web.Request, record: RequestRecord, app: web.Application) -> GatewayKey | None:
    """401 without a valid key or token; else the key whose limits the request takes from, if any.

    The chain reads the body after this, then takes the limits (`take_limits`): a body that is slow
    to come holds none of the key's requests or stream slots.
    """
    ring = app[KEYRING]
    if not ring.enabled and not ring.metrics_closed:
        # Neither gateway keys nor a /metrics key (read per request: SIGHUP may bring either):
        # every route is open, and the route's requirement need not be looked up.
        return None
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    # HEAD is a GET without its body: it needs what the GET needs.
    method = "GET" if request.method == "HEAD" else request.method
    access = _ROUTES.get((method, route), Access.OPEN)
    if access is Access.OPEN:
        return None
    if access is Access.METRICS:
        if not ring.opens_metrics(presented_key(request) or ""):
            message = _METRICS_WRONG if presented_key(request) else _METRICS_MISSING
            raise AuthenticationError(message, headers=_CHALLENGE)
        return None
    if not ring.enabled:
        return None
    key = _authenticate(request)
    request[GATEWAY_KEY] = key
    record.key = key.name
    if access is not Access.GENERATE or _resumes(request, method, route):
        return None
    return key


async def take_limits(request: web.Request, key: GatewayKey) -> Lease:
    """429 over `key`'s limits; else the lease of the request and stream slot taken from them.

    The caller settles the lease (`settle`) once the handler is done.
    """
    store, ring = request.app[LIMITS], request.app[KEYRING]
    decision = await store.take(key.name, key.limits, requests=1, tokens=0, streams=1)
    if not decision.allowed:
        raise _refuse(request, key, decision)
    request[RATE_LIMITS] = decision
    lease = Lease(store, key, ring, decision)
    if not ring.hold(key, lease):
        # Revoked by a reload while the body was read: what it took goes back, and it goes no further.
        await lease.release(None)
        raise KeyRevokedError()
    request[LEASE] = lease
    return lease


def _resumes(request: web.Request, method: str, route: str) -> bool:
    """True for a reconnect of the one-step GET, which reads a stream its first request paid for.

    Only that route, and only with an id a resume accepts (header or parameter): on any other
    route the header means nothing, and an empty one starts a new stream, so neither skips the
    key's limits.
    """
    return method == "GET" and route == ONE_STEP and resume_point(request) is not None


async def settle(lease: Lease, record: RequestRecord) -> None:
    """Give back what the request took, with the tokens it used, unless a detached stream took the lease over.

    A non-streaming request whose client left while an upstream worked on it is charged its whole
    reservation (`Lease.release`): a provider goes on generating a completion whose client left,
    and bills it. A stream is charged its prompt and what was relayed: its upstream is closed as its
    client leaves, and a stream request stops generating then (reasoning a model did before its
    first token goes uncounted). A client that left during a wait between attempts, when no
    upstream was working, is charged its prompt.
    """
    if not lease.transferred:
        answered_unseen = (
            record.stream is False
            and record.usage is None
            and record.outcome is Outcome.CLIENT_DISCONNECTED
            and bool(record.attempts)
            and record.attempts[-1].get("status") == "cancelled"
        )
        await lease.release(record.usage, record.chunks_relayed, answered_unseen=answered_unseen)


def _authenticate(request: web.Request) -> GatewayKey:
    """The key the request presents, in a header or, on EventSource routes, as a browser token."""
    ring = request.app[KEYRING]
    presented = presented_key(request)
    if presented is not None:
        key = ring.find(presented)
        if key is None:
            raise AuthenticationError(_WRONG, headers=_CHALLENGE)
        return key
    token = request.query.get("token")
    scope = _token_scope(request)
    if token is None or scope is None:
        raise AuthenticationError(_MISSING, headers=_CHALLENGE)
    request[TOKEN_BEARING] = True
    key = request.app[TOKENS].key_for(token, scope, ring)
    if key is None:
        raise AuthenticationError(
            "The browser token is invalid, expired or for another stream; ask for a new one.",
            code="invalid_token",
            headers=_CHALLENGE,
        )
    return key


def _token_scope(request: web.Request) -> str | None:
    """What a token must be scoped to on this route; None where tokens are not accepted."""
    if "stream_id" in request.match_info:
        return request.match_info["stream_id"]
    if request.method == "GET" and request.path == "/chat/stream":
        return ONE_STEP_SCOPE
    return None


def add_key_headers(request: web.Request, response: web.StreamResponse) -> None:
    """OpenAI's rate-limit headers on a keyed response; a token-bearing one kept out of caches and Referers."""
    decision = request.get(RATE_LIMITS)
    if decision is not None:
        response.headers.update(rate_limit_headers(decision))
    if request.get(TOKEN_BEARING):
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"


def request_key(request: web.Request) -> GatewayKey | None:
    """The key the request was authenticated with; None while auth is off."""
    return request.get(GATEWAY_KEY)


def check_model_for(request: web.Request, name: str, *, listed_at: str = "/models") -> str:
    """The real model `name` stands for (aliases resolved); 404 model_not_found unless it is served
    and the request's gateway key may use it.

    A model outside the key's list gets the same answer as an unknown one: a key learns nothing
    about other keys' models.
    """
    app = request.app
    model = app[MODELS].resolve(name, listed_at=listed_at)
    key = request.get(GATEWAY_KEY) if app[KEYRING].enabled else None  # see reserve_tokens
    if key is not None and not (key.allows(model) or key.allows(name)):
        raise ModelNotFoundError(
            f"The model {name[:200]!r} is not available; GET {listed_at} lists the models.", param="model"
        )
    return model


def visible_models(request: web.Request) -> tuple[str, ...]:
    """The models and aliases the request's gateway key may use (all of them without auth)."""
    catalog = request.app[MODELS]
    names = tuple(catalog.names())
    key = request.get(GATEWAY_KEY)
    if key is None:
        return names
    return tuple(m for m in names if key.allows(m) or key.allows(catalog.aliases.get(m, m)))


def default_model(request: web.Request) -> str:
    """The model a request naming none gets: the gateway's default, or, when the request's key may
    not use it, the first model the key may use (in the order `visible_models` lists them).

    A key with none of the served models keeps the gateway's default, which it is refused (404).
    """
    catalog = request.app[MODELS]
    default = catalog.default
    key = request.get(GATEWAY_KEY) if request.app[KEYRING].enabled else None  # see reserve_tokens
    if key is None or key.allows(default) or key.allows(catalog.aliases.get(default, default)):
        return default
    return next(iter(visible_models(request)), default)


async def reserve_tokens(request: web.Request, body: dict[str, Any]) -> None:
    """Reserve the prompt estimate plus the body's max tokens on the key's tpm; 429 when over it."""
    # Without keys no request holds a lease: no lookup, which would raise and catch a KeyError.
    lease = request.get(LEASE) if request.app[KEYRING].enabled else None
    if lease is None:
        return
    refused = await lease.reserve(body)
    if refused is not None:
        raise _refuse(request, lease.key, refused)
    if (taken := lease.last_decision) is not None:
        request[RATE_LIMITS] = taken


def end_if_revoked(request: web.Request, guard: StreamGuard) -> None:
    """Have `guard` end the request's stream (`key_revoked`) if its gateway key is revoked or rotated meanwhile."""
    lease = request.get(LEASE)
    if lease is not None:
        lease.end_with(guard.revoke)


def take_lease(request: web.Request) -> Lease | None:
    """Take the request's lease over (a detached stream settles it when it ends)."""
    lease = request.get(LEASE)
    if lease is not None:
        lease.transferred = True
    return lease


def _refuse(request: web.Request, key: GatewayKey, decision: Decision) -> RateLimitedError:
    metrics = request.app[METRICS]
    metrics.child(metrics.rate_limited, key.name, str(decision.exceeded)).inc()
    return rate_limited(key, decision)
