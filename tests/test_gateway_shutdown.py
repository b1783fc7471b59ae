"""The service's graceful shutdown: every client is told in band and its connection
closed within ``grace + close_timeout``, also a client that reads nothing, over HTTP
and WebSocket, and ``streammgr serve`` on SIGTERM.

Real time over loopback: every wait is on an event or a condition, bounded.
"""

from __future__ import annotations

import json
import signal

import trio

from streammgr import StreamManager
from streammgr.server import ServiceOptions

from .cli_helpers import started
from .fault_helpers import raw_request
from .server_helpers import instant_upstream, running_service

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
