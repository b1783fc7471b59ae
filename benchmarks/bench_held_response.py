"""What one held streaming response keeps: Python allocations and gc-tracked objects.

Run it with::

    .venv/bin/python benchmarks/bench_held_response.py                        # this tree
    .venv/bin/python benchmarks/bench_held_response.py --baseline /work/main   # both, in turns

One process per run (``probe``): an :class:`~streammgr.server.EventStreamResponse` behind
a Starlette route, served by :func:`streammgr.server.serve` on loopback, whose producer
never yields (a held idle stream: headers and a keep-alive, then nothing); raw TCP
clients in the same process open ``--streams`` of them and hold them. After a warm-up,
the growth from before to held (``gc.collect()`` first, tracemalloc one frame deep) per
held stream: KiB, gc-tracked objects, and the object types that grew most. The client
sockets are in the figures (the same for every tree); no upstream, no gateway: only
what the response, the manager and the server keep. With ``--baseline DIR`` the trees
take turns (``--repeats`` each), each probe importing its tree's ``streammgr``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import math
import os
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent


async def _forever() -> AsyncIterator[str]:
    await trio.sleep(math.inf)  # held until the client leaves
    yield "never"


async def _probe(streams: int) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from streammgr import StreamManager
    from streammgr.server import EventStreamResponse, serve

    async with StreamManager() as manager:

        async def endpoint(request: Request) -> EventStreamResponse:
            return EventStreamResponse(manager, _forever, answer_within=0)

        app = Starlette(routes=[Route("/s", endpoint)])
        stop = trio.Event()

        async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(app, port=0, shutdown_trigger=stop.wait, task_status=task_status)

        async with trio.open_nursery() as nursery:
            (url,) = await nursery.start(run_server)
            port = int(url.rpartition(":")[2])

            async def client(held: list[trio.SocketStream]) -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET /s HTTP/1.1\r\nhost: bench\r\n\r\n")
                received = b""
                while b"keep-alive" not in received:
                    received += await stream.receive_some(4096)
                held.append(stream)

            async def open_many(count: int) -> list[trio.SocketStream]:
                held: list[trio.SocketStream] = []
                async with trio.open_nursery() as clients:
                    for _ in range(count):
                        clients.start_soon(client, held)
                return held

            for stream in await open_many(20):  # warm-up
                await stream.aclose()
            await trio.sleep(0.5)  # the warm-up's connections close (nothing to wait on)
            gc.collect()
            tracemalloc.start(1)
            before = collections.Counter(type(item).__name__ for item in gc.get_objects())
            first = tracemalloc.take_snapshot()
            held = await open_many(streams)
            gc.collect()
            second = tracemalloc.take_snapshot()
            after = collections.Counter(type(item).__name__ for item in gc.get_objects())
            grown = after - before
            size = sum(stat.size_diff for stat in second.compare_to(first, "filename"))
            count = len(held)
            top = ", ".join(f"{name} {n / count:.1f}" for name, n in grown.most_common(8))
            print(
                f"{size / count / 1024:6.2f} KiB {sum(grown.values()) / count:6.1f} objects"
                f"  ({count} held; most: {top})"
            )
            for stream in held:
                await stream.aclose()
            stop.set()


def main() -> int:
    """Run the probes (or be one)."""
    if len(sys.argv) > 2 and sys.argv[1] == "probe":
        trio.run(_probe, int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300, help="held at once (300)")
    parser.add_argument("--baseline", type=Path, help="another checkout, taking turns")
    parser.add_argument("--repeats", type=int, default=2, help="runs per tree (2)")
    args = parser.parse_args()
    trees = [HERE.parent] + ([args.baseline.resolve()] if args.baseline else [])
    print(f"per held response, {args.streams} held, served by streammgr.server.serve")
    for repeat in range(args.repeats):
        for tree in trees if repeat % 2 == 0 else trees[::-1]:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            result = subprocess.run(
                [sys.executable, __file__, "probe", str(args.streams)],
                env=env,
                cwd=tree,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            line = result.stdout.strip() or result.stderr.strip().splitlines()[-1]
            print(f"  {tree!s:<24} {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
