"""Security pieces alone: limits on a fake clock, tokens, the event splitter's caps, the CORS policy,
the auth, connection-cap and body-timeout steps of the middleware on bare applications, and the honesty gaps."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from server.access import RequestRecord
from server.app import create_app
from server.auth.gate import Lease
from server.auth.gateway_keys import GatewayKey, KeyRing
from server.auth.limits import Exceeded, KeyLimits, MemoryLimitStore, Usage, rate_limit_headers
from server.auth.tokens import TokenSigner, token_secret
from server.chunks import EventSplitter
from server.cli import warn_if_open
from server.connections import SPARE_DESCRIPTORS, close_idle_connections, open_connections, reserve_descriptors
from server.cors import CorsPolicy
from server.guard import Outcome
from server.keys import BODY_BUDGET, CONNECTION_LIMIT
from server.middleware.auth import settle
from server.settings import SettingsError
from server.streams.backlog import Backlog
from tests.conftest import AiohttpClient, make_settings, middleware_app
from tests.test_body_budget import Holding

Client = TestClient[web.Request, web.Application]
KEY = "sk-unit-key-0123456789"
SECRET = {"SLUICE_AUTH_SECRET": "unit-secret"}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keyed_settings(**key: object) -> dict[str, object]:
    return {"keys": [{"name": "unit", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), **key}]}


# --- limits ------------------------------------------------------------------------------------


async def test_requests_over_rpm_are_refused_until_the_bucket_refills() -> None:
    clock = FakeClock()
    store = MemoryLimitStore(clock)
    limits = KeyLimits(rpm=2)
    assert (await store.take("k", limits, requests=1, tokens=0, streams=0)).allowed
    assert (await store.take("k", limits, requests=1, tokens=0, streams=0)).allowed
    refused = await store.take("k", limits, requests=1, tokens=0, streams=0)
    assert refused.exceeded is Exceeded.REQUESTS
    assert refused.retry_after == pytest.approx(30.0)  # one request refills in 60 / rpm seconds
    clock.now += 30
    assert (await store.take("k", limits, requests=1, tokens=0, streams=0)).allowed


async def test_tokens_reserved_are_settled_with_the_real_usage() -> None:
    store = MemoryLimitStore(FakeClock())
    limits = KeyLimits(tpm=100)
    assert (await store.take("k", limits, requests=0, tokens=90, streams=0)).allowed
    assert not (await store.take("k", limits, requests=0, tokens=90, streams=0)).allowed
    await store.give_back("k", limits, tokens=80, streams=0)  # used 10 of the 90 reserved
    assert (await store.take("k", limits, requests=0, tokens=90, streams=0)).allowed


@pytest.mark.parametrize("limit", [5000, 5000.0])  # 5000.0 is an integer to JSON Schema and to an upstream
async def test_a_keys_token_reservation_counts_the_requests_token_limit(limit: float) -> None:
    store = MemoryLimitStore(FakeClock())
    lease = Lease(store, GatewayKey("k", b"", None, KeyLimits(tpm=1000)))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": limit}

    assert await lease.reserve(body) is None

    assert lease.reserved_tokens == lease.prompt_estimate + 5000


async def test_a_request_without_a_token_limit_reserves_the_keys_completion_reserve() -> None:
    store = MemoryLimitStore(FakeClock())
    lease = Lease(store, GatewayKey("k", b"", None, KeyLimits(tpm=100_000, completion_reserve=300)))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

    assert await lease.reserve(body) is None

    assert lease.reserved_tokens == lease.prompt_estimate + 300


@pytest.mark.parametrize("limit", [{"max_tokens": 900}, {}], ids=["max_tokens", "completion_reserve"])
async def test_a_request_for_n_choices_reserves_its_completion_n_times(limit: dict[str, int]) -> None:
    store = MemoryLimitStore(FakeClock())
    lease = Lease(store, GatewayKey("k", b"", None, KeyLimits(tpm=1_000_000, completion_reserve=300)))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "n": 64, **limit}

    assert await lease.reserve(body) is None

    assert lease.reserved_tokens == lease.prompt_estimate + 64 * limit.get("max_tokens", 300)


# A prompt of 3,000 tokens at 4 bytes a token, for the fields an upstream reads (and bills) besides `messages`.
OUTSIDE_PROMPT = "lorem ipsum " * 1000
PROMPT_FIELDS = {
    "tools": [{"type": "function", "function": {"name": "f", "description": OUTSIDE_PROMPT, "parameters": {}}}],
    "functions": [{"name": "f", "description": OUTSIDE_PROMPT, "parameters": {}}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "s", "description": OUTSIDE_PROMPT}},
    "prediction": {"type": "content", "content": OUTSIDE_PROMPT},
}


@pytest.mark.parametrize("field", PROMPT_FIELDS)
async def test_a_prompt_outside_the_messages_is_reserved_with_them(field: str) -> None:
    lease = Lease(MemoryLimitStore(FakeClock()), GatewayKey("k", b"", None, KeyLimits(tpm=1_000_000)))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    assert await lease.reserve({**body, field: PROMPT_FIELDS[field]}) is None

    assert lease.prompt_estimate >= len(OUTSIDE_PROMPT) // 4
    assert lease.reserved_tokens == lease.prompt_estimate + 1


async def test_a_request_that_ends_without_usage_is_charged_its_whole_prompt_and_what_it_relayed() -> None:
    # The client left, or the upstream never sent usage: the reservation's prompt is what is charged.
    store = MemoryLimitStore(FakeClock())
    key = GatewayKey("k", b"", None, KeyLimits(tpm=1_000_000))
    lease = Lease(store, key)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "tools": PROMPT_FIELDS["tools"]}
    await lease.reserve(body)

    await lease.release(None, relayed_tokens=3)

    usage = await store.usage("k", key.limits)
    assert usage is not None
    assert usage.tokens == lease.prompt_estimate + 3
    assert usage.tokens >= len(OUTSIDE_PROMPT) // 4


def left_record(*, stream: bool, last_attempt: str | None = "cancelled", relayed: int = 0) -> RequestRecord:
    """A request's record whose client left before it had usage; `last_attempt`: how its last attempt ended."""
    record = RequestRecord(started=0.0, stream=stream, outcome=Outcome.CLIENT_DISCONNECTED, chunks_relayed=relayed)
    if last_attempt is not None:
        record.attempts.append({"upstream": "default", "model": "gpt-4o", "status": last_attempt, "ms": 1.0})
    return record


async def settled_tokens(record: RequestRecord) -> int:
    """The completion tokens a key is charged for a request of 1,000 reserved that ended as `record` says."""
    store = MemoryLimitStore(FakeClock())
    key = GatewayKey("k", b"", None, KeyLimits(tpm=1_000_000))
    lease = Lease(store, key)
    await lease.reserve({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000})
    await settle(lease, record)
    usage = await store.usage("k", key.limits)
    assert usage is not None
    return usage.tokens - lease.prompt_estimate


async def test_a_completion_whose_client_left_while_an_upstream_worked_is_charged_its_reservation() -> None:
    # Charged its prompt alone, a key ran past its tpm by leaving each request just before its answer.
    assert await settled_tokens(left_record(stream=False)) == 1000


async def test_a_stream_whose_client_left_is_charged_only_what_it_relayed() -> None:
    # Its upstream is closed as the client leaves, and stops generating.
    assert await settled_tokens(left_record(stream=True, relayed=3)) == 3


async def test_a_request_whose_client_left_between_attempts_is_charged_its_prompt() -> None:
    # The upstream refused (a 429) and nothing was generating while Sluice waited to retry.
    assert await settled_tokens(left_record(stream=False, last_attempt="429")) == 0


async def test_a_request_whose_client_left_before_any_upstream_was_asked_is_charged_its_prompt() -> None:
    assert await settled_tokens(left_record(stream=False, last_attempt=None)) == 0


def test_a_keys_completion_reserve_defaults_to_1024_tokens() -> None:
    ring = KeyRing.from_settings(make_settings(auth=keyed_settings(tpm=1000)).auth)

    [key] = ring.keys
    assert key.limits.completion_reserve == 1024


async def test_usage_reads_what_was_taken_and_refills_without_taking() -> None:
    clock = FakeClock()
    store = MemoryLimitStore(clock)
    limits = KeyLimits(rpm=6, tpm=600, max_streams=2)
    await store.take("k", limits, requests=1, tokens=120, streams=1)
    assert await store.usage("k", limits) == Usage(streams=1, requests=1, tokens=120)
    assert await store.usage("other", limits) == Usage(streams=0, requests=0, tokens=0)
    clock.now += 10  # one request and 100 tokens refill in 10 s
    assert await store.usage("k", limits) == Usage(streams=1, requests=0, tokens=20)


async def test_a_refused_take_takes_nothing() -> None:
    store = MemoryLimitStore(FakeClock())
    limits = KeyLimits(rpm=10, max_streams=1)
    assert (await store.take("k", limits, requests=1, tokens=0, streams=1)).allowed
    refused = await store.take("k", limits, requests=1, tokens=0, streams=1)
    assert refused.exceeded is Exceeded.STREAMS
    assert refused.remaining_requests == 9  # the refused request was not counted


async def test_rate_limit_headers_use_openais_names_and_durations() -> None:
    store = MemoryLimitStore(FakeClock())
    limits = KeyLimits(rpm=60, tpm=600)
    await store.take("k", limits, requests=60, tokens=0, streams=0)
    headers = rate_limit_headers(await store.take("k", limits, requests=1, tokens=0, streams=0))
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert headers["x-ratelimit-limit-tokens"] == "600"
    assert headers["x-ratelimit-reset-tokens"] == "0ms"
    assert headers["Retry-After"] == "1"


# --- tokens ------------------------------------------------------------------------------------


ALPHA = GatewayKey("alpha", hashlib.sha256(b"sk-alpha").digest(), None, KeyLimits())
RING = KeyRing((ALPHA,), None)


def test_a_token_is_valid_for_its_scope_until_it_expires() -> None:
    clock = FakeClock()
    signer = TokenSigner(b"secret", ttl=60, clock=clock)
    token = signer.mint("alpha", "stream-1", key_digest=ALPHA.digest).value
    assert signer.key_for(token, "stream-1", RING) is ALPHA
    assert signer.key_for(token, "stream-2", RING) is None
    clock.now += 60
    assert signer.key_for(token, "stream-1", RING) is None


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = TokenSigner(b"other", ttl=60).mint("alpha", "s", key_digest=ALPHA.digest).value
    assert TokenSigner(b"secret", ttl=60).key_for(token, "s", RING) is None


@pytest.mark.parametrize("forged", ["", ".", "a.b", "!!!.???", "x" * 2000 + ".y", "YWxwaGF8c3wx.AAAA"])
def test_garbage_tokens_are_refused(forged: str) -> None:
    assert TokenSigner(b"secret", ttl=60).key_for(forged, "s", RING) is None


# --- keys --------------------------------------------------------------------------------------


def test_a_key_is_found_by_its_hash_and_only_by_it() -> None:
    ring = KeyRing.from_settings(make_settings(SECRET, auth=keyed_settings()).auth)
    found = ring.find(KEY)
    assert found is not None
    assert found.name == "unit"
    assert ring.find(KEY + "x") is None
    assert ring.find(KEY.upper()) is None


def test_keys_without_the_token_secret_get_a_random_one_and_a_warning() -> None:
    auth = make_settings(auth=keyed_settings()).auth
    with capture_logs() as logs:
        first, second = token_secret(auth), token_secret(auth)
    assert len(first) == 32
    assert first != second
    assert [entry["event"] for entry in logs] == ["token_secret_generated"] * 2


def test_a_token_secret_shorter_than_32_bytes_is_used_and_warned_about() -> None:
    short = make_settings({"SLUICE_AUTH_SECRET": "x" * 31}, auth=keyed_settings()).auth
    long_enough = make_settings({"SLUICE_AUTH_SECRET": "x" * 32}, auth=keyed_settings()).auth
    with capture_logs() as logs:
        assert token_secret(short) == b"x" * 31
        assert token_secret(long_enough) == b"x" * 32
    assert [entry["event"] for entry in logs] == ["token_secret_weak"]
    assert "x" * 31 not in str(logs)


def test_a_key_env_that_is_not_set_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="MISSING_KEY_VAR"):
        make_settings(SECRET, auth={"keys": [{"name": "x", "key_env": "MISSING_KEY_VAR"}]})


def test_a_key_from_the_environment_is_kept_only_as_its_hash() -> None:
    settings = make_settings({**SECRET, "MY_KEY": KEY}, auth={"keys": [{"name": "x", "key_env": "MY_KEY"}]})
    assert settings.auth.keys[0].key_sha256 == hashlib.sha256(KEY.encode()).hexdigest()
    assert KEY not in repr(settings)
    assert "unit-secret" not in repr(settings)


def test_the_start_up_warns_when_open_on_a_non_loopback_address() -> None:
    with capture_logs() as logs:
        warn_if_open(make_settings(), "0.0.0.0")
        warn_if_open(make_settings(), "127.0.0.1")
        metrics_key = hashlib.sha256(b"metrics").hexdigest()
        warn_if_open(make_settings(SECRET, auth={**keyed_settings(), "metrics_key_sha256": metrics_key}), "0.0.0.0")
    assert [entry["event"] for entry in logs] == ["gateway_open"]


def test_the_start_up_warns_when_keys_leave_the_metrics_open_on_a_non_loopback_address() -> None:
    metrics_key = hashlib.sha256(b"metrics").hexdigest()
    with capture_logs() as logs:
        warn_if_open(make_settings(SECRET, auth=keyed_settings()), "0.0.0.0")
        warn_if_open(make_settings(SECRET, auth=keyed_settings()), "127.0.0.1")
        warn_if_open(make_settings(SECRET, auth={**keyed_settings(), "metrics_key_sha256": metrics_key}), "0.0.0.0")
    assert [entry["event"] for entry in logs] == ["metrics_open"]


# --- the event splitter ------------------------------------------------------------------------


def test_an_event_over_the_cap_sets_overflowed_and_keeps_nothing() -> None:
    splitter = EventSplitter(max_event_bytes=1000)
    assert splitter.feed(b"data: " + b"x" * 600) == []
    assert not splitter.overflowed
    assert splitter.feed(b"x" * 600) == []
    assert splitter.overflowed


def test_events_split_across_reads_at_every_byte_are_found() -> None:
    wire = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\ndata: {"c":3}\r\r'
    for cut in range(1, len(wire)):
        splitter = EventSplitter()
        found = splitter.feed(wire[:cut]) + splitter.feed(wire[cut:]) + splitter.close()
        assert found == [b'{"a":1}', b'{"b":2}', b'{"c":3}'], cut


def test_a_long_event_in_many_reads_is_joined_once() -> None:
    splitter = EventSplitter(max_event_bytes=4 << 20)
    pieces = [b"data: "] + [b"x" * 1024] * 2048 + [b"\n\n"]
    found: list[bytes] = []
    for piece in pieces:
        found += splitter.feed(piece)
    assert found == [b"x" * (2 << 20)]


# --- CORS policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origins", "keys", "origin", "allowed"),
    [
        (("*",), True, "https://a.example", "*"),
        (("*",), False, "null", None),
        (("https://a.example",), True, "https://a.example", "https://a.example"),
        (("https://a.example",), True, "https://b.example", None),
        (("https://a.example", "null"), True, "null", None),
        ((), False, "https://a.example", "*"),
        ((), True, "https://a.example", None),
    ],
)
def test_the_cors_policy(origins: tuple[str, ...], keys: bool, origin: str, allowed: str | None) -> None:
    assert CorsPolicy.from_settings(origins, keys_configured=keys).allow_origin(origin) == allowed


async def test_with_keys_and_no_allowlist_no_origin_gets_cross_origin_access(aiohttp_client: AiohttpClient) -> None:
    client: Client = await aiohttp_client(create_app(make_settings(SECRET, auth=keyed_settings())))
    preflight = await client.options(
        "/v1/chat/completions", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    )
    simple = await client.get("/health", headers={"Origin": "https://a.example"})
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in simple.headers


# --- the middleware on a bare application -------------------------------------------------------


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def bare(**sections: dict[str, object]) -> web.Application:
    """The gateway's middleware, with one key, in front of three routes that answer ok."""
    return middleware_app(
        make_settings(SECRET, auth=keyed_settings(), **sections),
        web.get("/models", ok),
        web.get("/health", ok),
        web.post("/chat", ok),
    )


async def test_the_auth_step_refuses_without_a_key_and_serves_with_it(
    aiohttp_client: AiohttpClient,
) -> None:
    client: Client = await aiohttp_client(bare())
    missing = await client.get("/models")
    wrong = await client.get("/models", headers={"Authorization": "Bearer nope"})
    right = await client.get("/models", headers={"Authorization": f"Bearer {KEY}"})
    probe = await client.get("/health")
    assert (missing.status, wrong.status, right.status, probe.status) == (401, 401, 200, 200)
    assert (await missing.json())["error"]["code"] == "invalid_api_key"


async def test_the_connection_cap_step_sheds_all_but_probes(aiohttp_client: AiohttpClient) -> None:
    app = bare()
    app[CONNECTION_LIMIT] = 0
    client: Client = await aiohttp_client(app)
    shed = await client.get("/models")
    probe = await client.get("/health")
    assert shed.status == 503
    assert shed.headers["Retry-After"]
    assert probe.status == 200


@pytest.fixture
def holding(monkeypatch: pytest.MonkeyPatch) -> Holding:
    return Holding(monkeypatch)


async def test_refused_requests_whose_bodies_never_come_make_no_room_past_the_cap(
    aiohttp_client: AiohttpClient, holding: Holding
) -> None:
    # Each refused one lingered, to read away its body, and was both closing and "as good as idle":
    # the next request over the cap counted it as room twice, and every other refusal let one more in.
    app = bare(connections={"body_timeout": 60})
    app[CONNECTION_LIMIT] = 2
    client: Client = await aiohttp_client(app)
    head = (
        f"POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    admitted, connections = 0, []
    try:
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            connections.append(writer)
            held = client.app[BODY_BUDGET].held
            writer.write(head)
            answer = asyncio.ensure_future(reader.readline())
            read_on = asyncio.ensure_future(holding.reaches(client, held + 1))  # its body is waited for: admitted
            done, _ = await asyncio.wait({answer, read_on}, return_when=asyncio.FIRST_COMPLETED)
            for task in (answer, read_on):
                task.cancel()
            if answer in done:
                assert answer.result().startswith(b"HTTP/1.1 503")
            else:
                admitted += 1
    finally:
        for writer in connections:
            writer.close()
    assert admitted == 2


async def post_a_late_body(aiohttp_client: AiohttpClient) -> aiohttp.ClientResponse:
    """POST /chat, with the key, on a bare app whose body timeout (0.2 s) passes before the rest of the body."""
    client: Client = await aiohttp_client(bare(connections={"body_timeout": 0.2}))
    never = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"message":'
        await never.wait()  # the rest never comes

    # With the key: auth runs before the body is read.
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    return await client.post("/chat", data=slow_body(), headers=headers)


async def test_the_body_step_answers_408_for_a_late_body(aiohttp_client: AiohttpClient) -> None:
    response = await post_a_late_body(aiohttp_client)
    assert response.status == 408
    assert response.headers["Connection"] == "close"
    assert (await response.json())["error"]["code"] == "request_timeout"


# --- honesty gaps ------------------------------------------------------------------------------


async def test_the_one_step_get_names_an_unknown_parameter_and_the_post_route(client: Client) -> None:
    response = await client.get("/chat/stream", params={"message": "hi", "history": "[]"})
    body = await response.json()
    assert response.status == 400
    assert body["error"]["param"] == "history"
    assert "POST /chat/streams" in body["error"]["message"]


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, 0.0, -1.0])  # -1.0 is an integer to JSON Schema
async def test_v1_refuses_a_token_limit_of_zero_or_below(client: Client, name: str, value: float) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], name: value}
    response = await client.post("/v1/chat/completions", json=body)
    error = (await response.json())["error"]
    assert response.status == 400
    assert error["param"] == name
    assert error["code"] == "invalid_request"  # refused by Sluice, not forwarded for the upstream to refuse


# --- detached stream backlog -------------------------------------------------------------------


async def test_a_backlog_is_full_at_its_limit_and_room_returns_when_a_reader_catches_up() -> None:
    backlog = Backlog(limit=100)
    backlog.stored(1, 60)
    below = backlog.full
    backlog.stored(2, 60)
    assert (below, backlog.full) == (False, True)
    waiting = asyncio.ensure_future(backlog.wait_for_room())
    await asyncio.sleep(0)  # let the waiter block (one loop turn, not a timing wait)
    assert not waiting.done()
    backlog.sent(1)
    await asyncio.wait_for(waiting, 1)
    assert backlog.unread_bytes == 60


async def test_a_backlog_is_full_at_its_event_limit_however_small_the_events() -> None:
    backlog = Backlog(limit=1 << 20, max_events=3)
    for seq in (1, 2):
        backlog.stored(seq, 10)
    below = backlog.full
    backlog.stored(3, 10)
    assert (below, backlog.full, backlog.unread_events) == (False, True, 3)
    backlog.sent(1)
    assert not backlog.full
    await asyncio.wait_for(backlog.wait_for_room(), 1)


def test_open_connections_are_counted_through_aiohttps_public_copy_when_its_dict_is_gone() -> None:
    # The cap reads aiohttp's private connection dict for speed; an aiohttp that renamed it must
    # not turn the count into 0, which would never shed.
    manager = SimpleNamespace(connections=[object(), object(), object()])
    request = cast(web.Request, SimpleNamespace(protocol=SimpleNamespace(_manager=manager)))

    assert open_connections(request) == 3


def test_growing_the_descriptor_table_never_takes_a_descriptor_already_open() -> None:
    read_end, write_end = os.pipe()
    connections = 100
    highest = 2 * connections + SPARE_DESCRIPTORS - 1
    os.dup2(write_end, highest)
    try:
        reserve_descriptors(connections)
        os.write(highest, b"still mine")
        assert os.read(read_end, 64) == b"still mine"
    finally:
        for descriptor in (read_end, write_end, highest):
            os.close(descriptor)


# --- keys that are not UTF-8 -------------------------------------------------------------------


def test_a_presented_key_that_is_not_utf8_is_a_wrong_key_not_a_crash() -> None:
    # aiohttp decodes such header bytes (here \xed\xa0\x80) as lone surrogates; encoding them was a 500.
    digest = hashlib.sha256(KEY.encode()).digest()
    ring = KeyRing((GatewayKey("unit", digest, None, KeyLimits()),), metrics_digest=digest)
    presented = b"\xed\xa0\x80".decode("utf-8", "surrogateescape")

    assert ring.find(presented) is None
    assert not ring.opens_metrics(presented)
    assert ring.find(KEY) is not None


def test_a_keys_fallbacks_may_be_the_models_its_aliases_name() -> None:
    key = GatewayKey("unit", b"", frozenset({"fast", "gpt-4.1"}), KeyLimits())
    allowed = key.fallbacks_allowed({"fast": "gpt-4o-mini", "smart": "gpt-4o"})

    assert [allowed(m) for m in ("gpt-4o-mini", "gpt-4.1", "gpt-4o", "smart")] == [True, True, False, False]
    assert GatewayKey("any", b"", None, KeyLimits()).fallbacks_allowed({})("anything")


async def test_a_reservation_over_the_keys_whole_tpm_goes_when_its_refusals_retry_after_says() -> None:
    # A key whose tpm is below its completion_reserve: every request without max_tokens reserves
    # more than the minute holds. Waiting for all of it, each would be refused for good, yet told to retry.
    clock = FakeClock()
    store = MemoryLimitStore(clock)
    key = GatewayKey("k", b"", None, KeyLimits(tpm=500, completion_reserve=1024))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert await Lease(store, key).reserve(body) is None  # on a full bucket

    refused = await Lease(store, key).reserve(body)
    assert refused is not None
    retry_after = int(rate_limit_headers(refused)["Retry-After"])
    clock.now += retry_after - 1
    assert await Lease(store, key).reserve(body) is not None
    clock.now += 1
    assert await Lease(store, key).reserve(body) is None


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


class _WaitingConnection:
    """A connection as aiohttp's handler shows it while it waits for a request (`_waiter` pending)."""

    writing_paused = False

    def __init__(self, sock: socket.socket) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport = _Transport(sock)
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


async def test_a_connection_whose_request_is_in_the_kernel_is_not_closed_as_idle() -> None:
    """Accepted in the loop turn that runs another request over the cap, its bytes are not read yet:
    closing it as idle would reset a request that had arrived."""
    quiet, quiet_peer = socket.socketpair()
    arrived, arrived_peer = socket.socketpair()
    try:
        arrived_peer.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        idle, busy = _WaitingConnection(quiet), _WaitingConnection(arrived)
        request = SimpleNamespace(protocol=SimpleNamespace(_manager=SimpleNamespace(_connections={busy: 0, idle: 0})))
        assert close_idle_connections(cast(web.Request, request), 2) == 1
        assert (idle.closed, busy.closed) == (True, False)
    finally:
        for sock in (quiet, quiet_peer, arrived, arrived_peer):
            sock.close()


class _StalledConnection:
    """A connection whose client stopped reading: its transport paused writing, a request in progress."""

    writing_paused = True
    _waiter = None

    def __init__(self) -> None:
        self.transport: SimpleNamespace | None = SimpleNamespace(abort=lambda: None)

    def force_close(self) -> None:
        self.transport = None  # as aiohttp's: gone from its table only once the close is done


def test_a_connection_aborted_for_room_is_not_counted_as_room_again() -> None:
    first, second = _StalledConnection(), _StalledConnection()
    request = SimpleNamespace(protocol=SimpleNamespace(_manager=SimpleNamespace(_connections={first: 0, second: 0})))
    assert close_idle_connections(cast(web.Request, request), 1) == 1
    assert close_idle_connections(cast(web.Request, request), 1) == 1
    assert (first.transport, second.transport) == (None, None)
