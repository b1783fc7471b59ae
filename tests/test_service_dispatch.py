"""The service's dispatch: ``POST /v1/chat/completions`` past the routers, through the
same guards, and every other request where it went before (``build_service_app``'s
``_ServiceDispatch``, the gateway's ``GatewayDispatch``).

In-process on the mock clock: ``httpx.ASGITransport`` for whole answers, the ASGI
driver for a stream held open. Every expected answer here is also what the nested
Starlette apps answered before the dispatch (the file passes on that code too, but
for the test that counts the ``Request`` objects a held stream keeps).
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import structlog
import trio
import trio.testing
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.routing import Mount
from structlog.testing import capture_logs

from streammgr import StreamManager
from streammgr.server import ServiceOptions, admin_app, build_service_app, gateway_app
from streammgr.server._gateway import route_path
from streammgr.simulate import SimulatedTransport

from .asgi_driver import ASGIExchange
from .lifespan_helpers import running_lifespan
from .server_helpers import instant_upstream

BASE = "http://simulated.local/v1"
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@asynccontextmanager
async def service(
    *, cors_origins: Sequence[str] = (), allowed_hosts: Sequence[str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The whole service with the admin API, its lifespan running, and a client whose
    URL names 127.0.0.1:8000."""
    manager = StreamManager(max_streams=5)
    async with httpx.AsyncClient(transport=SimulatedTransport(instant_upstream())) as upstream:
        admin = admin_app(manager, prefix="", allowed_origins=cors_origins)
        options = ServiceOptions(
            upstream_url=BASE, cors_origins=cors_origins, allowed_hosts=allowed_hosts
        )
        app = build_service_app(manager, upstream, options, admin=admin)
        async with (
            running_lifespan(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
            ) as client,
        ):
            yield client


def openai_code(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return str(error["code"])


# -- the path a route matches --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/v1/chat/completions", ""),
        ("/v1/chat/completions", "/"),
        ("/gw/v1/chat/completions", "/gw"),
        ("/gw", "/gw"),
        ("/gwx/v1/chat/completions", "/gw"),
        ("/other/v1/chat/completions", "/gw"),
        ("/gw/", "/gw"),
        ("", ""),
    ],
)
def test_the_route_path_is_starlettes(path: str, root_path: str) -> None:
    scope = {"type": "http", "path": path, "root_path": root_path}
    assert route_path(scope) == get_route_path(scope)


# -- every route, as before ------------------------------------------------------------------


async def test_the_chat_route_answers_both_kinds_of_chat(autojump_clock: trio.abc.Clock) -> None:
    async with service() as client:
        whole = await client.post("/v1/chat/completions", json=CHAT)
        streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        named = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "mine-42"}
        )
        bad = await client.post("/v1/chat/completions", content=b"{not json")
    assert whole.status_code == 200
    assert whole.json()["object"] == "chat.completion"
    assert whole.headers["x-request-id"].startswith("req_")
    assert whole.headers["x-stream-id"]
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert streamed.headers["x-request-id"].startswith("req_")
    # One id per answer, the caller's when it gives one.
    assert named.headers.get_list("x-request-id") == ["mine-42"]
    assert bad.status_code == 400
    assert bad.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
async def test_other_methods_on_the_chat_route_are_405s_in_openais_format(
    method: str, autojump_clock: trio.abc.Clock
) -> None:
    async with service() as client:
        answer = await client.request(method, "/v1/chat/completions")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.headers["x-request-id"].startswith("req_")
    if method != "HEAD":
        assert openai_code(answer) == "method_not_allowed"
        assert f"{method} /v1/chat/completions" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completion"),
        ("POST", "/v1/chat/completions/extra"),
        ("GET", "/nothing/here"),
        ("POST", "/"),
    ],
)
async def test_unknown_paths_are_404s_in_openais_format(
    method: str, path: str, autojump_clock: trio.abc.Clock
) -> None:
    async with service() as client:
        answer = await client.request(method, path)
    assert answer.status_code == 404
    assert openai_code(answer) == "unknown_url"
    assert answer.headers["x-request-id"].startswith("req_")


async def test_a_trailing_slash_on_the_chat_route_is_redirected(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with service() as client:
        answer = await client.post("/v1/chat/completions/", json=CHAT)
    assert answer.status_code == 307
    assert answer.headers["location"] == "http://127.0.0.1:8000/v1/chat/completions"


async def test_every_other_route_is_reached(autojump_clock: trio.abc.Clock) -> None:
    async with service() as client:
        models = await client.get("/v1/models")
        healthz = await client.get("/healthz")
        readyz = await client.get("/readyz")
        post_healthz = await client.post("/healthz")
        admin = await client.get("/admin")
        dashboard = await client.get("/admin/")
        limits = await client.get("/admin/limits")
        page = await client.get("/chat")
        page_slash = await client.get("/chat/")
        asset = await client.get("/chat/sse.js")
    assert models.status_code == 200
    assert models.json()["object"] == "list"
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    assert (readyz.status_code, readyz.json()) == (200, {"status": "ready"})
    assert post_healthz.status_code == 405
    assert post_healthz.json()["error"]["code"] == "method_not_allowed"
    assert (admin.status_code, admin.headers["location"]) == (308, "admin/")
    assert dashboard.status_code == 200
    assert dashboard.headers["content-type"].startswith("text/html")
    assert limits.json()["max_streams"] == 5
    assert page.status_code == 200
    assert "content-security-policy" in page.headers
    assert (page_slash.status_code, page_slash.headers["location"]) == (308, "/chat")
    assert asset.status_code == 200
    for answer in (models, healthz, readyz, admin, dashboard, limits, page, asset):
        assert answer.headers["x-request-id"].startswith("req_"), answer.request.url


async def test_the_chat_route_is_found_under_a_root_path(autojump_clock: trio.abc.Clock) -> None:
    # Served behind a proxy's prefix (hypercorn's --root-path): the path keeps it.
    async with service() as client:
        transport = client._transport
        assert isinstance(transport, httpx.ASGITransport)
        prefixed = httpx.ASGITransport(app=transport.app, root_path="/api")
        async with httpx.AsyncClient(transport=prefixed, base_url="http://127.0.0.1") as inner:
            chat = await inner.post("/api/v1/chat/completions", json=CHAT)
            elsewhere = await inner.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200
    assert chat.json()["object"] == "chat.completion"
    # A path outside the root path is matched whole (Starlette's rule, as before).
    assert elsewhere.status_code == 200


# -- the guards on the chat route ----------------------------------------------------------


async def test_the_chat_route_answers_allowed_hosts_only(autojump_clock: trio.abc.Clock) -> None:
    async with service(allowed_hosts=["api.example"]) as client:
        evil = await client.post("/v1/chat/completions", json=CHAT, headers={"host": "evil.test"})
        named = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"host": "api.example:443"}
        )
        two = await client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers=[("host", "127.0.0.1"), ("host", "127.0.0.1")],
        )
    assert (evil.status_code, openai_code(evil)) == (403, "host_not_allowed")
    assert "--allowed-host evil.test" in evil.json()["error"]["message"]
    assert evil.headers["x-request-id"].startswith("req_")
    assert named.status_code == 200
    assert (two.status_code, openai_code(two)) == (403, "host_not_allowed")


@pytest.mark.parametrize(
    ("cors_origins", "origin", "allowed"),
    [
        ((), "https://evil.test", False),
        ((), "null", False),
        ((), "http://127.0.0.1:8000", True),  # its own origin
        (("https://app.example",), "https://app.example", True),
        (("https://app.example",), "https://evil.test", False),
        (("*",), "https://anyone.test", True),
    ],
)
async def test_the_chat_route_checks_the_origin_then_cors(
    cors_origins: tuple[str, ...], origin: str, allowed: bool, autojump_clock: trio.abc.Clock
) -> None:
    async with service(cors_origins=cors_origins) as client:
        answer = await client.post("/v1/chat/completions", json=CHAT, headers={"origin": origin})
    if not allowed:
        assert (answer.status_code, openai_code(answer)) == (403, "origin_not_allowed")
        # Refused before CORS: nothing lets the page read the refusal.
        assert "access-control-allow-origin" not in answer.headers
        return
    assert answer.status_code == 200
    if cors_origins:
        assert answer.headers["access-control-allow-origin"] in (origin, "*")
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed
        assert "retry-after" in exposed
    else:
        assert "access-control-allow-origin" not in answer.headers


async def test_a_preflight_of_the_chat_route_is_answered_by_cors(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with service(cors_origins=["https://app.example"]) as client:
        answer = await client.options(
            "/v1/chat/completions",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert answer.headers["access-control-max-age"] == "600"


# -- what a held stream keeps --------------------------------------------------------------


class HeldBody(httpx.AsyncByteStream):
    """An upstream answer that sends one chunk, then holds until released."""

    def __init__(self, release: trio.Event) -> None:
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
        await self._release.wait()
        yield b"data: [DONE]\n\n"


def holding_upstream(release: trio.Event) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=HeldBody(release)
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


def connections_holding(scope: dict[str, Any]) -> list[str]:
    """The Starlette ``Request``/``WebSocket`` objects alive over ``scope``."""
    gc.collect()
    return [
        type(referrer).__name__
        for referrer in gc.get_referrers(scope)
        if isinstance(referrer, HTTPConnection)
    ]


async def hold_one_stream(app: Any, release: trio.Event) -> list[str]:
    """Hold one streaming chat through ``app``; what holds its scope meanwhile."""
    exchange = ASGIExchange(
        app, "POST", "/v1/chat/completions", json.dumps({**CHAT, "stream": True}).encode()
    )
    exchange.scope["headers"].append((b"host", b"127.0.0.1:8000"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange.run)
        await exchange.wait_until(lambda exchange: b'"content":"hi"' in exchange.body)
        held = connections_holding(exchange.scope)
        release.set()
        await exchange.wait_until(lambda exchange: exchange.complete)
    assert exchange.status == 200
    assert exchange.body.endswith(b"data: [DONE]\n\n")
    return held


async def test_a_held_stream_keeps_no_request_object(autojump_clock: trio.abc.Clock) -> None:
    # Through two Starlette apps a held stream kept three Request objects (and the
    # layers around them): ~10 KiB a stream (benchmarks/bench_gc.py --memory).
    release = trio.Event()
    manager = StreamManager()
    async with holding_upstream(release) as upstream:
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE))
        async with running_lifespan(app):
            held = await hold_one_stream(app, release)
    assert held == []


async def test_the_gateway_app_alone_holds_no_request_object_either(
    autojump_clock: trio.abc.Clock,
) -> None:
    release = trio.Event()
    manager = StreamManager()
    async with holding_upstream(release) as upstream, manager:
        held = await hold_one_stream(gateway_app(manager, upstream, upstream_url=BASE), release)
    assert held == []


async def test_the_gateway_app_mounted_in_a_users_app_dispatches_its_chat(
    autojump_clock: trio.abc.Clock,
) -> None:
    manager = StreamManager()
    async with (
        httpx.AsyncClient(transport=SimulatedTransport(instant_upstream())) as upstream,
        manager,
    ):
        mine = Starlette(
            routes=[Mount("/llm", app=gateway_app(manager, upstream, upstream_url=BASE))]
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=mine), base_url="http://127.0.0.1"
        ) as client:
            chat = await client.post("/llm/v1/chat/completions", json={**CHAT, "stream": True})
            wrong = await client.get("/llm/v1/chat/completions")
            unknown = await client.post("/llm/v1/nothing")
    assert chat.status_code == 200
    assert chat.text.endswith("data: [DONE]\n\n")
    assert chat.headers["x-request-id"].startswith("req_")
    assert (wrong.status_code, openai_code(wrong)) == (405, "method_not_allowed")
    assert (unknown.status_code, openai_code(unknown)) == (404, "unknown_url")


async def test_a_chat_handler_failure_before_the_answer_is_a_500(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The client leaves while its body is read: Starlette's ClientDisconnect, answered
    # 500 (as Starlette's error middleware did) and raised on to the server.
    manager = StreamManager()
    async with httpx.AsyncClient(transport=SimulatedTransport(instant_upstream())) as upstream:
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE))
        exchange = ASGIExchange(app, "POST", "/v1/chat/completions", b"{", body_ends=False)
        await _leave_while_the_body_is_read(app, exchange)
    assert exchange.status == 500
    assert exchange.headers["content-type"] == "text/plain; charset=utf-8"
    assert exchange.headers["x-request-id"].startswith("req_")
    assert exchange.body == b"Internal Server Error"


async def _leave_while_the_body_is_read(app: Any, exchange: ASGIExchange) -> None:
    """Run ``exchange`` until its body read waits, then disconnect: the handler's
    ClientDisconnect reaches the server."""
    async with running_lifespan(app):
        with pytest.RaisesGroup(ClientDisconnect, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(exchange.run)
                await trio.testing.wait_all_tasks_blocked()
                exchange.disconnect()


async def test_a_chat_handler_failure_with_cors_is_a_500_cors_lets_the_page_read(
    autojump_clock: trio.abc.Clock,
) -> None:
    # With CORS the 500 comes from inside it, as the gateway's own error middleware's did.
    manager = StreamManager()
    async with httpx.AsyncClient(transport=SimulatedTransport(instant_upstream())) as upstream:
        options = ServiceOptions(upstream_url=BASE, cors_origins=["https://app.example"])
        app = build_service_app(manager, upstream, options)
        exchange = ASGIExchange(app, "POST", "/v1/chat/completions", b"{", body_ends=False)
        exchange.scope["headers"].append((b"origin", b"https://app.example"))
        await _leave_while_the_body_is_read(app, exchange)
    assert exchange.status == 500
    assert exchange.body == b"Internal Server Error"
    assert exchange.headers["access-control-allow-origin"] == "https://app.example"
    assert exchange.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("headers", "disconnect", "status", "level"),
    [
        ([], False, 200, "info"),
        ([(b"host", b"evil.test")], False, 403, "info"),
        ([(b"origin", b"https://evil.test")], False, 403, "info"),
        ([], True, 500, "warning"),
    ],
)
async def test_the_chat_route_logs_one_line_per_answer(
    headers: list[tuple[bytes, bytes]],
    disconnect: bool,
    status: int,
    level: str,
    autojump_clock: trio.abc.Clock,
) -> None:
    structlog.reset_defaults()  # info lines too: capture_logs sees them all
    manager = StreamManager()
    async with httpx.AsyncClient(transport=SimulatedTransport(instant_upstream())) as upstream:
        options = ServiceOptions(upstream_url=BASE, access_log=True, key_header="x-tenant")
        app = build_service_app(manager, upstream, options)
        body = b"{" if disconnect else json.dumps(CHAT).encode()
        exchange = ASGIExchange(app, "POST", "/v1/chat/completions", body, body_ends=not disconnect)
        exchange.scope["headers"] += [(b"x-tenant", b"acme"), *headers]
        with capture_logs() as logs:
            async with running_lifespan(app):
                if not disconnect:
                    await exchange.run()
                else:
                    with pytest.RaisesGroup(ClientDisconnect, flatten_subgroups=True):
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(exchange.run)
                            await trio.testing.wait_all_tasks_blocked()
                            exchange.disconnect()
    lines = [line for line in logs if str(line["event"]).startswith("http.")]
    assert exchange.status == status
    (line,) = lines
    assert line["event"] == ("http.request" if status < 400 else "http.error")
    assert line["log_level"] == level
    assert (line["method"], line["path"], line["status"]) == (
        "POST",
        "/v1/chat/completions",
        status,
    )
    assert line["request_id"] == exchange.headers["x-request-id"]
    assert line["key"] == "acme"
