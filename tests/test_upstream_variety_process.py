"""OpenAI-compatible upstreams that are not OpenAI, against `python run.py` and a fake upstream process.

The fake (tests/support/variety_upstream.py) answers as a strict server refusing fields it does not
know (Mistral's 422), as a server writing a UTF-8 BOM first, as an older llama.cpp server writing
its error as an `error:` line, and with a completion cut short. Two gateways point at it: one whose
upstream is declared `portable_body = true` behind an Azure-style base URL with a query (Sluice's
own fields dropped; the query kept), and one plain, as the environment variables configure it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import new_request_id
from tests.support.processes import Gateway, ManagedProcess, Simulator, clean_env, start_gateway, write_config
from tests.support.sse import Event, openai_text, read_events, tokens_text
from tests.test_startup_errors import refusal, start_up

DEPLOYMENT = "/openai/deployments/d1"
QUERY = "?api-version=2024-06-01"
MESSAGES = [{"role": "user", "content": "hi"}]
REFUSED = "body.stream_options: Extra inputs are not permitted"
LLAMACPP_MESSAGE = "llama_decode failed: KV cache is full"


@pytest.fixture(scope="module")
def variety() -> Iterator[Simulator]:
    """The fake upstream as its own process, for this module."""
    process = ManagedProcess([sys.executable, "-m", "tests.support.variety_upstream"], clean_env()).start()
    line = process.wait_for_line(lambda text: text.startswith("variety upstream listening on "))
    yield Simulator(process, line.removeprefix("variety upstream listening on ").strip())
    process.stop()


@pytest.fixture(scope="module")
def portable(variety: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose one upstream is portable, at a base URL with a query; retries on, models discovered."""
    upstream = f'[[upstreams]]\nname = "azure"\nbase_url = "{variety.url}{DEPLOYMENT}{QUERY}"\nportable_body = true\n'
    config = write_config(tmp_path_factory.mktemp("portable") / "portable.toml", upstream)
    models = {"SLUICE_MODELS_AVAILABLE": "*", "SLUICE_MODELS_DEFAULT": "strict", "SLUICE_MODELS_DISCOVER": "true"}
    gateway = start_gateway(config=config, env={**models, "SLUICE_ROUTING_RETRIES": "2"})
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def plain(variety: Simulator) -> Iterator[Gateway]:
    """A gateway whose upstream is the fake as the environment variables configure it (not portable)."""
    gateway = start_gateway(upstream=variety, env={"SLUICE_MODELS_AVAILABLE": "*", "SLUICE_MODELS_DEFAULT": "strict"})
    yield gateway
    gateway.process.stop()


def seen_by_upstream(variety: Simulator, request_id: str) -> dict[str, Any]:
    """The fake's line for the request the gateway sent on behalf of `request_id`."""
    return variety.process.wait_for_event("request_seen", request_id=request_id)


async def post(gateway: Gateway, path: str, body: dict[str, Any], rid: str) -> tuple[int, list[Event], Any]:
    """POST `body`; the status, and the events of a stream or the JSON of anything else."""
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + path, json=body, headers={"X-Request-ID": rid}) as response:
            if response.content_type == "text/event-stream":
                return response.status, await read_events(response), None
            return response.status, [], await response.json()


def final_error(status: int, events: list[Event], reply: Any) -> dict[str, Any]:
    """The error a client got: the stream's last event once it started, else the status's envelope."""
    error: dict[str, Any] = events[-1].json()["error"] if status == 200 else reply["error"]
    return error


# --- portable_body -----------------------------------------------------------------------------------


async def test_a_portable_upstream_streams_to_v1_without_sluices_stream_options(
    portable: Gateway, variety: Simulator
) -> None:
    rid = new_request_id("portable-v1-stream")

    status, events, _ = await post(
        portable, "/v1/chat/completions", {"model": "strict", "messages": MESSAGES, "stream": True}, rid
    )

    assert status == 200
    assert openai_text(events) == "Hello world"
    assert events[-1].data == "[DONE]"
    assert "stream_options" not in seen_by_upstream(variety, rid)["body"]


async def test_a_portable_upstream_answers_a_v1_completion(portable: Gateway) -> None:
    rid = new_request_id("portable-v1")

    status, _, reply = await post(portable, "/v1/chat/completions", {"model": "strict", "messages": MESSAGES}, rid)

    assert status == 200
    assert reply["choices"][0]["message"]["content"] == "Hello world"


async def test_a_portable_upstream_gets_the_native_token_limit_as_max_tokens(
    portable: Gateway, variety: Simulator
) -> None:
    rid = new_request_id("portable-native")

    status, events, _ = await post(portable, "/chat/stream", {"message": "hi", "model": "strict", "max_tokens": 5}, rid)

    sent = seen_by_upstream(variety, rid)["body"]
    assert status == 200
    assert tokens_text(events) == "Hello world"
    assert (sent["max_tokens"], "max_completion_tokens" in sent, "stream_options" in sent) == (5, False, False)


async def test_a_portable_upstream_answers_the_original_apis_chat_within_its_token_limit(
    portable: Gateway, variety: Simulator
) -> None:
    rid = new_request_id("portable-chat")

    status, _, reply = await post(portable, "/chat", {"message": "hi", "model": "strict", "max_tokens": 5}, rid)

    assert (status, reply["response"]) == (200, "Hello world")
    assert seen_by_upstream(variety, rid)["body"]["max_tokens"] == 5


async def test_a_stream_whose_upstream_sends_no_usage_is_counted_by_sluice(portable: Gateway) -> None:
    """The native `done` says the upstream's usage is unknown (null); the access log counts the tokens relayed."""
    rid = new_request_id("portable-usage")

    _, events, _ = await post(portable, "/chat/stream", {"message": "hi", "model": "strict"}, rid)

    line = portable.process.wait_for_event("request_finished", request_id=rid)
    [done] = [event for event in events if event.event == "done"]
    assert done.json()["usage"] is None
    assert line["usage"] == {"completion_tokens": 2, "counted_by": "sluice"}


async def test_a_v1_clients_own_stream_options_reach_a_portable_upstream_as_sent(
    portable: Gateway, variety: Simulator
) -> None:
    """Portable drops Sluice's fields, not the client's: the strict upstream refuses them, with its own words."""
    rid = new_request_id("portable-own-options")
    body = {"model": "strict", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": False}}

    status, events, reply = await post(portable, "/v1/chat/completions", body, rid)

    assert seen_by_upstream(variety, rid)["body"]["stream_options"] == {"include_usage": False}
    assert status in (200, 422)  # the stream may have started beside the routing
    assert final_error(status, events, reply)["message"] == REFUSED


async def test_a_strict_upstream_refusing_sluices_own_fields_is_a_422_with_its_message(plain: Gateway) -> None:
    """Without portable_body: what a Mistral-like upstream answers, its message rendered from its detail list."""
    body = {"model": "strict", "messages": MESSAGES, "stream": True}

    status, events, reply = await post(plain, "/v1/chat/completions", body, new_request_id("strict-refused"))

    assert status in (200, 422)
    assert final_error(status, events, reply)["message"] == REFUSED


# --- a base URL with a query -------------------------------------------------------------------------


async def test_a_chat_request_keeps_the_base_urls_query(portable: Gateway, variety: Simulator) -> None:
    rid = new_request_id("query-chat")

    await post(portable, "/v1/chat/completions", {"model": "strict", "messages": MESSAGES}, rid)

    assert seen_by_upstream(variety, rid)["target"] == f"POST {DEPLOYMENT}/chat/completions{QUERY}"


def test_model_discovery_keeps_the_base_urls_query(portable: Gateway, variety: Simulator) -> None:
    # Read at start-up, before the gateway listened; its request id is none.
    variety.process.wait_for_event("request_seen", target=f"GET {DEPLOYMENT}/models{QUERY}")


# --- bodies and streams in other servers' forms ------------------------------------------------------


async def test_a_stream_after_a_byte_order_mark_loses_no_event(plain: Gateway) -> None:
    body = {"model": "bom", "messages": MESSAGES, "stream": True}

    status, events, _ = await post(plain, "/v1/chat/completions", body, new_request_id("bom-stream"))

    assert status == 200
    assert openai_text(events) == "Hello world"


async def test_a_completion_after_a_byte_order_mark_is_relayed_without_it(plain: Gateway) -> None:
    status, _, reply = await post(
        plain, "/v1/chat/completions", {"model": "bom", "messages": MESSAGES}, new_request_id("bom-completion")
    )

    assert status == 200
    assert reply["choices"][0]["message"]["content"] == "Hello world"


async def test_an_older_llamacpp_servers_error_line_reaches_the_client_with_its_message(plain: Gateway) -> None:
    body = {"model": "llamacpp-error", "messages": MESSAGES, "stream": True}

    status, events, reply = await post(plain, "/v1/chat/completions", body, new_request_id("llamacpp-error"))

    assert status in (200, 502)
    assert final_error(status, events, reply)["message"] == LLAMACPP_MESSAGE


async def test_a_completion_cut_short_is_a_malformed_reply_and_not_asked_again(
    portable: Gateway, variety: Simulator
) -> None:
    """Asked again, the upstream would generate (and bill) the whole completion again; retries are on here."""
    rid = new_request_id("cut")

    status, _, reply = await post(portable, "/v1/chat/completions", {"model": "cut", "messages": MESSAGES}, rid)

    line = portable.process.wait_for_event("request_finished", request_id=rid)
    assert (status, reply["error"]["code"]) == (502, "upstream_malformed_reply")
    assert [attempt["status"] for attempt in line["attempts"]] == ["malformed_reply"]
    assert len([seen for seen in variety.process.events("request_seen") if seen["request_id"] == rid]) == 1


# --- a base URL with credentials ---------------------------------------------------------------------


def test_a_base_url_with_a_password_stops_start_up_without_echoing_it() -> None:
    result = start_up(AI_INTEGRATIONS_OPENAI_BASE_URL="http://user:hunter2-pass@127.0.0.1:9/v1")

    line = refusal(result)
    assert line.startswith("sluice: setting upstream.base_url: must not hold a user name or password")
    assert "AI_INTEGRATIONS_OPENAI_API_KEY" in line
    assert "hunter2" not in result.stderr + result.stdout


def test_an_upstreams_entry_with_a_password_stops_start_up_naming_api_key_env(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[[upstreams]]\nname = "a"\nbase_url = "https://user:hunter2-pass@a.example/v1"\n')

    result = start_up("--config", str(config))

    line = refusal(result)
    assert line.startswith("sluice: setting upstreams.0.base_url: must not hold a user name or password")
    assert "api_key_env" in line
    assert "hunter2" not in result.stderr + result.stdout
