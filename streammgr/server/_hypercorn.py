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
:class:`_BoundedWriteStream`, whose ``send_all`` waits at most ``send_timeout``. A
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

:func:`serve` is hypercorn's ``worker_serve`` for one plain-TCP host and port, with
the wrapped stream: the lifespan, graceful shutdown through ``shutdown_trigger``,
``task_status``. TLS is not offered (terminate it in front, at the load balancer).
This is the only module that knows hypercorn's internals; it is tested with the
versions in :data:`TESTED_HYPERCORN_VERSIONS`, which pyproject.toml pins.
"""

from __future__ import annotations

import contextvars
import copy
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

from .._validate import check_seconds

__all__ = [
    "TESTED_HYPERCORN_VERSIONS",
    "Connection",
    "current_connection",
    "serve",
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

    def __init__(self, stream: _BoundedWriteStream) -> None:
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


class _BoundedWriteStream(trio.abc.HalfCloseableStream):
    """A socket stream whose writes wait at most ``send_timeout`` for the client.

    hypercorn's ``TCPServer`` uses ``send_all`` (inside its shield), ``receive_some``,
    ``send_eof``, ``aclose`` and the ``socket`` attribute; it tells a TLS stream
    from a plain one by ``do_handshake``, which this class does not have.
    """

    def __init__(self, stream: trio.SocketStream, send_timeout: float | None) -> None:
        self._stream = stream
        self._send_timeout = math.inf if send_timeout is None else send_timeout
        self.socket = stream.socket
        self.closed = False
        self.on_eof: Callable[[], Awaitable[None]] | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self._send_timeout) as patience:
            await self._stream.send_all(data)
        if patience.cancelled_caught:
            # Part of the data may be out: the connection cannot be used any more.
            await self.aclose()
            raise trio.BrokenResourceError(
                f"the client read nothing for {self._send_timeout:g}s (send_timeout)"
            )

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        if not data and self.on_eof is not None:
            await self.on_eof()
        return data

    async def aclose(self) -> None:
        self.closed = True
        await self._stream.aclose()


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
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app over HTTP with hypercorn's trio worker until shut down.

    As ``hypercorn.trio.serve`` (the app's lifespan runs first and last; shutdown is
    graceful: no new connections, in-flight requests get ``config.graceful_timeout``
    seconds), with one difference: a write to a client that reads nothing waits at
    most ``send_timeout`` seconds, then the connection is closed (see the module's
    docstring for why hypercorn needs this).

    Args:
        app: the ASGI application.
        host: the address to listen on (``"127.0.0.1"``: this machine only).
        port: the TCP port; ``0`` picks a free one (``task_status`` reports it).
        shutdown_trigger: an async callable; when it returns, the server shuts down
            gracefully. ``None``: serve until cancelled.
        send_timeout: the most seconds one write may wait for the client to read
            (``None``: forever, as hypercorn alone does). As nginx's ``send_timeout``.
        config: hypercorn's configuration for everything else (timeouts, limits,
            logging); its ``bind`` and TLS settings are not used.
        task_status: ``nursery.start(serve, app, ...)`` returns the list of URLs
            listened on, e.g. ``["http://127.0.0.1:8000"]``, once accepting.

    Raises:
        OSError: the address cannot be listened on.
        ValueError: a bad ``send_timeout``.
    """
    send_timeout = check_seconds("send_timeout", send_timeout)
    body_timeout = check_seconds("body_timeout", body_timeout)
    config = copy.copy(config) if config is not None else Config()
    config.keep_alive_timeout = keep_alive_timeout
    wrapped = wrap_app(cast(ASGIFramework, app), config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)

    open_streams: set[_BoundedWriteStream] = set()

    async def handle_connection(stream: trio.SocketStream) -> None:
        bounded = _BoundedWriteStream(stream, send_timeout)
        _CONNECTION.set(Connection(bounded))  # this task's own context
        server = TCPServer(
            wrapped,
            config,
            context,
            ConnectionState(lifespan_state.copy()),
            cast(Any, bounded),
        )
        bounded.on_eof = partial(_end_if_idle, server)
        open_streams.add(bounded)
        try:
            await server.run()
        finally:
            open_streams.discard(bounded)

    reaper = trio.CancelScope()

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
        async with trio.open_nursery() as server_nursery:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=config.backlog)
            urls = []
            for listener in listeners:
                address = listener.socket.getsockname()
                urls.append(f"http://{repr_socket_addr(listener.socket.family, address)}")
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


async def _end_if_idle(server: TCPServer) -> None:
    """The client closed its end: end the connection now if no request is in flight.

    hypercorn 0.18 handles the end of an idle connection (between keep-alive
    requests, or before a whole request came) by doing nothing: its read loop ends,
    but the connection's task group waits for the idle task, which closes the
    socket only at ``keep_alive_timeout`` (5 s). Until then the descriptor stays
    open, so clients that connect and go could hold thousands. Stopping the idle
    task lets hypercorn close the connection at once. A request in flight (a
    client that half-closed after sending it) is left alone: its answer may
    still be read.
    """
    protocol = getattr(getattr(server, "protocol", None), "protocol", None)
    if protocol is not None and getattr(protocol, "stream", True) is None:  # HTTP/1, idle
        await server.idle_task.stop()


async def _serve_listeners(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    listeners: list[trio.SocketListener],
    handler_nursery: trio.Nursery,
) -> None:
    """``trio.serve_listeners``, typed for plain TCP listeners."""
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)
