"""How a stream ends when its upstream misbehaves after the answer or instead of it, against `python run.py`.

The upstream is tests/support/cut_upstream.py, a process of its own on raw sockets: it resets or
cuts its connection after the finish chunk (and the usage chunk) but before `[DONE]`, and answers a
stream request with a JSON error behind a blank line, or with an HTML page.

A cut after every choice finished is no failure: the answer is whole, so the stream ends as its
body's end would (`[DONE]`, the native `done`), is not continued (a second, paid answer spliced
after the first), and the access log says `completed`. A cut before that is still
`upstream_stream_broken`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import new_request_id
from tests.support.cut_upstream import ERROR_CODE, ERROR_MESSAGE
from tests.support.processes import Gateway, ManagedProcess, Simulator, clean_env
from tests.support.resilience import gateway_with, prefill_upstream
from tests.support.sse import Event, openai_text, read_events, tokens_text

# Far above a stream of a few events on loopback: only a stream left hanging misses it.
BOUND = 20.0
NO_BREAKER = "\n[routing]\nbreaker_failures = 1000\n"


@pytest.fixture(scope="module")
def cut_upstream() -> Iterator[Simulator]:
    process = ManagedProcess([sys.executable, "-m", "tests.support.cut_upstream", "--port", "0"], clean_env()).start()
    line = process.wait_for_line(lambda text: text.startswith("cut upstream listening on "))
    yield Simulator(process, line.removeprefix("cut upstream listening on ").strip())
    process.stop()


def _gateway(tmp: Path, name: str, upstream: Simulator, extra: str = "") -> Gateway:
    entry = f'\n[[upstreams]]\nname = "cut"\nbase_url = "{upstream.base_url}"\n{extra}'
    return gateway_with(tmp, name, upstream, NO_BREAKER + entry)


@pytest.fixture(scope="module")
def plain(cut_upstream: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose one upstream declares no continuation."""
    with _gateway(tmp_path_factory.mktemp("plain"), "plain", cut_upstream) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def continuing(cut_upstream: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose one upstream continues a cut stream by assistant prefill."""
    path = tmp_path_factory.mktemp("continuing")
    with gateway_with(
        path, "continuing", cut_upstream, NO_BREAKER + prefill_upstream("cut", cut_upstream.base_url)
    ) as gateway:
        yield gateway


async def ask(gateway: Gateway, mode: str, rid: str, **fields: Any) -> list[Event]:
    """Stream a /v1 chat whose message picks the upstream's behaviour; its data events (status 200 asserted)."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": mode}], "stream": True, **fields}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            assert r.status == 200
            return [event for event in await read_events(r) if event.data]


def finishes(events: list[Event]) -> list[str]:
    """Every finish reason the client got, in order."""
    return [
        choice["finish_reason"]
        for event in events
        if event.data != "[DONE]"
        for choice in event.json().get("choices", [])
        if choice.get("finish_reason")
    ]


def usages(events: list[Event]) -> list[dict[str, Any]]:
    """Every usage object the client got."""
    return [usage for event in events if event.data != "[DONE]" and (usage := event.json().get("usage"))]


def upstream_requests(upstream: Simulator, rid: str) -> list[dict[str, Any]]:
    """The requests the upstream received for `rid` (each one an answer paid for), once it printed the first.

    A second one (a retry, a continuation) is asked for before the client's stream ends, so before the
    access log line every test waits for first.
    """
    upstream.process.wait_for_line(lambda text: f'"request_id": "{rid}"' in text)
    return [line for line in upstream.process.events("cut_upstream_request") if line["request_id"] == rid]


@pytest.mark.parametrize("mode", ["finish-usage-reset", "finish-usage-cut"])
async def test_a_cut_after_the_finish_and_usage_ends_the_stream_with_done(
    plain: Gateway, cut_upstream: Simulator, mode: str
) -> None:
    """Before: the whole answer and its usage, then `upstream_stream_broken`; the SDKs raised on a complete answer."""
    rid = new_request_id(mode)
    events = await ask(plain, mode, rid, stream_options={"include_usage": True})
    line = plain.process.wait_for_event("request_finished", request_id=rid)
    assert (openai_text(events), finishes(events), events[-1].data) == ("t0 t1 t2", ["stop"], "[DONE]")
    assert not any('"error"' in event.data for event in events)
    assert usages(events) == [{"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}]
    assert (line["outcome"], line["finish_reason"], line["usage"]["counted_by"]) == ("completed", "stop", "upstream")
    assert line["upstream_ending"] == "cut_after_finish"
    assert len(upstream_requests(cut_upstream, rid)) == 1


async def test_a_cut_after_the_finish_is_not_continued(continuing: Gateway, cut_upstream: Simulator) -> None:
    """Before: a second, paid request, its answer spliced after the whole first one (two finishes, two usages)."""
    rid = new_request_id("finished-cut-continued")
    events = await ask(continuing, "finish-usage-reset", rid, stream_options={"include_usage": True})
    line = continuing.process.wait_for_event("request_finished", request_id=rid)
    assert (openai_text(events), finishes(events), events[-1].data) == ("t0 t1 t2", ["stop"], "[DONE]")
    assert [usage.get("sluice_continued") for usage in usages(events)] == [None]
    assert len(upstream_requests(cut_upstream, rid)) == 1
    assert (line["outcome"], line.get("continuation")) == ("completed", None)


async def test_a_native_stream_cut_after_the_finish_ends_with_done_and_each_token_once(
    continuing: Gateway, cut_upstream: Simulator
) -> None:
    rid = new_request_id("finished-cut-native")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as http:
        async with http.post(
            continuing.url + "/chat/stream", json={"message": "finish-usage-reset"}, headers={"X-Request-ID": rid}
        ) as response:
            events = [event for event in await read_events(response) if event.data]
    line = continuing.process.wait_for_event("request_finished", request_id=rid)
    assert tokens_text(events) == "t0 t1 t2"
    assert (events[-1].event, events[-1].json()["finish_reason"]) == ("done", "stop")
    assert len(upstream_requests(cut_upstream, rid)) == 1
    assert line["outcome"] == "completed"


async def test_a_cut_after_the_finish_before_the_usage_ends_with_done_and_sluice_counts_the_usage(
    plain: Gateway,
) -> None:
    """The answer is whole, its usage chunk is not: the stream ends normally, the access log counts the chunks."""
    rid = new_request_id("finish-cut")
    events = await ask(plain, "finish-cut", rid, stream_options={"include_usage": True})
    line = plain.process.wait_for_event("request_finished", request_id=rid)
    assert (openai_text(events), finishes(events), events[-1].data, usages(events)) == (
        "t0 t1 t2",
        ["stop"],
        "[DONE]",
        [],
    )
    assert (line["outcome"], line["usage"]) == ("completed", {"completion_tokens": 3, "counted_by": "sluice"})


async def test_a_cut_after_every_choice_finished_ends_with_done(plain: Gateway) -> None:
    events = await ask(plain, "n2-finish-cut", new_request_id("n2-finish-cut"), n=2)
    assert (finishes(events), events[-1].data) == (["stop", "stop"], "[DONE]")


async def test_a_cut_while_a_choice_is_unfinished_ends_with_upstream_stream_broken(plain: Gateway) -> None:
    """Choice 0's finish is not the answer's: choice 1 started and was cut (the cut says so, not an "end")."""
    events = await ask(plain, "n2-half-cut", new_request_id("n2-half-cut"), n=2)
    error = events[-1].json()["error"]
    assert (error["code"], error["message"]) == ("upstream_stream_broken", "The upstream connection failed mid-stream.")


async def test_a_cut_before_the_finish_ends_with_upstream_stream_broken(plain: Gateway) -> None:
    rid = new_request_id("tokens-cut")
    events = await ask(plain, "tokens-cut", rid)
    line = plain.process.wait_for_event("request_finished", request_id=rid)
    assert (openai_text(events), events[-1].json()["error"]["code"]) == ("t0 t1 t2", "upstream_stream_broken")
    assert line["outcome"] == "upstream_error"


async def test_the_openai_sdk_reads_a_stream_cut_after_its_finish_as_a_whole_answer(plain: Gateway) -> None:
    """Before: APIError raised by the SDK after every token and the usage had arrived."""
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=plain.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND)
    text, usage = "", None
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "finish-usage-reset"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
            usage = chunk.usage or usage
    assert (text, usage and usage.total_tokens) == ("t0 t1 t2", 12)


async def test_a_json_error_after_a_blank_line_reaches_the_client_with_its_message_and_code(
    plain: Gateway, cut_upstream: Simulator
) -> None:
    """Before: the blank line alone was read as the start of an event stream: `upstream_stream_broken`,
    "ended the stream before its first token", three attempts logged as `reset`."""
    rid = new_request_id("newline-json-error")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "newline-json-error"}], "stream": True}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as http:
        async with http.post(plain.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            status = r.status
            error = (await r.json())["error"] if status != 200 else (await read_events(r))[-1].json()["error"]
    line = plain.process.wait_for_event("request_finished", request_id=rid)
    assert status in (200, 502)
    assert (error["message"], error["code"]) == (ERROR_MESSAGE, ERROR_CODE)
    assert {attempt["status"] for attempt in line["attempts"]} == {"error_event"}


async def test_an_html_page_in_place_of_a_stream_is_a_malformed_reply_not_asked_again(
    plain: Gateway, cut_upstream: Simulator
) -> None:
    """As for a non-streaming call: before, it was read as an event stream with none, and asked three times."""
    rid = new_request_id("html")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "html"}], "stream": True}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND)) as http:
        async with http.post(plain.url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}) as r:
            status = r.status
            error = (await r.json())["error"] if status != 200 else (await read_events(r))[-1].json()["error"]
    line = plain.process.wait_for_event("request_finished", request_id=rid)
    assert error["code"] == "upstream_malformed_reply"
    assert [attempt["status"] for attempt in line["attempts"]] == ["malformed_reply"]
    assert len(upstream_requests(cut_upstream, rid)) == 1


async def test_an_event_stream_labelled_as_html_is_relayed(plain: Gateway) -> None:
    """A web framework's default type on a real stream: the bytes start as events, so events they are."""
    events = await ask(plain, "html-events", new_request_id("html-events"))
    assert (openai_text(events), events[-1].data) == ("t0 t1 t2", "[DONE]")
