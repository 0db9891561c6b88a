"""The access line's attempts name the upstream's own id of each request, as its support asks for it.

The gateway runs in-process in front of a fake aiohttp upstream (conftest's `upstream_app_client`),
reached by Sluice's own upstream client over a real socket.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs
from structlog.typing import EventDict

from server.upstreams.client import MAX_UPSTREAM_REQUEST_ID
from tests.test_upstream_errors import CALLS, BuildGateway, Call, Received, failing_upstream, recording_upstream


@pytest.fixture(params=list(CALLS.values()), ids=list(CALLS))
def call(request: pytest.FixtureRequest) -> Call:
    """Each chat route, streaming and not (test_upstream_errors.CALLS)."""
    result: Call = request.param
    return result


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        yield events


def attempts(logs: list[EventDict]) -> list[dict[str, object]]:
    """The attempts of the one request_finished line captured."""
    (event,) = [e for e in logs if e["event"] == "request_finished"]
    found: list[dict[str, object]] = event["attempts"]
    return found


def answering_with(headers: dict[str, str], app: web.Application | None = None) -> web.Application:
    """The recording upstream (or `app`), with these headers on every answer."""
    upstream = app if app is not None else recording_upstream([])

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    upstream.on_response_prepare.append(add)
    return upstream


async def test_an_answered_attempt_names_the_upstreams_request_id(
    upstream_app_client: BuildGateway, call: Call, logs: list[EventDict]
) -> None:
    gateway = await upstream_app_client(answering_with({"x-request-id": "req_7f3a"}))

    response = await gateway.post(call.path, json=call.body)
    assert response.status == 200
    await response.read()

    assert attempts(logs)[-1]["request_id"] == "req_7f3a"


async def test_a_failed_attempt_names_the_upstreams_request_id(
    upstream_app_client: BuildGateway, logs: list[EventDict]
) -> None:
    upstream = answering_with({"x-request-id": "req_limited"}, failing_upstream(429, "Slow down."))
    gateway = await upstream_app_client(upstream)

    response = await gateway.post(CALLS["v1"].path, json=CALLS["v1"].body)
    assert response.status == 429

    assert attempts(logs)[0]["request_id"] == "req_limited"


@pytest.mark.parametrize("header", ["request-id", "apim-request-id"])
async def test_other_providers_request_id_headers_are_named_too(
    upstream_app_client: BuildGateway, logs: list[EventDict], header: str
) -> None:
    gateway = await upstream_app_client(answering_with({header: "id-of-theirs"}))

    response = await gateway.post(CALLS["v1"].path, json=CALLS["v1"].body)
    await response.read()

    assert attempts(logs)[-1]["request_id"] == "id-of-theirs"


async def test_an_upstream_request_id_is_cut_to_a_bound(
    upstream_app_client: BuildGateway, logs: list[EventDict]
) -> None:
    gateway = await upstream_app_client(answering_with({"x-request-id": "r" * 5000}))

    response = await gateway.post(CALLS["v1_stream"].path, json=CALLS["v1_stream"].body)
    await response.read()

    assert attempts(logs)[-1]["request_id"] == "r" * MAX_UPSTREAM_REQUEST_ID


async def test_an_attempt_without_an_upstream_request_id_names_none(
    upstream_app_client: BuildGateway, logs: list[EventDict]
) -> None:
    received: list[Received] = []
    gateway = await upstream_app_client(recording_upstream(received))

    response = await gateway.post(CALLS["v1"].path, json=CALLS["v1"].body)
    await response.read()

    assert "request_id" not in attempts(logs)[-1]
