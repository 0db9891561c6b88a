"""The keep-alive resend on the access line: `python run.py` in front of a raw upstream written byte by byte.

A kept-alive upstream connection that fails before any byte of its answer has the request sent
once more on a fresh one (upstreams/client.py). The upstream may have taken it twice, so the
request's access line counts it (`resent`), apart from the routing's `attempts`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.support.processes import Gateway, start_gateway
from tests.support.raw_upstream import FINISH, LAST_CHUNK, STREAM_HEAD, Exchange, RawUpstream, chunk, json_reply, token
from tests.support.tasks import running

SECONDS = 10  # a bound far from any real wait here
REPLY = json_reply(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}')
# A whole stream, its body ended: the connection goes back to the pool for the next request.
STREAM = STREAM_HEAD + chunk(token(0) + FINISH) + LAST_CHUNK


def chat(streams: bool) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": streams}


async def ask(gateway: Gateway, upstream: RawUpstream, rid: str, *, streams: bool, reset: bool) -> None:
    """One chat through the gateway; with `reset`, the upstream closes the kept connection on reading it."""
    async with aiohttp.ClientSession() as http:
        post = http.post(gateway.url + "/v1/chat/completions", json=chat(streams), headers={"X-Request-ID": rid})
        async with running(post) as sent:
            exchange: Exchange = await upstream.next(SECONDS)
            if reset:
                exchange.close()  # read on the kept connection, then closed: the gateway sends it again
                exchange = await upstream.next(SECONDS)
            exchange.write(STREAM if streams else REPLY)
            async with asyncio.timeout(SECONDS):
                response = await sent
                assert response.status == 200
                await response.read()


async def lines(gateway: Gateway, *rids: str) -> list[dict[str, Any]]:
    return [
        await asyncio.to_thread(gateway.process.wait_for_event, "request_finished", SECONDS, request_id=rid)
        for rid in rids
    ]


@pytest.mark.parametrize("streams", [False, True], ids=["completion", "stream"])
async def test_a_request_resent_on_a_fresh_connection_shows_resent_on_its_access_line(
    raw_upstream: RawUpstream, streams: bool
) -> None:
    env = {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test", "AI_INTEGRATIONS_OPENAI_BASE_URL": raw_upstream.url}
    with await asyncio.to_thread(start_gateway, env=env) as gateway:
        await ask(gateway, raw_upstream, "t-kept", streams=streams, reset=False)
        await ask(gateway, raw_upstream, "t-resent", streams=streams, reset=True)
        (line,) = await lines(gateway, "t-resent")
    assert raw_upstream.connections == 2
    assert line["resent"] == 1
    # Transport, not routing: still the one attempt, which the upstream answered.
    assert [(attempt["upstream"], attempt["status"]) for attempt in line["attempts"]] == [("default", 200)]


async def test_a_request_sent_once_has_no_resent_on_its_access_line(raw_upstream: RawUpstream) -> None:
    env = {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test", "AI_INTEGRATIONS_OPENAI_BASE_URL": raw_upstream.url}
    with await asyncio.to_thread(start_gateway, env=env) as gateway:
        for rid in ("t-first", "t-second"):  # the second on the kept connection
            await ask(gateway, raw_upstream, rid, streams=False, reset=False)
        found = await lines(gateway, "t-first", "t-second")
    assert raw_upstream.connections == 1
    assert [("resent" in line, len(line["attempts"])) for line in found] == [(False, 1), (False, 1)]
