"""After ``data: [DONE]`` the upstream's body end is read (so its connection is reused),
briefly: an upstream that holds the body open, or sends more, ends the stream anyway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from streammgr import StreamManager
from streammgr.server._gateway import _ChatEvents
from streammgr.sources import OpenAIChat, SSESource
from streammgr.sources._openai import BODY_END_GRACE

BASE = "http://llm.local/v1"
CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
DONE = b"data: [DONE]\n\n"


class Body(httpx.AsyncByteStream):
    """An upstream body sent in parts; ``then`` is what follows ``[DONE]``."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.ended = False  # the stream read the body's end (before closing it)
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield CHUNK
        yield DONE
        if self.then == "hold":
            await trio.sleep_forever()
        elif self.then == "more":
            yield CHUNK  # then the end, which nobody needs to read
            return
        self.ended = not self.closed  # read by the stream, not by the response's close

    async def aclose(self) -> None:
        self.closed = True


def client_of(body: Body) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def gateway_producer(client: httpx.AsyncClient) -> Callable[[], Any]:
    return _ChatEvents(SSESource(client, f"{BASE}/chat/completions", method="POST"))


def openai_producer(client: httpx.AsyncClient) -> Callable[[], Any]:
    messages = [{"role": "user", "content": "hi"}]
    return OpenAIChat(client, api_key="sk-test", model="m", messages=messages, base_url=BASE)


def forwarded(producer: Callable[[httpx.AsyncClient], Any]) -> int:
    """The items a stream gives for CHUNK and [DONE]: the gateway forwards [DONE]."""
    return 2 if producer is gateway_producer else 1


PRODUCERS = pytest.mark.parametrize("producer", [gateway_producer, openai_producer])


async def read_all(producer: Callable[[], Any]) -> tuple[int, float]:
    """The items of one inline stream, and the mock time from [DONE]'s read to its end."""
    items = 0
    async with StreamManager() as manager:
        stream = manager.open(producer, inline=True)
        async with stream:
            async for _ in stream:
                items += 1
                last = trio.current_time()
        return items, trio.current_time() - last


@PRODUCERS
async def test_the_body_end_after_done_is_read(
    autojump_clock: trio.abc.Clock, producer: Callable[[httpx.AsyncClient], Any]
) -> None:
    body = Body(then="end")
    async with client_of(body) as client:
        items, after = await read_all(producer(client))
    assert body.ended
    assert body.closed
    assert items == forwarded(producer)
    assert after == 0  # no wait: the end was there


@PRODUCERS
@pytest.mark.parametrize("then", ["hold", "more"])
async def test_an_upstream_that_does_not_end_its_body_is_left_after_the_grace(
    autojump_clock: trio.abc.Clock, producer: Callable[[httpx.AsyncClient], Any], then: str
) -> None:
    body = Body(then=then)
    async with client_of(body) as client:
        items, after = await read_all(producer(client))
    assert not body.ended
    assert body.closed
    assert items == forwarded(producer)  # nothing after [DONE]
    # Held: left at the grace's end. More: left at the event after [DONE].
    assert after == (pytest.approx(BODY_END_GRACE) if then == "hold" else 0)
