"""``streammgr top`` benchmark: what one refresh costs at 100, 1000 and 5000 streams.

Run: ``.venv/bin/python benchmarks/bench_top.py`` (or ``python3 dev.py bench``; needs
the ``top`` extra).

Printed, medians over several repeats:

- the model: one feed event applied; a poll's listing applied; the sorted rows and
  their cells (what every redraw asks of it);
- the Textual app, headless (``App.run_test``): one redraw of the table in place
  with every stream's counts changed, and the paint that follows (``pilot.pause()``).

One run, one machine: compare sizes with each other, not absolute figures.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from typing import Any

from streammgr.cli._top import TopModel
from streammgr.cli._top_app import TopApp, TopSettings
from streammgr.sse import ServerSentEvent

SIZES = (100, 1000, 5000)
REPEATS = 7


def stream(index: int, items: int) -> dict[str, Any]:
    return {
        "id": f"s-{index}",
        "key": f"tenant-{index % 50}",
        "phase": "streaming",
        "created_at": 100.0 + index * 0.001,
        "first_item_at": 100.5 + index * 0.001,
        "items": items,
        "bytes": items * 30,
        "age": 5.0 + items * 0.01,
    }


def snapshot(size: int) -> ServerSentEvent:
    streams = [stream(index, index) for index in range(size)]
    data = json.dumps({"reason": "start", "streams": streams})
    return ServerSentEvent(event="snapshot", data=data)


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:8.2f} ms"


def bench_model(size: int) -> None:
    model = TopModel("rate")
    model.apply(snapshot(size), 0.0)
    listings = [[stream(index, index + step) for index in range(size)] for step in range(REPEATS)]
    poll, rows = [], []
    for step, listing in enumerate(listings):
        started = time.perf_counter()
        model.apply_listing(listing, float(step))
        poll.append(time.perf_counter() - started)
        started = time.perf_counter()
        for row in model.rows(float(step)):
            row.cells()
        rows.append(time.perf_counter() - started)
    opened = [{**stream(size + index, 0), "phase": "waiting"} for index in range(2000)]
    events = [ServerSentEvent(event="opened", data=json.dumps(data)) for data in opened]
    started = time.perf_counter()
    for each in events:
        model.apply(each, 0.0)
    per_event = (time.perf_counter() - started) / len(events)
    print(
        f"model  {size:5d} streams: feed event {per_event * 1e6:6.1f} us, "
        f"poll {median_ms(poll)}, rows+cells {median_ms(rows)}"
    )


async def bench_app(size: int) -> None:
    with socket.socket() as sock:  # nobody listens: the app's own I/O only fails
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = TopSettings(url=f"http://127.0.0.1:{port}/admin", refresh=3600.0)
    app = TopApp(settings)
    async with app.run_test(size=(150, 40)) as pilot:
        app.model.apply(snapshot(size), time.monotonic())
        app._redraw()
        await pilot.pause()
        redraws, paints = [], []
        for step in range(1, REPEATS + 1):
            listing = [stream(index, index + step) for index in range(size)]
            app.model.apply_listing(listing, time.monotonic())
            started = time.perf_counter()
            app._redraw()
            drawn = time.perf_counter()
            await pilot.pause()
            redraws.append(drawn - started)
            paints.append(time.perf_counter() - drawn)
        await pilot.press("q")
    print(f"app    {size:5d} streams: redraw {median_ms(redraws)}, paint {median_ms(paints)}")


def main() -> None:
    for size in SIZES:
        bench_model(size)
    for size in SIZES:
        asyncio.run(bench_app(size))


if __name__ == "__main__":
    main()
