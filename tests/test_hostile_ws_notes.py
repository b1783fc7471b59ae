"""A hostile trial of the WebSocket chat route and of registry notes (issues #8/#9).

Each test attacks one thing as a hostile client, a hostile upstream or a careless
operator would, and checks the invariants afterwards: the registry empty, no
stream active or waiting, the simulator holding no connection, no secret in any
message, record or log line.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

from streammgr import (
    CloseReason,
    IdleTimeout,
    ManagerClosed,
    StreamCancelled,
    StreamLimitExceeded,
    StreamManager,
    UpstreamStatusError,
    UpstreamTruncated,
    current_producer,
)
from streammgr.server import ServiceOptions
from streammgr.server._answers import ErrorAnswer, error_answer
from streammgr.server._gateway import _has_outcome, _note_outcome_of
from streammgr.server._metrics import AdminMetrics
from streammgr.testing import LeakError, TrackingTransport, checked_manager

from .chat_ws_helpers import Flood, connect, receive, request, stalled_client, until_done
from .server_helpers import GATEWAY_BASE as BASE
from .server_helpers import GATEWAY_UPSTREAM_KEY as UPSTREAM_KEY
from .server_helpers import (
    PATIENCE,
    CloseWatcher,
    Running,
    Server,
    fast_upstream,
    read_until_closed,
    running_gateway,
    running_service,
    wait_until,
)

CALLER_TOKEN = "sk-caller-secret-9876543210"


def assert_quiet(gateway: Running) -> None:
    """Nothing left behind: no stream in the registry, no slot, no upstream connection."""
    assert gateway.manager.streams() == []
    stats = gateway.manager.stats()
    assert stats.active == 0
    assert stats.waiting == 0


async def assert_upstream_released(gateway: Running) -> None:
    await wait_until(lambda: gateway.upstream.stats().open == 0)


def sse(*chunks: dict[str, Any] | str) -> bytes:
    lines = []
    for chunk in chunks:
        data = chunk if isinstance(chunk, str) else json.dumps(chunk)
        lines.append(f"data: {data}\n\n")
    lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def answering(
    body: bytes, status: int = 200, seen: list[httpx.Request] | None = None
) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        kind = "text/event-stream" if status == 200 else "application/json"
        return httpx.Response(status, headers={"content-type": kind}, content=body)

    return httpx.MockTransport(answer)


# -- the WebSocket route -------------------------------------------------------------------


async def test_binary_frames_huge_ids_and_a_flood_during_a_stream(nursery: trio.Nursery) -> None:
    upstream = fast_upstream(token_latency=0.01)
    async with (
        running_gateway(nursery, upstream=upstream) as gateway,
        connect(gateway.server.port) as ws,
    ):
        await ws.send_message(b"\x00\x01binary")
        answer = await receive(ws)
        assert answer["type"] == "error"
        assert answer["error"]["code"] == "invalid_message"
        huge = "x" * 10_000
        await ws.send_message(json.dumps({"type": "chat.request", "id": huge}))
        answer = await receive(ws)
        assert answer["error"]["param"] == "id"
        assert huge not in json.dumps(answer)  # never echoed back
        assert "id" not in answer
        await ws.send_message(request("long", tokens=200))
        # A flood while the stream runs: each is answered, none starts a stream.
        for number in range(50):
            await ws.send_message(request(f"flood-{number}"))
        refused = 0
        while True:
            message = await receive(ws)
            if message["type"] == "error":
                assert message["error"]["code"] == "request_in_flight"
                refused += 1
            elif message.get("done"):
                assert message["id"] == "long"
                assert message["finish_reason"] == "stop"
                break
        while refused < 50:  # the rest of the refusals may follow the final message
            message = await receive(ws)
            assert message["error"]["code"] == "request_in_flight"
            refused += 1
        assert len(gateway.manager.history()) == 1
    assert_quiet(gateway)
    await assert_upstream_released(gateway)


async def test_cancel_racing_the_end_of_a_stream_and_a_new_request(
    nursery: trio.Nursery,
) -> None:
    # chat.cancel, then chat.request, sent together right as a short answer ends: the
    # cancel hits the old stream or nothing, never the new request.
    async with (
        running_gateway(nursery) as gateway,
        connect(gateway.server.port) as ws,
    ):
        for number in range(5):
            await ws.send_message(request(f"a{number}", tokens=1))
            await ws.send_message(json.dumps({"type": "chat.cancel", "id": f"a{number}"}))
            await ws.send_message(request(f"b{number}", tokens=2))
            finals: dict[str, dict[str, Any]] = {}
            while "b" + str(number) not in finals:
                message = await receive(ws)
                if message.get("done"):
                    finals[message["id"]] = message
                elif message["type"] == "error":
                    # The second request came while the first was in flight.
                    assert message["error"]["code"] == "request_in_flight"
                    await ws.send_message(request(f"b{number}", tokens=2))
            assert finals[f"b{number}"]["finish_reason"] == "stop"
        reasons = {info.close_reason for info in gateway.manager.history()}
        assert reasons <= {CloseReason.COMPLETED, CloseReason.CANCELLED}
    assert_quiet(gateway)
    await assert_upstream_released(gateway)


async def test_a_client_that_closes_mid_send_leaves_nothing(nursery: trio.Nursery) -> None:
    upstream = fast_upstream(token_latency=0.001)
    async with running_gateway(nursery, upstream=upstream) as gateway:
        watcher = CloseWatcher(gateway.manager)
        await nursery.start(watcher.run)
        seen: tuple[str, ...] = ()
        for _ in range(3):
            async with connect(gateway.server.port) as ws:
                await ws.send_message(request("gone", tokens=5000))
                await receive(ws)
            info = await watcher.next_close(besides=seen)
            seen = (*seen, info.id)
        assert {info.close_reason for info in gateway.manager.history()} == {
            CloseReason.CLIENT_DISCONNECTED
        }
        assert_quiet(gateway)
        await assert_upstream_released(gateway)


async def test_many_idle_connections_are_closed_at_shutdown(nursery: trio.Nursery) -> None:
    async with running_gateway(nursery) as gateway:
        sockets: list[WebSocketConnection] = []
        async with trio.open_nursery() as clients:

            async def idle(ready: trio.Event) -> None:
                async with connect(gateway.server.port) as ws:
                    sockets.append(ws)
                    ready.set()
                    with trio.fail_after(PATIENCE):
                        while not ws.closed:
                            try:
                                await ws.get_message()
                            except Exception:
                                break

            for _ in range(20):
                ready = trio.Event()
                clients.start_soon(idle, ready)
                await ready.wait()
            await gateway.manager.aclose()
        assert all(ws.closed is not None and ws.closed.code == 1001 for ws in sockets)
        assert_quiet(gateway)


@pytest.mark.parametrize("status", [401, 429, 500])
async def test_upstream_refusals_carry_no_secret(
    nursery: trio.Nursery, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="streammgr")
    echoed = json.dumps(
        {"error": {"message": f"bad key {UPSTREAM_KEY} / {CALLER_TOKEN}", "type": "x"}}
    )
    seen: list[httpx.Request] = []
    transport = answering(echoed.encode(), status, seen)
    async with (
        running_gateway(nursery, transport=transport) as gateway,
        connect(gateway.server.port, [("authorization", f"Bearer {CALLER_TOKEN}")]) as ws,
    ):
        await ws.send_message(request("r"))
        _, final = await until_done(ws)
        assert final["error"]["code"]
        text = json.dumps(final)
        (info,) = gateway.manager.history()
    records = json.dumps(info.to_dict()) + caplog.text
    (upstream_request,) = seen  # the upstream gets the gateway's key, never the caller's
    assert upstream_request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CALLER_TOKEN not in str(upstream_request.headers) + upstream_request.content.decode()
    for secret in (UPSTREAM_KEY, CALLER_TOKEN):
        assert secret not in text
        assert secret not in records
    assert_quiet(gateway)


# -- notes ----------------------------------------------------------------------------------

HOSTILE_CHUNKS = [
    '{"choices":[{"index":0,"delta":{},"finish_reason":5}]}',
    '{"choices":[{"index":0,"delta":{},"finish_reason":{"a":1}}]}',
    '{"choices":[{"index":0,"delta":{},"finish_reason":"' + "s" * 100_000 + '"}]}',
    '{"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":true,"total_tokens":1.5}}',
    '{"choices":[],"usage":{"prompt_tokens":' + "9" * 400 + ',"completion_tokens":1}}',
    '{"choices":[],"usage":{"prompt_tokens":' + "9" * 5000 + "}}",  # over int's digit limit
    '{"choices":[],"usage":[1,2,3]}',
    '{"choices":[],"usage":"lots"}',
    '{"choices":' + json.dumps([{"finish_reason": str(n)} for n in range(10_000)]) + "}",
    '{"content":"\\"usage\\": {","choices":[]}',
    '{"content":"\\"finish_reason\\": \\"stop\\"","choices":[]}',
    '{"usage": {',
    "[1,2]",
    '"usage"',
]


async def test_hostile_chunks_never_fail_the_raw_path_and_keep_notes_bounded() -> None:
    async with StreamManager() as manager:

        async def producer() -> AsyncIterator[str]:
            for chunk in HOSTILE_CHUNKS * 3:  # usage in every chunk, too
                if _has_outcome(chunk):
                    _note_outcome_of(chunk)
                yield chunk

        async with manager.open(producer) as stream:
            assert len([chunk async for chunk in stream]) == len(HOSTILE_CHUNKS) * 3
        (info,) = manager.history()
    assert info.close_reason is CloseReason.COMPLETED
    assert set(info.notes) <= {
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    }
    assert all(len(value) <= 64 for value in info.notes.values() if isinstance(value, str))


async def test_huge_token_counts_do_not_break_the_metrics_feed() -> None:
    # An upstream's usage with a 400-digit count is a valid int: noted, and the
    # metrics feed (run in the admin app's lifespan) must count it or skip it, not die.
    async with StreamManager() as manager:

        async def producer() -> AsyncIterator[str]:
            _note_outcome_of(HOSTILE_CHUNKS[4])
            yield "x"

        metrics = AdminMetrics(manager)
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.run_feed)
            async with manager.open(producer) as stream:
                async for _ in stream:
                    pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        (info,) = manager.history()
        assert info.notes["prompt_tokens"] == int("9" * 400)
        assert b"streammgr_completion_tokens_total 1.0" in metrics.render().replace(
            b"generation", b"completion"
        )


async def test_annotating_in_a_tight_loop_and_on_a_cancelled_stream() -> None:
    async with StreamManager() as manager:
        done = trio.Event()

        async def producer() -> AsyncIterator[int]:
            context = current_producer()
            assert context is not None
            for number in range(10_000):
                context.annotate(step=number)
            yield 1
            done.set()
            await trio.sleep_forever()
            yield 2

        async with manager.open(producer) as stream:
            async for _ in stream:
                await done.wait()
                manager.cancel(stream.id)
                break
        (info,) = manager.history()
    assert info.close_reason is CloseReason.CANCELLED
    assert info.notes == {"step": 9999}


# -- x-should-retry and Retry-After, as the openai SDK reads them --------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstreams_huge_retry_after_is_a_429_not_a_crash(
    nursery: trio.Nursery, stream: bool
) -> None:
    # A finite Retry-After near float's maximum: ``retry_after * 1000`` is infinite,
    # and the answer's headers must still be written.
    def limited(_: httpx.Request) -> httpx.Response:
        headers = {"retry-after": "1e308", "content-type": "application/json"}
        return httpx.Response(429, headers=headers, content=b'{"error":{"message":"slow"}}')

    async with (
        running_gateway(nursery, transport=httpx.MockTransport(limited)) as gateway,
        httpx.AsyncClient(base_url=gateway.server.url) as client,
    ):
        body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
        with trio.fail_after(PATIENCE):
            answer = await client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert answer.status_code == 429
        assert answer.json()["error"]["type"] == "rate_limit_exceeded"
        assert float(answer.headers["retry-after"]) > 60
        sdk = openai.AsyncOpenAI(api_key="x", base_url=gateway.server.url)
        # Longer than the SDK waits (its stubs name httpx2's Response: same class).
        assert sdk._should_retry(answer) is False  # type: ignore[arg-type]
        await sdk.close()
    assert_quiet(gateway)


def _sdk_retries(answer: ErrorAnswer) -> bool:
    headers = [(name.decode(), value.decode()) for name, value in answer.headers()]
    response = httpx.Response(answer.status, headers=headers)
    client = openai.OpenAI(api_key="x", base_url="http://gateway.local/v1")
    try:
        return client._should_retry(response)  # type: ignore[arg-type]  # httpx2 in its stubs
    finally:
        client.close()


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (StreamLimitExceeded("over", limit="max_streams", retry_after=0.05, key="k"), True),
        (StreamLimitExceeded("over", limit="max_per_key", retry_after=3600, key="k"), False),
        (ManagerClosed("closed"), True),
        (UpstreamStatusError("no", status_code=401, body="{}"), False),
        (UpstreamStatusError("no", status_code=403, body="{}"), False),
        (UpstreamStatusError("no", status_code=400, body="{}"), False),
        (UpstreamStatusError("no", status_code=429, body="{}"), True),
        (UpstreamStatusError("no", status_code=429, body="{}", retry_after=2.5), True),
        (UpstreamStatusError("no", status_code=500, body="{}"), True),
        (UpstreamStatusError("no", status_code=503, body="{}"), True),
        (UpstreamStatusError("no", status_code=408, body="{}"), True),
        (UpstreamTruncated("cut"), True),
        (StreamCancelled("op", close_reason=CloseReason.CANCELLED, stream_id="s"), False),
        (StreamCancelled("", close_reason=CloseReason.SHUTDOWN, stream_id="s"), True),
        (
            IdleTimeout("idle", close_reason=CloseReason.IDLE_TIMEOUT, stream_id="s", timeout=1),
            True,
        ),
    ],
)
def test_the_sdk_retries_what_may_go_better_and_only_that(
    error: BaseException, retried: bool
) -> None:
    assert _sdk_retries(error_answer(error, "s1", None)) is retried


# -- streammgr.testing: no false negatives, no false alarms -------------------------------


async def _chunks() -> AsyncIterator[bytes]:
    yield b"data: hi\n\n"


def _streaming(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/moved":
        return httpx.Response(302, headers={"location": "/v1/x"}, stream=_Body())
    return httpx.Response(200, stream=_Body())


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: hi\n\n"


async def test_a_stream_opened_and_never_entered_holds_nothing() -> None:
    # Not a false negative: open() registers nothing until the stream is entered.
    async with checked_manager() as manager:
        manager.open(_chunks, key="forgotten")
        assert manager.streams() == []


async def test_checked_manager_catches_a_watcher_left_open_by_a_background_task(
    nursery: trio.Nursery,
) -> None:
    with pytest.raises(LeakError) as caught:
        async with checked_manager() as manager:

            async def watch(task_status: trio.TaskStatus[None]) -> None:
                async with manager.watch() as events:
                    task_status.started()
                    async for _ in events:
                        pass

            await nursery.start(watch)
    assert [leak.kind for leak in caught.value.leaks] == ["watcher"]


async def test_checked_manager_catches_an_unclosed_response_and_spares_httpxs_own_closes() -> None:
    transport = TrackingTransport(httpx.MockTransport(_streaming))
    async with httpx.AsyncClient(transport=transport, base_url="http://up.local") as client:
        # httpx reads and closes these itself: no false alarm.
        async with checked_manager(transports=[transport]):
            assert (await client.get("/v1/x")).text == "data: hi\n\n"
            assert (await client.get("/moved", follow_redirects=True)).status_code == 200
            async with client.stream("GET", "/v1/x"):
                pass  # never read: the context manager still closes it
        assert transport.opened == 4
        # A streamed response never closed is found.
        with pytest.raises(LeakError) as caught:
            async with checked_manager(transports=[transport]):
                request = client.build_request("GET", "/v1/x")
                leaked = await client.send(request, stream=True)
        assert [leak.kind for leak in caught.value.leaks] == ["response"]
        await leaked.aclose()


async def test_checked_manager_catches_a_leaked_socket() -> None:
    with pytest.raises(LeakError) as caught:
        async with checked_manager(fds=True):
            leaked = socket.socket()
    leaked.close()
    assert [leak.kind for leak in caught.value.leaks] == ["fd"]
    assert "socket:" in caught.value.leaks[0].what


async def test_a_note_never_carries_a_secret_of_the_manager(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="streammgr")
    secret = "sk-manager-secret-0123456789"
    seen: list[Any] = []
    async with StreamManager(secrets=[secret]) as manager:

        async def producer() -> AsyncIterator[int]:
            context = current_producer()
            assert context is not None
            context.annotate(finish_reason=f"the key {secret} was refused", model="m-1")
            seen.append(manager.streams()[0].notes)  # the live registry too
            yield 1

        async with manager.open(producer) as stream:
            async for _ in stream:
                pass
        (info,) = manager.history()
    assert info.notes["model"] == "m-1"
    assert "refused" in str(info.notes["finish_reason"])
    for text in (json.dumps(info.to_dict()), json.dumps(dict(seen[0])), caplog.text):
        assert secret not in text


async def test_shutdown_in_every_phase_tells_each_client_and_closes_with_1001(
    nursery: trio.Nursery,
) -> None:
    # One connection streaming, one whose upstream has not answered yet, one queued
    # for a slot, one idle: a graceful shutdown ends each in band, then closes it.
    manager = StreamManager(max_streams=2)
    upstream = fast_upstream(token_latency=0.02)
    options = ServiceOptions(upstream_url=BASE)
    async with running_service(
        nursery,
        manager,
        options,
        upstream=upstream,
        acquire_timeout=30.0,
        grace=0.1,
        close_timeout=30.0,
    ) as (server, _):
        async with (
            connect(server.port) as streaming,
            connect(server.port) as connecting,
            connect(server.port) as queued,
            connect(server.port) as idle,
        ):
            await streaming.send_message(request("s", tokens=1000))
            assert (await receive(streaming))["delta"]
            await connecting.send_message(request("c", first_token_latency=30.0))
            await queued.send_message(request("q"))
            await wait_until(lambda: manager.stats().waiting == 1)
            server.stop.set()
            finals = {}
            for ws in (streaming, connecting, queued):
                _, final = await until_done(ws)
                finals[final["id"]] = final["error"]["code"]
            assert finals["s"] == "shutdown"
            assert finals["c"] == "shutdown"
            assert finals["q"] in {"shutdown", "shutting_down"}
            for ws in (streaming, connecting, queued, idle):
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(PATIENCE):
                    await ws.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1001
            with trio.fail_after(PATIENCE):
                await server.stopped.wait()
    assert manager.streams() == []
    assert manager.stats().active == manager.stats().waiting == 0
    assert upstream.stats().open == 0


async def test_a_client_that_floods_and_never_reads_is_cut_off(nursery: trio.Nursery) -> None:
    # Every bad message is answered; a client that sends them without ever reading
    # fills the server's send buffer, then its own: the server must stop reading
    # (bounded memory), and the write guard must close the connection.
    async with running_gateway(nursery, stall_timeout=0.2) as gateway:
        stream, client = await stalled_client(gateway.server.port, "{}")
        message = client.send(TextMessage(data=json.dumps({"type": "t" * 60})))
        sent = 0
        with trio.fail_after(PATIENCE):
            try:
                while True:
                    await stream.send_all(message * 64)
                    sent += 64
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        assert sent > 0
        await read_until_closed(stream)
        assert gateway.manager.history() == []  # no message started a stream
        assert_quiet(gateway)


async def test_finish_reasons_of_a_hostile_upstream_keep_the_metrics_labels_bounded() -> None:
    async with StreamManager() as manager:
        metrics = AdminMetrics(manager)
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.run_feed)
            for number in range(200):

                async def producer(number: int = number) -> AsyncIterator[str]:
                    reason = f"reason-{number}" if number else "stop"
                    _note_outcome_of(
                        json.dumps({"choices": [{"finish_reason": reason}], "usage": None})
                    )
                    yield "x"

                async with manager.open(producer) as stream:
                    async for _ in stream:
                        pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    lines = [
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith("streammgr_finished_reason") or "finished_reason=" in line
    ]
    counted = [line for line in lines if not line.startswith("#") and "_created" not in line]
    assert sorted(line.split('"')[1] for line in counted) == ["other", "stop"]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 200


@pytest.mark.parametrize(
    "chunk",
    [
        '{"choices":[{"index":0,"delta":{},"logprobs":{"finish_reason":null},'
        '"finish_reason":"stop"}]}',
        '{"meta":{"usage":null},"choices":[],"usage":{"prompt_tokens":3}}',
    ],
)
def test_an_outcome_after_a_nested_null_of_the_same_name_is_seen(chunk: str) -> None:
    # The cheap check looked at the first occurrence of the name only.
    assert _has_outcome(chunk)


async def test_chat_cancel_while_queued_for_a_slot_charges_nothing(nursery: trio.Nursery) -> None:
    options = {"max_streams": 1, "acquire_timeout": 30.0}
    upstream = fast_upstream(token_latency=0.02)
    async with (
        running_gateway(nursery, upstream=upstream, manager_options=options) as gateway,
        connect(gateway.server.port) as busy,
        connect(gateway.server.port) as queued,
    ):
        await busy.send_message(request("busy", tokens=1000))
        assert (await receive(busy))["delta"]
        await queued.send_message(request("queued"))
        await wait_until(lambda: gateway.manager.stats().waiting == 1)
        await queued.send_message(json.dumps({"type": "chat.cancel", "id": "queued"}))
        deltas, final = await until_done(queued)
        assert deltas == []
        assert final["error"]["code"] == "cancelled"
        (info,) = gateway.manager.history()
        assert info.close_reason is CloseReason.CANCELLED
        assert info.admitted_at is None
        assert gateway.upstream.stats().opened == 1  # only the busy one
        assert gateway.manager.stats().waiting == 0
        await busy.send_message(json.dumps({"type": "chat.cancel"}))
        assert (await until_done(busy))[1]["error"]["code"] == "cancelled"
    assert_quiet(gateway)
    await assert_upstream_released(gateway)


async def test_shutdown_with_a_stalled_reader_ends_within_the_stall_timeout(
    nursery: trio.Nursery,
) -> None:
    # The runner is parked in a send that cannot be cancelled when the manager shuts
    # down: the stream still ends at once, and the guard closes the connection.
    flood = Flood()
    flood_server = await Server().start(nursery, flood)
    async with running_gateway(
        nursery,
        transport=httpx.AsyncHTTPTransport(),
        upstream_url=f"{flood_server.url}/v1",
        stall_timeout=0.5,
    ) as gateway:
        watcher = CloseWatcher(gateway.manager)
        await nursery.start(watcher.run)
        client, _ = await stalled_client(gateway.server.port, request("flood"))
        await wait_until(lambda: gateway.manager.stats().active == 1)
        await wait_until(lambda: gateway.manager.streams()[0].bytes > 1 << 20)
        with trio.fail_after(PATIENCE):
            await gateway.manager.aclose()
        (info,) = gateway.manager.history()
        assert info.close_reason in {CloseReason.SHUTDOWN, CloseReason.CLIENT_STALLED}
        with trio.fail_after(PATIENCE):
            await flood.left.wait()
        await read_until_closed(client)
        assert_quiet(gateway)
    flood_server.stop.set()
