"""Gateway load benchmark: thousands of streams through ``streammgr serve`` in front of
``streammgr simulate``, three processes over loopback.

Run: ``.venv/bin/python benchmarks/load_gateway.py`` (``--help`` for the knobs;
``--soak MINUTES`` runs the load for that long and reports the gateway's RSS and
descriptor growth per hour).

The simulator (``python -m streammgr simulate --port 0``) and the gateway
(``python -m streammgr serve --upstream-url ... --port 0``) are child processes;
this process is the client: ``--streams`` requests, at most ``--concurrency`` at
once, under ``--tenants`` callers (``x-tenant``, the gateway's ``--key-header``),
with a seeded share that leaves mid-stream and a share cancelled by the operator
(``DELETE /admin/streams/{id}``). Checked, and printed:

- every stream read to its end holds exactly the simulator's deterministic text
  (``streammgr.simulate.plan_request`` on the very bytes sent), in order, then
  ``[DONE]``; every cancelled one ends with the in-band ``cancelled`` error;
- the limits, sampled from the gateway's ``GET /admin/stats`` every few
  milliseconds: active streams never above ``--max-streams``, none of a key above
  ``--max-per-key``; and the simulator's established TCP connections (from
  ``/proc/net/tcp``: in flight plus idle pooled ones) never above the gateway's
  pool bound;
- afterwards: no stream active or waiting, and the gateway's descriptors back to
  where they were before the load (plus its idle pooled upstream connections).

The children are stopped (SIGINT, then SIGKILL) on every exit path of this
process, Ctrl-C included. (Not ``PR_SET_PDEATHSIG``: Trio starts processes from a
worker thread, and the kernel would kill the child when that thread retires.)
Figures are from one machine and one run: compare them between runs of the same
machine, not across machines.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from streammgr.simulate import Behaviour, plan_request

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _soak import QuietPoint, save, slope, warm_up_end
from _soak import report as soak_report

PATIENCE = 30.0  # seconds a child may take to start or stop
ESTABLISHED = "01"
RAMP = 0.003  # seconds between the first connections
BENCH_GC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_gc.py")


# -- child processes ------------------------------------------------------------------------


@dataclass
class Child:
    """A ``python -m streammgr`` process whose JSON log is read and counted."""

    name: str
    process: trio.Process
    url: str = ""
    log_lines: int = 0
    errors: list[str] = field(default_factory=list)
    tail: collections.deque[bytes] = field(default_factory=lambda: collections.deque(maxlen=20))

    @property
    def pid(self) -> int:
        return self.process.pid

    async def read_log(self, listening: trio.Event) -> None:
        """Drain stderr (a full pipe would block the child); note the URL and errors."""
        stderr = self.process.stderr
        assert stderr is not None
        pending = b""
        while True:
            data = await stderr.receive_some(1 << 16)
            if not data:
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.log_lines += 1
                self.tail.append(line)
                if not line.startswith(b"{"):
                    self.errors.append(line.decode(errors="replace"))
                    continue
                event = json.loads(line)
                if str(event.get("event", "")).endswith(".listening"):
                    self.url = str(event["urls"][0])
                    listening.set()
                elif event.get("level") in ("error", "critical"):
                    self.errors.append(line.decode())


@contextlib.asynccontextmanager
async def child(
    name: str, nursery: trio.Nursery, *argv: str, probe: list[str] | None = None
) -> AsyncIterator[Child]:
    """Start ``python -m streammgr ARGV``; stop it (SIGINT, then SIGKILL) on exit.

    ``probe``: run it through ``bench_gc.py probe PROBE --`` instead (collections
    timed; SIGUSR2 writes a report and a tracemalloc snapshot)."""
    command = [sys.executable, "-m", "streammgr", *argv, "--port", "0", "--log-format", "json"]
    if probe is not None:
        command = [sys.executable, BENCH_GC, "probe", *probe, "--", *command[3:]]
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    running = Child(name, process)
    code: int | None = None
    try:
        listening = trio.Event()
        nursery.start_soon(running.read_log, listening)
        with trio.fail_after(PATIENCE):
            await listening.wait()
        yield running
    finally:
        code = process.returncode
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
                with trio.move_on_after(PATIENCE):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        for line in running.errors[:60]:
            print(f"{name} logged: {line[:600]}")
        if code is not None:  # it had exited by itself
            print(f"{name} exited early with code {code}; its last log lines:")
            for raw in running.tail:
                print(f"  {raw[:300]!r}")


# -- what the kernel says about a process ------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def established_to(port: int) -> int:
    """TCP connections established whose local port is ``port`` (the server's ends)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == ESTABLISHED and int(fields[1].rpartition(":")[2], 16) == port:
                    count += 1
    return count


# -- the load ------------------------------------------------------------------------------


@dataclass
class Options:
    streams: int
    concurrency: int
    max_streams: int
    max_per_key: int
    tenants: int
    tokens: int
    token_latency: float
    leave: float
    cancel: float
    seed: int
    soak: float
    tracemalloc: str | None = None  # a directory: the gateway's snapshots at quiet points
    trim: float | None = None  # the probe calls malloc_trim(0) this often (seconds)
    # Where the probe writes its reports (a soak's quiet points: RSS, the oldest
    # generation's objects, memory by layer; with --tracemalloc, the snapshots):
    # --reports, --tracemalloc or a temporary directory.
    reports: str | None = None


@dataclass
class Results:
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    first_byte: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    peak_active: int = 0
    peak_per_key: int = 0
    peak_upstream_connections: int = 0
    samples: int = 0
    started: int = 0


def request_body(index: int, options: Options, rng: random.Random) -> bytes:
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": f"request {index}"}],
        "stream": True,
        "streammgr_simulate": {
            "tokens": rng.randint(1, options.tokens),
            "first_token_latency": options.token_latency,
            "token_latency": options.token_latency,
        },
    }
    return json.dumps(body).encode()


def text_of(payload: bytes) -> tuple[str, list[str]]:
    """The content of an SSE payload's chunk events, and every event's data."""
    events = []
    for block in payload.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(line[5:].removeprefix(" ") for line in lines))
    text = []
    for data in events:
        if data.startswith("{") and '"choices"' in data:
            for choice in json.loads(data)["choices"]:
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text), events


async def one_stream(
    client: httpx.AsyncClient,
    gateway: str,
    index: int,
    action: str,
    body: bytes,
    expected: str,
    options: Options,
    results: Results,
) -> None:
    headers = {"content-type": "application/json", "x-tenant": f"tenant-{index % options.tenants}"}
    began = trio.current_time()
    payload = b""
    results.started += 1
    async with client.stream(
        "POST", f"{gateway}/v1/chat/completions", content=body, headers=headers
    ) as response:
        stream_id = response.headers.get("x-stream-id", "")
        if response.status_code != 200:
            results.outcomes[f"status_{response.status_code}"] += 1
            results.problems.append(f"stream {index}: status {response.status_code}")
            return
        cancel_sent = False
        async for chunk in response.aiter_raw():
            if not payload and b"data:" in chunk:
                results.first_byte.append(trio.current_time() - began)
            payload += chunk
            if b'"content":"' not in payload:
                continue
            if action == "leave":
                results.outcomes["left"] += 1
                return
            if action == "cancel" and not cancel_sent:
                cancel_sent = True
                answer = await client.delete(f"{gateway}/admin/streams/{stream_id}")
                if answer.status_code != 200:  # it ended before: it must be whole
                    action = "read"
    results.durations.append(trio.current_time() - began)
    text, events = text_of(payload)
    if action == "cancel":
        error = json.loads(events[-1]).get("error", {}) if events else {}
        if error.get("code") != "cancelled" or not expected.startswith(text):
            results.problems.append(f"stream {index}: cancelled, but ended {events[-1:]}")
        results.outcomes["cancelled"] += 1
        return
    if not events or events[-1] != "[DONE]" or text != expected:
        results.problems.append(f"stream {index}: not intact (ended {events[-1:]!r})")
        results.outcomes["broken"] += 1
        return
    results.outcomes["intact"] += 1


async def sample_limits(
    client: httpx.AsyncClient, gateway: str, upstream_port: int, results: Results
) -> None:
    """The gateway's counts and the simulator's connections, as often as they answer."""
    while True:
        stats = (await client.get(f"{gateway}/admin/stats")).json()
        results.samples += 1
        results.peak_active = max(results.peak_active, stats["active"])
        per_key = max(stats["active_by_key"].values(), default=0)
        results.peak_per_key = max(results.peak_per_key, per_key)
        connections = established_to(upstream_port)
        results.peak_upstream_connections = max(results.peak_upstream_connections, connections)
        await trio.sleep(0.005)


async def run_load(
    gateway: str,
    upstream_port: int,
    options: Options,
    results: Results,
    until: Callable[[int], bool],
) -> None:
    """Streams, at most ``concurrency`` at once, until ``until(started)`` is false."""
    rng = random.Random(options.seed)
    behaviour = Behaviour(seed=options.seed)
    # keepalive_expiry below the server's keep_alive_timeout (5 s): a connection the
    # server closes while this client reuses it is a failed request, not a retry.
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=options.concurrency, keepalive_expiry=1.0
    )
    timeout = httpx.Timeout(PATIENCE, read=None)
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(timeout=timeout) as sampler,
        trio.open_nursery() as sampling,
    ):
        sampling.start_soon(sample_limits, sampler, gateway, upstream_port, results)
        slots = trio.Semaphore(options.concurrency)
        async with trio.open_nursery() as nursery:
            index = 0
            while until(index):
                await slots.acquire()
                body = request_body(index, options, rng)
                draw = rng.random()
                action = (
                    "leave"
                    if draw < options.leave
                    else "cancel"
                    if draw < options.leave + options.cancel
                    else "read"
                )
                expected = plan_request(body, behaviour).text

                async def run(index: int, action: str, body: bytes, expected: str) -> None:
                    try:
                        await one_stream(
                            client, gateway, index, action, body, expected, options, results
                        )
                    except httpx.HTTPError as exc:
                        results.problems.append(f"stream {index}: {type(exc).__name__}: {exc}")
                    finally:
                        slots.release()

                nursery.start_soon(run, index, action, body, expected)
                index += 1
                if index <= options.concurrency:
                    # Ramp up: a burst of new connections overflows the gateway's listen
                    # backlog (hypercorn's 100), and the kernel then resets some.
                    await trio.sleep(RAMP)
        sampling.cancel_scope.cancel()


async def quiet(client: httpx.AsyncClient, gateway: str) -> dict[str, object]:
    """Wait (bounded) until the gateway holds no stream; its stats then."""
    with trio.move_on_after(PATIENCE):
        while True:
            stats: dict[str, object] = (await client.get(f"{gateway}/admin/stats")).json()
            if stats["active"] == 0 and stats["waiting"] == 0:
                return stats
            await trio.sleep(0.05)
    raise AssertionError(f"the gateway still holds streams {PATIENCE:g}s after the load")


async def snapshot(gateway: Child, options: Options, taken: int) -> int:
    """With the probe (a soak, or ``--tracemalloc``): the gateway's report (and
    snapshot) number ``taken`` written (bounded wait); the next number."""
    if options.reports is None:
        return taken
    gateway.process.send_signal(signal.SIGUSR2)
    path = trio.Path(options.reports) / f"{taken}.json"
    with trio.fail_after(120):
        while not await path.exists():  # noqa: ASYNC110 - another process's file
            await trio.sleep(0.1)
    return taken + 1


async def settle(pid: int, fds_before: int, upstream_port: int) -> None:
    """Wait (bounded) until the gateway has closed its ends of the connections closed
    just now: at most its descriptors from before, plus its idle pooled upstream ones."""
    with trio.move_on_after(5.0):
        while fd_count(pid) > fds_before + established_to(upstream_port):  # noqa: ASYNC110 - another process: nothing to wait on
            await trio.sleep(0.05)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(options: Options) -> int:
    async with trio.open_nursery() as nursery:
        async with (
            child("simulator", nursery, "simulate", "--seed", str(options.seed)) as simulator,
            child(
                "gateway",
                nursery,
                "serve",
                "--upstream-url",
                f"{simulator.url}/v1",
                "--max-streams",
                str(options.max_streams),
                "--max-streams-per-key",
                str(options.max_per_key),
                "--max-waiting",
                "none",
                "--acquire-timeout",
                "none",
                "--key-header",
                "x-tenant",
                probe=(
                    None
                    if options.reports is None
                    else [
                        "--report",
                        options.reports,
                        "--frames",
                        "0" if options.tracemalloc is None else "10",
                        *([] if options.trim is None else ["--trim", str(options.trim)]),
                    ]
                ),
            ) as gateway,
        ):
            upstream_port = int(simulator.url.rpartition(":")[2])
            code = await measure(options, gateway, upstream_port)
        nursery.cancel_scope.cancel()
    return code


async def measure(options: Options, gateway: Child, upstream_port: int) -> int:
    results = Results()
    async with httpx.AsyncClient(timeout=PATIENCE) as admin:
        # Warm up (imports, the pool) so the baseline is the steady state.
        warm = Options(**{**options.__dict__, "streams": 50, "leave": 0.0, "cancel": 0.0})
        await run_load(gateway.url, upstream_port, warm, Results(), lambda started: started < 50)
        await quiet(admin, gateway.url)
        taken = await snapshot(gateway, options, 0)
        fds_before, rss_before = fd_count(gateway.pid), rss_bytes(gateway.pid)
        began = time.perf_counter()
        soak_points: list[QuietPoint] = []
        if options.soak:
            # In rounds: load, then drained to quiet, then a sample, so that each sample
            # counts what is left when nothing is in flight (what a leak would grow).
            deadline = time.monotonic() + options.soak * 60
            round_seconds = min(30.0, options.soak * 6)
            while time.monotonic() < deadline:
                round_end = min(deadline, time.monotonic() + round_seconds)

                def in_round(started: int, round_end: float = round_end) -> bool:
                    return time.monotonic() < round_end

                await run_load(gateway.url, upstream_port, options, results, in_round)
                quiet_stats = await quiet(admin, gateway.url)
                await settle(gateway.pid, fds_before, upstream_port)
                point = QuietPoint(
                    time.perf_counter() - began,
                    rss_bytes(gateway.pid),
                    fd_count(gateway.pid),
                    int(str(quiet_stats["closed_total"])),
                )
                if options.reports is not None:
                    point.snapshot = taken
                    taken = await snapshot(gateway, options, taken)
                    written = trio.Path(options.reports) / f"{point.snapshot}.json"
                    probed = json.loads(await written.read_text())
                    point.traced = probed.get("traced")
                    point.gen2_objects = probed.get("gen2_objects")
                    point.allocator = probed.get("allocator")
                soak_points.append(point)
                if options.reports is not None:
                    save(Path(options.reports), soak_points)
        else:
            await run_load(
                gateway.url, upstream_port, options, results, lambda n: n < options.streams
            )
        elapsed = time.perf_counter() - began
        stats = await quiet(admin, gateway.url)
        await settle(gateway.pid, fds_before, upstream_port)
        pooled = established_to(upstream_port)
        fds_after, rss_after = fd_count(gateway.pid), rss_bytes(gateway.pid)
        if fds_after > fds_before + pooled:
            for fd in sorted(os.listdir(f"/proc/{gateway.pid}/fd"), key=int):
                with contextlib.suppress(OSError):
                    print(f"gateway fd {fd}: {os.readlink(f'/proc/{gateway.pid}/fd/{fd}')}")

    print(
        f"streams: {results.started} in {elapsed:.1f}s ({results.started / elapsed:.0f}/s), "
        f"at most {options.concurrency} at once; gateway --max-streams {options.max_streams}, "
        f"--max-streams-per-key {options.max_per_key}, {options.tenants} tenants"
    )
    print(f"outcomes: {dict(results.outcomes)}")
    print(f"gateway close reasons: {stats['closed_by_reason']}")
    first_byte = statistics.median(results.first_byte or [math.nan])
    print(
        f"first data byte: median {first_byte * 1000:.0f} ms, "
        f"p99 {percentile(results.first_byte, 0.99) * 1000:.0f} ms; whole stream: median "
        f"{statistics.median(results.durations or [math.nan]) * 1000:.0f} ms, "
        f"p99 {percentile(results.durations, 0.99) * 1000:.0f} ms"
    )
    print(
        f"limits ({results.samples} samples of /admin/stats): peak active "
        f"{results.peak_active} <= {options.max_streams}, peak per key "
        f"{results.peak_per_key} <= {options.max_per_key}; simulator's established "
        f"connections: peak {results.peak_upstream_connections}, {pooled} left (idle pool)"
    )
    print(
        f"gateway: fds {fds_before} -> {fds_after}, RSS {rss_before / 2**20:.1f} -> "
        f"{rss_after / 2**20:.1f} MiB; log lines {gateway.log_lines}"
    )
    checks = {
        "every stream intact or told": not results.problems,
        "active never above --max-streams": results.peak_active <= options.max_streams,
        "no key above --max-streams-per-key": results.peak_per_key <= options.max_per_key,
        "the limit was reached (the check checked something)": results.peak_active
        == options.max_streams,
        "fds back to before (+ idle pool)": fds_after <= fds_before + pooled,
    }
    if soak_points:
        # The warm-up (the registry's history filling, the allocator's arenas) is
        # left out of the fit: see benchmarks/_soak.py.
        print(f"soak {options.soak:g} min:")
        for line in soak_report(soak_points):
            print(line)
        steady = soak_points[warm_up_end(soak_points) :]
        if len(steady) >= 2:
            fd_slope = slope(
                [point.seconds / 3600 for point in steady], [point.fds for point in steady]
            )
            print(f"  fds {fd_slope:+.1f}/hour")
    for problem in results.problems[:10]:
        print(f"problem: {problem}")
    for check, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {check}")
    return 0 if all(checks.values()) else 1


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000, help="streams in total")
    parser.add_argument("--concurrency", type=int, default=300, help="client streams at once")
    parser.add_argument("--max-streams", type=int, default=40, help="the gateway's limit")
    parser.add_argument("--max-per-key", type=int, default=4, help="the per-tenant limit")
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=20, help="the most tokens per answer")
    parser.add_argument("--token-latency", type=float, default=0.005)
    parser.add_argument("--leave", type=float, default=0.1, help="share leaving mid-stream")
    parser.add_argument("--cancel", type=float, default=0.05, help="share cancelled by admin")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--soak", type=float, default=0.0, metavar="MINUTES", help="run the load this long"
    )
    parser.add_argument(
        "--tracemalloc",
        metavar="DIR",
        help="trace the gateway's allocations; a snapshot at each quiet point, written to "
        "DIR (compare them: bench_gc.py compare DIR)",
    )
    parser.add_argument(
        "--trim",
        type=float,
        metavar="SECONDS",
        help="a soak: the gateway calls glibc's malloc_trim(0) this often (an RSS experiment)",
    )
    parser.add_argument(
        "--reports",
        metavar="DIR",
        help="a soak: keep the gateway's reports at each quiet point (N.json, soak.json) in DIR",
    )
    args = parser.parse_args(argv)
    return Options(
        streams=args.streams,
        concurrency=args.concurrency,
        max_streams=args.max_streams,
        max_per_key=args.max_per_key,
        tenants=args.tenants,
        tokens=args.tokens,
        token_latency=args.token_latency,
        leave=args.leave,
        cancel=args.cancel,
        seed=args.seed,
        soak=args.soak,
        tracemalloc=args.tracemalloc,
        trim=args.trim,
        reports=args.reports,
    )


if __name__ == "__main__":
    parsed = parse()
    if parsed.tracemalloc is not None:
        parsed.reports = parsed.tracemalloc
        sys.exit(trio.run(main, parsed))
    elif parsed.soak and parsed.reports is not None:
        Path(parsed.reports).mkdir(parents=True, exist_ok=True)
        sys.exit(trio.run(main, parsed))
    elif parsed.soak:
        # The probe's reports at each quiet point (no tracing): RSS and the oldest
        # generation's objects, from inside the gateway.
        with tempfile.TemporaryDirectory(prefix="load-gateway-") as reports:
            parsed.reports = reports
            sys.exit(trio.run(main, parsed))
    else:
        sys.exit(trio.run(main, parsed))
