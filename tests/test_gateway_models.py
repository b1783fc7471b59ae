"""The gateway's ``GET /v1/models``: its answer's cap, its cache, one upstream request
in flight, its bound per caller key, and that it never takes a chat's connection.

In memory on the mock clock: the upstream is an ``httpx.MockTransport`` (behind
:class:`Pool`, a model of the upstream client's connection pool where the test is
about connections), the gateway is driven as an ASGI app.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from streammgr import StreamManager
from streammgr.server import gateway_app
from streammgr.server._models import MAX_MODELS_BODY, MODELS_PER_KEY

from .asgi_driver import ASGIExchange

KEY = "sk-gw-9fQ2xZ7LmK4pR8vT1nB6yH3cW5dJ0sE"
UPSTREAM = "http://upstream.test/v1"
LIST = {"object": "list", "data": [{"id": "m-1", "object": "model", "owned_by": "x"}]}
CHUNKS = [
    {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}
    ]},
    {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop"}
    ]},
]  # fmt: skip
SSE = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in CHUNKS) + "data: [DONE]\n\n"
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


class _Releasing(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        release = self._release
        if release is not None:
            self._release = None
            release()
        await self._stream.aclose()


class Pool(httpx.AsyncBaseTransport):
    """The upstream client's pool, as httpx's behaves: at most ``connections``
    requests hold a connection at once, each until its response is closed; the
    others wait for one."""

    def __init__(self, handler: Handler, connections: int) -> None:
        self._inner = httpx.MockTransport(handler)
        self._connections = trio.Semaphore(connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._connections.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._connections.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Releasing(response.stream, self._connections.release),
            extensions=response.extensions,
        )


@asynccontextmanager
async def gateway(
    transport: httpx.AsyncBaseTransport, **options: Any
) -> AsyncIterator[tuple[Any, StreamManager]]:
    async with (
        httpx.AsyncClient(transport=transport) as http,
        StreamManager(max_streams=1) as manager,
    ):
        yield gateway_app(manager, http, upstream_url=UPSTREAM, api_key=KEY, **options), manager


def request(app: Any, method: str, path: str, body: bytes = b"", caller: str = "a") -> ASGIExchange:
    exchange = ASGIExchange(app, method, path, body)
    exchange.scope["headers"].append((b"authorization", f"Bearer caller-{caller}".encode()))
    return exchange


async def get_models(app: Any, caller: str = "a") -> ASGIExchange:
    exchange = request(app, "GET", "/v1/models", caller=caller)
    await exchange.run()
    return exchange


def error_of(exchange: ASGIExchange) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(exchange.body)["error"]
    return error


async def test_models_callers_with_a_hung_upstream_do_not_delay_a_chat(
    autojump_clock: trio.abc.Clock,
) -> None:
    # 40 callers list the models while the upstream hangs on /models; a chat of
    # another key must get a connection at once (the pool has 2: one for chats).
    calls: Counter[str] = Counter()
    release = trio.Event()

    async def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            calls["models"] += 1
            await release.wait()
            return httpx.Response(200, json=LIST)
        calls["chat"] += 1
        return httpx.Response(200, text=SSE, headers={"content-type": "text/event-stream"})

    async with gateway(Pool(upstream, connections=2)) as (app, _), trio.open_nursery() as nursery:
        listings = [request(app, "GET", "/v1/models", caller=str(n)) for n in range(40)]
        for exchange in listings:
            nursery.start_soon(exchange.run)
        await trio.testing.wait_all_tasks_blocked()
        chat = request(app, "POST", "/v1/chat/completions", CHAT, caller="other")
        started = trio.current_time()
        await chat.run()
        waited = trio.current_time() - started
        assert waited == 0, f"the chat waited {waited:g}s for a connection"
        assert chat.status == 200
        assert json.loads(chat.body)["choices"][0]["message"]["content"] == "hi"
        assert calls["models"] == 1
        release.set()
    assert [exchange.status for exchange in listings] == [200] * 40
    assert calls["models"] == 1  # one upstream request answered all 40


async def test_the_list_is_cached_for_its_ttl_on_the_mock_clock(
    autojump_clock: trio.abc.Clock,
) -> None:
    calls: Counter[str] = Counter()

    async def upstream(request: httpx.Request) -> httpx.Response:
        calls["models"] += 1
        return httpx.Response(200, json=LIST)

    async with gateway(httpx.MockTransport(upstream)) as (app, _):  # the default: 30 s
        first = await get_models(app)
        assert json.loads(first.body) == LIST
        await trio.sleep(29.0)  # the mock clock: no real wait
        assert (await get_models(app, "b")).body == first.body
        assert calls["models"] == 1
        await trio.sleep(1.0)
        assert (await get_models(app)).status == 200
        assert calls["models"] == 2


async def test_no_cache_still_shares_one_upstream_request(autojump_clock: trio.abc.Clock) -> None:
    calls: Counter[str] = Counter()

    async def upstream(request: httpx.Request) -> httpx.Response:
        calls["models"] += 1
        await trio.sleep(1.0)
        return httpx.Response(200, json=LIST)

    async with gateway(httpx.MockTransport(upstream), models_cache_ttl=None) as (app, _):
        async with trio.open_nursery() as nursery:
            for caller in "abc":
                nursery.start_soon(get_models, app, caller)
        assert calls["models"] == 1
        await get_models(app)
        assert calls["models"] == 2


async def test_an_error_is_kept_only_briefly(autojump_clock: trio.abc.Clock) -> None:
    answers = iter([500, 200])
    calls: Counter[str] = Counter()

    async def upstream(request: httpx.Request) -> httpx.Response:
        calls["models"] += 1
        return httpx.Response(next(answers), json=LIST)

    async with gateway(httpx.MockTransport(upstream)) as (app, _):
        assert (await get_models(app)).status == 502
        assert (await get_models(app)).status == 502  # the same answer, not a new request
        assert calls["models"] == 1
        await trio.sleep(1.0)
        assert (await get_models(app)).status == 200
        assert calls["models"] == 2


async def test_one_key_may_not_have_more_than_its_bound_waiting(
    autojump_clock: trio.abc.Clock,
) -> None:
    release = trio.Event()

    async def upstream(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=LIST)

    async with gateway(httpx.MockTransport(upstream)) as (app, _), trio.open_nursery() as nursery:
        waiting = [request(app, "GET", "/v1/models") for _ in range(MODELS_PER_KEY)]
        for exchange in waiting:
            nursery.start_soon(exchange.run)
        await trio.testing.wait_all_tasks_blocked()
        refused = await get_models(app)
        other = request(app, "GET", "/v1/models", caller="b")
        nursery.start_soon(other.run)
        await trio.testing.wait_all_tasks_blocked()
        assert not other.returned.is_set()  # another key is not refused
        release.set()
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["retry-after-ms"] == "1000"
    error = error_of(refused)
    assert error["type"] == "rate_limit_exceeded"
    assert error["code"] == "models_per_key"
    assert f"at most {MODELS_PER_KEY}" in error["message"]
    assert [exchange.status for exchange in waiting] == [200] * MODELS_PER_KEY
    assert other.status == 200


class Endless(httpx.AsyncByteStream):
    """A body of ``total`` bytes, 64 KiB at a time; counts what was read, and its close."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.closed = False

    def __aiter__(self) -> Endless:
        return self

    async def __anext__(self) -> bytes:
        if self.sent >= self.total or self.closed:
            raise StopAsyncIteration
        self.sent += 65536
        return b" " * 65536

    async def aclose(self) -> None:
        self.closed = True


async def test_a_list_larger_than_the_cap_is_a_502_naming_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    body = Endless(4 * MAX_MODELS_BODY)  # "endless": bounded so that a failure ends

    async def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body, headers={"content-type": "application/json"})

    async with gateway(httpx.MockTransport(upstream)) as (app, _):
        answer = await get_models(app)
    assert answer.status == 502
    error = error_of(answer)
    assert error["code"] == "upstream_too_large"
    assert f"larger than {MAX_MODELS_BODY} bytes" in error["message"]
    assert body.closed
    assert body.sent <= MAX_MODELS_BODY + 65536  # read up to the cap, not past it


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (404, {}, 404),
        (500, {}, 502),
        (401, {}, 502),
        (429, {"retry-after": "7"}, 429),
        (429, {}, 429),
    ],
)
async def test_upstream_errors_are_answered_in_openai_format(
    autojump_clock: trio.abc.Clock, status: int, headers: dict[str, str], expected: int
) -> None:
    async def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, json={"error": {"message": "no"}})

    async with gateway(httpx.MockTransport(upstream)) as (app, _):
        answer = await get_models(app)
    assert answer.status == expected
    assert answer.headers["content-type"] == "application/json"
    assert "message" in error_of(answer)
    if expected == 429:
        assert answer.headers["retry-after"] == headers.get("retry-after", "1")


def test_a_bad_ttl_is_named() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    manager = StreamManager()
    with pytest.raises(ValueError, match="models_cache_ttl"):
        gateway_app(
            manager,
            httpx.AsyncClient(transport=transport),
            upstream_url=UPSTREAM,
            models_cache_ttl=-1,
        )


# -- compressed answers ----------------------------------------------------------------------


class Chunked(httpx.AsyncByteStream):
    """A body sent in chunks of 64 KiB, as httpcore hands them over."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self._body), 65536):
            yield self._body[at : at + 65536]


def compressed(body: bytes, encoding: str) -> bytes:
    return gzip.compress(body) if encoding == "gzip" else zlib.compress(body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_bomb_is_capped_as_it_expands(
    autojump_clock: trio.abc.Clock, encoding: str
) -> None:
    # 64 MiB of zeros compress to 64 KiB: one chunk of the upstream's answer. Decoded
    # whole before the cap is looked at, it cost 64 MiB and more (270 MiB measured for
    # 200 MiB of zeros); decoded up to the cap, a few MiB.
    bomb = compressed(b"\0" * (64 * 1024 * 1024), encoding)
    asked: list[str] = []

    async def upstream(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding", ""))
        headers = {"content-type": "application/json", "content-encoding": encoding}
        return httpx.Response(200, stream=Chunked(bomb), headers=headers)

    async with gateway(httpx.MockTransport(upstream)) as (app, _):
        tracemalloc.start()
        try:
            answer = await get_models(app)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert answer.status == 502
    assert error_of(answer)["code"] == "upstream_too_large"
    assert peak < 4 * MAX_MODELS_BODY, f"{peak / 2**20:.0f} MiB"
    assert asked == ["identity"]  # the list is small: asked for uncompressed


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
async def test_a_compressed_list_is_relayed_decoded(
    autojump_clock: trio.abc.Clock, encoding: str
) -> None:
    raw = json.dumps(LIST).encode()
    body = raw if encoding == "identity" else compressed(raw, encoding)

    async def upstream(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/json", "content-encoding": encoding}
        return httpx.Response(200, stream=Chunked(body), headers=headers)

    async with gateway(httpx.MockTransport(upstream)) as (app, _):
        answer = await get_models(app)
    assert answer.status == 200
    assert json.loads(answer.body) == LIST


@pytest.mark.parametrize(
    ("encoding", "body", "said"),
    [
        ("br", b"\x0b\x02\x80{}\x03", "'br'"),  # one the gateway cannot bound
        ("gzip", b"not gzip at all", "corrupt"),
    ],
)
async def test_an_encoding_the_gateway_cannot_read_is_a_502(
    autojump_clock: trio.abc.Clock, encoding: str, body: bytes, said: str
) -> None:
    async def upstream(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/json", "content-encoding": encoding}
        return httpx.Response(200, stream=Chunked(body), headers=headers)

    async with gateway(httpx.MockTransport(upstream)) as (app, _):
        answer = await get_models(app)
    assert answer.status == 502
    error = error_of(answer)
    assert error["code"] == "upstream_error"
    assert said in error["message"]
