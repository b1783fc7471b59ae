"""The server's disconnect notice (``scope["extensions"]["streammgr.disconnect_notice"]``).

Under :func:`streammgr.server.serve`, each request's ASGI messages go through a small
queue (hypercorn's memory channel per request replaced), which also calls a streaming
response back at ``http.disconnect``: no watcher task per held stream. Under any other
server (no extension) the response falls back to its watcher task. Both end a stream
whose client left exactly once, as ``client_disconnected``, its slot released and its
producer closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from streammgr import CloseReason, StreamManager
from streammgr.server import EventStreamResponse
from streammgr.server._hypercorn import DISCONNECT_NOTICE, _AppQueue

from .asgi_driver import ASGIExchange
from .response_helpers import CountingLimiter, NoticedClient, encode_ints, task_names
from .server_helpers import PATIENCE, CloseWatcher, RawResponse, Server, raw_client

WATCHER = "streammgr-client-watcher"


class Ticks:
    """A pull producer: an int every ``interval`` seconds; counts its closes."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.acloses = 0

    def __call__(self) -> AsyncIterator[int]:
        return self.ticks()

    async def ticks(self) -> AsyncIterator[int]:
        try:
            index = 0
            while True:
                await trio.sleep(self.interval)
                yield index
                index += 1
        finally:
            self.acloses += 1


# -- the queue --------------------------------------------------------------------------


async def test_the_queue_hands_messages_over_in_order_within_its_bound(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    queue = _AppQueue(2)
    put_done = trio.Event()

    async def put_three() -> None:
        for index in range(3):
            await queue.put({"type": "http.request", "index": index})
        put_done.set()

    nursery.start_soon(put_three)
    await trio.testing.wait_all_tasks_blocked()
    assert not put_done.is_set()  # the third waits for room, as on a memory channel
    assert [(await queue.receive())["index"] for _ in range(3)] == [0, 1, 2]
    await put_done.wait()
    received: list[Any] = []

    async def receive_one() -> None:
        received.append(await queue.receive())

    nursery.start_soon(receive_one)
    await trio.testing.wait_all_tasks_blocked()
    assert received == []  # waits for a message
    await queue.put({"type": "http.disconnect"})
    await trio.testing.wait_all_tasks_blocked()
    assert received == [{"type": "http.disconnect"}]


async def test_the_notice_drops_what_is_queued_and_calls_back_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    queue = _AppQueue(1)
    calls: list[str] = []
    await queue.put({"type": "http.request", "body": b"x", "more_body": True})
    blocked = trio.Event()

    async def put_more() -> None:
        await queue.put({"type": "http.request", "body": b"y", "more_body": False})
        blocked.set()

    nursery.start_soon(put_more)
    await trio.testing.wait_all_tasks_blocked()
    assert not blocked.is_set()
    # Notified: the body nobody reads is dropped, and the blocked reader goes on.
    assert queue.notify(lambda: calls.append("gone")) is False
    await blocked.wait()
    await queue.put({"type": "http.disconnect"})
    await queue.put({"type": "http.disconnect"})
    assert calls == ["gone"]
    # Not notified any more: messages queue for receive() again.
    queue.stop_notifying()
    await queue.put({"type": "http.disconnect"})
    assert calls == ["gone"]
    assert await queue.receive() == {"type": "http.disconnect"}
    # A disconnect already queued: notify says so and calls nothing.
    await queue.put({"type": "http.disconnect"})
    assert queue.notify(lambda: calls.append("late")) is True
    assert calls == ["gone"]


# -- the response with the notice, and without ------------------------------------------


async def test_a_response_with_the_notice_has_no_watcher_and_ends_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    limiter = CountingLimiter()
    ticks = Ticks(0.5)
    async with StreamManager(limiter=limiter) as manager:
        client = NoticedClient()
        response = EventStreamResponse(manager, ticks, answer_within=0, encode=encode_ints)
        nursery.start_soon(client.run, response)
        await trio.sleep(2.2)
        assert WATCHER not in task_names()
        await client.disconnect()
        await client.returned.wait()
        (info,) = manager.history()
        assert (info.close_reason, info.items) == (CloseReason.CLIENT_DISCONNECTED, 4)
        assert (limiter.releases, ticks.acloses) == (1, 1)
        assert manager.streams() == []


async def test_a_disconnect_before_the_response_is_called_is_recorded(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    limiter = CountingLimiter()
    ticks = Ticks(0.5)
    async with StreamManager(limiter=limiter) as manager:
        client = NoticedClient()
        await client.disconnect()  # gone while the endpoint still read its request
        response = EventStreamResponse(manager, ticks, answer_within=0, encode=encode_ints)
        await client.run(response)
        (info,) = manager.history()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert (limiter.releases, client.writes) == (1, [])


async def test_without_the_notice_the_watcher_does_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    limiter = CountingLimiter()
    ticks = Ticks(0.5)
    async with StreamManager(limiter=limiter) as manager:
        response = EventStreamResponse(manager, ticks, answer_within=0, encode=encode_ints)
        exchange = ASGIExchange(response, "GET", "/")
        assert DISCONNECT_NOTICE not in exchange.scope.get("extensions", {})
        nursery.start_soon(exchange.run)
        await trio.sleep(2.2)
        assert any(name.endswith(WATCHER) for name in task_names())
        exchange.disconnect()
        await exchange.returned.wait()
        (info,) = manager.history()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert (limiter.releases, ticks.acloses) == (1, 1)


# -- served ---------------------------------------------------------------------------


async def test_served_a_held_stream_has_no_watcher_and_the_client_leaving_ends_it(
    nursery: trio.Nursery,
) -> None:
    limiter = CountingLimiter()
    ticks = Ticks(0.01)
    offered: list[bool] = []
    async with StreamManager(limiter=limiter) as manager:
        watcher = CloseWatcher(manager)
        await nursery.start(watcher.run)

        async def stream(request: Request) -> EventStreamResponse:
            offered.append(DISCONNECT_NOTICE in request.scope["extensions"])
            return EventStreamResponse(
                manager, ticks, answer_within=0, keep_alive=0.05, encode=encode_ints
            )

        async def echo(request: Request) -> PlainTextResponse:
            bodies.append(await request.body())
            return PlainTextResponse("ok")

        bodies: list[bytes] = []
        app = Starlette(routes=[Route("/", stream), Route("/echo", echo, methods=["POST"])])
        server = await Server().start(nursery, app)
        client = RawResponse(await raw_client(server.port, "/"))
        await client.until(lambda response: b"data: 3\n\n" in response.body)
        assert offered == [True]
        assert not any(name.endswith(WATCHER) for name in task_names())
        await client.stream.aclose()
        with trio.fail_after(PATIENCE):
            info = await watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert (limiter.releases, ticks.acloses) == (1, 1)
        # The queue still hands a request's body to an app that reads it.
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{server.url}/echo", content=b"hello")
        assert (answer.status_code, answer.text, bodies) == (200, "ok", [b"hello"])
        server.stop.set()
        await server.stopped.wait()
