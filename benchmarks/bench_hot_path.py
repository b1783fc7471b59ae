"""The streaming hot path, in process: CPU per event of EventStreamResponse and of streams.

Run::

    .venv/bin/python benchmarks/bench_hot_path.py                 # this checkout
    .venv/bin/python benchmarks/bench_hot_path.py --baseline ../other-worktree

Each contender runs in a process of its own (``PYTHONPATH`` set to its checkout), and
the contenders take turns in every repeat, so that a slow spell of a shared machine
falls on all of them; the figures are the process's CPU time (``time.process_time``)
over the events delivered, medians over the repeats, and ratios between contenders.

Contenders, at ``--streams`` concurrent streams (default 100), paced (one event
every 100 ms, as tokens from an LLM) and unpaced (an event per upstream read, as
fast as the reader takes them):

- ``response``: ``EventStreamResponse`` called as an ASGI app (the gateway's chat
  route without sockets): a batched pull producer, ``send`` a checkpoint, as a
  server's send that did not block. With ``--baseline``, the same against the
  other checkout (``response@baseline``).
- ``stream-task`` and ``stream-inline``: ``manager.open(producer)`` read with
  ``batches()``, the producer in a task of its own, and in single-reader mode
  (``inline=True``: the reader's task pulls; this checkout only).

No sockets, no HTTP: what is measured is streammgr's own per-event work and the
Trio machinery it uses (tasks, channels, cancel scopes, timers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# -- one contender, in its own process ----------------------------------------------------


async def _upstream(tokens: int, interval: float) -> AsyncIterator[list[bytes]]:
    """An upstream read per token: one SSE event each (a checkpoint when unpaced)."""
    event = b'data: {"choices":[{"delta":{"content":"token"}}]}\n\n'
    for _ in range(tokens):
        if interval:
            await trio.sleep(interval)
        else:
            await trio.lowlevel.checkpoint()
        yield [event]


def _join(batch: list[bytes]) -> bytes:
    return b"".join(batch)


async def _run_responses(streams: int, tokens: int, interval: float) -> tuple[float, int]:
    import streammgr
    from streammgr.server import EventStreamResponse

    producer = streammgr.batched(_upstream)
    delivered = 0

    async def send(message: Any) -> None:
        nonlocal delivered
        if message["type"] == "http.response.body" and message["body"]:
            delivered += 1
        await trio.lowlevel.checkpoint()

    async def receive() -> Any:
        await trio.sleep_forever()

    async with streammgr.StreamManager() as manager:
        started = time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                response = EventStreamResponse(
                    manager, producer, tokens, interval, encode=_join, answer_within=0
                )
                nursery.start_soon(response, {"type": "http"}, receive, send)
        cpu = time.process_time() - started
    return cpu, delivered - streams  # less the keep-alive with the headers


async def _run_streams(
    streams: int, tokens: int, interval: float, inline: bool
) -> tuple[float, int]:
    import streammgr

    producer = streammgr.batched(_upstream)
    delivered = 0

    async def read(manager: streammgr.StreamManager) -> None:
        nonlocal delivered
        stream = manager.open(producer, tokens, interval, inline=inline)
        async with stream:
            async for batch in stream.batches():
                delivered += len(batch)
                await trio.lowlevel.checkpoint()  # the reader's write

    async with streammgr.StreamManager() as manager:
        started = time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(read, manager)
        cpu = time.process_time() - started
    return cpu, delivered


def _inner(kind: str, streams: int, tokens: int, interval: float) -> None:
    import logging

    import structlog

    # As production runs it: info lines filtered out.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if kind == "response":
        cpu, events = trio.run(_run_responses, streams, tokens, interval)
    else:
        cpu, events = trio.run(_run_streams, streams, tokens, interval, kind == "stream-inline")
    print(json.dumps({"cpu": cpu, "events": events}))


# -- the orchestrator --------------------------------------------------------------------


def _measure(checkout: Path, kind: str, streams: int, tokens: int, interval: float) -> float:
    """CPU microseconds per event of one contender, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    args = [sys.executable, str(HERE / "bench_hot_path.py"), "--inner", kind]
    args += ["--streams", str(streams), "--tokens", str(tokens), "--interval", str(interval)]
    done = subprocess.run(args, env=env, cwd=checkout, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return float(1e6 * figures["cpu"] / figures["events"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout")
    parser.add_argument("--inner", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.inner is not None:
        _inner(options.inner, options.streams, options.tokens, options.interval)
        return
    contenders: list[tuple[str, Path, str]] = [("response", ROOT, "response")]
    if options.baseline is not None:
        contenders.append(("response@baseline", options.baseline.resolve(), "response"))
    contenders += [("stream-task", ROOT, "stream-task"), ("stream-inline", ROOT, "stream-inline")]
    phases = {"paced 100 ms": (30, 0.1), "unpaced": (300, 0.0)}
    results: dict[tuple[str, str], list[float]] = {}
    print(
        f"bench_hot_path: {options.streams} streams, {options.repeats} repeats, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for repeat in range(options.repeats):
        for phase, (tokens, interval) in phases.items():
            for name, checkout, kind in contenders:
                figure = _measure(checkout, kind, options.streams, tokens, interval)
                results.setdefault((name, phase), []).append(figure)
        print(f"  repeat {repeat + 1}: done", flush=True)
    print()
    print(f"{'contender':<20} {'phase':<14} {'CPU/event median':>17} {'range':>20}")
    for (name, phase), figures in results.items():
        low, high = min(figures), max(figures)
        print(
            f"{name:<20} {phase:<14} {statistics.median(figures):>14.1f} us "
            f"{low:>8.1f}-{high:.1f} us"
        )
    print()
    pairs = [("stream-inline", "stream-task")]
    if options.baseline is not None:
        pairs.insert(0, ("response", "response@baseline"))
    for phase in phases:
        for new, old in pairs:
            ratios = [
                a / b for a, b in zip(results[(new, phase)], results[(old, phase)], strict=True)
            ]
            print(
                f"{new} / {old}, {phase}: {statistics.median(ratios):.2f}x "
                f"(per repeat {min(ratios):.2f}-{max(ratios):.2f}x)"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
