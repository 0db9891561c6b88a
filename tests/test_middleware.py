"""The middleware's steps on a bare application (the chain and its state, no gateway routes), then CORS
and the access log on the whole gateway, then the order of the steps."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from structlog.testing import capture_logs
from structlog.typing import EventDict, WrappedLogger

from server.app import create_app
from server.errors import InvalidRequestError, PayloadTooLargeError, ServiceUnavailableError
from server.http_protocol import BODY_ROUTES
from server.keys import CONNECTION_LIMIT, REQUEST_ID, SETTINGS
from server.middleware.body import body_to_read, defer_expectation
from server.middleware.chain import gateway_middleware
from server.settings import Settings
from server.simulator import create_simulator_app
from tests.conftest import AiohttpClient, make_settings, middleware_app

Client = TestClient[web.Request, web.Application]

UPSTREAM_KEY = "sk-test-key-never-logged"  # the key tests/conftest.py's upstream_app_client configures
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
ORIGIN = "https://app.example"


def bare_app(*routes: web.RouteDef, settings: Settings | None = None) -> web.Application:
    """The gateway's middleware alone, with the given routes."""
    return middleware_app(settings or make_settings(), *routes)


# --- request id --------------------------------------------------------------------------------


async def echo_request_id(request: web.Request) -> web.Response:
    return web.Response(text=request[REQUEST_ID])


async def fail_with_bad_request(request: web.Request) -> web.Response:
    raise web.HTTPBadRequest(text="no")


async def stream_two_events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: 1\n\n")
    await response.write(b"data: 2\n\n")
    await response.write_eof()
    return response


async def log_something(request: web.Request) -> web.Response:
    structlog.get_logger("test").info("handler_ran")
    return web.Response(text="ok")


@pytest.fixture
async def request_id_client(aiohttp_client: AiohttpClient) -> Client:
    """A bare app: the middleware, whose first step gives the id, and its response hook."""
    app = bare_app(
        web.get("/", echo_request_id),
        web.get("/fail", fail_with_bad_request),
        web.get("/stream", stream_two_events),
        web.get("/log", log_something),
    )
    client: Client = await aiohttp_client(app)
    return client


@pytest.mark.parametrize("request_id", ["abc", "client-req_1.2:3", "0" * 128])
async def test_request_id_echoes_a_well_formed_id(request_id_client: Client, request_id: str) -> None:
    response = await request_id_client.get("/", headers={"X-Request-ID": request_id})

    assert response.headers["X-Request-ID"] == request_id
    assert await response.text() == request_id


@pytest.mark.parametrize("request_id", ["has space", "a/b", "<script>", "x" * 129, "é"])
async def test_request_id_replaces_a_malformed_id(request_id_client: Client, request_id: str) -> None:
    response = await request_id_client.get("/", headers={"X-Request-ID": request_id})

    assert GENERATED_ID.fullmatch(response.headers["X-Request-ID"])
    assert await response.text() == response.headers["X-Request-ID"]


async def test_request_id_generates_a_fresh_id_when_missing(request_id_client: Client) -> None:
    first = await request_id_client.get("/")
    second = await request_id_client.get("/")

    assert GENERATED_ID.fullmatch(first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


async def test_request_id_is_on_error_responses(request_id_client: Client) -> None:
    response = await request_id_client.get("/fail", headers={"X-Request-ID": "err-1"})

    assert response.status == 400
    assert response.headers["X-Request-ID"] == "err-1"


async def test_request_id_is_on_unmatched_paths(request_id_client: Client) -> None:
    response = await request_id_client.get("/nowhere", headers={"X-Request-ID": "lost-1"})

    assert response.status == 404
    assert response.headers["X-Request-ID"] == "lost-1"


async def test_request_id_is_on_streams(request_id_client: Client) -> None:
    response = await request_id_client.get("/stream", headers={"X-Request-ID": "stream-1"})

    assert response.headers["X-Request-ID"] == "stream-1"
    assert await response.read() == b"data: 1\n\ndata: 2\n\n"


async def test_request_id_is_bound_to_log_lines(request_id_client: Client) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await request_id_client.get("/log", headers={"X-Request-ID": "logged-1"})

    assert [(e["event"], e["request_id"]) for e in logs] == [
        ("handler_ran", "logged-1"),
        ("request_finished", "logged-1"),
    ]


async def test_request_id_is_on_a_gateway_stream(client: Client) -> None:
    response = await client.post("/chat/stream", json={"message": "#sim tokens=1\nhi"}, headers={"X-Request-ID": "s-9"})

    assert response.headers["X-Request-ID"] == "s-9"
    await response.read()


async def test_request_id_is_on_a_gateway_error(client: Client) -> None:
    response = await client.post("/chat", json={}, headers={"X-Request-ID": "e-9"})

    assert response.status == 400
    assert response.headers["X-Request-ID"] == "e-9"


# --- errors ------------------------------------------------------------------------------------


async def raise_unavailable(request: web.Request) -> web.Response:
    raise ServiceUnavailableError("Busy.", code="overloaded", headers={"Retry-After": "5"})


async def raise_invalid(request: web.Request) -> web.Response:
    raise InvalidRequestError("temperature: too hot.", param="temperature")


async def raise_unexpected(request: web.Request) -> web.Response:
    raise RuntimeError("database password is hunter2")


async def fail_after_starting(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: 1\n\n")
    raise RuntimeError("broke mid-stream")


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def error_client(aiohttp_client: AiohttpClient) -> Client:
    """A bare app: the middleware, with its hook that notes a started response (the errors step reads it)."""
    app = bare_app(
        web.get("/unavailable", raise_unavailable),
        web.get("/invalid", raise_invalid),
        web.get("/unexpected", raise_unexpected),
        web.get("/mid-stream", fail_after_starting),
        web.post("/only-post", ok),
    )
    client: Client = await aiohttp_client(app)
    return client


async def test_error_renders_a_gateway_error_as_the_envelope_with_its_headers(error_client: Client) -> None:
    response = await error_client.get("/unavailable")

    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert await response.json() == {
        "error": {"message": "Busy.", "type": "server_error", "param": None, "code": "overloaded"}
    }


async def test_error_keeps_the_param_of_a_gateway_error(error_client: Client) -> None:
    response = await error_client.get("/invalid")

    assert response.status == 400
    assert (await response.json())["error"]["param"] == "temperature"


async def test_error_renders_an_unexpected_exception_as_500_without_details(error_client: Client) -> None:
    with capture_logs():
        response = await error_client.get("/unexpected")

    assert response.status == 500
    text = await response.text()
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    for leak in ("Traceback", "RuntimeError", "hunter2", "raise_unexpected", ".py"):
        assert leak not in text


async def test_error_logs_an_unexpected_exception(error_client: Client) -> None:
    with capture_logs() as logs:
        await error_client.get("/unexpected")

    # The failure first, with its traceback; then the access log's line, with the rendered status.
    assert [e["event"] for e in logs] == ["request_failed", "request_finished"]
    assert logs[0]["log_level"] == "error"
    assert "exc_info" in logs[0]
    assert logs[1]["status"] == 500


async def test_error_renders_an_unknown_path_as_a_404_envelope(error_client: Client) -> None:
    response = await error_client.get("/nowhere")

    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_error_renders_a_wrong_method_as_405_with_allow(error_client: Client) -> None:
    response = await error_client.get("/only-post")

    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert (await response.json())["error"]["code"] == "method_not_allowed"


async def raw_get(client: Client, path: str) -> bytes:
    """Everything the server writes on a fresh connection for one GET, up to its close."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_error_after_the_response_started_does_not_send_a_second_response(error_client: Client) -> None:
    with capture_logs():
        raw = await raw_get(error_client, "/mid-stream")

    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.count(b"HTTP/1.1 ") == 1
    assert b"internal_error" not in raw


# --- body limit --------------------------------------------------------------------------------


class RecordingHandler:
    """A handler that notes whether it ran."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        return web.Response(text="ok")


def limited_request(content_length: int, limit: int = 1000) -> web.Request:
    """A request declaring `content_length`, on an app whose body limit is `limit`."""
    app = web.Application()
    app[SETTINGS] = make_settings(server={"max_body_bytes": limit})
    return make_mocked_request("POST", "/chat", headers={"Content-Length": str(content_length)}, app=app)


async def test_body_limit_refuses_a_declared_length_over_the_limit() -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        body_to_read(limited_request(1001))

    assert caught.value.status == 413
    assert "1000" in caught.value.message


async def test_body_limit_passes_a_declared_length_at_the_limit() -> None:
    # Passed, with nothing left to wait for: the mocked request's body is all there.
    assert body_to_read(limited_request(1000)) is False


async def test_body_limit_passes_a_declared_length_at_the_limit_over_the_wire(aiohttp_client: AiohttpClient) -> None:
    handler = RecordingHandler()
    app = bare_app(web.post("/chat", handler.handle), settings=make_settings(server={"max_body_bytes": 1000}))
    client: Client = await aiohttp_client(app)

    response = await client.post("/chat", data=b"x" * 1000)

    assert response.status == 200
    assert handler.calls == 1


async def test_body_limit_refuses_over_the_wire_with_413_before_the_handler(aiohttp_client: AiohttpClient) -> None:
    handler = RecordingHandler()
    app = bare_app(web.post("/chat", handler.handle), settings=make_settings(server={"max_body_bytes": 1000}))
    client: Client = await aiohttp_client(app)

    response = await client.post("/chat", data=b"x" * 1001)

    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"
    assert handler.calls == 0


# --- which bodies are read ---------------------------------------------------------------------

# The body deadline of these tests: a body waited for would be answered (408) only this late.
BODY_WAIT = 60.0
# Far under BODY_WAIT and aiohttp's 10 s of lingering, far over what an answer takes on a loaded machine.
ANSWER_BOUND = 5.0


def partial_post(path: str, *headers: str) -> bytes:
    """The head of a POST to `path` declaring a 1000-byte body, and its first byte."""
    extra = "".join(f"{header}\r\n" for header in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n{extra}\r\n{{"
    ).encode()


async def first_answer(client: Client, request: bytes) -> bytes:
    """The head of the first thing the server answers to `request` on a new connection."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        async with asyncio.timeout(ANSWER_BOUND):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def body_client(aiohttp_client: AiohttpClient) -> Client:
    """A bare app with a route that reads a body (/chat), an open one that reads none (/health)."""
    app = bare_app(
        web.post("/chat", ok, expect_handler=defer_expectation),
        web.get("/health", ok, expect_handler=defer_expectation),
        settings=make_settings(connections={"body_timeout": BODY_WAIT}),
    )
    client: Client = await aiohttp_client(app)
    return client


@pytest.mark.parametrize(("path", "status"), [("/health", 405), ("/nowhere", 404)], ids=["open-route", "unmatched"])
async def test_a_route_that_reads_no_body_is_answered_without_waiting_for_its_body(
    body_client: Client, path: str, status: int
) -> None:
    # Its body was read (up to max_body_bytes, for up to body_timeout) before anything refused it.
    head = await first_answer(body_client, partial_post(path))

    assert head.startswith(f"HTTP/1.1 {status} ".encode())


@pytest.mark.parametrize(
    ("path", "answer"),
    [("/chat", b"HTTP/1.1 100 Continue\r\n"), ("/health", b"HTTP/1.1 405 "), ("/nowhere", b"HTTP/1.1 404 ")],
    ids=["body-route", "open-route", "unmatched"],
)
async def test_100_continue_is_sent_only_on_a_route_that_reads_a_body(
    aiohttp_client: AiohttpClient, path: str, answer: bytes
) -> None:
    # aiohttp said 100 Continue itself, before any middleware, to a request no route matched.
    gateway: Client = await aiohttp_client(create_app(make_settings(connections={"body_timeout": BODY_WAIT})))

    head = await first_answer(gateway, partial_post(path, "Expect: 100-continue")[:-1])

    assert head.startswith(answer)


def test_the_body_step_knows_every_gateway_route_that_takes_a_body(settings: Settings) -> None:
    # A route missing from BODY_ROUTES would have its handler read the body with no deadline.
    routes = create_app(settings).router.routes()
    writes = {(r.method, r.resource.canonical) for r in routes if r.resource is not None and r.method == "POST"}

    assert writes >= BODY_ROUTES
    assert writes - BODY_ROUTES == {("POST", "/chat/stream/token")}  # mints a token from its key alone


# --- CORS on the gateway -----------------------------------------------------------------------


async def test_cors_preflight_is_allowed(client: Client) -> None:
    response = await client.options(
        "/chat",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )

    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_cors_header_is_on_a_normal_response_with_an_origin(client: Client) -> None:
    response = await client.get("/models", headers={"Origin": ORIGIN})

    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


async def test_cors_header_is_on_a_stream_with_an_origin(client: Client) -> None:
    response = await client.post("/chat/stream", json={"message": "#sim tokens=1\nhi"}, headers={"Origin": ORIGIN})

    assert response.headers["Access-Control-Allow-Origin"] == "*"
    await response.read()


async def test_cors_header_is_absent_without_an_origin(client: Client) -> None:
    response = await client.get("/models")

    assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_refuses_an_origin_not_configured(aiohttp_client: AiohttpClient) -> None:
    client: Client = await aiohttp_client(create_app(make_settings(server={"cors_origins": [ORIGIN]})))

    preflight = await client.options(
        "/chat", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    simple = await client.get("/models", headers={"Origin": "https://evil.example"})

    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Origin" not in simple.headers


async def test_cors_preflight_for_a_method_the_route_does_not_serve_names_the_method(client: Client) -> None:
    response = await client.options("/chat", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"})

    assert response.status == 403
    assert (await response.json())["error"]["code"] == "cors_method_not_allowed"
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_an_options_request_that_is_not_a_preflight_is_204_with_the_allowed_methods(client: Client) -> None:
    response = await client.options("/chat", headers={"Origin": ORIGIN})

    assert response.status == 204
    assert response.headers["Allow"] == "OPTIONS, POST"


async def test_a_cors_origin_configured_with_a_default_port_and_slash_matches_the_browsers(
    aiohttp_client: AiohttpClient,
) -> None:
    settings = make_settings(server={"cors_origins": ["HTTPS://App.Example:443/"]})
    client: Client = await aiohttp_client(create_app(settings))

    response = await client.get("/models", headers={"Origin": "https://app.example"})

    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


# --- access log on the gateway -----------------------------------------------------------------


class FinishedRequests:
    """A structlog processor that counts log events by name, so a test can await them."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._changed = asyncio.Event()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        name = event_dict.get("event")
        if isinstance(name, str):
            self.counts[name] = self.counts.get(name, 0) + 1
            self._changed.set()
        return event_dict

    async def wait_for(self, count: int, event: str = "request_finished") -> None:
        """Return once `count` events named `event` (by default, requests that logged their end) were logged."""
        async with asyncio.timeout(5):
            while self.counts.get(event, 0) < count:
                self._changed.clear()
                await self._changed.wait()


class AccessLog:
    """Every captured log event, and a way to wait for requests to finish."""

    def __init__(self, events: list[EventDict], finished: FinishedRequests) -> None:
        self.events = events
        self._finished = finished

    async def finished(self, count: int, event: str = "request_finished") -> list[EventDict]:
        """The events named `event` (by default `request_finished`), once there are `count` of them."""
        await self._finished.wait_for(count, event)
        return [logged for logged in self.events if logged["event"] == event]


@pytest.fixture
def access_log() -> Iterator[AccessLog]:
    """Capture every log event, with the request context bound as in production."""
    finished = FinishedRequests()
    with capture_logs(processors=[structlog.contextvars.merge_contextvars, finished]) as events:
        yield AccessLog(events, finished)


async def test_access_log_writes_one_request_finished_per_request(client: Client, access_log: AccessLog) -> None:
    await client.get("/models", headers={"X-Request-ID": "r-1"})
    await client.post("/chat", json={"message": "#sim tokens=1\nhi"}, headers={"X-Request-ID": "r-2"})
    await client.get("/nowhere", headers={"X-Request-ID": "r-3"})

    events = await access_log.finished(3)

    assert sorted(event["request_id"] for event in events) == ["r-1", "r-2", "r-3"]


async def test_access_log_has_method_path_status_duration_and_request_id(client: Client, access_log: AccessLog) -> None:
    await client.get("/models", headers={"X-Request-ID": "r-1"})

    (event,) = await access_log.finished(1)

    assert event["method"] == "GET"
    assert event["path"] == "/models"
    assert event["status"] == 200
    assert isinstance(event["duration_ms"], float)
    assert event["duration_ms"] >= 0
    assert event["request_id"] == "r-1"


async def test_access_log_writes_probes_at_debug_and_api_calls_at_info(client: Client, access_log: AccessLog) -> None:
    await client.get("/health")
    await client.get("/models")

    events = await access_log.finished(2)

    assert {event["path"]: event["log_level"] for event in events} == {"/health": "debug", "/models": "info"}


async def test_access_log_records_the_status_of_a_rendered_error(client: Client, access_log: AccessLog) -> None:
    await client.post("/chat", json={"message": 1})

    (event,) = await access_log.finished(1)

    assert event["status"] == 400


async def test_access_log_of_a_chat_has_model_outcome_and_usage(client: Client, access_log: AccessLog) -> None:
    await client.post("/chat", json={"message": "#sim tokens=3\nhi", "model": "gpt-4.1"})

    (event,) = await access_log.finished(1)

    assert event["model"] == "gpt-4.1"
    assert event["stream"] is False
    assert event["outcome"] == "completed"
    assert event["usage"]["completion_tokens"] == 3
    assert event["usage"]["total_tokens"] == event["usage"]["prompt_tokens"] + 3


async def test_access_log_of_a_stream_has_model_outcome_ttft_and_usage(client: Client, access_log: AccessLog) -> None:
    response = await client.post("/chat/stream", json={"message": "#sim tokens=3\nhi"})
    await response.read()

    (event,) = await access_log.finished(1)

    assert event["path"] == "/chat/stream"
    assert event["status"] == 200
    assert event["model"] == "gpt-4o"
    assert event["stream"] is True
    assert event["outcome"] == "completed"
    assert isinstance(event["ttft_ms"], float)
    assert 0 <= event["ttft_ms"] <= event["duration_ms"]
    assert event["usage"]["completion_tokens"] == 3


async def test_access_log_of_an_openai_stream_has_usage_the_client_did_not_ask_for(
    client: Client, access_log: AccessLog
) -> None:
    body = {"model": "o3", "messages": [{"role": "user", "content": "#sim tokens=2\nhi"}], "stream": True}
    response = await client.post("/v1/chat/completions", json=body)
    await response.read()

    (event,) = await access_log.finished(1)

    assert event["model"] == "o3"
    assert event["stream"] is True
    assert event["usage"]["completion_tokens"] == 2


async def leaky_unauthorized(request: web.Request) -> web.Response:
    """A 401 whose message quotes the key it was given, as some upstreams do."""
    return web.json_response(
        {"error": {"message": f"Incorrect API key: {request.headers['Authorization']}", "type": "auth", "code": None}},
        status=401,
    )


async def test_access_log_never_contains_the_api_key(upstream_app_client: Any, access_log: AccessLog) -> None:
    gateway: Client = await upstream_app_client(create_simulator_app(api_key=UPSTREAM_KEY))
    leaky_upstream = web.Application()
    leaky_upstream.router.add_post("/v1/chat/completions", leaky_unauthorized)
    leaky: Client = await upstream_app_client(leaky_upstream)

    chat = await gateway.post("/chat", json={"message": "#sim tokens=2\nhi"})
    stream = await gateway.post("/chat/stream", json={"message": "#sim tokens=2\nhi"})
    await stream.read()
    refused = await leaky.post("/chat", json={"message": "hi"})
    refused_stream = await leaky.post("/chat/stream", json={"message": "hi"})
    await access_log.finished(4)

    assert (chat.status, stream.status, refused.status, refused_stream.status) == (200, 200, 502, 502)
    assert UPSTREAM_KEY not in repr(access_log.events)
    assert UPSTREAM_KEY not in await refused.text()
    assert UPSTREAM_KEY not in await refused_stream.text()


# --- the order of the steps -------------------------------------------------------------------


async def test_the_gateway_has_one_middleware_layer(settings: Settings) -> None:
    app = create_app(settings)

    assert list(app.middlewares) == [gateway_middleware]


ORDER_KEY = "sk-order-key-0123456789"
BEARER = {"Authorization": f"Bearer {ORDER_KEY}"}


def keyed(limits: dict[str, int] | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings with one gateway key, so auth has something to refuse and take.

    Its `limits`: one stream at a time unless given.
    """
    key = {
        "name": "order",
        "key_sha256": hashlib.sha256(ORDER_KEY.encode()).hexdigest(),
        **(limits or {"max_streams": 1}),
    }
    return make_settings({"SLUICE_AUTH_SECRET": "order-secret"}, auth={"keys": [key]}, **sections)


async def test_the_connection_cap_runs_before_auth(aiohttp_client: AiohttpClient, access_log: AccessLog) -> None:
    handler = RecordingHandler()
    app = bare_app(web.post("/chat", handler.handle), settings=keyed())
    app[CONNECTION_LIMIT] = 0
    client: Client = await aiohttp_client(app)

    response = await client.post("/chat", data=b"{}", headers={"X-Request-ID": "cap-1"})

    assert response.status == 503  # not 401: a request over the cap is shed before any work
    assert response.headers["X-Request-ID"] == "cap-1"
    assert response.headers["Connection"] == "close"
    (event,) = await access_log.finished(1)
    assert (event["status"], event["request_id"]) == (503, "cap-1")
    assert handler.calls == 0


async def test_auth_runs_before_the_body_is_read(aiohttp_client: AiohttpClient, access_log: AccessLog) -> None:
    handler = RecordingHandler()
    app = bare_app(web.post("/chat", handler.handle), settings=keyed(server={"max_body_bytes": 1000}))
    client: Client = await aiohttp_client(app)

    refused = await client.post("/chat", data=b"x" * 1001)
    too_large = await client.post("/chat", data=b"x" * 1001, headers=BEARER)

    assert refused.status == 401  # not 413: an unauthenticated body is never looked at
    assert too_large.status == 413
    assert handler.calls == 0
    events = await access_log.finished(2)
    assert [(e["status"], e.get("error_code"), e.get("key")) for e in events] == [
        (401, "invalid_api_key", None),
        (413, "payload_too_large", "order"),
    ]


async def test_a_body_the_body_step_refuses_takes_nothing_from_the_keys_limits(aiohttp_client: AiohttpClient) -> None:
    # One request a minute: had the refused bodies taken it, the request after them would be 429.
    handler = RecordingHandler()
    app = bare_app(web.post("/chat", handler.handle), settings=keyed({"rpm": 1}, server={"max_body_bytes": 1000}))
    client: Client = await aiohttp_client(app)

    too_large = [await client.post("/chat", data=b"x" * 1001, headers=BEARER) for _ in range(2)]
    served = await client.post("/chat", data=b"{}", headers=BEARER)

    assert [r.status for r in too_large] == [413, 413]
    assert served.status == 200
    assert handler.calls == 1


async def test_a_body_still_to_come_holds_none_of_its_keys_stream_slots(aiohttp_client: AiohttpClient) -> None:
    # The key's limits are taken once the body is in: a slow or stalled body held its one stream slot.
    handler = RecordingHandler()
    route = web.post("/chat", handler.handle, expect_handler=defer_expectation)
    app = bare_app(route, settings=keyed(connections={"body_timeout": BODY_WAIT}))
    client: Client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        # 100 Continue comes from the body step, once auth passed: the request now waits for its body.
        writer.write(partial_post("/chat", f"Authorization: Bearer {ORDER_KEY}", "Expect: 100-continue")[:-1])
        async with asyncio.timeout(ANSWER_BOUND):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"

        served = await client.post("/chat", data=b"{}", headers=BEARER)
    finally:
        writer.close()
        await writer.wait_closed()

    assert served.status == 200
    assert handler.calls == 1


async def test_a_keyed_requests_stream_slot_is_given_back_once_its_handler_is_done(
    aiohttp_client: AiohttpClient,
) -> None:
    handler = RecordingHandler()
    app = bare_app(web.post("/chat", handler.handle), settings=keyed())
    client: Client = await aiohttp_client(app)

    statuses = [(await client.post("/chat", data=b"{}", headers=BEARER)).status for _ in range(3)]

    assert statuses == [200, 200, 200]  # one stream at a time, each given back before the next
