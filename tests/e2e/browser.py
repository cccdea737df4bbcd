"""Headless Chromium for browser tests: Debian's ``chromium`` driven by Playwright for Python.

Playwright's own browser download is never used (``playwright install`` cannot reach its
servers here); the browser is the system one, ``/usr/bin/chromium`` (installed by
``.ci/install-chromium``) or the path in ``PAUSEPOINT_CHROMIUM``. When the browser or the
``playwright`` package is missing, the test is skipped with the reason; with
``PAUSEPOINT_REQUIRE_SERVICES=1`` (CI) it fails instead.

    from tests.e2e.browser import chromium_page

    def test_page() -> None:
        with chromium_page() as page:
            page.goto(url)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.services import required

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_DEFAULT = "/usr/bin/chromium"
DEFAULT_TIMEOUT_MS = 15_000

# Headless, no sandbox (root in a container), and no background traffic: without the
# networking flags Chromium keeps dialling out to a closed network.
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


def chromium_path() -> str:
    return os.environ.get("PAUSEPOINT_CHROMIUM") or CHROMIUM_DEFAULT


def _missing(message: str) -> NoReturn:
    if required():
        pytest.fail(message + " and PAUSEPOINT_REQUIRE_SERVICES is set")
    pytest.skip(message)


@contextmanager
def chromium_page(timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Iterator[Page]:
    """A Playwright sync ``Page`` in a new context of a fresh headless Chromium.

    The browser has its own temporary profile (Playwright's launch makes and removes it);
    page, context, browser and the Playwright driver are all closed on exit.
    """
    executable = chromium_path()
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        _missing(f"Chromium is not installed at {executable} (run .ci/install-chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"the playwright package is not importable ({exc})")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context()
            try:
                page = context.new_page()
                page.set_default_timeout(timeout_ms)
                page.set_default_navigation_timeout(timeout_ms)
                yield page
            finally:
                context.close()
        finally:
            browser.close()
