"""The Host check against DNS rebinding and the Origin check of state-changing admin
requests (HostGuard, admin_app's allowed_hosts, the service's, `serve --allowed-host`).

In-process through ``httpx.ASGITransport`` on the mock clock, except where the network
path is the point: the issue's curl, a real HTTP/1.0 request without Host, and the
WebSocket handshake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from streammgr import StreamManager
from streammgr.cli import _app as cli_app
from streammgr.server import (
    LOOPBACK_HOSTS,
    HostGuard,
    ServiceOptions,
    admin_app,
    build_service_app,
    is_loopback_host,
)
from streammgr.simulate import SimulatedTransport

from .asgi_driver import ASGIExchange
from .lifespan_helpers import running_lifespan
from .server_helpers import PATIENCE, RawResponse, Server, fast_upstream

BASE = "http://simulated.local/v1"
TOKEN = "admin-token-Hosts-5821"


@asynccontextmanager
async def in_process(
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    admin_hosts: Sequence[str] | None = None,
    cors_origins: Sequence[str] = (),
) -> AsyncIterator[tuple[StreamManager, httpx.AsyncClient]]:
    """The whole service, admin mounted as ``streammgr serve`` mounts it, its lifespan
    running, and a client whose URL names 127.0.0.1:8000."""
    manager = StreamManager(max_streams=5)
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as upstream:
        admin = admin_app(
            manager,
            token=token,
            prefix="",
            allowed_hosts=admin_hosts,
            allowed_origins=cors_origins,
        )
        options = ServiceOptions(
            upstream_url=BASE, allowed_hosts=allowed_hosts, cors_origins=cors_origins
        )
        app = build_service_app(manager, upstream, options, admin=admin)
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        async with (
            running_lifespan(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://127.0.0.1:8000",
                headers=headers,
            ) as client,
        ):
            yield manager, client


def error_code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# -- the curl, over loopback -----------------------------------------------------


async def test_a_rebinding_page_cannot_change_the_limits(nursery: trio.Nursery) -> None:
    # curl -H 'Host: evil.example:8000' -X PUT -d '{"max_streams":1}'
    #      http://127.0.0.1:8000/admin/limits   (the default serve: loopback, no token)
    manager = StreamManager(max_streams=5)
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as upstream:
        admin = admin_app(manager, prefix="")
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE), admin=admin)
        server = await Server().start(nursery, app)
        async with httpx.AsyncClient(base_url=server.url, timeout=PATIENCE) as client:
            evil = await client.put(
                "/admin/limits", json={"max_streams": 1}, headers={"host": "evil.example:8000"}
            )
            read = await client.get("/admin/limits", headers={"host": "evil.example:8000"})
            models = await client.get("/v1/models", headers={"host": "evil.example:8000"})
            mine = await client.get("/admin/limits")  # Host: 127.0.0.1:<port>
        server.stop.set()
    assert error_code(evil) == (403, "host_not_allowed")
    message = evil.json()["error"]["message"]
    assert "--allowed-host evil.example" in message
    assert "DNS rebinding" in message
    assert error_code(read) == (403, "host_not_allowed")
    # The gateway too (a rebinding page would spend the operator's upstream quota).
    assert error_code(models) == (403, "host_not_allowed")
    assert mine.status_code == 200
    assert mine.json()["max_streams"] == 5
    assert manager.stats().max_streams == 5


async def test_an_http_1_0_request_without_host_is_answered(nursery: trio.Nursery) -> None:
    # Decided: a request without Host passes. Browsers always send one (fetch cannot
    # leave it out), so such a request is no rebinding page; HTTP/1.1 requires it.
    manager = StreamManager()
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as upstream:
        admin = admin_app(manager, prefix="")
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE), admin=admin)
        server = await Server().start(nursery, app)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"GET /admin/limits HTTP/1.0\r\n\r\n")
        response = RawResponse(stream)
        await response.until(lambda response: b"}" in response.body)
        await stream.aclose()
        server.stop.set()
    assert response.status == 200
    assert b'"max_streams"' in response.body


# -- which hosts pass ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "LOCALHOST:8000",  # names are case-insensitive
        "localhost.:8000",  # fully qualified: the same name
        "app.localhost:3000",  # browsers resolve *.localhost to loopback themselves
        "127.0.0.1",
        "127.0.0.1:8000",
        "[::1]",
        "[::1]:8000",
        "[0:0:0:0:0:0:0:1]:8000",  # the same address, written out
    ],
)
async def test_loopback_names_pass_with_or_without_a_port(
    host: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with in_process() as (_, client):
        admin = await client.get("/admin/limits", headers={"host": host})
        models = await client.get("/v1/models", headers={"host": host})
    assert admin.status_code == 200, admin.text
    assert models.status_code == 200, models.text


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example:8000",  # a name that starts like an address
        "localhost.evil.example",
        "user@localhost:8000",  # userinfo is not part of Host
        "localhost@evil.example",
        "::1",  # an IPv6 address needs brackets in Host
        "[::1",
        "localhost:99999",  # not a port
        "localhost:80a",
        "",
        "localhost/admin",
    ],
)
async def test_other_hosts_are_refused_on_every_route(
    host: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with in_process() as (manager, client):
        put = await client.put("/admin/limits", json={"max_streams": 1}, headers={"host": host})
        models = await client.get("/v1/models", headers={"host": host})
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"host": host},
        )
        assert manager.stats().max_streams == 5
    for response in (put, models, chat):
        assert error_code(response) == (403, "host_not_allowed"), response.text
    assert manager.stats().admitted_total == 0


async def test_allowed_hosts_add_names_and_ports(autojump_clock: trio.testing.MockClock) -> None:
    allowed = ["api.example", "admin.example:8443", "[fd00::5]"]
    async with in_process(allowed_hosts=allowed, admin_hosts=allowed) as (_, client):
        answers = {
            host: (await client.get("/admin/limits", headers={"host": host})).status_code
            for host in [
                "api.example",
                "api.example:443",
                "API.Example.:8000",
                "admin.example:8443",
                "admin.example:8444",  # another port than the one allowed
                "admin.example",
                "api.example.evil",
                "[fd00::5]:8000",
                "localhost:8000",  # loopback names stay allowed
            ]
        }
    assert answers == {
        "api.example": 200,
        "api.example:443": 200,
        "API.Example.:8000": 200,
        "admin.example:8443": 200,
        "admin.example:8444": 403,
        "admin.example": 403,
        "api.example.evil": 403,
        "[fd00::5]:8000": 200,
        "localhost:8000": 200,
    }


async def test_the_probes_are_exempt_and_a_star_opens_every_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A kubelet names the pod's IP: the probes answer any Host.
    async with in_process() as (_, client):
        probe = await client.get("/healthz", headers={"host": "10.1.2.3:8000"})
    assert probe.status_code == 200
    # Beyond loopback without --allowed-host, serve passes "*": the gateway answers
    # every name (the admin API then requires its token: check_exposure).
    async with in_process(allowed_hosts=["*"], token=TOKEN) as (_, client):
        models = await client.get("/v1/models", headers={"host": "gateway.example"})
        admin = await client.get("/admin/limits", headers={"host": "gateway.example"})
    assert models.status_code == 200
    assert admin.status_code == 200


async def test_a_tokenless_admin_app_served_alone_checks_hosts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    manager = StreamManager()

    async def get(app: Any, host: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            response = await client.get("/admin/limits", headers={"host": host})
        return response.status_code

    assert await get(admin_app(manager), "evil.example") == 403
    assert await get(admin_app(manager), "localhost:8000") == 200
    assert await get(admin_app(manager, allowed_hosts=["ops.example"]), "ops.example") == 200
    # With a token, the token is the guard: any host, unless allowed_hosts is given.
    token_only = admin_app(manager, token=TOKEN)
    transport = httpx.ASGITransport(app=token_only)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        headers = {"host": "ops.example", "authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/admin/limits", headers=headers)).status_code == 200
    restricted = admin_app(manager, token=TOKEN, allowed_hosts=["ops.example"])
    transport = httpx.ASGITransport(app=restricted)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
        headers = {"host": "other.example", "authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/admin/limits", headers=headers)).status_code == 403


async def test_a_request_without_host_passes_in_process(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An app driven in-process (no Host header at all) is not refused.
    exchange = ASGIExchange(admin_app(StreamManager()), "GET", "/admin/limits")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange.run)
    assert exchange.status == 200


# -- Origin on state-changing admin requests --------------------------------------------


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://127.0.0.1:8000", 200),  # the request's own origin
        ("HTTP://127.0.0.1:8000/", 200),
        ("https://app.example", 200),  # a --cors-origin
        ("https://ops.example:9000", 200),  # on an --allowed-host
        ("http://localhost:3000", 403),  # another local page: another origin
        ("http://127.0.0.1:8001", 403),
        ("https://evil.example", 403),
        ("null", 403),  # a sandboxed page, a file: URL
        ("chrome-extension://abc", 403),
    ],
)
async def test_state_changing_admin_requests_need_an_allowed_origin(
    origin: str, status: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with in_process(
        cors_origins=["https://app.example"],
        allowed_hosts=["ops.example"],
        admin_hosts=["ops.example"],
    ) as (manager, client):
        headers = {"origin": origin}
        put = await client.put("/admin/limits", json={"max_streams": 2}, headers=headers)
        delete = await client.delete("/admin/streams/nope", headers=headers)
        read = await client.get("/admin/limits", headers=headers)
        changed = manager.stats().max_streams == 2
    assert put.status_code == status, put.text
    assert changed is (status == 200)
    if status == 403:
        assert error_code(put) == (403, "origin_not_allowed")
        assert "--cors-origin" in put.json()["error"]["message"]
        assert error_code(delete) == (403, "origin_not_allowed")
    else:
        assert delete.status_code == 404
    assert read.status_code == 200  # reading is no change (and CORS keeps it from a page)


async def test_the_origin_check_holds_with_a_token_and_without_an_origin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with in_process(token=TOKEN, cors_origins=["*"]) as (manager, client):
        evil = await client.put(
            "/admin/limits", json={"max_streams": 2}, headers={"origin": "https://evil.example"}
        )
        assert manager.stats().max_streams == 5
        sdk = await client.put("/admin/limits", json={"max_streams": 3})  # curl, an SDK
        assert manager.stats().max_streams == 3
    # "*" as a CORS origin opens the gateway to pages, never the admin API's changes.
    assert error_code(evil) == (403, "origin_not_allowed")
    assert sdk.status_code == 200


# -- the WebSocket handshake ---------------------------------------------------------------


def handshake(host: str) -> bytes:
    return (
        f"GET /v1/chat/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_the_websocket_handshake_follows_the_same_host_rule(nursery: trio.Nursery) -> None:
    manager = StreamManager()
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as upstream:
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE))
        server = await Server().start(nursery, app)
        answers = {}
        for host in ("evil.example:8000", f"localhost:{server.port}"):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(handshake(host))
            response = RawResponse(stream)
            await response.until(lambda response: b"\r\n\r\n" in response.received)
            if response.status == 403:
                await response.until(lambda response: b"}" in response.body)
            answers[host] = response
            await stream.aclose()
        server.stop.set()
    refused = answers["evil.example:8000"]
    assert refused.status == 403
    assert b"host_not_allowed" in refused.body
    assert answers[f"localhost:{server.port}"].status == 101


# -- the pieces ------------------------------------------------------------------------------


def test_is_loopback_host() -> None:
    for host in [*LOOPBACK_HOSTS, "localhost:1", "[::1]:8000", "127.0.0.2", "::1", "A.LOCALHOST"]:
        assert is_loopback_host(host), host
    for host in ["", "0.0.0.0", "::", "evil.example", "user@localhost", "[::1", "10.0.0.1"]:
        assert not is_loopback_host(host), host


@pytest.mark.parametrize("entry", ["http://api.example", "api.example/", "a b", "", "::1"])
def test_a_bad_allowed_host_is_refused_naming_the_flag(entry: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="--allowed-host"):
        HostGuard(app, allowed_hosts=[entry])
    with pytest.raises(TypeError, match="not one str"):
        HostGuard(app, allowed_hosts="api.example")


def test_serve_passes_allowed_hosts_and_the_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    from streammgr.cli import _run

    seen: list[_run.ServeSettings] = []

    async def fake_run_serve(settings: _run.ServeSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(_run, "run_serve", fake_run_serve)
    monkeypatch.setenv("STREAMMGR_ALLOWED_HOSTS", "a.example b.example:8443")
    assert cli_app.main(["serve", "--access-log"]) == 0
    assert cli_app.main(["serve", "--allowed-host", "c.example"]) == 0
    assert seen[0].allowed_hosts == ("a.example", "b.example:8443")
    assert seen[0].access_log is True
    assert seen[1].allowed_hosts == ("c.example",)  # the flag wins over the variable
    assert seen[1].access_log is False


def test_serve_refuses_a_bad_allowed_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_app.main(["serve", "--allowed-host", "https://api.example"]) == 2
    assert "--allowed-host" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "evil_status"),
    [
        ([], 403),  # the default: loopback, no token
        (["--allowed-host", "evil.example"], 200),
        (["--host", "0.0.0.0", "--admin-token", TOKEN], 200),  # beyond loopback: any host
        (["--host", "0.0.0.0", "--admin-token", TOKEN, "--allowed-host", "api.example"], 403),
    ],
)
def test_serve_wires_the_host_check(
    argv: list[str], evil_status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streammgr.server
    from streammgr.cli import _run

    statuses: dict[str, int] = {}

    async def serve_in_process(
        app: Any, manager: StreamManager, *, task_status: Any, **options: Any
    ) -> None:
        # What serve_service would serve, called in-process instead of on a port.
        task_status.started(["http://127.0.0.1:0"])
        headers = {"host": "evil.example:8000", "authorization": f"Bearer {TOKEN}"}
        transport = httpx.ASGITransport(app=app)
        async with (
            running_lifespan(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
        ):
            statuses["models"] = (await client.get("/v1/models", headers=headers)).status_code
            statuses["limits"] = (await client.get("/admin/limits", headers=headers)).status_code
            statuses["probe"] = (await client.get("/readyz", headers=headers)).status_code

    monkeypatch.setattr(streammgr.server, "serve_service", serve_in_process)
    monkeypatch.setattr(_run, "configure_logging", lambda log_format: None)
    assert cli_app.main(["serve", *argv]) == 0
    assert statuses == {"models": evil_status, "limits": evil_status, "probe": 200}
