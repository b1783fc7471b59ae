"""Which web pages may use the gateway: the ``Origin`` of its chat requests, over HTTP
(``build_service_app``) and on the WebSocket handshake (``/v1/chat/ws``).

A page the operator opens in a browser can reach a gateway on loopback directly
(``Host: 127.0.0.1``, no DNS rebinding needed): a WebSocket handshake (no CORS
applies) or a "simple" cross-origin POST (``content-type: text/plain``, no
preflight) would spend the operator's upstream key. Only the gateway's own origin
and the allowed origins (``--cors-origin``) may.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected

from streammgr import StreamManager
from streammgr.server import ServiceOptions, build_service_app

from .chat_ws_helpers import connect, request, until_done
from .lifespan_helpers import running_lifespan
from .server_helpers import running_gateway

BASE = "http://simulated.local/v1"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@asynccontextmanager
async def service(
    cors_origins: Sequence[str] = (),
    allowed_hosts: Sequence[str] | None = None,
    base_url: str = "http://127.0.0.1:8000",
) -> AsyncIterator[tuple[httpx.AsyncClient, list[httpx.Request]]]:
    """The whole service in-process, its upstream a recorder that answers 500."""
    calls: list[httpx.Request] = []

    def upstream_answer(upstream_request: httpx.Request) -> httpx.Response:
        calls.append(upstream_request)
        return httpx.Response(500, json={"error": {"message": "recorded"}})

    manager = StreamManager(max_streams=2)
    transport = httpx.MockTransport(upstream_answer)
    async with httpx.AsyncClient(transport=transport) as upstream:
        options = ServiceOptions(
            upstream_url=BASE,
            api_key="sk-o",
            cors_origins=cors_origins,
            allowed_hosts=allowed_hosts,
        )
        app = build_service_app(manager, upstream, options)
        async with (
            running_lifespan(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client,
        ):
            yield client, calls


async def post(client: httpx.AsyncClient, origin: str | None) -> httpx.Response:
    headers = {"content-type": "text/plain;charset=UTF-8"}  # a simple request: no preflight
    if origin is not None:
        headers["origin"] = origin
    return await client.post("/v1/chat/completions", json=CHAT, headers=headers)


async def test_a_foreign_page_cannot_post_a_chat(autojump_clock: trio.testing.MockClock) -> None:
    async with service() as (client, calls):
        for origin in ("https://evil.example", "null", "http://127.0.0.1:9999"):
            refused = await post(client, origin)
            assert refused.status_code == 403, origin
            assert refused.json()["error"]["code"] == "origin_not_allowed"
        assert calls == []  # the upstream key was never spent
        own: list[str | None] = [None, "http://127.0.0.1:8000", "HTTP://127.0.0.1:8000/"]
        for maybe_origin in own:  # curl, an SDK, the service's own page
            answered = await post(client, maybe_origin)
            assert answered.status_code != 403, maybe_origin
        assert len(calls) == 3


async def test_allowed_origins_may_post_a_chat(autojump_clock: trio.testing.MockClock) -> None:
    async with service(cors_origins=["https://app.example"]) as (client, calls):
        assert (await post(client, "https://app.example")).status_code != 403
        assert (await post(client, "https://evil.example")).status_code == 403
        assert len(calls) == 1
    async with service(cors_origins=["*"]) as (client, calls):
        assert (await post(client, "https://anywhere.example")).status_code != 403
        assert len(calls) == 1


async def test_the_own_page_behind_a_tls_proxy_may_post_a_chat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Served beyond loopback (any host) behind a proxy that ends TLS: the page is
    # https://api.example, the request reaches the service as http with Host:
    # api.example. The same host on its scheme's default port is its own origin.
    hosts = ["*"]
    async with service(allowed_hosts=hosts, base_url="http://api.example") as (client, calls):
        assert (await post(client, "https://api.example")).status_code != 403
        assert (await post(client, "http://api.example")).status_code != 403
        assert (await post(client, "https://api.example:8443")).status_code == 403
        assert (await post(client, "https://evil.example")).status_code == 403
        assert len(calls) == 2


async def test_a_foreign_page_cannot_open_the_chat_websocket(nursery: trio.Nursery) -> None:
    async with running_gateway(nursery) as gateway:
        with pytest.RaisesGroup(ConnectionRejected, flatten_subgroups=True) as refused:
            async with connect(gateway.server.port, [("origin", "https://anywhere.example")]):
                pass
        (rejection,) = refused.value.exceptions
        assert isinstance(rejection, ConnectionRejected)
        assert rejection.status_code == 403
        # The client's Host is "localhost": its own origin, and no Origin at all, may.
        for headers in ([("origin", "http://localhost")], []):
            async with connect(gateway.server.port, headers) as ws:
                await ws.send_message(request("o", tokens=1))
                assert (await until_done(ws))[1]["finish_reason"] == "stop"
