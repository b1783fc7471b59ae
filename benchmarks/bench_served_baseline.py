"""``streammgr serve`` of this tree against another checkout's, beside the relay floor.

Run it with::

    git worktree add --detach ../base main
    .venv/bin/python benchmarks/bench_served_baseline.py ../base --repeats 7
    .venv/bin/python benchmarks/bench_served_baseline.py ../base --tokens 5 --phases unpaced

One simulator, the relay floor and two gateways (``python -m streammgr serve`` run in
each checkout's directory, so that each imports its own ``streammgr``), all started
at once (``benchmarks/_procs.py``); in each repeat the three take turns (the order
rotated), 100 streams a phase: unpaced (``--tokens`` a stream) and paced (30 tokens
100 ms apart). Server CPU per event from ``/proc`` (10 ms ticks: keep phases long
enough); the ratios are paired per repeat, so a slow spell of the machine falls on
one repeat of all three. bench_hot_path.py measures the streaming path in process;
this one measures what only serving shows (sockets, the upstream pool, opening).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _procs as procs

PHASES: dict[str, dict[str, float | int]] = {
    "unpaced": {"tokens": 100, "first_token_latency": 0, "token_latency": 0},
    "paced": {"tokens": 30, "first_token_latency": 0, "token_latency": 0.1},
}


def base_gateway(workdir: Path, upstream: str, checkout: Path) -> procs.Proc:
    """``streammgr serve`` started in ``checkout`` (its own ``streammgr``), listening."""
    proc = procs.gateway_proc(workdir, upstream)
    port = procs.free_port()
    args = list(proc.args)
    args[args.index("--port") + 1] = str(port)
    log = workdir / "gateway-base.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=checkout)
    started = procs.Proc("gateway-base", args, port, log, popen=popen)
    deadline = time.monotonic() + started.start_timeout
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"the base gateway exited; its output: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return started
        if time.monotonic() > deadline:
            started.stop()
            raise RuntimeError(f"the base gateway did not listen on {port}")
        time.sleep(0.05)  # polling a child process's port: nothing to wait on


def run_phase(
    workdir: Path, server: procs.Proc, simulate: dict[str, float | int], seed: int
) -> float:
    """100 streams through ``server``: its CPU microseconds per event delivered."""
    spec = procs.ClientSpec(
        port=server.port,
        streams=100,
        first_seed=seed,
        simulate=simulate,
        parallel_until_headers=True,
    )
    before = server.cpu()
    results = procs.start_clients(workdir, [spec], f"{server.name}-{seed}").wait(300)
    cpu = server.cpu() - before
    failed = [result for result in results if result.failure or not result.done]
    if failed:
        raise RuntimeError(f"{server.name}: {len(failed)} streams failed: {failed[0].failure}")
    return cpu / sum(len(result.arrivals) for result in results) * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    """Run the contenders in turns; print medians, ranges and the paired ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", type=Path, help="the other checkout (its serve is 'base')")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=100, help="tokens a stream, unpaced")
    parser.add_argument("--phases", default="unpaced,paced")
    args = parser.parse_args(argv)
    phases = {name: dict(PHASES[name]) for name in args.phases.split(",")}
    if "unpaced" in phases:
        phases["unpaced"]["tokens"] = args.tokens
    procs.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="bench-served-") as tmp:
        workdir = Path(tmp)
        with procs.sim_proc(workdir) as sim:
            upstream = f"http://127.0.0.1:{sim.port}/v1"
            with (
                procs.relay_proc(workdir, upstream) as relay,
                procs.gateway_proc(workdir, upstream) as new,
            ):
                old = base_gateway(workdir, upstream, args.base.resolve())
                try:
                    measure({"relay": relay, "base": old, "new": new}, phases, args, workdir)
                finally:
                    old.stop()


def measure(
    servers: dict[str, procs.Proc],
    phases: dict[str, dict[str, float | int]],
    args: argparse.Namespace,
    workdir: Path,
) -> None:
    """The repeats, then the summary."""
    figures: dict[tuple[str, str], list[float]] = {(s, p): [] for s in servers for p in phases}
    seed = 0
    for server in servers.values():  # warm-up: imports, the upstream pool
        seed += 1000
        run_phase(workdir, server, PHASES["unpaced"], seed)
    order = list(servers)
    for repeat in range(args.repeats):
        order = order[1:] + order[:1]
        for phase, simulate in phases.items():
            for name in order:
                seed += 1000
                figures[(name, phase)].append(run_phase(workdir, servers[name], simulate, seed))
        shown = "  ".join(f"{n}/{p} {figures[(n, p)][-1]:.0f}" for p in phases for n in servers)
        print(f"repeat {repeat + 1}: {shown}", flush=True)
    print(
        f"\nserver CPU per event, us, median (range) of {args.repeats} repeats; "
        f"load average {procs.load_average()}"
    )
    for phase in phases:
        for name in servers:
            values = figures[(name, phase)]
            print(
                f"  {phase:8} {name:6} {statistics.median(values):7.1f} "
                f"({min(values):.0f}-{max(values):.0f})"
            )
        for top, bottom in (("base", "relay"), ("new", "relay"), ("new", "base")):
            ratios = [
                a / b for a, b in zip(figures[(top, phase)], figures[(bottom, phase)], strict=True)
            ]
            print(
                f"  {phase:8} {top}/{bottom}, paired: {statistics.median(ratios):.2f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
