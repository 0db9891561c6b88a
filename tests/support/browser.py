"""Headless Chromium for the browser tests: Debian's binary, driven by Playwright, and the page's CSP complaints."""

from __future__ import annotations

from playwright.async_api import ConsoleMessage, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class PolicyWatch:
    """Collects the browser's Content-Security-Policy complaints about the page."""

    def __init__(self, page: Page) -> None:
        self.violations: list[str] = []
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.violations.append(message.text)
