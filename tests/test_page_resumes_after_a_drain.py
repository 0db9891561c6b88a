"""The demo page, in a real Chromium, goes on with a stream whose reading instance drained.

A draining instance ends the readers of browser streams with `failed` `server_shutting_down` and a
retry hint: with Redis the stream goes on elsewhere, and a reconnect with the last event's id
resumes it. The page closed its EventSource on any `failed`, so it showed the shutdown and gave
up on a stream another instance finished (found by the scale-out review). The gateway's side is
tested in test_drain_readers.py and test_scale_out.py; here a scripted server plays both
instances, so the page is checked against exactly that sequence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, expect

STATIC = Path(__file__).resolve().parents[1] / "server" / "static"
STREAM = "drained"
ENDING_MS = 20_000  # a bound far beyond the 50 ms retry hint and a few local round trips
SHUTDOWN = {
    "error": {
        "message": "Sluice is shutting down; reconnect to go on.",
        "type": "server_error",
        "code": "server_shutting_down",
    }
}


def event(name: str, data: object, seq: int | None = None) -> bytes:
    head = f"id: {STREAM}:{seq}\n" if seq is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class Instances:
    """The stream's first reader drains after three tokens; what the reconnect finds is `after`."""

    def __init__(self, after: Callable[[web.Request], web.StreamResponse | None]) -> None:
        self.after = after
        self.last_event_ids: list[str] = []

    async def read(self, request: web.Request) -> web.StreamResponse:
        self.last_event_ids.append(request.headers.get("Last-Event-ID", ""))
        if len(self.last_event_ids) > 1:
            answer = self.after(request)
            if answer is not None:
                return answer
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        response.force_close()  # the draining instance closes the connection after its last event
        await response.prepare(request)
        if len(self.last_event_ids) == 1:
            await response.write(b"retry: 50\n\n")
            for seq in (1, 2, 3):
                await response.write(event("token", {"content": f"w{seq} "}, seq))
            await response.write(b"retry: 50\n" + event("failed", SHUTDOWN))
        else:
            for seq in (4, 5):
                await response.write(event("token", {"content": f"w{seq} "}, seq))
            await response.write(event("done", {"finish_reason": "stop", "usage": None}, 6))
        return response


def scripted_gateway(instances: Instances) -> web.Application:
    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def static(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / request.match_info["name"])

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"models": ["gpt-4o"], "default": "gpt-4o"})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "integration": "openai"})

    async def create(request: web.Request) -> web.Response:
        return web.json_response({"id": STREAM, "url": f"/chat/streams/{STREAM}"}, status=201)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/chat/streams", create)
    app.router.add_get(f"/chat/streams/{STREAM}", instances.read)
    return app


Serve = Callable[[Instances], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start the scripted gateway for `instances`; its base URL."""
    servers: list[TestServer] = []

    async def start(instances: Instances) -> str:
        server = TestServer(scripted_gateway(instances))
        await server.start_server()
        servers.append(server)
        return str(server.make_url(""))

    yield start
    for server in servers:
        await server.close()


async def send_on_page(browser: Browser, base_url: str) -> Page:
    page = await browser.new_page()
    await page.goto(base_url + "/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    await page.fill("#message", "hello")
    await page.click("#send")
    return page


async def test_the_page_resumes_a_stream_whose_reading_instance_drained(browser: Browser, serve: Serve) -> None:
    instances = Instances(lambda request: None)
    page = await send_on_page(browser, await serve(instances))

    await expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=ENDING_MS)
    reply = page.locator("#conversation .message.assistant").last.locator(".content")
    await expect(reply).to_have_text("w1 w2 w3 w4 w5")
    assert instances.last_event_ids == ["", f"{STREAM}:3"]


async def test_a_drained_stream_nobody_goes_on_with_ends_with_the_shutdown_message(
    browser: Browser, serve: Serve
) -> None:
    instances = Instances(lambda request: web.Response(status=204))  # the stream is over everywhere
    page = await send_on_page(browser, await serve(instances))

    await expect(page.locator("#status")).to_have_attribute("data-state", "failed", timeout=ENDING_MS)
    await expect(page.locator("#status")).to_have_text(SHUTDOWN["error"]["message"])
    assert instances.last_event_ids == ["", f"{STREAM}:3"]


def gone(request: web.Request) -> web.Response:
    """The drained instance has exited and nothing else answers: each reconnect's connection drops."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


async def test_a_drained_stream_whose_instance_is_gone_ends_with_the_shutdown_message(
    browser: Browser, serve: Serve
) -> None:
    # EventSource retries a dropped connection for ever: the page showed "resuming" until Stop.
    instances = Instances(gone)
    page = await send_on_page(browser, await serve(instances))

    await expect(page.locator("#status")).to_have_attribute("data-state", "failed", timeout=ENDING_MS)
    await expect(page.locator("#status")).to_have_text(SHUTDOWN["error"]["message"])
    # Chromium may try a dropped request again on its own before it tells the page: each names :3.
    assert instances.last_event_ids[0] == ""
    assert set(instances.last_event_ids[1:]) == {f"{STREAM}:3"}
