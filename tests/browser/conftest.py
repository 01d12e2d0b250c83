"""Fixtures for the real-browser UI tests: Debian chromium through playwright (never `playwright install`).

Browser tests are marked `browser` and skip with a reason when /usr/bin/chromium or playwright is missing.
"""
from __future__ import annotations

import pytest

from tests.browser.live import ARGS, CHROMIUM, skip_reason


@pytest.fixture(scope="session")
def browser():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page_errors():
    """Collects dialogs, page errors and console errors of pages registered with `watch(page)`."""
    events: list[str] = []

    def watch(page):
        def on_dialog(d):
            events.append(f"dialog:{d.type}:{d.message}")
            d.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda e: events.append(f"pageerror:{e}"))
        page.on("console", lambda m: events.append(f"console-{m.type}:{m.text}") if m.type == "error" else None)
        return page

    watch.events = events
    return watch
