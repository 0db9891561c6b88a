"""An upstream's error answer read to its end leaves its connection for the next request; one read in part does not.

Every non-200 answer closed its connection, however small its body: the retry after a 429 or a
5xx opened a new one (under a storm of them, a TLS handshake per retry). The gateway runs
in-process in front of a fake upstream that fails a request's first attempt, then answers; which
connection each attempt came on is the client port the upstream saw.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from server.upstreams.client import ERROR_BODY_LIMIT
from tests.test_unusable_replies import GOOD_COMPLETION
from tests.test_upstream_errors import CALLS, COMPLETIONS, BuildGateway


def failing_first(status: int, ports: list[int]) -> web.Application:
    """An upstream that answers its first request `status` with a small JSON error, then completes."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        if len(ports) == 1:
            error = {"error": {"message": "Try again.", "type": "server_error", "param": None, "code": None}}
            return web.json_response(error, status=status, headers={"Retry-After": "0"})
        return web.json_response(GOOD_COMPLETION)

    app = web.Application()
    app.router.add_post(COMPLETIONS, answer)
    return app


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_the_retry_after_an_error_answer_goes_out_on_the_same_connection(
    upstream_app_client: BuildGateway, status: int
) -> None:
    ports: list[int] = []
    gateway = await upstream_app_client(
        failing_first(status, ports), routing={"retries": 1, "retry_budget_seconds": 5.0}
    )

    async with gateway.post(COMPLETIONS, json=CALLS["v1"].body) as response:
        assert response.status == 200

    assert len(ports) == 2
    assert ports[0] == ports[1]


def failing_first_at_length(ports: list[int]) -> web.Application:
    """An upstream that answers its first request 500 with an error body past what Sluice reads of one."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        if len(ports) == 1:
            message = "x" * (ERROR_BODY_LIMIT * 2)
            error = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
            return web.json_response(error, status=500, headers={"Retry-After": "0"})
        return web.json_response(GOOD_COMPLETION)

    app = web.Application()
    app.router.add_post(COMPLETIONS, answer)
    return app


async def test_an_error_answer_read_in_part_closes_its_connection(upstream_app_client: BuildGateway) -> None:
    # Its unread rest would be read as the answer to the retry.
    ports: list[int] = []
    gateway = await upstream_app_client(
        failing_first_at_length(ports), routing={"retries": 1, "retry_budget_seconds": 5.0}
    )

    async with gateway.post(COMPLETIONS, json=CALLS["v1"].body) as response:
        assert response.status == 200

    assert len(ports) == 2
    assert ports[0] != ports[1]
