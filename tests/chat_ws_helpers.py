"""What the WebSocket chat route's tests share: a trio-websocket client, chat messages
and how to read their answers, a raw wsproto client that stops reading, and an
upstream that floods (with a gateway in front of it).

Real time over loopback: every wait is bounded by ``fail_after``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from streammgr.simulate import SimulatedUpstream

from .server_helpers import PATIENCE, CloseWatcher, Running, Server, running_gateway

MESSAGES = [{"role": "user", "content": "hello there"}]


@asynccontextmanager
async def connect(
    port: int, headers: list[tuple[str, str]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client of the chat route, on a TCP stream this test owns
    (trio-websocket leaves its own open when the server closes first)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                "localhost",
                "/v1/chat/ws",
                extra_headers=[(name.encode(), value.encode()) for name, value in headers or []],
            )
            try:
                yield ws
            finally:
                await ws.aclose()
    finally:
        await stream.aclose()


def request(message_id: str | None = None, **simulate: Any) -> str:
    body: dict[str, Any] = {"type": "chat.request", "model": "sim-small", "messages": MESSAGES}
    if message_id is not None:
        body["id"] = message_id
    if simulate:
        body["streammgr_simulate"] = simulate
    return json.dumps(body)


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(PATIENCE):
        message = await ws.get_message()
    assert isinstance(message, str)
    decoded: dict[str, Any] = json.loads(message)
    return decoded


async def until_done(ws: WebSocketConnection) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The deltas of one request, and its final message."""
    deltas: list[dict[str, Any]] = []
    while True:
        message = await receive(ws)
        assert message["type"] == "chat.response", message
        if message.get("done"):
            return deltas, message
        deltas.append(message)


async def close_code(ws: WebSocketConnection) -> int:
    """Wait (bounded) until the server closes ``ws``; the code it closed with."""
    with pytest.raises(ConnectionClosed) as closed, trio.fail_after(PATIENCE):
        await ws.get_message()
    assert closed.value.reason is not None
    return closed.value.reason.code


def content(deltas: list[dict[str, Any]]) -> str:
    return "".join(message["delta"].get("content", "") for message in deltas)


def simulated_text(upstream: SimulatedUpstream, **simulate: Any) -> str:
    """The answer the deterministic simulator gives, straight from it."""
    body = {"model": "sim-small", "messages": MESSAGES, "stream": True}
    if simulate:
        body["streammgr_simulate"] = simulate
    answer = upstream.respond("POST", "/v1/chat/completions", json.dumps(body).encode())
    parts = []
    for line in answer.body.decode().split("\n"):
        data = line.removeprefix("data: ")
        if line.startswith("data: ") and data != "[DONE]":
            for choice in json.loads(data)["choices"]:
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


class Flood:
    """An upstream (an ASGI app) that sends big chunks as fast as they are read, until
    its client leaves."""

    def __init__(self) -> None:
        text = "x" * 65536
        self.event = f'data: {{"choices":[{{"index":0,"delta":{{"content":"{text}"}}}}]}}\n\n'
        self.left = trio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.left.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            body = self.event.encode()
            while True:
                await send({"type": "http.response.body", "body": body, "more_body": True})
                await trio.lowlevel.checkpoint()


async def stalled_client(port: int, message: str) -> tuple[trio.SocketStream, WSConnection]:
    """A raw WebSocket client: the handshake, one message, then it reads nothing."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host="localhost", target="/v1/chat/ws")))
    with trio.fail_after(PATIENCE):
        while True:
            client.receive_data(await stream.receive_some(4096))
            if any(isinstance(event, AcceptConnection) for event in client.events()):
                break
    await stream.send_all(client.send(TextMessage(data=message)))
    return stream, client


async def read_final(stream: trio.SocketStream, client: WSConnection) -> dict[str, Any]:
    """Read (bounded) until a message with "done" arrives; return it."""
    text = ""
    with trio.fail_after(PATIENCE):
        while True:
            client.receive_data(await stream.receive_some(1 << 20))
            for event in client.events():
                if isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        message: dict[str, Any] = json.loads(text)
                        text = ""
                        if message.get("done"):
                            return message


@asynccontextmanager
async def flooded_gateway(
    nursery: trio.Nursery, **gateway_options: Any
) -> AsyncIterator[tuple[Running, Flood, CloseWatcher]]:
    """A gateway (``running_gateway(**gateway_options)``) whose upstream is a
    :class:`Flood` served on a port of its own, so that a send parked on a client that
    reads nothing holds a real upstream connection; with a :class:`CloseWatcher`
    running. Yields the gateway, the flood and the watcher."""
    flood = Flood()
    flood_server = await Server().start(nursery, flood)
    try:
        async with running_gateway(
            nursery,
            transport=httpx.AsyncHTTPTransport(),
            upstream_url=f"{flood_server.url}/v1",
            **gateway_options,
        ) as gateway:
            watcher = CloseWatcher(gateway.manager)
            await nursery.start(watcher.run)
            yield gateway, flood, watcher
    finally:
        flood_server.stop.set()
