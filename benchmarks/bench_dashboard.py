"""The admin dashboard (``GET /admin/``) in Chromium: first render and one update, by size.

Run: ``.venv/bin/python benchmarks/bench_dashboard.py`` (needs the ``dev`` extra's
playwright and Chromium at /usr/bin/chromium, or ``STREAMMGR_CHROMIUM``).

The inspection API is served on loopback by a Trio thread over a manager holding N
streams (``--sizes``, 1,000 and 10,000 by default; producers that wait, so the server is
idle); headless Chromium, driven by Playwright's sync API on the main thread, opens the
dashboard. Printed, medians of ``--repeats`` runs, the sizes taking turns:

- **first render**: from the navigation's start to the end of the frame that drew the
  feed's snapshot (the page's own ``performance.now()``, kept in the table's
  ``data-first-render-ms``), and as seen from here (``goto`` to the row count shown);
- **update**: one stream opened on the server, then: from the arrival of its ``opened``
  event to the end of the frame that drew it (the page's own clock,
  ``data-last-apply-ms``), and from the ``open`` here to the row count shown (this side
  sees it through Playwright's polling, once a frame: up to ~16 ms more).

One run, one machine: compare sizes with each other, not absolute figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from typing import Any

import trio
import trio.lowlevel

from streammgr import StreamManager, StreamSender
from streammgr.server import admin_app, serve

CHROMIUM = os.environ.get("STREAMMGR_CHROMIUM", "/usr/bin/chromium")
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
TIMEOUT_MS = 60_000


async def waiting(send: StreamSender[str], done: trio.Event) -> None:
    """No item until ``done``: held streams that cost no CPU."""
    await done.wait()


class Service:
    """A manager with ``size`` streams and its inspection API, on a Trio thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.url = ""
        self.ready = threading.Event()
        self.token: trio.lowlevel.TrioToken | None = None
        self._stop = trio.Event()
        self._done = trio.Event()
        self._manager: StreamManager | None = None
        self._nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(timeout=120):
            raise RuntimeError("the service did not start within 120 s")

    def stop(self) -> None:
        assert self.token is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(timeout=60)

    def open_one(self, key: str) -> None:
        """Open one more stream (from the main thread); returns once it is admitted."""
        assert self.token is not None
        trio.from_thread.run(self._open, key, trio_token=self.token)

    async def _open(self, key: str) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._hold, key)

    async def _hold(self, key: str, *, task_status: trio.TaskStatus[None]) -> None:
        assert self._manager is not None
        async with self._manager.open(waiting, self._done, key=key, labels={"n": key}) as stream:
            task_status.started()
            async for _ in stream:
                pass

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        async with StreamManager() as manager, trio.open_nursery() as nursery:
            self._manager, self._nursery = manager, nursery
            for index in range(self.size):
                await nursery.start(self._hold, f"tenant-{index % 100}")
            (self.url,) = await nursery.start(
                lambda task_status: serve(
                    admin_app(manager),
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=self._stop.wait,
                    task_status=task_status,
                )
            )
            self.ready.set()
            await self._stop.wait()
            self._done.set()


def shown(page: Any, rows: int) -> None:
    page.wait_for_function(
        "n => document.getElementById('row-count').textContent === `(${n} of ${n})`",
        arg=rows,
        timeout=TIMEOUT_MS,
        polling="raf",
    )


def measure(browser: Any, service: Service, run: int) -> dict[str, float]:
    """One first render and one update at ``service.size``."""
    context = browser.new_context()
    try:
        page = context.new_page()
        started = time.perf_counter()
        page.goto(f"{service.url}/admin/")
        rows = service.size + run  # each run opened one more
        shown(page, rows)
        seen_first = time.perf_counter() - started
        first = float(page.eval_on_selector("#streams", "e => e.dataset.firstRenderMs"))
        applied = page.eval_on_selector("#streams", "e => Number(e.dataset.applied)")
        started = time.perf_counter()
        service.open_one(f"extra-{run}")
        shown(page, rows + 1)
        seen_update = time.perf_counter() - started
        page.wait_for_function(
            "n => Number(document.getElementById('streams').dataset.applied) > n",
            arg=applied,
            timeout=TIMEOUT_MS,
        )
        update = float(page.eval_on_selector("#streams", "e => e.dataset.lastApplyMs"))
        in_dom = page.locator("#streams .row").count()
        return {
            "first": first,
            "seen_first": seen_first * 1e3,
            "update": update,
            "seen_update": seen_update * 1e3,
            "rows_in_dom": in_dom,
        }
    finally:
        context.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    services = [Service(size) for size in options.sizes]
    for service in services:
        service.start()
    samples: dict[int, list[dict[str, float]]] = {size: [] for size in options.sizes}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for run in range(options.repeats):
                    for service in services:  # the sizes take turns
                        samples[service.size].append(measure(browser, service, run))
            finally:
                browser.close()
    finally:
        for service in services:
            service.stop()
    print(f"dashboard, medians of {options.repeats} (ms; the page's clock, then as seen here)")
    for size, runs in samples.items():

        def median(name: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(run[name] for run in runs)

        print(
            f"{size:6d} streams: first render {median('first'):7.1f} "
            f"(seen {median('seen_first'):7.1f}), update {median('update'):6.2f} "
            f"(seen {median('seen_update'):6.1f}), rows in the DOM {median('rows_in_dom'):.0f}"
        )


if __name__ == "__main__":
    main()
