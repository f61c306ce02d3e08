"""Debian's headless chromium for tests, driven by Playwright's Python package.

Playwright's pip package ships its own driver; the browser is the system's `chromium`
(passed as executable_path), so nothing is downloaded and `playwright install` is never run.

    with Browser() as browser:           # Browser.available() says whether chromium is there
        page = browser.open(path)        # a file:// page, loaded
        page.console_errors              # console errors and uncaught exceptions, as text
        page.requests                    # every URL the page asked for, its own included
        page.evaluate("1 + 1"); page.click("th[data-key=seed]"); page.screenshot(path)
"""

import shutil
from pathlib import Path


def chromium_path():
    """The system chromium's path, or None where it is not installed."""
    return shutil.which("chromium")


class Page:
    """One loaded page and what it did: console errors and network requests."""

    def __init__(self, page):
        self._page = page
        self.console_errors = []
        self.requests = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console_errors.append(f"uncaught: {error}"))
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("requestfailed", lambda request: self.console_errors.append(
            f"request failed: {request.url} ({request.failure})"))

    def _console(self, message):
        if message.type in ("error", "assert"):
            self.console_errors.append(f"console.{message.type}: {message.text}")

    @property
    def url(self):
        return self._page.url

    def goto(self, url):
        self._page.goto(url, wait_until="load")

    def evaluate(self, expression, arg=None):
        """The value of a JavaScript expression (or of a function applied to `arg`)."""
        return self._page.evaluate(expression, arg)

    def click(self, selector):
        self._page.click(selector)

    def check(self, selector):
        self._page.check(selector)

    def uncheck(self, selector):
        self._page.uncheck(selector)

    def screenshot(self, path, full_page=True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._page.screenshot(path=str(path), full_page=full_page)

    def close(self):
        self._page.close()


class Browser:
    """A headless chromium for the life of the object (a context manager)."""

    def __init__(self, width=1280, height=900):
        from playwright.sync_api import sync_playwright

        executable = chromium_path()
        if executable is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=executable, headless=True)
        except Exception:
            self._playwright.stop()
            raise
        self._viewport = {"width": width, "height": height}

    @staticmethod
    def available():
        return chromium_path() is not None

    def open(self, path_or_url):
        """A new page showing a local file (a path) or a URL; waits for its load event."""
        url = path_or_url if "://" in str(path_or_url) else Path(path_or_url).resolve().as_uri()
        page = Page(self._browser.new_page(viewport=self._viewport))
        page.goto(url)
        return page

    def close(self):
        self._browser.close()
        self._playwright.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
