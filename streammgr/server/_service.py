"""The whole service as one ASGI app, and its graceful shutdown.

:func:`build_service_app` is what ``streammgr serve`` serves: the gateway, CORS,
the manager's lifespan, and the one place where the inspection API is mounted at
``/admin``. :func:`graceful_trigger` turns "a signal came" into a shutdown that
ends in-flight streams cleanly while the server stops, because hypercorn tells
in-flight requests nothing when it shuts down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._manager import StreamManager
from ..sources import SourceTimeouts
from ..sources._common import redact_url
from ._access_log import AccessLog
from ._chat_page import chat_page_routes
from ._gateway import (
    CHAT_COMPLETIONS_PATH,
    MAX_REQUEST_SIZE,
    ChatRoute,
    RequestIdMiddleware,
    gateway_parts,
    internal_error,
    request_id_header,
    route_path,
    with_request_id,
)
from ._health import ReadyState, health_routes
from ._hosts import HostGuard
from ._hypercorn import check_tls_pair, serve
from ._lifespan import manager_lifespan
from ._response import DIRECT_SEND, DirectBodyWrites

__all__ = ["ServiceOptions", "build_service_app", "graceful_trigger", "serve_service"]

# Headers a browser on another origin may read from an answer.
_EXPOSED_HEADERS = (
    "x-request-id",
    "x-stream-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
)


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How the service reaches its upstream and whom it serves.

    Attributes:
        upstream_url: the upstream's API root, e.g. ``"https://api.openai.com/v1"``.
        api_key: the key sent to the upstream, or ``None``.
        key_header: a request header naming the caller (the admission key), or
            ``None`` for the hashed credential.
        cors_origins: origins allowed to call the service from a browser
            (``"*"``: any); empty: no CORS headers. A gateway request that changes
            something (a chat POST) or a WebSocket handshake carrying another
            ``Origin`` than these or the service's own gets a 403
            (``origin_not_allowed``).
        upstream_timeouts: the upstream requests' timeouts (``None``: the default).
        answer_within: the most seconds before the status is decided: a stream
            still waiting for a slot then is refused with a 429, an admitted one
            sends its headers (``0``: never wait for a slot; ``None``: no
            deadline). Left out: the manager's ``acquire_timeout``, at least 1 s, or
            no deadline if streams wait forever: a stream waits for a slot as long as
            the manager lets it, and a refusal is always a 429.
        keep_alive: seconds without a write before a keep-alive comment (``None``:
            none).
        stall_timeout: the most seconds one write may wait for a client that reads
            nothing (then ``client_stalled``; ``None``: no bound).
        max_request_size: the largest request body, in bytes.
        allowed_hosts: the ``Host`` names every route answers besides the loopback
            ones (``localhost``, ``127.0.0.1``, ``[::1]``, any port), against DNS
            rebinding (see :class:`~streammgr.server.HostGuard`): ``"api.example"``
            (any port), ``"api.example:8443"``, or ``"*"`` for any host. ``None``
            (the default): loopback names only, right for a service on loopback;
            serving beyond it, list the names clients use, or ``("*",)``. The
            probes ``/healthz`` and ``/readyz`` are exempt.
        access_log: log every answer (``http.request``), not only the errors
            (``http.error``, always); see :class:`~streammgr.server.AccessLog`.
    """

    upstream_url: str
    api_key: str | None = None
    key_header: str | None = None
    cors_origins: Sequence[str] = ()
    upstream_timeouts: SourceTimeouts | None = None
    answer_within: float | None = None
    keep_alive: float | None = 15.0
    stall_timeout: float | None = 30.0
    max_request_size: int = MAX_REQUEST_SIZE
    allowed_hosts: Sequence[str] | None = None
    access_log: bool = False

    def __repr__(self) -> str:
        # Never the key.
        key = "set" if self.api_key else "none"
        return (
            f"ServiceOptions(upstream_url={redact_url(self.upstream_url, ())!r}, api_key={key}, "
            f"key_header={self.key_header!r}, cors_origins={tuple(self.cors_origins)!r}, "
            f"allowed_hosts={self.allowed_hosts!r}, access_log={self.access_log!r})"
        )


def build_service_app(
    manager: StreamManager,
    upstream: httpx.AsyncClient,
    options: ServiceOptions,
    *,
    acquire_timeout: float | None = None,
    admin: Starlette | None = None,
) -> ASGIApp:
    """The service: the gateway at ``/v1``, the inspection API at ``/admin``, CORS,
    the chat page at ``/chat``, the probes ``/healthz`` and ``/readyz``, the Host
    check, a log line per error answer, and ``manager`` run for the app's lifetime
    (:func:`manager_lifespan`).

    Every route but the probes answers only the hosts ``options.allowed_hosts``
    allows (loopback names by default); every answer of 400 or more is logged as
    ``http.error`` (and every other one as ``http.request`` with
    ``options.access_log``); every answer, the inspection API's too, has an
    ``x-request-id``.

    Args:
        manager: a manager not entered yet: the app's lifespan runs it.
        upstream: the ``httpx.AsyncClient`` that reaches the upstream; the caller
            opens and closes it around serving.
        options: see :class:`ServiceOptions`.
        acquire_timeout: the manager's ``acquire_timeout``, from which the default
            ``answer_within`` follows (``None``: streams wait forever; refusals
            are then only by ``max_waiting``, at once). A refusal by a limit is a
            429 whatever the two are (see
            :class:`~streammgr.server.EventStreamResponse`).
        admin: the inspection API, mounted at ``/admin`` when given
            (``streammgr.server.admin_app(manager, token=..., prefix="")``); its own
            lifespan (the task feeding its histograms) runs inside the service's.
            It checks hosts and origins itself (pass it the same ``allowed_hosts``).

    Returns:
        An ASGI app to pass to :func:`~streammgr.server.serve`.
    """
    answer_within = options.answer_within
    if answer_within is None and acquire_timeout is not None:
        # No margin is needed: nothing is sent while a stream waits for its slot.
        answer_within = max(1.0, acquire_timeout)
    parts = gateway_parts(
        manager,
        upstream,
        upstream_url=options.upstream_url,
        api_key=options.api_key,
        key_header=options.key_header,
        upstream_timeouts=options.upstream_timeouts,
        answer_within=answer_within,
        keep_alive=options.keep_alive,
        stall_timeout=options.stall_timeout,
        max_request_size=options.max_request_size,
        websocket_origins=options.cors_origins,  # browsers apply no CORS to WebSockets
    )
    gateway = parts.app
    guarded: list[BaseRoute] = []
    # --- The inspection API: the one place it is mounted. --------------------------
    if admin is not None:
        # The dashboard is /admin/ (it fetches the API relative to itself): /admin
        # leads there (a relative Location, right behind a proxy's path prefix too).
        guarded.append(
            Route("/admin", lambda _: RedirectResponse("admin/", status_code=308), methods=["GET"])
        )
        guarded.append(Mount("/admin", app=admin))
    # CORS opens the gateway to other origins, never the inspection API: a web page in
    # an operator's browser must not read or cancel streams of a tokenless admin API.
    public: ASGIApp = gateway
    cors_chat: ASGIApp | None = None
    if options.cors_origins:
        # The same CORS on the chat route as on the rest of the gateway.
        public, cors_chat = (
            _cors(public, options.cors_origins),
            _cors(parts.chat, options.cors_origins),
        )
    origins: HostGuard | None = None
    if "*" not in options.cors_origins:
        # A page on another site reaches a gateway on loopback directly (its Host is
        # 127.0.0.1, no rebinding needed): a "simple" POST (text/plain, no preflight)
        # would spend the upstream key. Only the allowed origins and its own may.
        public = origins = HostGuard(
            public,
            allowed_hosts=(
                "*",
                *(options.allowed_hosts or ()),
            ),  # the Host check is the outer guard's
            allowed_origins=options.cors_origins,
            check_origins=True,
        )
    # The chat page (GET /chat, static files): same Host check, no CORS (another
    # origin's page talks to the gateway, not to the page).
    guarded += chat_page_routes()
    guarded.append(Mount("/", app=public))
    # Against DNS rebinding: every route but the probes (a kubelet names the pod's
    # IP) answers only the allowed hosts.
    hosts = HostGuard(Router(routes=guarded), allowed_hosts=options.allowed_hosts or ())
    ready = ReadyState()
    routes: list[BaseRoute] = [*health_routes(manager, ready), Mount("/", app=hosts)]
    run_manager = manager_lifespan(manager)

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        # Starlette runs no lifespan of a mounted app: the admin app's runs here.
        async with run_manager(app):
            ready.started = True
            try:
                if admin is None:
                    yield
                else:
                    async with admin.router.lifespan_context(admin):
                        yield
            finally:
                ready.stopped = True

    service = Starlette(routes=routes, lifespan=lifespan)
    # The admin token (admin_app keeps it in its state) and the upstream key never
    # reach a log line, not even in a path.
    secrets = [options.api_key or "", *(getattr(admin.state, "secrets", ()) if admin else ())]
    # Every layer of this stack looks only at a response's start (the access log,
    # the request id, Starlette's error middlewares, the host guards, CORS): the
    # streaming answers send their bodies past them all (see DirectBodyWrites). A chat
    # request goes past the routers too, through the same guards (_ServiceDispatch).
    access_log = AccessLog(
        RequestIdMiddleware(service),
        requests=options.access_log,
        key_header=options.key_header,
        secrets=secrets,
    )
    return _ServiceDispatch(
        DirectBodyWrites(access_log),
        parts.chat,
        cors_chat,
        (hosts, origins),
        access_log,
    )


def _cors(app: ASGIApp, origins: Sequence[str]) -> ASGIApp:
    """``app`` open to ``origins`` (``--cors-origin``) by CORS."""
    return CORSMiddleware(
        app,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],  # mirrors what the preflight asks, authorization too
        expose_headers=list(_EXPOSED_HEADERS),
        max_age=600,
    )


class _ServiceDispatch:
    """Pure ASGI, the service's outermost layer: ``POST /v1/chat/completions``
    straight to the chat route, every other request (and the lifespan) to ``app``
    (the body writes' bypass, the access log, the request id, the Starlette app).

    A chat request gets in this one layer what the others give every request, in
    the same order: its bodies written past the layers (:class:`DirectBodyWrites`),
    its id (:class:`RequestIdMiddleware`), its log line (:class:`AccessLog`), the
    Host check, the Origin check, CORS if configured (``cors_chat``), and a 500 if
    the route raises before answering, as Starlette's error middleware answers.
    The guards are asked (:meth:`HostGuard.check
    <streammgr.server.HostGuard.check>`), not nested.

    So a held stream keeps no Starlette app, router, mount or ``Request`` alive,
    and one frame and one send wrapper of this layer instead of five layers: in
    the nested apps it kept three ``Request`` objects and ~10 KiB
    (benchmarks/bench_gc.py --memory; docs/performance.md).
    """

    __slots__ = ("_access_log", "_app", "_chat", "_cors_chat", "_guards")

    def __init__(
        self,
        app: ASGIApp,
        chat: ChatRoute,
        cors_chat: ASGIApp | None,
        guards: Sequence[HostGuard | None],
        access_log: AccessLog,
    ) -> None:
        self._app = app
        self._chat = chat
        self._cors_chat = cors_chat
        self._guards = tuple(guard for guard in guards if guard is not None)
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a chat request, or pass the request to the app."""
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or route_path(scope) != CHAT_COMPLETIONS_PATH
            or DIRECT_SEND in scope  # mounted inside another app that writes past it
        ):
            await self._app(scope, receive, send)
            return
        begun = trio.current_time()
        header = request_id_header(scope)
        answer: Message | None = None

        async def edge_send(message: Message) -> None:
            nonlocal answer
            if answer is None and message["type"] == "http.response.start":
                message = answer = with_request_id(message, header)
            await send(message)

        scope[DIRECT_SEND] = send
        failed = False
        try:
            # Inline, not in a method of its own: one frame less kept per stream.
            for guard in self._guards:
                problem = guard.check(scope)
                if problem is not None:
                    await guard.refuse(scope, edge_send, problem)
                    return
            if self._cors_chat is not None:
                await self._cors_chat(scope, receive, edge_send)  # its 500 within CORS
            else:
                response = await self._chat.response_for(scope, receive)
                await response(scope, receive, edge_send)
        except Exception:
            failed = True
            if answer is None and self._cors_chat is None:
                await internal_error(edge_send)
            raise
        finally:
            # hypercorn's HTTPStream holds the scope and this send holds the stream:
            # a cycle that only a full collection would free (see DirectBodyWrites).
            del scope[DIRECT_SEND]
            if answer is not None or failed:
                self._access_log.log(scope, answer, failed, trio.current_time() - begun)


def graceful_trigger(
    manager: StreamManager,
    trigger: Callable[[], Awaitable[object]],
    nursery: trio.Nursery,
    *,
    grace: float | None = None,
) -> Callable[[], Awaitable[None]]:
    """A ``shutdown_trigger`` for :func:`~streammgr.server.serve` that also drains.

    When ``trigger`` returns (a signal came), the manager's shutdown starts in
    ``nursery`` and the server is told to stop: it stops accepting at once, and
    waits for the requests in flight (up to its ``graceful_timeout``: make it longer
    than ``grace``). Meanwhile no new stream is admitted (a request on an open
    connection gets a 503), active streams get ``grace`` seconds (default: the
    manager's ``shutdown_grace``) to finish, and the rest are cancelled as
    ``shutdown``: each streaming answer then ends with an in-band ``"the server is
    shutting down"`` error event and a proper end of its body. hypercorn alone tells
    in-flight requests nothing, and cuts them when its own timeout expires.

    Args:
        manager: the manager the app runs its streams in.
        trigger: an async callable that returns when it is time to stop.
        nursery: where the manager's shutdown runs (it outlives the trigger).
        grace: seconds active streams get (``None``: ``shutdown_grace``).
    """

    async def drain() -> None:
        await trigger()
        nursery.start_soon(manager.aclose, grace, name="streammgr-drain")

    return drain


async def serve_service(
    app: ASGIApp,
    manager: StreamManager,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_trigger: Callable[[], Awaitable[object]],
    grace: float = 5.0,
    close_timeout: float = 5.0,
    backlog: int = 1024,
    body_timeout: float | None = 15.0,
    keep_alive_timeout: float = 75.0,
    sockets: Sequence[socket.socket] = (),
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (see :func:`build_service_app`) until ``shutdown_trigger``
    returns, then shut down gracefully, draining ``manager``'s streams.

    :func:`~streammgr.server.serve` with :func:`graceful_trigger`: at the trigger,
    no new connection is accepted, streams get ``grace`` seconds, the rest end with
    an in-band shutdown event, and connections still open ``grace +
    close_timeout`` seconds after the trigger (a client that reads nothing) are
    cancelled. No access log (the manager logs every stream).

    Args:
        app: the ASGI app; its lifespan runs ``manager``.
        manager: the manager the app runs its streams in.
        host: the address to listen on.
        port: the TCP port (``0``: a free one, reported through ``task_status``).
        shutdown_trigger: an async callable that returns when it is time to stop.
        grace: seconds active streams get to finish after the trigger.
        close_timeout: seconds after ``grace`` before connections are cut.
        backlog: connections the kernel queues before they are accepted (hypercorn's
            default, 100, drops a burst of new clients: each then waits for a TCP
            retransmission); capped by the system's ``net.core.somaxconn``.
        body_timeout: the most seconds a request may take to arrive whole (then 408
            and the connection closed; ``None``: no bound); see
            :func:`~streammgr.server.serve`.
        keep_alive_timeout: seconds an idle connection is kept for its next request:
            longer than the clients' own pool expiry (see docs/operations.md).
        sockets: listening sockets to accept on instead of ``host`` and ``port``
            (see :func:`~streammgr.server.serve`).
        certfile: serve HTTPS (and HTTP/2, by ALPN) with this PEM certificate
            chain; with ``keyfile``, both or neither (see
            :func:`~streammgr.server.tls_context`).
        keyfile: the certificate's PEM private key.
        task_status: ``nursery.start`` returns the URLs listened on.

    Raises:
        ValueError: a bad ``backlog``; ``certfile`` without ``keyfile`` or the
            reverse, or a file that cannot be loaded.
    """
    check_tls_pair(certfile, keyfile)  # before anything starts: a plain ValueError
    config = Config()
    config.accesslog = None
    config.graceful_timeout = grace + close_timeout
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
        raise ValueError(f"backlog must be a positive int, got {backlog!r}")
    config.backlog = backlog
    async with trio.open_nursery() as nursery:
        await serve(
            app,
            host=host,
            port=port,
            shutdown_trigger=graceful_trigger(manager, shutdown_trigger, nursery, grace=grace),
            body_timeout=body_timeout,
            keep_alive_timeout=keep_alive_timeout,
            config=config,
            sockets=sockets,
            certfile=certfile,
            keyfile=keyfile,
            task_status=task_status,
        )
