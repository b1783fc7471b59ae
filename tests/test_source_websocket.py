"""WebSocketSource against trio-websocket servers and raw wsproto, in memory.

Every upstream but two runs over ``trio.testing.memory_stream_pair()``, through the
source's ``connect=`` seam: the client's TLS, handshake, reader task, close handshake
and error mapping run for real, and so does the server (trio-websocket's own
``WebSocketServer``, or wsproto driven by hand for what no server library produces
on purpose: a connection dropped without a close frame, a fragmented message, an
HTTP server that does not speak WebSocket). Only the kernel is left out, so every
test runs on the mock clock (``autojump_clock``): a 0.2 s timeout is asserted to the
instant, and takes no real time.

Two tests keep real sockets on 127.0.0.1, where the network path itself is under
test: a refused connection (the default ``connect``, trio.open_tcp_stream), and
every socket closed however a stream ends.

No test sleeps to wait for something: the server's handler sets a ``trio.Event``
when it sees the client's close frame. The tests of an early end give the source a
long ``close_timeout`` inside a ``fail_after``: the close handshake must complete,
not time out.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import pytest
import structlog.testing
import trio
import trio.lowlevel
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

import streammgr
import streammgr.sources
from streammgr import CloseReason, Phase
from streammgr._stream import is_push_producer
from streammgr.sources import WebSocketSource

from .secret_helpers import assert_no_fragment
from .server_helpers import free_port

Handler = Callable[[WebSocketRequest], Awaitable[None]]
WAIT = 5  # seconds: only a bound that turns a bug into a failure instead of a hang
LONG = 60  # seconds: a close_timeout that a test must never wait out


class Upstream:
    """What a test server saw: the handshake, the client's messages, its close."""

    def __init__(self) -> None:
        self.path = ""
        self.headers: dict[bytes, bytes] = {}
        self.subprotocols: tuple[str, ...] = ()
        self.received: list[str | bytes] = []
        self.close_code: int | None = None
        self.closed = trio.Event()

    async def accept(self, request: WebSocketRequest) -> WebSocketConnection:
        self.path = request.path
        self.headers = {name.lower(): value for name, value in request.headers}
        self.subprotocols = request.proposed_subprotocols
        chosen = self.subprotocols[0] if self.subprotocols else None
        return await request.accept(subprotocol=chosen)

    async def send_then_read(self, ws: WebSocketConnection, messages: list[str]) -> None:
        """Send ``messages``, then record the client's messages until it closes and
        record its close code (the client may close while messages are still going)."""
        try:
            for message in messages:
                await ws.send_message(message)
            while True:
                self.received.append(await ws.get_message())
        except ConnectionClosed as exc:
            self.close_code = int(exc.reason.code) if exc.reason is not None else None
            self.closed.set()

    async def wait_closed(self) -> int | None:
        with trio.fail_after(WAIT):
            await self.closed.wait()
        return self.close_code


class TrackedStream(trio.abc.Stream):
    """The client's end of an in-memory connection; records whether it was closed."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self._stream.aclose()


class MemoryNetwork(trio.abc.Listener[trio.abc.Stream]):
    """The network, in memory: :meth:`connect` is a source's ``connect=`` seam and
    gives it one end of a stream pair; :meth:`accept` gives a server the other."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)
        self.connected: list[tuple[str, int]] = []
        self.clients: list[TrackedStream] = []

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        self.connected.append((host, port))
        client, server = trio.testing.memory_stream_pair()
        self._send.send_nowait(server)
        self.clients.append(TrackedStream(client))
        await trio.lowlevel.checkpoint()
        return self.clients[-1]

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()


@dataclass
class Served:
    """An upstream served in memory: its URL, and sources that connect to it."""

    url: str
    network: MemoryNetwork

    def source(self, url: str | None = None, **options: Any) -> WebSocketSource:
        return WebSocketSource(url or self.url, connect=self.network.connect, **options)


@asynccontextmanager
async def serve(handler: Handler, path: str = "/feed") -> AsyncIterator[Served]:
    """trio-websocket's own server, over in-memory streams, for the block."""
    network = MemoryNetwork()
    # Typed for socket listeners; it only calls accept() and aclose().
    server = WebSocketServer(handler, [cast("trio.SocketListener", network)])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield Served(f"ws://feed.test{path}", network)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serve_raw(handler: Callable[[trio.abc.Stream], Awaitable[None]]) -> AsyncIterator[Served]:
    """A raw byte server (wsproto by hand), over in-memory streams, for the block."""
    network = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, [network])
        yield Served("ws://feed.test/raw", network)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serve_loopback(handler: Handler) -> AsyncIterator[str]:
    """A trio-websocket server on 127.0.0.1 for the block; yields its URL."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
        yield f"ws://127.0.0.1:{server.port}/feed"
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serve_raw_loopback(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """A plain TCP server on 127.0.0.1 for the block; yields a ws:// URL to it."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/raw"
        nursery.cancel_scope.cancel()


async def raw_accept(stream: trio.abc.Stream) -> WSConnection:
    """Complete a server-side WebSocket handshake by hand, with wsproto."""
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(bytes(await stream.receive_some()))
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
                return ws


async def read_all(manager: streammgr.StreamManager, source: WebSocketSource) -> list[Any]:
    items: list[Any] = []
    async with manager.open(source) as stream:
        async for item in stream:
            items.append(item)
    return items


# -- messages flow -----------------------------------------------------------------------


async def test_send_messages_reach_the_upstream_and_messages_are_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        upstream.received.append(await ws.get_message())
        upstream.received.append(await ws.get_message())
        for message in ("hello", b"\x00\x01\x02", "wörld"):
            await ws.send_message(message)
        await ws.aclose(1000)

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        source = served.source(send=['{"subscribe": "ticker"}', b"\x01binary"])
        async with manager.open(source) as stream:
            items = [item async for item in stream]
        info = manager.get(stream.id)

    assert upstream.received == ['{"subscribe": "ticker"}', b"\x01binary"]
    assert items == ["hello", b"\x00\x01\x02", "wörld"]
    assert info is not None
    assert info.close_reason is CloseReason.COMPLETED
    assert info.items == 3
    assert info.bytes == 5 + 3 + 5  # len() of each str / bytes item
    assert info.error is None


async def test_handshake_carries_path_headers_and_subprotocols(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    release = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        await release.wait()
        await ws.send_message("first")
        await ws.aclose(1000)

    async with serve(handler, path="/v1/feed?symbols=ab,cd") as served:
        source = served.source(
            subprotocols=["feed.v2", "feed.v1"],
            extra_headers={"X-Client": "streammgr-tests", "Authorization": "Bearer sk-abcdefgh123"},
        )
        async with streammgr.StreamManager() as manager, manager.open(source) as stream:
            with trio.fail_after(WAIT):
                await trio.testing.wait_all_tasks_blocked()
            # Connected, nothing delivered yet: the source told the registry.
            assert stream.info().phase is Phase.FIRST_ITEM
            release.set()
            assert [item async for item in stream] == ["first"]

    assert upstream.path == "/v1/feed?symbols=ab,cd"
    assert upstream.headers[b"x-client"] == b"streammgr-tests"
    assert upstream.headers[b"authorization"] == b"Bearer sk-abcdefgh123"
    assert upstream.subprotocols == ("feed.v2", "feed.v1")


async def test_ping_from_the_upstream_is_answered(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.ping(b"still-there?")  # returns only once the client's pong arrived
        await ws.send_message("after ping")
        await ws.aclose(1000)

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        with trio.fail_after(WAIT):
            assert await read_all(manager, served.source()) == ["after ping"]


async def test_fragmented_message_is_reassembled(autojump_clock: trio.abc.Clock) -> None:
    async def handler(stream: trio.abc.Stream) -> None:
        ws = await raw_accept(stream)
        await stream.send_all(ws.send(TextMessage(data="hel", message_finished=False)))
        await stream.send_all(ws.send(TextMessage(data="lo", message_finished=True)))
        await stream.send_all(ws.send(TextMessage(data="world")))
        await stream.receive_some()  # wait for the client's close frame

    async with serve_raw(handler) as served, streammgr.StreamManager() as manager:
        async with manager.open(served.source()) as stream:
            with trio.fail_after(WAIT):
                assert [await stream.__anext__(), await stream.__anext__()] == ["hello", "world"]


# -- ending normally and early ---------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1005])
async def test_normal_close_ends_the_iteration(code: int, autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("only")
        await ws.aclose(code)  # 1005: trio-websocket sends a close frame without a code

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        async with manager.open(served.source()) as stream:
            assert [item async for item in stream] == ["only"]
        info = manager.get(stream.id)
    assert info is not None
    assert info.close_reason is CloseReason.COMPLETED


async def test_reader_leaving_early_closes_cleanly_with_1001(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        await upstream.send_then_read(ws, [f"m{index}" for index in range(5)])

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        with structlog.testing.capture_logs() as logs, trio.fail_after(WAIT):
            async with manager.open(served.source(close_timeout=LONG)) as stream:
                async for item in stream:
                    assert item == "m0"
                    break
        # The producer finished before the block exited; the server saw a close frame,
        # and answered it: the close did not wait for close_timeout.
        assert upstream.closed.is_set()
        assert await upstream.wait_closed() == 1001
        info = manager.get(stream.id)
    assert info is not None
    assert info.close_reason is CloseReason.READER_EXIT
    assert info.items == 1
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []


async def test_manager_cancel_closes_cleanly_with_1001(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        await upstream.send_then_read(ws, ["first"])

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        with structlog.testing.capture_logs() as logs, trio.fail_after(WAIT):
            async with manager.open(served.source(close_timeout=LONG)) as stream:
                assert await stream.__anext__() == "first"
                # The producer is now waiting inside the source for the next message.
                await trio.testing.wait_all_tasks_blocked()
                assert manager.cancel(stream.id, reason="operator cut it")
                with pytest.raises(streammgr.StreamCancelled) as caught:
                    await stream.__anext__()
            assert upstream.closed.is_set()
        assert await upstream.wait_closed() == 1001
        info = manager.get(stream.id)
    assert caught.value.reason == "operator cut it"
    assert info is not None
    assert info.close_reason is CloseReason.CANCELLED
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []


async def test_manager_shutdown_closes_cleanly_with_1001(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        await upstream.send_then_read(ws, ["first"])

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        with trio.fail_after(WAIT):
            async with manager.open(served.source(close_timeout=LONG)) as stream:
                assert await stream.__anext__() == "first"
                await manager.aclose(grace=0)
                # aclose returns once the producer has finished: the close is done.
                assert upstream.closed.is_set()
                with pytest.raises(streammgr.StreamCancelled):
                    await stream.__anext__()
        assert await upstream.wait_closed() == 1001
        info = manager.get(stream.id)
    assert info is not None
    assert info.close_reason is CloseReason.SHUTDOWN


async def test_close_timeout_bounds_an_upstream_that_never_answers_the_close(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(stream: trio.abc.Stream) -> None:
        ws = await raw_accept(stream)
        await stream.send_all(ws.send(TextMessage(data="one")))
        while await stream.receive_some():  # reads the close frame, never answers it
            pass

    async with serve_raw(handler) as served:
        # The manager's own cleanup bound is far away: only close_timeout can end the wait.
        async with streammgr.StreamManager(cleanup_timeout=60) as manager:
            with structlog.testing.capture_logs() as logs, trio.fail_after(WAIT):
                started = trio.current_time()
                async with manager.open(served.source(close_timeout=0.2)) as stream:
                    async for item in stream:
                        assert item == "one"
                        break
                elapsed = trio.current_time() - started

    assert elapsed == pytest.approx(0.2)  # close_timeout, to the instant (mock clock)
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == [
        "websocket.close_timeout"
    ]


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"), [(1011, "internal failure"), (4001, "subscription expired")]
)
async def test_abnormal_close_raises_upstream_closed(
    code: int, reason: str, autojump_clock: trio.abc.Clock
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("before")
        await ws.aclose(code, reason)

    received: list[str | bytes] = []
    async with serve(handler) as served, streammgr.StreamManager() as manager:
        async with manager.open(served.source()) as stream:
            with pytest.raises(streammgr.UpstreamClosed) as caught:
                async for item in stream:
                    received.append(item)
        info = manager.get(stream.id)

    assert received == ["before"]
    assert caught.value.code == code
    assert caught.value.reason == reason
    assert str(code) in str(caught.value)
    assert caught.value.url == served.source().url
    assert info is not None
    assert info.close_reason is CloseReason.UPSTREAM_ERROR
    assert info.items == 1


async def test_connection_dropped_without_close_frame(autojump_clock: trio.abc.Clock) -> None:
    async def handler(stream: trio.abc.Stream) -> None:
        ws = await raw_accept(stream)
        await stream.send_all(ws.send(TextMessage(data="partial feed")))
        # Returning closes the TCP connection: no close frame (what the client calls 1006).

    async with serve_raw(handler) as served, streammgr.StreamManager() as manager:
        received: list[str | bytes] = []
        async with manager.open(served.source()) as stream:
            with pytest.raises(streammgr.UpstreamClosed) as caught:
                async for item in stream:
                    received.append(item)
        info = manager.get(stream.id)

    assert received == ["partial feed"]
    assert caught.value.code is None
    assert "1006" in str(caught.value)
    assert info is not None
    assert info.close_reason is CloseReason.UPSTREAM_ERROR


async def test_invalid_frame_ends_with_a_protocol_error_code(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(stream: trio.abc.Stream) -> None:
        ws = await raw_accept(stream)
        await stream.send_all(ws.send(TextMessage(data="valid")))
        await stream.send_all(b"\xf1\x02hi")  # a text frame with its reserved bits set
        while await stream.receive_some():  # keep the connection until the client leaves
            pass

    async with serve_raw(handler) as served, streammgr.StreamManager() as manager:
        received: list[str | bytes] = []
        async with manager.open(served.source()) as stream:
            with trio.fail_after(WAIT), pytest.raises(streammgr.UpstreamClosed) as caught:
                async for item in stream:
                    received.append(item)

    assert received == ["valid"]
    assert caught.value.code == 1002
    assert caught.value.reason == "Reserved bit set unexpectedly"
    assert "protocol error" in str(caught.value)


async def test_handshake_rejected_raises_status_error_with_body(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(403, body=b'{"error": "forbidden: missing scope feed:read"}')

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        async with manager.open(served.source()) as stream:
            with pytest.raises(streammgr.UpstreamStatusError) as caught:
                await stream.__anext__()
        info = manager.get(stream.id)

    assert caught.value.status_code == 403
    assert "forbidden: missing scope feed:read" in caught.value.body
    assert "403" in str(caught.value)
    assert "forbidden: missing scope feed:read" in str(caught.value)
    assert caught.value.retry_after is None
    assert info is not None
    assert info.close_reason is CloseReason.UPSTREAM_ERROR


async def test_rejection_keeps_retry_after_and_bounds_the_body(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(429, extra_headers=[(b"Retry-After", b"7")], body=b"x" * 100_000)

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        async with manager.open(served.source()) as stream:
            with pytest.raises(streammgr.UpstreamStatusError) as caught:
                await stream.__anext__()

    assert caught.value.status_code == 429
    assert caught.value.retry_after == 7.0
    assert 0 < len(caught.value.body) <= 2048
    assert len(str(caught.value)) < 1000


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            streammgr.UpstreamProtocolError,
            "200",
        ),
        (b"", streammgr.UpstreamConnectError, "without answering"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", streammgr.UpstreamProtocolError, "invalid"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", streammgr.UpstreamProtocolError, "invalid"),
    ],
    ids=["http-200", "closed", "not-http", "bad-upgrade"],
)
async def test_upstream_that_does_not_speak_websocket(
    answer: bytes, error: type[Exception], text: str, autojump_clock: trio.abc.Clock
) -> None:
    async def handler(stream: trio.abc.Stream) -> None:
        await stream.receive_some()  # the client's upgrade request
        if answer:
            await stream.send_all(answer)
            while await stream.receive_some():  # keep the connection until the client leaves
                pass

    async with serve_raw(handler) as served, streammgr.StreamManager() as manager:
        # At once: not after connect_timeout (LONG), as if the upstream were only slow.
        started = trio.current_time()
        async with manager.open(served.source(connect_timeout=LONG)) as stream:
            with trio.fail_after(WAIT), pytest.raises(error, match=text):
                await stream.__anext__()
        assert trio.current_time() == started


async def test_tls_failure_raises_connect_error_at_once(autojump_clock: trio.abc.Clock) -> None:
    async def handler(stream: trio.abc.Stream) -> None:
        await stream.receive_some()  # the TLS ClientHello
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # a plain HTTP server

    async with serve_raw(handler) as served, streammgr.StreamManager() as manager:
        source = served.source(url="wss://feed.test/raw", connect_timeout=LONG)
        started = trio.current_time()
        async with manager.open(source) as stream:
            with trio.fail_after(WAIT), pytest.raises(streammgr.UpstreamConnectError) as caught:
                await stream.__anext__()
        assert trio.current_time() == started

    assert "TLS handshake" in str(caught.value)
    assert isinstance(caught.value.__cause__, trio.BrokenResourceError)


async def test_connection_refused_raises_connect_error() -> None:
    url = f"ws://127.0.0.1:{free_port()}/feed"
    async with streammgr.StreamManager() as manager:
        async with manager.open(WebSocketSource(url)) as stream:
            with pytest.raises(streammgr.UpstreamConnectError, match="could not connect"):
                await stream.__anext__()
        info = manager.get(stream.id)
    assert info is not None
    assert info.close_reason is CloseReason.UPSTREAM_ERROR


async def test_message_over_max_message_size_closes_with_1009(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        await upstream.send_then_read(ws, ["ok", "x" * 100])

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        received: list[str | bytes] = []
        async with manager.open(served.source(max_message_size=10)) as stream:
            with pytest.raises(streammgr.UpstreamProtocolError, match="max_message_size"):
                async for item in stream:
                    received.append(item)
        assert await upstream.wait_closed() == 1009
    assert received == ["ok"]


# -- timeouts (on the mock clock: asserted to the instant) --------------------------------


async def test_idle_timeout(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        await upstream.send_then_read(ws, [])  # accepts, then never sends

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        started = trio.current_time()
        async with manager.open(served.source(idle_timeout=0.2)) as stream:
            with pytest.raises(streammgr.UpstreamIdleTimeout) as caught:
                await stream.__anext__()
        elapsed = trio.current_time() - started
        # Even when the source gives up by itself, the upstream sees a clean close.
        assert await upstream.wait_closed() == 1001
        info = manager.get(stream.id)

    assert elapsed == pytest.approx(0.2)
    assert caught.value.timeout == 0.2
    assert caught.value.phase == "idle"
    assert info is not None
    assert info.close_reason is CloseReason.UPSTREAM_IDLE_TIMEOUT


async def test_deadline(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await Upstream().send_then_read(ws, ["one"])

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        started = trio.current_time()
        received: list[str | bytes] = []
        async with manager.open(served.source(deadline=0.3)) as stream:
            with pytest.raises(streammgr.UpstreamDeadlineExceeded) as caught:
                async for item in stream:
                    received.append(item)
        elapsed = trio.current_time() - started
        info = manager.get(stream.id)

    assert received == ["one"]
    assert elapsed == pytest.approx(0.3)
    assert caught.value.timeout == 0.3
    assert info is not None
    assert info.close_reason is CloseReason.UPSTREAM_DEADLINE


async def test_connect_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await trio.sleep_forever()  # never answers the handshake

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        started = trio.current_time()
        async with manager.open(served.source(connect_timeout=0.2)) as stream:
            with pytest.raises(streammgr.UpstreamConnectTimeout) as caught:
                await stream.__anext__()
        elapsed = trio.current_time() - started
        info = manager.get(stream.id)

    assert elapsed == pytest.approx(0.2)
    assert caught.value.timeout == 0.2
    assert info is not None
    assert info.close_reason is CloseReason.UPSTREAM_CONNECT_TIMEOUT


# -- secrets, repr, arguments, optional dependency -------------------------------------------


async def test_token_in_the_url_never_shows(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: WebSocketRequest) -> None:
        # A server that echoes the credential back in its error.
        await request.reject(401, body=b"invalid token secret123 for /feed")

    async with serve(handler, path="/feed?token=secret123&channel=news") as served:
        source = served.source()
        async with streammgr.StreamManager() as manager:
            async with manager.open(source) as stream:
                with pytest.raises(streammgr.UpstreamStatusError) as caught:
                    await stream.__anext__()
            shown = [
                str(caught.value),
                repr(caught.value),
                caught.value.url,
                caught.value.body,
                repr(source),
                source.url,
                repr(manager.history()),
                repr(manager.get(stream.id)),
            ]

    assert caught.value.status_code == 401
    assert "[REDACTED]" in caught.value.body
    assert "/feed?token=[REDACTED]" in source.url
    for text in shown:
        assert "secret123" not in text


def test_repr_and_url_are_redacted() -> None:
    source = WebSocketSource(
        "wss://feed.example:8443/v1?api_key=abcd1234&token=secret123",
        extra_headers={"Authorization": "Bearer hunter2-token"},
    )
    assert repr(source) == (
        "WebSocketSource(wss://feed.example:8443/v1?api_key=[REDACTED]&token=[REDACTED])"
    )
    assert source.url in repr(source)
    assert "hunter2" not in repr(source)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"url": "http://example.com/feed"}, ValueError, "url"),
        ({"url": "ws:///no-host"}, ValueError, "url"),
        ({"url": "ws://example.com:99999/"}, ValueError, "port"),
        ({"url": "ws://user:pw@example.com/"}, ValueError, "credentials"),
        ({"url": "ws://example.com/#frag"}, ValueError, "fragment"),
        ({"url": "ws://example.com/a b"}, ValueError, "url"),
        ({"url": b"ws://example.com/"}, TypeError, "url"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout"),
        ({"idle_timeout": -1}, ValueError, "idle_timeout"),
        ({"deadline": float("inf")}, ValueError, "deadline"),
        ({"deadline": "10"}, TypeError, "deadline"),
        ({"close_timeout": None}, ValueError, "close_timeout"),
        ({"close_timeout": 0}, ValueError, "close_timeout"),
        ({"max_message_size": 0}, ValueError, "max_message_size"),
        ({"max_message_size": 1.5}, TypeError, "max_message_size"),
        ({"max_message_size": True}, TypeError, "max_message_size"),
        ({"send": "subscribe"}, TypeError, "send"),
        ({"send": [{"subscribe": 1}]}, TypeError, "send"),
        ({"subprotocols": "graphql-ws"}, TypeError, "subprotocols"),
        ({"subprotocols": ["bad protocol"]}, ValueError, "subprotocols"),
        ({"extra_headers": {"Sec-WebSocket-Protocol": "x"}}, ValueError, "extra_headers"),
        ({"extra_headers": {"Host": "evil"}}, ValueError, "extra_headers"),
        ({"extra_headers": {"X-Evil": "a\r\nInjected: 1"}}, ValueError, "extra_headers"),
        ({"extra_headers": {"Bad Name": "x"}}, ValueError, "extra_headers"),
        ({"extra_headers": [("X-Only-Name",)]}, TypeError, "extra_headers"),
        ({"secrets": "hunter2"}, TypeError, "secrets"),
        ({"ssl_context": object()}, TypeError, "ssl_context"),
        ({"connect": object()}, TypeError, "connect"),
    ],
)
def test_bad_arguments_name_the_argument(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    arguments: dict[str, Any] = {"url": "ws://example.com/feed", **kwargs}
    with pytest.raises(error, match=name):
        WebSocketSource(**arguments)


def test_ssl_context_needs_a_wss_url() -> None:
    import ssl

    with pytest.raises(ValueError, match="ssl_context"):
        WebSocketSource("ws://example.com/", ssl_context=ssl.create_default_context())
    WebSocketSource("wss://example.com/", ssl_context=ssl.create_default_context())


def test_bad_url_error_does_not_show_the_token() -> None:
    with pytest.raises(ValueError, match="ws://") as caught:
        WebSocketSource("http://example.com/feed?token=secret123")
    assert "secret123" not in str(caught.value)


def test_missing_optional_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trio_websocket", None)
    # The module itself imports without it...
    monkeypatch.delitem(sys.modules, "streammgr.sources._websocket")
    monkeypatch.setattr(streammgr.sources, "_websocket", None, raising=False)
    module = importlib.import_module("streammgr.sources._websocket")
    assert module.WebSocketSource is not WebSocketSource
    # ...and using it says what to install.
    with pytest.raises(ImportError, match=r"pip install 'streammgr\[websocket\]'"):
        module.WebSocketSource("ws://example.com/feed")


# -- the producer itself ----------------------------------------------------------------------


def test_is_a_push_producer() -> None:
    """The connection lives inside one await in the producer's task (it owns a
    nursery), never across a yield."""
    assert is_push_producer(WebSocketSource("ws://example.com/feed"))


async def test_every_socket_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """However the stream ends, the client's socket is closed, not left to the
    garbage collector (which would warn: unclosed socket)."""
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: unraisable.append(str(hook.exc_value)))

    async def normal(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("x" * 20)
        await ws.aclose(1000)

    async def failing(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.aclose(1011)

    async def rejecting(request: WebSocketRequest) -> None:
        await request.reject(403)

    async def dropping(stream: trio.SocketStream) -> None:
        await raw_accept(stream)

    async with streammgr.StreamManager() as manager:
        for handler in (normal, failing, rejecting):
            async with serve_loopback(handler) as url:
                for source in (WebSocketSource(url), WebSocketSource(url, max_message_size=10)):
                    async with manager.open(source) as stream:
                        with trio.fail_after(WAIT), contextlib.suppress(streammgr.UpstreamError):
                            _ = [item async for item in stream]
        async with (
            serve_raw_loopback(dropping) as url,
            manager.open(WebSocketSource(url)) as stream,
        ):
            with trio.fail_after(WAIT), pytest.raises(streammgr.UpstreamClosed):
                _ = [item async for item in stream]

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        gc.collect()
    assert unraisable == []


KEY32 = "kQ7vR2mX9pL4wN8sT1yB6hJ3dF5gZ0cV"  # no credential shape: known, never guessed


async def rejection(body: bytes, **options: Any) -> streammgr.UpstreamStatusError:
    """The error of a source whose handshake the upstream rejects with ``body``."""

    async def handler(request: WebSocketRequest) -> None:
        await request.reject(401, body=body)

    async with serve(handler) as served:
        source = served.source(**options)
        async with streammgr.StreamManager() as manager:
            async with manager.open(source) as stream:
                with pytest.raises(streammgr.UpstreamStatusError) as caught:
                    await stream.__anext__()
    return caught.value


@pytest.mark.parametrize("cut_into", [1, 16, 31])
async def test_a_secret_at_the_rejection_body_limit_is_redacted_whole(
    cut_into: int, autojump_clock: trio.abc.Clock
) -> None:
    before = "x" * (2048 - cut_into)
    error = await rejection(
        f"{before}{KEY32} is not a valid token".encode(),
        extra_headers={"Authorization": f"Bearer {KEY32}"},
    )
    shown = f"{before}[REDACTED] is not a valid token"[:2048]
    assert error.body == (before if cut_into < len("[REDACTED]") else shown)
    assert_no_fragment(KEY32, error.body, str(error))


async def test_the_quoted_rejection_body_splits_no_marker(autojump_clock: trio.abc.Clock) -> None:
    # The message quotes 300 characters: the marker would straddle that cut.
    error = await rejection(b"x" * 292 + KEY32.encode(), secrets=[KEY32])
    assert f": {'x' * 292}...; check the credentials" in str(error)
    assert "[RED" not in str(error)


@pytest.mark.parametrize("name", ["Session-Id", "X-Signature", "X-Passwd", "X-Goog-Credential"])
async def test_credential_headers_are_scrubbed(name: str, autojump_clock: trio.abc.Clock) -> None:
    error = await rejection(f"unknown {name}: {KEY32}".encode(), extra_headers={name: KEY32})
    assert error.body == f"unknown {name}: [REDACTED]"


def test_encoded_secrets_in_the_url_are_redacted() -> None:
    source = WebSocketSource(
        "wss://feed.example/v1/ab%2Bcd%2Fef42?ch=fx&sig=Q%2Bq%2Fq%3D",
        secrets=["ab+cd/ef42"],
    )
    # Every query value of 4 characters or more is taken for a secret; "fx" is not.
    assert source.url == "wss://feed.example/v1/[REDACTED]?ch=fx&sig=[REDACTED]"
    assert source.url in repr(source)


# -- the connect= seam --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address"),
    [("ws://feed.test/feed", ("feed.test", 80)), ("ws://feed.test:8080/x", ("feed.test", 8080))],
)
async def test_connect_is_given_the_host_and_port_of_the_url(
    url: str, address: tuple[str, int], autojump_clock: trio.abc.Clock
) -> None:
    upstream = Upstream()

    async def handler(request: WebSocketRequest) -> None:
        ws = await upstream.accept(request)
        await ws.send_message("hi")
        await ws.aclose(1000)

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        assert await read_all(manager, served.source(url=url)) == ["hi"]
    assert served.network.connected == [address]
    assert upstream.path == url[url.index("/", len("ws://")) :]


async def test_an_os_error_from_connect_is_a_connect_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def unreachable(host: str, port: int) -> trio.abc.Stream:
        raise OSError(113, f"No route to host {host}:{port}")

    source = WebSocketSource("ws://feed.test/feed?token=secret123", connect=unreachable)
    async with streammgr.StreamManager() as manager:
        async with manager.open(source) as stream:
            with pytest.raises(streammgr.UpstreamConnectError, match="could not connect") as caught:
                await stream.__anext__()
    assert isinstance(caught.value.__cause__, OSError)
    assert "No route to host" in str(caught.value)
    assert "secret123" not in str(caught.value)


async def test_every_in_memory_stream_is_closed(autojump_clock: trio.abc.Clock) -> None:
    """However the stream ends, the source closes the stream connect gave it."""

    async def normal(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("x" * 20)
        await ws.aclose(1000)

    async def failing(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.aclose(1011)

    async def rejecting(request: WebSocketRequest) -> None:
        await request.reject(403)

    async def dropping(stream: trio.abc.Stream) -> None:
        await raw_accept(stream)

    networks = []
    async with streammgr.StreamManager() as manager:
        for handler in (normal, failing, rejecting):
            async with serve(handler) as served:
                networks.append(served.network)
                for source in (served.source(), served.source(max_message_size=10)):
                    async with manager.open(source) as stream:
                        with trio.fail_after(WAIT), contextlib.suppress(streammgr.UpstreamError):
                            _ = [item async for item in stream]
        async with serve_raw(dropping) as served, manager.open(served.source()) as stream:
            networks.append(served.network)
            with trio.fail_after(WAIT), pytest.raises(streammgr.UpstreamClosed):
                _ = [item async for item in stream]
    clients = [client for network in networks for client in network.clients]
    assert len(clients) == 7
    assert all(client.closed for client in clients)


async def test_rejection_with_an_http_date_retry_after(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: WebSocketRequest) -> None:
        past = b"Sun, 06 Nov 1994 08:49:37 GMT"  # any clock running this test is later
        await request.reject(503, extra_headers=[(b"Retry-After", past)], body=b"busy")

    async with serve(handler) as served, streammgr.StreamManager() as manager:
        async with manager.open(served.source()) as stream:
            with pytest.raises(streammgr.UpstreamStatusError) as caught:
                await stream.__anext__()
    assert (caught.value.status_code, caught.value.retry_after) == (503, 0.0)
