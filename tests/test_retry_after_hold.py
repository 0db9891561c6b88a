"""A 429's wait told to the client is never shorter than Sluice's own hold of that upstream.

With `routing.breaker_on_rate_limit` (on by default) Sluice holds an upstream that answered 429
for the upstream's Retry-After, and at least RATE_LIMIT_SPACING (1.5 s). A client told the
upstream's shorter wait retried into Sluice's own 503, and spent one of its SDK's retries on it.
The gateway runs in-process in front of a fake aiohttp upstream (conftest's `upstream_app_client`).
"""

from __future__ import annotations

import pytest
from aiohttp import web

from server.upstreams.backoff import RATE_LIMIT_SPACING
from tests.support.envelope import error_of
from tests.test_upstream_errors import CALLS, COMPLETIONS, BuildGateway, Call

HOLD_MS = round(RATE_LIMIT_SPACING * 1000)
ANSWER_BOUND_MS = 1000  # from the upstream's 429 to the client's answer, in-process: far more than it takes


@pytest.fixture(params=list(CALLS.values()), ids=list(CALLS))
def call(request: pytest.FixtureRequest) -> Call:
    """Each chat route, streaming and not (test_upstream_errors.CALLS)."""
    result: Call = request.param
    return result


def rate_limited(headers: dict[str, str]) -> web.Application:
    """An upstream that answers every chat request 429 with these headers."""

    async def limit(request: web.Request) -> web.Response:
        await request.read()
        body = {"error": {"message": "Rate limit reached.", "type": "requests", "param": None, "code": None}}
        return web.json_response(body, status=429, headers=headers)

    app = web.Application()
    app.router.add_post(COMPLETIONS, limit)
    return app


HOLDING = {"breaker_on_rate_limit": True, "breaker_failures": 1000}


async def test_a_429_shorter_than_sluices_hold_tells_the_hold(upstream_app_client: BuildGateway, call: Call) -> None:
    gateway = await upstream_app_client(rate_limited({"retry-after-ms": "200"}), routing=HOLDING)

    response = await gateway.post(call.path, json=call.body)

    await error_of(response, 429)
    # What is left of the hold as the answer goes: 1500 ms less the moment it took (2 ms under load).
    assert response.headers["Retry-After"] == "2"
    assert HOLD_MS - ANSWER_BOUND_MS < int(response.headers["retry-after-ms"]) <= HOLD_MS


async def test_a_429_longer_than_sluices_hold_tells_the_upstreams_wait(
    upstream_app_client: BuildGateway, call: Call
) -> None:
    gateway = await upstream_app_client(rate_limited({"retry-after": "3"}), routing=HOLDING)

    response = await gateway.post(call.path, json=call.body)

    await error_of(response, 429)
    assert (response.headers["Retry-After"], response.headers["retry-after-ms"]) == ("3", "3000")


async def test_without_the_hold_a_429_tells_the_upstreams_own_wait(upstream_app_client: BuildGateway) -> None:
    gateway = await upstream_app_client(
        rate_limited({"retry-after-ms": "200"}), routing={"breaker_on_rate_limit": False}
    )

    response = await gateway.post(CALLS["v1"].path, json=CALLS["v1"].body)

    await error_of(response, 429)
    assert (response.headers["Retry-After"], response.headers["retry-after-ms"]) == ("1", "200")
