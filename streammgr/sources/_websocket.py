"""WebSocket feeds: connect, subscribe, stream every message, close cleanly.

:class:`WebSocketSource` is a producer: ``manager.open(WebSocketSource(url))``
streams an upstream's WebSocket messages (``str`` for text, ``bytes`` for binary)
to the reader. Every way the upstream can fail is mapped, at this edge, to a typed
:class:`~streammgr.UpstreamError`; and on every path, including a cancellation
by the manager, the connection ends with a WebSocket close handshake (code 1001,
"going away"), shielded and bounded by ``close_timeout``, so the upstream sees a
clean close and not a dropped connection (1006).

Why wsproto and not trio-websocket's connection object: a trio-websocket
connection needs a background reader task, hence a nursery, and a producer is an
async generator. A nursery held across a ``yield`` leaks its cancel scope into
the consumer's task, and Trio reports "Cancel scope stack corrupted" as soon as
the manager closes the generator early. So this module drives *wsproto* (the
sans-IO protocol engine trio-websocket is built on, installed with the
``streammgr[websocket]`` extra) from the producer's own task: the protocol state
machine does no I/O, this thin layer reads and writes the socket, and no cancel
scope is ever held across a ``yield``.
"""

from __future__ import annotations

import math
import re
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Mapping
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
from .._logging import get_logger, redact
from .._stream import current_producer
from .._validate import check_seconds

if TYPE_CHECKING:
    from wsproto.events import CloseConnection, Event

__all__ = ["NORMAL_CLOSE_CODES", "WebSocketSource"]

NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1005})
"""Close codes that end the stream normally: 1000 (normal closure), 1001 (going
away) and 1005 (a close frame without a code: a clean close handshake)."""

_INSTALL_HINT = (
    "WebSocketSource needs the optional WebSocket dependencies (wsproto, installed "
    "with trio-websocket): pip install 'streammgr[websocket]'"
)
_RECEIVE_BYTES = 65_536  # one socket read
_BODY_LIMIT = 2048  # bytes of a rejected handshake's body kept for the error
_MESSAGE_EXCERPT = 300  # characters of an upstream's text quoted in an error message
_MIN_SECRET_LENGTH = 4  # shorter query values are not scrubbed from upstream text
_GOING_AWAY = 1001
_MESSAGE_TOO_BIG = 1009
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110)
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "transfer-encoding",
        "upgrade",
    }
)
_CREDENTIAL_SCHEMES = frozenset({"basic", "bearer", "token"})
_SECRET_HEADER_WORDS = ("auth", "cookie", "key", "password", "secret", "signature", "token")


def _require_wsproto() -> None:
    """Raise a helpful :class:`ImportError` if the optional dependency is missing."""
    try:
        import wsproto  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT, name="wsproto") from exc


class WebSocketSource:
    """A producer that streams the messages of a WebSocket upstream.

    ``manager.open(WebSocketSource("wss://feed.example/v1?token=..."))`` connects,
    sends the ``send`` messages (a subscription, typically), then yields every
    message the upstream sends: ``str`` for text messages, ``bytes`` for binary
    ones. Each call of the instance opens a new connection, so one source can
    feed many streams.

    The stream ends normally when the upstream closes with code 1000, 1001 or
    1005 (:data:`NORMAL_CLOSE_CODES`). Pings are answered while the source waits
    for a message. Whenever the stream ends early (the reader left, a timeout, a
    ``manager.cancel``, shutdown, an error), the source sends a close frame with
    code 1001 and waits up to ``close_timeout`` seconds for the upstream's reply,
    so the upstream sees a clean close, never a dropped connection.

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
        secrets: more exact values to scrub from error messages.

    Raises:
        TypeError / ValueError: a bad argument, named in the message.
        ImportError: the optional dependency is not installed
            (``pip install 'streammgr[websocket]'``).

    Iterating the stream raises:
        UpstreamStatusError: the upstream rejected the handshake with an HTTP
            status (``.status_code``, ``.body`` excerpt, ``.retry_after``).
        UpstreamConnectError: the connection could not be made (refused,
            unreachable, DNS, TLS), or closed before the handshake was answered.
        UpstreamProtocolError: the upstream does not speak WebSocket properly, or
            sent a message over ``max_message_size``.
        UpstreamClosed: the upstream closed with another code (``.code``,
            ``.reason``), or the connection dropped without a close frame
            (``.code`` is ``None``).
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
    ) -> None:
        _require_wsproto()
        headers = _check_headers(extra_headers)
        self._secrets: tuple[str, ...] = tuple(
            value
            for value in (*_check_secrets(secrets), *_header_secrets(headers), *_query_values(url))
            if value
        )
        (self._host, self._port, self._host_header, self._target, self._tls) = self._parse_url(url)
        self._shown_url = redact(url, self._secrets)
        self._ssl_context = _check_ssl_context(ssl_context, self._tls)
        self._subprotocols = _check_subprotocols(subprotocols)
        self._headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers]
        self._send = _check_messages(send)
        self._connect_timeout = check_seconds("connect_timeout", connect_timeout)
        self._idle_timeout = check_seconds("idle_timeout", idle_timeout)
        self._deadline = check_seconds("deadline", deadline)
        checked_close_timeout = check_seconds("close_timeout", close_timeout)
        if checked_close_timeout is None:
            raise ValueError("close_timeout must be a positive number of seconds, got None")
        self._close_timeout = checked_close_timeout
        self._max_message_size = _check_max_message_size(max_message_size)

    def _parse_url(self, url: object) -> tuple[str, int, str, str, bool]:
        """``(host, port, Host header, request target, tls)`` from a ws(s) URL."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        shown = redact(url, self._secrets)
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

    def __call__(self) -> AsyncGenerator[str | bytes, None]:
        """Connect and stream the upstream's messages (a new connection per call)."""
        return self._stream()

    async def _stream(self) -> AsyncGenerator[str | bytes, None]:
        # No cancel scope is held across a yield: each await in _Connection has
        # its own scope, with the deadline that applies to it.
        connection = _Connection(self)
        try:
            await connection.open()
            while True:
                message = await connection.receive()
                if message is None:
                    return
                yield message
        finally:
            await connection.aclose()


class _Connection:
    """One WebSocket connection: wsproto's state machine plus a trio stream.

    Every network wait is bounded by an absolute time, and raises the typed
    timeout of the phase it belongs to when it expires.
    """

    def __init__(self, source: WebSocketSource) -> None:
        from wsproto import ConnectionType, WSConnection

        self._source = source
        self._protocol = WSConnection(ConnectionType.CLIENT)
        self._stream: trio.abc.Stream | None = None
        self._pending: deque[Event] = deque()
        self._eof = False
        self._received = False  # any bytes at all from the upstream
        self._drop: BaseException | None = None  # why the connection broke, if it did
        self._send_cut = False  # a send timed out half-way: no more frames can follow
        self._established = False
        self._close_code = _GOING_AWAY
        self._close_reason: str | None = None
        now = trio.current_time()
        self._deadline_at = now + source._deadline if source._deadline is not None else math.inf

    # -- opening -----------------------------------------------------------------

    async def open(self) -> None:
        """Connect, complete the handshake and send the ``send`` messages."""
        from wsproto.connection import ConnectionState
        from wsproto.events import BytesMessage, Request, TextMessage

        source = self._source
        timeout = source._connect_timeout
        phase_at = trio.current_time() + timeout if timeout is not None else math.inf
        until = min(phase_at, self._deadline_at)
        with trio.move_on_at(until):
            try:
                self._stream = await self._connect()
            except OSError as exc:
                raise UpstreamConnectError(
                    f"could not connect to {source.url}: {self._redact(str(exc))}; check the "
                    f"URL and that the upstream is up",
                    url=source.url,
                ) from exc
        if self._stream is None:
            raise self._expired(phase_at, "connect")
        request = Request(
            host=source._host_header,
            target=source._target,
            subprotocols=list(source._subprotocols),
            extra_headers=list(source._headers),
        )
        if not await self._send(self._protocol.send(request), until):
            raise self._expired(phase_at, "connect")
        if self._drop is not None:
            raise UpstreamConnectError(
                f"the connection to {source.url} broke before the WebSocket handshake "
                f"({self._describe_drop()}); check ws:// versus wss:// and the TLS settings",
                url=source.url,
            ) from self._drop
        await self._handshake(until, phase_at)
        self._established = True
        context = current_producer()
        if context is not None:
            context.connected()
        for message in source._send:
            if self._protocol.state is not ConnectionState.OPEN or self._drop is not None:
                break  # the upstream is closing: receive() reports how
            event = (
                TextMessage(data=message)
                if isinstance(message, str)
                else BytesMessage(data=message)
            )
            if not await self._send(self._protocol.send(event), until):
                raise self._expired(phase_at, "connect")

    async def _connect(self) -> trio.abc.Stream:
        source = self._source
        if not source._tls:
            return await trio.open_tcp_stream(source._host, source._port)
        context = source._ssl_context or ssl.create_default_context()
        return await trio.open_ssl_over_tcp_stream(
            source._host, source._port, ssl_context=context, https_compatible=True
        )

    async def _handshake(self, until: float, phase_at: float) -> None:
        """Wait for the upstream's answer: accepted, or an error that says why not."""
        from wsproto.events import AcceptConnection, RejectConnection, RejectData

        source = self._source
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        body = bytearray()
        while True:
            try:
                event = await self._next_event(until, phase_at, "connect")
            except UpstreamTimeout:
                if status is None:
                    raise
                raise self._rejected(status, headers, body) from None  # body cut short
            if event is None:  # end of input, and wsproto made no event of it
                if status is not None:
                    raise self._rejected(status, headers, body)
                raise UpstreamConnectError(
                    f"{source.url} closed the connection without answering the WebSocket "
                    f"handshake ({self._describe_drop()}); check ws:// versus wss:// and that "
                    f"the upstream speaks WebSocket",
                    url=source.url,
                ) from self._drop
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status, headers = event.status_code, list(event.headers)
                if not event.has_body:
                    raise self._rejected(status, headers, body)
            elif isinstance(event, RejectData) and status is not None:
                body += event.data[: _BODY_LIMIT - len(body)]
                if event.body_finished or len(body) >= _BODY_LIMIT:
                    raise self._rejected(status, headers, body)

    def _rejected(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytearray
    ) -> UpstreamError:
        source = self._source
        excerpt = self._redact(bytes(body).decode("utf-8", "replace"))
        quoted = _one_line(excerpt) or "(empty body)"
        if 200 <= status < 300:
            return UpstreamProtocolError(
                f"{source.url} answered the WebSocket handshake with HTTP {status} instead of "
                f"101 Switching Protocols: {quoted}; check that the URL is a WebSocket endpoint",
                url=source.url,
            )
        retry_after = None
        for name, value in headers:
            if name.lower() == b"retry-after":
                retry_after = _retry_after(value)
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
            body=excerpt,
            url=source.url,
            retry_after=retry_after,
        )

    # -- streaming -----------------------------------------------------------------

    async def receive(self) -> str | bytes | None:
        """The next whole message, or ``None`` when the upstream closed normally."""
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        source = self._source
        idle = source._idle_timeout
        phase_at = trio.current_time() + idle if idle is not None else math.inf
        until = min(phase_at, self._deadline_at)
        limit = source._max_message_size
        parts: list[str | bytes] = []
        size = 0
        while True:
            event = await self._next_event(until, phase_at, "idle")
            if isinstance(event, TextMessage | BytesMessage):
                data = event.data
                size += len(data)
                if size > limit:
                    self._close_code = _MESSAGE_TOO_BIG
                    self._close_reason = "message too big"
                    raise UpstreamProtocolError(
                        f"{source.url} sent a message larger than max_message_size ({limit}); "
                        f"raise max_message_size if messages this big are expected",
                        url=source.url,
                    )
                if not isinstance(data, str):
                    data = bytes(data)
                if event.message_finished and not parts:
                    return data
                parts.append(data)
                if event.message_finished:  # a fragmented message: one kind throughout
                    if isinstance(data, str):
                        return "".join(cast("list[str]", parts))
                    return b"".join(cast("list[bytes]", parts))
            elif isinstance(event, Ping):
                await self._send(self._protocol.send(event.response()), until)
            elif isinstance(event, CloseConnection):
                await self._closed_by_upstream(event, until)  # raises unless normal
                return None
            elif event is None:  # cannot happen once connected: wsproto reports 1006
                raise self._dropped()

    async def _closed_by_upstream(self, event: CloseConnection, until: float) -> None:
        """Answer the upstream's close frame; raise unless the close was normal."""
        from wsproto.connection import ConnectionState
        from wsproto.frame_protocol import CloseReason

        source = self._source
        code = int(event.code)
        reason = self._redact(event.reason or "")
        state = self._protocol.state
        if state is ConnectionState.OPEN:
            # wsproto could not parse what the upstream sent: close with its code.
            self._close_code, self._close_reason = code, "invalid frame"
            raise UpstreamProtocolError(
                f"{source.url} sent invalid WebSocket data ({_one_line(reason)}); the "
                f"connection is closed with code {code}",
                url=source.url,
            )
        if state is ConnectionState.REMOTE_CLOSING:
            await self._send(self._protocol.send(event.response()), until)
        if self._eof and code == CloseReason.ABNORMAL_CLOSURE:
            raise self._dropped()
        if code in NORMAL_CLOSE_CODES:
            return
        try:
            name = CloseReason(code).name
        except ValueError:
            name = "application code" if code >= 3000 else "unknown code"
        if code == 1008:
            hint = "the upstream refused the session: check the credentials and the send messages"
        elif code in {1002, 1003, 1007, 1009}:
            hint = "the upstream refused what this client sent: check the send messages"
        elif code in {1011, 1012, 1013, 1014}:
            hint = "the upstream failed or is restarting: retry later"
        elif code >= 3000:
            hint = "an application-defined code: see the upstream's documentation"
        else:
            hint = "see the reason"
        shown_reason = f": {_one_line(reason)!r}" if reason else ""
        raise UpstreamClosed(
            f"{source.url} closed the WebSocket with code {code} ({name}){shown_reason}; {hint}",
            code=code,
            reason=reason,
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
        error.__cause__ = self._drop
        return error

    # -- the network -----------------------------------------------------------------

    async def _next_event(self, until: float, phase_at: float, phase: str) -> Event | None:
        """The next protocol event, reading as needed; ``None`` at the end of input
        when wsproto has no event for it (during the handshake)."""
        from wsproto.utilities import RemoteProtocolError

        pending = self._pending
        while not pending:
            if self._eof:
                return None
            stream = self._stream
            assert stream is not None
            data = None
            with trio.move_on_at(until):
                try:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                except trio.BrokenResourceError as exc:
                    self._drop, data = exc, b""
            if data is None:
                raise self._expired(phase_at, phase)
            if data:
                self._received = True
            else:
                self._eof = True
            try:
                self._protocol.receive_data(bytes(data) if data else None)
            except RemoteProtocolError as exc:
                if self._eof and not self._received:
                    return None  # closed without a word: the caller says so
                raise UpstreamProtocolError(
                    f"{self._source.url} answered the WebSocket handshake with something "
                    f"invalid ({exc}); check that the URL is a WebSocket endpoint",
                    url=self._source.url,
                ) from exc
            pending.extend(self._protocol.events())
        return pending.popleft()

    async def _send(self, data: bytes, until: float) -> bool:
        """Send bytes before ``until``; ``False`` if time ran out.

        A broken connection is only recorded: what the upstream sent before it
        broke (a close frame, say) is more useful, and the next read reports it.
        """
        stream = self._stream
        assert stream is not None
        if self._drop is not None:
            return True
        with trio.move_on_at(until):
            try:
                await stream.send_all(data)
            except trio.BrokenResourceError as exc:
                self._drop = exc
            return True
        self._send_cut = True
        return False

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

    # -- closing ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """End the connection on every path: a close handshake, then the socket.

        Shielded, so it runs when the stream was cancelled, and bounded by
        ``close_timeout``, so it cannot hang the stream's close.
        """
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection
        from wsproto.utilities import ProtocolError

        stream = self._stream
        if stream is None:
            return
        self._stream = None
        protocol = self._protocol
        source = self._source
        usable = self._established and self._drop is None and not self._send_cut
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + source._close_timeout
            try:
                close: CloseConnection | None = None
                if protocol.state is ConnectionState.OPEN:
                    close = CloseConnection(code=self._close_code, reason=self._close_reason)
                elif protocol.state is ConnectionState.REMOTE_CLOSING:
                    # The upstream's close frame is parsed but was never read: answer it.
                    close = next(
                        (e.response() for e in self._pending if isinstance(e, CloseConnection)),
                        CloseConnection(code=1000),
                    )
                if close is not None and usable:
                    await stream.send_all(protocol.send(close))
                # Wait for the upstream's close frame, then for it to close TCP first
                # (RFC 6455 7.1.1), unless the connection is already gone.
                while usable and not self._eof:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                    if not data:
                        break
                    if protocol.state is ConnectionState.LOCAL_CLOSING:
                        protocol.receive_data(bytes(data))
                        for _ in protocol.events():
                            pass  # messages after our close frame are discarded
            except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
                pass  # the connection is going away anyway
            finally:
                await trio.aclose_forcefully(stream)
        if scope.cancelled_caught:
            get_logger().warning(
                "websocket.close_timeout", url=source.url, close_timeout=source._close_timeout
            )

    # -- helpers -----------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return redact(text, self._source._secrets)

    def _describe_drop(self) -> str:
        drop = self._drop
        if drop is None:
            return "end of input"
        cause = drop.__cause__ or drop
        return self._redact(f"{type(cause).__name__}: {cause}")


# -- argument checks -------------------------------------------------------------------


def _check_secrets(secrets: object) -> list[str]:
    if isinstance(secrets, str | bytes) or not isinstance(secrets, Iterable):
        raise TypeError(
            f"secrets must be a list of str (wrap a single one: secrets=[...]), "
            f"got {type(secrets).__name__}"
        )
    checked: list[str] = []
    for value in secrets:
        if not isinstance(value, str):
            raise TypeError(f"secrets must contain str values, got {type(value).__name__}")
        checked.append(value)
    return checked


def _check_headers(extra_headers: object) -> list[tuple[str, str]]:
    if isinstance(extra_headers, str | bytes) or not isinstance(extra_headers, Iterable):
        raise TypeError(
            f"extra_headers must be a mapping or (name, value) pairs, "
            f"got {type(extra_headers).__name__}"
        )
    pairs: list[object] = (
        list(extra_headers.items()) if isinstance(extra_headers, Mapping) else list(extra_headers)
    )
    checked: list[tuple[str, str]] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"extra_headers must contain (name, value) pairs, got {pair!r}")
        name, value = pair
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                f"extra_headers names and values must be str, got "
                f"{type(name).__name__} and {type(value).__name__}"
            )
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"extra_headers has an invalid header name: {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(
                f"extra_headers cannot set {name!r}: the WebSocket handshake sets it "
                f"(use subprotocols= for Sec-WebSocket-Protocol)"
            )
        if any(character in value for character in "\r\n\0"):
            raise ValueError(f"extra_headers value of {name!r} contains a line break or NUL")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"extra_headers value of {name!r} is not Latin-1 text") from None
        checked.append((name, value))
    return checked


def _header_secrets(headers: list[tuple[str, str]]) -> list[str]:
    """Values of the handshake headers worth scrubbing from error text: credentials
    (``Bearer <token>``) and the values of headers named like a secret."""
    found: list[str] = []
    for name, value in headers:
        scheme, _, credential = value.partition(" ")
        if credential and scheme.lower() in _CREDENTIAL_SCHEMES:
            found.append(credential.strip())
        lowered = name.lower()
        if len(value) >= _MIN_SECRET_LENGTH and any(w in lowered for w in _SECRET_HEADER_WORDS):
            found.append(value)
    return found


def _query_values(url: object) -> list[str]:
    """The URL's query values (``?token=...``): treated as secrets."""
    if not isinstance(url, str):
        return []
    query = urllib.parse.urlsplit(url).query
    found: list[str] = []
    for part in query.split("&"):
        _, _, value = part.partition("=")
        if len(value) >= _MIN_SECRET_LENGTH:
            found.append(value)
            decoded = urllib.parse.unquote_plus(value)
            if decoded != value:
                found.append(decoded)
    # Longest first, so a value that contains another is replaced whole.
    return sorted(found, key=len, reverse=True)


def _check_ssl_context(ssl_context: object, tls: bool) -> ssl.SSLContext | None:
    if ssl_context is None:
        return None
    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(
            f"ssl_context must be an ssl.SSLContext or None, got {type(ssl_context).__name__}"
        )
    if not tls:
        raise ValueError("ssl_context is only used with wss:// URLs; this URL is ws://")
    return ssl_context


def _check_max_message_size(max_message_size: object) -> int:
    if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
        raise TypeError(f"max_message_size must be an int, got {max_message_size!r}")
    if max_message_size < 1:
        raise ValueError(f"max_message_size must be a positive int, got {max_message_size}")
    return max_message_size


def _check_subprotocols(subprotocols: object) -> tuple[str, ...]:
    if isinstance(subprotocols, str | bytes) or not isinstance(subprotocols, Iterable):
        raise TypeError(
            f"subprotocols must be a list of str (wrap a single one: subprotocols=[...]), "
            f"got {type(subprotocols).__name__}"
        )
    checked: list[str] = []
    for name in subprotocols:
        if not isinstance(name, str):
            raise TypeError(f"subprotocols must contain str values, got {type(name).__name__}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"subprotocols must be HTTP tokens (like 'graphql-ws'), got {name!r}")
        checked.append(name)
    return tuple(checked)


def _check_messages(send: object) -> tuple[str | bytes, ...]:
    if isinstance(send, str | bytes | bytearray) or not isinstance(send, Iterable):
        raise TypeError(
            f"send must be a list of messages (wrap a single one: send=[message]), "
            f"got {type(send).__name__}"
        )
    checked: list[str | bytes] = []
    for message in send:
        if isinstance(message, bytearray | memoryview):
            checked.append(bytes(message))
        elif isinstance(message, str | bytes):
            checked.append(message)
        else:
            raise TypeError(
                f"send messages must be str (text) or bytes (binary), got {type(message).__name__}"
            )
    return tuple(checked)


def _retry_after(value: bytes) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), or ``None``."""
    try:
        seconds = float(value.decode("latin-1"))
    except ValueError:
        return None  # an HTTP date
    return seconds if 0 <= seconds < 86_400 else None


def _one_line(text: str) -> str:
    """``text`` on one line, cut to :data:`_MESSAGE_EXCERPT` characters."""
    line = " ".join(text.split())
    if len(line) > _MESSAGE_EXCERPT:
        line = line[: _MESSAGE_EXCERPT - 3] + "..."
    return line
