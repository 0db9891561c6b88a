"""The middleware chain, in one place: one aiohttp middleware (chain.py) running its steps in order.

Order matters, outermost first:
1. request id: every later step, and every log line, carries it;
2. access log: times the whole request and sees the final status, including rendered errors;
3. errors: turns any failure into the JSON envelope before the access log records it;
4. connection cap: sheds a request over the process's connection cap before any work;
5. auth: checks the gateway key (or browser token) before a body is read;
6. body: on the routes that read one, refuses an oversized body, then reads it within its
   deadline, so no handler waits on a slow client; any other request is answered without its
   body, and a connection whose body was left unread is closed right after the answer;
7. limits: takes the request's share of its key's limits once the body is in (a slow body holds
   none of them), and gives it back once the handler is done.
Each step is plain functions in its module; chain.py composes them in one coroutine, as a layer
per step would be a coroutine suspended while a stream runs, re-entered on each of its resumes.
CORS is not a middleware here: routes/cors.py wraps the routes and answers preflights, with the
policy in server/cors.py (aiohttp-cors echoes any origin, `null` included, where `*` must stay literal).
The response hooks (the chain's, CORS's) run inside aiohttp's `prepare`; a failure there is the
envelope's 500 (hook_failure.py), never a connection closed without a byte.
"""

from __future__ import annotations

from aiohttp import web

from ..body_budget import BodyBudget
from ..keys import BODY_BUDGET, KEYRING, SETTINGS
from .chain import gateway_middleware, keyed_response_prepared, response_prepared


def setup_middlewares(app: web.Application) -> None:
    """Install the chain and its response hook (X-Request-ID, rate-limit and token headers, response started).

    Needs the app's SETTINGS and KEYRING (setup_auth) already in place; adds the body budget the
    chain holds request bodies against (body_budget.py).
    """
    server = app[SETTINGS].server
    app[BODY_BUDGET] = BodyBudget(server.max_body_bytes_held, server.retry_after)
    app.middlewares.append(gateway_middleware)
    # Only a keyed request carries rate-limit or token headers: without keys, not even the lookups.
    app.on_response_prepare.append(keyed_response_prepared if app[KEYRING].enabled else response_prepared)
