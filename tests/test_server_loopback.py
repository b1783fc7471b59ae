"""EventStreamResponse in a Starlette app served by hypercorn's trio worker on 127.0.0.1.

httpx's ASGITransport buffers whole bodies, so endless streams, disconnects and
stalled clients are tested over a real socket. Real time: every wait is on an event
or a condition bounded by ``fail_after``; intervals are fractions of a second.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

import streammgr
from streammgr import CloseReason, Phase, StreamManager
from streammgr.server import EventStreamResponse, manager_lifespan

from .conftest import Probe
from .response_helpers import KEEP_ALIVE, CountingLimiter, encode_ints, forever
from .server_helpers import (
    PATIENCE,
    App,
    BodyCounter,
    CloseWatcher,
    RawResponse,
    Server,
    raw_client,
    read_until_closed,
)


def starlette_app(make: Callable[[Request], EventStreamResponse]) -> Starlette:
    async def endpoint(request: Request) -> EventStreamResponse:
        return make(request)

    return Starlette(routes=[Route("/stream", endpoint)])


@streammgr.batched
async def reads(count: int) -> AsyncIterator[list[str]]:
    for index in range(count):
        await trio.sleep(0.005)
        yield [f"{index}a", f"{index}b", f"{index}c"]


@streammgr.batched
async def flood() -> AsyncIterator[list[bytes]]:
    """Far more than socket buffers hold, as fast as the reader takes it."""
    chunk = b"data: " + b"x" * 65536 + b"\n\n"
    while True:
        await trio.lowlevel.checkpoint()
        yield [chunk]


def keep_alives(response: RawResponse) -> int:
    return response.body.count(KEEP_ALIVE)


async def serve_app(nursery: trio.Nursery, app: App, **options: Any) -> Server:
    return await Server().start(nursery, app, **options)


async def test_one_body_write_per_batch(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        counter = BodyCounter(starlette_app(lambda request: EventStreamResponse(manager, reads, 4)))
        server = await serve_app(nursery, counter)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{server.url}/stream")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    batches = [
        f"data: {index}a\n\ndata: {index}b\n\ndata: {index}c\n\n".encode() for index in range(4)
    ]
    assert counter.bodies == [*batches, b""]  # four writes, then the end of the body
    assert response.content == b"".join(batches)
    info = manager.get(response.headers["x-stream-id"])
    assert info is not None
    assert (info.close_reason, info.items) == (CloseReason.COMPLETED, 12)


async def test_nothing_is_sent_while_waiting_for_a_slot_then_the_stream(
    nursery: trio.Nursery,
) -> None:
    async with StreamManager(max_streams=1) as manager:
        app = starlette_app(
            lambda request: EventStreamResponse(
                manager, reads, 2, answer_within=PATIENCE, keep_alive=0.02
            )
        )
        server = await serve_app(nursery, app)
        async with manager.open(forever) as holder:
            response = RawResponse(await raw_client(server.port, "/stream"))
            with trio.fail_after(PATIENCE):
                while manager.stats().waiting == 0:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            manager.cancel(holder.id)  # (no byte before admission: test_server_response)
            await response.until(lambda response: b"data: 1c\n\n" in response.body)
            assert response.status == 200
            await response.stream.aclose()
            with pytest.raises(streammgr.StreamCancelled):
                async for _ in holder:
                    pass


async def test_keep_alives_before_the_first_item(nursery: trio.Nursery) -> None:
    go = trio.Event()

    async def slow_start() -> AsyncIterator[str]:
        await go.wait()
        yield "first"

    async with StreamManager() as manager:
        app = starlette_app(
            lambda request: EventStreamResponse(
                manager, slow_start, answer_within=0.01, keep_alive=0.02
            )
        )
        server = await serve_app(nursery, app)
        response = RawResponse(await raw_client(server.port, "/stream"))
        await response.until(lambda response: keep_alives(response) >= 3)
        info = manager.get(response.headers["x-stream-id"])
        assert info is not None
        assert info.phase is Phase.CONNECTING
        go.set()
        await response.until(lambda response: b"data: first\n\n" in response.body)
        await response.stream.aclose()


@pytest.mark.parametrize("spec_version", [None, "2.4"])
@pytest.mark.parametrize("phase", ["waiting_before_headers", "before_first_item", "mid_stream"])
async def test_a_client_disconnect_ends_the_stream(
    nursery: trio.Nursery, probe: Probe, phase: str, spec_version: str | None
) -> None:
    # spec_version "2.4": what the app sees if hypercorn reported it. Starlette's
    # StreamingResponse would then wait for send() to fail; the response does not.
    limiter = CountingLimiter(max_streams=1)
    interval = 1000.0 if phase == "before_first_item" else 0.005
    async with StreamManager(limiter=limiter) as manager:
        watcher = CloseWatcher(manager)
        await nursery.start(watcher.run)
        app = starlette_app(
            lambda request: EventStreamResponse(
                manager,
                probe.ticker,
                10**6,
                interval,
                answer_within=5 if phase == "waiting_before_headers" else 0,
                keep_alive=0.02,
                encode=encode_ints,
            )
        )
        server = await serve_app(nursery, BodyCounter(app, spec_version))
        holder = manager.open(forever)
        if phase.startswith("waiting"):
            await holder.__aenter__()
        response = RawResponse(await raw_client(server.port, "/stream"))
        if phase == "waiting_before_headers":
            with trio.fail_after(PATIENCE):
                while manager.stats().waiting == 0:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            assert response.received == b""
        elif phase == "mid_stream":
            await response.until(lambda response: b"data: 3\n\n" in response.body)
        else:
            await response.until(lambda response: keep_alives(response) >= 1)
        await response.stream.aclose()
        info = await watcher.next_close(besides=(holder.id,))
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert [stream.id for stream in manager.streams()] == (
            [holder.id] if phase.startswith("waiting") else []
        )
        if phase.startswith("waiting"):
            assert probe.started == 0
            await holder.__aexit__(None, None, None)
        else:
            assert (probe.started, probe.cleanups, limiter.releases) == (1, 1, 1)
            assert (info.items >= 4) is (phase == "mid_stream")
        assert limiter.snapshot().active == 0
        assert manager.streams() == []


async def test_over_the_limit_is_a_429_with_retry_after(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=1, max_waiting=0) as manager:
        app = starlette_app(lambda request: EventStreamResponse(manager, reads, 1))
        server = await serve_app(nursery, app)
        async with manager.open(forever), httpx.AsyncClient() as client:
            response = await client.get(f"{server.url}/stream")
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_exceeded", "max_waiting")


async def test_a_producer_failure_after_the_headers_ends_with_an_error_event(
    nursery: trio.Nursery,
) -> None:
    async def fails() -> AsyncIterator[str]:
        yield "one"
        await trio.sleep(0.01)
        raise streammgr.UpstreamConnectError("the upstream dropped the connection")

    async with StreamManager() as manager:
        app = starlette_app(lambda request: EventStreamResponse(manager, fails, answer_within=0))
        server = await serve_app(nursery, app)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{server.url}/stream")
    assert response.status_code == 200
    body = response.text
    assert body.removeprefix(": keep-alive\n\n").startswith("data: one\n\n")
    event = json.loads(body.split("\n\n")[-2].removeprefix("data: "))
    assert event["error"]["type"] == "upstream_error"
    assert "dropped the connection" in event["error"]["message"]


async def test_a_client_that_stops_reading_is_cut_off(nursery: trio.Nursery) -> None:
    # The raw socket stops reading and keeps its connection open: hypercorn's send()
    # cannot be cancelled, yet the stream, its producer and its slot go after
    # stall_timeout, and the connection is closed.
    limiter = CountingLimiter()
    cleanups: list[float] = []

    @streammgr.batched
    async def flooding() -> AsyncIterator[list[bytes]]:
        chunk = b"data: " + b"x" * 65536 + b"\n\n"
        try:
            while True:
                await trio.lowlevel.checkpoint()
                yield [chunk]
        finally:
            cleanups.append(trio.current_time())

    async with StreamManager(limiter=limiter) as manager:
        watcher = CloseWatcher(manager)
        await nursery.start(watcher.run)
        counter = BodyCounter(
            starlette_app(
                lambda request: EventStreamResponse(
                    manager, flooding, answer_within=0, stall_timeout=0.2
                )
            )
        )
        server = await serve_app(nursery, counter)
        client = await raw_client(server.port, "/stream", receive_buffer=4096)
        info = await watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_STALLED
        assert (len(cleanups), limiter.releases) == (1, 1)
        with trio.fail_after(PATIENCE):
            await counter.returned.wait()  # the app's parked send() was woken
        received = await read_until_closed(client)
    assert received < sum(map(len, counter.bodies)) + 10**6


async def test_reader_timeout_frees_the_slot_while_the_send_is_parked(
    nursery: trio.Nursery, probe: Probe
) -> None:
    # No stall_timeout: the manager's reader_timeout still ends the stream, and
    # serve()'s send_timeout closes the connection.
    limiter = CountingLimiter()
    async with StreamManager(limiter=limiter, reader_timeout=0.2) as manager:
        watcher = CloseWatcher(manager)
        await nursery.start(watcher.run)
        counter = BodyCounter(
            starlette_app(
                lambda request: EventStreamResponse(
                    manager, flood, answer_within=0, stall_timeout=None
                )
            )
        )
        server = await serve_app(nursery, counter, send_timeout=0.5)
        client = await raw_client(server.port, "/stream", receive_buffer=4096)
        info = await watcher.next_close()
        assert info.close_reason is CloseReason.READER_TIMEOUT
        assert limiter.releases == 1
        assert not counter.returned.is_set()  # still parked in send(): the slot went anyway
        with trio.fail_after(PATIENCE):
            await counter.returned.wait()
        await read_until_closed(client)


async def test_the_lifespan_runs_the_manager_with_the_app(nursery: trio.Nursery) -> None:
    manager = StreamManager()

    async def endpoint(request: Request) -> EventStreamResponse:
        return EventStreamResponse(manager, reads, 1)

    app = Starlette(routes=[Route("/stream", endpoint)], lifespan=manager_lifespan(manager))
    with pytest.raises(RuntimeError, match="not running"):
        async with manager.open(reads, 1):
            pass  # pragma: no cover
    server = await serve_app(nursery, app)
    assert not manager.stats().closing
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.url}/stream")
    assert response.text == "data: 0a\n\ndata: 0b\n\ndata: 0c\n\n"
    server.stop.set()
    with trio.fail_after(PATIENCE):
        await server.stopped.wait()
    assert manager.stats().closing
    with pytest.raises(streammgr.ManagerClosed):
        async with manager.open(reads, 1):
            pass  # pragma: no cover
