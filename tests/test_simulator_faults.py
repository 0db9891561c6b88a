"""The simulator's faults for resilience tests, in-process: each does what its name says."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.simulator import create_simulator_app
from tests.conftest import AiohttpClient

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def sim(aiohttp_client: AiohttpClient) -> Client:
    client: Client = await aiohttp_client(create_simulator_app(control=True))
    return client


async def chat(sim: Client, rid: str, sim_fields: dict[str, Any], **extra: Any) -> aiohttp.ClientResponse:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "sim": sim_fields, **extra}
    return await sim.post("/v1/chat/completions", json=body, headers={"X-Request-ID": rid})


async def test_fail_times_fails_the_first_attempts_of_a_request_id_then_answers(sim: Client) -> None:
    statuses = [(await chat(sim, "r1", {"fault": "server_error", "fail_times": 2})).status for _ in range(3)]
    assert statuses == [500, 500, 200]


async def test_fail_times_counts_each_request_id_apart(sim: Client) -> None:
    await chat(sim, "a", {"fault": "server_error", "fail_times": 1})
    assert (await chat(sim, "b", {"fault": "server_error", "fail_times": 1})).status == 500


async def test_fault_model_strikes_only_that_model(sim: Client) -> None:
    assert (await chat(sim, "r", {"fault": "server_error", "fault_model": "other"})).status == 200
    assert (await chat(sim, "r2", {"fault": "server_error", "fault_model": "m"})).status == 500


@pytest.mark.parametrize(("value", "header", "sent"), [("3", "Retry-After", "3"), ("250ms", "retry-after-ms", "250")])
async def test_retry_after_is_sent_as_asked(sim: Client, value: str, header: str, sent: str) -> None:
    response = await chat(sim, "r", {"fault": "rate_limit", "retry_after": value})
    assert response.status == 429
    assert response.headers[header] == sent


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("overloaded", 503, "overloaded"), ("context_length", 400, "context_length_exceeded"),
     ("content_policy", 400, "content_policy_violation")],
)  # fmt: skip
async def test_status_faults_carry_their_code(sim: Client, fault: str, status: int, code: str) -> None:
    response = await chat(sim, "r", {"fault": fault})
    assert response.status == status
    assert (await response.json())["error"]["code"] == code


async def test_reset_closes_the_connection_before_any_header(sim: Client) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await chat(sim, "r", {"fault": "reset"})


async def test_reject_prefill_refuses_a_final_assistant_message_only(sim: Client) -> None:
    prefill = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The"}]
    assert (await chat(sim, "r", {"reject_prefill": True})).status == 200
    response = await chat(sim, "r2", {"reject_prefill": True}, messages=prefill)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_prefill"


async def test_prefill_fault_strikes_a_final_assistant_message_only(sim: Client) -> None:
    prefill = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The"}]
    assert (await chat(sim, "r", {"prefill_fault": "context_length"})).status == 200
    response = await chat(sim, "r2", {"prefill_fault": "context_length"}, messages=prefill)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "context_length_exceeded"


async def test_fault_at_cuts_after_that_many_tokens(sim: Client) -> None:
    response = await chat(sim, "r", {"fault": "cut", "fault_at": 2, "tokens": 6}, stream=True)
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    record = await (await sim.get("/_sim/requests/r")).json()
    assert record["chunks_sent"] == 2


async def test_attempts_lists_every_attempt_of_a_request_id_with_times(sim: Client) -> None:
    for _ in range(2):
        await chat(sim, "r", {"fault": "server_error", "fail_times": 1})
    seen = (await (await sim.get("/_sim/attempts/r")).json())["attempts"]
    assert [a["outcome"] for a in seen] == ["fault", "completed"]
    assert seen[0]["opened_at"] <= seen[1]["opened_at"]


# The event each error fault sends, in the form some OpenAI-compatible provider uses.
ERROR_FAULT_EVENTS = {
    "error_text": b'data: {"error":"simulated upstream failure"}\n\n',
    "error_bare": b'data: {"error":{"message":"simulated upstream failure"}}\n\n',
    "error_named": b'event: error\ndata: {"message":"simulated upstream failure","type":"server_error"}\n\n',
    "error_object": b'data: {"object":"error","message":"simulated upstream failure","type":"InternalServerError",'
    b'"param":null,"code":500}\n\n',
}


@pytest.mark.parametrize(("fault", "event"), ERROR_FAULT_EVENTS.items(), ids=list(ERROR_FAULT_EVENTS))
async def test_each_providers_error_form_is_sent_after_fault_at_tokens_and_ends_the_body(
    sim: Client, fault: str, event: bytes
) -> None:
    response = await chat(sim, "r", {"fault": fault, "fault_at": 2, "tokens": 6}, stream=True)
    body = await response.read()
    assert body.endswith(event)
    assert body.removesuffix(event).count(b'"content":"') == 3  # the role chunk's empty content, then two tokens
