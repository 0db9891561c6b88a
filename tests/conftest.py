"""Shared fixtures: settings, in-process apps and clients, and real processes."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, async_playwright
from pydantic import SecretStr

from server.app import create_app, setup_auth
from server.keys import METRICS, SETTINGS
from server.metrics import Metrics
from server.middleware import setup_middlewares
from server.settings import Settings, UpstreamEntry, load_settings
from server.upstreams.client import UpstreamClient
from server.upstreams.connections import Connections
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.processes import Gateway, Simulator, start_gateway, start_hostile_upstream, start_simulator
from tests.support.proxy import CuttingProxy
from tests.support.raw_upstream import RawUpstream
from tests.support.servers import NginxServer, RedisServer, start_nginx, start_redis


def _default_sighup() -> None:
    """Put SIGHUP back to its default action, unblocked, in this process: before any child starts.

    A child inherits an ignored or blocked SIGHUP across exec. Started under `nohup` (some CI agents
    run it that way), every gateway the tests start would ignore SIGHUP from its first instruction,
    and the tests that prove Sluice ignores a SIGHUP while it starts, or exits zero on one after its
    drain, would pass with that code gone. A plain terminal run has SIGHUP at its default: so has this.
    """
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


_default_sighup()  # at import, the first conftest code pytest runs (in each xdist worker too)

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = ROOT / "config" / "test.toml"

AiohttpClient = Callable[..., Any]


def make_settings(environ: dict[str, str] | None = None, **sections: dict[str, Any]) -> Settings:
    """Test settings: config/test.toml, the given environment only, and section overrides."""
    return load_settings(TEST_CONFIG, environ=environ or {}, overrides=sections)


def middleware_app(settings: Settings, *routes: web.RouteDef) -> web.Application:
    """A bare application: the gateway's middleware with its hooks, the state it reads, and `routes`."""
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = Metrics(settings.process.metrics_dir)
    setup_auth(app, settings)
    setup_middlewares(app)
    app.add_routes(routes)
    return app


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[web.Request, web.Application]:
    """The gateway in-process, on its built-in simulated model."""
    client: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(settings))
    return client


@pytest.fixture
async def upstream_app_client(aiohttp_server: Callable[..., Any], aiohttp_client: AiohttpClient) -> Callable[..., Any]:
    """Build a gateway in-process whose upstream is the given aiohttp app (a fake upstream)."""

    async def build(
        upstream_app: web.Application, /, **sections: dict[str, Any]
    ) -> TestClient[web.Request, web.Application]:
        server: TestServer = await aiohttp_server(upstream_app)
        environ = {
            "AI_INTEGRATIONS_OPENAI_API_KEY": "sk-test-key-never-logged",
            "AI_INTEGRATIONS_OPENAI_BASE_URL": str(server.make_url("/v1")),
        }
        client: TestClient[web.Request, web.Application] = await aiohttp_client(
            create_app(make_settings(environ, **sections))
        )
        return client

    return build


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    """The simulator as its own process, shared by the whole session (tests steer it per request)."""
    sim = start_simulator()
    yield sim
    sim.process.stop()


@pytest.fixture(scope="module")
def hostile() -> Iterator[Simulator]:
    """The hostile upstream (tests/support/hostile_upstream.py) as its own process, per test module."""
    upstream = start_hostile_upstream()
    yield upstream
    upstream.process.stop()


@pytest.fixture(scope="session")
def gateway(simulator: Simulator) -> Iterator[Gateway]:
    """`python run.py` against the simulator process, shared by tests that do not stop it."""
    gw = start_gateway(upstream=simulator)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def own_gateway(simulator: Simulator) -> Iterator[Gateway]:
    """A module's own `python run.py`: its streams stay out of others' metrics; it logs no error."""
    gw = start_gateway(upstream=simulator)
    yield gw
    gw.process.stop()
    assert [e for e in gw.process.events() if e.get("level") in ("error", "critical")] == []


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, driven by Playwright, for this test alone."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a socket without SO_REUSEPORT: nothing else can bind it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Debian's redis-server on a free loopback port, for this test alone; kill and start it at will."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = start_redis(directory)
    yield server
    server.stop()


@pytest.fixture
async def redis_proxy(redis_server: RedisServer) -> AsyncIterator[CuttingProxy]:
    """A TCP proxy in front of the test's redis-server (its `url` is then redis://...), to reset connections."""
    proxy = CuttingProxy("127.0.0.1", redis_server.port)
    await proxy.start()
    proxy.url = proxy.url.replace("http://", "redis://", 1)
    yield proxy
    await proxy.close()


StartNginx = Callable[[Sequence[str]], NginxServer]


@pytest.fixture
def start_nginx_in_front(tmp_path: Path) -> Iterator[StartNginx]:
    """Start nginx with deploy/nginx/sluice.conf in front of the given host:port upstreams."""
    started: list[NginxServer] = []

    def start(upstreams: Sequence[str]) -> NginxServer:
        server = start_nginx(tmp_path / f"nginx-{len(started)}", upstreams)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    """A loopback HTTP/1.1 server in this process whose answers the test writes byte by byte."""
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def upstream_connections() -> AsyncIterator[Connections]:
    """The upstream connection pools, as the app opens them (no limit), closed after the test."""
    connections = Connections(max_connections=0, connect_timeout=5)
    yield connections
    await connections.close()


RawClient = Callable[[str], UpstreamClient]


@pytest.fixture
def raw_client(upstream_connections: Connections) -> RawClient:
    """Build the upstream client for a base URL, on the test's connection pools."""

    def build(base_url: str) -> UpstreamClient:
        entry = UpstreamEntry(name="raw", base_url=base_url, api_key=SecretStr("k"))
        return UpstreamClient(entry, upstream_connections, make_settings().upstream)

    return build
