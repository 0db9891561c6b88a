"""The live dashboard in a real Chromium, against `python run.py` and the simulator process.

The gateway is this module's own, so every request it counts is one these tests sent. Waits are
on the page's own updates (locator assertions, the feed's update counter) and on the gateway's
log lines, never on time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.support.browser import PolicyWatch
from tests.support.client import new_request_id
from tests.support.png import colours
from tests.support.processes import Gateway, Simulator
from tests.support.proxy import CuttingProxy
from tests.support.security import KEY_ALPHA, METRICS_KEY, bearer, start_keyed_gateway

ACCENT = (0x25, 0x63, 0xEB)  # --accent in dashboard.css: the colour of every number on the page
UPDATE_SECONDS = 10_000  # ms: generous bound for the next one-second snapshot


@pytest.fixture(scope="module")
def gateway(own_gateway: Gateway) -> Gateway:
    """This module's own gateway, not the session's (see conftest.py)."""
    return own_gateway


@pytest.fixture(scope="module")
def keyed(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with keys and a metrics key: its feed answers 401 without the metrics key."""
    gw = start_keyed_gateway(tmp_path_factory.mktemp("dashboard-keyed"), simulator)
    yield gw
    gw.process.stop()


async def open_dashboard(browser: Browser, base_url: str) -> tuple[Page, PolicyWatch]:
    page = await browser.new_page(viewport={"width": 1000, "height": 760})
    watch = PolicyWatch(page)
    await page.goto(base_url + "/dashboard")
    await expect(page.locator("#feed")).to_have_attribute("data-state", "live", timeout=UPDATE_SECONDS)
    return page, watch


async def number(page: Page, selector: str) -> int:
    return int((await page.locator(selector).text_content() or "").replace(",", ""))


async def next_update(page: Page) -> None:
    """Return once the page has shown a snapshot taken after this call."""
    body = page.locator("body")
    seen = await body.get_attribute("data-updates")
    await expect(body).not_to_have_attribute("data-updates", seen or "", timeout=UPDATE_SECONDS)
    seen = await body.get_attribute("data-updates")
    # The snapshot shown at the first change may have been taken just before this call: wait one more.
    await expect(body).not_to_have_attribute("data-updates", seen or "", timeout=UPDATE_SECONDS)


async def stream(http: aiohttp.ClientSession, gateway: Gateway, message: str, key: str | None = None) -> str:
    request_id = new_request_id("dash")
    headers = {"X-Request-ID": request_id, **(bearer(key) if key else {})}
    async with http.post(gateway.url + "/chat/stream", json={"message": message}, headers=headers) as response:
        assert response.status == 200
        await response.read()
    gateway.process.wait_for_event("request_finished", request_id=request_id)
    return request_id


async def test_the_dashboard_numbers_appear_and_follow_the_traffic(gateway: Gateway, browser: Browser) -> None:
    page, watch = await open_dashboard(browser, gateway.url)
    requests_before = await number(page, "#requests-total")
    await expect(page.locator("#table-upstreams td[data-state]")).to_have_text("closed")
    await expect(page.locator("#key-form")).to_be_hidden()  # no metrics key set: nothing to ask

    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            await stream(http, gateway, "Count me\n#sim tokens=30 gap_ms=2")
        async with http.post(gateway.url + "/chat", json={"message": "hi", "model": "gpt-2"}) as missing:
            assert missing.status == 404
    await next_update(page)

    assert await number(page, "#requests-total") >= requests_before + 6
    await expect(page.locator("#ttft-p50")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    await expect(page.locator("#ttft-p99")).to_have_text(re.compile(r"^\d+(\.\d)? ms$"))
    await expect(page.locator("#tokens-per-second")).not_to_have_text(re.compile(r"^(0|–)$"))
    await expect(page.locator("#requests-per-second")).not_to_have_text(re.compile(r"^(0\.0|–)$"))
    await expect(page.locator("#errors-by-status")).to_contain_text("404")
    await expect(page.locator("#endings")).to_contain_text("completed")
    assert watch.violations == []


async def test_the_dashboard_shows_a_stream_in_flight_and_its_disconnect(gateway: Gateway, browser: Browser) -> None:
    page, watch = await open_dashboard(browser, gateway.url)
    disconnects_before = await number(page, "#disconnects")
    request_id = new_request_id("dash-live")

    async with aiohttp.ClientSession() as http:
        response = await http.post(
            gateway.url + "/chat/stream",
            json={"message": "Go on\n#sim tokens=100000 gap_ms=20"},
            headers={"X-Request-ID": request_id},
        )
        await response.content.readline()
        await expect(page.locator("#live-streams")).to_have_text("1", timeout=UPDATE_SECONDS)
        response.close()
    gateway.process.wait_for_event("request_finished", request_id=request_id)

    await expect(page.locator("#live-streams")).to_have_text("0", timeout=UPDATE_SECONDS)
    await expect(page.locator("#disconnects")).to_have_text(str(disconnects_before + 1), timeout=UPDATE_SECONDS)
    assert watch.violations == []


async def test_a_screenshot_of_the_dashboard_after_traffic_is_a_drawn_page(
    gateway: Gateway, browser: Browser, tmp_path: object
) -> None:
    page, watch = await open_dashboard(browser, gateway.url)
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(stream(http, gateway, f"Shot {n}\n#sim tokens=20 gap_ms=2") for n in range(3)))
    await next_update(page)
    await expect(page.locator("#ttft-p50")).to_have_text(re.compile(r"ms$"))

    png = await page.screenshot()

    counts = colours(png)
    background, background_pixels = counts.most_common(1)[0]
    total = sum(counts.values())
    assert len(counts) > 50, "the page is (nearly) one colour"
    assert background_pixels < total * 0.97, "almost nothing is drawn on the page"
    # The numbers are drawn in the accent colour: styled, rendered values are on the screen.
    assert counts[ACCENT] > 200, f"no styled numbers on the page (background {background})"
    assert watch.violations == []


async def test_the_dashboard_says_when_its_feed_is_lost_and_recovers(gateway: Gateway, browser: Browser) -> None:
    target = urlsplit(gateway.url)
    assert target.hostname is not None
    assert target.port is not None
    proxy = CuttingProxy(target.hostname, target.port)
    await proxy.start()
    try:
        page, watch = await open_dashboard(browser, proxy.url)
        proxy.cut_after(b"event: snapshot\n", then_hold=True)

        await expect(page.locator("#feed")).to_have_attribute("data-state", "lost", timeout=UPDATE_SECONDS)
        await expect(page.locator("#feed")).to_have_text("Connection lost; reconnecting…")
        proxy.release()

        await expect(page.locator("#feed")).to_have_attribute("data-state", "live", timeout=UPDATE_SECONDS)
        assert watch.violations == []
    finally:
        await proxy.close()


async def test_with_a_metrics_key_the_page_asks_for_it_then_follows_traffic(keyed: Gateway, browser: Browser) -> None:
    page = await browser.new_page(viewport={"width": 1000, "height": 760})
    watch = PolicyWatch(page)
    await page.goto(keyed.url + "/dashboard")
    await expect(page.locator("#feed")).to_have_attribute("data-state", "locked", timeout=UPDATE_SECONDS)
    await expect(page.locator("#key-message")).to_have_text("This dashboard needs the gateway's metrics key.")
    await expect(page.locator("#requests-total")).to_have_text("–")

    await page.locator("#metrics-key").fill(METRICS_KEY)
    await page.locator("#key-form button").click()
    await expect(page.locator("#feed")).to_have_attribute("data-state", "live", timeout=UPDATE_SECONDS)
    await expect(page.locator("#key-form")).to_be_hidden()
    requests_before = await number(page, "#requests-total")

    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            await stream(http, keyed, "Count me\n#sim tokens=20 gap_ms=2", key=KEY_ALPHA)
    await next_update(page)

    assert await number(page, "#requests-total") >= requests_before + 3
    await expect(page.locator("#endings")).to_contain_text("completed")
    # The feed's keys table is drawn like any other: by name, never the key.
    await expect(page.locator("#table-keys")).to_contain_text("alpha")
    assert KEY_ALPHA not in await page.content()
    assert METRICS_KEY not in page.url
    assert watch.violations == []


async def test_a_wrong_metrics_key_is_refused_with_a_clear_message(keyed: Gateway, browser: Browser) -> None:
    page = await browser.new_page()
    watch = PolicyWatch(page)
    await page.goto(keyed.url + "/dashboard")
    await expect(page.locator("#key-form")).to_be_visible(timeout=UPDATE_SECONDS)

    # A gateway key is not the metrics key.
    await page.locator("#metrics-key").fill(KEY_ALPHA)
    await page.locator("#key-form button").click()

    await expect(page.locator("#feed")).to_have_text("Metrics key refused", timeout=UPDATE_SECONDS)
    await expect(page.locator("#key-message")).to_have_text(
        "The gateway refused that metrics key; check it and try again."
    )
    await expect(page.locator("#requests-total")).to_have_text("–")
    assert await page.evaluate("sessionStorage.length") == 0
    assert watch.violations == []


async def test_the_sse_parser_joins_pieces_and_reads_every_line_ending(gateway: Gateway, browser: Browser) -> None:
    page, _ = await open_dashboard(browser, gateway.url)
    pieces = ['retry: 2000\nevent: snapshot\ndata: {"a"', ":1}\r", "\n\r\n: heartbeat\n\n", "data: x\rdata: y\n\n"]
    result = await page.evaluate(
        """(pieces) => {
            const parser = new SseParser();
            const events = pieces.flatMap((piece) => parser.push(piece));
            return { events, retry: parser.retry };
        }""",
        pieces,
    )
    assert result == {
        "events": [{"type": "snapshot", "data": '{"a":1}'}, {"type": "message", "data": "x\ny"}],
        "retry": 2000,
    }
