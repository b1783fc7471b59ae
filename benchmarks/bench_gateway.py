"""Gateway benchmark: streammgr's gateway against the simulator read directly, a relay floor,
a FastAPI relay and nginx.

Run it with::

    .venv/bin/python benchmarks/bench_gateway.py            # 1, 100, 1,000 streams
    .venv/bin/python benchmarks/bench_gateway.py --quick    # 1 and 100 streams, shorter
    .venv/bin/python benchmarks/bench_gateway.py --full     # longer streams, 3 repeats
    .venv/bin/python benchmarks/bench_gateway.py --streams 100,1000 --repeats 3  # #15's levels

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
- ``fastapi``: the relay a user writes by hand on the asyncio stack
  (``benchmarks/_fastapi_relay.py``): a FastAPI route returning a
  ``StreamingResponse`` over httpx's ``client.stream(...).aiter_raw()``, on uvicorn
  with uvloop (the ``bench`` extra);
- ``nginx``: Debian's nginx, one worker, ``proxy_buffering off`` (left out, with a
  line saying so, where nginx is not installed); its CPU and RSS are the master's
  and the worker's together;
- ``gateway-lib`` (only with ``--targets``): the same service as ``gateway`` built
  in-process, without its JSON logs. (The CLI's upstream pool is sized to
  ``--max-streams``, unbounded here, so ``gateway`` runs at every level.)

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

**Per-stream and per-event costs**: each phase runs twice per repeat, with streams
of N tokens and of ``--long`` (4) times N. The same streams, so the CPU of the two
runs is ``a * streams + b * events`` with the same ``a`` (accepting, the request,
the upstream request, the headers, the logs: the CPU per stream) and ``b`` (the
CPU per event): two equations, solved per repeat for every target. Paced, ``b``
also holds what a stream costs while it waits between events (timers), which a
longer stream pays longer.

**Held streams** (``--held N``, first, on fresh servers after their warm-up): N
streams opened at once and held (a token every 30 s); the server's RSS with them
held minus its RSS before, per stream; the CPU to open them, per stream; the CPU
per held stream per second while they wait.

**Ratios** are taken per repeat, between targets that took turns in that repeat,
then given as the median and the range over the repeats (``--repeats``); the
repeats rotate the targets' order. "serve" is ``gateway`` (``gateway-lib`` if only
it ran). **Streams per core** at ``r`` tokens a second, answers of ``L`` tokens:
a stream costs ``a + b * L`` CPU seconds over ``L / r`` seconds, so one core carries
``1 / (r * (b + a / L))`` streams at once, printed with ``b`` of the paced phase
(its events further apart than 20 ms: timers included, an upper bound on ``b``) and
of the unpaced one (events coalesced when the server falls behind: a lower bound).

The machine is shared and has two cores for three busy processes: compare ratios
and report the load average printed with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs as procs

TARGETS = ("direct", "relay", "gateway", "gateway-lib", "fastapi", "nginx", "litellm")
REFERENCES = ("relay", "fastapi", "nginx")  # what serve is compared with
NAMES = {"relay": "relay floor", "fastapi": "FastAPI relay", "nginx": "nginx"}


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
    """One phase of one target at one level (or, phase ``held``, the held streams)."""

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
    repeat: int = 0
    tokens: int = 0  # tokens per stream asked of the simulator
    # The held phase: streams established, RSS before and with them held (KiB), the
    # CPU to open them, the CPU while held over hold_seconds.
    held: int = 0
    rss_before: int = 0
    rss_held: int = 0
    open_cpu: float = 0.0
    hold_cpu: float = 0.0
    hold_seconds: float = 0.0

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

    @property
    def kib_per_held(self) -> float:
        """RSS per held stream, KiB (the held phase)."""
        return (self.rss_held - self.rss_before) / self.held if self.held else math.nan


def phase_name(kind: str, length: int) -> str:
    """``throughput`` / ``latency``, with ``xN`` for streams N times as long."""
    return kind if length == 1 else f"{kind} x{length}"


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 0.1 s until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # polling another process's sockets: nothing to wait on
    return True


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
        self.repeat = 0  # stamped on the figures: ratios pair the targets' turns

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
        figures = Figures(self.target, streams, phase, repeat=self.repeat)
        figures.tokens = int(simulate["tokens"])
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

    def throughput(self, level: Level, length: int = 1) -> Figures:
        """The unpaced phase (streams ``length`` times as long)."""
        simulate: dict[str, float | int] = {
            "tokens": level.throughput_tokens * length,
            "first_token_latency": 0,
            "token_latency": 0,
        }
        return self.run(level.streams, simulate, phase_name("throughput", length))

    def latency(self, level: Level, length: int = 1) -> Figures:
        """The paced phase (streams ``length`` times as long)."""
        simulate: dict[str, float | int] = {
            "tokens": level.latency_tokens * length,
            "first_token_latency": 0,
            "token_latency": level.interval,
        }
        return self.run(level.streams, simulate, phase_name("latency", length))

    def held_streams(self, streams: int, hold: float = 3.0) -> Figures:
        """Open ``streams`` slow streams at once, hold them ``hold`` seconds, leave them."""
        self.seed += 1_000_000
        spec = procs.ClientSpec(
            port=self.server.port,
            streams=streams,
            first_seed=self.seed,
            # The first event at once (so the headers), then a token every 30 s.
            simulate={"tokens": 20, "first_token_latency": 0, "token_latency": 30.0},
            headers=self.headers,
            parallel_until_headers=True,
            hold=True,
        )
        figures = Figures(self.target, streams, "held", repeat=self.repeat)
        port = self.server.port
        wait_for(lambda: procs.established(port) == 0, 30)  # the warm-up's are gone
        figures.rss_before = self.server.rss()
        cpu0 = self.server.cpu()
        run = procs.start_clients(self.workdir, [spec], f"{self.target}-held")
        if not wait_for(lambda: procs.established(port) >= streams, self.timeout):
            figures.notes.append(f"only {procs.established(port)} established")
        figures.held = min(streams, procs.established(port))
        cpu1, start = self.server.cpu(), time.monotonic()
        figures.open_cpu = cpu1 - cpu0
        time.sleep(hold)  # holding them: what it costs to keep them
        figures.hold_cpu = self.server.cpu() - cpu1
        figures.hold_seconds = time.monotonic() - start
        figures.rss_held = self.server.rss()
        run.signal(signal.SIGUSR1)
        results = run.wait(self.timeout)
        figures.failures = sum(1 for r in results if r.status != 200 or not r.arrivals)
        wait_for(lambda: procs.established(port) == 0, 60)
        return figures


ServerFactory = Callable[[Path, str, str], procs.Proc]
"""Makes the process of a target (not started): ``(workdir, target, upstream_url)``."""


def start_server(workdir: Path, target: str, upstream: str) -> procs.Proc:
    """The process of ``target`` in front of ``upstream`` (not started)."""
    if target == "relay":
        return procs.relay_proc(workdir, upstream)
    if target == "fastapi":
        return procs.fastapi_proc(workdir, upstream)
    if target == "nginx":
        server = procs.nginx_proc(workdir, upstream)
        if server is None:
            raise SystemExit("nginx is not installed (Debian: apt-get install nginx-light)")
        return server
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
    *,
    lengths: Sequence[int] = (1,),
    held: int = 0,
) -> list[Figures]:
    """Start one simulator and every target's server, warm each up, then run every
    level's phases with the targets taking turns (so that a slow spell of the
    machine does not fall on one of them only; their order rotates each repeat),
    except those ``skip`` leaves out. Each phase runs once per stream length in
    ``lengths`` (multiples of the level's tokens). With ``held``, first (on fresh
    servers) the held phase of ``held`` streams, once per proxy. Idle servers cost
    nothing: only the one under test is busy."""
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
        if held:
            figures += [r.held_streams(held) for r in runners if r.target != "direct"]
            print(f"  {held} held streams: done", flush=True)
        for level in levels:
            active = [r for r in runners if skip is None or not skip(r.target, level)]
            for repeat in range(repeats):
                turn = repeat % len(active) if active else 0
                ordered = active[turn:] + active[:turn]
                for runner in ordered:
                    runner.repeat = repeat
                for length in lengths:
                    figures += [runner.throughput(level, length) for runner in ordered]
                    figures += [runner.latency(level, length) for runner in ordered]
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


def spread(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    """``median [min-max]`` of the values that are numbers; ``-`` if none."""
    numbers = sorted(v for v in values if not math.isnan(v))
    if not numbers:
        return "-"
    median = statistics.median(numbers)
    if len(numbers) == 1:
        return f"{median:,.{digits}f}{unit}"
    return f"{median:,.{digits}f}{unit} [{numbers[0]:,.{digits}f}-{numbers[-1]:,.{digits}f}]"


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN unless the denominator is positive and the
    numerator not negative (a reference that measured no CPU at all, as /proc counts
    in 10 ms ticks; a fitted cost below zero, which is noise)."""
    return numerator / denominator if denominator > 0 and numerator >= 0 else math.nan


def serve_target(figures: Sequence[Figures]) -> str | None:
    """The target that stands for ``streammgr serve``: gateway, else gateway-lib."""
    present = {f.target for f in figures}
    return next((t for t in ("gateway", "gateway-lib") if t in present), None)


def by_repeat(
    figures: Sequence[Figures], target: str, streams: int, phase: str
) -> dict[int, Figures]:
    """The figures of one target, level and phase, by repeat."""
    return {
        f.repeat: f for f in figures if (f.target, f.streams, f.phase) == (target, streams, phase)
    }


def paired_ratios(
    figures: Sequence[Figures],
    target: str,
    reference: str,
    streams: int,
    phase: str,
    value: Callable[[Figures], float],
) -> list[float]:
    """``value(target) / value(reference)`` of every repeat where both ran."""
    mine = by_repeat(figures, target, streams, phase)
    theirs = by_repeat(figures, reference, streams, phase)
    return [ratio(value(mine[r]), value(theirs[r])) for r in sorted(mine) if r in theirs]


@dataclass(frozen=True)
class Costs:
    """The CPU per stream (``a``, seconds) and per event (``b``, seconds) of one repeat."""

    per_stream: float
    per_event: float

    def stream(self) -> float:
        """The CPU per stream."""
        return self.per_stream

    def event(self) -> float:
        """The CPU per event."""
        return self.per_event


def fit_costs(short: Figures, long: Figures) -> Costs:
    """Solve ``cpu = a * streams + b * events`` from two runs of the same streams."""
    if long.events == short.events or not short.streams:
        return Costs(math.nan, math.nan)
    per_event = (long.server_cpu - short.server_cpu) / (long.events - short.events)
    per_stream = (short.server_cpu - per_event * short.events) / short.streams
    return Costs(per_stream, per_event)


def costs_by_repeat(
    figures: Sequence[Figures], target: str, streams: int, kind: str
) -> dict[int, Costs]:
    """The fitted costs of ``target`` in every repeat (the shortest and longest runs)."""
    lengths = sorted(
        {
            int(f.phase.rsplit(" x", 1)[1]) if " x" in f.phase else 1
            for f in figures
            if f.target == target and f.streams == streams and f.phase.startswith(kind)
        }
    )
    if len(lengths) < 2:
        return {}
    short = by_repeat(figures, target, streams, phase_name(kind, lengths[0]))
    long = by_repeat(figures, target, streams, phase_name(kind, lengths[-1]))
    return {r: fit_costs(short[r], long[r]) for r in sorted(short) if r in long}


def added_p99(
    figures: Sequence[Figures], target: str, streams: int, steady: bool
) -> dict[int, float]:
    """The p99 delay ``target`` added to direct's, by repeat, ms."""
    mine = by_repeat(figures, target, streams, "latency")
    direct = by_repeat(figures, "direct", streams, "latency")

    def p99(f: Figures) -> float:
        return f.steady_delay(0.99) if steady else f.delay(0.99)

    return {r: p99(mine[r]) - p99(direct[r]) for r in sorted(mine) if r in direct}


def streams_per_core(costs: Costs, rate: float, length: float) -> float:
    """Streams one core carries at ``rate`` tokens a second, answers of ``length``."""
    if costs.per_event <= 0 or costs.per_stream < 0:
        return math.nan  # a fit that is noise (too few streams, too little CPU)
    return 1 / (rate * (costs.per_event + costs.per_stream / length))


def report(figures: list[Figures], levels: Sequence[Level]) -> None:
    """Print the tables and the ratios."""
    chosen: dict[tuple[str, int, str], Figures] = {}
    for key in {(f.target, f.streams, f.phase) for f in figures}:
        chosen[key] = _median_figures([f for f in figures if (f.target, f.streams, f.phase) == key])
    targets = [t for t in TARGETS if any(f.target == t for f in figures)]
    repeats = len({f.repeat for f in figures if f.phase == "throughput"})

    print(f"\nThroughput: the simulator unpaced (token_latency 0); the median of {repeats}\n")
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
    report_costs(figures, levels, targets)
    report_held(figures, targets)
    report_ratios(figures, levels)


def report_costs(figures: Sequence[Figures], levels: Sequence[Level], targets: list[str]) -> None:
    """The CPU per stream and per event, fitted from the two stream lengths."""
    if not any(" x" in f.phase for f in figures):
        return
    print(
        "\nCosts: CPU = a * streams + b * events, solved per repeat from the two lengths "
        "(median [range])\n"
    )
    print(f"{'streams':>7} {'target':<12} {'phase':<10} {'a: per stream':>26} {'b: per event':>26}")
    for level in levels:
        for target in targets:
            for kind in ("throughput", "latency"):
                costs = costs_by_repeat(figures, target, level.streams, kind).values()
                if not costs:
                    continue
                a = spread([c.per_stream * 1e3 for c in costs], 2, " ms")
                b = spread([c.per_event * 1e6 for c in costs], 1, " us")
                phase = "unpaced" if kind == "throughput" else "paced"
                print(f"{level.streams:>7} {target:<12} {phase:<10} {a:>26} {b:>26}")


def report_held(figures: Sequence[Figures], targets: list[str]) -> None:
    """Memory and CPU of the held streams."""
    held = {f.target: f for f in figures if f.phase == "held"}
    if not held:
        return
    count = max(f.streams for f in held.values())
    print(f"\nHeld: {count} streams opened at once and held (one run, fresh servers)\n")
    print(
        f"{'target':<12} {'held':>11} {'RSS before / held':>20} {'per held stream':>16} "
        f"{'CPU to open one':>16} {'CPU held, per s per 1,000':>26}"
    )
    for target in targets:
        f = held.get(target)
        if f is None:
            continue
        per_second = f.hold_cpu / max(1e-9, f.hold_seconds) / max(1, f.held) * 1e6
        print(
            f"{target:<12} {f.held:>5}/{f.streams:<5} "
            f"{f.rss_before / 1024:>8.1f} / {f.rss_held / 1024:>6.1f} MiB "
            f"{_fmt(f.kib_per_held, 1) + ' KiB':>16} "
            f"{_fmt(f.open_cpu / max(1, f.held) * 1e3, 2) + ' ms':>16} "
            f"{_fmt(per_second, 1) + ' ms':>26}"
        )


def report_ratios(figures: Sequence[Figures], levels: Sequence[Level]) -> None:
    """#15's ratios: serve against each reference, per repeat, median [range]."""
    serve = serve_target(figures)
    if serve is None:
        return
    references = [r for r in REFERENCES if any(f.target == r for f in figures)]
    print(f"\nRatios, {serve} / reference, paired per repeat: median [range]")
    for level in levels:
        for kind, name in (("throughput", "unpaced"), ("latency", "paced")):
            parts = []
            for reference in references:
                ratios = paired_ratios(
                    figures, serve, reference, level.streams, kind, Figures.cpu_per_event
                )
                if ratios:
                    parts.append(f"{NAMES[reference]} {spread(ratios, 2, 'x')}")
            if parts:
                print(f"  CPU/event, {level.streams} streams {name}: " + "; ".join(parts))
    for level in levels:
        for kind, name in (("throughput", "unpaced"), ("latency", "paced")):
            mine = costs_by_repeat(figures, serve, level.streams, kind)
            for which, cost in (("a, per stream", Costs.stream), ("b, per event", Costs.event)):
                parts = []
                for reference in references:
                    fitted = costs_by_repeat(figures, reference, level.streams, kind)
                    ratios = [ratio(cost(mine[r]), cost(fitted[r])) for r in mine if r in fitted]
                    if ratios:
                        parts.append(f"{NAMES[reference]} {spread(ratios, 2, 'x')}")
                if parts:
                    print(f"  {which}, {level.streams} streams {name}: " + "; ".join(parts))
    for level in levels:
        for steady in (False, True):
            own = added_p99(figures, serve, level.streams, steady)
            if not own:
                continue
            label = "steady added p99" if steady else "added p99"
            parts = [f"{serve} {spread(list(own.values()), 1, ' ms')}"]
            for reference in references:
                theirs = added_p99(figures, reference, level.streams, steady)
                if theirs:
                    # A reference adding nothing (or less than direct's noise): no ratio.
                    ratios = [ratio(own[r], theirs[r]) for r in own if r in theirs]
                    parts.append(
                        f"{NAMES[reference]} {spread(list(theirs.values()), 1, ' ms')} "
                        f"(ratio {spread(ratios, 2, 'x')})"
                    )
            print(f"  {label}, {level.streams} streams paced: " + "; ".join(parts))
    held = {f.target: f for f in figures if f.phase == "held"}
    if serve in held:
        parts = [
            f"{NAMES[r]} {_fmt(ratio(held[serve].kib_per_held, held[r].kib_per_held), 2)}x"
            for r in references
            if r in held
        ]
        print(
            f"  memory per held stream ({held[serve].streams} held): "
            f"{held[serve].kib_per_held:.1f} KiB; " + "; ".join(parts)
        )
    report_capacity(figures, levels, serve)


def report_capacity(figures: Sequence[Figures], levels: Sequence[Level], serve: str) -> None:
    """Streams one core carries at 50 tokens a second (see the module docstring)."""
    rate = 50.0
    lines = []
    for level in levels:
        for kind, name in (("latency", "paced"), ("throughput", "unpaced")):
            costs = list(costs_by_repeat(figures, serve, level.streams, kind).values())
            if not costs:
                continue
            median = Costs(
                statistics.median(c.per_stream for c in costs),
                statistics.median(c.per_event for c in costs),
            )
            cores = [streams_per_core(median, rate, length) for length in (500, 2000, math.inf)]
            lines.append(
                f"  with a, b of {level.streams} streams {name} "
                f"(a {median.per_stream * 1e3:.2f} ms, b {median.per_event * 1e6:.1f} us): "
                + ", ".join(f"{_fmt(c)}" for c in cores)
            )
    if lines:
        print(
            f"\nStreams one core carries at {rate:.0f} tokens/s, {serve}: "
            "1 / (r * (b + a / L)) for answers of L = 500, 2,000, unbounded tokens"
        )
        print("\n".join(lines))


def main() -> None:
    """Parse the flags, run every target in turn, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default=None, help="comma-separated: 1,100,1000")
    parser.add_argument("--targets", default=None, help=f"comma-separated, of {TARGETS}")
    parser.add_argument("--quick", action="store_true", help="1 and 100 streams only")
    parser.add_argument("--full", action="store_true", help="longer streams, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--long",
        type=int,
        default=4,
        help="run each phase again with streams this many times as long, to tell the "
        "CPU per stream from the CPU per event (1: no)",
    )
    parser.add_argument(
        "--held",
        type=int,
        default=None,
        help="streams held at once for memory per stream (default 1,000; 200 with --quick; 0: no)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    parser.add_argument("--save", type=Path, help="write every phase's figures to this JSON file")
    parser.add_argument(
        "--load", type=Path, help="report the figures of a --save file, run nothing"
    )
    args = parser.parse_args()
    table = FULL if args.full else LEVELS
    counts = [1, 100] if args.quick else [1, 100, 1000]
    if args.streams:
        counts = [int(part) for part in args.streams.split(",")]
    levels = [table.get(n, Level(n, max(10, 20000 // n), max(0.01, n / 1000), 10)) for n in counts]
    repeats = args.repeats or (3 if args.full else 1)
    held = args.held if args.held is not None else (200 if args.quick else 1000)
    lengths = (1, args.long) if args.long > 1 else (1,)
    if args.load:
        figures = [Figures(**item) for item in json.loads(args.load.read_text())]
        counts = sorted({f.streams for f in figures if f.phase != "held"})
        report(figures, [table.get(n) or Level(n, 0, math.nan, 0) for n in counts])
        return
    if args.targets:
        targets = args.targets.split(",")
    else:
        targets = ["direct", "relay", "gateway", "fastapi", "nginx"]
    if "nginx" in targets and procs.nginx_executable() is None:
        targets.remove("nginx")
        print("nginx: not installed, left out (Debian: apt-get install nginx-light)")

    procs.raise_nofile()
    print(
        f"bench_gateway: {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; load average {procs.load_average()}"
    )
    print(f"streams {counts}, targets {targets}, repeats {repeats}, lengths {lengths}, held {held}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        figures = measure(
            Path(tmp), targets, levels, repeats, args.timeout, lengths=lengths, held=held
        )
    if args.save:
        args.save.write_text(json.dumps([dataclasses.asdict(f) for f in figures]))
    report(figures, levels)
    print(
        f"\nload average after: {procs.load_average()}; "
        f"{time.monotonic() - started:.0f}s in all; "
        f"median server CPU/event of every phase: "
        f"{statistics.median(f.cpu_per_event() for f in figures if f.events):.1f} us"
    )


if __name__ == "__main__":
    main()
