"""Serving an ASGI app with hypercorn's trio worker, and the one adaptation it needs.

What was measured, with hypercorn 0.18.0 (``tests/test_server_hypercorn.py`` pins it
and fails if it changes): the trio worker writes to a connection with
``await stream.send_all(data)`` inside a *shielded* cancel scope
(``hypercorn/trio/tcp_server.py``, ``TCPServer.protocol_send``). So an app's
``await send(...)`` to a client that stopped reading but keeps its socket open
cannot be cancelled: it returns only when the client goes. The app's task lives in
the connection's task group, so neither the connection nor a graceful shutdown can
end while it is parked there.

The adaptation, and all of it: every accepted connection's stream is wrapped in
:class:`_ClientStream`, whose ``send_all`` waits at most ``send_timeout``. A
deadline *inside* hypercorn's shield still applies (a shield keeps out only the
cancellations of the scopes around it). When it expires, the socket is closed and
``BrokenResourceError`` raised, which hypercorn handles as the client going away:
the app's pending ``send()`` returns, the app receives ``http.disconnect``, the
connection's tasks end. A response that knows sooner that its client has stalled
closes its connection at once with :func:`current_connection`'s
:meth:`Connection.abort`: closing a Trio stream wakes a task blocked in its
``send_all`` with ``ClosedResourceError``. The connection is found through a context
variable set in the connection's task, which the app's task inherits because
hypercorn spawns the app from the connection's task (pinned by a test too).

The wrapped stream is also the connection's reader (hypercorn's one reader task
calls its ``receive_some``), and for HTTP/1.1 it reads knowing, from h11's state,
what the connection is doing (:class:`_ClientStream`): a request arriving must be
whole within ``body_timeout`` (else a 408 and the connection closed; hypercorn
bounded only slow heads, at its keep-alive timer, never a body); an idle connection
is closed at ``keep_alive_timeout`` by the reader itself, so that a request in the
socket at that moment is read (hypercorn's separate timer, woken in the same batch
as the reader on a late loop, dropped it half the time); while an answer is in
flight the client's next bytes are held and reading goes on, also while h11 pauses
behind a pipelined request (:class:`_ResumeReading`), so a client that leaves is
seen at once. On HTTP/2, each request stream's arrival is bounded the same way.
:class:`_Server` is hypercorn's ``TCPServer`` with those hooks, and one fix: the
answers of an HTTP/2 connection that closed no longer wait for ever.

:func:`serve` is hypercorn's ``worker_serve`` for one plain-TCP host and port, with
the wrapped stream: the lifespan, graceful shutdown through ``shutdown_trigger``,
``task_status``; and TLS with ``certfile`` and ``keyfile`` (:func:`tls_context`):
each connection is a ``trio.SSLStream`` inside the same wrapper
(:class:`_TLSClientStream`, which has what hypercorn looks for in a TLS stream), and
ALPN picks HTTP/2 for the browsers that offer it (all of them), so the rules above
apply to TLS and to h2 alike.
This is the only module that knows hypercorn's internals; it is tested with the
versions in :data:`TESTED_HYPERCORN_VERSIONS`, which pyproject.toml pins.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import math
import os
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, cast

import h11
import trio
from h2.stream import StreamState
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr, repr_socket_addr

from .._logging import get_logger
from .._reads import BUFFER_SIZE, read_now
from .._validate import check_seconds

__all__ = [
    "DISCONNECT_NOTICE",
    "TESTED_HYPERCORN_VERSIONS",
    "Connection",
    "DisconnectNotice",
    "check_tls_pair",
    "current_connection",
    "disconnect_notice",
    "serve",
    "tls_context",
]

TESTED_HYPERCORN_VERSIONS = ("0.18.0",)
"""The hypercorn versions this adaptation was tested with (pyproject.toml pins them)."""

_CONNECTION: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "streammgr_server_connection", default=None
)


class Connection:
    """The client connection a request came on, when :func:`serve` serves it.

    Lets a response close its connection from another task, also while hypercorn's
    task is parked in a shielded write to a client that stopped reading.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: _ClientStream) -> None:
        self._stream = stream

    @property
    def closed(self) -> bool:
        """Whether the connection has been closed (by :meth:`abort`, a write's
        timeout or hypercorn)."""
        return self._stream.closed

    async def abort(self) -> None:
        """Close the connection now; a write blocked on it raises at once.

        hypercorn then handles the connection as gone: the app receives
        ``http.disconnect`` and every ``send()`` returns.
        """
        await self._stream.aclose()


def current_connection() -> Connection | None:
    """The connection of the request being handled in this task, or ``None``.

    ``None`` when the app is not served by :func:`serve` (another server, or
    hypercorn's own ``serve``).
    """
    return _CONNECTION.get()


DISCONNECT_NOTICE = "streammgr.disconnect_notice"
"""The key, in an ASGI scope's ``extensions``, of the request's :class:`DisconnectNotice`
(offered by :func:`serve`; absent under any other server)."""


class DisconnectNotice(Protocol):
    """What :func:`serve` offers a request's app instead of a task parked in ``receive()``.

    A streaming response that reads no more of its request needed a task receiving
    until ``http.disconnect`` (~2.2 KiB and its frames, per held stream). Here the
    server calls back instead, in its reader's task, the moment the client's end is
    seen.
    """

    def notify(self, callback: Callable[[], object]) -> bool:
        """From now on the app receives no more: messages still queued are dropped,
        those to come too, and ``callback()`` is called at ``http.disconnect`` (once; it
        must not raise nor wait). Returns ``True`` (and calls nothing) if the
        disconnect had already come."""

    def stop_notifying(self) -> None:
        """No more calls back; messages queue for ``receive()`` again."""


class _AppQueue:
    """A request's ASGI messages on their way from hypercorn to the app, and its
    :class:`DisconnectNotice`.

    hypercorn's trio worker gives each request a ``trio`` memory channel of
    ``max_app_queue_size`` (its state, two channel objects, a deque: ~1.7 KiB kept for
    a held stream's whole life); this is a list and two events made only while one
    side waits, with the same bound (the reader waits while the app has not taken
    ``limit`` messages) and the same checkpoint in ``receive()``.
    """

    __slots__ = ("_limit", "_messages", "_notice", "_readable", "_writable")

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._messages: list[Any] = []
        self._readable: trio.Event | None = None
        self._writable: trio.Event | None = None
        self._notice: Callable[[], object] | None = None

    async def put(self, message: Any) -> None:
        """hypercorn's ``app_put``: queue one message for the app."""
        notice = self._notice
        if notice is not None:
            if message.get("type") == "http.disconnect":
                self._notice = _called_back  # once; what comes next is dropped too
                notice()
            return
        while len(self._messages) >= self._limit:
            self._writable = writable = trio.Event()
            await writable.wait()
            if self._notice is not None:
                await self.put(message)
                return
        self._messages.append(message)
        readable = self._readable
        if readable is not None:
            self._readable = None
            readable.set()

    async def receive(self) -> Any:
        """The app's ``receive()``: the next message, once there is one."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._messages:
            self._readable = readable = trio.Event()
            await readable.wait()
        message = self._messages.pop(0)
        self._wake_writer()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    def _wake_writer(self) -> None:
        writable = self._writable
        if writable is not None:
            self._writable = None
            writable.set()

    def notify(self, callback: Callable[[], object]) -> bool:
        """See :meth:`DisconnectNotice.notify`."""
        messages, self._messages = self._messages, []
        self._wake_writer()
        if any(message.get("type") == "http.disconnect" for message in messages):
            return True
        self._notice = callback
        return False

    def stop_notifying(self) -> None:
        """See :meth:`DisconnectNotice.stop_notifying`."""
        self._notice = None


def _called_back() -> None:
    """The notice of an :class:`_AppQueue` that has called back already."""


class _TaskGroup(TaskGroup):
    """hypercorn's per-connection task group, spawning each request's app with an
    :class:`_AppQueue` instead of a memory channel, and offering the request its
    :class:`DisconnectNotice` (``scope["extensions"][DISCONNECT_NOTICE]``)."""

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        queue = _AppQueue(config.max_app_queue_size)
        if scope.get("type") == "http":
            scope.setdefault("extensions", {})[DISCONNECT_NOTICE] = queue
        assert self._nursery is not None
        self._nursery.start_soon(
            _handle,
            app,
            config,
            scope,
            queue.receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return queue.put


def disconnect_notice(scope: Mapping[str, Any]) -> DisconnectNotice | None:
    """The request's :class:`DisconnectNotice`, where :func:`serve` serves it (else ``None``)."""
    extensions = scope.get("extensions")
    if not extensions:
        return None
    notice: DisconnectNotice | None = extensions.get(DISCONNECT_NOTICE)
    return notice


# What an HTTP/1.1 connection is doing, as its reader sees it (_ClientStream._phase).
_FIRST = "first"  # no byte yet of the connection's first request
_IDLE = "idle"  # between two requests (keep-alive)
_READING = "reading"  # a request's head or body is arriving
_ANSWERING = "answering"  # the request is whole and its answer in flight
_H2 = "h2"  # HTTP/2 (over TLS, or h2c): each request stream's body bounded, the rest hypercorn's
_OTHER = "other"  # a WebSocket, an error: hypercorn's own rules

# HTTP/2 stream states in which the client has not ended its request yet.
_H2_CLIENT_SENDING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})

# Bytes of pipelined requests held while an answer is in flight (see receive_some).
_HOLD_LIMIT = 65536


def _request_timeout_answer(body_timeout: float) -> bytes:
    """The 408 written when a request has not arrived whole within ``body_timeout``."""
    body = json.dumps(
        {
            "error": {
                "message": (
                    f"the request did not arrive whole within {body_timeout:g}s "
                    f"(the server's body_timeout, --body-timeout); send the request "
                    f"without pausing, or raise --body-timeout"
                ),
                "type": "invalid_request_error",
                "code": "request_timeout",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _ClientStream(trio.abc.HalfCloseableStream):
    """A client's socket stream as hypercorn's ``TCPServer`` sees it: bounded writes,
    and a reader that bounds how long a request takes to arrive.

    Writes wait at most ``send_timeout`` for the client. Reads (hypercorn's one
    reader task calls :meth:`receive_some`) know what an HTTP/1.1 connection is
    doing (:meth:`_phase`) and wait accordingly:

    - a request arriving (its head or body): until ``body_timeout`` after its first
      byte (after the accept for a connection's first request); then a 408 if no
      answer has started, and the connection closed;
    - idle between requests: until ``keep_alive_timeout`` after the last answer,
      then closed. The reader decides this, not a separate timer: a request whose
      bytes are in the socket when the deadline passes is read, never dropped;
    - an answer in flight: the client's next bytes (pipelined requests) are held
      here, up to ``_HOLD_LIMIT``, instead of handed to h11, which would stop the
      reading until the answer ends; so the client's leaving is seen at once;
    - HTTP/2 (over TLS, or h2c): each request stream must end within ``body_timeout`` of when the
      reader first saw it, else the connection is closed.

    hypercorn's ``TCPServer`` uses ``send_all`` (inside its shield), ``receive_some``,
    ``send_eof``, ``aclose`` and the ``socket`` attribute; it tells a TLS stream
    from a plain one by ``do_handshake``, which this class does not have (its TLS
    twin, :class:`_TLSClientStream`, has).
    """

    # One per connection, held as long as its stream (#15, memory per held stream).
    __slots__ = (
        "_apps_ended",
        "_body_timeout",
        "_h2_started",
        "_held",
        "_idle_since",
        "_keep_alive_timeout",
        "_plain",
        "_request_started",
        "_send_timeout",
        "_stream",
        "_timeout_answer",
        "_wake",
        "apps_running",
        "closed",
        "send_expired",
        "send_started",
        "send_watch",
        "server",
        "socket",
    )

    def __init__(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        *,
        send_timeout: float | None,
        body_timeout: float | None,
        keep_alive_timeout: float,
        timeout_answer: bytes,
    ) -> None:
        self._stream = stream
        self._send_timeout = math.inf if send_timeout is None else send_timeout
        self._body_timeout = math.inf if body_timeout is None else body_timeout
        self._keep_alive_timeout = keep_alive_timeout
        self._timeout_answer = timeout_answer
        transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        self.socket = transport.socket
        self._plain = stream is transport  # TCP without TLS: readable is the socket's
        self.closed = False
        self.server: _Server | None = None
        now = trio.current_time()
        self._request_started = now  # the first request's clock starts at the accept
        self._idle_since = now
        self._held = bytearray()
        self._h2_started: dict[int, float] = {}  # HTTP/2 request streams arriving
        self._wake: trio.CancelScope | None = None
        self.apps_running = 0  # the app's calls on this connection, in flight
        self.send_started: float | None = None  # when the write in flight began
        self.send_expired = False
        self.send_watch: _SendWatch | None = None
        self._apps_ended: trio.Event | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # No cancel scope per write (it cost more than the rest of a small write):
        # the write is stamped, and serve()'s one send watch closes the stream of a
        # write that has waited send_timeout (see _SendWatch).
        now = self.send_started = trio.current_time()
        watch = self.send_watch
        if watch is not None and not watch.armed:
            watch.arm(now)
        try:
            await self._stream.send_all(data)
        except trio.ClosedResourceError:
            if self.send_expired:
                # Part of the data may be out: the connection cannot be used any more.
                raise trio.BrokenResourceError(
                    f"the client read nothing for {self._send_timeout:g}s (send_timeout)"
                ) from None
            raise
        finally:
            self.send_started = None

    def send_now(self, data: bytes) -> int:
        """Send what the socket takes at once, without waiting; the bytes sent.

        ``0`` when the socket takes nothing now (its buffer is full), over TLS, once
        the stream is closed, or on any error: the caller then sends the rest with
        :meth:`send_all`, which waits, or raises the error as trio reports it. A write
        that never waits needs no watch and cannot be cancelled half-way.
        """
        if not self._plain or self.closed or self.send_expired:
            return 0
        descriptor = self.socket.fileno()
        if descriptor < 0:
            return 0
        try:
            return os.write(descriptor, data)  # the socket is non-blocking (trio's)
        except OSError:
            return 0

    async def expire_send(self) -> None:
        """The write in flight has waited ``send_timeout``: close the connection
        (which wakes that write)."""
        self.send_expired = True
        await self.aclose()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    def went_idle(self) -> None:
        """An answer ended and the connection waits for the next request."""
        # A request h11 already holds (pipelined) starts its clock now; one still to
        # come restarts it at its first byte.
        self._idle_since = self._request_started = trio.current_time()
        self.wake()  # the reader waits anew, with the keep-alive deadline

    def wake(self) -> None:
        """Make the reader look again at what the connection is doing."""
        if self._wake is not None:
            self._wake.cancel()

    def app_ended(self) -> None:
        """One of the app's calls on this connection returned."""
        self.apps_running -= 1
        if self.apps_running == 0 and self._apps_ended is not None:
            self._apps_ended.set()

    async def read_while_paused(self, resumed: _ResumeReading) -> None:
        """Read while hypercorn's h11 holds a pipelined request behind an answer.

        h11 stops at a second request until the first one's answer ends, and
        hypercorn's reader waits for that without reading: a client that leaves
        meanwhile was seen only at the answer's next write. Here the reader keeps
        reading (what comes is held for later); at the client's end the app is told
        (``http.disconnect``), and once it has returned the read loop ends (its
        cancel scope is ours: an exception would cross hypercorn's task group as a
        group) and the connection closes.
        """
        while not resumed.is_set():
            with trio.CancelScope() as wake:
                self._wake = wake
                try:
                    if len(self._held) >= _HOLD_LIMIT:
                        await trio.sleep_forever()  # until the answer ends
                    data = await self._stream.receive_some()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                finally:
                    self._wake = None
            if wake.cancelled_caught:
                continue
            if data:
                self._held += data
                continue
            assert self.server is not None
            await self.server.protocol.handle(Closed())  # the app: http.disconnect
            while self.apps_running:
                self._apps_ended = trio.Event()
                await self._apps_ended.wait()
            # Then the reader ends, as at the end of a connection without one.
            self.server.reader.cancel()
            await trio.sleep_forever()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while True:
            phase = self._phase()
            if self._held and phase is not _ANSWERING:
                if phase is _IDLE:
                    self._request_started = trio.current_time()
                data = bytes(self._held)
                self._held.clear()
                return data
            deadline = self._deadline(phase)
            if trio.current_time() >= deadline:
                if not _bytes_waiting(self.socket):
                    await self._expire(phase)
                deadline = math.inf  # what came in time is read: at once, no wait
            with trio.CancelScope(deadline=deadline) as wake:
                self._wake = wake
                try:
                    if phase is _ANSWERING and len(self._held) >= _HOLD_LIMIT:
                        await trio.sleep_forever()  # until the answer ends
                    if self._plain and self.socket.fileno() != -1:
                        # Parked here, not in receive_some: its chain (the stream's,
                        # the socket's recv, the non-blocking helper, two context
                        # managers) would live as long as the connection waits, a
                        # held stream's whole life (~1.5 KiB, 8 tracked objects).
                        # Then read at the bytes' own size, not 64 KiB shrunk (a
                        # hole in the heap per read: streammgr/_reads.py).
                        await trio.lowlevel.wait_readable(self.socket)
                        read = read_now(self.socket, max_bytes or BUFFER_SIZE)
                        while read is None:  # woken, yet nothing to read
                            await trio.lowlevel.wait_readable(self.socket)
                            read = read_now(self.socket, max_bytes or BUFFER_SIZE)
                        data = read
                    else:
                        data = bytes(await self._stream.receive_some(max_bytes))
                finally:
                    self._wake = None
            if wake.cancelled_caught:
                continue  # a deadline passed or the phase changed: look again
            if not data:
                return data  # the client's end: anything held goes with it
            if phase is _ANSWERING:
                self._held += data
                continue
            if phase is _IDLE:
                self._request_started = trio.current_time()
            return data

    def _phase(self) -> str:
        """What the connection is doing, read from hypercorn's h11 state."""
        protocol = getattr(getattr(self.server, "protocol", None), "protocol", None)
        if isinstance(protocol, H2Protocol):
            return _H2
        if not isinstance(protocol, H11Protocol):
            return _OTHER
        connection = protocol.connection
        if not isinstance(connection, h11.Connection):
            return _OTHER  # a WebSocket, after its handshake
        state = connection.their_state
        if state is h11.IDLE:
            if connection.trailing_data[0]:
                return _READING  # part of a request's head
            return _FIRST if protocol.keep_alive_requests == 0 else _IDLE
        if state is h11.SEND_BODY:
            return _READING
        if protocol.stream is not None and state in (h11.DONE, h11.MUST_CLOSE):
            return _ANSWERING
        return _OTHER

    def _deadline(self, phase: str) -> float:
        if phase is _READING:
            return self._request_started + self._body_timeout
        if phase is _FIRST:
            timeout = self._body_timeout
            return self._request_started + (
                self._keep_alive_timeout if math.isinf(timeout) else timeout
            )
        if phase is _IDLE:
            return self._idle_since + self._keep_alive_timeout
        if phase is _H2:
            return self._h2_deadline()
        return math.inf

    def _h2_deadline(self) -> float:
        """The earliest ``body_timeout`` deadline of the HTTP/2 requests arriving.

        A request stream counts from when the reader first saw it (one read after its
        headers, at most) until the client ends its side; WebSocket streams do not
        count (they stay open for the socket's life).
        """
        protocol = getattr(getattr(self.server, "protocol", None), "protocol", None)
        if not isinstance(protocol, H2Protocol) or math.isinf(self._body_timeout):
            return math.inf
        now = trio.current_time()
        arriving: dict[int, float] = {}
        for stream_id, stream in protocol.connection.streams.items():
            if stream.state_machine.state in _H2_CLIENT_SENDING and isinstance(
                protocol.streams.get(stream_id), HTTPStream
            ):
                arriving[stream_id] = self._h2_started.get(stream_id, now)
        self._h2_started = arriving
        return min(arriving.values(), default=math.inf) + self._body_timeout

    async def _expire(self, phase: str) -> NoReturn:
        """Close the connection at its deadline (with a 408 for a partial request)."""
        if phase is _H2:
            get_logger().info(
                "http.request_timeout",
                client=_peer(self.socket),
                body_timeout=self._body_timeout,
                http_version="2",
            )
        if phase is _READING:
            protocol = getattr(getattr(self.server, "protocol", None), "protocol", None)
            connection = getattr(protocol, "connection", None)
            if getattr(connection, "our_state", None) in (h11.IDLE, h11.SEND_RESPONSE):
                with trio.move_on_after(1.0):
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._stream.send_all(self._timeout_answer)
            get_logger().info(
                "http.request_timeout",
                client=_peer(self.socket),
                body_timeout=self._body_timeout,
            )
        await self.aclose()
        raise trio.BrokenResourceError(f"{phase} connection closed at its deadline")

    async def aclose(self) -> None:
        self.closed = True
        await self._stream.aclose()


class _TLSClientStream(_ClientStream):
    """:class:`_ClientStream` over TLS: what hypercorn's ``TCPServer`` looks for in a
    TLS stream (``do_handshake``, ``selected_alpn_protocol``, ``transport_stream``).

    The ``trio.SSLStream`` inside is ``https_compatible``: closing it closes the
    socket at once, without waiting to send TLS's ``close_notify`` (which could wait
    on a client that reads nothing), so :meth:`Connection.abort` and the write bound
    work as over plain TCP. There is no half-close in TLS: ``send_eof`` does nothing
    and hypercorn closes the connection next.
    """

    __slots__ = ("_tls",)

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], **options: Any) -> None:
        super().__init__(stream, **options)
        self._tls = stream

    @property
    def transport_stream(self) -> trio.SocketStream:
        """The TCP stream under TLS (hypercorn reads its ``socket``)."""
        return self._tls.transport_stream

    async def do_handshake(self) -> None:
        """TLS's handshake (hypercorn bounds it with ``ssl_handshake_timeout``)."""
        await self._tls.do_handshake()

    def selected_alpn_protocol(self) -> str | None:
        """What ALPN chose: ``"h2"`` or ``"http/1.1"`` (``None``: the client offered none)."""
        protocol: str | None = self._tls.selected_alpn_protocol()
        return protocol

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()


def tls_context(
    certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str]
) -> ssl.SSLContext:
    """The server's TLS context: the certificate chain and its key, HTTP/2 offered.

    hypercorn's own settings (TLS 1.2 or later, no compression, its ciphers), with ALPN
    offering ``h2`` then ``http/1.1``: browsers then speak HTTP/2, many streams on one
    connection (over HTTP/1.1 a browser opens at most 6 connections to a host, and a
    7th stream waits, silently).

    Args:
        certfile: a PEM file holding the certificate, then any intermediates.
        keyfile: a PEM file holding its private key (not encrypted).

    Raises:
        ValueError: a file cannot be read, or does not hold a PEM certificate and the
            key that goes with it; the message names the argument.
    """
    for name, path in (("certfile", certfile), ("keyfile", keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(
                f"{name} {os.fsdecode(path)!r} cannot be read: {exc.strerror or exc}; "
                f"give the path of a PEM file this process may read"
            ) from None
    config = Config()
    config.certfile = os.fspath(certfile)
    config.keyfile = os.fspath(keyfile)
    config.alpn_protocols = ["h2", "http/1.1"]
    try:
        context = config.create_ssl_context()
    except ssl.SSLError as exc:
        raise ValueError(
            f"certfile {os.fsdecode(certfile)!r} and keyfile {os.fsdecode(keyfile)!r} do not "
            f"hold a PEM certificate and its unencrypted private key ({exc.reason or exc}); "
            f"check that certfile is the certificate (chain) and keyfile its key"
        ) from None
    assert context is not None  # certfile and keyfile are set
    return context


def check_tls_pair(
    certfile: str | os.PathLike[str] | None, keyfile: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    """The TLS context of ``certfile`` and ``keyfile`` (``None``: neither given).

    Raises:
        ValueError: one without the other, or :func:`tls_context`'s errors.
    """
    if (certfile is None) != (keyfile is None):
        given, missing = ("certfile", "keyfile") if keyfile is None else ("keyfile", "certfile")
        raise ValueError(
            f"{given} was given without {missing}: TLS needs both (the certificate and "
            f"its private key), or neither to serve plain HTTP"
        )
    if certfile is None or keyfile is None:
        return None
    return tls_context(certfile, keyfile)


class _SendWatch:
    """One task bounds every connection's writes by ``send_timeout``.

    A cancel scope per write cost more than the rest of a small write (about 19 us),
    so writes only stamp when they began. The first write while the watch is idle
    arms it for that write's deadline; it then wakes at the earliest deadline of
    the writes still in flight, closes the connections of those that waited
    ``send_timeout`` (which wakes their writes), and sleeps until the next deadline,
    or until a write arms it again. Under steady traffic it wakes once per
    ``send_timeout``; idle, never.
    """

    def __init__(self, send_timeout: float, streams: set[_ClientStream]) -> None:
        self._timeout = send_timeout
        self._streams = streams
        self.armed = False
        self._deadline = math.inf
        self._sleep: trio.CancelScope | None = None

    def arm(self, now: float) -> None:
        """A write began at ``now`` while nothing was watched."""
        self.armed = True
        self._deadline = now + self._timeout
        if self._sleep is not None:
            self._sleep.deadline = self._deadline

    async def run(self) -> None:
        """Watch until cancelled."""
        timeout = self._timeout
        while True:
            with trio.CancelScope(deadline=self._deadline) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            expired = []
            earliest = math.inf
            for stream in self._streams:
                started = stream.send_started
                if started is None:
                    continue
                if now - started >= timeout:
                    expired.append(stream)
                elif started + timeout < earliest:
                    earliest = started + timeout
            self._deadline = earliest
            self.armed = earliest != math.inf
            for stream in expired:
                with trio.CancelScope(shield=True):
                    await stream.expire_send()


class _ResumeReading:
    """hypercorn's H11Protocol ``can_read`` event, which reads while it waits.

    The same four methods as hypercorn's ``EventWrapper``; ``wait`` is
    :meth:`_ClientStream.read_while_paused`, and ``set`` wakes it.
    """

    __slots__ = ("_event", "_stream")

    def __init__(self, stream: _ClientStream) -> None:
        self._stream = stream
        self._event = trio.Event()

    async def clear(self) -> None:
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._stream.read_while_paused(self)

    async def set(self) -> None:
        self._event.set()
        self._stream.wake()

    def is_set(self) -> bool:
        return self._event.is_set()


def _bytes_waiting(sock: trio.socket.SocketType) -> bool:
    """Whether the client's bytes (or its end) wait in the socket, unread.

    A deadline can pass while the reader was elsewhere (hypercorn handing a body to a
    slow app, a late loop): what arrived by then is read, not dropped. ``poll``, not
    ``select`` (descriptors above 1023); where there is none, assume so.
    """
    poll = getattr(select, "poll", None)
    if poll is None:  # pragma: no cover - Windows
        return True
    poller = poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _peer(sock: trio.socket.SocketType) -> str:
    """The client's address, for a log line."""
    try:
        address = sock.getpeername()
    except OSError:
        return "unknown"
    return repr_socket_addr(sock.family, address)


class _Server(TCPServer):
    """hypercorn's connection, with keep-alive decided by the reader.

    hypercorn closes an idle connection from a separate task at
    ``keep_alive_timeout``. When the loop is late (a loaded CPU), that task and the
    reader woken by the next request's bytes run in the same batch, in an order trio
    randomises: half the time the request was dropped unread ("Server disconnected
    without sending a response"). For HTTP/1.1 :class:`_ClientStream` decides
    instead; here the idle task only closes at shutdown, or at once once the client
    has closed its end (hypercorn waited ``keep_alive_timeout`` with the descriptor
    open). HTTP/2 keeps hypercorn's rule.
    """

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: ConnectionState,
        stream: _ClientStream,
    ) -> None:
        super().__init__(app, config, context, state, cast(Any, stream))
        self.client_stream = stream
        self._reading = True
        self._idle = True
        self.reader = trio.CancelScope()  # around hypercorn's read loop

    async def run(self) -> None:
        """hypercorn's ``TCPServer.run`` (0.18.0), with :class:`_TaskGroup` in place of
        its task group."""
        try:
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return  # Handshake failed
            alpn_protocol = self.stream.selected_alpn_protocol()
            socket = self.stream.transport_stream.socket
            ssl = True
        except AttributeError:  # Not SSL
            alpn_protocol = "http/1.1"
            socket = self.stream.socket
            ssl = False

        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())

            async with _TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                    alpn_protocol,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    def release(self) -> None:
        """Let go of the connection's protocol once the connection has ended.

        hypercorn's connection is a reference cycle (its protocol holds this
        server's ``protocol_send``, and through it h11's state, the task group, the
        buffers): left alone, a gen-0 collection would free it if it were young,
        but a connection lives long enough to be promoted, so only a full
        collection, which stalls every stream, would (tests/test_gc.py).
        """
        self.__dict__.pop("protocol", None)
        self.__dict__.pop("_task_group", None)

    async def protocol_send(self, event: Event) -> None:
        if type(event) is RawData and not self.send_lock.locked():
            # Most writes go out at once: then hypercorn's lock, its shielded cancel
            # scope and trio's send checkpoints (py-spy, the gateway at 100 unpaced
            # streams: 15% of its CPU, as much as the send itself) are not needed,
            # and the client gets each write sooner (half the client's reads per
            # event on a loaded machine: its events come together). No other write
            # is in flight (the lock is free) and this one does not wait, so the
            # order of the bytes is kept; the rest, if any, goes hypercorn's way.
            # A departure from Trio's convention: such a write is no checkpoint (the
            # response's next upstream read is one), as it was no cancellation point
            # before either (hypercorn shields it).
            data = event.data
            sent = self.client_stream.send_now(data)
            if sent == len(data):
                return
            if sent:
                event = RawData(data=data[sent:])
        elif isinstance(event, Updated):
            self._idle = event.idle
            if event.idle:
                self.client_stream.went_idle()
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        protocol = self.protocol.protocol
        if isinstance(protocol, H11Protocol):
            protocol.can_read = _ResumeReading(self.client_stream)
        with self.reader:
            await self._read_loop()
        self._reading = False
        protocol = self.protocol.protocol
        if isinstance(protocol, H2Protocol):
            # hypercorn 0.18's HTTP/2: an app that ends its answer after the connection
            # closed waits for ever for the sending task, which has stopped
            # (StreamBuffer.drain): its task stayed until shutdown. Release them.
            for buffer in list(protocol.stream_buffers.values()):
                await buffer.close()
        if self._idle:  # nothing more can come: end the connection now
            await self.idle_task.stop()

    async def _read_loop(self) -> None:
        """hypercorn's read loop (``TCPServer._read_data``), without its per-read
        ``fail_after(read_timeout or inf)`` when ``read_timeout`` is not set.

        That scope lived as long as the read, so for a held stream as long as the
        stream: a cancel scope, its status (two sets) and a context manager's
        generator, about 1.2 KiB and 8 gc-tracked objects per connection, for a
        deadline of infinity (the reader's own deadlines are :class:`_ClientStream`'s).
        """
        read_timeout = self.config.read_timeout
        if read_timeout:
            await super()._read_data()
            return
        stream = self.client_stream
        while True:
            try:
                data = await stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    async def _idle_timeout(self) -> None:
        if not self._reading:
            pass  # the client's end is closed: nothing more can come
        elif isinstance(self.protocol.protocol, H11Protocol):
            await self.context.terminated.wait()  # keep-alive: see _ClientStream
        else:
            with trio.move_on_after(self.config.keep_alive_timeout):
                await self.context.terminated.wait()
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


async def serve(
    app: Callable[..., Awaitable[None]],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    send_timeout: float | None = 60.0,
    body_timeout: float | None = 15.0,
    keep_alive_timeout: float = 75.0,
    config: Config | None = None,
    sockets: Sequence[socket.socket] = (),
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app over HTTP (or HTTPS) with hypercorn's trio worker until shut down.

    As ``hypercorn.trio.serve`` (the app's lifespan runs first and last; shutdown is
    graceful: no new connections, in-flight requests get ``config.graceful_timeout``
    seconds), with these differences (see the module's docstring for why): a write
    to a client that reads nothing waits at most ``send_timeout`` seconds, then the
    connection is closed; a request must arrive whole within ``body_timeout``
    seconds (else 408 and closed); an idle connection is closed at
    ``keep_alive_timeout`` only if no request has begun to arrive; a client that
    leaves behind a pipelined request is seen at once.

    Args:
        app: the ASGI application.
        host: the address to listen on (``"127.0.0.1"``: this machine only).
        port: the TCP port; ``0`` picks a free one (``task_status`` reports it).
        shutdown_trigger: an async callable; when it returns, the server shuts down
            gracefully. ``None``: serve until cancelled.
        send_timeout: the most seconds one write may wait for the client to read
            (``None``: forever, as hypercorn alone does). As nginx's ``send_timeout``.
        body_timeout: the most seconds an HTTP/1.1 request may take to arrive whole,
            head and body, from its first byte (a connection's first request: from
            the accept, TLS's handshake included); then a 408 if no answer has
            started, and the connection is closed (``None``: no bound). Every route,
            the WebSocket handshake included.
        keep_alive_timeout: seconds an idle connection waits for its next request
            (``config.keep_alive_timeout`` is not used). Longer than the clients'
            pools (httpx: 5 s), so that the client, not the server, closes it.
        config: hypercorn's configuration for everything else (timeouts, limits,
            logging, ``ssl_handshake_timeout``); its ``bind`` and TLS settings are
            not used.
        sockets: listening sockets to accept on instead of opening ``host`` and
            ``port`` (``streammgr serve --workers``: the parent binds them once,
            each worker accepts on the same ones). Closed when serving ends.
        certfile: serve HTTPS with this PEM certificate (chain), with ``keyfile``;
            HTTP/2 is offered by ALPN (see :func:`tls_context`). Both or neither.
        keyfile: the certificate's PEM private key.
        task_status: ``nursery.start(serve, app, ...)`` returns the list of URLs
            listened on, e.g. ``["http://127.0.0.1:8000"]`` (``https://`` with TLS),
            once accepting.

    Raises:
        OSError: the address cannot be listened on.
        ValueError: a bad ``send_timeout`` or ``body_timeout``; ``certfile``
            without ``keyfile`` or the reverse; a certificate or key that cannot be
            read or loaded (the message names the argument).
    """
    send_timeout = check_seconds("send_timeout", send_timeout)
    body_timeout = check_seconds("body_timeout", body_timeout)
    tls = check_tls_pair(certfile, keyfile)
    config = copy.copy(config) if config is not None else Config()
    config.keep_alive_timeout = keep_alive_timeout
    if tls is not None and body_timeout is not None:
        # A connection's first request is due body_timeout after the accept: its TLS
        # handshake too (hypercorn's own bound is 60 s).
        config.ssl_handshake_timeout = min(config.ssl_handshake_timeout, body_timeout)

    async def counted(
        scope: Any, receive: Any, send: Any, sync_spawn: Any = None, call_soon: Any = None
    ) -> None:
        # Counts the app's calls per connection (read_while_paused waits for them).
        # hypercorn's app wrapper itself (its ASGIWrapper: the app called with the
        # first three of these): one coroutine less in each request's task.
        connection = _CONNECTION.get()
        if connection is None:  # the lifespan
            await app(scope, receive, send)
            return
        connection._stream.apps_running += 1
        try:
            await app(scope, receive, send)
        finally:
            connection._stream.app_ended()

    wrapped = cast(AppWrapper, counted)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)

    open_streams: set[_ClientStream] = set()
    timeout_answer = _request_timeout_answer(body_timeout if body_timeout is not None else 0)

    async def handle_connection(stream: trio.SocketStream) -> None:
        options: dict[str, Any] = {
            "send_timeout": send_timeout,
            "body_timeout": body_timeout,
            "keep_alive_timeout": keep_alive_timeout,
            "timeout_answer": timeout_answer,
        }
        bounded: _ClientStream
        if tls is None:
            bounded = _ClientStream(stream, **options)
        else:
            # https_compatible: a close never waits to send close_notify (see
            # _TLSClientStream).
            secure = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
            bounded = _TLSClientStream(secure, **options)
        _CONNECTION.set(Connection(bounded))  # this task's own context
        server = _Server(wrapped, config, context, ConnectionState(lifespan_state.copy()), bounded)
        bounded.server = server
        bounded.send_watch = send_watch
        open_streams.add(bounded)
        try:
            await server.run()
        finally:
            open_streams.discard(bounded)
            bounded.server = None  # no cycle left for the garbage collector
            server.release()

    reaper = trio.CancelScope()

    send_watch = None if send_timeout is None else _SendWatch(send_timeout, open_streams)

    async def close_the_rest(deadline: float) -> None:
        # At the graceful deadline, cancelling the connections' tasks is not enough:
        # one parked in hypercorn's shielded send_all wakes only when its stream is
        # closed (ClosedResourceError). Close every stream still open.
        with reaper:
            await trio.sleep_until(deadline)
            for bounded in list(open_streams):
                with trio.CancelScope(shield=True):
                    await bounded.aclose()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        if send_watch is not None:
            lifespan_nursery.start_soon(send_watch.run, name="streammgr-send-watch")
        async with trio.open_nursery() as server_nursery:
            if sockets:
                listeners = [_listener(inherited) for inherited in sockets]
            else:
                listeners = await trio.open_tcp_listeners(port, host=host, backlog=config.backlog)
            urls = []
            scheme = "http" if tls is None else "https"
            for listener in listeners:
                address = listener.socket.getsockname()
                urls.append(f"{scheme}://{repr_socket_addr(listener.socket.family, address)}")
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        _serve_listeners, handle_connection, listeners, server_nursery
                    )
                    task_status.started(urls)
                    if shutdown_trigger is None:
                        await trio.sleep_forever()
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
                # Graceful: keep-alive connections close, in-flight requests get
                # graceful_timeout seconds, then the rest are cancelled. (set() is
                # async but does not checkpoint.)
                await context.terminated.set()
                deadline = trio.current_time() + config.graceful_timeout
                server_nursery.cancel_scope.deadline = deadline
                lifespan_nursery.start_soon(close_the_rest, deadline)
        reaper.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _listener(inherited: socket.socket) -> trio.SocketListener:
    """A Trio listener on a socket already bound and listening (inherited from a
    parent process)."""
    if inherited.type != socket.SOCK_STREAM:
        raise ValueError(f"sockets must be listening TCP sockets, got {inherited!r}")
    return trio.SocketListener(trio.socket.from_stdlib_socket(inherited))


async def _serve_listeners(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    listeners: list[trio.SocketListener],
    handler_nursery: trio.Nursery,
) -> None:
    """``trio.serve_listeners``, typed for plain TCP listeners."""
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)
