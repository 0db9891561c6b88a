"""A Retry-After that asks for no wait (a date already past, `0`) tells the client the same in both headers.

The client was told `Retry-After: 1` and `retry-after-ms: 0`. Now both say the 1 s floor (see
failures.retry_after_header for why not 0), while the gateway's own wait stays what the upstream
said: none. Every other wait keeps `retry-after-ms` as precise as the upstream gave it, and
`Retry-After` is always that wait in whole seconds, rounded up.

The route case runs the gateway in-process in front of a fake aiohttp upstream (conftest's
`upstream_app_client`; config/test.toml: no retries, no breaker held by a rate limit).
"""

from __future__ import annotations

import math

import pytest
from aiohttp import web

from server.upstreams.failures import status_failure
from tests.support.envelope import error_of
from tests.test_upstream_errors import CALLS, COMPLETIONS, BuildGateway, Call

PAST = "Wed, 21 Oct 2015 07:28:10 GMT"
FLOOR = {"Retry-After": "1", "retry-after-ms": "1000"}


@pytest.fixture(params=list(CALLS.values()), ids=list(CALLS))
def call(request: pytest.FixtureRequest) -> Call:
    """Each chat route, streaming and not (test_upstream_errors.CALLS)."""
    result: Call = request.param
    return result


def rate_limited_until(retry_after: str) -> web.Application:
    """An upstream that answers every chat request 429 with `retry_after` as its Retry-After."""

    async def limit(request: web.Request) -> web.Response:
        await request.read()
        body = {"error": {"message": "Rate limit reached.", "type": "requests", "param": None, "code": None}}
        return web.json_response(body, status=429, headers={"Retry-After": retry_after})

    app = web.Application()
    app.router.add_post(COMPLETIONS, limit)
    return app


async def test_a_429_with_a_retry_after_date_in_the_past_tells_one_second_in_both_headers(
    upstream_app_client: BuildGateway, call: Call
) -> None:
    gateway = await upstream_app_client(rate_limited_until(PAST))

    response = await gateway.post(call.path, json=call.body)

    await error_of(response, 429)
    assert (response.headers["Retry-After"], response.headers["retry-after-ms"]) == ("1", "1000")


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(
    "headers",
    [{"retry-after": PAST}, {"retry-after": "0"}, {"retry-after-ms": "0"}],
    ids=["past-date", "zero-seconds", "zero-millis"],
)
def test_no_wait_is_told_as_one_second_in_both_headers(status: int, headers: dict[str, str]) -> None:
    assert status_failure(status, headers, b"").headers == FLOOR


@pytest.mark.parametrize(("millis", "told"), [("0.4", "1"), ("0.6", "1"), ("2007", "2007"), ("2007.2", "2008")])
def test_a_wait_is_told_in_whole_milliseconds_rounded_up_never_sooner(millis: str, told: str) -> None:
    # Rounded to the nearest, 0.4 ms was told as no wait (1 s) while 0.6 ms was told as 1 ms; and
    # 2007 ms is 2007.0000000000002 once divided and multiplied back.
    assert status_failure(429, {"retry-after-ms": millis}, b"").headers["retry-after-ms"] == told


def test_a_retry_after_date_in_the_past_is_no_wait_for_the_gateway_itself() -> None:
    # The floor is what the client is told; the routing's own wait (and a breaker's hold) is the upstream's.
    assert status_failure(429, {"retry-after": PAST}, b"").retry_after == 0


def test_a_wait_under_a_second_keeps_its_milliseconds() -> None:
    assert status_failure(429, {"retry-after-ms": "200"}, b"").headers == {"Retry-After": "1", "retry-after-ms": "200"}


@pytest.mark.parametrize("millis", ["0", "0.4", "200", "999.6", "1000.4", "1500", "59999.9", "60000"])
def test_retry_after_is_the_milliseconds_told_in_whole_seconds_rounded_up(millis: str) -> None:
    told = status_failure(429, {"retry-after-ms": millis}, b"").headers

    assert int(told["Retry-After"]) == math.ceil(int(told["retry-after-ms"]) / 1000)
