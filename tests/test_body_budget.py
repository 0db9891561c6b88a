"""The request body bytes one process holds at once are bounded (`server.max_body_bytes_held`).

A stream holds its body (its prompt) for as long as it runs; many large bodies at once met only
the process's memory. Past the budget a body gets 503 `overloaded` with Retry-After, before it is
read. The gateway runs in-process, on its built-in simulated model.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.body_budget import BodyBudget
from server.keys import BODY_BUDGET
from tests.conftest import make_settings
from tests.support.envelope import error_of

Client = TestClient[web.Request, web.Application]
COMPLETIONS = "/v1/chat/completions"


def chat(text: str, *, stream: bool = False) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


# A stream that runs until its client leaves (tokens 50 ms apart), and a small, quick answer.
LONG = chat("go on\n#sim tokens=10000 gap_ms=50", stream=True)
QUICK = chat("hi\n#sim tokens=2")
JSON = {"Content-Type": "application/json"}


async def gateway(aiohttp_client: Callable[..., Any], held: int) -> Client:
    client: Client = await aiohttp_client(create_app(make_settings(server={"max_body_bytes_held": held})))
    return client


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def test_a_body_past_the_budget_while_another_is_held_gets_503_overloaded(
    aiohttp_client: Callable[..., Any],
) -> None:
    client = await gateway(aiohttp_client, held=len(LONG) + len(QUICK) - 1)
    async with client.post(COMPLETIONS, data=LONG, headers=JSON) as running:
        await running.content.readline()  # its stream runs: its body is held

        refused = await client.post(COMPLETIONS, data=QUICK, headers=JSON)

        error = await error_of(refused, 503)
        assert error["code"] == "overloaded"
        assert refused.headers["Retry-After"] == "5"


async def test_a_declared_body_past_the_budget_is_refused_before_it_is_sent(
    aiohttp_client: Callable[..., Any],
) -> None:
    # Read first, it would wait for its bytes: a client could hold memory it never had to send.
    client = await gateway(aiohttp_client, held=len(LONG) + 100)
    async with client.post(COMPLETIONS, data=LONG, headers=JSON) as running:
        await running.content.readline()
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):  # the body's own deadline (15 s) far away
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 503 ")


async def test_a_chunked_body_is_held_too(aiohttp_client: Callable[..., Any]) -> None:
    client = await gateway(aiohttp_client, held=len(LONG) + len(QUICK) - 1)
    async with client.post(COMPLETIONS, data=chunked(LONG), headers=JSON) as running:
        await running.content.readline()

        refused = await client.post(COMPLETIONS, data=QUICK, headers=JSON)

        assert (await error_of(refused, 503))["code"] == "overloaded"


async def test_a_body_within_the_budget_beside_a_held_one_is_served(aiohttp_client: Callable[..., Any]) -> None:
    client = await gateway(aiohttp_client, held=len(LONG) + len(QUICK))
    async with client.post(COMPLETIONS, data=LONG, headers=JSON) as running:
        await running.content.readline()

        served = await client.post(COMPLETIONS, data=QUICK, headers=JSON)

        assert served.status == 200


async def test_a_bodys_bytes_come_back_when_its_request_ends(aiohttp_client: Callable[..., Any]) -> None:
    client = await gateway(aiohttp_client, held=len(LONG))
    for _ in range(3):
        async with client.post(COMPLETIONS, data=chunked(QUICK), headers=JSON) as answered:
            assert answered.status == 200
    async with client.post(COMPLETIONS, data=QUICK + b" " * 10, headers=JSON) as served:
        assert served.status == 200


async def test_one_body_larger_than_the_budget_is_served_when_none_is_held(
    aiohttp_client: Callable[..., Any],
) -> None:
    client = await gateway(aiohttp_client, held=10)

    served = await client.post(COMPLETIONS, data=QUICK, headers=JSON)

    assert served.status == 200


async def test_an_encoded_body_is_held_as_the_bytes_it_decodes_to(aiohttp_client: Callable[..., Any]) -> None:
    # Held as its Content-Length, 1 KB of gzip was let in as the 1 MB it decodes to.
    padded = chat("x" * 100_000 + "\n#sim tokens=2")
    client = await gateway(aiohttp_client, held=len(LONG) + 10_000)
    async with client.post(COMPLETIONS, data=LONG, headers=JSON) as running:
        await running.content.readline()

        refused = await client.post(
            COMPLETIONS, data=gzip.compress(padded), headers={**JSON, "Content-Encoding": "gzip"}
        )

        assert (await error_of(refused, 503))["code"] == "overloaded"


class Holding:
    """Wakes a test each time the gateway holds more body bytes (BodyBudget.take, watched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._took = asyncio.Event()
        take = BodyBudget.take

        def watched(budget: BodyBudget, size: int, mine: int = 0) -> int:
            taken = take(budget, size, mine)
            self._took.set()
            return taken

        monkeypatch.setattr(BodyBudget, "take", watched)

    async def reaches(self, client: Client, size: int) -> None:
        """Return once the gateway holds at least `size` body bytes (what it read of a body still coming)."""
        budget = client.app[BODY_BUDGET]
        async with asyncio.timeout(5):  # the body's own deadline (15 s) far away
            while budget.held < size:
                self._took.clear()
                await self._took.wait()


@pytest.fixture
def holding(monkeypatch: pytest.MonkeyPatch) -> Holding:
    return Holding(monkeypatch)


def stalled_upload(first: bytes, go_on: asyncio.Event, rest: bytes = b"") -> AsyncIterator[bytes]:
    """A chunked body: `first`, then `rest` once `go_on` is set."""

    async def pieces() -> AsyncIterator[bytes]:
        yield first
        await go_on.wait()
        if rest:
            yield rest

    return pieces()


@pytest.mark.parametrize("encoded", [False, True], ids=["chunked", "gzip"])
async def test_a_body_with_no_length_is_held_as_it_is_read(
    aiohttp_client: Callable[..., Any], holding: Holding, encoded: bool
) -> None:
    # Held only once read whole, sixty stalled uploads of 16 KB of gzip held 1 GB outside the budget.
    first = b" " * 20_000  # JSON allows the blanks; gzip's are 16 KB decoded from a few bytes
    client = await gateway(aiohttp_client, held=20_000 + len(QUICK) - 1)
    go_on = asyncio.Event()
    headers = {**JSON, "Content-Encoding": "gzip"} if encoded else JSON
    body = stalled_upload(gzip.compress(first) if encoded else first, go_on)
    uploading = asyncio.create_task(client.post(COMPLETIONS, data=body, headers=headers))
    await holding.reaches(client, 16_000)

    refused = await client.post(COMPLETIONS, data=QUICK, headers=JSON)

    assert (await error_of(refused, 503))["code"] == "overloaded"
    go_on.set()
    uploading.cancel()


async def test_a_body_with_no_length_larger_than_the_budget_is_read_when_none_other_is_held(
    aiohttp_client: Callable[..., Any], holding: Holding
) -> None:
    client = await gateway(aiohttp_client, held=100)
    go_on = asyncio.Event()
    uploading = asyncio.create_task(
        client.post(COMPLETIONS, data=stalled_upload(b" " * 200, go_on, QUICK), headers=JSON)
    )
    await holding.reaches(client, 200)
    go_on.set()

    answered = await uploading

    assert answered.status == 200


# A browser stream runs past its 201 (tokens 50 ms apart until it is stopped), holding its prompt.
BROWSER = json.dumps({"message": "go on\n#sim tokens=10000 gap_ms=50"}).encode()


async def test_a_browser_streams_body_stays_held_after_its_201_while_it_runs(
    aiohttp_client: Callable[..., Any],
) -> None:
    # Held only until the 201, thousands of detached streams could each keep a large prompt unbounded.
    client = await gateway(aiohttp_client, held=len(BROWSER) + len(QUICK) - 1)
    started = await client.post("/chat/streams", data=BROWSER, headers=JSON)
    assert started.status == 201

    refused = await client.post(COMPLETIONS, data=QUICK, headers=JSON)

    assert (await error_of(refused, 503))["code"] == "overloaded"


async def test_a_browser_streams_body_comes_back_when_the_stream_ends(aiohttp_client: Callable[..., Any]) -> None:
    client = await gateway(aiohttp_client, held=len(BROWSER) + len(QUICK) - 1)
    started = await client.post("/chat/streams", data=BROWSER, headers=JSON)
    stopped = await client.delete((await started.json())["url"])  # answers once the stream ended
    assert stopped.status == 204

    served = await client.post(COMPLETIONS, data=QUICK, headers=JSON)

    assert served.status == 200


async def test_a_browser_stream_refused_gives_its_body_back(aiohttp_client: Callable[..., Any]) -> None:
    # Refused as the stream is made (here: no room for a second), no generation took the body.
    settings = make_settings(browser={"max_streams": 1})
    client: Client = await aiohttp_client(create_app(settings))
    assert (await client.post("/chat/streams", data=BROWSER, headers=JSON)).status == 201

    refused = await client.post("/chat/streams", data=BROWSER, headers=JSON)

    assert (await error_of(refused, 503))["code"] == "overloaded"
    assert client.app[BODY_BUDGET].held == len(BROWSER)  # the running stream's alone
