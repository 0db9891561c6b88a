"""Any OpenAI-compatible upstream: "*" forwards any model name, aliases resolve before the upstream call.

The gateway runs in-process against the simulator process, which records the model each request
asked it for; one test runs `python run.py` with SLUICE_MODELS_AVAILABLE='*' as an operator would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.settings import load_settings
from tests.conftest import AiohttpClient, make_settings
from tests.support.client import new_request_id, sim_wait
from tests.support.processes import ROOT, Simulator, start_gateway

Client = TestClient[web.Request, web.Application]
Build = Callable[..., Coroutine[Any, Any, Client]]


@pytest.fixture
def gateway_with(aiohttp_client: AiohttpClient, simulator: Simulator) -> Build:
    """Build an in-process gateway on the simulator process with the given [models] settings."""

    async def build(**models: Any) -> Client:
        environ = {
            "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key-never-logged",
            "AI_INTEGRATIONS_OPENAI_BASE_URL": simulator.base_url,
        }
        client: Client = await aiohttp_client(create_app(make_settings(environ, models=models)))
        return client

    return build


def completion(model: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "#sim tokens=2\nhi"}], "stream": stream}


async def model_the_simulator_saw(simulator: Simulator, request_id: str) -> str:
    async with aiohttp.ClientSession() as http:
        record = await sim_wait(http, simulator.url, request_id, "closed")
    return str(record["model"])


async def test_star_forwards_a_model_name_no_list_holds(gateway_with: Build, simulator: Simulator) -> None:
    client = await gateway_with(available=["*"], default="gpt-4o")
    request_id = new_request_id("star")

    response = await client.post(
        "/v1/chat/completions", json=completion("llama3.1:8b"), headers={"X-Request-ID": request_id}
    )

    assert response.status == 200
    assert (await response.json())["model"] == "llama3.1:8b"
    assert await model_the_simulator_saw(simulator, request_id) == "llama3.1:8b"


async def test_star_forwards_any_model_on_the_original_api(gateway_with: Build, simulator: Simulator) -> None:
    client = await gateway_with(available=["*"], default="qwen2.5")
    request_id = new_request_id("star-chat")

    response = await client.post("/chat", json={"message": "#sim tokens=2\nhi"}, headers={"X-Request-ID": request_id})

    assert response.status == 200
    assert (await response.json())["model"] == "qwen2.5"
    assert await model_the_simulator_saw(simulator, request_id) == "qwen2.5"


async def test_an_alias_reaches_the_upstream_as_its_real_model(gateway_with: Build, simulator: Simulator) -> None:
    client = await gateway_with(aliases={"fast": "gpt-4o-mini"})
    request_id = new_request_id("alias")

    response = await client.post("/v1/chat/completions", json=completion("fast"), headers={"X-Request-ID": request_id})

    assert response.status == 200
    assert (await response.json())["model"] == "gpt-4o-mini"
    assert await model_the_simulator_saw(simulator, request_id) == "gpt-4o-mini"


async def test_an_alias_stream_names_the_real_model_in_every_chunk(gateway_with: Build) -> None:
    client = await gateway_with(aliases={"fast": "gpt-4o-mini"})

    response = await client.post("/v1/chat/completions", json=completion("fast", stream=True))

    assert response.status == 200
    text = await response.text()
    chunks = [line for line in text.split("\n") if line.startswith("data: {")]
    assert chunks
    assert all('"model":"gpt-4o-mini"' in chunk for chunk in chunks)


async def test_an_alias_on_the_original_api_replies_with_the_real_model(gateway_with: Build) -> None:
    client = await gateway_with(aliases={"fast": "gpt-4o-mini"})

    response = await client.post("/chat", json={"message": "#sim tokens=2\nhi", "model": "fast"})

    assert response.status == 200
    assert (await response.json())["model"] == "gpt-4o-mini"


async def test_model_lists_show_aliases_and_never_the_star(gateway_with: Build) -> None:
    client = await gateway_with(available=["*", "gpt-4o"], aliases={"fast": "gpt-4o-mini"})

    v1 = await (await client.get("/v1/models")).json()
    original = await (await client.get("/models")).json()

    assert [model["id"] for model in v1["data"]] == ["gpt-4o", "fast"]
    assert original == {"models": ["gpt-4o", "fast"], "default": "gpt-4o"}


async def test_with_any_model_forwarded_the_lists_still_name_the_default(gateway_with: Build) -> None:
    client = await gateway_with(available=["*"])

    v1 = await (await client.get("/v1/models")).json()
    original = await (await client.get("/models")).json()

    assert [model["id"] for model in v1["data"]] == ["gpt-4o"]
    assert original == {"models": ["gpt-4o"], "default": "gpt-4o"}


async def test_v1_unknown_model_404_points_to_v1_models(gateway_with: Build) -> None:
    client = await gateway_with()

    response = await client.post("/v1/chat/completions", json=completion("gpt-2"))

    assert response.status == 404
    error = (await response.json())["error"]
    assert error["code"] == "model_not_found"
    assert "GET /v1/models lists the models" in error["message"]


async def test_original_api_unknown_model_404_points_to_models(gateway_with: Build) -> None:
    client = await gateway_with()

    response = await client.post("/chat", json={"message": "hi", "model": "gpt-2"})

    assert response.status == 404
    message = (await response.json())["error"]["message"]
    assert "GET /models lists the models" in message


async def test_v1_model_by_id_knows_an_alias(gateway_with: Build) -> None:
    client = await gateway_with(aliases={"fast": "gpt-4o-mini"})

    response = await client.get("/v1/models/fast")

    assert response.status == 200
    assert (await response.json())["id"] == "fast"


@pytest.mark.parametrize("path", ["/v1/models/Qwen/Qwen2.5-7B", "/v1/models/Qwen%2FQwen2.5-7B"])
async def test_v1_model_by_id_takes_an_id_with_a_slash_encoded_or_not(gateway_with: Build, path: str) -> None:
    client = await gateway_with(available=["gpt-4o", "Qwen/Qwen2.5-7B"])

    response = await client.get(path)

    assert response.status == 200
    assert (await response.json())["id"] == "Qwen/Qwen2.5-7B"
    unknown = await client.get("/v1/models/Qwen/Qwen3-235B")
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "model_not_found"


async def test_run_py_with_star_in_the_environment_serves_any_model(simulator: Simulator) -> None:
    with start_gateway(upstream=simulator, env={"SLUICE_MODELS_AVAILABLE": "*"}) as gateway:
        async with (
            aiohttp.ClientSession() as http,
            http.post(gateway.url + "/v1/chat/completions", json=completion("mistral-large-latest")) as response,
        ):
            assert response.status == 200
            assert (await response.json())["model"] == "mistral-large-latest"


class ListingUpstream:
    """A fake upstream whose GET /v1/models answers from a list the test changes; counts the reads."""

    def __init__(self, *models: str) -> None:
        self.models = list(models)
        self.reads: asyncio.Queue[int] = asyncio.Queue()
        self._count = 0
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self._list)

    async def _list(self, request: web.Request) -> web.Response:
        self._count += 1
        self.reads.put_nowait(self._count)
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})


async def test_discover_accepts_and_lists_what_the_upstream_lists(upstream_app_client: Callable[..., Any]) -> None:
    upstream = ListingUpstream("llama3.1:8b", "qwen2.5")
    client = await upstream_app_client(upstream.app, models={"available": ["gpt-4o"], "discover": True})

    listed = await (await client.get("/v1/models")).json()

    assert [model["id"] for model in listed["data"]] == ["gpt-4o", "llama3.1:8b", "qwen2.5"]


async def test_discover_refreshes_the_list_every_interval(upstream_app_client: Callable[..., Any]) -> None:
    upstream = ListingUpstream("llama3.1:8b")
    client = await upstream_app_client(
        upstream.app, models={"available": ["gpt-4o"], "discover": True, "discover_interval": 0.01}
    )
    upstream.models = ["mistral"]
    # Reads are sequential: once read N+2 arrives, the answer to read N+1 (the new list) was taken.
    seen = await upstream.reads.get()
    while await asyncio.wait_for(upstream.reads.get(), 10) < seen + 2:
        pass

    listed = await (await client.get("/models")).json()

    assert listed["models"] == ["gpt-4o", "mistral"]


async def test_a_failed_discovery_keeps_the_configured_list(upstream_app_client: Callable[..., Any]) -> None:
    client = await upstream_app_client(web.Application(), models={"available": ["gpt-4o"], "discover": True})

    listed = await (await client.get("/models")).json()

    assert listed["models"] == ["gpt-4o"]


def test_the_readme_models_example_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (example,) = [block for block in re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL) if "[models]" in block]
    overlay = tmp_path / "models.toml"
    overlay.write_text(example)

    models = load_settings(overlay, environ={}).models

    assert models.available == ("*",)
    assert models.discover is True
    assert models.aliases == {"fast": "llama3.2:3b"}


async def test_a_browser_stream_asks_the_upstream_for_the_aliased_model(
    gateway_with: Build, simulator: Simulator
) -> None:
    client = await gateway_with(aliases={"fast": "gpt-4o-mini"})
    request_id = new_request_id("alias-browser")

    created = await client.post(
        "/chat/streams", json={"message": "#sim tokens=2\nhi", "model": "fast"}, headers={"X-Request-ID": request_id}
    )

    assert created.status == 201
    assert await model_the_simulator_saw(simulator, request_id) == "gpt-4o-mini"


async def test_discover_takes_the_union_of_every_upstreams_list(
    aiohttp_server: Callable[..., Any], aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    first = await aiohttp_server(ListingUpstream("llama3.1:8b").app)
    second = await aiohttp_server(ListingUpstream("qwen2.5", "llama3.1:8b").app)
    config = tmp_path / "two.toml"
    config.write_text(
        (ROOT / "config" / "test.toml").read_text().replace("[models]\n", "[models]\ndiscover = true\n", 1)
        + f'\n[[upstreams]]\nname = "one"\nbase_url = "{first.make_url("/v1")}"\n'
        + f'\n[[upstreams]]\nname = "two"\nbase_url = "{second.make_url("/v1")}"\n'
    )
    settings = load_settings(config, environ={"AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key-never-logged"})
    client: Client = await aiohttp_client(create_app(settings))

    listed = await (await client.get("/models")).json()

    assert listed["models"][-2:] == ["llama3.1:8b", "qwen2.5"]
