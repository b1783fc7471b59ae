"""The service's graceful shutdown: every client is told in band and its connection
closed within ``grace + close_timeout``, also a client that reads nothing, over HTTP
and WebSocket, and ``streammgr serve`` on SIGTERM.

Real time over loopback: every wait is on an event or a condition, bounded.
"""

from __future__ import annotations

import json
import signal

import trio
from trio_websocket import WebSocketConnection

from streammgr import CloseReason, StreamManager
from streammgr.server import ServiceOptions

from .chat_ws_helpers import (
    close_code,
    connect,
    flooded_gateway,
    receive,
    request,
    stalled_client,
    until_done,
)
from .cli_helpers import started
from .fault_helpers import chat, data_events, raw_post, raw_request, unchunked
from .server_helpers import (
    GATEWAY_BASE,
    PATIENCE,
    assert_quiet,
    fast_upstream,
    instant_upstream,
    read_until_closed,
    running_gateway,
    running_service,
    wait_until,
)

MESSAGES = [{"role": "user", "content": "hi"}]
ENDLESS = {
    "model": "sim-small",
    "messages": MESSAGES,
    "stream": True,
    "streammgr_simulate": {"tokens": 100000, "first_token_latency": 0, "token_latency": 0},
}


# -- a client that reads nothing -------------------------------------------------------------


async def test_graceful_shutdown_cuts_a_stalled_client_after_grace_plus_close_timeout() -> None:
    # The manager's shutdown ends the stream, but the response's task stays parked in
    # hypercorn's shielded write; the server's cancellation at graceful_timeout kills
    # the write guard, so only serve()'s send_timeout (60 s) ends the connection.
    options = ServiceOptions(upstream_url="http://sim/v1")
    async with (
        trio.open_nursery() as nursery,
        running_service(
            nursery,
            StreamManager(),
            options,
            upstream=instant_upstream(),
            acquire_timeout=None,
            grace=0.2,
            close_timeout=0.3,
        ) as (server, _),
    ):
        client = await raw_request(
            server.port,
            "POST",
            "/v1/chat/completions",
            json.dumps(ENDLESS).encode(),
            receive_buffer=4096,
        )
        await client.until(lambda response: b'"content":"' in response.body)
        server.stop.set()
        with trio.move_on_after(0.2 + 0.3 + 2.0) as bound:
            await server.stopped.wait()
        await client.stream.aclose()  # unblocks the server either way
    assert not bound.cancelled_caught, "the server outlived grace + close_timeout"


async def test_cli_sigterm_with_a_stalled_client_exits_0_within_grace_plus_5s(
    nursery: trio.Nursery,
) -> None:
    # docs/cli.md: "connections still open 5 s later are cut, and the exit code is 0".
    grace = 0.5
    async with started(nursery, "serve", "--shutdown-grace", str(grace)) as running:
        listening = await running.until("gateway.listening")
        url = str(listening["urls"][0])  # type: ignore[index]
        client = await raw_request(
            int(url.rpartition(":")[2]),
            "POST",
            "/v1/chat/completions",
            json.dumps(ENDLESS).encode(),
            receive_buffer=4096,
        )
        await client.until(lambda response: b'"content":"' in response.body)
        running.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace + 5 + 3) as bound:
            code = await running.process.wait()
        await client.stream.aclose()
        assert not bound.cancelled_caught, "still running long after grace + 5 s"
        assert code == 0


# -- WebSocket clients ----------------------------------------------------------------------


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


async def test_shutdown_in_every_phase_tells_each_client_and_closes_with_1001(
    nursery: trio.Nursery,
) -> None:
    # One connection streaming, one whose upstream has not answered yet, one queued
    # for a slot, one idle: a graceful shutdown ends each in band, then closes it.
    manager = StreamManager(max_streams=2)
    upstream = fast_upstream(token_latency=0.02)
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
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
                assert await close_code(ws) == 1001
            with trio.fail_after(PATIENCE):
                await server.stopped.wait()
    assert manager.streams() == []
    assert manager.stats().active == manager.stats().waiting == 0
    assert upstream.stats().open == 0


async def test_shutdown_with_a_stalled_reader_ends_within_the_stall_timeout(
    nursery: trio.Nursery,
) -> None:
    # The runner is parked in a send that cannot be cancelled when the manager shuts
    # down: the stream still ends at once, and the guard closes the connection.
    async with flooded_gateway(
        nursery,
        stall_timeout=0.5,
    ) as (gateway, flood, _):
        client, _ = await stalled_client(gateway.server.port, request("flood"))
        await wait_until(lambda: gateway.manager.stats().active == 1)
        # Parked in its send: the runner has taken nothing for a while. (Not "more
        # than 1 MiB read": the runner pulls from the upstream itself, a
        # single-reader stream, so nothing is read ahead of what it could send.)
        await wait_until(lambda: taken_nothing_for(gateway.manager, 0.1))
        with trio.fail_after(PATIENCE):
            await gateway.manager.aclose()
        (info,) = gateway.manager.history()
        assert info.close_reason in {CloseReason.SHUTDOWN, CloseReason.CLIENT_STALLED}
        with trio.fail_after(PATIENCE):
            await flood.left.wait()
        await read_until_closed(client)
        assert_quiet(gateway)


# -- WebSocket clients: a stream in flight, a request during the drain ---------------------


async def test_graceful_shutdown_ends_streams_in_band_and_closes_with_1001(
    nursery: trio.Nursery,
) -> None:
    manager = StreamManager()
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    # close_timeout: the server must stop because the connections closed, not time out.
    async with running_service(nursery, manager, options, grace=0.1, close_timeout=30.0) as (
        server,
        upstream,
    ):
        # The first connection watches the manager for every connection; when it
        # goes, another one takes over.
        async with connect(server.port) as first:
            await first.send_message(request("first", tokens=1))
            assert (await until_done(first))[1]["finish_reason"] == "stop"
        async with connect(server.port) as busy, connect(server.port) as idle:
            await idle.send_message(request("before", tokens=1))
            assert (await until_done(idle))[1]["finish_reason"] == "stop"
            await busy.send_message(request("long", tokens=1000))
            assert (await receive(busy))["delta"]
            server.stop.set()
            _, final = await until_done(busy)
            assert final["error"]["code"] == "shutdown"
            assert "shutting down" in final["error"]["message"]
            for ws in (busy, idle):
                assert await close_code(ws) == 1001
            with trio.fail_after(PATIENCE):
                await server.stopped.wait()
    shutdown = [info for info in manager.history() if info.labels["request_id"].endswith(".1")]
    assert sorted(str(info.close_reason) for info in shutdown) == [
        "completed",
        "completed",
        "shutdown",
    ]
    assert upstream.stats().open == 0


async def test_a_request_during_the_drain_is_refused_and_its_connection_closed(
    nursery: trio.Nursery,
) -> None:
    manager = StreamManager()
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    async with running_service(nursery, manager, options, grace=30.0, close_timeout=30.0) as (
        server,
        upstream,
    ):
        async with connect(server.port) as busy, connect(server.port) as late:
            await busy.send_message(request("long", tokens=1000))
            assert (await receive(busy))["delta"]
            server.stop.set()
            await wait_until(lambda: manager.stats().closing)
            # The drain lets the busy stream run (grace); a new request is refused.
            await late.send_message(request("late", tokens=1))
            deltas, final = await until_done(late)
            assert deltas == []
            assert final["id"] == "late"
            assert final["error"]["code"] == "shutting_down"
            assert await close_code(late) == 1001
            # The operator ends the last stream: its client is told, then the manager
            # has closed and the connection goes too; the server stops at once.
            (info,) = manager.streams()
            manager.cancel(info.id)
            _, final = await until_done(busy)
            assert final["error"]["code"] == "cancelled"
            assert await close_code(busy) == 1001
            with trio.fail_after(PATIENCE):
                await server.stopped.wait()
    assert upstream.stats().open == 0


# -- HTTP: a stream in flight ---------------------------------------------------------------


async def test_graceful_shutdown_ends_a_stream_in_flight_in_band(nursery: trio.Nursery) -> None:
    manager = StreamManager()
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    async with running_service(nursery, manager, options, grace=0.1, close_timeout=30.0) as (
        server,
        upstream,
    ):
        # close_timeout: the server must stop because the connection closed, not time out.
        response = await raw_post(server.port, chat(True, tokens=100000))
        await response.until(lambda response: b'"content":"' in response.body)
        server.stop.set()
        await response.until(lambda response: response.body.endswith(b"0\r\n\r\n"))
        with trio.fail_after(PATIENCE):
            await server.stopped.wait()
        await response.stream.aclose()
    *_, last = data_events(unchunked(response.body)[0])
    error = json.loads(last)["error"]
    assert error["code"] == "shutdown"
    assert "shutting down" in error["message"]
    (info,) = manager.history()
    assert info.close_reason is CloseReason.SHUTDOWN
    assert upstream.stats().open == 0


def taken_nothing_for(manager: StreamManager, seconds: float) -> bool:
    """Whether the one stream in flight has taken an item, then nothing for ``seconds``."""
    (info,) = manager.streams()
    last = info.last_item_at
    return last is not None and trio.current_time() - last > seconds
