"""Admission cost: RedisLimiter (cluster mode) beside the in-memory FairLimiter.

Run: ``.venv/bin/python benchmarks/bench_cluster_admission.py [--quick]`` (needs
``redis-server`` on the PATH and the ``cluster`` extra). Starts its own
``redis-server`` on a free port (no persistence) and stops it at the end.

Measures acquire + release, one caller after another (each acquire waits for its
answer; the release is handed to the limiter's background task, so the next
acquire may overlap it, as a stream's end and the next stream's start do in a
server), and with several concurrent callers per limiter. Printed: acquire +
release per second and the p50 / p99 of one acquire, medians over the repeats, and
the ratio FairLimiter / RedisLimiter. One run, one machine: compare ratios, not
absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from streammgr import FairLimiter, Limiter
from streammgr.cluster import RedisLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import start_redis


async def run_callers(limiter: Limiter, callers: int, rounds: int) -> tuple[float, list[float]]:
    """``callers`` tasks each acquire + release ``rounds`` times; returns the rate
    (acquire + release per second) and each acquire's latency in seconds."""
    latencies: list[float] = []

    async def caller(index: int) -> None:
        key = f"k{index % 4}"
        for _ in range(rounds):
            started = time.perf_counter()
            permit = await limiter.acquire(key, timeout=30)
            latencies.append(time.perf_counter() - started)
            limiter.release(permit)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(callers):
            nursery.start_soon(caller, index)
    elapsed = time.perf_counter() - started
    return callers * rounds / elapsed, latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


async def measure(url: str, callers: int, rounds: int, repeats: int) -> None:
    """Print both limiters' figures for ``callers`` concurrent callers."""
    figures: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for name in ("FairLimiter", "RedisLimiter"):
        rates: list[float] = []
        p50s: list[float] = []
        p99s: list[float] = []
        for _ in range(repeats):
            if name == "FairLimiter":
                limiter: Limiter = FairLimiter(max_streams=100, max_streams_per_key=50)
                async with limiter:
                    rate, latencies = await run_callers(limiter, callers, rounds)
            else:
                async with RedisLimiter(
                    url, max_streams=100, max_streams_per_key=50, lease_ttl=3.0
                ) as limiter:
                    rate, latencies = await run_callers(limiter, callers, rounds)
            rates.append(rate)
            p50s.append(_percentile(latencies, 0.5))
            p99s.append(_percentile(latencies, 0.99))
        figures[name] = (rates, p50s, p99s)
        print(
            f"  {name:<13} {statistics.median(rates):>10,.0f} acquire+release/s   "
            f"p50 {statistics.median(p50s) * 1e3:7.3f} ms   "
            f"p99 {statistics.median(p99s) * 1e3:7.3f} ms"
        )
    fair, redis = figures["FairLimiter"], figures["RedisLimiter"]
    print(
        f"  ratio FairLimiter/RedisLimiter: "
        f"{statistics.median(fair[0]) / statistics.median(redis[0]):,.0f}x the rate"
    )


async def main(quick: bool) -> None:
    """Both limiters, one caller and then 16 concurrent callers."""
    rounds = 300 if quick else 2000
    repeats = 3 if quick else 5
    with tempfile.TemporaryDirectory() as directory:
        process, url = start_redis(directory)
        try:
            for callers in (1, 16):
                print(f"{callers} caller(s), {rounds} acquire+release in all, {repeats} repeats:")
                await measure(url, callers, rounds // callers if callers > 1 else rounds, repeats)
        finally:
            process.kill()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    trio.run(main, parser.parse_args().quick)
