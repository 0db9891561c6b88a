"""Only a real reconnect of the one-step GET reads without taking from its key's limits.

A `Last-Event-ID` header on any other chat route, or an empty one, used to skip the key's
requests, tokens and streams limits altogether (`python run.py` processes, keys configured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.support.client import new_request_id
from tests.support.processes import Gateway, Simulator
from tests.support.security import KEY_STREAMS, bearer, start_keyed_gateway
from tests.support.sse import iter_events, read_events

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=1"}]}
HELD = "x\n#sim fault=hang_first"


@pytest.fixture(scope="module")
def keyed(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_keyed_gateway(tmp_path_factory.mktemp("keyed"), simulator)
    yield gateway
    gateway.process.stop()


@pytest.fixture
async def at_its_stream_cap(keyed: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    """A session while KEY_STREAMS (one live stream at most) has its one stream held open."""
    rid = new_request_id("held")
    async with aiohttp.ClientSession() as http:
        held = await http.post(
            keyed.url + "/chat/stream", json={"message": HELD}, headers={**bearer(KEY_STREAMS), "X-Request-ID": rid}
        )
        assert held.status == 200
        yield http
        held.close()
    keyed.process.wait_for_event("request_finished", request_id=rid)


async def one_step_token(http: aiohttp.ClientSession, gateway: Gateway) -> str:
    async with http.post(gateway.url + "/chat/stream/token", headers=bearer(KEY_STREAMS)) as r:
        assert r.status == 201
        return str((await r.json())["token"])


@pytest.mark.parametrize(
    ("path", "body"),
    [("/chat", {"message": "hi"}), ("/chat/streams", {"message": "hi"}), ("/v1/chat/completions", CHAT)],
)
@pytest.mark.parametrize("last_event_id", ["x", "", "aaaa:1"])
async def test_a_last_event_id_header_on_a_chat_post_does_not_skip_the_keys_limits(
    keyed: Gateway, at_its_stream_cap: aiohttp.ClientSession, path: str, body: dict[str, object], last_event_id: str
) -> None:
    headers = {**bearer(KEY_STREAMS), "Last-Event-ID": last_event_id}
    async with at_its_stream_cap.post(keyed.url + path, json=body, headers=headers) as r:
        assert r.status == 429
        assert (await r.json())["error"]["type"] == "streams"


async def test_an_empty_last_event_id_on_the_one_step_get_starts_a_stream_within_the_keys_limits(
    keyed: Gateway, at_its_stream_cap: aiohttp.ClientSession
) -> None:
    token = await one_step_token(at_its_stream_cap, keyed)
    params = {"message": "hi\n#sim tokens=1", "token": token}
    async with at_its_stream_cap.get(keyed.url + "/chat/stream", params=params, headers={"Last-Event-ID": ""}) as r:
        assert r.status == 429


async def test_a_one_step_reconnect_reads_its_stream_while_the_key_is_at_its_stream_cap(keyed: Gateway) -> None:
    # The stream the first GET started holds the key's one stream slot until it ends.
    async with aiohttp.ClientSession() as http:
        token = await one_step_token(http, keyed)
        params = {"message": "hi\n#sim tokens=40 gap_ms=20", "token": token}
        async with http.get(keyed.url + "/chat/stream", params=params) as first:
            assert first.status == 200
            last_id = None
            async for event in iter_events(first):
                if event.event == "token":
                    last_id = event.id
                    break
        assert last_id is not None
        async with http.get(keyed.url + "/chat/stream", params=params, headers={"Last-Event-ID": last_id}) as again:
            assert again.status == 200
            assert (await read_events(again))[-1].event == "done"
