"""A base URL's query goes on every request to its upstream; one with a user name or password is refused.

Azure OpenAI's classic API names its version in the query (`.../openai/deployments/X?api-version=...`):
the chat request, the breaker's probe and model discovery all keep it after their own path. A
`user:password@` part would be sent nowhere (Sluice sends its key as a bearer token), so start-up
refuses it, naming the setting to use and never the URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.catalog import ModelCatalog
from server.discovery import ModelDiscovery
from server.settings import SettingsError, UpstreamEntry, load_settings
from tests.conftest import RawClient, make_settings
from tests.support.raw_upstream import RawUpstream, json_reply

QUERY = "?api-version=2024-06-01"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_chat_request_keeps_the_base_urls_query(raw_upstream: RawUpstream, raw_client: RawClient) -> None:
    base = raw_upstream.url.replace("/v1", "/openai/deployments/d1")
    sent = asyncio.ensure_future(raw_client(base + QUERY).complete(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(json_reply(b'{"choices": [{"message": {}}]}'))
    async with asyncio.timeout(10):
        await sent

    assert exchange.head.split(b"\r\n")[0] == f"POST /openai/deployments/d1/chat/completions{QUERY} HTTP/1.1".encode()


async def test_a_probe_keeps_the_base_urls_query(raw_upstream: RawUpstream, raw_client: RawClient) -> None:
    probing = asyncio.ensure_future(raw_client(raw_upstream.url + QUERY).probe())
    exchange = await raw_upstream.next()
    exchange.write(json_reply(b'{"data": []}'))
    async with asyncio.timeout(10):
        assert await probing == 200

    assert exchange.head.split(b"\r\n")[0] == f"GET /v1/models{QUERY} HTTP/1.1".encode()


async def test_model_discovery_keeps_the_base_urls_query(aiohttp_server: Any) -> None:
    asked: list[str] = []

    async def models(request: web.Request) -> web.Response:
        asked.append(request.path_qs)
        return web.json_response({"object": "list", "data": [{"id": "listed"}]})

    app = web.Application()
    app.router.add_get("/openai/deployments/d1/models", models)
    server: TestServer = await aiohttp_server(app)
    entry = UpstreamEntry(name="azure", base_url=str(server.make_url("/openai/deployments/d1")) + QUERY)
    catalog = ModelCatalog(make_settings().models)
    discovery = ModelDiscovery(catalog, [entry], connect_timeout=5, interval=3600)
    await discovery.start()
    await discovery.close()

    assert asked == [f"/openai/deployments/d1/models{QUERY}"]
    assert "listed" in catalog.discovered


@pytest.mark.parametrize("userinfo", ["user:hunter2@", "user@", ":hunter2@"])
def test_a_base_url_with_a_user_or_password_is_refused_without_echoing_it(userinfo: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environ={"AI_INTEGRATIONS_OPENAI_BASE_URL": f"https://{userinfo}api.example/v1"})

    message = str(refused.value)
    assert message.startswith("setting upstream.base_url: must not hold a user name or password")
    assert "AI_INTEGRATIONS_OPENAI_API_KEY" in message
    assert "hunter2" not in message
    assert "user" not in message.replace("user name", "")


def test_an_upstreams_entry_with_a_password_is_refused_naming_api_key_env(tmp_path: Path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[[upstreams]]\nname = "a"\nbase_url = "https://u:hunter2@a.example/v1"\n')

    with pytest.raises(SettingsError) as refused:
        load_settings(config, environ={})

    assert str(refused.value).startswith("setting upstreams.0.base_url: must not hold a user name or password")
    assert "api_key_env" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_an_at_sign_in_the_query_is_no_user_name() -> None:
    environ = {
        "AI_INTEGRATIONS_OPENAI_BASE_URL": "https://api.example/v1?owner=a@b",
        "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test",
    }
    settings = load_settings(environ=environ)

    assert settings.upstream.base_url == "https://api.example/v1?owner=a@b"
