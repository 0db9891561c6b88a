"""Deltas that are not content, and `n` an upstream ignores, against `python run.py` and a hostile upstream process.

A reasoning model (vLLM's and DeepSeek's `reasoning_content`, OpenRouter's and Ollama's `reasoning`)
or an audio model streams deltas with no content long before its answer: each is a token, relayed at
once, and the first ends the first-token wait. An upstream that ignores `n` streams one choice and
`[DONE]`: a whole answer, not a cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.client import ROUTES
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.resilience import gateway_with, prefill_upstream
from tests.support.sse import Event, iter_events, read_events

# A bound on what must come at once, far below every deadline of the patient gateway.
BOUND = 10.0
PATIENT = {
    "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": "120",
    "SLUICE_UPSTREAM_IDLE_TIMEOUT": "120",
    "SLUICE_UPSTREAM_TOTAL_TIMEOUT": "300",
    "SLUICE_STREAM_HEARTBEAT_INTERVAL": "60",
}
# Shorter than the hostile upstream's reasoning (20 deltas, 0.25 s apart: 5 s), far from its gaps.
FIRST_TOKEN_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def patient(hostile: Simulator) -> Iterator[Gateway]:
    """A gateway whose every deadline is minutes away."""
    gateway = start_gateway(upstream=hostile, env=PATIENT)
    yield gateway
    gateway.process.stop()


@pytest.fixture(scope="module")
def impatient(hostile: Simulator) -> Iterator[Gateway]:
    """A gateway whose first-token deadline is shorter than the hostile upstream's reasoning."""
    gateway = start_gateway(
        upstream=hostile, env={**PATIENT, "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT": str(FIRST_TOKEN_TIMEOUT)}
    )
    yield gateway
    gateway.process.stop()


def chat(mode: str, **extra: Any) -> dict[str, Any]:
    """A /v1 streaming body that picks the hostile upstream's `mode`."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": mode}], "stream": True, **extra}


def data_events(events: list[Event]) -> list[Event]:
    return [event for event in events if event.comment is None and event.data]


def outline(events: list[Event]) -> list[str | None]:
    """Each /v1 event as its first choice's finish reason, `[DONE]`, or `error <code>`."""
    shown: list[str | None] = []
    for event in data_events(events):
        body = None if event.data == "[DONE]" else event.json()
        if body is None:
            shown.append("[DONE]")
        elif "error" in body:
            shown.append(f"error {body['error']['code']}")
        else:
            shown.append(body["choices"][0]["finish_reason"])
    return shown


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "audio"])
async def test_a_delta_without_content_reaches_the_client_at_once(patient: Gateway, field: str) -> None:
    """The upstream sends its role and one such delta, then nothing: the client has both within the bound.

    Before, they were held until the first content, which never comes here (nor, for minutes, from a
    model that reasons).
    """
    seen: list[Event] = []
    async with aiohttp.ClientSession() as http:
        async with http.post(patient.url + "/v1/chat/completions", json=chat(f"reasoning:{field}")) as response:
            assert response.status == 200
            async with asyncio.timeout(BOUND):
                async for event in iter_events(response):
                    if event.comment is None and event.data:
                        seen.append(event)
                    if len(seen) == 2:
                        break
    role, delta = (event.json()["choices"][0]["delta"] for event in seen)
    assert (role, delta.keys()) == ({"role": "assistant"}, {field})


@pytest.mark.parametrize("route", ["openai", "native"])
async def test_a_model_reasoning_longer_than_first_token_timeout_is_answered_in_full(
    impatient: Gateway, route: str
) -> None:
    """Its reasoning is its first token: first_token_timeout (2 s) does not end it 5 s into its reasoning.

    On /v1 every reasoning delta is relayed; the native dialect sends the answer's text only.
    """
    path, body = ROUTES[route]
    async with aiohttp.ClientSession() as http:
        async with http.post(impatient.url + path, json=body("reasoning-long")) as response:
            events = data_events(await read_events(response))
    if route == "openai":
        deltas = [event.json()["choices"][0]["delta"] for event in events[:-1]]
        assert sum("reasoning_content" in delta for delta in deltas) == 20
        assert {"content": "answer"} in deltas
        assert events[-1].data == "[DONE]"
    else:
        assert [(event.event, event.json()) for event in events[:-1]] == [("token", {"content": "answer"})]
        assert events[-1].event == "done"


async def test_an_upstream_that_ignores_n_ends_the_stream_with_its_finish_and_done(patient: Gateway) -> None:
    """n=2 asked, one choice streamed, finished, then [DONE] (in the same read as the finish chunk).

    Before: an error "after 1 of its 2 choices finished", no [DONE], and the finish chunk, held to
    go out with the final event, was dropped.
    """
    async with aiohttp.ClientSession() as http:
        async with http.post(patient.url + "/v1/chat/completions", json=chat("one-choice", n=2)) as response:
            events = await read_events(response)
    assert outline(events) == [None, None, "stop", "[DONE]"]


IDLE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def quick_idle(hostile: Simulator) -> Iterator[Gateway]:
    """A gateway whose idle deadline is short; every other deadline minutes away."""
    gateway = start_gateway(upstream=hostile, env={**PATIENT, "SLUICE_UPSTREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT)})
    yield gateway
    gateway.process.stop()


async def test_a_stream_whose_upstream_goes_silent_after_finishing_ends_with_done(quick_idle: Gateway) -> None:
    """Every choice finished, then neither [DONE] nor the body's end: idle_timeout ends it as done, not failed."""
    async with aiohttp.ClientSession() as http:
        async with http.post(quick_idle.url + "/v1/chat/completions", json=chat("finish-then-hold")) as response:
            async with asyncio.timeout(BOUND + IDLE_TIMEOUT):
                events = await read_events(response)
    assert outline(events) == [None, "stop", "[DONE]"]


@pytest.fixture(scope="module")
def continuing_quick_idle(hostile: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`quick_idle`, on an upstream that declares assistant-prefill continuation."""
    upstream = prefill_upstream("hostile", hostile.base_url)
    path = tmp_path_factory.mktemp("continue-idle")
    env = {**PATIENT, "SLUICE_UPSTREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT)}
    gateway = gateway_with(path, "continue-idle", hostile, upstream, **env)
    yield gateway
    gateway.process.stop()


async def test_a_continuable_stream_silent_after_finishing_ends_with_done_and_is_not_continued(
    continuing_quick_idle: Gateway,
) -> None:
    # Continuation watches silences itself: it took this one for a cut and asked for more of a whole answer.
    gateway = continuing_quick_idle
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=chat("finish-then-hold")) as response:
            async with asyncio.timeout(BOUND + IDLE_TIMEOUT):
                events = await read_events(response)
    assert outline(events) == [None, "stop", "[DONE]"]
    assert gateway.process.events("stream_continued") == []


@pytest.mark.parametrize("mode", ["reasoning:reasoning_content", "tool-call"])
async def test_a_continuable_stream_silent_after_deltas_without_text_ends_at_the_idle_timeout(
    continuing_quick_idle: Gateway, mode: str
) -> None:
    """A reasoning or tool-call delta, then silence: idle_timeout (1 s) ends it, as it ends any stream.

    Before, with continuation configured, nothing watched a gap before the first content text but the
    guard, whose idle deadline leaves a continuation room to open: idle + header + first token (here
    1 + 2 + 120 s).
    """
    async with aiohttp.ClientSession() as http:
        async with http.post(continuing_quick_idle.url + "/v1/chat/completions", json=chat(mode)) as response:
            async with asyncio.timeout(BOUND + IDLE_TIMEOUT):
                events = await read_events(response)
    assert outline(events)[-1] == "error idle_timeout"
