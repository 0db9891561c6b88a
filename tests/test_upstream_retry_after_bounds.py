"""What one upstream answer can do to the gateway: a Retry-After holds for at most a bound, a reply
that does not decode is a malformed reply, and a request sent twice on the keep-alive race is logged.

The wire cases run `python run.py` in front of tests/support/header_fault_upstream.py, a process
whose answer each request names; the bound's logic is checked on its own.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from server.upstreams.breaker import Breakers, BreakerState, MemoryBreakerStore
from server.upstreams.failures import retry_after_seconds, status_failure
from tests.conftest import RawClient
from tests.support.envelope import error_of
from tests.support.processes import Gateway, ManagedProcess, Simulator, clean_env, start_gateway, write_config
from tests.support.raw_upstream import RawUpstream, json_reply
from tests.support.resilience import gateway_with

SECONDS = 10  # a bound far from any real wait here
ENDLESS = "99999999"  # about three years
BOUND = 60  # seconds: the documented bound (MAX_RETRY_AFTER_SECONDS)


@dataclass(frozen=True)
class Call:
    """One way a client asks the gateway for a chat."""

    path: str
    streams: bool

    def body(self, content: str) -> dict[str, Any]:
        if self.path.startswith("/chat"):
            return {"message": content}
        messages = [{"role": "user", "content": content}]
        return {"model": "gpt-4o", "messages": messages, "stream": self.streams}


CALLS = {
    "chat": Call("/chat", False),
    "chat_stream": Call("/chat/stream", True),
    "v1": Call("/v1/chat/completions", False),
    "v1_stream": Call("/v1/chat/completions", True),
}
V1 = CALLS["v1"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Simulator]:
    """tests/support/header_fault_upstream.py as its own process, for this module."""
    process = ManagedProcess(
        [sys.executable, "-m", "tests.support.header_fault_upstream", "--port", "0"], clean_env()
    ).start()
    line = process.wait_for_line(lambda text: text.startswith("header fault upstream listening on "))
    yield Simulator(process, line.removeprefix("header fault upstream listening on ").strip())
    process.stop()


@pytest.fixture(scope="module")
def passing(upstream: Simulator) -> Iterator[Gateway]:
    """config/test.toml in front of it: no retries, no breaker held by a rate limit (each answer passed on)."""
    with start_gateway(upstream=upstream) as gateway:
        yield gateway


@pytest.fixture(params=list(CALLS.values()), ids=list(CALLS))
def call(request: pytest.FixtureRequest) -> Call:
    """Each chat route, streaming and not."""
    result: Call = request.param
    return result


def tagged(directive: str) -> str:
    """`directive` with a word of its own (no `=`: not a header), to find its requests in `/_seen`."""
    return f"{directive} tag-{uuid.uuid4().hex}"


async def ask(gateway: Gateway, call: Call, content: str) -> aiohttp.ClientResponse:
    """The gateway's answer to one chat, its body read."""
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(SECONDS):
            response = await http.post(gateway.url + call.path, json=call.body(content))
            await response.read()
    return response


async def seen(upstream: Simulator, content: str) -> list[str]:
    """The upstreams that got a chat request with `content`, in order."""
    async with aiohttp.ClientSession() as http:
        async with http.get(upstream.url + "/_seen") as response:
            return [item["upstream"] for item in await response.json() if item["content"] == content]


# --- the bound, on its own -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": ENDLESS},
        {"retry-after": "1e308"},
        {"retry-after-ms": "1e20"},
        {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"},
    ],
    ids=["seconds", "huge-float", "millis", "date"],
)
def test_a_retry_after_beyond_the_bound_counts_as_the_bound(headers: dict[str, str]) -> None:
    assert retry_after_seconds(headers) == BOUND


def test_a_retry_after_within_the_bound_is_kept_as_it_is() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": str(BOUND)}) == BOUND


def test_a_date_whose_hour_overflows_is_no_retry_after() -> None:
    assert retry_after_seconds({"retry-after": "Sat, 01 Jan 2000 99999999999999999999:00:00 GMT"}) is None


@pytest.mark.parametrize("status", [429, 503])
def test_the_retry_after_passed_on_never_exceeds_the_bound(status: int) -> None:
    failure = status_failure(status, {"retry-after": "1e308"}, b"")
    assert failure.headers == {"Retry-After": str(BOUND), "retry-after-ms": str(BOUND * 1000)}


@pytest.mark.parametrize("rate_limited", [False, True], ids=["503", "429"])
async def test_an_endless_retry_after_leaves_the_breaker_half_open_once_the_bound_passed(rate_limited: bool) -> None:
    now = [1000.0]
    breakers = Breakers(MemoryBreakerStore(), failures=5, cooldown=30, clock=lambda: now[0])
    await breakers.failed("up", retry_after=float(ENDLESS), rate_limited=rate_limited)

    assert await breakers.reopens_in("up") == BOUND
    now[0] += BOUND
    assert await breakers.state("up") is BreakerState.HALF_OPEN  # the probe's, or a request's, trial


# --- an endless Retry-After, with the default routing (breakers held by a rate limit) ---------------


@pytest.mark.parametrize("status", [503, 429])
async def test_an_endless_retry_after_is_passed_on_as_the_bound(
    upstream: Simulator, tmp_path: Path, status: int
) -> None:
    with gateway_with(tmp_path, "endless", upstream) as gateway:
        response = await ask(gateway, V1, tagged(f"status={status} retry-after={ENDLESS}"))
    await error_of(response, status)
    assert (response.headers["Retry-After"], response.headers["retry-after-ms"]) == (str(BOUND), str(BOUND * 1000))


@pytest.mark.parametrize(
    ("status", "held"), [(503, (503, "upstream_unavailable")), (429, (429, "rate_limit_exceeded"))], ids=["503", "429"]
)
async def test_an_endless_retry_after_holds_the_next_request_no_longer_than_the_bound(
    upstream: Simulator, tmp_path: Path, status: int, held: tuple[int, str]
) -> None:
    # A model held after a 429 is refused as rate limited; an upstream held after a 503, as unavailable.
    later = tagged("another prompt")
    with gateway_with(tmp_path, "endless-next", upstream) as gateway:
        await ask(gateway, V1, tagged(f"status={status} retry-after={ENDLESS}"))
        response = await ask(gateway, V1, later)
    error = await error_of(response, held[0])
    assert error["code"] == held[1]
    assert BOUND - 5 <= int(response.headers["Retry-After"]) <= BOUND
    assert await seen(upstream, later) == []  # held, not sent


# --- a Retry-After beyond any wait (1e308 s overflowed to a 500), on every route ------------------


@pytest.mark.parametrize(
    "header", ["retry-after=1e308", "retry-after=1e20", "retry-after-ms=1e20"], ids=["1e308-s", "1e20-s", "1e20-ms"]
)
async def test_a_429_with_an_enormous_retry_after_is_a_429_told_the_bound(
    passing: Gateway, call: Call, header: str
) -> None:
    response = await ask(passing, call, tagged(f"status=429 {header}"))
    await error_of(response, 429)
    assert (response.headers["Retry-After"], response.headers["retry-after-ms"]) == (str(BOUND), str(BOUND * 1000))


# --- a reply that does not decode ------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_reply_that_does_not_decode_is_a_malformed_reply(passing: Gateway, encoding: str) -> None:
    response = await ask(passing, V1, tagged(f"encoding={encoding}"))
    assert (await error_of(response, 502))["code"] == "upstream_malformed_reply"


async def test_a_reply_that_does_not_decode_is_left_for_the_other_upstreams(
    upstream: Simulator, tmp_path: Path
) -> None:
    pools = "".join(f'[[upstreams]]\nname = "{name}"\nbase_url = "{upstream.url}/{name}/v1"\n' for name in "ab")
    content = tagged("encoding=gzip")
    with start_gateway(config=write_config(tmp_path / "two.toml", pools)) as gateway:
        response = await ask(gateway, V1, content)
    assert (await error_of(response, 502))["code"] == "upstream_malformed_reply"
    assert sorted(await seen(upstream, content)) == ["a", "b"]  # each once: the other tried, neither again


# --- the keep-alive race's second send --------------------------------------------------------------


async def _answer_then_reset_the_next(raw_upstream: RawUpstream, raw_client: RawClient) -> bytes:
    """One request answered on a kept connection; the next one read on it, then the connection reset."""
    client = raw_client(raw_upstream.url)
    first = asyncio.ensure_future(client.complete({"messages": []}, "first"))
    (await raw_upstream.next()).write(json_reply(b'{"choices": [{"message": {}}]}'))
    async with asyncio.timeout(SECONDS):
        await first
    second = asyncio.ensure_future(client.complete({"messages": []}, "second"))
    (await raw_upstream.next()).close()  # read, then reset: it may have been taken
    (await raw_upstream.next()).write(json_reply(b'{"choices": [{"message": {}}]}'))
    async with asyncio.timeout(SECONDS):
        return await second


async def test_a_request_sent_again_after_the_keep_alive_race_is_logged(
    raw_upstream: RawUpstream, raw_client: RawClient
) -> None:
    with capture_logs() as logs:
        await _answer_then_reset_the_next(raw_upstream, raw_client)
    resent = [line for line in logs if line["event"] == "upstream_request_resent"]
    assert [(line["upstream"], line["method"]) for line in resent] == [("raw", "POST")]


async def test_the_gateway_logs_a_resent_request_with_its_request_id(raw_upstream: RawUpstream) -> None:
    env = {"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test", "AI_INTEGRATIONS_OPENAI_BASE_URL": raw_upstream.url}
    with await asyncio.to_thread(start_gateway, env=env) as gateway:
        async with aiohttp.ClientSession() as http:
            for rid, reset in (("t-resend-first", False), ("t-resend-second", True)):
                headers = {"X-Request-ID": rid}
                sent = asyncio.ensure_future(http.post(gateway.url + V1.path, json=V1.body("hi"), headers=headers))
                exchange = await raw_upstream.next()
                if reset:  # read on the kept connection, then reset: the gateway sends it again
                    exchange.close()
                    exchange = await raw_upstream.next()
                exchange.write(json_reply(b'{"choices": [{"index": 0, "message": {"content": "ok"}}]}'))
                async with asyncio.timeout(SECONDS):
                    assert (await sent).status == 200
        line = await asyncio.to_thread(gateway.process.wait_for_event, "upstream_request_resent", SECONDS)
    assert (line["request_id"], line["upstream"], line["level"]) == ("t-resend-second", "default", "info")


async def test_a_request_sent_once_logs_no_resend(raw_upstream: RawUpstream, raw_client: RawClient) -> None:
    client = raw_client(raw_upstream.url)
    with capture_logs() as logs:
        for rid in ("first", "second"):  # the second on the kept connection
            sent = asyncio.ensure_future(client.complete({"messages": []}, rid))
            (await raw_upstream.next()).write(json_reply(b'{"choices": [{"message": {}}]}'))
            async with asyncio.timeout(SECONDS):
                await sent
    assert raw_upstream.connections == 1
    assert [line for line in logs if line["event"] == "upstream_request_resent"] == []
