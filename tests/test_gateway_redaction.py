"""Every gateway route that relays an upstream's text redacts the gateway's own key,
in whatever form the upstream echoes it (plain, percent-encoded, base64 of
``Bearer <key>`` or of the whole header, URL-safe base64) and when an excerpt's cut
falls inside it: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream: true``
and ``false``) and ``/v1/chat/ws``. One redaction serves them all
(:func:`streammgr._logging.redact`, with the gateway's secrets).

In memory: the upstream is an ``httpx.MockTransport``, the gateway is driven as an
ASGI app on the mock clock.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from streammgr import StreamManager
from streammgr._logging import excerpt, redact
from streammgr.server import gateway_app

from .asgi_driver import ASGIExchange
from .secret_helpers import echoes, find_secret

KEY = "sk-gw-9fQ2xZ7LmK4pR8vT1nB6yH3cW5dJ0sE"
UPSTREAM = "http://upstream.test/v1"
MESSAGES = [{"role": "user", "content": "hello"}]
ROUTES = ["models", "stream", "no-stream", "websocket"]

Handler = Callable[[httpx.Request], httpx.Response]


@asynccontextmanager
async def gateway(handler: Handler) -> AsyncIterator[Any]:
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        StreamManager() as manager,
    ):
        yield gateway_app(manager, http, upstream_url=UPSTREAM, api_key=KEY)


async def websocket_answer(app: Any, text: str) -> str:
    """The messages the chat route sends for one ``chat.request`` (to its final one)."""
    to_app, inbox = trio.open_memory_channel[dict[str, Any]](math.inf)
    sent: list[str] = []
    final = trio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            sent.append(message["text"])
            if json.loads(message["text"]).get("done"):
                final.set()

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/v1/chat/ws",
        "raw_path": b"/v1/chat/ws",
        "query_string": b"",
        "headers": [(b"host", b"gateway.test")],
        "subprotocols": [],
    }
    to_app.send_nowait({"type": "websocket.connect"})
    to_app.send_nowait({"type": "websocket.receive", "text": text})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, inbox.receive, send)
        await final.wait()
        to_app.send_nowait({"type": "websocket.disconnect", "code": 1000})
    return "\n".join(sent)


async def answer_of(route: str, handler: Handler) -> str:
    """What the caller of ``route`` receives when the upstream answers with ``handler``."""
    async with gateway(handler) as app:
        if route == "websocket":
            request = {"type": "chat.request", "model": "m", "messages": MESSAGES}
            return await websocket_answer(app, json.dumps(request))
        if route == "models":
            exchange = ASGIExchange(app, "GET", "/v1/models")
        else:
            body = {"model": "m", "messages": MESSAGES, "stream": route == "stream"}
            exchange = ASGIExchange(app, "POST", "/v1/chat/completions", json.dumps(body).encode())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exchange.run)
        assert exchange.status >= 400 or route == "stream", exchange.body
        return exchange.body.decode()


def refusing(status: int, text: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": text, "type": "invalid"}})

    return handler


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("status", [400, 404, 500])
@pytest.mark.parametrize("form", sorted(echoes(KEY)))
async def test_an_echoed_key_is_redacted_on_every_route(
    autojump_clock: trio.abc.Clock, route: str, status: int, form: str
) -> None:
    answer = await answer_of(route, refusing(status, echoes(KEY)[form]))
    assert "error" in answer
    assert find_secret(KEY, answer) is None, answer


@pytest.mark.parametrize("route", ROUTES)
async def test_a_key_cut_at_the_end_of_an_excerpt_leaves_no_piece(
    autojump_clock: trio.abc.Clock, route: str
) -> None:
    # The excerpts are cut at 200 (models), 500 (the recorded error): a key that
    # straddles a cut, plain or in base64, must leave no piece before it.
    shown = []
    for filler in range(150, 520, 9):
        for text in (KEY, base64.b64encode(f"Bearer {KEY}".encode()).decode()):
            answer = await answer_of(route, refusing(400, "x" * filler + text))
            assert find_secret(KEY, answer) is None, (filler, answer)
            shown.append(answer)
    assert any("[REDACTED]" in answer for answer in shown)


def failing_mid_stream(kind: str, text: str) -> Handler:
    """An upstream that answers 200 and then fails in the stream, quoting ``text``."""
    if kind == "error object":
        event = "data: " + json.dumps({"error": {"message": text}})
    elif kind == "event: error":
        event = "event: error\ndata: " + json.dumps({"message": text})
    else:  # a malformed chunk
        event = "data: " + text
    opening = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    body = f"data: {json.dumps(opening)}\n\n{event}\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return handler


@pytest.mark.parametrize("route", ["stream", "no-stream", "websocket"])
@pytest.mark.parametrize("kind", ["error object", "event: error", "malformed chunk"])
async def test_a_key_quoted_by_a_failure_mid_stream_leaves_no_piece(
    autojump_clock: trio.abc.Clock, route: str, kind: str
) -> None:
    # The in-band error quotes the upstream's text, cut at 200 characters.
    for filler in range(150, 260, 7):
        for text in (KEY, base64.b64encode(f"Bearer {KEY}".encode()).decode()):
            answer = await answer_of(route, failing_mid_stream(kind, "x" * filler + text))
            assert "error" in answer
            assert find_secret(KEY, answer) is None, (filler, answer)


def test_redact_finds_the_key_inside_base64_at_every_alignment() -> None:
    for prefix in ("", "a", "ab", "Bearer ", "Authorization: Bearer "):
        text = prefix + KEY + " and after"
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(text.encode()).decode()
            cleaned = redact(f"echo {encoded} end", [KEY])
            assert "[REDACTED]" in cleaned
            assert find_secret(KEY, cleaned) is None, (prefix, cleaned)


def test_an_excerpt_cut_inside_a_base64_key_keeps_no_beginning_of_it() -> None:
    encoded = base64.b64encode(f"Bearer {KEY}".encode()).decode()
    for cut in range(len(encoded)):
        text = "x" * 100 + encoded[:cut]
        shown = excerpt(text, 100 + cut, [KEY], complete=False)
        assert find_secret(KEY, shown) is None, (cut, shown)


def test_a_short_secret_has_no_base64_form_that_would_match_ordinary_text() -> None:
    assert redact("SGVsbG8gd29ybGQ= abcd", ["abcd"]) == "SGVsbG8gd29ybGQ= [REDACTED]"


# -- JSON's \u escapes ---------------------------------------------------------------------


def json_escaped(text: str, every: int = 1) -> str:
    """``text`` with every ``every``-th character written as JSON's ``\\uXXXX``."""
    return "".join(
        f"\\u{ord(character):04x}" if index % every == 0 else character
        for index, character in enumerate(text)
    )


def unescaped(text: str) -> str:
    """``text`` with every ``\\uXXXX`` (however many backslashes) read back."""
    return re.sub(r"\\+u([0-9a-fA-F]{4})", lambda match: chr(int(match[1], 16)), text)


@pytest.mark.parametrize("every", [1, 2, 5])
@pytest.mark.parametrize("route", ROUTES)
async def test_a_key_echoed_in_json_unicode_escapes_is_redacted(
    autojump_clock: trio.abc.Clock, route: str, every: int
) -> None:
    # Go's encoding/json, or any serialiser told to, writes characters as \u00XX: a
    # JSON client reads the key back whole.
    raw = '{"error": {"message": "unknown key ESCAPED"}}'.replace(
        "ESCAPED", json_escaped(KEY, every)
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, content=raw.encode(), headers={"content-type": "application/json"}
        )

    answer = await answer_of(route, handler)
    assert find_secret(KEY, unescaped(answer)) is None, answer


@pytest.mark.parametrize("every", [1, 3])
async def test_the_models_list_with_a_json_escaped_key_is_redacted(
    autojump_clock: trio.abc.Clock, every: int
) -> None:
    listed = '{"object": "list", "data": [{"id": "m", "owned_by": "ESCAPED"}]}'
    raw = listed.replace("ESCAPED", json_escaped(KEY, every))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=raw.encode(), headers={"content-type": "application/json"}
        )

    async with gateway(handler) as app:
        exchange = ASGIExchange(app, "GET", "/v1/models")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exchange.run)
    assert exchange.status == 200
    listed = json.loads(exchange.body)  # what a client reads
    assert find_secret(KEY, json.dumps(listed, ensure_ascii=False)) is None, listed


def test_redact_reads_json_unicode_escapes_in_either_case() -> None:
    for text in (json_escaped(KEY), json_escaped(KEY).upper().replace("\\U", "\\u")):
        assert redact(f"seen {text}.", [KEY]) == "seen [REDACTED]."


# -- a credential in the upstream URL ----------------------------------------------------------

URL_KEY = "QueryKey-4kT9wX2mP7"


@pytest.mark.parametrize("route", ROUTES)
async def test_a_credential_in_the_upstream_url_is_redacted_on_every_route(
    autojump_clock: trio.abc.Clock, route: str
) -> None:
    # Some upstreams take their key in the URL (?key=...); a 404 that quotes the
    # request's URL must not hand it to the gateway's callers, on any route.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": f"no route for {request.url}"}})

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(manager, http, upstream_url=f"{UPSTREAM}?key={URL_KEY}", api_key=KEY)
        if route == "websocket":
            request = {"type": "chat.request", "model": "m", "messages": MESSAGES}
            answer = await websocket_answer(app, json.dumps(request))
        else:
            if route == "models":
                exchange = ASGIExchange(app, "GET", "/v1/models")
            else:
                body = {"model": "m", "messages": MESSAGES, "stream": route == "stream"}
                exchange = ASGIExchange(
                    app, "POST", "/v1/chat/completions", json.dumps(body).encode()
                )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(exchange.run)
            answer = exchange.body.decode()
    assert "error" in answer
    assert find_secret(URL_KEY, answer) is None, answer
