"""WebSocket feeds: connect, subscribe, stream every message, close cleanly.

:class:`WebSocketSource` is a push-style producer: ``manager.open(WebSocketSource(url))``
streams an upstream's WebSocket messages (``str`` for text, ``bytes`` for binary)
to the reader. trio-websocket speaks the protocol (opening handshake, pings,
fragmented messages, ``max_message_size``, the close handshake); this module opens
the connection, bounds every wait with Trio's clock, maps every failure to a typed
:class:`~streammgr.UpstreamError` at this edge, and ends every early exit (the
reader left, a ``manager.cancel``, a timeout, an error) with a close frame (code
1001, "going away"), shielded and bounded by ``close_timeout``, so the upstream
sees a clean close and not a dropped connection (1006).

Why push-style: trio-websocket runs a background reader task, so a connection
needs a nursery, and a nursery must not be held across an async generator's
``yield`` (its cancel scope would leak into the reader's task). A push producer,
``async def __call__(self, send)``, holds the whole connection inside one
``await`` in the producer's own task and hands each message over with
``await send.send(message)``, which waits while the reader is behind.

Why ``wrap_client_stream`` over a stream this module opens, and not
``open_websocket_url`` (trio-websocket 0.12), which would:

- run its reader task inside the stream's cancel scope, so a cancelled stream
  loses its reader first: ``aclose(1001)`` still sends the close frame, then waits
  all of ``close_timeout`` for a reply that nobody reads. Here the reader runs in a
  nursery shielded from the stream's cancellation, which the source cancels itself
  once the close handshake is over;
- notice a connection that ends before the handshake is answered (a TLS failure, an
  upstream that hangs up at once) only when its connect timeout expires
  (python-trio/trio-websocket#199). Here TLS is negotiated before the handshake and
  :class:`_WatchedStream` reports a silent hang-up at once;
- leave the socket open for the garbage collector whenever the upstream closed
  first, dropped, or sent a message over ``max_message_size``. Here the source
  closes its own stream on every path.

The source's one I/O seam is ``connect=``: the callable that opens the byte stream
to ``(host, port)`` (default :func:`trio.open_tcp_stream`). TLS, the handshake,
trio-websocket's reader, the close handshake and the error mapping all run above
it, so tests hand it one end of a :func:`trio.testing.memory_stream_pair` and run
everything else for real, on the mock clock. trio-websocket's, wsproto's, h11's and
the network's errors become :class:`~streammgr.UpstreamError` in one place,
:meth:`_Connection._map_error` (with :meth:`_Connection._closed_error` for close
codes).

One message is handed to the reader per receive: with ``message_queue_size=0``
trio-websocket never holds a second message ready, so there is no batch to gather
(``stream.batches()`` still gathers messages that are ready together).
"""

from __future__ import annotations

import math
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import trio

from .._errors import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDeadlineExceeded,
    UpstreamError,
    UpstreamIdleTimeout,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .._logging import excerpt, get_logger, redact
from .._stream import current_producer
from .._validate import check_count, check_seconds, check_strings
from ._common import body_excerpt, header_secrets, redact_url, url_secrets
from ._common import retry_after as parse_retry_after
from ._websocket_arguments import (
    check_headers,
    check_messages,
    check_ssl_context,
    check_subprotocols,
)

if TYPE_CHECKING:
    from trio_websocket import CloseReason, WebSocketConnection

    from .._stream import StreamSender

__all__ = ["NORMAL_CLOSE_CODES", "Connect", "WebSocketSource"]

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""How :class:`WebSocketSource` opens its byte stream: ``await connect(host, port)``
(:func:`trio.open_tcp_stream` by default)."""

NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1005})
"""Close codes that end the stream normally: 1000 (normal closure), 1001 (going
away) and 1005 (a close frame without a code: a clean close handshake)."""

_INSTALL_HINT = (
    "WebSocketSource needs the optional WebSocket dependency (trio-websocket): "
    "pip install 'streammgr[websocket]'"
)
_RECEIVE_BYTES = 65_536  # one socket read
_BODY_LIMIT = 2048  # bytes of a rejected handshake's body kept for the error
_MESSAGE_EXCERPT = 300  # characters of an upstream's text quoted in an error message
_GOING_AWAY = 1001
_ABNORMAL_CLOSURE = 1006  # trio-websocket's code for a connection that ended without a close frame
_MESSAGE_TOO_BIG = 1009


def _require_trio_websocket() -> None:
    """Raise a helpful :class:`ImportError` if the optional dependency is missing."""
    try:
        import trio_websocket  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT, name="trio_websocket") from exc


class WebSocketSource:
    """A producer that streams the messages of a WebSocket upstream.

    ``manager.open(WebSocketSource("wss://feed.example/v1?token=..."))`` connects,
    sends the ``send`` messages (a subscription, typically), then hands the reader
    every message the upstream sends: ``str`` for text messages, ``bytes`` for
    binary ones. Each call of the instance opens a new connection, so one source
    can feed many streams.

    The stream ends normally when the upstream closes with code 1000, 1001 or
    1005 (:data:`NORMAL_CLOSE_CODES`). Pings are answered between messages (so not
    while a slow reader holds a message back). Whenever the stream ends
    early (the reader left, a timeout, a ``manager.cancel``, shutdown, an error),
    the source sends a close frame with code 1001 and waits up to
    ``close_timeout`` seconds for the upstream's reply, so the upstream sees a
    clean close, never a dropped connection.

    Args:
        url: a ``ws://`` or ``wss://`` URL. Every query value of 4 characters or
            more is treated as a secret: it is replaced by ``[REDACTED]`` in the
            URL shown by ``repr``, ``.url`` and errors, and scrubbed from any text
            the upstream sends back (close reasons, rejection bodies).
        subprotocols: subprotocols to offer (``Sec-WebSocket-Protocol``), in order
            of preference.
        extra_headers: more handshake headers, as a mapping or ``(name, value)``
            pairs; credentials belong here (``{"Authorization": "Bearer ..."}``),
            and their values never appear in errors or reprs. Headers that the
            WebSocket handshake sets itself (``Host``, ``Upgrade``,
            ``Sec-WebSocket-*``...) are refused.
        send: messages to send right after the handshake, in order (``str`` as
            text, ``bytes`` as binary).
        connect_timeout: seconds for the TCP (and TLS) connection, the handshake
            and the ``send`` messages; ``None`` for no limit.
        idle_timeout: seconds the source may wait for the upstream's next whole
            message (counted from when it starts waiting: time the reader holds it
            back does not count); ``None`` for no limit. Pings do not count as
            messages.
        deadline: seconds the whole stream may last, connection included;
            ``None`` for no limit.
        close_timeout: seconds the closing handshake may take before the TCP
            connection is closed anyway.
        max_message_size: the largest message accepted, measured by ``len()``
            (characters for text, bytes for binary); a bigger one closes the
            connection with code 1009.
        ssl_context: the TLS context for ``wss://`` URLs (default: the system's
            trusted CAs, ``ssl.create_default_context()``).
        secrets: more exact values to scrub from the URL and error messages, in
            any encoding (percent-encoded, ``+`` for a space).
        connect: ``async (host, port) -> trio.abc.Stream``, the byte stream to the
            upstream (default :func:`trio.open_tcp_stream`): a seam for a proxy, a
            Unix socket, or a test's in-memory stream. TLS (``wss://``) is layered
            over what it returns; an ``OSError`` it raises is an
            :class:`~streammgr.UpstreamConnectError`.

    Raises:
        TypeError / ValueError: a bad argument, named in the message.
        ImportError: the optional dependency is not installed
            (``pip install 'streammgr[websocket]'``).

    Iterating the stream raises:
        UpstreamStatusError: the upstream rejected the handshake with an HTTP
            status (``.status_code``, ``.body`` excerpt, ``.retry_after``).
        UpstreamConnectError: the connection could not be made (refused,
            unreachable, DNS, TLS), or closed before the handshake was answered.
        UpstreamProtocolError: the upstream does not speak WebSocket (an invalid
            handshake answer), or sent a message over ``max_message_size``.
        UpstreamClosed: the upstream closed with another code (``.code``,
            ``.reason``; 1002 and 1007 also when it sent invalid WebSocket data),
            or the connection dropped without a close frame (``.code`` is ``None``).
        UpstreamConnectTimeout / UpstreamIdleTimeout / UpstreamDeadlineExceeded:
            ``connect_timeout`` / ``idle_timeout`` / ``deadline`` expired.
    """

    def __init__(
        self,
        url: str,
        *,
        subprotocols: Iterable[str] = (),
        extra_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        send: Iterable[str | bytes] = (),
        connect_timeout: float | None = 30.0,
        idle_timeout: float | None = None,
        deadline: float | None = None,
        close_timeout: float = 1.0,
        max_message_size: int = 1_048_576,
        ssl_context: ssl.SSLContext | None = None,
        secrets: Iterable[str] = (),
        connect: Connect = trio.open_tcp_stream,
    ) -> None:
        _require_trio_websocket()
        if not callable(connect):
            raise TypeError(
                f"connect must be an async callable (host, port) -> trio.abc.Stream, "
                f"got {type(connect).__name__}"
            )
        self._open_stream = connect
        headers = check_headers(extra_headers)
        self._secrets: tuple[str, ...] = tuple(
            value
            for value in (
                *check_strings("secrets", secrets),
                *header_secrets(headers),
                *(url_secrets(url, every_query_value=True) if isinstance(url, str) else ()),
            )
            if value
        )
        (self._host, self._port, self._host_header, self._target, self._tls) = self._parse_url(url)
        self._shown_url = redact_url(url, self._secrets, every_query_value=True)
        self._ssl_context = check_ssl_context(ssl_context, self._tls)
        self._subprotocols = check_subprotocols(subprotocols)
        self._headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers]
        self._send = check_messages(send)
        self._connect_timeout = check_seconds("connect_timeout", connect_timeout)
        self._idle_timeout = check_seconds("idle_timeout", idle_timeout)
        self._deadline = check_seconds("deadline", deadline)
        checked_close_timeout = check_seconds("close_timeout", close_timeout)
        if checked_close_timeout is None:
            raise ValueError("close_timeout must be a positive number of seconds, got None")
        self._close_timeout = checked_close_timeout
        self._max_message_size = check_count("max_message_size", max_message_size, minimum=1)

    def _parse_url(self, url: object) -> tuple[str, int, str, str, bool]:
        """``(host, port, Host header, request target, tls)`` from a ws(s) URL."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        shown = redact_url(url, self._secrets, every_query_value=True)
        if not url.isascii() or any(character.isspace() for character in url):
            raise ValueError(
                f"url must be ASCII without spaces (percent-encode the rest), got {shown!r}"
            )
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in {"ws", "wss"}:
            raise ValueError(f"url must start with ws:// or wss://, got {shown!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "url must not carry credentials (user:password@host); send them in "
                "extra_headers, e.g. {'Authorization': 'Bearer ...'}"
            )
        if not parts.hostname:
            raise ValueError(f"url has no host: {shown!r}")
        if parts.fragment:
            raise ValueError(f"a WebSocket url cannot have a #fragment: {shown!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"url has an invalid port: {shown!r}") from None
        tls = scheme == "wss"
        if port is None:
            port = 443 if tls else 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return parts.hostname, port, parts.netloc, target, tls

    @property
    def url(self) -> str:
        """The upstream URL with secrets (and every query value) redacted."""
        return self._shown_url

    def __repr__(self) -> str:
        return f"WebSocketSource({self._shown_url})"

    async def __call__(self, send: StreamSender[str | bytes]) -> None:
        """Connect, then hand each of the upstream's messages to ``send`` until it
        closes: the push-style producer protocol (a new connection per call).

        The manager calls it in the stream's own task and cancels that task's scope
        when the stream ends early; the connection is closed before this returns.
        """
        connection = _Connection(self)
        try:
            await connection.run(send)
        except BaseExceptionGroup as group:
            error = connection.error_from(group)
            if error is None:
                raise  # cancellations only: the canceller's scope takes them
        else:
            return
        # Raised outside the except block, so the reader sees the error as itself,
        # without the exception group chained to it.
        raise error


async def _open_reader_nursery(
    *, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED
) -> None:
    """Hold a nursery for trio-websocket's reader task until it is cancelled.

    Shielded, so that cancelling the stream does not kill the reader that the close
    handshake still needs; :meth:`_Connection.run` cancels it, always, last.
    """
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()


class _Connection:
    """One connection of a :class:`WebSocketSource`: connect, talk, close.

    Every network wait is bounded by an absolute time, and raises the typed
    timeout of the phase it belongs to when it expires.
    """

    def __init__(self, source: WebSocketSource) -> None:
        self._source = source
        now = trio.current_time()
        timeout, deadline = source._connect_timeout, source._deadline
        self._connect_at = now + timeout if timeout is not None else math.inf
        self._deadline_at = now + deadline if deadline is not None else math.inf
        self._stream: _WatchedStream | None = None
        self._closed_seen = False  # trio-websocket reported the WebSocket closed
        self._send_cut = False  # a send timed out: a frame may be half written

    async def run(self, send: StreamSender[str | bytes]) -> None:
        """The connection's whole life; the socket is closed when it returns."""
        transport = await self._connect()
        try:
            self._stream = _WatchedStream(transport)
            async with trio.open_nursery() as nursery:
                reader_nursery: trio.Nursery = await nursery.start(_open_reader_nursery)
                try:
                    await self._talk(reader_nursery, self._stream, send)
                finally:
                    reader_nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(transport)

    async def _connect(self) -> trio.abc.Stream:
        """The byte stream (``connect``), then TLS for ``wss://``, before the connect
        timeout and the deadline."""
        source = self._source
        stream: trio.abc.Stream | None = None
        connected = False
        try:
            with trio.move_on_at(min(self._connect_at, self._deadline_at)):
                stream = await source._open_stream(source._host, source._port)
                if source._tls:
                    stream = trio.SSLStream(
                        stream,
                        source._ssl_context or ssl.create_default_context(),
                        server_hostname=source._host,
                        https_compatible=True,
                    )
                    await stream.do_handshake()
                connected = True
        except (OSError, trio.BrokenResourceError) as exc:
            mapped = self._map_error(exc, connecting=True)
            assert mapped is not None  # both are mapped while connecting
            raise mapped from exc
        finally:
            if not connected and stream is not None:
                await trio.aclose_forcefully(stream)
        if stream is None or not connected:
            raise self._expired(self._connect_at, "connect")
        return stream

    async def _talk(
        self,
        reader_nursery: trio.Nursery,
        stream: _WatchedStream,
        send: StreamSender[str | bytes],
    ) -> None:
        """The WebSocket handshake, the ``send`` messages, then every message."""
        from trio_websocket import wrap_client_stream

        source = self._source
        websocket: WebSocketConnection | None = None
        try:
            with trio.move_on_at(min(self._connect_at, self._deadline_at)):
                websocket = await wrap_client_stream(
                    reader_nursery,
                    # Annotated as a socket or TLS stream; any trio.abc.Stream works
                    # (trio-websocket's docs say so, and only repr() tells them apart).
                    cast("trio.SocketStream", stream),
                    source._host_header,
                    source._target,
                    subprotocols=source._subprotocols,
                    extra_headers=list(source._headers),
                    message_queue_size=0,  # the manager's channel is the only buffer
                    max_message_size=source._max_message_size,
                    receive_buffer_size=_RECEIVE_BYTES,
                )
            if websocket is None:
                raise self._expired(self._connect_at, "connect")
            context = current_producer()
            if context is not None:
                context.connected()
            await self._send_messages(websocket)
            await self._forward(websocket, send)
        finally:
            if websocket is not None:
                await self._close(websocket)

    async def _send_messages(self, websocket: WebSocketConnection) -> None:
        from trio_websocket import ConnectionClosed

        until = min(self._connect_at, self._deadline_at)
        for message in self._source._send:
            with trio.move_on_at(until) as waited:
                try:
                    await websocket.send_message(message)
                except ConnectionClosed:
                    return  # the upstream is closing: _forward reports how
            if waited.cancelled_caught:
                self._send_cut = True
                raise self._expired(self._connect_at, "connect")

    async def _forward(
        self, websocket: WebSocketConnection, send: StreamSender[str | bytes]
    ) -> None:
        """Hand every message to the reader until the upstream closes."""
        from trio_websocket import ConnectionClosed

        idle_timeout = self._source._idle_timeout
        deadline_at = self._deadline_at
        while True:
            idle_at = trio.current_time() + idle_timeout if idle_timeout is not None else math.inf
            message: str | bytes | None = None
            with trio.move_on_at(min(idle_at, deadline_at)):
                try:
                    message = await websocket.get_message()
                except ConnectionClosed as exc:
                    self._closed_seen = True
                    error = self._closed_error(exc.reason)
                    if error is None:
                        return
                    raise error from exc
            if message is None:
                raise self._expired(idle_at, "idle")
            # The deadline bounds the whole stream, a slow reader included.
            with trio.move_on_at(deadline_at) as handed:
                await send.send(message)
            if handed.cancelled_caught:
                raise self._expired(deadline_at, "idle")

    async def _close(self, websocket: WebSocketConnection) -> None:
        """The close handshake (code 1001) unless the WebSocket is closed already.

        Shielded, so it runs when the stream was cancelled, and bounded by
        ``close_timeout``, so it cannot hang the stream's close.
        """
        if self._closed_seen or self._send_cut:
            return  # nothing to close, or a half-written frame: only the socket closes
        source = self._source
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + source._close_timeout
            await websocket.aclose(_GOING_AWAY)
        # trio-websocket may swallow the deadline's Cancelled: ask the scope.
        if scope.cancel_called:
            get_logger().warning(
                "websocket.close_timeout", url=source.url, close_timeout=source._close_timeout
            )

    # -- errors ------------------------------------------------------------------------

    def error_from(self, group: BaseExceptionGroup[BaseException]) -> BaseException | None:
        """The one exception to raise for what the connection's tasks raised.

        ``None`` if they were all cancelled. This source's own errors win; a
        trio-websocket (or network) error from its reader task is mapped; anything
        else is a bug and is raised as itself, or as the group if there are several.
        """
        failures = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
        if not failures:
            return None
        for failure in failures:
            if isinstance(failure, UpstreamError):
                return failure
        if len(failures) > 1:
            return group
        failure = failures[0]
        mapped = self._map_error(failure)
        if mapped is None:
            return failure
        # _NoAnswer is this module's signal, not a cause: chain what it carries.
        mapped.__cause__ = failure.__cause__ if isinstance(failure, _NoAnswer) else failure
        return mapped

    def _map_error(self, error: BaseException, *, connecting: bool = False) -> UpstreamError | None:
        """The one place trio-websocket's, wsproto's, h11's and the network's errors
        become :class:`~streammgr.UpstreamError`; ``None`` if it is not theirs (a bug,
        raised as itself).

        ``connecting``: raised while the byte stream (and TLS) was being opened,
        before any WebSocket byte: a refused or unreachable upstream, or TLS.
        """
        import h11
        from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError
        from wsproto.utilities import ProtocolError

        source = self._source
        if connecting and isinstance(error, OSError):
            return UpstreamConnectError(
                f"could not connect to {source.url}: {self._redact(str(error))}; check the "
                f"URL and that the upstream is up",
                url=source.url,
            )
        if connecting and isinstance(error, trio.BrokenResourceError):
            return UpstreamConnectError(
                f"the TLS handshake with {source.url} failed ({self._describe(error)}); "
                f"check wss:// versus ws://, the certificate and ssl_context",
                url=source.url,
            )
        if isinstance(error, _NoAnswer):
            return UpstreamConnectError(
                f"{source.url} closed the connection without answering the WebSocket "
                f"handshake ({self._describe_drop()}); check ws:// versus wss:// and that "
                f"the upstream speaks WebSocket",
                url=source.url,
            )
        if isinstance(error, ConnectionRejected):
            return self._rejected(error.status_code, error.headers, error.body)
        if isinstance(error, ProtocolError | h11.ProtocolError):
            # trio-websocket answers wsproto's RemoteProtocolError with a second error
            # of its own; the first one says what was wrong.
            return UpstreamProtocolError(
                f"{source.url} answered the WebSocket handshake with something invalid "
                f"({self._one_line(_protocol_detail(error))}); check that the URL "
                f"is a WebSocket endpoint",
                url=source.url,
            )
        if isinstance(error, ConnectionClosed):
            return self._closed_error(error.reason) or self._dropped()
        if isinstance(error, HandshakeError | OSError | trio.BrokenResourceError):
            return UpstreamConnectError(
                f"the connection to {source.url} broke ({self._describe(error)}); retry",
                url=source.url,
            )
        return None

    def _closed_error(self, reason: CloseReason | None) -> UpstreamError | None:
        """The error for how the WebSocket closed; ``None`` for a normal close."""
        source = self._source
        if reason is None or reason.code == _ABNORMAL_CLOSURE:
            return self._dropped()
        code = reason.code
        text = self._redact(reason.reason or "")
        limit = source._max_message_size
        if code == _MESSAGE_TOO_BIG and reason.reason == (
            f"Exceeded maximum message size: {limit} bytes"  # trio-websocket's own close
        ):
            return UpstreamProtocolError(
                f"{source.url} sent a message larger than max_message_size ({limit}); the "
                f"connection is closed with code 1009; raise max_message_size if messages "
                f"this big are expected",
                url=source.url,
            )
        if code in NORMAL_CLOSE_CODES:
            return None
        if code >= 3000:
            name = "application code"
        elif reason.name in {"RFC_RESERVED", "INVALID_CODE"}:
            name = "unknown code"
        else:
            name = reason.name
        if code == 1008:
            hint = "the upstream refused the session: check the credentials and the send messages"
        elif code in {1002, 1007}:
            hint = (
                "a protocol error: the upstream sent invalid WebSocket data, or refused what "
                "this client sent"
            )
        elif code in {1003, 1009}:
            hint = "the upstream refused what this client sent: check the send messages"
        elif code in {1011, 1012, 1013, 1014}:
            hint = "the upstream failed or is restarting: retry later"
        elif code >= 3000:
            hint = "an application-defined code: see the upstream's documentation"
        else:
            hint = "see the reason"
        shown_reason = f": {self._one_line(text)!r}" if text else ""
        return UpstreamClosed(
            f"{source.url} closed the WebSocket with code {code} ({name}){shown_reason}; {hint}",
            code=code,
            reason=text,
            url=source.url,
        )

    def _dropped(self) -> UpstreamClosed:
        source = self._source
        error = UpstreamClosed(
            f"the connection to {source.url} dropped without a WebSocket close frame "
            f"(1006, {self._describe_drop()}); the upstream crashed or a proxy cut the "
            f"connection: retry",
            code=None,
            reason="",
            url=source.url,
        )
        if self._stream is not None and self._stream.broken is not None:
            error.__cause__ = self._stream.broken
        return error

    def _rejected(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes | None
    ) -> UpstreamError:
        source = self._source
        # Redacted before it is cut: trio-websocket read the whole body, so a secret
        # the upstream echoed across the limit is seen whole.
        shown_body = body_excerpt(body or b"", _BODY_LIMIT, source._secrets, whole=True)
        quoted = self._one_line(shown_body) or "(empty body)"
        if 200 <= status < 300:
            return UpstreamProtocolError(
                f"{source.url} answered the WebSocket handshake with HTTP {status} instead of "
                f"101 Switching Protocols: {quoted}; check that the URL is a WebSocket endpoint",
                url=source.url,
            )
        retry_after = None
        for name, value in headers:
            if name.lower() == b"retry-after":
                retry_after = parse_retry_after(value, datetime.now(UTC))
        hint = {
            401: "check the credentials (extra_headers, or the token in the URL)",
            403: "check the credentials and their permissions",
            404: "check the URL path",
            426: "the upstream wants another protocol version: check the URL",
            429: "the upstream is rate limiting: retry later or lower max_streams",
        }.get(status, "see the upstream's message")
        if 300 <= status < 400:
            hint = "the upstream redirects: use the WebSocket URL it redirects to"
        return UpstreamStatusError(
            f"{source.url} rejected the WebSocket handshake with HTTP {status}: {quoted}; {hint}",
            status_code=status,
            body=shown_body,
            url=source.url,
            retry_after=retry_after,
        )

    def _expired(self, phase_at: float, phase: str) -> UpstreamTimeout:
        source = self._source
        if self._deadline_at <= phase_at:
            deadline = source._deadline or 0.0
            return UpstreamDeadlineExceeded(
                f"the WebSocket stream from {source.url} outlived its deadline of {deadline:g}s; "
                f"raise deadline if streams this long are expected",
                timeout=deadline,
                url=source.url,
            )
        if phase == "connect":
            timeout = source._connect_timeout or 0.0
            return UpstreamConnectTimeout(
                f"{source.url} did not complete the WebSocket handshake within "
                f"connect_timeout={timeout:g}s; check that it is up, or raise connect_timeout",
                timeout=timeout,
                url=source.url,
            )
        timeout = source._idle_timeout or 0.0
        return UpstreamIdleTimeout(
            f"{source.url} sent no message for {timeout:g}s; raise idle_timeout if gaps this "
            f"long are normal",
            timeout=timeout,
            url=source.url,
        )

    def _redact(self, text: str) -> str:
        return redact(text, self._source._secrets)

    def _one_line(self, text: str) -> str:
        """``text`` redacted, on one line, then cut to :data:`_MESSAGE_EXCERPT`
        characters (no fragment of a secret or of ``[REDACTED]`` at the cut)."""
        return excerpt(
            " ".join(self._redact(text).split()),
            _MESSAGE_EXCERPT,
            self._source._secrets,
            ellipsis="...",
        )

    def _describe(self, error: BaseException) -> str:
        """``"Type: message"`` of the root cause (a trio error wraps the OS's or ssl's)."""
        cause = error.__cause__ or error
        return self._one_line(f"{type(cause).__name__}: {cause}")

    def _describe_drop(self) -> str:
        broken = self._stream.broken if self._stream is not None else None
        if broken is None:
            return "end of input"
        return self._describe(broken)


class _NoAnswer(Exception):
    """The connection ended before the upstream sent a single byte."""


class _WatchedStream(trio.abc.Stream):
    """The connection's bytes, as trio-websocket reads and writes them.

    trio-websocket takes a connection that ends before the handshake is answered
    for a slow upstream and waits out its connect timeout; this stream raises
    :class:`_NoAnswer` in the reader task instead, as soon as the connection ends
    without a byte from the upstream. It also keeps why the connection broke.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._answered = False
        self.broken: trio.BrokenResourceError | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except trio.BrokenResourceError as exc:
            self.broken = exc
            if not self._answered:
                raise _NoAnswer from exc
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self.broken = exc
            if not self._answered:
                raise _NoAnswer from exc
            raise
        if data:
            self._answered = True
        elif not self._answered:
            raise _NoAnswer
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions in ``group`` and its nested groups."""
    for exception in group.exceptions:
        if isinstance(exception, BaseExceptionGroup):
            yield from _leaves(exception)
        else:
            yield exception


def _protocol_detail(error: BaseException) -> str:
    """What wsproto found wrong in a handshake answer, from ``error``'s chain."""
    import h11
    from wsproto.utilities import RemoteProtocolError

    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, RemoteProtocolError):
            inner = link.__context__  # h11's own words, when h11 found the fault
            return f"{link}: {inner}" if isinstance(inner, h11.ProtocolError) else str(link)
        link = link.__cause__ or link.__context__
    return f"{type(error).__name__}: {error}"
