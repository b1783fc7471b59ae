"""The gateway's WebSocket chat route, ``/v1/chat/ws``: :class:`ChatSocket`.

A connection carries JSON text messages (the protocol is in docs/gateway.md):
the client sends ``chat.request`` (a chat-completions request, ``stream``
implied) and ``chat.cancel``; the server answers each request with one
``chat.response`` per upstream read (the deltas of that read merged) and a final
``chat.response`` with ``"done": true`` carrying ``finish_reason`` and ``usage``,
or an ``error`` object: never a silent end. A bad message gets a ``{"type":
"error"}`` message and the connection stays usable. Every request is a stream of
the gateway's :class:`~streammgr.StreamManager` (:class:`~streammgr.sources.OpenAIChat`
with ``include_usage``), under the same key, limits and timeouts as
``POST /v1/chat/completions``, and its errors get the same table.

One connection is one :class:`_Session`, whose tasks share its nursery:

- the **receiver** (the endpoint's own task) reads the client's messages, starts a
  request, cancels it, answers bad ones; at the client's close it ends the stream
  in flight as ``client_disconnected`` (its upstream request is closed with it);
- the request's **runner** reads the stream batch by batch and sends;
- a **write guard** (``stall_timeout``, as :class:`~streammgr.server.EventStreamResponse`'s):
  one send that waited that long means the client stopped reading with its socket
  open: the stream ends as ``client_stalled`` (its slot and upstream freed, though
  hypercorn's shielded write still holds the runner) and the connection is closed
  (:func:`~streammgr.server.current_connection`), which wakes that write;
- a **shutdown watch**: once the manager has shut down, an idle connection is
  closed with 1001 (a stream in flight ends with its shutdown error first, then
  1001), so a graceful shutdown never waits for WebSocket clients. hypercorn
  itself tells a WebSocket nothing at shutdown. One registry watcher per gateway
  learns it for all connections (see :meth:`ChatSocket.wait_manager_closed`).

Every send of a session goes through one lock, so messages never interleave and
a request's final message is queued before the next request can start.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import trio
from starlette.websockets import WebSocket, WebSocketDisconnect

from .._errors import ManagerClosed, StreamCancelled, StreamError
from .._logging import get_logger
from .._manager import StreamManager
from .._states import CloseReason
from .._stream import ManagedStream
from .._validate import json_type, unpaired_surrogate
from ..sources import ChatChunk, ToolCallDelta, Usage
from ._chat_request import (
    BadRequest,
    GatewaySettings,
    caller_key,
    check_chat_request,
    completion_error,
    load_json,
    openai_error,
)
from ._hosts import is_same_origin
from ._hypercorn import current_connection
from ._response import until_stalled

__all__ = ["CHAT_WS_PATH", "ChatSocket"]

CHAT_WS_PATH = "/v1/chat/ws"
"""Where the gateway serves its WebSocket chat route."""

MAX_ID_LENGTH = 64
"""The longest ``id`` a client may give a request (echoed in every answer to it)."""

# Close codes (RFC 6455, section 7.4.1).
_GOING_AWAY = 1001
_MESSAGE_TOO_BIG = 1009
_SHUTTING_DOWN = "the server is shutting down"

_CLIENT_GONE = (CloseReason.CLIENT_DISCONNECTED, CloseReason.CLIENT_STALLED)
# Fields of a chat.request that are the protocol's or the gateway's, not the upstream's.
_NOT_FORWARDED = frozenset({"type", "id", "model", "messages", "stream", "stream_options"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,100}")


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class _BadMessage(Exception):
    """Internal: a client message the session cannot act on (the client is told)."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class ChatSocket:
    """The ``/v1/chat/ws`` endpoint of one gateway, and what its connections share.

    Built by :func:`~streammgr.server.gateway_app` (not public: its options are
    the gateway's). Its :meth:`endpoint` is a Starlette WebSocket endpoint.

    Args:
        manager: the manager every request runs through.
        settings: the gateway's settings (upstream, options).
        origins: the ``Origin`` values allowed to open a connection besides the
            gateway's own (``"*"``: any). A handshake from another origin gets a 403.
    """

    def __init__(
        self, manager: StreamManager, settings: GatewaySettings, origins: Sequence[str] = ()
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.origins = frozenset(origin.rstrip("/").lower() for origin in origins)
        self._manager_closed = False
        self._watching = False
        self._watch_changed = trio.Event()

    def origin_allowed(
        self, origin: str | None, host: str | None = None, scheme: str = "ws"
    ) -> bool:
        """Whether a handshake with this ``Origin`` header may be accepted.

        Browsers send ``Origin`` on every WebSocket handshake and apply no CORS
        to it, so the server must check it: a page on any site may open a
        WebSocket to a gateway on loopback and spend its upstream key. The
        gateway's own origin (the handshake's ``Host``) and the allowed origins
        may; a client without ``Origin`` is not a browser, and is let in.

        Args:
            origin: the handshake's ``Origin`` header, or ``None``.
            host: its ``Host`` header, or ``None``.
            scheme: its scheme (``ws`` or ``wss``), for the default port.
        """
        if origin is None or "*" in self.origins:
            return True
        return origin.rstrip("/").lower() in self.origins or is_same_origin(origin, host, scheme)

    async def wait_manager_closed(self) -> None:
        """Return once the gateway's manager has shut down (its ``aclose`` finished).

        One registry watcher serves every connection: the first waiter watches
        (``manager.watch(max_buffer=1)``: no backlog kept), the others wait on an
        event; if the watching connection ends, another one takes over.
        """
        while not self._manager_closed:
            if self._watching:
                await self._watch_changed.wait()
                continue
            self._watching = True
            try:
                async with self.manager.watch(max_buffer=1) as events:
                    async for _ in events:
                        pass
                self._manager_closed = True
            finally:
                self._watching = False
                changed, self._watch_changed = self._watch_changed, trio.Event()
                changed.set()

    async def endpoint(self, websocket: WebSocket) -> None:
        """Serve one WebSocket connection (a Starlette WebSocket endpoint)."""
        origin = websocket.headers.get("origin")
        host = websocket.headers.get("host")
        if not self.origin_allowed(origin, host, websocket.scope.get("scheme", "ws")):
            get_logger().warning("chat_ws.origin_refused", origin=(origin or "")[:200])
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                refusal = openai_error(
                    403,
                    f"the origin {(origin or '')[:200]!r} may not open this WebSocket; "
                    f"ask the operator to add it to the allowed origins (--cors-origin)",
                    code="origin_not_allowed",
                )
                await websocket.send_denial_response(refusal)
            else:
                await websocket.close(code=1008, reason="origin not allowed")  # a 403 too
            return
        given = websocket.headers.get("x-request-id", "")
        connection_id = given if _REQUEST_ID.fullmatch(given) else f"ws_{secrets.token_hex(12)}"
        await websocket.accept()
        await _Session(self, websocket, connection_id).run()


class _Session:
    """One WebSocket connection: its tasks, its request in flight, its sends."""

    def __init__(self, socket: ChatSocket, websocket: WebSocket, connection_id: str) -> None:
        self._socket = socket
        self._settings = socket.settings
        self._manager = socket.manager
        self._websocket = websocket
        self._connection_id = connection_id
        self._key = caller_key(websocket.headers, socket.settings.key_header)
        self._connection = current_connection()
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._closed = False
        self._shutting_down = False
        self._write_started: float | None = None
        self._stream: ManagedStream[ChatChunk] | None = None
        self._stream_request_id: str | None = None
        self._requests = 0

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_shutdown, name="streammgr-ws-shutdown-watch")
            stall_timeout = self._settings.stall_timeout
            if stall_timeout is not None:
                nursery.start_soon(self._guard_writes, stall_timeout, name="streammgr-ws-guard")
            await self._receive_messages()
            nursery.cancel_scope.cancel()

    def _end(self) -> None:
        """The session is over: every task of it stops."""
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _stop_stream(self, close_reason: CloseReason, detail: str) -> None:
        stream = self._stream
        if stream is not None:
            self._manager.cancel(stream.id, reason=detail, close_reason=close_reason)

    # -- sending ------------------------------------------------------------------------

    async def _write(self, text: str) -> None:
        """One send (the caller holds the lock); stamped for the write guard."""
        if self._closed:
            return
        self._write_started = trio.current_time()
        try:
            await self._websocket.send({"type": "websocket.send", "text": text})
        except WebSocketDisconnect:
            # A server that reports a gone client by failing send() (hypercorn does not).
            self._closed = True
            self._stop_stream(CloseReason.CLIENT_DISCONNECTED, "the client disconnected")
            self._end()
        finally:
            self._write_started = None

    async def _send(self, message: Mapping[str, Any]) -> None:
        text = _dumps(message)
        async with self._lock:
            await self._write(text)

    async def _send_error(self, error: _BadMessage, message_id: str | None) -> None:
        body: dict[str, Any] = {
            "type": "error",
            "error": {
                "message": str(error),
                "type": "invalid_request_error",
                "code": error.code,
                "param": error.param,
            },
        }
        if message_id is not None:
            body["id"] = message_id
        await self._send(body)

    async def _close(self, code: int, reason: str) -> None:
        """Send the close frame (once), then end the session."""
        async with self._lock:
            if not self._closed:
                self._closed = True
                self._write_started = trio.current_time()
                try:
                    await self._websocket.send(
                        {"type": "websocket.close", "code": code, "reason": reason}
                    )
                except WebSocketDisconnect:
                    pass
                finally:
                    self._write_started = None
        self._end()

    # -- the client's messages --------------------------------------------------------

    async def _receive_messages(self) -> None:
        receive = self._websocket.receive
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self._closed = True
                self._stop_stream(CloseReason.CLIENT_DISCONNECTED, "the client disconnected")
                return
            await self._handle(message)

    async def _handle(self, message: Mapping[str, Any]) -> None:
        text = message.get("text")
        if text is None:
            await self._send_error(
                _BadMessage(
                    "binary messages are not read on this route; send JSON text messages",
                    "invalid_message",
                ),
                None,
            )
            return
        limit = self._settings.max_request_size
        size = len(text) if text.isascii() else len(text.encode())
        if size > limit:
            await self._send_error(
                _BadMessage(
                    f"the message is larger than {limit} bytes; send a smaller request",
                    "message_too_big",
                ),
                None,
            )
            await self._close(_MESSAGE_TOO_BIG, "message too big")
            return
        message_id: str | None = None
        try:
            payload = _decode(text)
            message_id = _message_id(payload)
            self._dispatch(payload, message_id)
        except _BadMessage as error:
            await self._send_error(error, message_id)

    def _dispatch(self, payload: dict[str, Any], message_id: str | None) -> None:
        kind = payload.get("type")
        if kind == "chat.request":
            self._start(payload, message_id)
        elif kind == "chat.cancel":
            self._cancel(message_id)
        elif kind is None:
            raise _BadMessage(
                'the message has no "type"; send {"type": "chat.request", ...} or '
                '{"type": "chat.cancel"}',
                "invalid_message",
                "type",
            )
        else:
            raise _BadMessage(
                f"unknown message type {_excerpt(kind)}; send chat.request or chat.cancel",
                "unknown_type",
                "type",
            )

    def _start(self, payload: dict[str, Any], message_id: str | None) -> None:
        """Open the request's stream and start its runner (no await: nothing interleaves)."""
        if self._stream is not None:
            shown = "" if self._stream_request_id is None else f" (id {self._stream_request_id!r})"
            raise _BadMessage(
                f"a request is in flight on this connection{shown}; wait for its final "
                f'message ("done": true) or send chat.cancel, or open another connection',
                "request_in_flight",
            )
        stream_flag = payload.get("stream")
        if stream_flag is not None and stream_flag is not True:
            raise _BadMessage(
                f"stream is implied on this route; leave it out, got {_excerpt(stream_flag)}",
                "invalid_field",
                "stream",
            )
        choices = payload.get("n")
        if choices is not None and choices != 1:
            raise _BadMessage(
                f"n must be 1 on this route (one answer per request), got {_excerpt(choices)}",
                "invalid_field",
                "n",
            )
        try:
            check_chat_request(payload, None)  # surrogates: checked by _decode
        except BadRequest as exc:
            raise _BadMessage(str(exc), "invalid_field", exc.param) from None
        model: str = payload["model"]
        self._requests += 1
        chat = self._settings.chat_source(payload, _NOT_FORWARDED)
        labels = {
            "route": "chat.ws",
            "model": model[:64],
            "request_id": f"{self._connection_id}.{self._requests}",
            "stream": "true",
        }
        # Single-reader mode: this request's task pulls from the upstream itself.
        stream = self._manager.open(chat, key=self._key, labels=labels, inline=True)
        self._stream, self._stream_request_id = stream, message_id
        assert self._nursery is not None
        self._nursery.start_soon(self._run, stream, message_id, name="streammgr-ws-request")

    def _cancel(self, message_id: str | None) -> None:
        """End the request in flight; nothing in flight (it just ended), or another
        request's id: nothing to do, its final message is (or was) on its way."""
        if self._stream is None:
            return
        if message_id is not None and message_id != self._stream_request_id:
            return
        self._stop_stream(CloseReason.CANCELLED, "the client cancelled the request")

    # -- one request ------------------------------------------------------------------

    async def _run(self, stream: ManagedStream[ChatChunk], message_id: str | None) -> None:
        end = _End()
        error: Exception | None = None
        send = self._send
        try:
            async with stream:
                async for batch in stream.batches():
                    delta = _merge(batch, end)
                    if delta:
                        await send({"type": "chat.response", "id": message_id, "delta": delta})
        except StreamCancelled as exc:
            if exc.close_reason in _CLIENT_GONE:
                return  # nobody to tell
            error = exc
        except Exception as exc:
            if not isinstance(exc, StreamError):
                # Not the stream's (the manager logs those): a bug here, told by name only.
                get_logger().error("chat_ws.failed", stream_id=stream.id, error=type(exc).__name__)
            error = exc
        final: dict[str, Any] = {"type": "chat.response", "id": message_id}
        shutting_down = False
        if error is None:
            final.update(
                delta={}, done=True, finish_reason=end.finish_reason, usage=_usage(end.usage)
            )
        else:
            answer = completion_error(error, stream.id, stream.info().error)
            final["done"] = True
            final["error"] = {
                "message": answer.message,
                "type": answer.type,
                "code": answer.code,
                "param": None,
            }
            if answer.retry_after is not None:
                final["retry_after"] = answer.retry_after
            shutting_down = isinstance(error, ManagerClosed) or (
                isinstance(error, StreamCancelled) and error.close_reason is CloseReason.SHUTDOWN
            )
        del error  # its traceback holds this frame: no reference cycle left
        text = _dumps(final)
        async with self._lock:
            # The next request may start once this one's end is queued, not before.
            self._stream = self._stream_request_id = None
            await self._write(text)
        if shutting_down or self._shutting_down:
            await self._close(_GOING_AWAY, _SHUTTING_DOWN)

    # -- the guard and the shutdown watch -------------------------------------------

    async def _guard_writes(self, stall_timeout: float) -> None:
        """End the session when one send has waited ``stall_timeout`` for the client."""
        await until_stalled(lambda: self._write_started, stall_timeout)
        stream = self._stream
        get_logger().warning(
            "chat_ws.client_stalled",
            stream_id=None if stream is None else stream.id,
            stall_timeout=stall_timeout,
        )
        self._closed = True
        self._stop_stream(
            CloseReason.CLIENT_STALLED, f"the client read nothing for {stall_timeout:g}s"
        )
        if self._connection is not None:
            with trio.CancelScope(shield=True):
                await self._connection.abort()
        self._end()

    async def _watch_shutdown(self) -> None:
        await self._socket.wait_manager_closed()
        self._shutting_down = True
        if self._stream is None:
            await self._close(_GOING_AWAY, _SHUTTING_DOWN)
        # Else the runner closes after the stream's final message.


class _End:
    """What a request's chunks said about its end."""

    __slots__ = ("finish_reason", "usage")

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: Usage | None = None


def _merge(batch: list[ChatChunk], end: _End) -> dict[str, Any]:
    """One upstream read's chunks as one delta (choice 0): content concatenated, the
    role kept, tool-call pieces in order; the finish reason and usage into ``end``."""
    role: str | None = None
    parts: list[str] = []
    calls: list[ToolCallDelta] = []
    for chunk in batch:
        if chunk.usage is not None:
            end.usage = chunk.usage
        if chunk.index:
            continue
        if chunk.role is not None and role is None:
            role = chunk.role
        if chunk.content:
            parts.append(chunk.content)
        if chunk.tool_calls:
            calls += chunk.tool_calls
        if chunk.finish_reason is not None:
            end.finish_reason = chunk.finish_reason
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if parts:
        delta["content"] = parts[0] if len(parts) == 1 else "".join(parts)
    if calls:
        delta["tool_calls"] = [_tool_call(call) for call in calls]
    return delta


def _tool_call(call: ToolCallDelta) -> dict[str, Any]:
    """A tool-call piece in OpenAI's delta form (fields the upstream left out, left out)."""
    piece: dict[str, Any] = {"index": call.index}
    if call.id is not None:
        piece["id"] = call.id
    if call.type is not None:
        piece["type"] = call.type
    function: dict[str, str] = {}
    if call.name is not None:
        function["name"] = call.name
    if call.arguments is not None:
        function["arguments"] = call.arguments
    if function:
        piece["function"] = function
    return piece


def _usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _decode(text: str) -> dict[str, Any]:
    """A client message's JSON object."""
    try:
        payload = load_json(text)
    except BadRequest as exc:
        raise _BadMessage(str(exc), "invalid_json") from None
    except (ValueError, RecursionError):
        raise _BadMessage(
            'the message is not valid JSON; send a JSON object such as {"type": '
            '"chat.request", "model": ..., "messages": [...]}',
            "invalid_json",
        ) from None
    if not isinstance(payload, dict):
        raise _BadMessage(
            f'a message must be a JSON object with a "type", got {json_type(payload)}',
            "invalid_message",
        )
    where = unpaired_surrogate(text.encode(), payload)
    if where is not None:
        raise _BadMessage(
            f"{where or 'a key of the message'} has an unpaired surrogate escape (\\ud800 "
            f"to \\udfff without its pair), which is not text; send the character itself "
            f"or both halves of its pair",
            "invalid_field",
            where or None,
        )
    return payload


def _message_id(payload: dict[str, Any]) -> str | None:
    message_id = payload.get("id")
    if message_id is None:
        return None
    if not isinstance(message_id, str):
        raise _BadMessage(
            f"id must be a string of at most {MAX_ID_LENGTH} characters, got "
            f"{json_type(message_id)}",
            "invalid_field",
            "id",
        )
    if len(message_id) > MAX_ID_LENGTH:
        raise _BadMessage(
            f"id must be at most {MAX_ID_LENGTH} characters, got {len(message_id)}",
            "invalid_field",
            "id",
        )
    return message_id


def _excerpt(value: object) -> str:
    """A client's value, quoted in a message, cut short."""
    shown = json.dumps(value)
    return shown if len(shown) <= 40 else shown[:40] + "..."
