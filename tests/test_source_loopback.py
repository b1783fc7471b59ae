"""The network path itself: SSESource against hypercorn on Trio, over 127.0.0.1.

An endless SSE endpoint streams to a real httpx client through a StreamManager;
cancelling the stream mid-flight must close the TCP connection, which the server
observes as the client going away. Real time is used here (real sockets), but
nothing waits on a sleep: the test waits for events the server sets.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve

import streammgr
from streammgr import CloseReason, StreamManager
from streammgr.sources import SSESource


class EndlessFeed:
    """A raw ASGI app: ``/feed`` streams ``data: n`` forever and records when its
    client goes away; ``/gzip`` does the same under a ``Content-Encoding: gzip``
    that the body is not; ``/status`` answers 429 with a JSON error."""

    def __init__(self) -> None:
        self.connected = trio.Event()
        self.disconnected = trio.Event()
        self.sent = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/status":
            body = b'{"error": {"message": "slow down"}}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"3")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    *([(b"content-encoding", b"gzip")] if scope["path"] == "/gzip" else []),
                ],
            }
        )
        self.connected.set()
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.disconnected.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            try:
                while True:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": f"id: {self.sent}\ndata: {self.sent}\n\n".encode(),
                            "more_body": True,
                        }
                    )
                    self.sent += 1
                    await trio.sleep(0.01)  # the upstream's own pace
            except Exception:
                self.disconnected.set()  # sending to a closed connection
                nursery.cancel_scope.cancel()


async def closed_promptly(app: EndlessFeed) -> None:
    """The server saw the client go away right after the block exited.

    The garbage collector is off during these tests, so only the source's own
    close can have closed the connection; a small cushion lets the FIN arrive.
    """
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert app.disconnected.is_set()


@pytest.fixture(autouse=True)
def no_garbage_collector() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def feed(nursery: trio.Nursery) -> tuple[EndlessFeed, str]:
    app = EndlessFeed()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    binds = await nursery.start(serve, app, config)
    return app, binds[0]  # the server stops with the test's nursery


async def test_cancel_mid_flight_closes_the_connection(feed: tuple[EndlessFeed, str]) -> None:
    app, base = feed
    async with httpx.AsyncClient() as client, StreamManager() as manager:
        source = SSESource(client, f"{base}/feed")
        with pytest.raises(streammgr.StreamCancelled):
            async with manager.open(source) as stream:
                async for event in stream:
                    if event.data == "5":
                        manager.cancel(stream.id, reason="operator")
        await closed_promptly(app)
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.CANCELLED
        assert info.items == 6
        assert info.bytes > 0


async def test_reader_leaving_closes_the_connection(feed: tuple[EndlessFeed, str]) -> None:
    app, base = feed
    async with httpx.AsyncClient() as client, StreamManager() as manager:
        async with manager.open(SSESource(client, f"{base}/feed")) as stream:
            async for event in stream:
                if event.id == "2":
                    break
        await closed_promptly(app)
        sent_at_close = app.sent
        assert manager.streams() == []
    assert sent_at_close < 1000  # the upstream stopped: nobody kept it streaming


async def test_error_status_over_the_network(feed: tuple[EndlessFeed, str]) -> None:
    _, base = feed
    async with httpx.AsyncClient() as client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            async with manager.open(SSESource(client, f"{base}/status")) as stream:
                async for _ in stream:
                    pass  # pragma: no cover
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 3
    assert "slow down" in str(caught.value)


async def test_corrupt_gzip_closes_the_connection_and_every_generator(
    feed: tuple[EndlessFeed, str],
) -> None:
    app, base = feed
    async with httpx.AsyncClient() as client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamProtocolError, match="Content-Encoding") as caught:
            async with manager.open(SSESource(client, f"{base}/gzip")) as stream:
                async for _ in stream:
                    pass  # pragma: no cover
        assert isinstance(caught.value.__cause__, httpx.DecodingError)
        await closed_promptly(app)
        # A body generator left suspended (httpx's or httpcore's) would be collected
        # here, while Trio runs, and its ResourceWarning fail the test.
        gc.collect()
