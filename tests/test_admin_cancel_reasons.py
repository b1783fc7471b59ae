"""A cancel reason holding the admin token: one redaction for every place the reason
goes (the admin answer, the history, the ``admin.cancelled`` log line, and the
stream's own client in the in-band error), the token verbatim, percent-encoded,
base64-encoded or cut short.

In-process over the real routes (``build_service_app`` with the admin API mounted),
on the mock clock; the upstream takes an hour to its first token, so the stream is
in flight until the operator cancels it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

import streammgr
from streammgr import StreamManager
from streammgr.server import ServiceOptions, admin_app, build_service_app
from streammgr.simulate import SimulatedTransport

from .asgi_driver import ASGIExchange
from .lifespan_helpers import running_lifespan
from .server_helpers import fast_upstream

BASE = "http://simulated.local/v1"
TOKEN = "adm1n+Tok/en-Zq81xYw"
CHAT = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

ENCODED = base64.b64encode(TOKEN.encode()).decode()
WITH_USER = base64.urlsafe_b64encode(b"ops:" + TOKEN.encode()).decode()
# (the reason, the part of it that spells the token). In base64, the characters that
# only the token's bytes decide (not the padding, not the bits of "ops:").
REASONS = {
    "verbatim": (f"rotating {TOKEN} now", TOKEN),
    "percent-encoded": (f"see ?t={quote(TOKEN, safe='')}", quote(TOKEN, safe="")),
    "base64": (f"creds {ENCODED}", ENCODED[: 8 * len(TOKEN) // 6]),
    "base64 of user:token": (f"basic {WITH_USER}", WITH_USER[6 : 8 * (4 + len(TOKEN)) // 6]),
    "cut at the end": (f"the token was {TOKEN[:-5]}", TOKEN[:-5]),
    "cut at the start": (f"ends with {TOKEN[6:]}!", TOKEN[6:]),
}


def leaks(text: str, piece: str) -> bool:
    """Whether ``text`` holds any 8 characters in a row of ``piece``."""
    return any(piece[start : start + 8] in text for start in range(len(piece) - 7))


@asynccontextmanager
async def service() -> AsyncIterator[tuple[StreamManager, httpx.AsyncClient, Any]]:
    manager = StreamManager()
    upstream = fast_upstream(first_token_latency=3600.0)
    async with httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http:
        app = build_service_app(
            manager,
            http,
            ServiceOptions(upstream_url=BASE),
            admin=admin_app(manager, token=TOKEN, prefix=""),
        )
        async with (
            running_lifespan(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://127.0.0.1:8000",
                headers={"authorization": f"Bearer {TOKEN}"},
            ) as client,
        ):
            yield manager, client, app


@pytest.fixture(autouse=True)
def every_level() -> None:
    """Info lines too (the tests' structlog drops them): capture_logs sees them all."""
    structlog.reset_defaults()


async def in_flight(manager: StreamManager) -> str:
    async with manager.watch() as events:
        if manager.streams():
            return manager.streams()[0].id
        async for _ in events:
            if manager.streams():
                return manager.streams()[0].id
    raise AssertionError("the manager closed first")


def last_event(body: bytes) -> dict[str, Any]:
    data = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    return json.loads(data[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("variant", list(REASONS))
async def test_a_reason_holding_the_token_reaches_no_one(
    variant: str, autojump_clock: trio.testing.MockClock
) -> None:
    reason, piece = REASONS[variant]
    answers: dict[str, httpx.Response] = {}
    with capture_logs() as logs:
        async with service() as (manager, client, app), trio.open_nursery() as nursery:
            # The stream's own client (another caller's key: the admin token is not it),
            # driven through ASGI messages so the test sees when its headers are out.
            chat = ASGIExchange(app, "POST", "/v1/chat/completions", json.dumps(CHAT).encode())
            chat.scope["headers"].append((b"authorization", b"Bearer sk-caller-1"))
            nursery.start_soon(chat.run)
            await chat.wait_until(lambda chat: chat.messages != [])  # headers out: 200
            stream_id = await in_flight(manager)
            answers["cancel"] = await client.request(
                "DELETE", f"/admin/streams/{stream_id}", json={"reason": reason}
            )
            await chat.returned.wait()
            answers["history"] = await client.get("/admin/history")
            recorded = manager.get(stream_id)
    assert answers["cancel"].status_code == 200, answers["cancel"].text
    assert chat.status == 200
    error = last_event(chat.body)["error"]
    assert error["code"] == "cancelled"
    assert "[REDACTED]" in error["message"]
    (cancelled,) = [line for line in logs if line["event"] == "admin.cancelled"]
    assert "[REDACTED]" in cancelled["detail"]
    assert recorded is not None
    assert recorded.detail is not None
    places = {
        "the stream's client": error["message"],
        "the admin answer": answers["cancel"].text,
        "the history": answers["history"].text,
        "the registry": recorded.detail,
        "the log lines": repr(logs),
    }
    for place, text in places.items():
        assert not leaks(text, piece), f"{variant}: {place} holds {piece!r}: {text}"


async def test_a_key_cancel_reason_is_redacted_in_its_log_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with service() as (_, client, _):
        with capture_logs() as logs:
            answer = await client.request(
                "DELETE", "/admin/keys/anyone/streams", json={"reason": f"leaked {TOKEN}"}
            )
    assert answer.status_code == 200
    (line,) = [line for line in logs if line["event"] == "admin.cancelled_key"]
    assert line["detail"] == "leaked [REDACTED]"


async def test_the_managers_secrets_are_scrubbed_from_a_reason_where_it_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A library user's own cancel (no admin API): the manager's secrets never reach
    # the reader, the history or the logs.
    key = "sk-upstream-0123456789abcdef"
    errors: list[streammgr.StreamCancelled] = []

    async def forever() -> AsyncIterator[str]:
        await trio.sleep_forever()
        yield "never"

    async with StreamManager(secrets=[key]) as manager:

        async def read() -> None:
            try:
                async with manager.open(forever) as stream:
                    async for _ in stream:
                        pass
            except streammgr.StreamCancelled as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            stream_id = await in_flight(manager)
            with capture_logs() as logs:
                assert manager.cancel(stream_id, reason=f"the key {key} was revoked")
        (info,) = manager.history()
    (error,) = errors
    assert key not in str(error)
    assert info.detail == "the key [REDACTED] was revoked"
    assert key not in repr(logs)
