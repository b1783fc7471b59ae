"""The gateway's WebSocket chat route: one message per upstream read, against one per chunk.

Run it with::

    .venv/bin/python benchmarks/bench_chat_ws.py [--quick]

The gateway (``gateway_app``) is served by ``streammgr.server.serve`` on 127.0.0.1;
its upstream is an ``httpx.MockTransport`` whose body is a pre-built chat completion
(a role chunk, ``CHUNKS`` content chunks, a finish and a usage chunk, ``[DONE]``)
handed out ``per_read`` events at a time, as TCP reads would. A trio-websocket
client sends ``chat.request`` and reads until the final message. Rows:

1. the SSE route (``POST /v1/chat/completions``, ``stream: true``, read with httpx),
   10 events per read, for reference: it forwards the upstream's bytes;
2. ``/v1/chat/ws``, 10 events per read: one ``chat.response`` per read (as built);
3. ``/v1/chat/ws``, 1 event per read: one ``chat.response`` per chunk (a hand-off,
   an encode and a write each, and an upstream read each);
4. the SSE route, 1 event per read: its own cost of a write (and a read) per chunk.

Printed: the median of several repeats per row (chunks/s) and the ratios 3/2 and
4/1: what a message per chunk would cost the WebSocket route, next to what a write
per chunk costs the SSE route. One run, one machine, loopback: compare ratios, not
absolute figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from contextlib import AsyncExitStack
from functools import partial

import httpx
import trio
from hypercorn.config import Config
from trio_websocket import open_websocket_url

from streammgr import StreamManager
from streammgr.server import gateway_app, serve

CHUNKS = 2000
BASE = "http://bench.local/v1"


def _events() -> list[bytes]:
    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": f"word{number} "}) for number in range(CHUNKS)]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 1, "completion_tokens": CHUNKS, "total_tokens": CHUNKS + 1}
    events.append(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class _Body(httpx.AsyncByteStream):
    def __init__(self, reads: list[bytes]) -> None:
        self._reads = iter(reads)

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        try:
            return next(self._reads)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        pass


def _transport(per_read: int) -> httpx.MockTransport:
    events = _events()
    reads = [b"".join(events[at : at + per_read]) for at in range(0, len(events), per_read)]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Body(reads)
        )

    return httpx.MockTransport(answer)


async def _ws_once(url: str) -> int:
    request = {"type": "chat.request", "model": "m", "messages": [{"role": "user", "content": "x"}]}
    async with open_websocket_url(url.replace("http", "ws", 1) + "/v1/chat/ws") as ws:
        await ws.send_message(json.dumps(request))
        words = 0
        while True:
            message = json.loads(await ws.get_message())
            if message.get("done"):
                assert message["finish_reason"] == "stop", message
                return words
            words += message["delta"].get("content", "").count("word")


async def _sse_once(url: str) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{url}/v1/chat/completions", json=body)
    return answer.text.count("word")


async def main(repeats: int) -> None:
    config = Config()
    config.accesslog = None
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    rows = {
        "1 SSE route, 10 events/read": (10, _sse_once),
        "2 WS route, 10 events/read": (10, _ws_once),
        "3 WS route, 1 event/read": (1, _ws_once),
        "4 SSE route, 1 event/read": (1, _sse_once),
    }
    timings: dict[str, list[float]] = {name: [] for name in rows}
    async with AsyncExitStack() as stack:
        # The servers' nursery first: each manager is left before it (stop is set by then).
        nursery = await stack.enter_async_context(trio.open_nursery())
        servers = {}
        stop = trio.Event()
        for name, (per_read, _) in rows.items():
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=_transport(per_read))
            )
            manager = await stack.enter_async_context(StreamManager())
            app = gateway_app(manager, http, upstream_url=BASE)
            (servers[name],) = await nursery.start(
                partial(serve, app, port=0, shutdown_trigger=stop.wait, config=config)
            )
        for name, (_, once) in rows.items():  # warm up, and check every row delivers all
            assert await once(servers[name]) == CHUNKS, name
        for _ in range(repeats):
            for name, (_, once) in rows.items():
                start = time.perf_counter()
                await once(servers[name])
                timings[name].append(time.perf_counter() - start)
        stop.set()
    print(f"{CHUNKS} content chunks per answer, median of {repeats} repeats")
    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name, seconds in medians.items():
        print(f"  {name:32} {CHUNKS / seconds:>10,.0f} chunks/s")
    ratio = medians["3 WS route, 1 event/read"] / medians["2 WS route, 10 events/read"]
    print(f"  time per answer, WS, a read per chunk / a read per 10 (3/2): {ratio:.2f}x")
    sse = medians["4 SSE route, 1 event/read"] / medians["1 SSE route, 10 events/read"]
    print(f"  the same for the SSE route, which writes per read too (4/1): {sse:.2f}x")


async def _run(arguments: argparse.Namespace) -> None:
    await main(3 if arguments.quick else 15)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    trio.run(_run, parser.parse_args())
