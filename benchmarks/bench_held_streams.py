"""Held streams: 10,000 concurrent gateway streams at a slow token rate, memory and CPU per stream.

Run it with::

    .venv/bin/python benchmarks/bench_held_streams.py                  # 10,000 streams
    .venv/bin/python benchmarks/bench_held_streams.py --quick          # 2,000 streams
    .venv/bin/python benchmarks/bench_held_streams.py --streams 5000 --hold 30

The gateway is ``python -m streammgr serve`` in front of its in-process simulated
upstream (no ``--upstream-url``), so it holds only the downstream sockets, with
no limits (``--max-streams none`` ...). Several client processes (``--clients``,
4 by default; each raises ``RLIMIT_NOFILE`` to its hard limit) open the streams,
``--connect-parallel`` connecting at a time each; every stream asks the simulator
for a slow answer (the first chunk at once, then a token every ``--token-interval``
seconds, 30 by default); a client waits for a stream's headers before it counts
it as connected, so no more than ``--connect-parallel`` connections per client wait
for the server's accept (past hypercorn's listen backlog of 100, the kernel drops
them and the client's request is reset a minute later); every stream is held until
the clients leave them all mid-stream.

Measured, from the gateway's ``/proc/<pid>``:

- **opening**: wall time and CPU from the first connection to the last stream
  established (counted in ``/proc/net/tcp``), per stream: accepting, the request,
  the manager's admission, the simulated upstream's request, the headers;
- **held**: RSS with every stream open minus RSS before (after a warm-up), per
  stream (Python objects, buffers, the allocator's slack: not the kernel's socket
  buffers), and CPU per second while they are held (timers, keep-alives, the
  occasional token);
- **leaving**: how long until every connection is gone once the clients close
  theirs, and RSS afterwards (what is not given back).

:func:`hold_streams` is reused by bench_litellm.py for the peer.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs as procs


@dataclass
class Held:
    """What holding ``streams`` streams cost one server process."""

    name: str
    streams: int
    established: int = 0
    open_seconds: float = 0.0
    open_cpu: float = 0.0
    rss_before: int = 0  # KiB
    rss_held: int = 0
    rss_after: int = 0
    hold_seconds: float = 0.0
    hold_cpu: float = 0.0
    leave_seconds: float = 0.0
    upstream_open_held: int | None = None  # the simulator's open responses, held
    upstream_open_after: int | None = None  # ... once the clients left
    failures: int = 0
    note: str = ""

    def row(self) -> str:
        """One line of the table."""
        per_stream_kib = (self.rss_held - self.rss_before) / max(1, self.established)
        held_cpu = self.hold_cpu / max(1e-9, self.hold_seconds) * 1000 / max(1, self.established)
        return (
            f"{self.name:<12} {self.established:>6}/{self.streams:<6} "
            f"{self.open_seconds:>7.1f}s {self.open_cpu / max(1, self.established) * 1e6:>8.0f} us "
            f"{self.rss_before / 1024:>7.1f} {self.rss_held / 1024:>8.1f} {per_stream_kib:>9.1f} "
            f"{held_cpu * 1000:>9.2f} ms {self.leave_seconds:>6.1f}s {self.rss_after / 1024:>8.1f}"
        )


HEADER = (
    f"{'server':<12} {'held/asked':>13} {'opening':>8} {'CPU/open':>11} "
    f"{'RSS MiB':>7} {'held MiB':>8} {'KiB/strm':>9} {'CPU ms/s/1k':>12} {'leave':>7} "
    f"{'after MiB':>8}"
)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every 0.2 s until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)  # polling another process's sockets: nothing to wait on
    return True


def hold_streams(
    workdir: Path,
    server: procs.Proc,
    name: str,
    *,
    streams: int,
    clients: int,
    hold: float,
    token_interval: float,
    connect_parallel: int,
    sim: procs.Proc | None = None,
    model: str = "sim-small",
    headers: tuple[tuple[str, str], ...] = (),
    open_timeout: float = 300.0,
) -> Held:
    """Open ``streams`` slow streams through ``server``, hold them, leave them all."""
    figures = Held(name, streams)
    spec = procs.ClientSpec(
        port=server.port,
        streams=5,
        first_seed=1,
        simulate={"tokens": 5, "first_token_latency": 0, "token_latency": 0},
        model=model,
        headers=headers,
    )
    procs.start_clients(workdir, [spec], f"{name}-warm").wait(120)  # warm-up
    time.sleep(1.0)  # let the warm-up's connections close before the baseline
    figures.rss_before = server.rss()
    spec = procs.ClientSpec(
        port=server.port,
        streams=streams,
        first_seed=1_000_000,
        simulate={
            "tokens": 20,  # the simulator renders the whole answer up front: keep it short
            "first_token_latency": 0.0,  # the headers at once: see parallel_until_headers
            "token_latency": token_interval,
        },
        parallel_until_headers=True,
        connect_parallel=connect_parallel,
        model=model,
        headers=headers,
        hold=True,
    )
    cpu0, start = server.cpu(), time.monotonic()
    run = procs.start_clients(workdir, procs.split_specs(spec, clients), f"{name}-held")
    if not wait_for(lambda: procs.established(server.port) >= streams, open_timeout):
        figures.note = f"only {procs.established(server.port)} established in {open_timeout}s"
    # (The count can pass ``streams`` by a few: sockets of the warm-up not closed yet.)
    figures.established = min(streams, procs.established(server.port))
    figures.open_seconds = time.monotonic() - start
    cpu1 = server.cpu()
    figures.open_cpu = cpu1 - cpu0
    cpu1, t1 = server.cpu(), time.monotonic()
    time.sleep(hold)  # holding: what it costs to keep them
    figures.hold_cpu, figures.hold_seconds = server.cpu() - cpu1, time.monotonic() - t1
    figures.rss_held = server.rss()
    if sim is not None:
        figures.upstream_open_held = procs.http_get_json(sim.port, "/bench/stats")["open"]
    leave = time.monotonic()
    run.signal(signal.SIGUSR1)
    results = run.wait(120)
    wait_for(lambda: procs.established(server.port) == 0, 60)
    if sim is not None:
        wait_for(lambda: procs.http_get_json(sim.port, "/bench/stats")["open"] == 0, 30)
        figures.upstream_open_after = procs.http_get_json(sim.port, "/bench/stats")["open"]
    figures.leave_seconds = time.monotonic() - leave
    time.sleep(1.0)
    figures.rss_after = server.rss()
    figures.failures = sum(1 for r in results if r.status != 200 or not r.arrivals)
    return figures


def main() -> None:
    """Parse the flags, hold the streams, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=None, help="10,000 (--quick: 2,000)")
    parser.add_argument("--quick", action="store_true", help="2,000 streams, held 5 s")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--hold", type=float, default=None, help="seconds to hold them (10)")
    parser.add_argument("--token-interval", type=float, default=30.0, help="seconds")
    parser.add_argument("--connect-parallel", type=int, default=16, help="per client")
    args = parser.parse_args()
    if args.streams is None:
        args.streams = 2000 if args.quick else 10_000
    if args.hold is None:
        args.hold = 5.0 if args.quick else 10.0
    limit = procs.raise_nofile()
    print(
        f"bench_held_streams: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, RLIMIT_NOFILE {limit}; load average {procs.load_average()}"
    )
    print(
        f"{args.streams} streams from {args.clients} client processes, a token every "
        f"{args.token_interval:g}s, held {args.hold:g}s; gateway: streammgr serve, "
        f"in-process simulated upstream\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench-held-") as tmp:
        workdir = Path(tmp)
        with procs.gateway_proc(workdir, None) as gateway:
            held = hold_streams(
                workdir,
                gateway,
                "gateway",
                streams=args.streams,
                clients=args.clients,
                hold=args.hold,
                token_interval=args.token_interval,
                connect_parallel=args.connect_parallel,
            )
    print(HEADER)
    print(held.row())
    if held.note or held.failures:
        print(f"  {held.note} {held.failures} streams failed".strip())
    print(
        f"\nCPU/open: the gateway's CPU from the first connection to the last stream "
        f"established, per stream; CPU ms/s/1k: while held, per second per 1,000 streams."
        f"\nload average after: {procs.load_average()}"
    )


if __name__ == "__main__":
    main()
