"""The demo page in a real Chromium, against `python run.py` and the simulator process.

Playwright drives /usr/bin/chromium. The page runs under its strict Content-Security-Policy, so
the tests wait with locator assertions (no string evaluation, which the policy forbids) and the
simulator's long-poll, never with sleeps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tests.support.browser import PolicyWatch
from tests.support.client import sim_wait
from tests.support.processes import Gateway, Simulator, start_gateway
from tests.support.proxy import CuttingProxy

STREAMING_SECONDS = 20_000  # ms: generous bound for a stream to finish in the browser


@pytest.fixture(scope="module")
def gateway(own_gateway: Gateway) -> Gateway:
    """This module's own gateway, not the session's (see conftest.py)."""
    return own_gateway


@pytest.fixture
async def proxy(gateway: Gateway) -> AsyncIterator[CuttingProxy]:
    """A proxy in front of the gateway whose connections the test can drop."""
    target = urlsplit(gateway.url)
    assert target.hostname is not None
    assert target.port is not None
    cutting = CuttingProxy(target.hostname, target.port)
    await cutting.start()
    yield cutting
    await cutting.close()


async def open_page(browser: Browser, base_url: str) -> tuple[Page, PolicyWatch]:
    page = await browser.new_page()
    watch = PolicyWatch(page)
    await page.goto(base_url + "/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    return page, watch


async def chat_reply(base_url: str, message: str) -> str:
    """The reply POST /chat gives for `message` (the simulator's replies are deterministic)."""
    async with aiohttp.ClientSession() as http, http.post(base_url + "/chat", json={"message": message}) as response:
        body = await response.json()
    return str(body["response"])


async def send(page: Page, message: str) -> str:
    """Type `message`, press Send; the request id of the POST /chat/streams that started it."""
    await page.fill("#message", message)
    async with page.expect_response(lambda r: r.url.endswith("/chat/streams")) as created:
        await page.click("#send")
    response = await created.value
    assert response.status == 201
    return response.headers["x-request-id"]


def last_reply(page: Page) -> Locator:
    """The newest assistant message of the conversation."""
    return page.locator("#conversation .message.assistant").last


async def finished_text(page: Page) -> str:
    await expect(page.locator("#status")).to_have_attribute("data-state", "done", timeout=STREAMING_SECONDS)
    return await last_reply(page).locator(".content").text_content() or ""


async def test_the_page_streams_a_reply_from_the_chosen_model_and_shows_ttft_and_usage(
    gateway: Gateway, browser: Browser
) -> None:
    message = "Tell me about sluices\n#sim tokens=12 gap_ms=20"
    expected = await chat_reply(gateway.url, message)
    page, watch = await open_page(browser, gateway.url)
    assert await page.locator("#model").input_value() == "gpt-4o"  # the default is preselected
    await page.select_option("#model", "gpt-4o-mini")

    request_id = await send(page, message)

    assert await finished_text(page) == expected
    await expect(page.locator("#status")).to_have_text("Finished")
    await expect(last_reply(page).locator(".state")).to_have_text("finished")
    await expect(page.locator("#tokens")).to_have_text("12")
    await expect(page.locator("#usage")).to_have_text(re.compile(r"^\d+ prompt \+ 12 completion = \d+ tokens$"))
    await expect(page.locator("#ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    logged = gateway.process.wait_for_event("browser_stream_finished", request_id=request_id)
    assert logged["model"] == "gpt-4o-mini"
    assert logged["outcome"] == "completed"
    assert watch.violations == []


async def test_a_connection_dropped_mid_stream_resumes_with_no_token_lost_or_repeated(
    gateway: Gateway, browser: Browser, proxy: CuttingProxy
) -> None:
    message = "A long answer, please\n#sim tokens=40 gap_ms=30"
    page, watch = await open_page(browser, proxy.url)
    await send(page, message)
    uninterrupted = await finished_text(page)
    assert uninterrupted

    # The same message in a new conversation gets the same reply (the history seeds the simulator).
    await page.click("#clear")
    # Drop the next stream's connection in the middle of its fifth token event, and hold the
    # reconnect until the page has said so.
    proxy.cut_after(b":5\nevent: token\n", then_hold=True)
    await send(page, message)
    await expect(page.locator("#status")).to_have_text("Connection lost, resuming…", timeout=STREAMING_SECONDS)
    await expect(last_reply(page).locator(".state")).to_have_text("connection lost, resuming…")
    proxy.release()

    assert await finished_text(page) == uninterrupted
    assert proxy.cut.is_set()
    await expect(page.locator("#reconnects")).to_have_text("1")
    await expect(page.locator("#tokens")).to_have_text("40")
    await expect(page.locator("#usage")).to_have_text(re.compile(r" 40 completion "))
    assert watch.violations == []


async def test_the_stop_button_closes_the_upstream_at_once(
    gateway: Gateway, simulator: Simulator, browser: Browser
) -> None:
    page, watch = await open_page(browser, gateway.url)
    request_id = await send(page, "Go on forever\n#sim tokens=100000 gap_ms=20")
    # Tokens show while the reply is still coming.
    await expect(page.locator("#tokens")).to_have_text(re.compile(r"^([3-9]|\d{2,})$"))
    await expect(page.locator("#status")).to_have_attribute("data-state", "streaming")

    async with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
        await page.click("#stop")

    assert (await deleted.value).status == 204
    await expect(page.locator("#status")).to_have_attribute("data-state", "stopped")
    await expect(page.locator("#status")).to_have_text("Stopped by you")
    await expect(last_reply(page).locator(".state")).to_have_text("stopped by you")
    async with aiohttp.ClientSession() as http:
        record = await sim_wait(http, simulator.url, request_id, "closed")
    assert record["outcome"] == "client_aborted"
    assert record["chunks_sent"] < 100000
    logged = gateway.process.wait_for_event("browser_stream_finished", request_id=request_id)
    assert logged["error_code"] == "stream_cancelled"
    assert watch.violations == []


READ_STREAM = """
(url) => new Promise((resolve) => {
  const source = new EventSource(url);
  const tokens = [];
  let opened = 0;
  source.addEventListener("open", () => { opened += 1; });
  source.addEventListener("token", (e) => tokens.push([e.lastEventId, JSON.parse(e.data).content]));
  source.addEventListener("done", (e) => { source.close(); resolve({ tokens, opened, doneId: e.lastEventId }); });
  source.addEventListener("failed", (e) => { source.close(); resolve({ failed: e.data }); });
})
"""


async def test_a_one_step_eventsource_dropped_before_its_first_token_resumes_the_same_stream(
    gateway: Gateway, browser: Browser, proxy: CuttingProxy
) -> None:
    message = "One step\n#sim tokens=6 ttft_ms=200"
    expected = await chat_reply(gateway.url, message)
    page, _ = await open_page(browser, proxy.url)
    # End the first connection right after the line that names its stream (`id: <stream>:0`).
    proxy.cut_after(b":0\n\n")

    result = await page.evaluate(READ_STREAM, "/chat/stream?" + urlencode({"message": message}))

    assert proxy.cut.is_set()
    assert result["opened"] == 2
    stream_id = result["doneId"].rsplit(":", 1)[0]
    assert [event_id for event_id, _ in result["tokens"]] == [f"{stream_id}:{n}" for n in range(1, 7)]
    assert "".join(text for _, text in result["tokens"]) == expected


async def test_a_second_turn_carries_the_first_turn_as_history(gateway: Gateway, browser: Browser) -> None:
    page, watch = await open_page(browser, gateway.url)
    first = "First question\n#sim tokens=4"
    await send(page, first)
    first_reply = await finished_text(page)

    await page.fill("#message", "Second question\n#sim tokens=4")
    async with page.expect_request(lambda r: r.url.endswith("/chat/streams")) as created:
        await page.click("#send")
    await finished_text(page)

    body = (await created.value).post_data_json
    assert body is not None
    assert body["history"] == [{"role": "user", "content": first}, {"role": "assistant", "content": first_reply}]
    await expect(page.locator("#conversation .message")).to_have_count(4)
    await expect(page.locator("#conversation .message.user").first).to_contain_text("First question")
    assert watch.violations == []


MARKDOWN_REPLY = (
    "# Title\n\n**bold** and *slanted* and `code`\n\n- one\n- two\n\n"
    "<img src=x onerror=alert(1)><script>alert(2)</script>\n\n"
    "[a link](https://example.com/docs) and [no link](javascript:alert(3))\n\n```\n<b>not bold</b>\n```"
)


async def test_markdown_in_a_reply_is_rendered_and_html_in_it_stays_text(gateway: Gateway, browser: Browser) -> None:
    page, watch = await open_page(browser, gateway.url)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))

    await send(page, "#sim echo\n" + MARKDOWN_REPLY)  # the simulator echoes the message, 8 characters a token
    await finished_text(page)

    content = last_reply(page).locator(".content")
    await expect(content.locator("h3")).to_have_text("Title")
    await expect(content.locator("strong")).to_have_text("bold")
    await expect(content.locator("em")).to_have_text("slanted")
    await expect(content.locator("p code")).to_have_text("code")
    await expect(content.locator("li")).to_have_text(["one", "two"])
    await expect(content.locator("pre code")).to_have_text("<b>not bold</b>")
    await expect(content).to_contain_text("<img src=x onerror=alert(1)><script>alert(2)</script>")
    await expect(content.locator("img, script, b")).to_have_count(0)
    await expect(content.locator("a")).to_have_count(1)
    assert await content.locator("a").get_attribute("href") == "https://example.com/docs"
    await expect(content).to_contain_text("[no link](javascript:alert(3))")
    assert dialogs == []
    assert watch.violations == []


async def test_the_copy_button_copies_the_reply_as_written(gateway: Gateway, browser: Browser) -> None:
    context = await browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = await context.new_page()
    await page.goto(gateway.url + "/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "ready")
    await send(page, "#sim echo\n**Copy** me, `exactly`.")
    await finished_text(page)

    await last_reply(page).locator("button.copy").click()

    await expect(last_reply(page).locator("button.copy")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == "**Copy** me, `exactly`."
    await context.close()


async def test_the_badge_shows_when_the_simulated_model_answers_and_only_then(
    gateway: Gateway, browser: Browser
) -> None:
    keyed, _ = await open_page(browser, gateway.url)
    await expect(keyed.locator("#simulated-badge")).to_be_hidden()

    simulated = start_gateway()  # no key: the built-in simulated model answers
    try:
        page, watch = await open_page(browser, simulated.url)
        await expect(page.locator("#simulated-badge")).to_be_visible()
        await expect(page.locator("#simulated-badge")).to_have_text("Simulated model")
        assert watch.violations == []
    finally:
        simulated.process.stop()


RENDER = """(text) => {
  const box = document.createElement("div");
  box.append(SluiceMarkdown.render(text));
  return box.innerHTML;
}"""
LINK = 'rel="noopener noreferrer nofollow" target="_blank"'
MARKDOWN_CASES = {
    "snake_case_name and 2*3*4": "<p>snake_case_name and 2*3*4</p>",
    "*one* _two_ **three** __four__": "<p><em>one</em> <em>two</em> <strong>three</strong> <strong>four</strong></p>",
    "1. one\n2. two": "<ol><li>one</li><li>two</li></ol>",
    "* a\n+ b": "<ul><li>a</li><li>b</li></ul>",
    "###### deep": "<h6>deep</h6>",
    "> quoted **bold**": "<blockquote><p>quoted <strong>bold</strong></p></blockquote>",
    "```\nstill streaming": "<pre><code>still streaming</code></pre>",
    "**[doc](https://a.example/x)**": f'<p><strong><a href="https://a.example/x" {LINK}>doc</a></strong></p>',
    "[x](data:text/html,<b>hi</b>)": "<p>[x](data:text/html,&lt;b&gt;hi&lt;/b&gt;)</p>",
    "<b>x</b> & y": "<p>&lt;b&gt;x&lt;/b&gt; &amp; y</p>",
    "`<i>`": "<p><code>&lt;i&gt;</code></p>",
    "line one\nline two\n\nnext": "<p>line one\nline two</p><p>next</p>",
}


async def test_the_markdown_renderer_builds_the_expected_nodes_for_each_case(
    gateway: Gateway, browser: Browser
) -> None:
    page, _ = await open_page(browser, gateway.url)

    rendered = {markdown: await page.evaluate(RENDER, markdown) for markdown in MARKDOWN_CASES}

    assert rendered == MARKDOWN_CASES
