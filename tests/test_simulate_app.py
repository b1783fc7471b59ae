"""streammgr.simulate's ASGI app: driven directly with memory channels on the mock
clock, then served by hypercorn's Trio worker over 127.0.0.1 to streammgr's sources.

Memory channels, not ``httpx.ASGITransport``: that transport buffers whole bodies,
so it could show neither a stall nor a client leaving mid-stream.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from hypercorn.utils import load_application

import streammgr
from streammgr import StreamManager
from streammgr.simulate import EXTRA_FIELD, ConnectionStats, SimulatedTransport, SimulatedUpstream
from streammgr.sources import OpenAIChat, SSESource, collect_chat
from tests.asgi_driver import ASGIExchange

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "tell me about streams"}]


def request(**options: Any) -> bytes:
    body: dict[str, Any] = {"model": "sim-small", "messages": MESSAGES, "stream": True}
    if options:
        body[EXTRA_FIELD] = options
    return json.dumps(body).encode()


@pytest.fixture
def upstream() -> SimulatedUpstream:
    return SimulatedUpstream(tokens=6, first_token_latency=0.2, token_latency=0.01, seed=2)


async def exchange(
    upstream: SimulatedUpstream, method: str, path: str, body: bytes = b""
) -> ASGIExchange:
    """Run one request through the app to its end."""
    sent = ASGIExchange(upstream, method, path, body)
    await sent.run()
    return sent


def closed(**counts: int) -> ConnectionStats:
    total = sum(counts.values())
    return ConnectionStats(
        open=0,
        opened=total,
        closed=total,
        max_open=1,
        completed=counts.get("completed", 0),
        client_left=counts.get("client_left", 0),
        faulted=counts.get("faulted", 0),
    )


# -- driven directly ----------------------------------------------------------------------


async def test_a_stream_through_the_app(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    start = trio.current_time()
    sent = await exchange(upstream, "POST", CHAT, request())
    assert trio.current_time() - start == pytest.approx(0.2 + 5 * 0.01)
    assert sent.status == 200
    assert sent.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert sent.complete
    assert sent.body == upstream.respond("POST", CHAT, request()).body
    assert sent.body.endswith(b"data: [DONE]\n\n")
    assert len(sent.chunks) == 1 + 6 + 2  # one message per event
    assert upstream.stats() == closed(completed=1)


async def test_the_app_and_the_transport_send_the_same_bytes(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    sent = await exchange(upstream, "POST", CHAT, request(jitter=0.005))
    async with (
        httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http,
        http.stream("POST", f"http://sim{CHAT}", content=request(jitter=0.005)) as response,
    ):
        assert await response.aread() == sent.body


async def test_the_lifespan_protocol(upstream: SimulatedUpstream) -> None:
    to_app, inbox = trio.open_memory_channel[dict[str, Any]](4)
    replies: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        replies.append(message)

    to_app.send_nowait({"type": "lifespan.startup"})
    to_app.send_nowait({"type": "lifespan.shutdown"})
    await upstream({"type": "lifespan"}, inbox.receive, send)  # type: ignore[arg-type]
    assert replies == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]
    assert upstream.stats().opened == 0


async def test_other_scopes_are_refused(upstream: SimulatedUpstream) -> None:
    async def nothing() -> dict[str, Any]:
        raise AssertionError("not read")  # pragma: no cover

    with pytest.raises(ValueError, match="serves HTTP only, not ASGI 'websocket'"):
        await upstream({"type": "websocket"}, nothing, nothing)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "status", "faulted", "complete"),
    [
        ({"fault": "http_error", "status": 502}, 502, True, True),
        ({"fault": "rate_limited", "retry_after": 0.25}, 429, True, True),
        ({"fault": "drop_mid_stream", "fault_after": 2}, 200, True, False),
        ({"fault": "stall_before_first_byte", "stall": 2}, 200, True, True),
        ({"fault": "stall_mid_stream", "stall": 2}, 200, True, True),
        ({"fault": "malformed_chunk"}, 200, True, True),
        ({"fault": "error_in_stream"}, 200, True, True),
        ({"fault": "no_done", "fault_after": 1}, 200, True, True),
        ({}, 200, False, True),
    ],
)
async def test_every_fault_through_the_app(
    autojump_clock: trio.abc.Clock,
    upstream: SimulatedUpstream,
    options: dict[str, Any],
    status: int,
    faulted: bool,
    complete: bool,
) -> None:
    planned = upstream.respond("POST", CHAT, request(**options))
    start = trio.current_time()
    sent = await exchange(upstream, "POST", CHAT, request(**options))
    assert sent.status == status == planned.status
    assert sent.headers == dict(planned.headers)
    assert sent.body == planned.body
    assert sent.complete is complete  # a drop: the app returned before the body's end
    waited = sum(step.seconds or 0 for step in planned.steps if hasattr(step, "seconds"))
    assert trio.current_time() - start == pytest.approx(waited + (planned.head_delay or 0))
    assert upstream.stats() == (closed(faulted=1) if faulted else closed(completed=1))


async def test_rate_limited_headers_over_asgi(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    sent = await exchange(upstream, "POST", CHAT, request(fault="rate_limited", retry_after=1.5))
    assert sent.headers["retry-after"] == "2"
    assert sent.headers["retry-after-ms"] == "1500"
    assert json.loads(sent.body)["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    "options",
    [
        {"fault": "stall_before_first_byte"},
        {"fault": "stall_mid_stream", "fault_after": 2},
        {"tokens": 100, "token_latency": 1.0},
    ],
    ids=["stall_before_first_byte", "stall_mid_stream", "slow"],
)
async def test_a_client_disconnecting_stops_the_response(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream, options: dict[str, Any]
) -> None:
    sent = ASGIExchange(upstream, "POST", CHAT, request(**options))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sent.run)
        await trio.sleep(5)  # the mock clock: well into the stall, or the slow stream
        assert upstream.stats().open == 1
        before = len(sent.messages)
        sent.disconnect()
        await sent.returned.wait()
        start = trio.current_time()
    assert trio.current_time() == start  # at once, not at the next token
    assert len(sent.messages) == before
    assert not sent.complete
    assert upstream.stats() == closed(client_left=1)


async def test_a_disconnect_once_the_response_is_over_is_no_leave(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    sent = ASGIExchange(upstream, "POST", CHAT, request())
    sent.disconnect_when_done = True
    await sent.run()
    assert sent.complete
    assert upstream.stats() == closed(completed=1)


async def test_a_failing_send_stops_the_response(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    sent = ASGIExchange(upstream, "POST", CHAT, request())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sent.run)
        await sent.wait_until(lambda sent: len(sent.chunks) == 3)
        sent.fail_sends = True
    assert len(sent.chunks) == 3
    assert upstream.stats() == closed(client_left=1)


async def test_a_client_leaving_before_its_body_arrived(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    sent = ASGIExchange(upstream, "POST", CHAT, parts=[b'{"model":'], body_ends=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sent.run)
        await trio.testing.wait_all_tasks_blocked()
        assert upstream.stats().open == 1
        sent.disconnect()
    assert sent.messages == []
    assert upstream.stats() == closed(client_left=1)


async def test_a_cancelled_app_counts_its_response_closed(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    sent = ASGIExchange(upstream, "POST", CHAT, request(fault="stall_mid_stream"))
    with trio.move_on_after(3):  # a server shutting down cancels its apps
        await sent.run()
    assert upstream.stats() == closed(client_left=1)


async def test_a_body_in_several_parts(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    body = request(tokens=2)
    sent = ASGIExchange(upstream, "POST", CHAT, parts=[body[:10], body[10:30], body[30:]])
    await sent.run()
    assert sent.body == upstream.respond("POST", CHAT, body).body


async def test_errors_over_asgi(upstream: SimulatedUpstream) -> None:
    missing = await exchange(upstream, "GET", "/v2/anything")
    assert missing.status == 404
    assert json.loads(missing.body)["error"]["code"] == "unknown_url"
    bad = await exchange(upstream, "POST", CHAT, b'{"model": "m", "messages": [{"role": 1}]}')
    assert bad.status == 400
    assert json.loads(bad.body)["error"]["param"] == "messages[0].role"
    not_json = await exchange(upstream, "POST", CHAT, b"\xff")
    assert not_json.status == 400
    assert "not valid JSON" in json.loads(not_json.body)["error"]["message"]
    too_large = ASGIExchange(upstream, "POST", CHAT, parts=[b" " * 600_000, b" " * 600_000])
    await too_large.run()
    assert too_large.status == 413
    models = await exchange(upstream, "GET", "/v1/models")
    assert [model["id"] for model in json.loads(models.body)["data"]] == [
        "sim-small",
        "sim-large",
    ]
    assert upstream.stats() == closed(completed=5)


# -- over a real socket, served by hypercorn -----------------------------------------------


def test_hypercorn_can_load_it_from_one_line() -> None:
    # What `hypercorn --worker-class trio "streammgr.simulate:SimulatedUpstream()"` loads.
    app = load_application('streammgr.simulate:SimulatedUpstream(fault="no_done")', 0)
    assert isinstance(app.app, SimulatedUpstream)  # type: ignore[attr-defined]


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[SimulatedUpstream, str]:
    upstream = SimulatedUpstream(tokens=6, first_token_latency=0.0, token_latency=0.001)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    binds = await nursery.start(serve, cast(ASGIFramework, upstream), config)
    return upstream, f"{binds[0]}/v1"  # the server stops with the test's nursery


async def settled(upstream: SimulatedUpstream) -> ConnectionStats:
    """The upstream's counts once the server has seen the socket close (real time)."""
    with trio.fail_after(5):
        while upstream.stats().open:
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    return upstream.stats()


def over_http(http: httpx.AsyncClient, base: str, **options: Any) -> OpenAIChat:
    extra: dict[str, Any] = {EXTRA_FIELD: options} if options else {}
    return OpenAIChat(
        http,
        base_url=base,
        api_key="sk-test",
        model="sim-small",
        messages=MESSAGES,
        include_usage=True,
        **extra,
    )


async def test_openai_chat_over_loopback(served: tuple[SimulatedUpstream, str]) -> None:
    upstream, base = served
    async with httpx.AsyncClient() as http, StreamManager() as manager:
        async with manager.open(over_http(http, base)) as stream:
            answer = await collect_chat(stream)
        in_process = httpx.AsyncClient(transport=SimulatedTransport(upstream))
        async with in_process, manager.open(over_http(in_process, "http://sim/v1")) as stream:
            assert await collect_chat(stream) == answer
    assert answer.finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6
    stats = await settled(upstream)
    assert stats.completed == 2


async def test_sse_source_reads_the_raw_events_over_loopback(
    served: tuple[SimulatedUpstream, str],
) -> None:
    upstream, base = served
    async with httpx.AsyncClient() as http, StreamManager() as manager:
        source = SSESource(
            http,
            f"{base}/chat/completions",
            method="POST",
            json={"model": "m", "messages": MESSAGES, "stream": True},
        )
        async with manager.open(source) as stream:
            events = [event async for event in stream]
    assert events[-1].data == "[DONE]"
    assert all(event.id == "" and event.retry is None for event in events)
    assert json.loads(events[0].data)["choices"][0]["delta"]["role"] == "assistant"
    assert (await settled(upstream)).completed == 1


async def test_a_reader_leaving_closes_the_servers_response(
    served: tuple[SimulatedUpstream, str],
) -> None:
    upstream, base = served
    async with httpx.AsyncClient() as http, StreamManager() as manager:
        source = over_http(http, base, fault="stall_mid_stream", fault_after=2)
        async with manager.open(source) as stream:
            async for chunk in stream:
                if chunk.content:
                    break
    assert await settled(upstream) == ConnectionStats(
        open=0, opened=1, closed=1, max_open=1, completed=0, client_left=1, faulted=0
    )


async def test_a_drop_over_loopback_breaks_the_connection(
    served: tuple[SimulatedUpstream, str],
) -> None:
    upstream, base = served
    async with httpx.AsyncClient() as http, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamConnectError, match="broke mid-stream"):
            async with manager.open(over_http(http, base, fault="drop_mid_stream")) as stream:
                await collect_chat(stream)
    assert (await settled(upstream)).faulted == 1


async def test_status_faults_over_loopback(served: tuple[SimulatedUpstream, str]) -> None:
    upstream, base = served
    async with httpx.AsyncClient() as http, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            async with manager.open(over_http(http, base, fault="rate_limited")) as stream:
                await collect_chat(stream)
        assert caught.value.status_code == 429
        assert caught.value.retry_after == 1
        models = await http.get(f"{base}/models")
        assert models.json()["data"][0]["id"] == "sim-small"
    assert (await settled(upstream)).faulted == 1


async def test_a_response_counts_as_closed_as_its_end_is_handed_over(
    upstream: SimulatedUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    # A client that has read a response's end may send its next request at once (over
    # the same connection, reused): the ledger must not count both open together.
    open_at_end: list[int] = []
    messages = [{"type": "http.request", "body": request(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            open_at_end.append(upstream.stats().open)

    scope = {"type": "http", "method": "POST", "path": CHAT, "headers": []}
    await upstream(cast(Any, scope), receive, send)
    assert open_at_end == [0]
    stats = upstream.stats()
    assert (stats.open, stats.completed) == (0, 1)
