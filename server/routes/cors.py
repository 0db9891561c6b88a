"""CORS on every route: answer preflights and mark cross-origin responses by the policy (server/cors.py).

An allowlisted origin is echoed with `Vary: Origin`; `*` is a literal `*`. Preflights (`OPTIONS`
with `Access-Control-Request-Method`) get 200 with what may follow, or 403 naming what is refused:
the origin (`cors_origin_not_allowed`) or the method (`cors_method_not_allowed`). Credentials are never
allowed: Sluice's auth is a header or a token in the URL, never a cookie.

The headers are added by a response hook; should it fail, the client gets the JSON envelope's 500,
not a connection closed without a byte (middleware/hook_failure.py).
"""

from __future__ import annotations

from aiohttp import hdrs, web

from ..cors import CorsPolicy
from ..errors import GatewayError
from ..keys import CORS_POLICY
from ..middleware.errors import render_noted
from ..middleware.hook_failure import hook_failed

ALLOW_HEADERS = "Authorization, Content-Type, api-key, x-api-key, Last-Event-ID, X-Request-ID"
EXPOSE_HEADERS = ", ".join(
    (
        "X-Request-ID",
        "Retry-After",
        "Location",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    )
)
MAX_AGE = "600"


class CorsForbiddenError(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "cors_origin_not_allowed"


def setup_cors_policy(app: web.Application, policy: CorsPolicy) -> None:
    """Answer preflights on every route and mark allowed cross-origin responses."""
    app[CORS_POLICY] = policy
    for resource in list(app.router.resources()):
        if isinstance(resource, web.Resource):
            resource.add_route(hdrs.METH_OPTIONS, preflight)
    app.on_response_prepare.append(add_cors_headers)


async def preflight(request: web.Request) -> web.Response:
    """200 with the allowed methods and headers for an allowed origin and method; 403 naming which is not.

    An `OPTIONS` that is not a preflight (no `Access-Control-Request-Method`) is answered 204 with `Allow`.
    """
    policy = request.app[CORS_POLICY]
    method = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
    resource = request.match_info.route.resource
    methods = _methods(request.app, resource.canonical) if resource is not None else set()
    if method is None:
        return web.Response(status=204, headers={hdrs.ALLOW: ", ".join(sorted(methods | {hdrs.METH_OPTIONS}))})
    allowed = policy.allow_origin(request.headers.get(hdrs.ORIGIN))
    if allowed is None:
        return render_noted(request, CorsForbiddenError("This origin may not call Sluice from a browser."))
    if method not in methods:
        return render_noted(
            request,
            CorsForbiddenError(
                f"{request.path} does not serve {method}; it serves {', '.join(sorted(methods))}.",
                code="cors_method_not_allowed",
            ),
        )
    return web.Response(
        status=200,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: allowed,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(sorted(methods)),
            # What the page asks for (the OpenAI SDKs add their own x-stainless-* headers): the
            # origin is allowed, and a header grants nothing a request without it lacks.
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, ALLOW_HEADERS),
            hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE,
        },
    )


# Sec-Fetch-Site values of a request no page of another origin made: the page itself, or the user
# (a typed URL, a bookmark). Absent: not a browser, or not sent (plain http): `Origin` decides then.
_OWN_SITE = frozenset({"same-origin", "none"})


def refuse_foreign_page(request: web.Request) -> None:
    """403 for a request a page of another site made, unless CORS allows that site's origin.

    For the one-step GET, which starts a generation: it is a simple request, sent by a browser for
    any page (an EventSource, even an `<img>`), and CORS only hides the answer once the generation
    has spent upstream tokens. `Sec-Fetch-Site` says whether the page is of this origin, `Origin`
    which one it is; no `Origin` from another site (an `<img>`) is refused. Browsers send
    `Sec-Fetch-Site` only to https or localhost: over plain http an `Origin` alone is checked (a
    browser sends none on a same-origin GET), and an `<img>` cannot be told from a tool. With
    gateway keys the GET needs a token too; without, `server.cors_origins` is what keeps other
    sites' pages from starting streams.
    """
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get(hdrs.ORIGIN)
    if site in _OWN_SITE or (site is None and origin is None):
        return
    if request.app[CORS_POLICY].allow_origin(origin) is None:
        raise CorsForbiddenError("This origin may not start streams from a browser.")


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Allow an allowed origin to read the response; say the answer depends on Origin.

    Its failure is handled here (hook_failure.py): a wrapper would be one more coroutine per response.
    """
    try:
        _cross_origin_headers(request, response)
    except Exception as exc:
        hook_failed(request, exc, add_cors_headers)


def _cross_origin_headers(request: web.Request, response: web.StreamResponse) -> None:
    policy = request.app[CORS_POLICY]
    if not policy.any_origin:
        response.headers.add(hdrs.VARY, "Origin")
    if request.method == hdrs.METH_OPTIONS:
        return  # a preflight's headers are the preflight handler's
    allowed = policy.allow_origin(request.headers.get(hdrs.ORIGIN))
    if allowed is not None:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSE_HEADERS


def _methods(app: web.Application, path: str) -> set[str]:
    """Every method served on `path` (one path may have several resources)."""
    return {
        route.method
        for resource in app.router.resources()
        if resource.canonical == path
        for route in resource
        if route.method not in (hdrs.METH_OPTIONS, hdrs.METH_ANY)
    }
