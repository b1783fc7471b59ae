"""Cluster gateway benchmark: ``serve --redis-url`` beside the same gateway without it.

Run it with::

    .venv/bin/python benchmarks/bench_cluster_gateway.py            # 100 streams, 3 repeats
    .venv/bin/python benchmarks/bench_cluster_gateway.py --quick    # 100 streams, 1 repeat

Needs ``redis-server`` on the PATH and the ``cluster`` extra; starts its own
``redis-server`` on a free port (no persistence: ``_procs.start_redis``) and
stops it at the end.

The rig and the phases are bench_gateway's (``benchmarks/_procs.py``): the stamping
simulator in its own process, one client process, and two gateways that take turns
at every repeat: ``gateway`` (limits in memory) and ``gateway-redis`` (the same
flags and ``--redis-url``: every stream takes a lease in Redis, the heartbeat
renews them, the release publishes). Both have the same limits, set high enough
never to refuse (``--max-streams 10000 --max-streams-per-key 10000``), so both do
the admission work. Phases: unpaced (the simulator sends as fast as it can) and
paced (a token every 0.1 s). Printed: the gateway's CPU per event delivered and
events/s, the medians of the repeats, and the ratio redis / memory (the issue's
target: CPU per event at most 1.1x).

``--workers 2`` beside one worker is benchmarks/bench_workers.py's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs as procs
import bench_gateway

TARGETS = ("gateway", "gateway-redis")
LIMITS = {"--max-streams": "10000", "--max-streams-per-key": "10000", "--max-waiting": "10000"}


def cluster_factory(redis_url: str) -> bench_gateway.ServerFactory:
    """Makes ``gateway`` or ``gateway-redis`` (the same, with ``--redis-url``)."""

    def factory(workdir: Path, target: str, upstream: str) -> procs.Proc:
        server = procs.gateway_proc(workdir, upstream)
        for flag, value in LIMITS.items():  # in place of GATEWAY_FLAGS' "none"
            server.args[server.args.index(flag) + 1] = value
        if target == "gateway-redis":
            server.name = target
            server.log = workdir / f"{target}.log"
            server.args += ["--redis-url", redis_url]
        return server

    return factory


def main() -> None:
    """Measure, then print the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=120.0, help="per phase, seconds")
    args = parser.parse_args()
    procs.raise_nofile()
    repeats = args.repeats or (1 if args.quick else 3)
    level = bench_gateway.LEVELS.get(args.streams) or bench_gateway.Level(
        args.streams, 100, 0.1, 30
    )
    print(
        f"bench_cluster_gateway: {level.streams} streams, {level.throughput_tokens} tokens "
        f"unpaced, {level.latency_tokens} paced every {level.interval} s; {repeats} repeat(s); "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        redis, url = procs.start_redis(tmp)
        try:
            figures = bench_gateway.measure(
                Path(tmp), TARGETS, [level], repeats, args.timeout, factory=cluster_factory(url)
            )
        finally:
            redis.terminate()
            redis.wait(10)

    medians: dict[tuple[str, str], tuple[float, float]] = {}
    print(
        f"\n{'phase':<11} {'target':<14} {'server CPU/event':>17} {'events/s':>10} "
        f"{'runs (CPU/event, us)':>22} {'failed':>6}"
    )
    for phase in ("throughput", "latency"):
        for target in TARGETS:
            mine = [f for f in figures if f.target == target and f.phase == phase]
            cpu = statistics.median(f.cpu_per_event() for f in mine)
            rate = statistics.median(f.rate for f in mine)
            medians[phase, target] = (cpu, rate)
            runs = ", ".join(f"{f.cpu_per_event():.1f}" for f in mine)
            failed = sum(f.failures for f in mine)
            print(f"{phase:<11} {target:<14} {cpu:>14.1f} us {rate:>10,.0f} {runs:>22} {failed:>6}")
    notes = [(f, note) for f in figures for note in f.notes]
    for f, note in notes:
        print(f"  failed: {f.target} {f.phase}: {note}")
    print("\nRatios gateway-redis / gateway (target: CPU/event <= 1.1x)")
    for phase, name in (("throughput", "unpaced"), ("latency", "paced")):
        (cpu_off, rate_off), (cpu_on, rate_on) = (medians[phase, t] for t in TARGETS)
        print(f"  {name:<8} CPU/event {cpu_on / cpu_off:.2f}x, events/s {rate_on / rate_off:.2f}x")
    print(f"cores: {os.cpu_count()}, load average: {procs.load_average()}")


if __name__ == "__main__":
    main()
