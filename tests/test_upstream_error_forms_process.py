"""Upstream errors in other providers' forms inside a stream, against `python run.py` and the simulator process.

OpenAI-compatible upstreams report a failure mid-stream in other forms than OpenAI's error object:
a text (`{"error": "..."}`), an error object with a message only, an SSE event named `error`, and
vLLM's `{"object": "error", ...}`. The simulator sends each (`fault=error_text` and so on, with the
message "simulated upstream failure"). Each must end the client's stream with Sluice's own error
event, carrying the upstream's message, with nothing of the payload relayed: on `/v1` and on the
native route (both relayed by the push path), and on a browser stream (the pulling path). Before
the first token, the next upstream of the pool answers instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.client import new_request_id
from tests.support.processes import Gateway, Simulator
from tests.support.resilience import ask, attempts, completed, gateway_with
from tests.support.sse import Event, openai_text, read_events

FORMS = ["error_text", "error_bare", "error_named", "error_object"]
MESSAGE = "simulated upstream failure"


@pytest.fixture(scope="module")
def pool(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A pool of two upstreams serving every model (both the simulator, under two names).

    Each test fails one attempt on purpose: no number of them may open a breaker.
    """
    upstreams = f"""
[routing]
breaker_failures = 1000
[[upstreams]]
name = "first"
base_url = "{simulator.base_url}"
[[upstreams]]
name = "second"
base_url = "{simulator.base_url}"
"""
    gateway = gateway_with(tmp_path_factory.mktemp("pool"), "pool", simulator, upstreams)
    yield gateway
    gateway.process.stop()


def data_events(events: list[Event]) -> list[Event]:
    """The events that carry data: no heartbeat comment, no native stream's opening `retry:` hint."""
    return [event for event in events if event.data]


@pytest.mark.parametrize("fault", FORMS)
async def test_an_openai_stream_ends_with_sluices_error_event_and_relays_none_of_the_upstreams(
    gateway: Gateway, fault: str
) -> None:
    status, events, _ = await ask(gateway, f"tokens=6 fault={fault} fault_at=3", new_request_id(fault))
    *relayed, last = data_events(events)
    assert status == 200
    assert all(event.json()["object"] == "chat.completion.chunk" for event in relayed)
    assert len(openai_text(relayed).split()) == 3
    # error_named names OpenAI's `server_error`, which is kept; the other forms name no documented type.
    kind = "server_error" if fault == "error_named" else "upstream_error"
    assert last.json() == {"error": {"message": MESSAGE, "type": kind, "param": None, "code": "upstream_failed"}}


def assert_failed_after_three_tokens(events: list[Event]) -> None:
    """Three `token` events, then `failed` with the upstream's message."""
    *tokens, last = data_events(events)
    assert [event.event for event in tokens] == ["token"] * 3
    assert last.event == "failed"
    assert last.json()["error"]["message"] == MESSAGE


@pytest.mark.parametrize("fault", FORMS)
async def test_a_native_stream_ends_with_a_failed_event_carrying_the_upstreams_message(
    gateway: Gateway, fault: str
) -> None:
    body = {"message": f"hi\n#sim tokens=6 fault={fault} fault_at=3"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.url + "/chat/stream", json=body, headers={"X-Request-ID": new_request_id(fault)}
        ) as r:
            events = await read_events(r)
    assert_failed_after_three_tokens(events)


@pytest.mark.parametrize("fault", FORMS)
async def test_a_browser_stream_ends_with_a_failed_event_carrying_the_upstreams_message(
    gateway: Gateway, fault: str
) -> None:
    body = {"message": f"hi\n#sim tokens=6 fault={fault} fault_at=3"}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/chat/streams", json=body) as response:
            stream_id = (await response.json())["id"]
        async with http.get(f"{gateway.url}/chat/streams/{stream_id}") as response:
            events = await read_events(response)
    assert_failed_after_three_tokens(events)


@pytest.mark.parametrize("fault", FORMS)
async def test_an_error_before_the_first_token_is_retried_on_the_next_upstream_of_the_pool(
    pool: Gateway, simulator: Simulator, fault: str
) -> None:
    rid = new_request_id(fault)
    status, events, _ = await ask(pool, f"tokens=6 fault={fault} fault_at=0 fail_times=1", rid)
    line = pool.process.wait_for_event("request_finished", request_id=rid)
    assert status == 200
    assert completed(events, 6)
    assert [attempt["status"] for attempt in line["attempts"]] == ["error_event", 200]
    assert {attempt["upstream"] for attempt in line["attempts"]} == {"first", "second"}
    assert len(await attempts(simulator, rid)) == 2


# An error the upstream sends with status 200 as a JSON body, where the stream's events should be.
REPLY_MESSAGE = "simulated: model overloaded"


async def test_a_json_error_sent_in_place_of_a_stream_reaches_the_client_as_that_error(gateway: Gateway) -> None:
    """Before: "ended the stream before its first token" (upstream_stream_broken), its message lost.

    The stream's response may have started beside the routing (then the error is its final event)
    or not (then it is the status); either way the message and code are the upstream's.
    """
    status, events, failed = await ask(gateway, "tokens=6 fault=error_reply", new_request_id("error_reply"))
    error = data_events(events)[-1].json()["error"] if status == 200 else failed["body"]["error"]
    assert status in (200, 502)
    assert (error["message"], error["code"]) == (REPLY_MESSAGE, "overloaded")


async def test_a_json_error_in_place_of_a_stream_is_retried_on_the_next_upstream_of_the_pool(
    pool: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("error_reply")
    status, events, _ = await ask(pool, "tokens=6 fault=error_reply fail_times=1", rid)
    line = pool.process.wait_for_event("request_finished", request_id=rid)
    assert status == 200
    assert completed(events, 6)
    assert [attempt["status"] for attempt in line["attempts"]] == ["error_event", 200]
    assert len(await attempts(simulator, rid)) == 2
