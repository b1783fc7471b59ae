"""The peer: LiteLLM's proxy and streammgr's gateway in front of the same simulator, same load.

Run it with::

    .venv/bin/python benchmarks/bench_litellm.py                  # load at 1 and 100 streams,
                                                                  # 1,000 held, limits probe
    .venv/bin/python benchmarks/bench_litellm.py --streams 1,100,1000 --held 2000

LiteLLM is installed on demand into its own venv, ``.bench/litellm-venv``
(gitignored; ``pip install 'litellm[proxy]'``), so its pinned dependencies never
touch streammgr's and CI never installs it. ``--no-install`` uses the venv as it
is. If it cannot be installed or started, the script says exactly why (the
error's text) and exits 0, so ``python3 dev.py bench`` goes on.

LiteLLM runs as ``litellm --config litellm.yaml`` (uvicorn, one worker, its
default), with one model, ``sim-small`` → ``openai/sim-small`` at the simulator's
``api_base``, a master key (it refuses to start without one), no database, and
its aiohttp pool unbounded (``AIOHTTP_CONNECTOR_LIMIT_PER_HOST``: by default it
holds 500 upstream connections per host and queues the rest), as gateway-lib's.
The ``streammgr_simulate`` body field passes through it to the simulator.

Three parts, each the same for LiteLLM and for the gateway:

1. **load**: bench_gateway.py's throughput and latency phases (events/s, server
   CPU per event, delivery delay) for ``relay`` (the floor), ``gateway-lib`` (the
   gateway with an unbounded upstream pool) and ``litellm``;
2. **held streams**: ``--held`` slow streams held, then every client leaves mid-
   stream (bench_held_streams.py's :func:`hold_streams`): memory per held stream,
   and whether the upstream responses are closed when the clients go (the
   simulator's count of the responses it holds, ``/bench/stats``);
3. **limits**: a limit of 5 streams (LiteLLM: ``global_max_parallel_requests: 5``;
   the gateway: ``--max-streams 5 --max-waiting 0``), 5 streams held, a 6th asked
   for: its status, ``Retry-After`` and body; then the 5 leave mid-stream and 5
   new ones are asked for at once: are the slots freed?
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs as procs
import bench_gateway
import bench_held_streams

VENV = procs.ROOT / ".bench" / "litellm-venv"
LITELLM = VENV / "bin" / "litellm"
REQUIREMENT = "litellm[proxy]"
MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 2  # local only: a throwaway key
AUTH = (("Authorization", f"Bearer {MASTER_KEY}"),)


class Unavailable(Exception):
    """LiteLLM cannot be installed or run here; the message says why."""


def ensure_litellm(install: bool) -> str:
    """Create the venv and install LiteLLM if needed; return its version."""
    python = VENV / "bin" / "python"
    if not LITELLM.exists():
        if not install:
            raise Unavailable(f"{LITELLM} does not exist and --no-install was given")
        print(f"installing {REQUIREMENT} into {VENV} (once; a few minutes)", flush=True)
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [str(python), "-m", "pip", "install", "--quiet", REQUIREMENT],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise Unavailable(
                    f"{' '.join(step)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
                )
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise Unavailable(f"litellm does not import in {VENV}:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


LITELLM_LIMITS = {
    "general_settings.global_max_parallel_requests: 5": ("", "  global_max_parallel_requests: 5\n"),
    "litellm_params.max_parallel_requests: 5": ("      max_parallel_requests: 5\n", ""),
    "litellm_params.rpm: 5": ("      rpm: 5\n", ""),
}
"""LiteLLM's ways to limit a model to 5: (lines for litellm_params, for general_settings)."""


def litellm_proc(workdir: Path, upstream: str, *, limit: str | None = None) -> procs.Proc:
    """LiteLLM's proxy in front of ``upstream`` (not started); ``limit``: of LITELLM_LIMITS."""
    port = procs.free_port()
    config = workdir / f"litellm-{port}.yaml"
    params, settings = LITELLM_LIMITS[limit] if limit else ("", "")
    config.write_text(
        "model_list:\n"
        "  - model_name: sim-small\n"
        "    litellm_params:\n"
        "      model: openai/sim-small\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-anything\n" + params + "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n" + settings
    )
    args = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    # LiteLLM's aiohttp pool holds 500 connections per host by default (1,000 in all);
    # past that, requests wait for one. Unbounded here, as gateway-lib's httpx pool.
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "AIOHTTP_CONNECTOR_LIMIT": "100000",
        "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": "100000",
    }
    log = workdir / f"litellm-{port}.log"
    return procs.Proc("litellm", args, port, log, env=env, start_timeout=240.0)


def factory(workdir: Path, target: str, upstream: str) -> procs.Proc:
    """bench_gateway's targets, and ``litellm``."""
    if target == "litellm":
        return litellm_proc(workdir, upstream)
    return bench_gateway.start_server(workdir, target, upstream)


def load(workdir: Path, counts: list[int], timeout: float) -> None:
    """Part 1: the load phases for the relay floor, the gateway and LiteLLM."""
    levels = [bench_gateway.LEVELS[n] for n in counts]
    figures = bench_gateway.measure(
        workdir,
        ("direct", "relay", "gateway-lib", "litellm"),
        levels,
        1,
        timeout,
        factory=factory,
        headers=lambda target: AUTH if target == "litellm" else (),
    )
    bench_gateway.report(figures, levels)
    print("\nLiteLLM / gateway-lib:")
    for level in levels:
        pair = {
            (f.target, f.phase): f
            for f in figures
            if f.streams == level.streams and f.target in ("litellm", "gateway-lib")
        }
        try:
            lt, gt = pair["litellm", "throughput"], pair["gateway-lib", "throughput"]
            ll, gl = pair["litellm", "latency"], pair["gateway-lib", "latency"]
        except KeyError:
            continue
        paced = ll.cpu_per_event() / gl.cpu_per_event()
        print(
            f"  {level.streams:>5} streams: CPU/event {paced:.2f}x"
            f" paced, {lt.cpu_per_event() / gt.cpu_per_event():.2f}x unpaced; "
            f"events/s unpaced {lt.rate / gt.rate:.2f}x"
        )


def held(workdir: Path, streams: int, hold: float) -> None:
    """Part 2: memory per held stream, and the upstream when the clients leave."""
    rows: list[bench_held_streams.Held] = []
    for name in ("gateway-lib", "litellm"):
        with procs.sim_proc(workdir, f"sim-{name}") as sim:
            upstream = f"http://127.0.0.1:{sim.port}/v1"
            server = (
                litellm_proc(workdir, upstream)
                if name == "litellm"
                else procs.gateway_proc(workdir, upstream, library=True)
            )
            with server:
                rows.append(
                    bench_held_streams.hold_streams(
                        workdir,
                        server,
                        name,
                        streams=streams,
                        clients=2,
                        hold=hold,
                        token_interval=30.0,
                        connect_parallel=32,
                        sim=sim,
                        headers=AUTH if name == "litellm" else (),
                    )
                )
    print(f"\nHeld streams: {streams}, a token every 30 s, then every client leaves\n")
    print(bench_held_streams.HEADER + f" {'upstream open held/after':>25}")
    for row in rows:
        print(row.row() + f" {row.upstream_open_held!s:>16}/{row.upstream_open_after!s}")
        if row.note or row.failures:
            print(f"  {row.note} {row.failures} streams failed".strip())
    if len(rows) == 2 and rows[0].established and rows[1].established:
        per = [(r.rss_held - r.rss_before) / r.established for r in rows]
        print(f"memory per held stream, LiteLLM / gateway: {per[1] / per[0]:.2f}x")


def limits(workdir: Path) -> None:
    """Part 3: over a limit of 5, and whether the slots come back."""
    print("\nLimits: 5 streams allowed, 5 held, a 6th asked for; then the 5 leave\n")
    for name in ("gateway", *(f"litellm, {limit}" for limit in LITELLM_LIMITS)):
        with procs.sim_proc(workdir, "sim-limit") as sim:
            upstream = f"http://127.0.0.1:{sim.port}/v1"
            if name.startswith("litellm"):
                server = litellm_proc(workdir, upstream, limit=name.split(", ", 1)[1])
            else:
                server = procs.gateway_proc(workdir, upstream)
                flags = server.args
                flags[flags.index("--max-streams") + 1] = "5"
                flags[flags.index("--max-waiting") + 1] = "0"
            headers = AUTH if name.startswith("litellm") else ()
            with server:
                slow = {"tokens": 20, "first_token_latency": 0.2, "token_latency": 30.0}
                quick = {"tokens": 3, "first_token_latency": 0, "token_latency": 0}
                spec = procs.ClientSpec(
                    server.port, 5, 1000, slow, headers=headers, hold=True, connect_parallel=5
                )
                run = procs.start_clients(workdir, [spec], "limit")
                ok = bench_held_streams.wait_for(
                    lambda: procs.http_get_json(sim.port, "/bench/stats")["open"] >= 5, 60
                )
                time.sleep(0.5)
                extra = procs.ClientSpec(server.port, 1, 2000, quick, headers=headers)
                sixth_run = procs.start_clients(workdir, [extra], "limit6")
                try:
                    [sixth] = sixth_run.wait(15)
                    answer = (
                        f"status {sixth.status}, Retry-After {sixth.retry_after!r}, "
                        f"body {(sixth.failure or '')[:160]!r}"
                    )
                except RuntimeError:
                    answer = "no answer within 15 s (queued)"
                run.signal(signal.SIGUSR1)
                run.wait(60)
                t0 = time.monotonic()
                closed = bench_held_streams.wait_for(
                    lambda: procs.http_get_json(sim.port, "/bench/stats")["open"] == 0, 30
                )
                upstream_closed = time.monotonic() - t0
                again = procs.ClientSpec(server.port, 5, 3000, quick, headers=headers)
                after = procs.start_clients(workdir, [again], "limit-again").wait(60)
            print(f"{name}: 5 held: {'yes' if ok else 'NO'}; the 6th: {answer}")
            print(
                f"  after the 5 left mid-stream: upstream responses "
                f"{'closed in ' + format(upstream_closed, '.1f') + 's' if closed else 'NOT closed'}"
                f"; 5 new streams: {[r.status for r in after]}"
            )


def main() -> None:
    """Parse the flags, install LiteLLM if needed, run the three parts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default=None, help="comma-separated, of 1,100,1000 (1,100)")
    parser.add_argument("--held", type=int, default=None, help="streams held in part 2 (1,000)")
    parser.add_argument("--quick", action="store_true", help="load at 1 stream, 200 held")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold them")
    parser.add_argument("--parts", default="load,held,limits")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.streams is None:
        args.streams = "1" if args.quick else "1,100"
    if args.held is None:
        args.held = 200 if args.quick else 1000
    try:
        version = ensure_litellm(not args.no_install)
    except Unavailable as exc:
        print(f"bench_litellm: skipped: LiteLLM is not available here:\n{exc}")
        return
    procs.raise_nofile()
    print(
        f"bench_litellm: LiteLLM {version}; {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs; load average "
        f"{procs.load_average()}"
    )
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as tmp:
        workdir = Path(tmp)
        try:
            if "load" in parts:
                load(workdir, [int(n) for n in args.streams.split(",")], args.timeout)
            if "held" in parts:
                held(workdir, args.held, args.hold)
            if "limits" in parts:
                limits(workdir)
        except RuntimeError as exc:
            print(f"bench_litellm: a process failed: {exc}")
            raise SystemExit(1) from None
    print(f"\nload average after: {procs.load_average()}")


if __name__ == "__main__":
    main()
