"""Log lines an operator can debug with, asserted field by field: errors, client, pid, order, upstream key, connects."""

from __future__ import annotations

import io
import ipaddress
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs
from structlog.typing import EventDict

from server.app import create_app
from server.client_address import client_address
from server.keys import CONNECTION_LIMIT
from server.logs import configure_logging, connection_error_fields, loggable_url
from tests.conftest import make_settings
from tests.support.processes import free_port
from tests.test_security_units import bare, post_a_late_body
from tests.test_upstream_errors import failing_upstream

Client = TestClient[web.Request, web.Application]
AiohttpClient = Callable[..., Any]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        yield events


def finished(logs: list[EventDict]) -> EventDict:
    """The one request_finished event captured."""
    (event,) = [e for e in logs if e["event"] == "request_finished"]
    return event


async def test_a_4xx_line_carries_the_error_code_and_param(client: Client, logs: list[EventDict]) -> None:
    response = await client.post("/v1/chat/completions", json={"model": "no-such-model", "messages": MESSAGES})
    assert response.status == 404

    event = finished(logs)
    assert event["status"] == 404
    assert event["error_code"] == "model_not_found"
    assert event["param"] == "model"
    assert event["log_level"] == "info"


async def test_a_refusal_over_the_connection_cap_logs_its_code(
    aiohttp_client: AiohttpClient, logs: list[EventDict]
) -> None:
    app = bare()
    app[CONNECTION_LIMIT] = 0
    client: Client = await aiohttp_client(app)
    assert (await client.get("/models")).status == 503
    assert (finished(logs)["status"], finished(logs)["error_code"]) == (503, "too_many_connections")


async def test_a_late_body_logs_its_code(aiohttp_client: AiohttpClient, logs: list[EventDict]) -> None:
    assert (await post_a_late_body(aiohttp_client)).status == 408
    assert finished(logs)["error_code"] == "request_timeout"


async def test_a_refused_preflight_logs_its_code(client: Client, logs: list[EventDict]) -> None:
    preflight = await client.options(
        "/v1/chat/completions", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "PUT"}
    )
    assert preflight.status == 403
    assert finished(logs)["error_code"] == (await preflight.json())["error"]["code"]


async def test_a_validation_error_line_names_the_field_as_param(client: Client, logs: list[EventDict]) -> None:
    response = await client.post("/chat", json={"message": 5})
    assert response.status == 400

    event = finished(logs)
    assert (event["error_code"], event["param"]) == ("invalid_request", "message")


async def test_a_successful_line_has_no_error_fields(client: Client, logs: list[EventDict]) -> None:
    await client.get("/models")

    event = finished(logs)
    assert event["status"] == 200
    assert "error_code" not in event
    assert "param" not in event


async def test_the_client_is_the_peer_and_a_forwarded_for_header_is_ignored_by_default(
    client: Client, logs: list[EventDict]
) -> None:
    await client.get("/models", headers={"X-Forwarded-For": "203.0.113.7"})

    assert finished(logs)["client"] == "127.0.0.1"


async def test_behind_a_trusted_proxy_the_client_is_the_address_it_forwarded_for(
    aiohttp_client: AiohttpClient, logs: list[EventDict]
) -> None:
    settings = make_settings(server={"trusted_proxies": ["127.0.0.1"]})
    client: Client = await aiohttp_client(create_app(settings))
    # The left entry is whatever the client claimed; the proxy appended the address it saw.
    await client.get("/models", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})

    assert finished(logs)["client"] == "203.0.113.7"


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("10.0.0.2", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.2", "203.0.113.7, 10.0.0.9", "203.0.113.7"),  # a second trusted hop is skipped
        ("192.0.2.1", "203.0.113.7", "192.0.2.1"),  # an untrusted peer's header is ignored
        ("10.0.0.2", "not-an-address", "10.0.0.2"),
        ("10.0.0.2", None, "10.0.0.2"),
    ],
)
def test_client_address_reads_forwarded_for_from_the_right(peer: str, forwarded_for: str | None, expected: str) -> None:
    assert client_address(peer, forwarded_for, [ipaddress.ip_network("10.0.0.0/8")]) == expected


async def test_a_rejected_upstream_key_is_a_warning_line_and_shows_in_readyz(
    upstream_app_client: Callable[..., Any], logs: list[EventDict]
) -> None:
    gateway: Client = await upstream_app_client(failing_upstream(401, "Incorrect API key provided: sk-te****"))
    response = await gateway.post("/chat", json={"message": "hi"})
    assert response.status == 502

    event = finished(logs)
    assert event["log_level"] == "warning"
    assert event["error_code"] == "upstream_auth_failed"
    ready = await gateway.get("/readyz")
    body = await ready.json()
    assert body["upstream_auth"] == "rejected"
    assert "AI_INTEGRATIONS_OPENAI_API_KEY" in body["hint"]


async def test_readyz_has_no_key_detail_while_the_upstream_accepts_it(client: Client) -> None:
    await client.post("/chat", json={"message": "#sim tokens=1\nhi"})
    body = await (await client.get("/readyz")).json()

    assert body == {"status": "ready"}


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_console_lines_put_method_path_status_and_duration_first(console: io.StringIO) -> None:
    configure_logging("console", "info", console)
    structlog.get_logger("t").info(
        "request_finished", client="127.0.0.1", duration_ms=1.5, model="m", status=200, path="/chat", method="POST"
    )
    line = console.getvalue()
    positions = [line.index(f"{name}=") for name in ("method", "path", "status", "duration_ms", "client", "model")]

    assert line.index("request_finished") < positions[0]
    assert positions == sorted(positions)


def test_every_json_line_names_the_process(console: io.StringIO) -> None:
    configure_logging("json", "info", console)
    structlog.get_logger("t").info("request_finished", status=200)

    assert f'"pid":{os.getpid()}' in console.getvalue()


async def test_connection_error_fields_name_host_port_and_errno() -> None:
    port = free_port()  # nothing listens: the connection is refused
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await http.get(f"http://127.0.0.1:{port}/v1")

    fields = connection_error_fields(RuntimeError("wrapped"))
    assert fields == {"error": "RuntimeError"}
    wrapped = RuntimeError("the SDK's wrapper")
    wrapped.__cause__ = caught.value
    fields = connection_error_fields(wrapped)
    assert fields["host"] == "127.0.0.1"
    assert fields["port"] == port
    assert fields["errno"] == 111
    assert fields["reason"] == "Connection refused"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:sk-secret@api.example.com/v1?api-key=sk-secret", "https://api.example.com/v1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ],
)
def test_a_logged_url_never_carries_credentials(url: str, shown: str) -> None:
    assert loggable_url(url) == shown
