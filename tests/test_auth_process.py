"""Gateway keys, per-key limits, browser tokens and CORS on `python run.py` processes."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from server.auth.gateway_keys import GatewayKey, KeyRing
from server.auth.limits import KeyLimits
from server.auth.tokens import ONE_STEP_SCOPE, TokenSigner
from tests.support.client import new_request_id
from tests.support.processes import (
    Gateway,
    ManagedProcess,
    Simulator,
    clean_env,
    free_port,
    start_hostile_upstream,
    write_config,
)
from tests.support.security import (
    KEY_ALPHA,
    KEY_FROM_ENV,
    KEY_NARROW,
    KEY_RPM,
    KEY_STREAMS,
    KEY_TPM,
    METRICS_KEY,
    ORIGIN,
    RPM,
    SECRET,
    TPM,
    bearer,
    body_awaited,
    keys_toml,
    start_keyed_gateway,
)
from tests.support.sse import openai_text, read_events

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi\n#sim tokens=2"}]}
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
# A bound for recovery far from what it needs (RPM=30 refills one request every 2 s).
RECOVERY_SECONDS = 30.0


@pytest.fixture(scope="module")
def keyed(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_keyed_gateway(tmp_path_factory.mktemp("keyed"), simulator)
    yield gateway
    gateway.process.stop()


def envelope_code(body: dict[str, object]) -> object:
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) >= {"message", "type", "code"}
    return error["code"]


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [bearer(KEY_ALPHA), {"api-key": KEY_ALPHA}, {"x-api-key": KEY_ALPHA}, bearer(KEY_FROM_ENV)],
    ids=["bearer", "api-key", "x-api-key", "key_env"],
)
async def test_a_right_key_is_served(keyed: Gateway, headers: dict[str, str]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(keyed.url + "/v1/chat/completions", json=CHAT, headers=headers) as r,
    ):
        assert r.status == 200
        assert (await r.json())["object"] == "chat.completion"


@pytest.mark.parametrize("headers", [{}, bearer("sk-gw-wrong"), {"Authorization": f"Basic {KEY_ALPHA}"}])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat", "/chat/stream", "/chat/streams"])
async def test_a_missing_or_wrong_key_is_401_invalid_api_key(
    keyed: Gateway, headers: dict[str, str], path: str
) -> None:
    body = CHAT if path.startswith("/v1") else {"message": "hi"}
    async with aiohttp.ClientSession() as http, http.post(keyed.url + path, json=body, headers=headers) as r:
        assert r.status == 401
        assert envelope_code(await r.json()) == "invalid_api_key"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_model_lists_need_a_key_and_show_only_the_keys_models(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(keyed.url + "/v1/models") as r:
            assert r.status == 401
        async with http.get(keyed.url + "/v1/models", headers=bearer(KEY_NARROW)) as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["gpt-4o-mini"]
        async with http.get(keyed.url + "/models", headers=bearer(KEY_NARROW)) as r:
            assert (await r.json())["models"] == ["gpt-4o-mini"]


async def test_a_model_outside_the_keys_list_is_404_like_an_unknown_one(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(keyed.url + "/v1/chat/completions", json=CHAT, headers=bearer(KEY_NARROW)) as r:
            outside = (r.status, await r.json())
        unknown_body = {**CHAT, "model": "no-such-model"}
        async with http.post(keyed.url + "/v1/chat/completions", json=unknown_body, headers=bearer(KEY_NARROW)) as r:
            unknown = (r.status, await r.json())
        allowed = {**CHAT, "model": "gpt-4o-mini"}
        async with http.post(keyed.url + "/v1/chat/completions", json=allowed, headers=bearer(KEY_NARROW)) as r:
            assert r.status == 200
    assert outside[0] == unknown[0] == 404
    assert envelope_code(outside[1]) == envelope_code(unknown[1]) == "model_not_found"
    assert "gpt-4o-mini" not in str(outside[1])  # the key's own list is not revealed either


async def test_a_key_that_may_not_use_the_gateways_default_model_defaults_to_its_first_model(keyed: Gateway) -> None:
    # /models said "gpt-4o" to a key allowed only gpt-4o-mini, and its requests naming no model got 404.
    async with aiohttp.ClientSession() as http:
        async with http.get(keyed.url + "/models", headers=bearer(KEY_NARROW)) as r:
            narrow_default = (await r.json())["default"]
        async with http.get(keyed.url + "/models", headers=bearer(KEY_ALPHA)) as r:
            alpha_default = (await r.json())["default"]
        body = {"message": "hi\n#sim tokens=1"}
        async with http.post(keyed.url + "/chat", json=body, headers=bearer(KEY_NARROW)) as r:
            answer = (r.status, (await r.json())["model"])
    assert (narrow_default, alpha_default) == ("gpt-4o-mini", "gpt-4o")
    assert answer == (200, "gpt-4o-mini")


async def test_probes_and_the_page_stay_open(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/health", "/livez", "/readyz", "/"):
            async with http.get(keyed.url + path) as r:
                assert r.status == 200, path


async def test_metrics_need_the_metrics_key_not_a_gateway_key(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(keyed.url + "/metrics") as r:
            assert r.status == 401
            assert (await r.json())["error"]["message"].startswith("Missing metrics key")
        async with http.get(keyed.url + "/metrics", headers=bearer(KEY_ALPHA)) as r:
            assert r.status == 401
            assert (await r.json())["error"]["message"].startswith("Incorrect metrics key")
        async with http.get(keyed.url + "/metrics", headers=bearer(METRICS_KEY)) as r:
            assert r.status == 200


async def test_the_key_name_is_logged_and_labelled_but_never_the_key(keyed: Gateway) -> None:
    rid = new_request_id("keyname")
    async with aiohttp.ClientSession() as http:
        headers = {**bearer(KEY_ALPHA), "X-Request-ID": rid}
        async with http.post(keyed.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 200
        finished = keyed.process.wait_for_event("request_finished", request_id=rid)
        async with http.get(keyed.url + "/metrics", headers=bearer(METRICS_KEY)) as r:
            metrics = await r.text()
    assert finished["key"] == "alpha"
    assert 'sluice_key_requests_total{key="alpha",status="200"}' in metrics
    for secret in (KEY_ALPHA, KEY_NARROW, KEY_FROM_ENV, METRICS_KEY, SECRET):
        assert not any(secret in line for line in keyed.process.lines)
        assert secret not in metrics


async def test_the_clients_authorization_never_reaches_the_upstream(tmp_path: Path) -> None:
    hostile = start_hostile_upstream()
    with start_keyed_gateway(tmp_path, hostile) as gateway:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "echo-auth"}], "stream": True}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=bearer(KEY_ALPHA)) as r:
                seen = openai_text(await read_events(r))
        hostile.process.stop()
    assert KEY_ALPHA not in seen
    assert seen == "Bearer sk-test-key-never-logged"  # the gateway's own upstream key


async def test_a_key_removed_from_the_config_is_refused_after_a_restart(simulator: Simulator, tmp_path: Path) -> None:
    (tmp_path / "before").mkdir()
    with start_keyed_gateway(tmp_path / "before", simulator) as before:
        async with aiohttp.ClientSession() as http:
            async with http.post(before.url + "/chat/streams", json={"message": "hi"}, headers=bearer(KEY_ALPHA)) as r:
                assert r.status == 201
                url = (await r.json())["url"]
    (tmp_path / "after").mkdir()
    with start_keyed_gateway(tmp_path / "after", simulator, include_alpha=False) as after:
        async with aiohttp.ClientSession() as http:
            async with http.post(after.url + "/v1/chat/completions", json=CHAT, headers=bearer(KEY_ALPHA)) as r:
                assert r.status == 401
            async with http.post(after.url + "/v1/chat/completions", json=CHAT, headers=bearer(KEY_FROM_ENV)) as r:
                assert r.status == 200  # the keys still configured go on working
            async with http.get(after.url + url) as r:  # the revoked key's token no longer opens anything
                assert r.status == 401


# --- limits ------------------------------------------------------------------------------------


async def _post_until_refused(http: aiohttp.ClientSession, url: str, key: str, most: int) -> aiohttp.ClientResponse:
    for _ in range(most):
        r = await http.post(url, json={"message": "hi\n#sim tokens=1"}, headers=bearer(key))
        await r.read()
        if r.status != 200:
            return r
    raise AssertionError(f"no refusal after {most} requests")


async def _until_served(http: aiohttp.ClientSession, url: str, key: str) -> None:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while time.monotonic() < deadline:
        async with http.post(url, json={"message": "hi\n#sim tokens=1"}, headers=bearer(key)) as r:
            if r.status == 200:
                return
            assert r.status == 429
            await asyncio.sleep(float(r.headers["Retry-After"]))  # the gateway's own hint, not a guess
    raise AssertionError("never recovered")  # pragma: no cover


async def test_requests_per_minute_reach_429_with_openai_headers_and_recover(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        refused = await _post_until_refused(http, keyed.url + "/chat", KEY_RPM, most=3 * RPM)
        assert refused.status == 429
        body = await refused.json()
        assert envelope_code(body) == "rate_limit_exceeded"
        assert body["error"]["type"] == "requests"
        assert refused.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert all(name in refused.headers for name in RATE_HEADERS)
        assert int(refused.headers["Retry-After"]) >= 1
        await _until_served(http, keyed.url + "/chat", KEY_RPM)


async def test_a_served_request_carries_its_keys_rate_limit_headers(keyed: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(keyed.url + "/chat", json={"message": "hi\n#sim tokens=1"}, headers=bearer(KEY_TPM)) as r,
    ):
        assert r.status == 200
        assert r.headers["x-ratelimit-limit-tokens"] == str(TPM)
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < TPM  # after this request's reservation
        assert "x-ratelimit-limit-requests" not in r.headers  # this key has no rpm


async def _hold_a_stream(
    http: aiohttp.ClientSession, gateway: Gateway, key: str, rid: str, **body: object
) -> aiohttp.ClientResponse:
    """A stream on `key` whose upstream waits before its first token: it holds what it took until closed."""
    held = await http.post(
        gateway.url + "/chat/stream",
        json={"message": "x\n#sim fault=hang_first", **body},
        headers={**bearer(key), "X-Request-ID": rid},
    )
    assert held.status == 200
    return held


async def test_tokens_per_minute_reach_429_with_openai_headers_and_recover(keyed: Gateway) -> None:
    # One request reserving most of the budget is held open (its upstream waits before the
    # first token), so a second one does not fit until the first settles with its real usage.
    big = TPM - 50
    rid = new_request_id("tpm-held")
    async with aiohttp.ClientSession() as http:
        first = await _hold_a_stream(http, keyed, KEY_TPM, rid, max_tokens=big)
        async with http.post(
            keyed.url + "/chat", json={"message": "y\n#sim tokens=1", "max_tokens": big}, headers=bearer(KEY_TPM)
        ) as refused:
            assert refused.status == 429
            assert (await refused.json())["error"]["type"] == "tokens"
            assert refused.headers["x-ratelimit-limit-tokens"] == str(TPM)
            assert all(name in refused.headers for name in TOKEN_HEADERS)
        first.close()
        keyed.process.wait_for_event("request_finished", request_id=rid)
        async with http.post(
            keyed.url + "/chat", json={"message": "y\n#sim tokens=1", "max_tokens": big}, headers=bearer(KEY_TPM)
        ) as served:
            assert served.status == 200  # the held request settled: it used a few tokens, not its reservation


async def test_a_stream_without_max_tokens_reserves_a_completion_so_a_burst_cannot_overrun_tpm(keyed: Gateway) -> None:
    # Reserving only its prompt (a few tokens), a held stream left the rest of tpm to the next ones:
    # 50 such streams overran tpm tenfold before any settled.
    rid = new_request_id("tpm-unbounded")
    async with aiohttp.ClientSession() as http:
        first = await _hold_a_stream(http, keyed, KEY_TPM, rid)
        async with http.post(
            keyed.url + "/chat", json={"message": "y\n#sim tokens=1"}, headers=bearer(KEY_TPM)
        ) as refused:
            assert refused.status == 429
            assert (await refused.json())["error"]["type"] == "tokens"
        first.close()
        await asyncio.to_thread(keyed.process.wait_for_event, "request_finished", request_id=rid)
        await _until_served(http, keyed.url + "/chat", KEY_TPM)


async def test_concurrent_streams_reach_429_and_recover_when_one_ends(keyed: Gateway) -> None:
    rid = new_request_id("held")
    async with aiohttp.ClientSession() as http:
        held = await _hold_a_stream(http, keyed, KEY_STREAMS, rid)
        async with http.post(keyed.url + "/chat", json={"message": "y"}, headers=bearer(KEY_STREAMS)) as r:
            assert r.status == 429
            assert "Retry-After" in r.headers
            assert (await r.json())["error"]["type"] == "streams"
        held.close()
        keyed.process.wait_for_event("request_finished", request_id=rid)
        async with http.post(
            keyed.url + "/chat", json={"message": "y\n#sim tokens=1"}, headers=bearer(KEY_STREAMS)
        ) as r:
            assert r.status == 200


async def test_a_body_still_to_come_holds_none_of_its_keys_stream_slots(keyed: Gateway) -> None:
    # The key's limits were taken before the body was read: a body sent slowly, or never, held the
    # key's one stream slot (and a request of its rpm) for as long as body_timeout.
    # The chain says 100 Continue once the key passed: the request now waits for its body.
    _, writer = await body_awaited(keyed, KEY_STREAMS, 100, RECOVERY_SECONDS)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(keyed.url + "/chat", json={"message": "y\n#sim tokens=1"}, headers=bearer(KEY_STREAMS)) as r,
        ):
            served = r.status
    finally:
        writer.close()
    assert served == 200


# Keys for the prompt a request puts outside its messages (in `tools`), one per test: a bucket each.
KEY_TOOLS_RESERVED = "sk-gw-tools-reserved-5a6b7c8d9e0f1a2b"
KEY_TOOLS_CHARGED = "sk-gw-tools-charged-3c4d5e6f7a8b9c0d"
TOOLS_TPM = 6000  # refills 100 tokens a second
TOOLS_PROMPT = "lorem ipsum " * 1400  # 16,800 bytes: 4,200 tokens at 4 bytes a token
TOOLS_TOKENS = len(TOOLS_PROMPT) // 4
TOOLS = [{"type": "function", "function": {"name": "f", "description": TOOLS_PROMPT, "parameters": {}}}]


@pytest.fixture(scope="module")
def keyed_tools(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    keys = "".join(
        f'\n[[auth.keys]]\nname = "{name}"\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        f"tpm = {TOOLS_TPM}\n"
        for name, key in (("tools-reserved", KEY_TOOLS_RESERVED), ("tools-charged", KEY_TOOLS_CHARGED))
    )
    gateway = start_keyed_gateway(tmp_path_factory.mktemp("keyed-tools"), simulator, extra_toml=keys)
    yield gateway
    gateway.process.stop()


def tools_body(message: str, **extra: object) -> dict[str, object]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": message}], "tools": TOOLS, **extra}


async def test_a_prompt_in_tools_is_reserved_on_the_keys_tpm(keyed_tools: Gateway) -> None:
    # The reservation counted `messages` alone: a prompt moved into `tools` went past tpm unreserved.
    body = tools_body("hi\n#sim tokens=1", max_tokens=1)
    async with (
        aiohttp.ClientSession() as http,
        http.post(keyed_tools.url + "/v1/chat/completions", json=body, headers=bearer(KEY_TOOLS_RESERVED)) as r,
    ):
        assert r.status == 200
        remaining = int(r.headers["x-ratelimit-remaining-tokens"])  # what was left after its reservation
    assert remaining <= TOOLS_TPM - TOOLS_TOKENS


async def test_a_stream_whose_client_left_is_charged_the_prompt_in_its_tools(keyed_tools: Gateway) -> None:
    # No usage comes from a stream its client left: it is settled as its prompt estimate and what
    # it relayed. Estimated from `messages` alone, a prompt in `tools` was never charged at all.
    rid = new_request_id("tools-left")
    headers = {**bearer(KEY_TOOLS_CHARGED), "X-Request-ID": rid}
    body = tools_body("x\n#sim fault=hang_first", stream=True, max_tokens=1)
    async with aiohttp.ClientSession() as http:
        held = await http.post(keyed_tools.url + "/v1/chat/completions", json=body, headers=headers)
        assert held.status == 200
        held.close()
        await asyncio.to_thread(keyed_tools.process.wait_for_event, "request_finished", request_id=rid)
        async with http.post(
            keyed_tools.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "y\n#sim tokens=1"}], "max_tokens": 1},
            headers=bearer(KEY_TOOLS_CHARGED),
        ) as r:
            assert r.status == 200
            remaining = int(r.headers["x-ratelimit-remaining-tokens"])
    # What refilled meanwhile (100 tokens a second) is far under the tools' 4,200 tokens charged.
    assert remaining <= TOOLS_TPM - TOOLS_TOKENS // 2


# --- browser tokens ----------------------------------------------------------------------------


async def _create(http: aiohttp.ClientSession, gateway: Gateway, message: str = "hi\n#sim tokens=3") -> dict[str, str]:
    async with http.post(gateway.url + "/chat/streams", json={"message": message}, headers=bearer(KEY_ALPHA)) as r:
        assert r.status == 201
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        created: dict[str, str] = await r.json()
        return created


async def test_a_streams_token_opens_it_without_a_header(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        created = await _create(http, keyed)
        async with http.get(keyed.url + created["url"]) as r:
            assert r.status == 200
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert "no-store" in r.headers["Cache-Control"]
            events = await read_events(r)
            opened = r.headers["X-Request-ID"]
        async with http.delete(keyed.url + created["url"]) as r:
            assert r.status == 204
            deleted = r.headers["X-Request-ID"]
    assert events[-1].event == "done"
    for rid in (opened, deleted):  # both lines written before the log is searched for the token
        keyed.process.wait_for_event("request_finished", request_id=rid)
    assert not any(created["token"] in line for line in keyed.process.lines)


async def test_a_stream_url_without_its_token_is_401(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        created = await _create(http, keyed)
        async with http.get(keyed.url + "/chat/streams/" + created["id"]) as r:
            assert r.status == 401


async def test_a_token_for_another_stream_is_401(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        first = await _create(http, keyed)
        second = await _create(http, keyed)
        async with http.get(f"{keyed.url}/chat/streams/{second['id']}", params={"token": first["token"]}) as r:
            assert r.status == 401
            assert envelope_code(await r.json()) == "invalid_token"
        async with http.delete(f"{keyed.url}/chat/streams/{second['id']}", params={"token": first["token"]}) as r:
            assert r.status == 401


async def test_a_tampered_token_is_401(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        created = await _create(http, keyed)
        token = created["token"]
        payload, signature = token.split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        for forged in (flipped + "." + signature, payload + "." + signature[::-1], payload, ""):
            async with http.get(f"{keyed.url}/chat/streams/{created['id']}", params={"token": forged}) as r:
                assert r.status == 401, forged


async def test_an_expired_token_is_401(keyed: Gateway) -> None:
    # Minted with the gateway's secret by a signer whose clock is an hour behind: long expired.
    expired = TokenSigner(SECRET.encode(), ttl=600, clock=lambda: time.time() - 3600)
    alpha_digest = hashlib.sha256(KEY_ALPHA.encode()).digest()  # a token is bound to its key's hash
    async with aiohttp.ClientSession() as http:
        created = await _create(http, keyed)
        token = expired.mint("alpha", created["id"], key_digest=alpha_digest).value
        async with http.get(f"{keyed.url}/chat/streams/{created['id']}", params={"token": token}) as r:
            assert r.status == 401
        fresh = TokenSigner(SECRET.encode(), ttl=600).mint("alpha", created["id"], key_digest=alpha_digest).value
        async with http.get(f"{keyed.url}/chat/streams/{created['id']}", params={"token": fresh}) as r:
            assert r.status == 200  # the same token, unexpired, is accepted: expiry is what refused it
            await r.read()


async def test_the_one_step_get_needs_a_token_minted_for_it(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(keyed.url + "/chat/stream", params={"message": "hi"}) as r:
            assert r.status == 401
        stream_token = (await _create(http, keyed))["token"]
        async with http.get(keyed.url + "/chat/stream", params={"message": "hi", "token": stream_token}) as r:
            assert r.status == 401
        async with http.post(keyed.url + "/chat/stream/token", headers=bearer(KEY_ALPHA)) as r:
            assert r.status == 201
            minted = await r.json()
        alpha = GatewayKey("alpha", hashlib.sha256(KEY_ALPHA.encode()).digest(), None, KeyLimits())
        assert (
            TokenSigner(SECRET.encode(), 600).key_for(minted["token"], ONE_STEP_SCOPE, KeyRing((alpha,), None)) is alpha
        )
        async with http.get(
            keyed.url + "/chat/stream", params={"message": "hi\n#sim tokens=2", "token": minted["token"]}
        ) as r:
            assert r.status == 200
            assert (await read_events(r))[-1].event == "done"


# --- CORS --------------------------------------------------------------------------------------


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_a_preflight_from_the_allowlisted_origin_is_echoed_with_vary(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.options(keyed.url + "/v1/chat/completions", headers=preflight_headers(ORIGIN)) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "Origin" in r.headers.getall("Vary")
            assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
            assert "Access-Control-Allow-Credentials" not in r.headers
        headers = {**bearer(KEY_ALPHA), "Origin": ORIGIN}
        async with http.post(keyed.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "Origin" in r.headers.getall("Vary")


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "https://app.example.evil.example"])
async def test_a_preflight_from_another_origin_or_null_is_refused(keyed: Gateway, origin: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.options(keyed.url + "/v1/chat/completions", headers=preflight_headers(origin)) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers
        headers = {**bearer(KEY_ALPHA), "Origin": origin}
        async with http.post(keyed.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


# --- several workers ---------------------------------------------------------------------------


async def test_a_stream_opens_by_key_or_token_through_the_worker_that_does_not_own_it(
    simulator: Simulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "keys.toml", keys_toml())
    env = clean_env(
        {
            "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x",
            "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url,
            "SLUICE_AUTH_SECRET": SECRET,
            "TEST_GATEWAY_KEY": KEY_FROM_ENV,
        }
    )
    argv = [sys.executable, "run.py", "--port", str(free_port()), "--config", config, "--workers", "2"]
    supervisor = ManagedProcess(argv, env).start()
    try:
        supervisor.wait_for_line(lambda _: len(supervisor.events("sluice_listening")) >= 2)
        worker_argv = psutil.Process(supervisor.pid).children()[0].cmdline()
        peer_dir = Path(worker_argv[worker_argv.index("--peer-dir") + 1])

        def reach(index: int) -> aiohttp.ClientSession:
            """Requests that reach worker `index` alone, over its own Unix socket."""
            connector = aiohttp.UnixConnector(path=str(peer_dir / f"worker-{index}.sock"))
            return aiohttp.ClientSession("http://worker", connector=connector)

        async with reach(0) as owner:
            body = {"message": "w\n#sim tokens=3"}
            async with owner.post("/chat/streams", json=body, headers=bearer(KEY_ALPHA)) as r:
                created = await r.json()
        assert created["id"].startswith("w0_")
        async with reach(1) as other:
            async with other.get("/chat/streams/" + created["id"], headers=bearer(KEY_ALPHA)) as by_key:
                await by_key.read()
            async with other.get(created["url"]) as by_token:
                await by_token.read()
    finally:
        supervisor.stop()
    assert (by_key.status, by_token.status) == (200, 200)


async def test_another_keys_stream_is_answered_as_unknown_and_cannot_be_stopped(keyed: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        created = await _create(http, keyed, "hi\n#sim tokens=3")
        path = "/chat/streams/" + created["id"]
        async with http.get(keyed.url + path, headers=bearer(KEY_FROM_ENV)) as r:
            assert r.status == 204
        async with http.delete(keyed.url + path, headers=bearer(KEY_FROM_ENV)) as r:
            assert r.status == 204
        async with http.get(keyed.url + path, headers=bearer(KEY_ALPHA)) as r:
            assert r.status == 200
            events = await read_events(r)
    assert events[-1].event == "done"  # the other key's DELETE did not stop it


# --- fallbacks stay within the key's models ----------------------------------------------------

# A sub-table: config/test.toml, which the keyed config extends, has its [routing] already.
FALLBACK_TO_ANOTHER_MODEL = '\n[routing.context_window_fallbacks]\n"gpt-4o-mini" = ["gpt-4.1"]\n'
TOO_LONG_FOR_MINI = "hi\n#sim tokens=3 fault=context_length fault_model=gpt-4o-mini"


@pytest.fixture(scope="module")
def keyed_with_fallback(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("keyed-fallback")
    gateway = start_keyed_gateway(tmp, simulator, extra_toml=FALLBACK_TO_ANOTHER_MODEL)
    yield gateway
    gateway.process.stop()


async def _models_tried(simulator: Simulator, rid: str) -> list[str]:
    """The model of every attempt the simulator saw for `rid`, oldest first."""
    async with aiohttp.ClientSession() as http, http.get(f"{simulator.url}/_sim/attempts/{rid}") as r:
        return [attempt["model"] for attempt in (await r.json())["attempts"]]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
async def test_a_fallback_to_a_model_outside_the_keys_list_is_skipped(
    keyed_with_fallback: Gateway, simulator: Simulator, stream: bool
) -> None:
    rid = new_request_id("key-fallback")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": TOO_LONG_FOR_MINI}], "stream": stream}
    headers = {**bearer(KEY_NARROW), "X-Request-ID": rid}
    async with (
        aiohttp.ClientSession() as http,
        http.post(keyed_with_fallback.url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        answer = (r.status, envelope_code(await r.json()) if r.status == 400 else None)
    assert answer == (400, "context_length_exceeded")
    assert await _models_tried(simulator, rid) == ["gpt-4o-mini"]


async def test_a_browser_streams_fallback_to_a_model_outside_its_keys_list_is_skipped(
    keyed_with_fallback: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("key-fallback-stream")
    body = {"model": "gpt-4o-mini", "message": TOO_LONG_FOR_MINI}
    async with aiohttp.ClientSession() as http:
        headers = {**bearer(KEY_NARROW), "X-Request-ID": rid}
        async with http.post(keyed_with_fallback.url + "/chat/streams", json=body, headers=headers) as r:
            assert r.status == 201
            created = await r.json()
        async with http.get(keyed_with_fallback.url + created["url"]) as r:
            events = await read_events(r)
    assert events[-1].event == "failed"
    assert events[-1].json()["error"]["code"] == "context_length_exceeded"
    assert await _models_tried(simulator, rid) == ["gpt-4o-mini"]


# One upstream that continues cut streams, and a bigger model to fall back to when a prompt (a
# continuation's, with the reply so far) is too long for the key's model.
def continuation_upstream(simulator: Simulator) -> str:
    return f"""
[routing.context_window_fallbacks]
"gpt-4o-mini" = ["gpt-4.1"]

[[upstreams]]
name = "sim"
base_url = "{simulator.base_url}"
continuation = "assistant-prefill"
"""


@pytest.fixture(scope="module")
def keyed_with_continuation(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("keyed-continuation")
    gateway = start_keyed_gateway(tmp, simulator, extra_toml=continuation_upstream(simulator))
    yield gateway
    gateway.process.stop()


async def test_a_cut_streams_continuation_on_a_model_outside_the_keys_list_is_skipped(
    keyed_with_continuation: Gateway, simulator: Simulator
) -> None:
    rid = new_request_id("key-continuation")
    # Cut after 3 tokens; the continuation is too long for the key's model.
    message = "hi\n#sim tokens=8 fault=cut fault_at=3 fail_times=1 prefill_fault=context_length"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": message}], "stream": True}
    headers = {**bearer(KEY_NARROW), "X-Request-ID": rid}
    async with (
        aiohttp.ClientSession() as http,
        http.post(keyed_with_continuation.url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        events = await read_events(r)
    assert events[-1].json()["error"]["code"] == "upstream_stream_broken"  # the cut, not continued
    assert await _models_tried(simulator, rid) == ["gpt-4o-mini", "gpt-4o-mini"]  # the cut one, its continuation
