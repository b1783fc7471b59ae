"""The OpenAI-compatible gateway: :func:`gateway_app`.

A Starlette app that answers ``POST /v1/chat/completions`` and ``GET /v1/models``
in front of an OpenAI-compatible upstream, every chat request run through a
:class:`~streammgr.StreamManager` (limits, registry, timeouts, cancellation):

- ``stream: true``: an :class:`~streammgr.server.EventStreamResponse` with
  ``resumable=False`` over :class:`_ChatEvents`, which forwards the upstream's
  events as the bytes it sent (``SSESource.raw_batches``: one write per upstream
  read) and looks inside only for what it must: the ``[DONE]`` end, an error
  object, data that is not a JSON object. Whatever ends the upstream early (a
  drop, a stall, a malformed chunk, an error, no ``[DONE]``) is raised as an
  :class:`~streammgr.UpstreamError`, so the response ends the body with an in-band
  ``data: {"error": {...}}`` event: never a silent end, which the openai SDK would
  take for success.
- ``stream: false``: :class:`_CompletionResponse` streams from the upstream with
  :class:`~streammgr.sources.OpenAIChat`, assembles the answer with
  :func:`~streammgr.sources.collect_chat` and answers one ``chat.completion``
  object. It watches the client meanwhile: a client that leaves cancels the stream
  (``client_disconnected``) and with it the upstream request.
- ``GET /v1/models``: :class:`~streammgr.server._models.ModelsRoute` (one cached
  answer, one upstream request in flight, a bound per key, a capped and redacted body);
- every other ``/v1/...`` route, and any other path: a 404 in OpenAI's error format;
  a bad body: a 400 naming the field.

The admission key is the caller's credential hashed (``key-`` and 16 hex digits of
its SHA-256; the credential itself is never stored, logged or forwarded), or the
value of a configured header, or ``anonymous``. The upstream gets the configured
API key, never the caller's. Every answer carries ``x-request-id``.

This module keeps the routes, the middleware and :func:`gateway_app`; what a chat
request is (its key, body, checks, errors, the settings) lives in
``_chat_request.py``, which the WebSocket route (``_chat_ws.py``) imports too.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, NamedTuple

import httpx
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._batch import BatchIterator
from .._errors import (
    StreamCancelled,
    UpstreamAPIError,
    UpstreamProtocolError,
    UpstreamTruncated,
)
from .._logging import excerpt
from .._manager import StreamManager
from .._options import check_option
from .._states import CloseReason
from .._stream import ManagedStream
from .._validate import check_seconds
from ..sources import ChatCompletion, SourceTimeouts, SSESource, Usage, collect_chat
from ..sources._http import raw_reads
from ..sources._openai import note_outcome, read_body_end
from ..sse import OPENAI_DONE, RawBatch, ServerSentEvent, encode
from ._answers import ErrorAnswer
from ._chat_request import (
    MAX_REQUEST_SIZE,
    BadRequest,
    GatewaySettings,
    caller_key,
    completion_error,
    openai_error,
    parse_chat_request,
    read_body,
)
from ._chat_ws import CHAT_WS_PATH, ChatSocket
from ._models import MODELS_CACHE_TTL, ModelsRoute
from ._response import DirectBodyWrites, EventStreamResponse

__all__ = ["MAX_REQUEST_SIZE", "RequestIdMiddleware", "caller_key", "gateway_app", "openai_error"]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_EXCERPT = 200


def _answer_response(answer: ErrorAnswer, stream_id: str) -> Response:
    """An :class:`ErrorAnswer` (the streaming response's table) as a whole response."""
    response = Response(answer.json(), status_code=answer.status)  # no media type: below
    response.raw_headers.extend(answer.headers())
    response.raw_headers.append((b"x-stream-id", stream_id.encode()))
    return response


# -- the request ------------------------------------------------------------------------


# What the gateway reads itself and does not forward on the stream: false route.
_NOT_FORWARDED = frozenset({"model", "messages", "stream", "stream_options"})


# -- stream: true --------------------------------------------------------------------------


def _is_object(data: str) -> bool:
    """Whether ``data`` has the shape of a JSON object (the cheap check of a chunk)."""
    if data.startswith("{") and data.endswith("}"):
        return True
    stripped = data.strip()
    return stripped.startswith("{") and stripped.endswith("}")


class _ChatEvents:
    """A producer: the upstream's chat-completion events, forwarded as they came.

    Each upstream read's events travel as one :class:`~streammgr.sse.RawBatch`,
    whose ``.raw`` the response writes unchanged. Looks inside each event only for
    the end (``[DONE]``, after which nothing is forwarded: the body's end is read,
    briefly, so that the upstream connection is reused), an error object (``event:
    error``, or data with a non-null ``"error"`` key) and data that is not a JSON
    object (a malformed chunk): the events before such a failure are forwarded,
    then it is raised. A body that ends without ``[DONE]`` raises
    :class:`~streammgr.UpstreamTruncated`. Checking that every chunk is JSON would
    mean decoding each one, which raw mode exists to avoid: a chunk is checked for
    the shape of an object (``{...}``) only, and parsed only when it holds the text
    ``"error"``. The upstream's text quoted in those errors is cut with ``secrets``
    known (the gateway's key), so that no beginning of one is left at the cut.
    """

    __slots__ = ("_secrets", "_source")

    def __init__(self, source: SSESource, secrets: Sequence[str] = ()) -> None:
        self._source = source
        self._secrets = tuple(secrets)

    def __repr__(self) -> str:
        return f"_ChatEvents({self._source!r})"

    def __call__(self) -> BatchIterator[ServerSentEvent]:
        """The events, a read at a time."""
        return BatchIterator(self._batches())

    async def _batches(self) -> AsyncGenerator[list[ServerSentEvent], None]:
        url = self._source.url
        # raw_batches() without its BatchIterator: two coroutines less per read.
        async with aclosing(raw_reads(self._source)) as reads:
            async for batch in reads:
                end, failure = _scan(batch, url, self._secrets)
                if end == len(batch):
                    yield batch
                elif end:
                    # Rare: a failure or [DONE] inside a read. What came before goes out.
                    events = batch[:end]
                    yield RawBatch(events, b"".join(encode(event) for event in events))
                if failure is not None:
                    try:
                        raise failure
                    finally:
                        # Its traceback holds this frame: no reference cycle left.
                        failure = None
                if end and batch[end - 1].data == OPENAI_DONE:
                    # Nothing after [DONE] is forwarded; its body's end is read so
                    # that the upstream connection is reused.
                    await read_body_end(reads.__anext__)
                    return
        raise UpstreamTruncated(
            "the upstream ended the stream without data: [DONE]: the answer may be "
            "incomplete; retry the request",
            url=url,
        )


def _scan(
    batch: list[ServerSentEvent], url: str, secrets: Sequence[str] = ()
) -> tuple[int, Exception | None]:
    """How many of the batch's events to forward, and the failure after them, if any.

    Stops after ``[DONE]`` (it is forwarded) or before a failing event.
    """
    for index, event in enumerate(batch):
        data = event.data
        if data == OPENAI_DONE:
            return index + 1, None
        if event.event == "error":
            return index, _api_error(data, url, secrets)
        if not _is_object(data):
            return index, UpstreamProtocolError(
                f"the upstream sent a malformed chunk (not a JSON object): "
                f"{excerpt(data, _EXCERPT, secrets)!r}",
                url=url,
            )
        if _has_outcome(data):
            _note_outcome_of(data)
        if '"error"' in data:
            try:
                payload = json.loads(data)
            except (ValueError, RecursionError):
                return index, UpstreamProtocolError(
                    f"the upstream sent a malformed chunk (not JSON): "
                    f"{excerpt(data, _EXCERPT, secrets)!r}",
                    url=url,
                )
            if isinstance(payload, dict) and payload.get("error") is not None:
                return index, _api_error(data, url, secrets)
    return len(batch), None


def _value_set(data: str, end: int) -> bool:
    """Whether the value after a field's name (ending at ``end``) is other than null."""
    return not data[end : end + 12].lstrip(" \t\r\n:").startswith("null")


def _has_outcome(data: str) -> bool:
    """Whether a chunk carries a finish reason or usage (the cheap check, per chunk).

    Compact JSON's ``"finish_reason":null`` is told by one comparison; other
    spacing is read past.
    """
    # Every occurrence is looked at: a nested "usage": null may come first.
    at = data.find('"finish_reason"')
    while at >= 0:
        if not data.startswith(":null", at + 15) and _value_set(data, at + 15):
            return True
        at = data.find('"finish_reason"', at + 15)
    at = data.find('"usage"')
    while at >= 0:
        if not data.startswith(":null", at + 7) and _value_set(data, at + 7):
            return True
        at = data.find('"usage"', at + 7)
    return False


def _note_outcome_of(data: str) -> None:
    """Record a chunk's finish reason and token counts in the stream's notes.

    Only the one or two chunks at the end of an answer get here. A chunk that does
    not parse, or whose fields have other shapes, is forwarded as it is and noted
    for what can be read of it: noting never fails a stream.
    """
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(payload, dict):
        return
    finish_reason = None
    choices = payload.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                finish_reason = choice["finish_reason"]
    usage = payload.get("usage")
    counts = None
    if isinstance(usage, dict):
        values = [usage.get(name, 0) for name in _USAGE_FIELDS]
        if all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            counts = Usage(*values)
    note_outcome(finish_reason, counts)


_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _api_error(data: str, url: str, secrets: Sequence[str] = ()) -> UpstreamAPIError:
    """The upstream's in-stream error object as an :class:`~streammgr.UpstreamAPIError`."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        payload = {"message": data}
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = excerpt(str(error.get("message") or "unknown error"), _EXCERPT, secrets)
    error_type, code = error.get("type"), error.get("code")
    return UpstreamAPIError(
        f"the upstream reported an error mid-stream: {message}",
        error_type=None if error_type is None else str(error_type),
        code=None if code is None else str(code),
        url=url,
    )


# -- stream: false -------------------------------------------------------------------------


class _CompletionResponse(Response):
    """One ``chat.completion`` object, assembled from a managed stream.

    Runs ``stream`` (an :class:`~streammgr.sources.OpenAIChat`) to its end with
    :func:`~streammgr.sources.collect_chat` while a second task watches the client:
    at ``http.disconnect`` the stream is cancelled as ``client_disconnected``, which
    cancels the upstream request, whether the stream waits for a slot or streams.
    Errors get the streaming response's table (:func:`error_answer`), except an
    upstream's client error (a 4xx other than 401, 403 and 429), passed on with its
    status so that a client's mistake is not retried as a server error.
    """

    media_type = "application/json"

    def __init__(
        self, manager: StreamManager, stream: ManagedStream[Any], model: str, request_id: str
    ) -> None:
        self._manager = manager
        self._stream = stream
        self._model = model
        self._request_id = request_id
        self.status_code = 200
        self.background = None
        self.init_headers({"x-stream-id": stream.id})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the request (the ASGI application interface)."""
        stream = self._stream
        completion: ChatCompletion | None = None
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_client, receive, name="streammgr-client-watcher")
            try:
                async with stream:
                    completion = await collect_chat(stream)
            except StreamCancelled as exc:
                if exc.close_reason is CloseReason.CLIENT_DISCONNECTED:
                    nursery.cancel_scope.cancel()
                    return  # nobody to tell
                error = exc
            except Exception as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if completion is not None:
            body = json.dumps(self._completion_object(completion), separators=(",", ":"))
            self.body = body.encode()
            self.raw_headers.append((b"content-length", str(len(self.body)).encode()))
            await super().__call__(scope, receive, send)
            return
        assert error is not None
        info = self._manager.get(stream.id)
        answer = completion_error(error, stream.id, info.error if info is not None else None)
        del error  # its traceback holds this frame: no reference cycle left
        await _answer_response(answer, stream.id)(scope, receive, send)

    async def _watch_client(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._manager.cancel(
                    self._stream.id,
                    reason="the client disconnected",
                    close_reason=CloseReason.CLIENT_DISCONNECTED,
                )
                return

    def _completion_object(self, completion: ChatCompletion) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": completion.role,
            "content": completion.text if completion.text or not completion.tool_calls else None,
            "refusal": None,
        }
        if completion.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": call.type,
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in completion.tool_calls
            ]
        answer: dict[str, Any] = {
            "id": completion.id or f"chatcmpl-{self._request_id}",
            "object": "chat.completion",
            "created": int(time.time()),  # a timestamp for humans, not a timeout
            "model": completion.model or self._model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
        }
        usage = completion.usage
        if usage is not None:
            answer["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        return answer


# -- the app -------------------------------------------------------------------------------


class _Gateway:
    """The HTTP routes of one gateway: its manager and its settings."""

    def __init__(self, manager: StreamManager, settings: GatewaySettings) -> None:
        self.manager = manager
        self.settings = settings

    async def chat_completions(self, request: Request) -> Response:
        settings = self.settings
        request_id: str = request.scope["state"]["request_id"]
        try:
            body = await read_body(request, settings.max_request_size)
            payload = parse_chat_request(body)
        except BadRequest as exc:
            return openai_error(exc.status, str(exc), param=exc.param)
        key = caller_key(request.headers, settings.key_header)
        model: str = payload["model"]
        labels = {"route": "chat.completions", "model": model[:64], "request_id": request_id}
        if payload.get("stream"):
            source = SSESource(
                settings.upstream,
                settings.chat_url,
                method="POST",
                headers=settings.upstream_headers(),
                content=body,  # the caller's request as it came: nothing re-encoded
                timeouts=settings.upstream_timeouts,
                secrets=settings.secrets,
            )
            labels["stream"] = "true"
            return EventStreamResponse(
                self.manager,
                _ChatEvents(source, settings.secrets),
                key=key,
                labels=labels,
                resumable=False,
                keep_alive=settings.keep_alive,
                answer_within=settings.answer_within,
                stall_timeout=settings.stall_timeout,
                answer_error=completion_error,  # an upstream's 4xx stays a 4xx
            )
        chat = settings.chat_source(payload, _NOT_FORWARDED)
        labels["stream"] = "false"
        stream = self.manager.open(chat, key=key, labels=labels, inline=True)
        return _CompletionResponse(self.manager, stream, model, request_id)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 (and any other HTTPException) in OpenAI's error format."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return openai_error(
            404,
            f"Invalid URL ({where}): this gateway serves POST /v1/chat/completions and "
            f"GET /v1/models",
            code="unknown_url",
        )
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return openai_error(
            405,
            f"Method not allowed ({where}); use {allow}",
            code="method_not_allowed",
            headers={"allow": allow},
        )
    return openai_error(exc.status_code, str(exc.detail), headers=exc.headers)


CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
"""The chat route's path: the one route a stream is held on, dispatched without a
framework (:class:`GatewayDispatch`)."""

_INTERNAL_ERROR = b"Internal Server Error"


def route_path(scope: Scope) -> str:
    """The path a route of an app mounted at ``scope["root_path"]`` matches:
    ``scope["path"]`` without the root path (Starlette's rule, so that the
    dispatch and Starlette's routes agree wherever the app is mounted)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


class ChatRoute:
    """``POST /v1/chat/completions`` as a plain ASGI callable: no router, no
    ``Request`` kept while the stream is held (the one the handler reads is gone
    once it has returned its response).

    An exception answers what Starlette's ``ServerErrorMiddleware`` answered: a
    500 ``Internal Server Error`` if nothing was sent yet, and is raised on to the
    server (:func:`internal_error`).
    """

    __slots__ = ("_gateway",)

    def __init__(self, gateway: _Gateway) -> None:
        self._gateway = gateway

    async def response_for(self, scope: Scope, receive: Receive) -> Response:
        """The request read and checked, and the response that answers it (for a
        layer that sends it and handles errors itself)."""
        return await self._gateway.chat_completions(Request(scope, receive))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one chat request (the ASGI application interface)."""
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            response = await self.response_for(scope, receive)
            await response(scope, receive, sender)
        except Exception:
            if not started:
                await internal_error(send)
            raise


async def internal_error(send: Send) -> None:
    """Send the 500 that Starlette's ``ServerErrorMiddleware`` sends for an app that
    raised before answering: ``Internal Server Error``, as text."""
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-length", str(len(_INTERNAL_ERROR)).encode()),
                (b"content-type", b"text/plain; charset=utf-8"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _INTERNAL_ERROR})


class GatewayDispatch:
    """Pure ASGI: ``POST /v1/chat/completions`` straight to ``chat``, every other
    request (other routes, methods, WebSockets, lifespan) to ``app``.

    A held stream then keeps no framework's layers alive: no router, no ``Request``
    per layer, no exception middleware's send wrapper (each Starlette app on the
    way cost a stream about 5 KiB). ``app`` must answer that path's other methods
    (a 405) itself.

    Args:
        chat: the chat route's ASGI callable.
        app: everything else.
    """

    __slots__ = ("app", "chat")

    def __init__(self, chat: ASGIApp, app: ASGIApp) -> None:
        self.chat = chat
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the request to ``chat`` or ``app``."""
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and route_path(scope) == CHAT_COMPLETIONS_PATH
        ):
            await self.chat(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def request_id_header(scope: Scope) -> tuple[bytes, bytes]:
    """An HTTP request's id, put in ``scope["state"]["request_id"]``, and its
    ``x-request-id`` header: the caller's own when it is a short token, else a new
    one (``req_`` and 24 hex digits)."""
    given = ""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1")
    request_id = given if _REQUEST_ID.fullmatch(given) else f"req_{secrets.token_hex(12)}"
    scope["state"] = {**scope.get("state", {}), "request_id": request_id}
    return (b"x-request-id", request_id.encode())


def with_request_id(start: Message, header: tuple[bytes, bytes]) -> Message:
    """An ``http.response.start`` message with ``header`` added, unless the answer
    names its own ``x-request-id``."""
    headers = list(start.get("headers", ()))
    if not any(name.lower() == b"x-request-id" for name, _ in headers):
        headers.append(header)
    return {**start, "headers": headers}


class RequestIdMiddleware:
    """Pure ASGI middleware: an ``x-request-id`` on every HTTP answer.

    The caller's own ``x-request-id`` is kept when it is a short token; otherwise a
    new one (``req_`` and 24 hex digits) is made. It is in
    ``scope["state"]["request_id"]`` for the app.

    Args:
        app: the ASGI app to wrap.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app with the id in its scope and on its ``http.response.start``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = request_id_header(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = with_request_id(message, header)
            await send(message)

        await self.app(scope, receive, send_with_id)


class GatewayParts(NamedTuple):
    """The gateway's app, and its parts for an app that dispatches itself.

    Attributes:
        app: what :func:`gateway_app` returns.
        chat: ``POST /v1/chat/completions``'s ASGI callable, without the request id
            (the caller's app sets ``scope["state"]["request_id"]``).
        routes: every other route, the WebSocket one too, and the 404s and 405s,
            without the request id.
    """

    app: ASGIApp
    chat: ChatRoute
    routes: ASGIApp


def gateway_app(
    manager: StreamManager,
    upstream: httpx.AsyncClient,
    *,
    upstream_url: str,
    api_key: str | None = None,
    key_header: str | None = None,
    upstream_timeouts: SourceTimeouts | None = None,
    answer_within: float | None = 1.0,
    keep_alive: float | None = 15.0,
    stall_timeout: float | None = 30.0,
    max_request_size: int = MAX_REQUEST_SIZE,
    websocket_origins: Sequence[str] = (),
    models_cache_ttl: float | None = MODELS_CACHE_TTL,
) -> ASGIApp:
    """An OpenAI-compatible gateway in front of ``upstream_url``, as an ASGI app.

    Routes: ``POST /v1/chat/completions`` (``stream: true`` answers Server-Sent
    Events forwarded from the upstream without re-encoding, never with an ``id:`` or
    ``retry:`` field, and ends with an in-band ``data: {"error": {...}}`` event when
    the upstream fails mid-stream; ``stream: false`` answers the assembled
    ``chat.completion``), ``GET /v1/models`` (the upstream's list, cached);
    anything else a 404 in OpenAI's error format. Every chat request runs through
    ``manager`` under the caller's key (see :func:`caller_key`); over a limit, the
    answer is 429 with ``Retry-After``, ``retry-after-ms`` and an OpenAI error body.
    Every answer has ``x-request-id``. See docs/gateway.md.

    The app has no lifespan: run ``manager`` around it (``async with manager``, or
    :func:`~streammgr.server.manager_lifespan` in the app that mounts it, as
    :func:`~streammgr.server.build_service_app` does).

    Args:
        manager: the manager every chat request runs through (limits, timeouts).
        upstream: the ``httpx.AsyncClient`` that reaches the upstream (its pool,
            proxies, TLS, or a transport such as
            :class:`~streammgr.simulate.SimulatedTransport`).
        upstream_url: the upstream's API root, as the openai SDK's ``base_url``
            takes it, e.g. ``"https://api.openai.com/v1"``.
        api_key: the key sent to the upstream (``Authorization: Bearer``), never
            the caller's; ``None``: none (the upstream needs no key; a ``stream:
            false`` request then sends ``Bearer no-key``).
        key_header: a request header whose value is the admission key (a tenant id
            set by a trusted proxy in front); where absent, the hashed credential.
        upstream_timeouts: the upstream requests' timeouts (default: connect 30 s).
        answer_within: the most seconds before the status is decided: a stream
            still waiting for a slot then is refused with a 429, an admitted one
            sends its headers (``0``: never wait for a slot; ``None``: no
            deadline). See :class:`~streammgr.server.EventStreamResponse`.
        keep_alive: seconds without a write before a keep-alive comment (``None``:
            none).
        stall_timeout: the most seconds one write may wait for a client that reads
            nothing (then ``client_stalled``; ``None``: no bound).
        max_request_size: the largest request body, in bytes (then 413), and the
            largest WebSocket message (then close 1009).
        websocket_origins: the ``Origin`` values that may open ``/v1/chat/ws``
            besides the gateway's own (``"*"``: any); a handshake from another
            origin gets a 403 (browsers apply no CORS to WebSockets: a page on any
            site could otherwise spend the upstream key). A handshake without
            ``Origin`` (not a browser) is let in.
        models_cache_ttl: seconds ``GET /v1/models`` keeps the upstream's list
            (``None``: not kept; callers at the same time still share one
            upstream request). See docs/gateway.md.

    Raises:
        TypeError / ValueError: a bad argument, named in the message.
    """
    return gateway_parts(
        manager,
        upstream,
        upstream_url=upstream_url,
        api_key=api_key,
        key_header=key_header,
        upstream_timeouts=upstream_timeouts,
        answer_within=answer_within,
        keep_alive=keep_alive,
        stall_timeout=stall_timeout,
        max_request_size=max_request_size,
        websocket_origins=websocket_origins,
        models_cache_ttl=models_cache_ttl,
    ).app


def gateway_parts(
    manager: StreamManager,
    upstream: httpx.AsyncClient,
    *,
    upstream_url: str,
    api_key: str | None = None,
    key_header: str | None = None,
    upstream_timeouts: SourceTimeouts | None = None,
    answer_within: float | None = 1.0,
    keep_alive: float | None = 15.0,
    stall_timeout: float | None = 30.0,
    max_request_size: int = MAX_REQUEST_SIZE,
    websocket_origins: Sequence[str] = (),
    models_cache_ttl: float | None = MODELS_CACHE_TTL,
) -> GatewayParts:
    """:func:`gateway_app`'s app and its parts (see :class:`GatewayParts`), for
    :func:`~streammgr.server.build_service_app`, which dispatches the chat route
    itself. The arguments and errors are :func:`gateway_app`'s."""
    if not isinstance(manager, StreamManager):
        raise TypeError(f"manager must be a StreamManager, got {type(manager).__name__}")
    if not isinstance(upstream, httpx.AsyncClient):
        raise TypeError(f"upstream must be an httpx.AsyncClient, got {type(upstream).__name__}")
    try:
        url = httpx.URL(upstream_url)
    except (httpx.InvalidURL, TypeError):
        raise ValueError(f"upstream_url must be an http(s) URL, got {upstream_url!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"upstream_url must be an http:// or https:// URL with a host, got {upstream_url!r}"
        )
    for name, value in (
        ("answer_within", answer_within),
        ("keep_alive", keep_alive),
        ("stall_timeout", stall_timeout),
    ):
        check_option(name, value)  # now, not at the first request
    if isinstance(max_request_size, bool) or not isinstance(max_request_size, int):
        raise TypeError(f"max_request_size must be an int, got {max_request_size!r}")
    if max_request_size < 1:
        raise ValueError(f"max_request_size must be at least 1 byte, got {max_request_size}")
    check_seconds("models_cache_ttl", models_cache_ttl)
    if api_key is not None:
        manager.add_secret(api_key)
    settings = GatewaySettings(
        upstream,
        upstream_url=str(url),
        api_key=api_key,
        key_header=key_header,
        upstream_timeouts=upstream_timeouts if upstream_timeouts is not None else SourceTimeouts(),
        answer_within=answer_within,
        keep_alive=keep_alive,
        stall_timeout=stall_timeout,
        max_request_size=max_request_size,
    )
    gateway = _Gateway(manager, settings)
    if isinstance(websocket_origins, str):
        raise TypeError("websocket_origins must be a list of origins, not one str")
    chat_socket = ChatSocket(manager, settings, websocket_origins)
    models = ModelsRoute(settings, cache_ttl=models_cache_ttl)
    app = Starlette(
        routes=[
            # Reached for the other methods only (a 405): POST goes past the router.
            Route(CHAT_COMPLETIONS_PATH, gateway.chat_completions, methods=["POST"]),
            Route("/v1/models", models.endpoint, methods=["GET"]),
            WebSocketRoute(CHAT_WS_PATH, chat_socket.endpoint),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    # Every layer from here to the routes looks only at a response's start: the
    # streaming answers send their bodies past them (one call per write, not five).
    chat = ChatRoute(gateway)
    return GatewayParts(
        DirectBodyWrites(RequestIdMiddleware(GatewayDispatch(chat, app))), chat, app
    )
