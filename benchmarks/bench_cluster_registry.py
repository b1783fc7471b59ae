"""The cluster registry's cost: one instance publishing its snapshot of N streams.

Run: ``.venv/bin/python benchmarks/bench_cluster_registry.py [--quick]`` (needs
``redis-server`` on the PATH and the ``cluster`` extra; starts its own, as
``bench_cluster_admission.py`` does).

For 100 and 1,000 streams in flight (producers that sleep: nothing else runs),
measures the building of one snapshot (``snapshot_json``), one refresh (build +
the script's round trip), the snapshot's size, and the process CPU the
registry costs per second of wall time while it publishes every second (CPU of
the process over a window, with the registry's refreshes against without). One run,
one machine: the figures are for this machine under its current load.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from streammgr import StreamManager
from streammgr.cluster import ClusterRegistry, RedisLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import start_redis


async def sleeper() -> AsyncIterator[str]:
    await trio.sleep(3600)
    yield "never"


async def measure(url: str, streams: int, window: float, repeats: int) -> None:
    limiter = RedisLimiter(url, instance_id=f"bench-{streams}")
    manager = StreamManager(limiter=limiter)
    registry = ClusterRegistry(manager, limiter.connection, ttl=3.0, interval=1.0)
    async with limiter, manager, contextlib.AsyncExitStack() as stack:
        for index in range(streams):
            await stack.enter_async_context(manager.open(sleeper, key=f"k{index % 10}"))
        build, refresh = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            text = registry.snapshot_json()
            build.append(time.perf_counter() - started)
        # Idle CPU over the window, without the registry.
        cpu = time.process_time()
        await trio.sleep(window)
        idle = (time.process_time() - cpu) / window
        async with registry:
            for _ in range(repeats):
                started = time.perf_counter()
                await registry.refresh()
                refresh.append(time.perf_counter() - started)
            cpu = time.process_time()
            await trio.sleep(window)
            busy = (time.process_time() - cpu) / window
        print(
            f"{streams:>5} streams: snapshot {len(text) / 1024:.0f} KiB, build "
            f"{statistics.median(build) * 1e3:.2f} ms, refresh (build + round trip) "
            f"{statistics.median(refresh) * 1e3:.2f} ms (medians of {repeats}); "
            f"process CPU {idle * 100:.2f}% without the registry, {busy * 100:.2f}% "
            f"publishing every 1 s"
        )


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        process, url = start_redis(directory)
        try:
            for streams in (100, 1000):
                await measure(url, streams, 3.0 if quick else 10.0, 5 if quick else 20)
        finally:
            process.kill()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows")
    trio.run(main, parser.parse_args().quick)
