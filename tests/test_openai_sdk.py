"""The official openai Python SDK against `python run.py`, unchanged but for its base URL."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.support.processes import Gateway, Simulator, start_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello from the Python SDK"}]


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-side-unused", max_retries=0)


def async_sdk(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk-client-side-unused", max_retries=0)


@pytest.fixture(scope="module")
def heartbeat_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A gateway that sends a heartbeat every 100 ms of silence."""
    gateway = start_gateway(upstream=simulator, env={"SLUICE_STREAM_HEARTBEAT_INTERVAL": "0.1"})
    yield gateway
    gateway.process.stop()


def test_sync_completion_returns_text_and_usage(gateway: Gateway) -> None:
    with sdk(gateway) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


def test_sync_stream_matches_the_completion_and_has_no_usage_unless_asked(gateway: Gateway) -> None:
    with sdk(gateway) as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert all(c.usage is None for c in chunks)


def test_sync_stream_with_include_usage_ends_with_usage_chunk(gateway: Gateway) -> None:
    with sdk(gateway) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_async_completion_and_stream_agree(gateway: Gateway) -> None:
    async with async_sdk(gateway) as client:
        completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
    assert text == completion.choices[0].message.content
    assert usage is not None
    assert completion.usage is not None
    assert usage.completion_tokens == completion.usage.completion_tokens


def test_models_list_and_retrieve(gateway: Gateway) -> None:
    with sdk(gateway) as client:
        models = [m.id for m in client.models.list()]
        model = client.models.retrieve("gpt-4o")
    assert "gpt-4o" in models
    assert model.id == "gpt-4o"


def test_unknown_model_raises_not_found_error(gateway: Gateway) -> None:
    with sdk(gateway) as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


def test_invalid_body_raises_bad_request_error_naming_the_field(gateway: Gateway) -> None:
    with sdk(gateway) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=7)
    assert caught.value.param == "temperature"


def test_upstream_rate_limit_raises_rate_limit_error_with_retry_after(gateway: Gateway) -> None:
    with sdk(gateway) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"sim": {"fault": "rate_limit"}})
    assert caught.value.response.headers["retry-after"] == "7"


def test_upstream_failure_raises_internal_server_error_with_502(gateway: Gateway) -> None:
    with sdk(gateway) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"sim": {"fault": "server_error"}})
    assert caught.value.status_code == 502


def sdk_failure_and_retries(gateway: Gateway) -> tuple[openai.InternalServerError, int]:
    """A retrying SDK's call that fails upstream every time: its error, and how often the SDK retried it."""
    retrying = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-client-side-unused", max_retries=1)
    with retrying as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"sim": {"fault": "server_error"}})
    # The SDK numbers each request it sends; the error is its last one's.
    return caught.value, int(caught.value.response.request.headers["x-stainless-retry-count"])


def test_an_upstream_failure_sluice_retried_is_not_retried_again_by_the_sdk(simulator: Simulator) -> None:
    """Sluice's routing retried it already: the SDK's own retries made each a whole routing again."""
    with start_gateway(upstream=simulator, env={"SLUICE_ROUTING_RETRIES": "1"}) as gateway:
        error, retries = sdk_failure_and_retries(gateway)
    assert error.response.headers["x-should-retry"] == "false"
    assert retries == 0


def test_an_upstream_failure_from_a_single_attempt_is_retried_by_the_sdk(gateway: Gateway) -> None:
    """With `routing.retries = 0` (this gateway's) the SDK's retry is the only one the call gets."""
    error, retries = sdk_failure_and_retries(gateway)
    assert "x-should-retry" not in error.response.headers
    assert retries == 1


def test_upstream_timeout_raises_status_error_with_504(simulator: Simulator) -> None:
    with start_gateway(upstream=simulator, env={"SLUICE_UPSTREAM_TOTAL_TIMEOUT": "0.5"}) as gateway:
        with sdk(gateway) as client, pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, extra_body={"sim": {"fault": "hang_first"}}
            )
        assert caught.value.status_code == 504


def test_mid_stream_failure_raises_api_error(gateway: Gateway) -> None:
    with sdk(gateway) as client:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, extra_body={"sim": {"tokens": 6, "fault": "error_event"}}
        )
        with pytest.raises(openai.APIError) as caught:
            for _ in stream:
                pass
    assert "simulated upstream failure" in str(caught.value)


def test_stream_with_heartbeats_parses_without_error(heartbeat_gateway: Gateway) -> None:
    with sdk(heartbeat_gateway) as client:
        response = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, stream=True, extra_body={"sim": {"tokens": 3, "ttft_ms": 500}}
        )
        raw = response.http_response
        lines = [line for line in raw.iter_lines()]
    assert any(line.startswith(":") for line in lines), "the stream carried no heartbeat"
    with sdk(heartbeat_gateway) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True, extra_body={"sim": {"tokens": 3, "ttft_ms": 500}}
            )
        )
    assert len("".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split()) == 3


def test_tools_and_unknown_fields_pass_through_to_the_upstream(gateway: Gateway) -> None:
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    with sdk(gateway) as client:
        completion = client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            tools=tools,
            seed=7,
            n=1,
            logprobs=False,
            extra_body={"brand_new_openai_parameter": {"x": 1}},
        )
    assert completion.choices[0].message.content
