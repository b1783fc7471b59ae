"""Client connections under ``streammgr.server.serve``: how long a request may take to
arrive (``body_timeout``: a 408 and a closed connection), a client that leaves behind a
pipelined request, and keep-alive (a connection on which a request has begun to arrive
is never closed as idle).

Real loopback sockets: what is under test is the server's network path. Every wait is
bounded and ends when what it waits for happens.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from streammgr import StreamManager
from streammgr.server import (
    ServiceOptions,
    admin_app,
    build_service_app,
    serve,
    serve_service,
)
from streammgr.simulate import SimulatedTransport
from streammgr.testing import FdBaseline

from .server_helpers import (
    PATIENCE,
    CloseWatcher,
    RawResponse,
    fast_upstream,
    quiet_hypercorn,
    running_service,
)

CHAT = "/v1/chat/completions"


def chat_body(**simulate: object) -> bytes:
    body: dict[str, object] = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    if simulate:
        body["streammgr_simulate"] = simulate
    return json.dumps(body).encode()


def request_head(method: str, path: str, *, length: int | None = None, extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: localhost\r\n"
    if length is not None:
        head += f"content-type: application/json\r\ncontent-length: {length}\r\n"
    return (head + extra + "\r\n").encode()


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def until_closed(
    stream: trio.SocketStream, since: float | None = None
) -> tuple[bytes, float]:
    """Read until the server closes; return what came and the seconds it took (from
    ``since``, else from now)."""
    started = trio.current_time() if since is None else since
    received = b""
    with trio.fail_after(PATIENCE):
        while True:
            try:
                data = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    await stream.aclose()
    return received, trio.current_time() - started


@asynccontextmanager
async def service(nursery: trio.Nursery, **serve_options: Any) -> AsyncIterator[int]:
    """The whole service (gateway, WebSocket route, inspection API at /admin) under
    ``serve_service`` on a free port; yields the port, stops at the end."""
    manager = StreamManager()  # the service's lifespan runs it
    options = ServiceOptions(upstream_url="http://sim/v1")
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as http:
        admin = admin_app(manager, token=None, prefix="")
        app = build_service_app(manager, http, options, admin=admin)
        stop, stopped = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve_service(
                    app,
                    manager,
                    port=0,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                    **serve_options,
                )
            finally:
                stopped.set()

        (url,) = await nursery.start(run)
        yield int(url.rpartition(":")[2])
        stop.set()
        with trio.fail_after(PATIENCE):
            await stopped.wait()


# --- 4. body_timeout: the whole request must arrive within it ----------------------------

STALLED = [
    pytest.param(request_head("POST", CHAT, length=1000) + b"{", id="chat-body"),
    pytest.param(request_head("PUT", "/admin/limits", length=1000) + b"{", id="admin-body"),
    pytest.param(
        b"GET /v1/chat/ws HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\n",
        id="websocket-handshake",
    ),
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nhost: loc", id="headers"),
]


@pytest.mark.parametrize("sent", STALLED)
async def test_a_stalled_request_gets_408_and_its_connection_closed_within_the_bound(
    nursery: trio.Nursery, sent: bytes
) -> None:
    baseline = FdBaseline.take()
    async with service(nursery, body_timeout=0.5) as port:
        # Each connection's time runs from its connect (the server's from its accept):
        # on a loaded machine, connecting and sending to five can take longer than the
        # bound itself.
        clients = []
        for _ in range(5):
            connected_at = trio.current_time()
            clients.append((await connect(port), connected_at))
        for client, _ in clients:
            await client.send_all(sent)
        results: list[tuple[bytes, float]] = []
        async with trio.open_nursery() as readers:
            for client, connected_at in clients:

                async def read(
                    client: trio.SocketStream = client, since: float = connected_at
                ) -> None:
                    results.append(await until_closed(client, since))

                readers.start_soon(read)
    for received, took in results:
        assert received.startswith(b"HTTP/1.1 408 "), received
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower()
        assert b"--body-timeout" in body
        assert 0.4 <= took < 0.5 + 3.0  # the bound, and a margin for a loaded machine
    baseline.check()


async def test_a_silent_connection_is_closed_without_an_answer(nursery: trio.Nursery) -> None:
    async with service(nursery, body_timeout=0.5) as port:
        received, took = await until_closed(await connect(port))
    assert received == b""
    assert took < 0.5 + 3.0


async def test_a_slow_but_steady_request_within_the_bound_is_answered(
    nursery: trio.Nursery,
) -> None:
    async with service(nursery, body_timeout=2.0) as port:
        body = chat_body(tokens=2, first_token_latency=0, token_latency=0)
        client = await connect(port)
        await client.send_all(request_head("POST", CHAT, length=len(body)))
        for offset in range(0, len(body), 16):
            await trio.sleep(0.01)  # pacing the client: a body arriving over ~0.1 s
            await client.send_all(body[offset : offset + 16])
        response = RawResponse(client)
        await response.until(lambda r: b"data: [DONE]" in r.body)
        assert response.status == 200
        await client.aclose()


async def test_a_bad_body_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="body_timeout"):
        await serve(fast_upstream(), port=0, body_timeout=-1)


async def test_a_body_sent_in_time_but_read_late_by_a_slow_app_is_not_refused(
    nursery: trio.Nursery,
) -> None:
    # hypercorn stops reading while the app's queue (10 messages) is full; the rest of
    # a body that arrived in time then waits in the socket past the deadline.
    started = trio.Event()
    received: list[bytes] = []

    async def slow_reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        started.set()
        await trio.sleep(0.6)  # a slow app, past the 0.3 s bound
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    stop = trio.Event()
    (url,) = await nursery.start(
        partial(
            serve,
            slow_reader,
            port=0,
            body_timeout=0.3,
            shutdown_trigger=stop.wait,
            config=quiet_hypercorn(),
        )
    )
    chunks = b"".join(b"1\r\nx\r\n" for _ in range(20))
    head = "POST / HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
    async with await connect(int(url.rpartition(":")[2])) as client:
        await client.send_all(head.encode() + chunks)
        with trio.fail_after(PATIENCE):
            await started.wait()
        await client.send_all(chunks + b"0\r\n\r\n")  # within the bound
        response = RawResponse(client)
        await response.until(lambda r: r.body.endswith(b"ok") or b"0\r\n\r\n" in r.body)
    assert response.status == 200
    assert b"".join(received) == b"x" * 40
    stop.set()


async def test_a_stalled_http2_request_body_closes_its_connection_within_the_bound(
    nursery: trio.Nursery,
) -> None:
    # h2c with prior knowledge: any client can switch to HTTP/2, so the bound holds there.
    import h2.config
    import h2.connection

    baseline = FdBaseline.take()
    # The service also stops within PATIENCE: the gateway's answer to the closed
    # stream waited for ever in hypercorn's HTTP/2 sender (until graceful_timeout).
    async with service(nursery, body_timeout=0.5) as port:
        http2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        http2.initiate_connection()
        headers = [
            (":method", "POST"),
            (":path", CHAT),
            (":scheme", "http"),
            (":authority", "localhost"),
            ("content-type", "application/json"),
            ("content-length", "1000"),
        ]
        http2.send_headers(1, headers)
        http2.send_data(1, b"{")
        client = await connect(port)
        await client.send_all(http2.data_to_send())
        _, took = await until_closed(client)
    assert 0.4 <= took < 0.5 + 3.0
    baseline.check()


# --- 7. a pipelined request behind a stream, then the client leaves ---------------------


async def test_a_client_that_pipelines_behind_a_stream_then_closes_is_seen_at_once(
    nursery: trio.Nursery,
) -> None:
    manager = StreamManager()  # the service's lifespan runs it
    options = ServiceOptions(upstream_url="http://sim/v1")
    async with running_service(nursery, manager, options) as (server, _):
        watcher = CloseWatcher(manager)
        await nursery.start(watcher.run)
        if True:
            # A stream that sends its first token, then nothing for a minute: only the
            # keep-alive comments (every 15 s) would write to the connection.
            quiet = chat_body(fault="stall_mid_stream", fault_after=1, stall=60)
            second = chat_body(tokens=1)
            client = await connect(server.port)
            await client.send_all(
                request_head("POST", CHAT, length=len(quiet))
                + quiet
                + request_head("POST", CHAT, length=len(second))
                + second
            )
            response = RawResponse(client)
            await response.until(lambda r: b'"content"' in r.body)
            (stream,) = manager.streams()
            left = trio.current_time()
            await client.aclose()
            closed = await watcher.next_close()
            took = trio.current_time() - left
    assert closed.id == stream.id
    assert closed.close_reason == "client_disconnected"
    assert took < 2.0, f"seen after {took:.1f}s"


async def test_pipelined_requests_are_still_answered_in_order(nursery: trio.Nursery) -> None:
    async with service(nursery) as port:
        bodies = [chat_body(tokens=n, first_token_latency=0, token_latency=0) for n in (3, 1)]
        client = await connect(port)
        await client.send_all(
            b"".join(request_head("POST", CHAT, length=len(body)) + body for body in bodies)
        )
        response = RawResponse(client)
        await response.until(lambda r: r.received.count(b"data: [DONE]") == 2)
        assert response.received.count(b"HTTP/1.1 200 ") == 2
        await client.aclose()


async def test_a_pipelined_requests_clock_starts_when_the_answer_before_it_ends(
    nursery: trio.Nursery,
) -> None:
    # The second request's head came with the first; its body comes after the first
    # answer, a stream longer than body_timeout: it must not be refused at once.
    async with service(nursery, body_timeout=0.5) as port:
        first = chat_body(tokens=40, first_token_latency=0, token_latency=0.025)  # ~1 s
        second = chat_body(tokens=1, first_token_latency=0, token_latency=0)
        async with await connect(port) as client:
            await client.send_all(
                request_head("POST", CHAT, length=len(first))
                + first
                + request_head("POST", CHAT, length=len(second))
                + second[:10]
            )
            response = RawResponse(client)
            await response.until(lambda r: b"data: [DONE]" in r.body)
            # The server (in this process) waits for the rest of the second body now.
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(second[10:])
            await response.until(lambda r: r.received.count(b"data: [DONE]") == 2)
        assert response.received.count(b"HTTP/1.1 200 ") == 2


# --- 19. keep-alive: never close a connection a request is arriving on -------------------


async def answered_once(client: trio.SocketStream) -> None:
    """One ``GET /v1/models`` on ``client``, its answer read whole."""
    await client.send_all(request_head("GET", "/v1/models"))
    response = RawResponse(client)

    def whole(r: RawResponse) -> bool:
        if b"\r\n\r\n" not in r.received:
            return False
        if "content-length" in r.headers:
            return len(r.body) >= int(r.headers["content-length"])
        return r.body.endswith(b"0\r\n\r\n")  # chunked

    await response.until(whole)
    assert response.status == 200


async def test_a_request_arriving_when_keep_alive_expires_is_answered(
    nursery: trio.Nursery,
) -> None:
    # hypercorn closes an idle connection at keep_alive_timeout even when half of the
    # next request has arrived (it is idle until a request's headers are complete).
    async with service(nursery, keep_alive_timeout=0.3, body_timeout=PATIENCE) as port:
        arriving = await connect(port)
        await answered_once(arriving)
        await arriving.send_all(b"GET /v1/models HTTP/1.1\r\n")  # the rest comes later
        # A second connection idle from a later moment: once the server closed it, the
        # first one's keep-alive has expired too.
        later = await connect(port)
        await answered_once(later)
        received, _ = await until_closed(later)
        assert received == b""
        await arriving.send_all(b"host: localhost\r\n\r\n")
        response = RawResponse(arriving)
        await response.until(lambda r: b"\r\n\r\n" in r.received)
        assert response.status == 200
        await arriving.aclose()


async def test_requests_that_arrived_while_the_loop_was_blocked_past_keep_alive_are_answered(
    nursery: trio.Nursery,
) -> None:
    # The soak's lost answers (2 in 93,001, the CPU overloaded): a request arrives on an
    # idle connection while the server's loop is busy, and the loop next runs after the
    # keep-alive deadline. hypercorn's idle timer and its reader were then woken in the
    # same batch, in an order trio randomises: half the time the timer closed the
    # connection with the request unread in the socket.
    async with service(nursery, keep_alive_timeout=0.2) as port:
        plain = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        clients = [trio.SocketStream(trio.socket.from_stdlib_socket(sock)) for sock in plain]
        for client in clients:
            await answered_once(client)
        blocked_until = time.monotonic() + 0.4
        for sock in plain:
            sock.send(request_head("GET", "/v1/models"))  # in the kernel at once, no await
        # What is under test: the loop blocked (as a CPU-starved server's is) while
        # the requests sit in the sockets and the keep-alive deadline passes.
        while time.monotonic() < blocked_until:
            time.sleep(0.01)  # noqa: ASYNC251 - the loop blocked is what is tested
        answered = 0
        for client in clients:
            response = RawResponse(client)
            try:
                await response.until(lambda r: b"\r\n\r\n" in r.received)
                answered += response.status == 200
            except (AssertionError, trio.BrokenResourceError):
                pass  # closed (or reset: the request unread) without an answer
            finally:
                await client.aclose()
    assert answered == len(clients)


def test_the_services_keep_alive_outlasts_common_clients_pools() -> None:
    # httpx (so the openai SDK) expires an idle pooled connection after 5 s, Node's
    # fetch (undici) after 4 s: the server must keep it longer, so that the client,
    # not the server, ends an idle connection (no request sent as the server closes).
    import inspect

    default = inspect.signature(serve_service).parameters["keep_alive_timeout"].default
    pool_expiry = httpx.Limits().keepalive_expiry
    assert pool_expiry is not None
    assert default >= 60 > pool_expiry
    assert inspect.signature(serve).parameters["keep_alive_timeout"].default == default


async def test_serve_keeps_an_idle_connection_for_keep_alive_timeout(
    nursery: trio.Nursery,
) -> None:
    stop = trio.Event()
    (url,) = await nursery.start(
        partial(
            serve,
            fast_upstream(),
            port=0,
            keep_alive_timeout=0.3,
            shutdown_trigger=stop.wait,
            config=quiet_hypercorn(),
        )
    )
    client = await connect(int(url.rpartition(":")[2]))
    await answered_once(client)
    received, took = await until_closed(client)
    assert received == b""
    assert 0.2 <= took < 0.3 + 3.0
    stop.set()
