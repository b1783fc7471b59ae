"""streammgr.simulate through its in-process httpx transport, on the mock clock.

The client side is streammgr's own (``OpenAIChat`` + ``collect_chat``, ``SSESource``)
and, when it is installed (extra ``bench``), the real ``openai`` SDK. Every fault is
seen as a client sees it, and the upstream's counters show each response closed
exactly once, however it ended.
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

import streammgr
from streammgr import StreamManager
from streammgr.simulate import (
    EXTRA_FIELD,
    ConnectionStats,
    SimulatedTransport,
    SimulatedUpstream,
)
from streammgr.sources import OpenAIChat, SourceTimeouts, SSESource, collect_chat

BASE = "http://simulated.local/v1"
MESSAGES = [{"role": "user", "content": "tell me about streams"}]


@pytest.fixture
def upstream() -> SimulatedUpstream:
    return SimulatedUpstream(tokens=8, first_token_latency=0.2, token_latency=0.01, seed=5)


@pytest.fixture
async def http(upstream: SimulatedUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=SimulatedTransport(upstream)) as client:
        yield client


def chat(http: httpx.AsyncClient, model: str = "sim-small", **params: Any) -> OpenAIChat:
    return OpenAIChat(
        http, base_url=BASE, api_key="sk-test", model=model, messages=MESSAGES, **params
    )


def simulate(**options: Any) -> dict[str, Any]:
    return {EXTRA_FIELD: options}


def stats(**counts: int) -> ConnectionStats:
    """Stats with every response closed: ``opened``, the endings, and max_open 1."""
    closed = sum(counts.get(name, 0) for name in ("completed", "client_left", "faulted"))
    return ConnectionStats(
        open=0,
        opened=closed,
        closed=closed,
        max_open=counts.get("max_open", 1),
        completed=counts.get("completed", 0),
        client_left=counts.get("client_left", 0),
        faulted=counts.get("faulted", 0),
    )


async def read_chat(http: httpx.AsyncClient, **params: Any) -> streammgr.sources.ChatCompletion:
    async with StreamManager() as manager, manager.open(chat(http, **params)) as stream:
        return await collect_chat(stream)


# -- answers and their pace ----------------------------------------------------------------


async def test_a_complete_answer_on_the_mock_clock(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    start = trio.current_time()
    answer = await read_chat(http, **simulate(tokens=20))
    assert trio.current_time() - start == pytest.approx(0.2 + 19 * 0.01)
    assert answer.role == "assistant"
    assert answer.finish_reason == "stop"
    assert len(answer.text.split()) == 20
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "sim-small"
    assert upstream.stats() == stats(completed=1)


async def test_the_first_token_waits_its_latency(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient
) -> None:
    start = trio.current_time()
    async with StreamManager() as manager, manager.open(chat(http)) as stream:
        async for chunk in stream:
            if chunk.content:
                break
    assert trio.current_time() - start == pytest.approx(0.2)


async def test_the_same_request_gets_the_same_answer(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient
) -> None:
    first = await read_chat(http)
    again = await read_chat(http)
    assert first == again
    other_seed = await read_chat(http, **simulate(seed=99))
    assert other_seed.text != first.text


async def test_the_same_bytes_through_the_transport_as_planned(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with http.stream("POST", f"{BASE}/chat/completions", json=body) as response:
        received = [part async for part in response.aiter_raw()]
    planned = upstream.respond("POST", "/v1/chat/completions", json.dumps(body).encode())
    assert b"".join(received) == planned.body
    assert len(received) == 1 + 8 + 2  # one read per event: role, tokens, finish, [DONE]


async def test_max_tokens_gives_finish_reason_length(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient
) -> None:
    answer = await read_chat(http, max_tokens=3)
    assert answer.finish_reason == "length"
    assert len(answer.text.split()) == 3


async def test_include_usage_reports_the_tokens(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient
) -> None:
    answer = await read_chat(http, include_usage=True, max_tokens=5)
    assert answer.usage == streammgr.sources.Usage(4, 5, 9)
    assert (await read_chat(http)).usage is None


async def test_a_request_that_does_not_stream(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    start = trio.current_time()
    response = await http.post(
        f"{BASE}/chat/completions", json={"model": "sim-small", "messages": MESSAGES}
    )
    assert trio.current_time() - start == pytest.approx(0.2 + 7 * 0.01)
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["usage"]["completion_tokens"] == 8
    streamed = await read_chat(http)
    assert completion["choices"][0]["message"]["content"] == streamed.text
    assert upstream.stats() == stats(completed=2)


async def test_models_and_errors_through_the_transport(http: httpx.AsyncClient) -> None:
    models = await http.get(f"{BASE}/models")
    assert [model["id"] for model in models.json()["data"]] == ["sim-small", "sim-large"]
    missing = await http.get(f"{BASE}/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_url"
    bad = await http.post(f"{BASE}/chat/completions", json={"model": "m", "messages": []})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "messages"


# -- every fault, as a client sees it ------------------------------------------------------


async def test_http_error(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    with pytest.raises(streammgr.UpstreamStatusError) as caught:
        await read_chat(http, **simulate(fault="http_error", status=503))
    assert caught.value.status_code == 503
    assert "fault http_error" in str(caught.value)
    assert upstream.stats() == stats(faulted=1)


async def test_rate_limited(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    with pytest.raises(streammgr.UpstreamStatusError) as caught:
        await read_chat(http, **simulate(fault="rate_limited", retry_after=2))
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 2
    assert upstream.stats() == stats(faulted=1)


async def test_drop_mid_stream(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    received: list[str] = []
    with pytest.raises(streammgr.UpstreamConnectError, match="broke mid-stream"):
        async with StreamManager() as manager:
            source = chat(http, **simulate(fault="drop_mid_stream", fault_after=3))
            async with manager.open(source) as stream:
                async for chunk in stream:
                    received.append(chunk.content or "")
    assert len(received) == 1 + 3
    assert upstream.stats() == stats(faulted=1)


async def test_stall_before_first_byte_is_cut_by_the_connect_timeout(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    start = trio.current_time()
    with pytest.raises(streammgr.UpstreamConnectTimeout):
        await read_chat(
            http, timeouts=SourceTimeouts(connect=5), **simulate(fault="stall_before_first_byte")
        )
    assert trio.current_time() - start == pytest.approx(5)
    assert upstream.stats() == stats(client_left=1)


async def test_a_stall_before_first_byte_that_ends(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    start = trio.current_time()
    answer = await read_chat(http, **simulate(fault="stall_before_first_byte", stall=3))
    assert trio.current_time() - start == pytest.approx(3 + 0.2 + 7 * 0.01)
    assert answer.finish_reason == "stop"
    assert upstream.stats() == stats(faulted=1)


async def test_stall_mid_stream_is_cut_by_the_idle_timeout(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    received = 0
    with pytest.raises(streammgr.UpstreamIdleTimeout):
        async with StreamManager() as manager:
            source = chat(
                http,
                timeouts=SourceTimeouts(idle=2),
                **simulate(fault="stall_mid_stream", fault_after=2),
            )
            async with manager.open(source) as stream:
                async for _ in stream:
                    received += 1
    assert received == 1 + 2
    assert upstream.stats() == stats(client_left=1)


async def test_a_stall_mid_stream_that_ends(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    start = trio.current_time()
    answer = await read_chat(http, **simulate(fault="stall_mid_stream", stall=4))
    assert trio.current_time() - start == pytest.approx(4 + 0.2 + 7 * 0.01)
    assert len(answer.text.split()) == 8
    assert upstream.stats() == stats(faulted=1)


async def test_malformed_chunk(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    with pytest.raises(streammgr.UpstreamProtocolError, match="not JSON"):
        await read_chat(http, **simulate(fault="malformed_chunk", fault_after=1))
    # OpenAIChat stops at the bad line: the response is closed before its end.
    assert upstream.stats() == stats(client_left=1)


async def test_malformed_chunk_read_past(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    body |= simulate(fault="malformed_chunk", fault_after=1)
    async with StreamManager() as manager:
        source = SSESource(http, f"{BASE}/chat/completions", method="POST", json=body)
        async with manager.open(source) as stream:
            data = [event.data async for event in stream]
    assert data[-1] == "[DONE]"
    assert len(data) == 1 + 8 + 1 + 2
    assert upstream.stats() == stats(faulted=1)


async def test_error_in_stream(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    with pytest.raises(streammgr.UpstreamAPIError) as caught:
        await read_chat(http, **simulate(fault="error_in_stream", fault_after=4))
    assert caught.value.code == "simulated_fault"
    assert caught.value.error_type == "server_error"
    assert upstream.stats().closed == 1


async def test_no_done_cut_short_is_truncated(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    with pytest.raises(streammgr.UpstreamTruncated):
        await read_chat(http, **simulate(fault="no_done", fault_after=3))
    assert upstream.stats() == stats(faulted=1)


async def test_no_done_after_a_finish_reason_is_accepted(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    answer = await read_chat(http, **simulate(fault="no_done"))
    assert answer.finish_reason == "stop"
    assert upstream.stats() == stats(faulted=1)


async def test_the_servers_default_fault(autojump_clock: trio.abc.Clock) -> None:
    upstream = SimulatedUpstream(fault="http_error", status=502)
    async with httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http:
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_chat(http)
        assert caught.value.status_code == 502
        assert (await read_chat(http, **simulate(fault=None))).finish_reason == "stop"


# -- the counters: each response closed exactly once ---------------------------------------


async def test_a_reader_leaving_early_closes_its_response_once(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    async with StreamManager() as manager:
        async with manager.open(chat(http)) as stream:
            async for _ in stream:
                assert upstream.stats().open == 1
                break
        assert upstream.stats() == stats(client_left=1)


async def test_an_operator_cancel_closes_a_stalled_response(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    async with StreamManager() as manager:
        source = chat(http, **simulate(fault="stall_mid_stream", fault_after=1))
        with pytest.raises(streammgr.StreamCancelled):
            async with manager.open(source) as stream:
                async for _ in stream:
                    if upstream.stats().open:
                        manager.cancel(stream.id, reason="operator")
    assert upstream.stats() == stats(client_left=1)


async def test_many_streams_are_counted_open_at_once(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(read_chat, http)
        await trio.testing.wait_all_tasks_blocked()
        assert upstream.stats().open == 10
    assert upstream.stats() == stats(completed=10, max_open=10)


async def test_closing_twice_counts_once_and_reading_after_close_raises(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    request = http.build_request("POST", f"{BASE}/chat/completions", json=body)
    response = await http.send(request, stream=True)
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    chunks = stream.__aiter__()
    await chunks.__anext__()
    assert upstream.stats().open == 1
    await response.aclose()
    await response.aclose()
    await stream.aclose()
    assert upstream.stats() == stats(client_left=1)
    with pytest.raises(httpx.StreamClosed):
        await chunks.__anext__()
    with pytest.raises(httpx.StreamClosed):
        await response.aread()


async def test_a_caller_giving_up_before_the_head_is_counted(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    body |= simulate(fault="stall_before_first_byte")
    with trio.move_on_after(1):
        await http.post(f"{BASE}/chat/completions", json=body)
    assert upstream.stats() == stats(client_left=1)


async def test_every_response_is_counted_once_across_every_ending(
    autojump_clock: trio.abc.Clock, http: httpx.AsyncClient, upstream: SimulatedUpstream
) -> None:
    faults = [
        None,
        "http_error",
        "rate_limited",
        "drop_mid_stream",
        "stall_before_first_byte",
        "stall_mid_stream",
        "malformed_chunk",
        "error_in_stream",
        "no_done",
    ]
    timeouts = SourceTimeouts(connect=1, idle=1)
    for fault in faults:
        try:
            await read_chat(http, timeouts=timeouts, **simulate(fault=fault))
        except streammgr.StreamError:
            assert fault not in (None, "no_done")
        else:
            assert fault in (None, "no_done")
    counted = upstream.stats()
    assert counted.open == 0
    assert counted.opened == counted.closed == len(faults)
    assert counted.completed + counted.client_left + counted.faulted == len(faults)


# -- the real openai SDK, under Trio -------------------------------------------------------


# The SDK stops reading at [DONE] without closing its own SSE generators (nor httpx's
# under them); Trio warns when it collects them. That is the SDK's behaviour, with a
# real server too, not the simulator's, so those warnings alone are let through.
@pytest.mark.filterwarnings(
    "ignore:Async generator 'openai.:ResourceWarning",
    "ignore:Async generator 'httpx.:ResourceWarning",
)
async def test_the_openai_sdk_reads_the_simulator(
    autojump_clock: trio.abc.Clock, upstream: SimulatedUpstream
) -> None:
    import openai as sdk  # the dev extra installs it: the SDK is the client that matters

    # Untyped here: this openai release annotates http_client with its own httpx fork.
    openai: Any = sdk

    async def use_the_sdk() -> None:
        async with httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http:
            client = openai.AsyncOpenAI(
                api_key="sk-test", base_url=BASE, http_client=http, max_retries=0
            )
            stream = await client.chat.completions.create(
                model="sim-large",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=5,
            )
            parts, finish, usage = [], None, None
            async with stream:
                async for chunk in stream:
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
                        finish = chunk.choices[0].finish_reason or finish
                    usage = chunk.usage or usage
            assert finish == "length"
            assert usage is not None
            assert usage.completion_tokens == 5
            ours = await read_chat(http, model="sim-large", include_usage=True, max_tokens=5)
            assert "".join(parts) == ours.text

            completion = await client.chat.completions.create(model="m", messages=MESSAGES)
            assert completion.choices[0].message.content
            assert completion.usage.completion_tokens == 8
            models = [model.id async for model in await client.models.list()]
            assert models == ["sim-small", "sim-large"]

            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(
                    model="m", messages=MESSAGES, extra_body=simulate(fault="rate_limited")
                )
            assert limited.value.response.headers["retry-after-ms"] == "1000"
            with pytest.raises(openai.BadRequestError, match="messages must be a non-empty"):
                await client.chat.completions.create(model="m", messages=[])

    await use_the_sdk()
    gc.collect()  # the SDK's abandoned generators, while the filter above applies
    assert upstream.stats().open == 0
