"""A real headless Chromium for the console tests: Debian's `chromium`, driven by Playwright.

Playwright's wheel carries its driver but no browser is ever downloaded: it is pointed at the
system binary (`.ci/run` installs the `chromium` package when it is missing). Without the
browser or the library the tests fail with a message saying so; they are never skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

#: The browser binary: `CALLHUB_CHROMIUM`, else `chromium` on PATH, else Debian's path.
CHROMIUM = os.environ.get("CALLHUB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: What these machines need: root (no sandbox), no GPU, and a browser that phones nowhere.
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
#: Screenshots of the console's main states, for people to look at (`.gitignore`d).
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


@contextmanager
def chromium() -> Iterator[Browser]:
    """One browser (each launch gets a fresh temporary profile); fails clearly if it cannot start."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install -y chromium`, "
                    "as .ci/run does) or set CALLHUB_CHROMIUM", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: `pip install -e '.[test]'` (never `playwright install`)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class PageErrors:
    """JavaScript errors and console errors (CSP violations among them) a page reported."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda exc: self.messages.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # A refused stream while the hub restarts is expected; anything else is a bug.
        if message.type == "error" and "net::ERR_" not in message.text and "Failed to load resource" not in message.text:
            self.messages.append(f"console: {message.text}")


def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


def horizontal_overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than its viewport (0 when the layout fits)."""
    overflow: int = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    return overflow
