"""Keep the process within its connection cap: close idle connections for a request over it, else refuse it.

A request on a connection over the cap first closes as many of the longest-open idle connections
(waiting for a request) as it takes, then connections whose client stopped reading their answers;
only when there are not enough of those is it refused with 503 and Retry-After, its own connection
closed.
"""

from __future__ import annotations

from aiohttp import web

from ..connections import close_idle_connections, closing_connections, open_connections
from ..errors import ServiceUnavailableError
from ..keys import CONNECTION_LIMIT, SETTINGS
from .errors import render_noted

# Probes answer even over the cap: an orchestrator must see the process alive and /readyz say why.
_PROBES = frozenset({"/health", "/livez", "/readyz"})


def over_cap(request: web.Request, app: web.Application) -> web.Response | None:
    """The 503 for a request over the cap, its connection then closed so the count goes down; else None.

    `app` is the request's (the chain reads it once for its steps).
    """
    over = open_connections(request) - app[CONNECTION_LIMIT]
    if over <= 0 or request.path in _PROBES:
        return None
    over -= closing_connections(request)
    if over <= 0 or close_idle_connections(request, over) >= over:
        return None
    retry_after = str(app[SETTINGS].server.retry_after)
    response = render_noted(
        request,
        ServiceUnavailableError(
            "Sluice holds as many connections as it may; retry shortly.",
            code="too_many_connections",
            headers={"Retry-After": retry_after},
        ),
    )
    response.force_close()
    request.protocol.close()  # counted as closing from now on (connections.closing_connections)
    return response
