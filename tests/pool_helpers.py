"""What the upstream pool tests share: an SSE upstream whose streams end when released
(so their connections may be reused) and that counts the TCP connections it accepted,
streams held on a client, and a network backend that cancels a request right after
its connection opens (encode/httpcore#1093)."""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from typing import Any

import httpcore
import httpx
import trio

from .server_helpers import PATIENCE


class HeldUpstream:
    """A raw ASGI SSE upstream: each stream sends one event, then waits to be released
    (``release``, oldest first) and ends cleanly, so its connection may be reused.
    ``connections`` holds the client address of every request: one per TCP connection
    the server accepted."""

    def __init__(self) -> None:
        self.connections: set[tuple[str, int]] = set()
        self.requests = 0
        self._released = trio.Semaphore(0)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._released.release()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.connections.add(tuple(scope["client"]))
        self.requests += 1
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await self._released.acquire()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


class Streams:
    """Streams held on ``client``: each read to its end (once released), then closed."""

    def __init__(self, nursery: trio.Nursery, client: httpx.AsyncClient, url: str) -> None:
        self._nursery = nursery
        self._client = client
        self._url = url
        self._ended_send, self.ended = trio.open_memory_channel[None](math.inf)

    async def open(self, count: int = 1) -> None:
        """Open ``count`` streams at once; return when every one has its first event."""
        started_send, started = trio.open_memory_channel[None](math.inf)
        for _ in range(count):
            self._nursery.start_soon(self._hold, started_send)
        with trio.fail_after(PATIENCE):
            for _ in range(count):
                await started.receive()

    async def wait_ended(self, count: int = 1) -> None:
        with trio.fail_after(PATIENCE):
            for _ in range(count):
                await self.ended.receive()

    async def _hold(self, started: trio.MemorySendChannel[None]) -> None:
        async with self._client.stream("GET", self._url) as response:
            chunks = response.aiter_bytes()
            assert (await chunks.__anext__()).startswith(b"data: 1")
            started.send_nowait(None)
            async for _ in chunks:
                pass
        self._ended_send.send_nowait(None)


class CancelAfterConnect(httpcore.AsyncNetworkBackend):
    """Trio's backend, cancelling (``cancel()``) the moment a connection is open."""

    def __init__(self, cancel: Callable[[], object]) -> None:
        self._inner = httpcore.TrioBackend()
        self._cancel = cancel

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(*args, **kwargs)
        self._cancel()  # delivered at the request's next checkpoint, inside httpcore
        return stream

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
