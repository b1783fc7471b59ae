"""A real Chromium for the browser tests: Playwright's sync API on a thread of its own.

pytest-playwright's fixtures fail under ``filterwarnings = error`` and cannot run beside a
Trio test, so a small fixture does the job: one Chromium for the whole session (Debian's
``/usr/bin/chromium``, installed by ``python3 dev.py test`` when root), driven from one
thread; a Trio test hands it callables with ``await browser.run(fn)``, each of which gets the
Playwright ``Browser`` and runs on that thread (Playwright's sync objects belong to the thread
that made them). The Trio test goes on meanwhile: the servers it runs keep serving.

    async def test_page(chromium: Chromium) -> None:
        def visit(browser: Browser) -> str:
            with page_of(browser) as page:
                page.goto(url)
                return page.title()
        assert await chromium.run(visit) == "streammgr"
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from starlette.applications import Starlette

from streammgr.server import chat_page_routes
from tests.server_helpers import Server, missing_server

T = TypeVar("T")

CHROMIUM = os.environ.get("STREAMMGR_CHROMIUM", "/usr/bin/chromium")
# What the machine needs (root, no screen, a closed network): without the background
# networking flags Chromium's own connections are refused, many at a time.
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
# Where tests keep screenshots (a test artefact CI may collect).
ARTEFACTS = Path(os.environ.get("STREAMMGR_TEST_ARTEFACTS", Path(tempfile.gettempdir())))


class Chromium:
    """One headless Chromium driven by Playwright on a dedicated thread."""

    def __init__(self) -> None:
        self._calls: queue.Queue[
            tuple[Callable[[Any], Any], concurrent.futures.Future[Any]] | None
        ] = queue.Queue()
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="playwright", daemon=True)

    def start(self) -> None:
        """Launch the browser; raise what Playwright raised if it could not."""
        self._thread.start()
        self._started.result(timeout=60)

    def stop(self) -> None:
        """Close the browser and end its thread."""
        self._calls.put(None)
        self._thread.join(timeout=30)

    async def run(self, call: Callable[[Any], T]) -> T:
        """Run ``call(browser)`` on the Playwright thread; its result or its exception.

        A cancelled test abandons the wait (the call still ends on its own thread).
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((call, future))
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def _main(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            manager = sync_playwright().start()
            browser = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            while (item := self._calls.get()) is not None:
                call, future = item
                try:
                    future.set_result(call(browser))
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            browser.close()
            manager.stop()


@contextlib.contextmanager
def page_of(browser: Any, **context_options: Any) -> Iterator[Any]:
    """A fresh browser context (its own storage) and a page in it; both closed after."""
    context = browser.new_context(**context_options)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """The session's Chromium (skipped without it locally, a failure under CI)."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing_server(
            f"Chromium not found at {CHROMIUM}: the browser tests need it "
            "(Debian: sudo apt-get install chromium; python3 dev.py test does it as root)"
        )
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing_server("playwright is not installed: pip install -e '.[dev]'")
    browser = Chromium()
    try:
        # Inside the try: a launch that outlasts start()'s wait is still stopped.
        browser.start()
        yield browser
    finally:
        browser.stop()


@contextlib.asynccontextmanager
async def chat_page_origin(nursery: trio.Nursery) -> AsyncIterator[Server]:
    """A server of the chat page alone, on loopback: an origin of its own (a gateway is
    another), whose pages may import the SSE parser as ``chat/sse.js``."""
    server = await Server().start(nursery, Starlette(routes=chat_page_routes()))
    try:
        yield server
    finally:
        server.stop.set()
