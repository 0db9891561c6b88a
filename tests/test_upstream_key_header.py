"""`api_key_header`: how an upstream is given its key, `Authorization: Bearer KEY` or `api-key: KEY`.

Azure OpenAI's classic deployments (`.../openai/deployments/NAME?api-version=...`) read the key
from an `api-key` header and refuse a bearer token. With `api_key_header = "api-key"` (in
`[upstream]` or an `[[upstreams]]` entry) the chat requests, the breaker's probe and model
discovery all send it that way, and no Authorization header; the default is the bearer token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from server.catalog import ModelCatalog
from server.discovery import ModelDiscovery
from server.settings import SettingsError, UpstreamEntry, load_settings
from server.settings.routing import ApiKeyHeader
from server.upstreams.client import UpstreamClient
from server.upstreams.connections import Connections
from tests.conftest import TEST_CONFIG, make_settings
from tests.support.raw_upstream import RawUpstream, json_reply

KEY = "sk-azure-never-logged"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

Build = Callable[[ApiKeyHeader], UpstreamClient]


@pytest.fixture
def keyed_client(raw_upstream: RawUpstream, upstream_connections: Connections) -> Build:
    """Build the upstream client of the raw upstream, with KEY sent in the given header."""

    def build(header: ApiKeyHeader) -> UpstreamClient:
        entry = UpstreamEntry(name="azure", base_url=raw_upstream.url, api_key=SecretStr(KEY), api_key_header=header)
        return UpstreamClient(entry, upstream_connections, make_settings().upstream)

    return build


def header_lines(head: bytes) -> dict[str, str]:
    """A request head's header lines by lower-cased name."""
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}


async def chat_request_headers(raw_upstream: RawUpstream, client: UpstreamClient) -> dict[str, str]:
    """The headers of the chat request `client` sends, answered with a completion."""
    sent = asyncio.ensure_future(client.complete(CHAT, "rid"))
    exchange = await raw_upstream.next()
    exchange.write(json_reply(b'{"choices": [{"message": {}}]}'))
    async with asyncio.timeout(10):
        await sent
    return header_lines(exchange.head)


async def test_a_chat_request_gives_an_api_key_upstream_its_key_as_api_key(
    raw_upstream: RawUpstream, keyed_client: Build
) -> None:
    headers = await chat_request_headers(raw_upstream, keyed_client("api-key"))
    assert headers["api-key"] == KEY
    assert "authorization" not in headers


async def test_a_probe_gives_an_api_key_upstream_its_key_as_api_key(
    raw_upstream: RawUpstream, keyed_client: Build
) -> None:
    probing = asyncio.ensure_future(keyed_client("api-key").probe())
    exchange = await raw_upstream.next()
    exchange.write(json_reply(b'{"data": []}'))
    async with asyncio.timeout(10):
        assert await probing == 200

    headers = header_lines(exchange.head)
    assert headers["api-key"] == KEY
    assert "authorization" not in headers


async def test_by_default_an_upstream_gets_its_key_as_a_bearer_token(
    raw_upstream: RawUpstream, keyed_client: Build
) -> None:
    headers = await chat_request_headers(raw_upstream, keyed_client("authorization"))
    assert headers["authorization"] == f"Bearer {KEY}"
    assert "api-key" not in headers


async def test_model_discovery_gives_an_api_key_upstream_its_key_as_api_key(aiohttp_server: Any) -> None:
    asked: list[dict[str, str]] = []

    async def models(request: web.Request) -> web.Response:
        asked.append({name.lower(): value for name, value in request.headers.items()})
        return web.json_response({"object": "list", "data": [{"id": "listed"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server: TestServer = await aiohttp_server(app)
    entry = UpstreamEntry(
        name="azure", base_url=str(server.make_url("/v1")), api_key=SecretStr(KEY), api_key_header="api-key"
    )
    discovery = ModelDiscovery(ModelCatalog(make_settings().models), [entry], connect_timeout=5, interval=3600)
    await discovery.start()
    await discovery.close()

    (headers,) = asked
    assert headers["api-key"] == KEY
    assert "authorization" not in headers


def test_the_default_upstream_takes_api_key_header_from_the_upstream_section() -> None:
    settings = make_settings({"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-x", "SLUICE_UPSTREAM_API_KEY_HEADER": "api-key"})

    (entry,) = settings.upstream_entries()
    assert entry.api_key_header == "api-key"


def test_an_upstreams_entry_takes_its_own_api_key_header(tmp_path: Path) -> None:
    config = tmp_path / "azure.toml"
    config.write_text(
        TEST_CONFIG.read_text()
        + '\n[[upstreams]]\nname = "azure"\nbase_url = "https://example.openai.azure.com/openai/v1"\n'
        'api_key_env = "AZURE_KEY"\napi_key_header = "api-key"\n'
    )
    (entry,) = load_settings(config, environ={"AZURE_KEY": KEY}).upstream_entries()

    assert entry.key_header() == ("api-key", KEY)


def test_an_unknown_api_key_header_is_refused_without_quoting_the_key() -> None:
    with pytest.raises(SettingsError) as refused:
        make_settings({"AI_INTEGRATIONS_OPENAI_API_KEY": KEY, "SLUICE_UPSTREAM_API_KEY_HEADER": "x-api-key"})

    assert "upstream.api_key_header" in str(refused.value)
    assert KEY not in str(refused.value)
