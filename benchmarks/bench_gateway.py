"""Gateway benchmark: streammgr's gateway against the simulator read directly and a relay floor.

Run it with::

    .venv/bin/python benchmarks/bench_gateway.py            # 1, 100, 1,000 streams
    .venv/bin/python benchmarks/bench_gateway.py --quick    # 1 and 100 streams, shorter
    .venv/bin/python benchmarks/bench_gateway.py --full     # longer streams, 3 repeats

Every party runs in its own process (``benchmarks/_procs.py``): the simulator
(streammgr's ``SimulatedUpstream`` on hypercorn's trio worker, stamping every event
it sends with ``time.monotonic()``), the proxy under test, and one client process
(raw Trio sockets, HTTP/1.1, a tiny chunked/SSE reader) that records when each
``data:`` event arrives. Targets:

- ``direct``: the client reads the simulator itself;
- ``relay``: the relay floor: a minimal hypercorn-on-Trio ASGI app that reads the
  same upstream with httpx and forwards each upstream read in one ``send``: no
  manager, no parsing; the least any proxy on this stack can cost;
- ``gateway``: ``python -m streammgr serve --upstream-url http://127.0.0.1:PORT/v1``
  with no limits (``--max-streams none`` ...), logging JSON lines at INFO as it runs
  in production (two lines a stream);
- ``gateway-lib`` (instead of ``gateway`` at more than 100 streams; ``--targets``
  runs any of them at every level): the same service built in-process with an
  httpx pool without a connection limit: the CLI's httpx client keeps httpx's
  default of 100 connections, so past 100 streams the CLI gateway queues upstream
  requests (see docs/performance.md).

Every server is started at once (one simulator behind all of them), and at each
level the targets take turns, so that a slow spell of the machine does not fall
on one of them only; an idle server costs nothing.

Two phases at each number of concurrent streams:

1. **throughput**: the simulator sends as fast as it can (``token_latency`` 0);
   events/s is counted from the first event's arrival to the last's, and the
   "concurrency" column says how many streams were in flight on average;
2. **latency**: the simulator paces every stream (``token_latency`` = the interval,
   no jitter), at a total rate this machine sustains (1 stream every 10 ms, 100
   every 100 ms, 1,000 every 1 s).

The client connects 64 streams at a time, and a stream holds its connect slot
until its response's headers arrive (the first chunk comes at once, so the
headers do too): the servers' listen backlog is hypercorn's default of 100, and
a burst of connections the server has not accepted yet beyond it is dropped by
the kernel (the client's request is reset about a minute later; that happened to
every server here at 1,000 streams with slots released at the request's send).

Server CPU per event is the CPU time (``/proc/<pid>/stat`` utime + stime) the
process under test spent during the phase, over the ``data:`` events delivered
(for ``direct``, the simulator's; for the proxies, the proxy's own, the
simulator's shown beside it). The per-stream costs (accepting, the request, the
upstream connection) are in it, spread over the stream's events.

**Added latency, how**: the simulator stamps each event with ``time.monotonic()``
just before its ``send``; the client stamps its arrival with the same clock (one
``CLOCK_MONOTONIC`` for every process of the machine), so each event's delivery
delay is ``arrival - sent``, paired by the stream's seed and the event's index. The
direct run's delays are what the simulator's own hypercorn, the loopback and the
client cost; a proxy's added latency at a percentile is its delay at that
percentile minus the direct run's at the same percentile, the same number of
streams and the same pacing. (A difference of percentiles, not a percentile of
differences: the two runs are separate, so their events cannot be paired.)
"Steady" percentiles leave out the events that arrived before every stream of the
phase had its first event: while streams still open, their admissions compete with
the first events of the others, which says what opening costs, not what forwarding
adds.

The machine is shared and has two cores for three busy processes: compare ratios
and report the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs as procs

TARGETS = ("direct", "relay", "gateway", "gateway-lib", "litellm")


@dataclass(frozen=True)
class Level:
    """One number of concurrent streams and the size of its two phases."""

    streams: int
    throughput_tokens: int  # tokens per stream, unpaced
    interval: float  # latency phase: seconds between two tokens of a stream
    latency_tokens: int


LEVELS = {
    1: Level(1, 5000, 0.01, 300),
    100: Level(100, 100, 0.1, 30),
    1000: Level(1000, 20, 1.0, 8),
}
FULL = {
    1: Level(1, 20000, 0.01, 1000),
    100: Level(100, 400, 0.1, 100),
    1000: Level(1000, 60, 1.0, 20),
}


@dataclass
class Figures:
    """One phase of one target at one level."""

    target: str
    streams: int
    phase: str
    events: int = 0
    failures: int = 0
    window: float = 0.0  # seconds from the first arrival to the last
    server_cpu: float = 0.0
    upstream_cpu: float = 0.0
    concurrency: float = 0.0
    reads: int = 0  # client reads that completed events
    delays: list[float] = field(default_factory=list)  # arrival - sent, seconds
    # The delays of events that arrived once every stream had its first event: the
    # steady state, without the streams' openings competing with the first events.
    steady: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.window if self.window > 0 else float("nan")

    def cpu_per_event(self, which: str = "server") -> float:
        """CPU microseconds per event delivered."""
        cpu = self.server_cpu if which == "server" else self.upstream_cpu
        return cpu / self.events * 1e6 if self.events else float("nan")

    def delay(self, fraction: float) -> float:
        """The delivery delay at a percentile, milliseconds."""
        return procs.percentile(self.delays, fraction) * 1e3

    def steady_delay(self, fraction: float) -> float:
        """The steady state's delivery delay at a percentile, milliseconds."""
        return procs.percentile(self.steady, fraction) * 1e3 if self.steady else float("nan")


class Runner:
    """Runs the phases of one target against its already started processes."""

    def __init__(
        self,
        workdir: Path,
        sim: procs.Proc,
        server: procs.Proc,
        target: str,
        timeout: float,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.headers = headers
        self.workdir = workdir
        self.sim = sim
        self.server = server
        self.target = target
        self.timeout = timeout
        self.seed = 0

    def run(self, streams: int, simulate: dict[str, float | int], phase: str) -> Figures:
        """Run ``streams`` streams with this pacing; measure."""
        self.seed += 1_000_000
        spec = procs.ClientSpec(
            port=self.server.port,
            streams=streams,
            first_seed=self.seed,
            simulate=simulate,
            headers=self.headers,
            parallel_until_headers=True,
        )
        procs.http_get_json(self.sim.port, "/bench/stamps")  # forget the last run's
        cpu_server, cpu_sim = self.server.cpu(), self.sim.cpu()
        results = procs.start_clients(self.workdir, [spec], f"{self.target}-{phase}").wait(
            self.timeout
        )
        figures = Figures(self.target, streams, phase)
        figures.server_cpu = self.server.cpu() - cpu_server
        if self.server is not self.sim:
            figures.upstream_cpu = self.sim.cpu() - cpu_sim
        stamps: dict[str, list[float]] = procs.http_get_json(self.sim.port, "/bench/stamps")
        expected = int(simulate["tokens"]) + 3  # role, tokens, finish, [DONE]
        first, last, busy = float("inf"), 0.0, 0.0
        paired: list[tuple[float, float]] = []  # (arrival, delay)
        for result in results:
            arrivals = result.arrivals
            figures.events += len(arrivals)
            figures.reads += result.reads
            if result.status != 200 or not result.done or len(arrivals) != expected:
                figures.failures += 1
                if len(figures.notes) < 3:
                    figures.notes.append(
                        f"status {result.status}, {len(arrivals)}/{expected} events, "
                        f"done={result.done}, {result.failure or ''}".rstrip(", ")
                    )
            if arrivals:
                first, last = min(first, arrivals[0]), max(last, arrivals[-1])
                busy += arrivals[-1] - arrivals[0]
                sent = stamps.get(str(result.seed), [])
                paired += [(a, a - s) for a, s in zip(arrivals, sent, strict=False)]
        figures.delays = [delay for _, delay in paired]
        started = max((r.arrivals[0] for r in results if r.arrivals), default=float("inf"))
        figures.steady = [delay for arrival, delay in paired if arrival > started]
        figures.window = max(0.0, last - first)
        figures.concurrency = busy / figures.window if figures.window else 0.0
        return figures

    def throughput(self, level: Level) -> Figures:
        """The unpaced phase."""
        simulate: dict[str, float | int] = {
            "tokens": level.throughput_tokens,
            "first_token_latency": 0,
            "token_latency": 0,
        }
        return self.run(level.streams, simulate, "throughput")

    def latency(self, level: Level) -> Figures:
        """The paced phase."""
        simulate: dict[str, float | int] = {
            "tokens": level.latency_tokens,
            "first_token_latency": 0,
            "token_latency": level.interval,
        }
        return self.run(level.streams, simulate, "latency")


ServerFactory = Callable[[Path, str, str], procs.Proc]
"""Makes the process of a target (not started): ``(workdir, target, upstream_url)``."""


def start_server(workdir: Path, target: str, upstream: str) -> procs.Proc:
    """The relay floor or the gateway in front of ``upstream`` (not started)."""
    if target == "relay":
        return procs.relay_proc(workdir, upstream)
    return procs.gateway_proc(workdir, upstream, library=target == "gateway-lib")


def measure(
    workdir: Path,
    targets: Sequence[str],
    levels: Sequence[Level],
    repeats: int,
    timeout: float,
    factory: ServerFactory = start_server,
    headers: Callable[[str], tuple[tuple[str, str], ...]] = lambda target: (),
    skip: Callable[[str, Level], bool] | None = None,
) -> list[Figures]:
    """Start one simulator and every target's server, warm each up, then run every
    level's phases with the targets taking turns (so that a slow spell of the
    machine does not fall on one of them only), except those ``skip`` leaves out.
    Idle servers cost nothing: only the one under test is busy."""
    sim = procs.sim_proc(workdir).start()
    upstream = f"http://127.0.0.1:{sim.port}/v1"
    servers: list[procs.Proc] = []
    try:
        runners: list[Runner] = []
        for target in targets:
            server = sim
            if target != "direct":
                server = factory(workdir, target, upstream).start()
                servers.append(server)
            runner = Runner(workdir, sim, server, target, timeout, headers(target))
            runner.run(5, {"tokens": 20, "first_token_latency": 0, "token_latency": 0}, "warm")
            runners.append(runner)
        figures: list[Figures] = []
        for level in levels:
            active = [r for r in runners if skip is None or not skip(r.target, level)]
            for _ in range(repeats):
                figures += [runner.throughput(level) for runner in active]
                figures += [runner.latency(level) for runner in active]
            print(f"  {level.streams} streams: done", flush=True)
        return figures
    finally:
        for server in servers:
            server.stop()
        sim.stop()


def _median_figures(group: list[Figures]) -> Figures:
    """The repeat whose server CPU per event is the median (repeats > 1)."""
    ordered = sorted(group, key=lambda f: f.cpu_per_event())
    return ordered[len(ordered) // 2]


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"  # NaN: not measured


def report(figures: list[Figures], levels: Sequence[Level]) -> None:
    """Print the two tables and the ratios."""
    chosen: dict[tuple[str, int, str], Figures] = {}
    for key in {(f.target, f.streams, f.phase) for f in figures}:
        chosen[key] = _median_figures([f for f in figures if (f.target, f.streams, f.phase) == key])
    targets = [t for t in TARGETS if any(f.target == t for f in figures)]

    print("\nThroughput: the simulator unpaced (token_latency 0)\n")
    print(
        f"{'streams':>7} {'target':<12} {'events/s':>10} {'server CPU/event':>17} "
        f"{'upstream CPU/event':>19} {'concurrency':>11} {'events/read':>11} {'failed':>6}"
    )
    for level in levels:
        for target in targets:
            f = chosen.get((target, level.streams, "throughput"))
            if f is None:
                continue
            print(
                f"{level.streams:>7} {target:<12} {_fmt(f.rate):>10} "
                f"{_fmt(f.cpu_per_event(), 1) + ' us':>17} "
                f"{(_fmt(f.cpu_per_event('upstream'), 1) + ' us') if f.upstream_cpu else '':>19} "
                f"{f.concurrency:>11.0f} {f.events / max(1, f.reads):>11.2f} {f.failures:>6}"
            )
    print("\nLatency: every stream paced (interval between tokens as shown)\n")
    print(
        f"{'streams':>7} {'target':<12} {'interval':>8} {'events/s':>9} "
        f"{'server CPU/event':>17} {'delay p50':>9} {'p99':>8} {'added p50':>9} "
        f"{'added p99':>9} {'steady added p99':>16} {'failed':>6}"
    )
    for level in levels:
        direct = chosen.get(("direct", level.streams, "latency"))
        for target in targets:
            f = chosen.get((target, level.streams, "latency"))
            if f is None:
                continue
            added50 = added99 = steady99 = float("nan")
            if direct is not None and target != "direct":
                added50 = f.delay(0.5) - direct.delay(0.5)
                added99 = f.delay(0.99) - direct.delay(0.99)
                steady99 = f.steady_delay(0.99) - direct.steady_delay(0.99)
            print(
                f"{level.streams:>7} {target:<12} {level.interval * 1e3:>6.0f}ms "
                f"{_fmt(f.rate):>9} {_fmt(f.cpu_per_event(), 1) + ' us':>17} "
                f"{_fmt(f.delay(0.5), 2):>7}ms {_fmt(f.delay(0.99), 2):>6}ms "
                f"{_fmt(added50, 2):>7}ms {_fmt(added99, 2):>7}ms {_fmt(steady99, 2):>14}ms "
                f"{f.failures:>6}"
            )
    notes = [(f, note) for f in figures for note in f.notes]
    if notes:
        print("\nFailed streams (first few per phase):")
        for f, note in notes:
            print(f"  {f.target} {f.streams} streams {f.phase}: {note}")

    print("\nRatios (gateway / relay floor; targets: CPU/event <= 1.5x, added p99 < 5 ms at 100)")
    for level in levels:
        relay_t = chosen.get(("relay", level.streams, "throughput"))
        relay_l = chosen.get(("relay", level.streams, "latency"))
        direct_l = chosen.get(("direct", level.streams, "latency"))
        for target in ("gateway", "gateway-lib", "litellm"):
            gw_t = chosen.get((target, level.streams, "throughput"))
            gw_l = chosen.get((target, level.streams, "latency"))
            if gw_t is None or gw_l is None or relay_t is None or relay_l is None:
                continue
            p99 = "-"
            if direct_l is not None:
                p99 = _fmt(gw_l.delay(0.99) - direct_l.delay(0.99), 2) + " ms"
                p99 += f" (relay {_fmt(relay_l.delay(0.99) - direct_l.delay(0.99), 2)} ms)"
                steady = gw_l.steady_delay(0.99) - direct_l.steady_delay(0.99)
                relay_steady = relay_l.steady_delay(0.99) - direct_l.steady_delay(0.99)
                p99 += f", steady state {_fmt(steady, 2)} ms (relay {_fmt(relay_steady, 2)} ms)"
            print(
                f"  {level.streams:>5} streams, {target} / relay: CPU/event "
                f"{gw_l.cpu_per_event() / relay_l.cpu_per_event():.2f}x paced, "
                f"{gw_t.cpu_per_event() / relay_t.cpu_per_event():.2f}x unpaced; "
                f"events/s unpaced {gw_t.rate / relay_t.rate:.2f}x; added p99 {p99}"
            )


def main() -> None:
    """Parse the flags, run every target in turn, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default=None, help="comma-separated: 1,100,1000")
    parser.add_argument("--targets", default=None, help=f"comma-separated, of {TARGETS}")
    parser.add_argument("--quick", action="store_true", help="1 and 100 streams only")
    parser.add_argument("--full", action="store_true", help="longer streams, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    args = parser.parse_args()
    table = FULL if args.full else LEVELS
    counts = [1, 100] if args.quick else [1, 100, 1000]
    if args.streams:
        counts = [int(part) for part in args.streams.split(",")]
    levels = [table.get(n, Level(n, max(10, 20000 // n), max(0.01, n / 1000), 10)) for n in counts]
    repeats = args.repeats or (3 if args.full else 1)
    skip: Callable[[str, Level], bool] | None = None
    if args.targets:
        targets = args.targets.split(",")
    else:
        targets = ["direct", "relay", "gateway"]
        if max(counts) > 100:
            targets.append("gateway-lib")

        def skip(target: str, level: Level) -> bool:
            # The CLI's httpx pool holds 100 upstream connections: past 100 streams
            # its figures measure the queue for them (--targets to run it anyway).
            if target == "gateway":
                return level.streams > 100
            return target == "gateway-lib" and level.streams <= 100

    procs.raise_nofile()
    print(
        f"bench_gateway: {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; load average {procs.load_average()}"
    )
    print(f"streams {counts}, targets {targets}, repeats {repeats}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        figures = measure(Path(tmp), targets, levels, repeats, args.timeout, skip=skip)
    report(figures, levels)
    print(
        f"\nload average after: {procs.load_average()}; "
        f"{time.monotonic() - started:.0f}s in all; "
        f"median server CPU/event of every phase: "
        f"{statistics.median(f.cpu_per_event() for f in figures if f.events):.1f} us"
    )


if __name__ == "__main__":
    main()
