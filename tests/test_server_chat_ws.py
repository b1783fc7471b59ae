"""The gateway's WebSocket chat route (``/v1/chat/ws``) end to end: served by
``streammgr.server.serve`` on 127.0.0.1 in front of the simulated upstream, with
trio-websocket as the client (and a raw wsproto client that stops reading).

Real time over loopback: every wait is on a message, an event or a condition
bounded by ``fail_after``; latencies are hundredths of a second.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected
from wsproto.events import TextMessage

from streammgr import CloseReason, StreamManager
from streammgr.server import ServiceOptions

from .chat_ws_helpers import (
    MESSAGES,
    close_code,
    connect,
    content,
    flooded_gateway,
    read_final,
    receive,
    request,
    simulated_text,
    stalled_client,
    until_done,
)
from .response_helpers import forever
from .server_helpers import (
    GATEWAY_BASE,
    GATEWAY_UPSTREAM_KEY,
    PATIENCE,
    CloseWatcher,
    assert_quiet,
    assert_upstream_released,
    fast_upstream,
    read_until_closed,
    running_gateway,
    running_service,
    wait_until,
)

BASE = GATEWAY_BASE
UPSTREAM_KEY = GATEWAY_UPSTREAM_KEY


# -- a chat, and several ------------------------------------------------------------------


async def test_a_chat_streams_deltas_then_a_final_message(nursery: trio.Nursery) -> None:
    async with (
        running_gateway(nursery) as gateway,
        connect(gateway.server.port) as ws,
    ):
        await ws.send_message(request("r-1", tokens=8))
        deltas, final = await until_done(ws)
        assert content(deltas) == simulated_text(gateway.upstream, tokens=8)
        assert deltas[0]["delta"]["role"] == "assistant"
        assert all(message["id"] == "r-1" for message in deltas)
        assert all(message["delta"] for message in deltas)  # no empty deltas
        assert final == {
            "type": "chat.response",
            "id": "r-1",
            "delta": {},
            "done": True,
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10},
        }
        (info,) = gateway.manager.history()
        assert info.close_reason is CloseReason.COMPLETED
        assert info.labels["route"] == "chat.ws"
        assert info.labels["stream"] == "true"
        assert info.key == "anonymous"
        assert info.notes["finish_reason"] == "stop"  # OpenAIChat's notes, as for HTTP
    assert gateway.upstream.stats().open == 0


async def test_several_requests_on_one_connection(nursery: trio.Nursery) -> None:
    async with (
        running_gateway(nursery) as gateway,
        connect(gateway.server.port) as ws,
    ):
        for number, tokens in enumerate((3, 5, 2)):
            await ws.send_message(request(f"q{number}", tokens=tokens))
            deltas, final = await until_done(ws)
            assert content(deltas) == simulated_text(gateway.upstream, tokens=tokens)
            assert final["id"] == f"q{number}"
            assert final["usage"]["completion_tokens"] == tokens
        # No id: null is echoed; other parameters reach the upstream (max_tokens cuts).
        body = json.loads(request(tokens=6))
        await ws.send_message(json.dumps({**body, "max_tokens": 2}))
        deltas, final = await until_done(ws)
        assert final["id"] is None
        assert final["finish_reason"] == "length"
        assert final["usage"]["completion_tokens"] == 2
    history = gateway.manager.history()
    assert [info.close_reason for info in history] == [CloseReason.COMPLETED] * 4
    assert len({info.labels["request_id"] for info in history}) == 4


async def test_the_chunks_of_one_read_travel_in_one_message(nursery: trio.Nursery) -> None:
    # The whole answer in one upstream read: one chat.response carries it all.
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "c1", "model": "m", "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    upstream_body = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"content": "Hello"})
        + chunk({"content": ", world"})
        + chunk({"tool_calls": [call]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "tool_calls")
        + 'data: {"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":3,'
        '"completion_tokens":4,"total_tokens":7}}\n\n' + "data: [DONE]\n\n"
    )
    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=upstream_body
        )

    transport = httpx.MockTransport(answer)
    async with (
        running_gateway(nursery, transport=transport) as gateway,
        connect(gateway.server.port) as ws,
    ):
        body = json.loads(request("one"))
        await ws.send_message(json.dumps({**body, "temperature": 0.5}))
        deltas, final = await until_done(ws)
    (message,) = deltas
    assert message["delta"] == {
        "role": "assistant",
        "content": "Hello, world",
        "tool_calls": [
            call,
            {"index": 0, "function": {"arguments": '{"a":'}},
            {"index": 0, "function": {"arguments": "1}"}},
        ],
    }
    assert final["finish_reason"] == "tool_calls"
    assert final["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    (sent,) = seen  # the upstream got the caller's parameters, stream and usage set
    assert sent["temperature"] == 0.5
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert "type" not in sent
    assert "id" not in sent
    assert gateway.manager.history()[0].items == 7  # six chunks and the usage chunk


# -- cancelling -----------------------------------------------------------------------------


async def test_chat_cancel_ends_the_request_in_flight(nursery: trio.Nursery) -> None:
    upstream = fast_upstream(token_latency=0.02)
    async with (
        running_gateway(nursery, upstream=upstream) as gateway,
        connect(gateway.server.port) as ws,
    ):
        await ws.send_message(request("long", tokens=1000))
        first = await receive(ws)
        assert first.get("delta"), first
        await ws.send_message(json.dumps({"type": "chat.cancel", "id": "another"}))  # not it
        await ws.send_message(json.dumps({"type": "chat.cancel"}))
        _, final = await until_done(ws)
        assert final["id"] == "long"
        assert final["error"]["code"] == "cancelled"
        assert final["error"]["type"] == "stream_cancelled"
        assert "the client cancelled" in final["error"]["message"]
        (info,) = gateway.manager.history()
        assert info.close_reason is CloseReason.CANCELLED
        assert info.detail == "the client cancelled the request"
        await wait_until(lambda: upstream.stats().open == 0)
        assert upstream.stats().client_left == 1
        # Nothing in flight: a cancel is let be; the connection goes on serving.
        await ws.send_message(json.dumps({"type": "chat.cancel"}))
        await ws.send_message(request("next", tokens=2))
        _, final = await until_done(ws)
        assert final["id"] == "next"
        assert final["finish_reason"] == "stop"


async def test_closing_the_socket_ends_the_request_and_its_upstream(
    nursery: trio.Nursery,
) -> None:
    upstream = fast_upstream(token_latency=0.02)
    async with running_gateway(nursery, upstream=upstream) as gateway:
        watcher = CloseWatcher(gateway.manager)
        await nursery.start(watcher.run)
        async with connect(gateway.server.port) as ws:
            await ws.send_message(request("long", tokens=1000))
            assert (await receive(ws))["delta"]
            assert upstream.stats().open == 1
        info = await watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert info.items > 0
        await wait_until(lambda: upstream.stats().open == 0)
        assert upstream.stats().client_left == 1
        assert gateway.manager.stats().active == 0


async def test_closing_while_waiting_for_a_slot_holds_nothing(nursery: trio.Nursery) -> None:
    options = {"max_streams": 1, "acquire_timeout": 10.0}
    async with running_gateway(nursery, manager_options=options) as gateway:
        watcher = CloseWatcher(gateway.manager)
        await nursery.start(watcher.run)
        async with gateway.manager.open(forever) as holder:
            async with connect(gateway.server.port) as ws:
                await ws.send_message(request("waiting"))
                await wait_until(lambda: gateway.manager.stats().waiting == 1)
            info = await watcher.next_close(besides=(holder.id,))
            assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
            assert info.admitted_at is None
            gateway.manager.cancel(holder.id)
        assert gateway.upstream.stats().opened == 0


# -- limits and failures ---------------------------------------------------------------------


async def test_over_the_limit_a_final_error_with_retry_after_and_nothing_charged(
    nursery: trio.Nursery,
) -> None:
    options = {"max_streams": 1, "acquire_timeout": 0.05}
    async with (
        running_gateway(nursery, manager_options=options) as gateway,
        gateway.manager.open(forever) as holder,
        connect(gateway.server.port, [("authorization", "Bearer sk-caller-1")]) as ws,
    ):
        await ws.send_message(request("over"))
        deltas, final = await until_done(ws)
        assert deltas == []
        assert final["id"] == "over"
        assert final["error"]["type"] == "rate_limit_exceeded"
        assert final["error"]["code"] == "max_streams"
        assert final["retry_after"] > 0
        (rejected,) = gateway.manager.history()
        assert rejected.close_reason is CloseReason.REJECTED
        assert rejected.admitted_at is None
        assert rejected.key.startswith("key-")
        assert gateway.upstream.stats().opened == 0
        assert [info.id for info in gateway.manager.streams()] == [holder.id]
        gateway.manager.cancel(holder.id)
        # The slot is back: the same connection gets an answer now.
        await ws.send_message(request("again", tokens=2))
        _, final = await until_done(ws)
        assert final["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("drop_mid_stream", "upstream_error"),
        ("malformed_chunk", "upstream_error"),
        ("error_in_stream", "upstream_error"),
        ("no_done", "upstream_truncated"),
        ("stall_mid_stream", "upstream_idle_timeout"),
    ],
)
async def test_an_upstream_fault_mid_stream_ends_with_an_in_band_error(
    nursery: trio.Nursery, fault: str, code: str
) -> None:
    async with (
        running_gateway(nursery) as gateway,
        connect(gateway.server.port) as ws,
    ):
        options: dict[str, Any] = {"tokens": 6, "fault": fault}
        if fault == "no_done":
            options["fault_after"] = 2
        await ws.send_message(request("f", **options))
        deltas, final = await until_done(ws)
        assert deltas  # what came before the fault was delivered
        assert "finish_reason" not in final
        assert final["error"]["code"] == code
        assert set(final["error"]) == {"message", "type", "code", "param"}
        (info,) = gateway.manager.history()
        assert str(info.close_reason) == code
        await wait_until(lambda: gateway.upstream.stats().open == 0)
        # The connection is still good.
        await ws.send_message(request("ok", tokens=1))
        assert (await until_done(ws))[1]["finish_reason"] == "stop"


async def test_upstream_refusals_get_the_http_routes_codes(nursery: trio.Nursery) -> None:
    async with (
        running_gateway(nursery) as gateway,
        connect(gateway.server.port) as ws,
    ):
        await ws.send_message(request("a", fault="rate_limited", retry_after=3))
        _, limited = await until_done(ws)
        assert limited["error"]["type"] == "rate_limit_exceeded"
        assert limited["retry_after"] == 3.0  # the upstream's own
        await ws.send_message(request("b", fault="http_error", status=404))
        _, refused = await until_done(ws)
        assert refused["error"]["type"] == "invalid_request_error"
        assert refused["error"]["code"] == "upstream_refused"
        await ws.send_message(request("c", fault="http_error", status=503))
        _, failed = await until_done(ws)
        assert failed["error"]["type"] == "upstream_error"
        assert "503" in failed["error"]["message"]


# -- bad messages ---------------------------------------------------------------------------


async def test_bad_messages_are_answered_and_the_connection_stays_usable(
    nursery: trio.Nursery,
) -> None:
    upstream = fast_upstream(token_latency=0.02)
    good = json.loads(request())
    cases: list[tuple[str | bytes, str, str | None]] = [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_message", None),
        ('{"model": "m"}', "invalid_message", "type"),
        ('{"type": "chat.stream"}', "unknown_type", "type"),
        (json.dumps({**good, "id": 7}), "invalid_field", "id"),
        (json.dumps({**good, "id": "x" * 65}), "invalid_field", "id"),
        (json.dumps({"type": "chat.request", "messages": MESSAGES}), "invalid_field", "model"),
        (json.dumps({**good, "messages": []}), "invalid_field", "messages"),
        (json.dumps({**good, "messages": ["hi"]}), "invalid_field", "messages[0]"),
        (json.dumps({**good, "stream": False}), "invalid_field", "stream"),
        (json.dumps({**good, "n": 2}), "invalid_field", "n"),
        (b'{"type": "chat.request"}', "invalid_message", None),
        # Nothing could encode these again for the upstream (found by the fuzzer on
        # the HTTP route): refused up front, never a failed stream.
        (json.dumps(good)[:-1] + ', "temperature": NaN}', "invalid_json", None),
        (json.dumps(good)[:-1] + ', "temperature": 1e999}', "invalid_json", None),
        (
            json.dumps({**good, "messages": [{"role": "user", "content": "\ud800"}]}),
            "invalid_field",
            "messages[0].content",
        ),
    ]
    async with (
        running_gateway(nursery, upstream=upstream) as gateway,
        connect(gateway.server.port) as ws,
    ):
        for text, code, param in cases:
            await ws.send_message(text)
            answer = await receive(ws)
            assert answer["type"] == "error", text
            error = answer["error"]
            assert (error["code"], error["param"]) == (code, param), text
            assert error["type"] == "invalid_request_error"
            assert error["message"]
        assert gateway.manager.stats().opened_total == 0
        # A second request while one is in flight: refused, the first goes on.
        await ws.send_message(request("first", tokens=5))
        assert (await receive(ws))["id"] == "first"
        await ws.send_message(request("second"))
        refusal = None
        deltas = []
        while True:
            message = await receive(ws)
            if message["type"] == "error":
                refusal = message
                continue
            if message.get("done"):
                break
            deltas.append(message)
        assert refusal is not None
        assert refusal["id"] == "second"
        assert refusal["error"]["code"] == "request_in_flight"
        assert message["id"] == "first"
        assert message["finish_reason"] == "stop"
        assert gateway.manager.stats().opened_total == 1


async def test_a_message_over_the_size_limit_closes_with_1009(nursery: trio.Nursery) -> None:
    async with (
        running_gateway(nursery, max_request_size=1000) as gateway,
        connect(gateway.server.port) as ws,
    ):
        body = json.loads(request())
        await ws.send_message(json.dumps({**body, "padding": "é" * 600}))  # 1200+ bytes
        answer = await receive(ws)
        assert answer["error"]["code"] == "message_too_big"
        assert "1000 bytes" in answer["error"]["message"]
        assert await close_code(ws) == 1009
    assert gateway.manager.stats().opened_total == 0


# -- a client that stops reading --------------------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_off(nursery: trio.Nursery) -> None:
    # hypercorn's send() cannot be cancelled, yet the stream, its slot and its
    # upstream go after stall_timeout, and the connection is closed.
    async with flooded_gateway(
        nursery,
        stall_timeout=0.2,
    ) as (gateway, flood, watcher):
        client, _ = await stalled_client(gateway.server.port, request("flood"))
        info = await watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_STALLED
        assert gateway.manager.stats().active == 0  # the slot is free
        with trio.fail_after(PATIENCE):
            await flood.left.wait()  # the upstream saw its connection end
        await read_until_closed(client)  # the guard closed the connection


async def test_reader_timeout_frees_the_slot_while_the_send_is_parked(
    nursery: trio.Nursery,
) -> None:
    # No stall_timeout, no send_timeout: the manager's reader_timeout still ends the
    # stream; the client, reading again, gets the final error on a usable connection.
    async with flooded_gateway(
        nursery,
        manager_options={"reader_timeout": 0.2},
        stall_timeout=None,
        send_timeout=None,
    ) as (gateway, flood, watcher):
        client, protocol = await stalled_client(gateway.server.port, request("flood"))
        info = await watcher.next_close()
        assert info.close_reason is CloseReason.READER_TIMEOUT
        assert gateway.manager.stats().active == 0
        with trio.fail_after(PATIENCE):
            await flood.left.wait()
        final = await read_final(client, protocol)
        assert final["id"] == "flood"
        assert final["error"]["code"] == "reader_timeout"
        await client.aclose()


# -- origins -----------------------------------------------------------------------------------


async def test_only_allowed_origins_may_connect(nursery: trio.Nursery) -> None:
    options = ServiceOptions(upstream_url=BASE, cors_origins=["https://app.example"])
    async with running_service(nursery, StreamManager(), options) as (server, _):
        with pytest.RaisesGroup(ConnectionRejected, flatten_subgroups=True) as refused:
            async with connect(server.port, [("origin", "https://evil.example")]):
                pass
        (rejection,) = refused.value.exceptions
        assert isinstance(rejection, ConnectionRejected)
        assert rejection.status_code == 403
        assert rejection.body is not None
        assert json.loads(rejection.body)["error"]["code"] == "origin_not_allowed"
        for headers in ([("origin", "https://app.example")], []):  # allowed; not a browser
            async with connect(server.port, headers) as ws:
                await ws.send_message(request("o", tokens=1))
                assert (await until_done(ws))[1]["finish_reason"] == "stop"


# -- misbehaving clients ------------------------------------------------------------------


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


# -- no secret in an upstream's refusal --------------------------------------------------

CALLER_TOKEN = "sk-caller-secret-9876543210"


def answering(
    body: bytes, status: int = 200, seen: list[httpx.Request] | None = None
) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        kind = "text/event-stream" if status == 200 else "application/json"
        return httpx.Response(status, headers={"content-type": kind}, content=body)

    return httpx.MockTransport(answer)


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
