"""The HTTP surface on the built-in simulated model: probes, model lists, /chat and its native stream."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from server import __version__
from server.app import create_app
from server.keys import SIMULATOR_URL
from server.settings import Settings
from tests.conftest import AiohttpClient, make_settings
from tests.support.processes import Simulator

Client = TestClient[web.Request, web.Application]


@dataclass(frozen=True)
class Event:
    """One server-sent event as a browser's EventSource would see it."""

    id: str | None
    event: str | None
    data: Any


def parse_native(raw: str) -> tuple[list[str], list[Event]]:
    """Split a native-dialect body into its `retry:` values and its events, in order."""
    assert raw.endswith("\n\n"), raw[-80:]
    retries: list[str] = []
    events: list[Event] = []
    for block in raw[:-2].split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        if set(fields) == {"retry"}:
            retries.append(fields["retry"])
            continue
        assert set(fields) == {"id", "event", "data"}, block
        events.append(Event(fields["id"], fields["event"], json.loads(fields["data"])))
    return retries, events


async def stream_native(client: Client, body: dict[str, Any], request_id: str = "req-1") -> list[Event]:
    """POST /chat/stream and return its events (after checking the body starts with `retry:`)."""
    response = await client.post("/chat/stream", json=body, headers={"X-Request-ID": request_id})
    assert response.status == 200, await response.text()
    raw = await response.text()
    assert raw.startswith("retry: ")
    return parse_native(raw)[1]


def token_text(events: list[Event]) -> str:
    """The reply text the `token` events carry."""
    return "".join(event.data["content"] for event in events if event.event == "token")


async def test_health_reports_ok_simulated_and_version(client: Client) -> None:
    response = await client.get("/health")

    assert response.status == 200
    assert await response.json() == {"status": "ok", "integration": "simulated", "version": __version__}


async def test_models_lists_the_configured_models_and_default(client: Client, settings: Settings) -> None:
    response = await client.get("/models")

    assert response.status == 200
    assert await response.json() == {"models": list(settings.models.available), "default": "gpt-4o"}


async def test_chat_replies_with_response_model_finish_reason_and_usage(client: Client) -> None:
    response = await client.post("/chat", json={"message": "Tell me about rivers."})

    assert response.status == 200
    assert response.content_type == "application/json"
    reply = await response.json()
    assert set(reply) == {"response", "model", "finish_reason", "usage"}
    assert isinstance(reply["response"], str)
    assert reply["response"]
    assert reply["model"] == "gpt-4o"
    assert reply["finish_reason"] == "stop"
    usage = reply["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chat_uses_the_model_named_in_the_request(aiohttp_client: AiohttpClient, simulator: Simulator) -> None:
    environ = {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key", "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url}
    client: Client = await aiohttp_client(create_app(make_settings(environ)))
    response = await client.post(
        "/chat", json={"message": "hello", "model": "gpt-4.1-mini"}, headers={"X-Request-ID": "named-model"}
    )

    assert response.status == 200
    assert (await response.json())["model"] == "gpt-4.1-mini"
    async with client.session.get(f"{simulator.url}/_sim/requests/named-model") as seen:
        assert (await seen.json())["model"] == "gpt-4.1-mini"


async def test_the_built_in_simulated_model_has_no_test_control_routes(client: Client) -> None:
    simulator = client.app[SIMULATOR_URL].removesuffix("/v1")

    async with client.session.get(f"{simulator}/_sim/stats") as stats:
        assert stats.status == 404


async def test_chat_is_steered_by_a_sim_directive(client: Client) -> None:
    response = await client.post("/chat", json={"message": "#sim tokens=3\nhello"})

    reply = await response.json()
    assert reply["usage"]["completion_tokens"] == 3
    assert len(reply["response"].split()) == 3


async def test_chat_max_tokens_cuts_the_reply_with_finish_reason_length(client: Client) -> None:
    response = await client.post("/chat", json={"message": "#sim tokens=10\nhello", "max_tokens": 4})

    reply = await response.json()
    assert reply["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 4


async def test_chat_stream_sends_sse_headers(client: Client) -> None:
    response = await client.post("/chat/stream", json={"message": "hello"})

    assert response.status == 200
    assert response.content_type == "text/event-stream"
    cache_control = {part.strip() for part in response.headers["Cache-Control"].split(",")}
    assert {"no-cache", "no-transform"} <= cache_control
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers
    await response.read()


async def test_chat_stream_starts_with_a_retry_line(client: Client, settings: Settings) -> None:
    response = await client.post("/chat/stream", json={"message": "hello"})

    raw = await response.text()
    assert raw.startswith(f"retry: {settings.stream.retry_ms}\n\n")
    assert parse_native(raw)[0] == [str(settings.stream.retry_ms)]


async def test_chat_stream_sends_token_events_then_done(client: Client) -> None:
    events = await stream_native(client, {"message": "#sim tokens=5\nhello"})

    assert [event.event for event in events] == ["token"] * 5 + ["done"]
    assert all(set(event.data) == {"content"} for event in events[:-1])


async def test_chat_stream_event_ids_are_stream_id_and_increasing_sequence(client: Client) -> None:
    events = await stream_native(client, {"message": "#sim tokens=4\nhello"}, request_id="stream-7")

    assert [event.id for event in events] == [f"stream-7:{n}" for n in range(1, 6)]


async def test_chat_stream_done_carries_finish_reason_and_usage(client: Client) -> None:
    events = await stream_native(client, {"message": "#sim tokens=3\nhello"})

    done = events[-1]
    assert done.event == "done"
    assert done.data["finish_reason"] == "stop"
    usage = done.data["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3


async def test_chat_stream_text_equals_the_chat_reply_for_the_same_prompt(client: Client) -> None:
    body = {"message": "What does the keeper count?", "history": [{"role": "user", "content": "Hi"}]}

    events = await stream_native(client, body)
    reply = await (await client.post("/chat", json=body)).json()

    assert token_text(events) == reply["response"]
    assert events[-1].data["usage"] == reply["usage"]


async def test_chat_stream_is_steered_by_a_sim_directive(client: Client) -> None:
    events = await stream_native(client, {"message": "#sim tokens=3\nhello"})

    assert sum(event.event == "token" for event in events) == 3


async def test_v1_models_lists_the_configured_models(client: Client, settings: Settings) -> None:
    response = await client.get("/v1/models")

    assert response.status == 200
    body = await response.json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == list(settings.models.available)
    assert all(model["object"] == "model" for model in body["data"])
    assert all(isinstance(model["created"], int) and model["owned_by"] for model in body["data"])


async def test_v1_model_by_id_returns_that_model(client: Client) -> None:
    response = await client.get("/v1/models/gpt-4.1")

    assert response.status == 200
    body = await response.json()
    assert body["id"] == "gpt-4.1"
    assert body["object"] == "model"


async def test_v1_model_unknown_id_is_404_model_not_found(client: Client) -> None:
    response = await client.get("/v1/models/gpt-2")

    assert response.status == 404
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found"
    assert "gpt-2" in error["message"]


async def test_v1_chat_completion_returns_the_upstream_completion(client: Client) -> None:
    body = {"model": "o3-mini", "messages": [{"role": "user", "content": "#sim tokens=2\nhi"}]}

    response = await client.post("/v1/chat/completions", json=body)

    assert response.status == 200
    body = await response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "o3-mini"
    assert body["usage"]["completion_tokens"] == 2


async def test_v1_chat_stream_is_only_data_events_ending_with_done(client: Client) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "#sim tokens=3\nhi"}], "stream": True}

    response = await client.post("/v1/chat/completions", json=body)

    raw = await response.text()
    events = raw.removesuffix("\n\n").split("\n\n")
    assert response.content_type == "text/event-stream"
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    assert events[-1] == "data: [DONE]"
