"""Memory a held chat stream keeps in the service's ASGI app, in-process: no sockets.

Run it with::

    .venv/bin/python benchmarks/bench_app_memory.py                       # this checkout
    .venv/bin/python benchmarks/bench_app_memory.py --baseline ../main     # and another one

``build_service_app`` (or ``--app gateway``: ``gateway_app`` alone) is called directly
with ASGI messages for ``--streams`` streaming chat requests, in front of an
``httpx.MockTransport`` upstream that sends one chunk and then holds every answer open;
once every stream has written that chunk, tracemalloc (from after a warm-up) gives the
growth per held stream, by line, and ``gc.get_objects()`` the gc-tracked objects per
held stream, by type. No hypercorn, no httpcore connection: what is left is the app's
own layers (routing, guards, request id, access log), the streaming response and the
manager. Memory is counted, not timed: a loaded machine gives the same figures.

Each checkout runs in its own process (``PYTHONPATH`` set to it), one after the other.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import os
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASE = "http://upstream.local/v1"
CHAT = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()
WARM_UP = 20


async def _measure(streams: int, app_kind: str, lines: int) -> dict[str, Any]:
    import httpx
    import trio
    import trio.testing

    from streammgr import StreamManager
    from streammgr.server import ServiceOptions, build_service_app, gateway_app

    release = trio.Event()

    class Held(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            await release.wait()
            yield b"data: [DONE]\n\n"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Held())

    written = 0
    due = trio.Event()
    target = 0

    async def one(app: Any) -> None:
        inbox_in, inbox = trio.open_memory_channel[dict[str, Any]](math.inf)
        inbox_in.send_nowait({"type": "http.request", "body": CHAT, "more_body": False})
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "root_path": "",
            "query_string": b"",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"content-type", b"application/json"),
                (b"authorization", b"Bearer sk-bench"),
            ],
            "state": {},
        }

        async def send(message: dict[str, Any]) -> None:
            nonlocal written
            if message["type"] == "http.response.body" and b"hi" in message.get("body", b""):
                written += 1
                if written == target:
                    due.set()

        await app(scope, inbox.receive, send)

    manager = StreamManager(max_streams=streams * 2, max_streams_per_key=streams * 2)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as upstream:
        if app_kind == "service":
            app = build_service_app(
                manager, upstream, ServiceOptions(upstream_url=BASE, keep_alive=None)
            )
            lifespan: AbstractAsyncContextManager[Any] = _lifespan(app)
        else:
            app = gateway_app(manager, upstream, upstream_url=BASE, keep_alive=None)
            lifespan = manager
        async with lifespan, trio.open_nursery() as nursery:
            target = WARM_UP
            for _ in range(WARM_UP):
                nursery.start_soon(one, app)
            await due.wait()
            gc.collect()
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
            types_before = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            due, target = trio.Event(), WARM_UP + streams
            for _ in range(streams):
                nursery.start_soon(one, app)
            await due.wait()
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            after = tracemalloc.take_snapshot()
            types_after = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            tracemalloc.stop()
            release.set()
    stats = after.compare_to(before, "lineno")
    growth = types_after - types_before
    return {
        "kib": sum(stat.size_diff for stat in stats) / streams / 1024,
        "objects": sum(growth.values()) / streams,
        "lines": [
            (stat.size_diff / streams, _where(stat.traceback[0].filename, stat.traceback[0].lineno))
            for stat in stats[:lines]
        ],
        "types": [(name, count / streams) for name, count in growth.most_common(12)],
    }


def _where(filename: str, lineno: int) -> str:
    """``package/file.py:line``, without the checkout's or the venv's prefix."""
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "streammgr" in parts:
        parts = parts[len(parts) - 1 - parts[::-1].index("streammgr") :]
    return "/".join(parts[-4:]) + f":{lineno}"


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """The app's ASGI lifespan, started and stopped around the measure."""
    import trio

    to_app, inbox = trio.open_memory_channel[dict[str, Any]](math.inf)
    from_app, outbox = trio.open_memory_channel[dict[str, Any]](math.inf)
    async with trio.open_nursery() as nursery:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        nursery.start_soon(app, scope, inbox.receive, from_app.send)
        await to_app.send({"type": "lifespan.startup"})
        started = await outbox.receive()
        assert started["type"] == "lifespan.startup.complete", started
        yield
        await to_app.send({"type": "lifespan.shutdown"})
        await outbox.receive()


def child(streams: int, app_kind: str, lines: int) -> int:
    """Measure this process's checkout; print the result as JSON."""
    import trio

    print(json.dumps(trio.run(_measure, streams, app_kind, lines)))
    return 0


def run_checkout(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One checkout's figures, measured in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, str(HERE / "bench_app_memory.py"), "child"]
    command += [str(args.streams), args.app, str(args.lines)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measure of {root} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    """Parse the flags, measure each checkout, print the table."""
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        return child(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300, help="held streams (300)")
    parser.add_argument("--app", choices=["service", "gateway"], default="service")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure too")
    parser.add_argument("--lines", type=int, default=25, help="largest lines shown")
    args = parser.parse_args()
    checkouts = [HERE.parent] + ([args.baseline.resolve()] if args.baseline else [])
    results = {str(root): run_checkout(root, args) for root in checkouts}
    print(f"{args.streams} held streams through {args.app}, in-process (per held stream):")
    for root, result in results.items():
        print(f"\n{root}: {result['kib']:.2f} KiB, {result['objects']:.1f} gc-tracked objects")
        for size, where in result["lines"]:
            print(f"  {size:>7.0f} B  {where}")
        print("  objects: " + ", ".join(f"{name} {count:.1f}" for name, count in result["types"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
