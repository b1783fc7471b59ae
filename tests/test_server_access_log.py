"""One log line per error answer (``http.error``), the opt-in access log
(``http.request``), and no secret in either.

In-process over the whole service (``build_service_app`` with the admin API), on the
mock clock, logs captured with ``structlog.testing.capture_logs``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

from streammgr import StreamManager
from streammgr.server import ServiceOptions, admin_app, build_service_app, caller_key
from streammgr.simulate import SimulatedTransport

from .asgi_driver import ASGIExchange
from .lifespan_helpers import running_lifespan
from .server_helpers import fast_upstream

BASE = "http://simulated.local/v1"
TOKEN = "admin-token-Log-40917"
UPSTREAM_KEY = "sk-upstream-Log-0123456789"
CHAT = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def every_level() -> None:
    """Info lines too (the tests' structlog drops them): capture_logs sees them all."""
    structlog.reset_defaults()


@asynccontextmanager
async def service(
    manager: StreamManager | None = None, **options: Any
) -> AsyncIterator[tuple[StreamManager, httpx.AsyncClient, Any]]:
    manager = manager if manager is not None else StreamManager()
    upstream = fast_upstream(first_token_latency=3600.0)
    async with httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http:
        options = {"max_request_size": 1000, **options}
        app = build_service_app(
            manager,
            http,
            ServiceOptions(upstream_url=BASE, api_key=UPSTREAM_KEY, **options),
            admin=admin_app(manager, token=TOKEN, prefix=""),
        )
        transport = httpx.ASGITransport(app=app)
        async with (
            running_lifespan(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
        ):
            yield manager, client, app


def http_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if str(line["event"]).startswith("http.")]


ADMIN = {"authorization": f"Bearer {TOKEN}"}
# (method, path, body, headers, the status)
ERRORS = {
    "400 bad JSON": ("POST", "/v1/chat/completions", b"{not json", {}, 400),
    "401 no token": ("GET", "/admin/stats", None, {}, 401),
    "403 host": ("GET", "/v1/models", None, {"host": "evil.example"}, 403),
    "404 gateway": ("GET", "/v1/nothing", None, {}, 404),
    "404 admin": ("GET", "/admin/streams/nope", None, ADMIN, 404),
    "405": ("GET", "/v1/chat/completions", None, {}, 405),
    "413": ("POST", "/v1/chat/completions", b"x" * 2000, {}, 413),
    "422 admin": ("PUT", "/admin/limits", b'{"max_streams": "many"}', ADMIN, 422),
}


@pytest.mark.parametrize("case", list(ERRORS))
async def test_each_error_answer_logs_one_line(
    case: str, autojump_clock: trio.testing.MockClock
) -> None:
    method, path, body, headers, status = ERRORS[case]
    with capture_logs() as logs:
        async with service() as (_, _, app):
            # Driven through ASGI messages: httpx's transport warns of a body the app
            # does not read to its end (the 413).
            exchange = ASGIExchange(app, method, path, body or b"")
            exchange.scope["headers"] += [
                (name.encode(), value.encode()) for name, value in headers.items()
            ]
            await exchange.run()
    assert exchange.status == status, exchange.body
    (line,) = http_lines(logs)
    assert line["event"] == "http.error"
    assert line["log_level"] == "info"
    assert (line["method"], line["path"], line["status"]) == (method, path, status)
    assert line["request_id"] == exchange.headers["x-request-id"]
    assert line["key"] == ("anonymous" if "authorization" not in headers else line["key"])
    assert line["duration"] >= 0


async def test_a_refusal_by_a_limit_logs_its_429(autojump_clock: trio.testing.MockClock) -> None:
    manager = StreamManager(max_streams=1, max_waiting=0)
    with capture_logs() as logs:
        async with service(manager) as (_, client, app), trio.open_nursery() as nursery:
            first = ASGIExchange(app, "POST", "/v1/chat/completions", json.dumps(CHAT).encode())
            nursery.start_soon(first.run)
            await first.wait_until(lambda exchange: exchange.messages != [])
            refused = await client.post(
                "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-caller-2"}
            )
            (stream,) = manager.streams()
            manager.cancel(stream.id)
    assert refused.status_code == 429
    errors = [line for line in http_lines(logs) if line["event"] == "http.error"]
    assert [line["status"] for line in errors] == [429]
    # The hashed key the gateway's limits use, never the credential.
    assert errors[0]["key"].startswith("key-")
    assert "sk-caller-2" not in repr(logs)


async def test_no_secret_reaches_a_line(autojump_clock: trio.testing.MockClock) -> None:
    secrets = [
        "sk-pathsecret0123456789",
        "querysecret-Q1",
        "callersecret-C1",
        "headersecret-H1",
        "cookiesecret-K1",
        TOKEN,
        UPSTREAM_KEY,
    ]
    with capture_logs() as logs:
        async with service() as (_, client, _):
            answers = [
                await client.get(
                    "/v1/sk-pathsecret0123456789",
                    params={"api_key": "querysecret-Q1"},
                    headers={
                        "authorization": "Bearer callersecret-C1",
                        "x-api-key": "headersecret-H1",
                        "cookie": "session=cookiesecret-K1",
                    },
                ),
                # The admin token in a path, with a wrong one in the header: a 401.
                await client.get(f"/admin/streams/{TOKEN}", headers={"authorization": "Bearer x"}),
                await client.get(f"/v1/{UPSTREAM_KEY}/models"),
            ]
    assert [answer.status_code for answer in answers] == [404, 401, 404]
    lines = http_lines(logs)
    assert [line["status"] for line in lines] == [404, 401, 404]
    assert lines[1]["path"] == "/admin/streams/[REDACTED]"
    text = repr(logs)
    for secret in secrets:
        assert secret not in text, secret
    assert "querysecret" not in text  # no query string at all


async def test_the_access_log_is_opt_in(autojump_clock: trio.testing.MockClock) -> None:
    with capture_logs() as quiet:
        async with service() as (_, client, _):
            assert (await client.get("/v1/models")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
    assert http_lines(quiet) == []
    with capture_logs() as logs:
        async with service(access_log=True) as (manager, client, app):
            models = await client.get("/v1/models")
            missing = await client.get("/v1/nothing")
            async with trio.open_nursery() as nursery:
                chat = ASGIExchange(app, "POST", "/v1/chat/completions", json.dumps(CHAT).encode())
                nursery.start_soon(chat.run)
                await chat.wait_until(lambda exchange: exchange.messages != [])
                started = trio.current_time()
                await trio.sleep(30)  # the stream lasts 30 s of the mock clock
                (stream,) = manager.streams()
                manager.cancel(stream.id)
    lines = http_lines(logs)
    assert [(line["event"], line["path"], line["status"]) for line in lines] == [
        ("http.request", "/v1/models", 200),
        ("http.error", "/v1/nothing", 404),  # one line per answer: errors as http.error
        ("http.request", "/v1/chat/completions", 200),
    ]
    assert lines[0]["request_id"] == models.headers["x-request-id"]
    assert lines[1]["request_id"] == missing.headers["x-request-id"]
    # A stream's line comes when it ends, with its whole life.
    assert lines[2]["duration"] >= 30
    assert started > 0


async def test_a_key_header_named_like_a_credential_is_logged_hashed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An operator who counts callers by their API key (--key-header x-api-key) must
    # not find those keys in every http.error line (nor in the registry or /admin).
    caller = "caller-api-key-Log-55120"
    with capture_logs() as logs:
        async with service(key_header="x-api-key") as (_, client, _):
            answer = await client.get("/v1/nothing", headers={"x-api-key": caller})
    assert answer.status_code == 404
    (line,) = http_lines(logs)
    assert caller not in json.dumps(line, default=str)
    assert line["key"] == caller_key({"x-api-key": caller}, "x-api-key")
    assert line["key"].startswith("key-")
    # A header that names a tenant (set by a trusted proxy) is kept as it is.
    assert caller_key({"x-tenant": "acme"}, "x-tenant") == "acme"
