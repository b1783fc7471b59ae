"""Workers benchmark: ``streammgr serve --workers 2`` beside one worker, events/s.

Run it with::

    .venv/bin/python benchmarks/bench_workers.py            # 200 streams, 3 repeats (~1 minute)
    .venv/bin/python benchmarks/bench_workers.py --quick    # 100 streams, 1 repeat
    .venv/bin/python benchmarks/bench_workers.py --redis-url redis://127.0.0.1:6379/0

The rig is bench_gateway's (``benchmarks/_procs.py``): the stamping simulator in its
own process, the gateway under test (``python -m streammgr serve`` with no limits,
JSON logs at INFO), and one client process; the targets take turns at every repeat.
The phase is bench_gateway's throughput phase: the simulator sends as fast as it
can, and events/s is counted from the first event's arrival to the last's. Each
figure printed is the median of the repeats.

``--workers`` above 1 needs ``--redis-url``: without the flag the script starts its
own ``redis-server`` on a free port (Debian's package), which the workers share
their limits through (none is set here: admission costs two Redis round trips per
stream, which ``bench_cluster_admission.py`` measures alone).

On this 2-core machine the simulator and the client compete with the workers for
the cores: the ratio says what a second worker buys when the machine is shared,
not what it buys on a machine whose cores are the gateway's alone (the issue's aim
of ~1.8x). Compare ratios and report the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs as procs
import bench_gateway


def workers_factory(redis_url: str) -> bench_gateway.ServerFactory:
    """Makes ``gateway`` (one process) or ``workers-N`` (N worker processes)."""

    def factory(workdir: Path, target: str, upstream: str) -> procs.Proc:
        server = procs.gateway_proc(workdir, upstream)
        if target.startswith("workers-"):
            server.name = target
            server.log = workdir / f"{target}.log"
            server.args += ["--workers", target.removeprefix("workers-"), "--redis-url", redis_url]
        return server

    return factory


def streams_by_worker(log: Path) -> dict[int, int]:
    """How many streams each worker closed, from the JSON log they share."""
    counts: dict[int, int] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"stream.closed"' in line:
            pid = json.loads(line).get("pid")
            if isinstance(pid, int):
                counts[pid] = counts.get(pid, 0) + 1
    return counts


def main() -> None:
    """Measure, then print the medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 streams, 1 repeat")
    parser.add_argument("--streams", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="tokens per stream")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--redis-url", default=None, help="passed to serve --redis-url")
    parser.add_argument("--timeout", type=float, default=120.0, help="per phase, seconds")
    args = parser.parse_args()
    procs.raise_nofile()
    streams = args.streams or (100 if args.quick else 200)
    tokens = args.tokens or 100
    repeats = args.repeats or (1 if args.quick else 3)
    level = bench_gateway.Level(streams, tokens, 0.1, 1)
    workers = f"workers-{args.workers}"
    targets = ["gateway", workers]
    print(f"{streams} streams x {tokens} tokens, unpaced, {repeats} repeat(s)")
    figures: list[bench_gateway.Figures] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis = None
        if args.redis_url is None:
            redis, args.redis_url = procs.start_redis(tmp)
            print(f"--redis-url not given: a redis-server of its own at {args.redis_url}")
        factory = workers_factory(args.redis_url)
        sim = procs.sim_proc(Path(tmp)).start()
        upstream = f"http://127.0.0.1:{sim.port}/v1"
        servers: list[procs.Proc] = []
        try:
            runners = []
            for target in targets:
                server = factory(Path(tmp), target, upstream).start()
                servers.append(server)
                runner = bench_gateway.Runner(Path(tmp), sim, server, target, args.timeout)
                warm: dict[str, float | int] = {
                    "tokens": 20,
                    "first_token_latency": 0,
                    "token_latency": 0,
                }
                runner.run(20, warm, "warm")  # every worker imports, connects, warms up
                runners.append(runner)
            for _ in range(repeats):
                figures += [runner.throughput(level) for runner in runners]
        finally:
            for server in servers:
                server.stop()
            sim.stop()
            if redis is not None:
                redis.kill()
                redis.wait()
        shares = streams_by_worker(Path(tmp) / f"{workers}.log")
    rates: dict[str, float] = {}
    print(f"\n{'target':<12} {'events/s (median)':>18} {'runs':>30} {'failed':>6}")
    for target in targets:
        mine = [f for f in figures if f.target == target]
        rates[target] = statistics.median(f.rate for f in mine)
        runs = ", ".join(f"{f.rate:,.0f}" for f in mine)
        failed = sum(f.failures for f in mine)
        print(f"{target:<12} {rates[target]:>18,.0f} {runs:>30} {failed:>6}")
    print(f"\n{workers} / gateway: {rates[workers] / rates['gateway']:.2f}x")
    print(f"streams each worker served (by pid): {shares}")
    print(f"cores: {os.cpu_count()}, load average: {procs.load_average()}")


if __name__ == "__main__":
    main()
