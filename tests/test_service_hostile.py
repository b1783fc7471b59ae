"""The service under hostile use: defects a hostile trial found, each fixed; these failed before.
public surface (HTTP, the CLI, the Python API). Every one fails until it is fixed.

Loopback servers only (tests/server_helpers.py); every wait bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
import trio

from streammgr import StreamManager
from streammgr.server import (
    ServiceOptions,
    admin_app,
    gateway_app,
)
from streammgr.simulate import SimulatedTransport, SimulatedUpstream

from .cli_helpers import started
from .server_helpers import PATIENCE, RawResponse, Server, running_service

MESSAGES = [{"role": "user", "content": "hi"}]
UPSTREAM_KEY = "sk-upstream-key-0123456789"
CALLER_KEY = "sk-caller-secret-9876543210"


class Recording(httpx.AsyncBaseTransport):
    """Records every request the gateway sends upstream, then passes it on."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


def instant_upstream() -> SimulatedUpstream:
    return SimulatedUpstream(first_token_latency=0, token_latency=0)


async def stalled_post(port: int, body: dict[str, Any]) -> RawResponse:
    """A POST whose client then reads nothing (small receive buffer)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    await stream.send_all(head.encode() + data)
    return RawResponse(stream)


ENDLESS = {
    "model": "sim-small",
    "messages": MESSAGES,
    "stream": True,
    "streammgr_simulate": {"tokens": 100000, "first_token_latency": 0, "token_latency": 0},
}


# -- 1. stream: false turns body fields into OpenAIChat arguments ------------------------


async def test_stream_false_body_field_headers_is_not_sent_as_upstream_http_headers(
    nursery: trio.Nursery,
) -> None:
    # The body's extra fields go to OpenAIChat(**params): a field named "headers"
    # becomes HTTP headers of the upstream request, with the gateway's API key.
    recording = Recording(SimulatedTransport(instant_upstream()))
    async with (
        httpx.AsyncClient(transport=recording) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(manager, http, upstream_url="http://sim.local/v1", api_key=UPSTREAM_KEY)
        server = await Server().start(nursery, app)
        body = {
            "model": "sim-small",
            "messages": MESSAGES,
            "headers": {"OpenAI-Project": "proj_someone_else", "Authorization": "Bearer x"},
        }
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            await client.post(f"{server.url}/v1/chat/completions", json=body)
        server.stop.set()
    (sent,) = recording.requests
    assert "openai-project" not in sent.headers
    assert sent.headers.get_list("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    # Everything else goes to the upstream as it is (docs/gateway.md): in the body.
    assert json.loads(sent.content).get("headers") == body["headers"]


@pytest.mark.parametrize("field", ["api_key", "base_url", "timeouts", "include_usage", "client"])
async def test_stream_false_body_field_named_like_an_openaichat_argument_is_no_500(
    nursery: trio.Nursery, field: str
) -> None:
    # OpenAIChat() got multiple values for keyword argument ...: an unhandled TypeError,
    # a plain-text 500 instead of an OpenAI-format answer.
    async with (
        httpx.AsyncClient(transport=SimulatedTransport(instant_upstream())) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(manager, http, upstream_url="http://sim.local/v1", api_key=UPSTREAM_KEY)
        server = await Server().start(nursery, app)
        body = {"model": "sim-small", "messages": MESSAGES, field: "http://elsewhere/v1"}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.post(f"{server.url}/v1/chat/completions", json=body)
        server.stop.set()
    assert response.status_code < 500
    assert response.headers["content-type"] == "application/json"


# -- 2. graceful shutdown with a client that reads nothing ----------------------------------


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
        client = await stalled_post(server.port, ENDLESS)
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
        client = await stalled_post(int(url.rpartition(":")[2]), ENDLESS)
        await client.until(lambda response: b'"content":"' in response.body)
        running.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace + 5 + 3) as bound:
            code = await running.process.wait()
        await client.stream.aclose()
        assert not bound.cancelled_caught, "still running long after grace + 5 s"
        assert code == 0


# -- 3. the CLI: a bad --admin-token is a traceback, not a usage error ----------------------


@pytest.mark.parametrize("token", ["", " padded-token "])
def test_cli_bad_admin_token_is_a_one_line_usage_error(token: str) -> None:
    # check_exposure() lets it through on loopback; admin_app() then raises ValueError
    # inside run_serve: a traceback and exit code 1 (docs/cli.md: one line, exit 2).
    result = subprocess.run(
        [sys.executable, "-m", "streammgr", "serve", "--port", "0", "--admin-token", token],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
        env={**os.environ, "STREAMMGR_LOG_FORMAT": "json"},
    )
    assert result.returncode == 2, result.stderr[-300:]
    assert "Traceback" not in result.stderr
    assert "--admin-token" in result.stderr


# -- 4. an upstream 429 without Retry-After ---------------------------------------------


@pytest.mark.parametrize("upstream_headers", [{}, {"retry-after-ms": "1500"}])
@pytest.mark.parametrize("stream", [True, False])
async def test_every_429_carries_retry_after_and_retry_after_ms(
    nursery: trio.Nursery, upstream_headers: dict[str, str], stream: bool
) -> None:
    # docs/gateway.md: "sends both on every 429". An upstream 429 without a
    # Retry-After (or with only retry-after-ms) is passed on with neither.
    error = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=upstream_headers, json=error)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(manager, http, upstream_url="http://sim.local/v1", api_key=UPSTREAM_KEY)
        server = await Server().start(nursery, app)
        body = {"model": "m", "messages": MESSAGES, "stream": stream}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.post(f"{server.url}/v1/chat/completions", json=body)
        server.stop.set()
    assert response.status_code == 429
    assert "retry-after" in response.headers
    assert "retry-after-ms" in response.headers


# -- 5. the admin API ------------------------------------------------------------------------


async def test_a_huge_limit_accepted_by_put_limits_does_not_break_metrics(
    nursery: trio.Nursery,
) -> None:
    # LimitsUpdate has no upper bound: a 400-digit max_streams is a 200, then every
    # GET /metrics is a 500 (OverflowError: int too large to convert to float).
    async with StreamManager() as manager:
        server = await Server().start(nursery, admin_app(manager, token="admin-token"))
        headers = {"authorization": "Bearer admin-token", "content-type": "application/json"}
        async with httpx.AsyncClient(headers=headers, timeout=PATIENCE) as client:
            put = await client.put(
                f"{server.url}/admin/limits", content='{"max_streams": ' + "9" * 400 + "}"
            )
            metrics = await client.get(f"{server.url}/admin/metrics")
        server.stop.set()
    assert put.status_code in (200, 400, 422)
    assert metrics.status_code == 200


async def test_cors_origins_do_not_open_the_tokenless_admin_api_to_any_web_page(
    nursery: trio.Nursery,
) -> None:
    # streammgr serve --cors-origin '*' on loopback (no --admin-token needed there):
    # the CORS middleware wraps /admin too, so any page the operator's browser opens
    # can read the registry and cancel streams (the preflight allows DELETE).
    manager = StreamManager()
    options = ServiceOptions(upstream_url="http://sim/v1", cors_origins=("*",))
    admin = admin_app(manager, prefix="")
    async with running_service(
        nursery, manager, options, upstream=instant_upstream(), acquire_timeout=None, admin=admin
    ) as (server, _):
        origin = {"origin": "http://evil.example"}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            read = await client.get(f"{server.url}/admin/streams", headers=origin)
            preflight = await client.options(
                f"{server.url}/admin/keys/anonymous/streams",
                headers={**origin, "access-control-request-method": "DELETE"},
            )
    assert "access-control-allow-origin" not in read.headers
    assert "access-control-allow-origin" not in preflight.headers
