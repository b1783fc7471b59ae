"""What ``streammgr serve`` and ``streammgr simulate`` run, once their flags are parsed.

Both serve until SIGINT or SIGTERM, then stop gracefully and return 0; a second
signal stops at once (exit code 1). An address that cannot be listened on (a port in
use, an address not of this machine, a host that does not resolve, a privileged
port) is one log line saying what to change, and exit code 1: the command line was
valid (exit code 2 is kept for that), the machine refused it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

import httpx
import structlog
import trio

from .._errors import LimiterUnavailable
from .._gc import GC_INTERVAL, SERVER_GC_THRESHOLD, collect_young, tune_gc
from .._malloc import MALLOC_TRIM_INTERVAL, find_malloc_trim, trim_malloc
from .._manager import StreamManager
from .._options import OPTIONS
from ._logging import LogFormat, configure_logging

if TYPE_CHECKING:
    from ..cluster import ClusterRegistry, RedisLimiter
    from ..server import ServiceOptions

__all__ = [
    "SIMULATED_UPSTREAM_URL",
    "ServeSettings",
    "cluster_limiter",
    "cluster_registry",
    "first_leaf",
    "listen_error_message",
    "run_serve",
    "run_simulate",
]

# The limits a cluster limiter holds instead of the manager.
_LIMITER_OPTIONS = frozenset({"max_streams", "max_streams_per_key", "max_waiting"})

# The upstream's host when the built-in simulator answers in-process: nothing leaves.
SIMULATED_UPSTREAM_URL = "http://simulated-upstream.invalid/v1"

_Serve = Callable[[Callable[[], Awaitable[object]], trio.TaskStatus[list[str]]], Awaitable[None]]


def serve_options() -> list[str]:
    """The manager options ``serve`` has flags for: each is a field of
    :class:`ServeSettings` and goes to the :class:`StreamManager` as it is."""
    return [name for name, option in OPTIONS.items() if "serve" in option.layers]


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """The parsed flags of ``streammgr serve`` (the API key read from its variable)."""

    host: str
    port: int
    upstream_url: str | None
    api_key: str | None
    max_streams: int | None
    max_streams_per_key: int | None
    max_waiting: int | None
    acquire_timeout: float | None
    reader_timeout: float | None
    idle_timeout: float | None
    shutdown_grace: float
    key_header: str | None
    admin_token: str | None
    cors_origins: tuple[str, ...]
    log_format: LogFormat
    allowed_hosts: tuple[str, ...] = ()
    access_log: bool = False
    body_timeout: float | None = 15.0
    redis_url: str | None = None
    lease_ttl: float = 3.0
    instance_id: str | None = None
    redis_fault_policy: Literal["fail-closed", "local"] = "fail-closed"
    # --gc-threshold: None leaves the interpreter's collector as it is.
    gc_threshold: tuple[int, int, int] | None = SERVER_GC_THRESHOLD
    # --gc-interval: None, only the interpreter's collections (by count); unused
    # when gc_threshold is None.
    gc_interval: float | None = GC_INTERVAL
    # --malloc-trim: None, the heap left to glibc.
    malloc_trim: float | None = MALLOC_TRIM_INTERVAL
    certfile: str | None = None
    keyfile: str | None = None

    def __repr__(self) -> str:
        return f"ServeSettings(host={self.host!r}, port={self.port}, ...)"  # never the secrets


def first_leaf(error: BaseException) -> BaseException:
    """The first exception that is not a group (nurseries nest them)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def listen_error_message(error: BaseException, host: str, port: int) -> str:
    """What went wrong listening on ``host:port``, and which flag to change.

    Args:
        error: the ``OSError`` raised while opening the listeners, or a group holding it.
        host: the ``--host`` given.
        port: the ``--port`` given.
    """
    error = first_leaf(error)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(error, socket.gaierror):
        return f"{host} does not resolve to an address ({error.strerror}); choose another --host"
    if isinstance(error, OSError):
        if error.errno == errno.EADDRINUSE:
            return f"{address} is already in use; choose another --port"
        if error.errno in (errno.EACCES, errno.EPERM):
            return (
                f"permission denied to listen on {address}: ports below 1024 need "
                f"privileges; choose a --port of 1024 or more"
            )
        if error.errno == errno.EADDRNOTAVAIL:
            return (
                f"{host} is not an address of this machine; choose another --host "
                f"(127.0.0.1: this machine only; 0.0.0.0: every interface)"
            )
        return f"cannot listen on {address}: {error.strerror or error}"
    return f"cannot listen on {address}: {error}"


async def _until_stopped(run: _Serve, what: str, host: str, port: int) -> int:
    """Run a server until a signal; return the exit code.

    The signal receiver is open before the server starts, so a signal at any
    moment is a graceful stop, never a ``KeyboardInterrupt`` inside a write.
    """
    log = structlog.get_logger("streammgr.cli")
    stop = trio.Event()
    forced = cannot_listen = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal forced
                async for number in signals:
                    name = signal.Signals(number).name
                    if not stop.is_set():
                        log.info(f"{what}.stopping", signal=name)
                        stop.set()
                    else:
                        log.warning(f"{what}.stopped_at_once", signal=name)
                        forced = True
                        nursery.cancel_scope.cancel()

            async def server(task_status: trio.TaskStatus[list[str]]) -> None:
                await run(stop.wait, task_status)
                nursery.cancel_scope.cancel()  # stopped: the signal watcher too

            nursery.start_soon(watch_signals)
            try:
                urls = await nursery.start(server)
            except* OSError as group:
                log.error(  # noqa: TRY400 - the reason is enough: no traceback
                    f"{what}.cannot_listen", error=listen_error_message(group, host, port)
                )
                cannot_listen = True
                nursery.cancel_scope.cancel()
            else:
                log.info(f"{what}.listening", urls=urls)
    if cannot_listen or forced:
        return 1
    log.info(f"{what}.stopped")
    return 0


def upstream_client(
    max_streams: int | None, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """The gateway's client of its upstream.

    One upstream connection per stream: httpx's default pool (100 connections, 20
    kept alive) made streams beyond the 100th wait for a connection inside their
    slots, and fail after the pool timeout. The manager's limit is the cap (and a
    few more for ``GET /v1/models``, which is not a stream). No overall read
    timeout: a stream may last long; the manager's and the source's timeouts
    bound it.

    The pool is a :class:`~streammgr.sources.ShardedTransport` (unless ``transport``
    is given: the simulator): httpcore's single pool walks every connection it holds
    on each stream's open and end, so opening cost grew with the streams held, and it
    reused no connection once it held more than ``max_keepalive_connections``.
    """
    from ..sources import ShardedTransport

    timeout = httpx.Timeout(connect=30.0, read=None, write=30.0, pool=30.0)
    limits = httpx.Limits(
        max_connections=None if max_streams is None else max_streams + 16,
        max_keepalive_connections=max_streams or 100,
        # Below the 5 s idle timeout of hypercorn and uvicorn (a self-hosted upstream):
        # at httpx's default of 5 s, a connection reused as the upstream closes it fails
        # the request, which cannot be sent again (it may have been read).
        keepalive_expiry=4.0,
    )
    if transport is None:
        transport = ShardedTransport(limits=limits)
    return httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits)


async def run_serve(
    settings: ServeSettings,
    *,
    sockets: Sequence[socket.socket] = (),
    on_listening: Callable[[list[str]], object] | None = None,
) -> int:
    """``streammgr serve``: the gateway until a signal; returns the exit code.

    Args:
        settings: the parsed flags.
        sockets: listening sockets to accept on instead of ``settings.host`` and
            ``settings.port`` (a worker of ``--workers``, given its parent's).
        on_listening: called with the URLs once the gateway accepts connections.
    """
    configure_logging(settings.log_format)
    try:
        from ..server import ServiceOptions, is_loopback_host
    except ImportError as exc:
        raise SystemExit(
            f"streammgr serve needs the server extra ({exc.name} is missing): "
            f"pip install 'streammgr[server,cli]'"
        ) from None
    from ..simulate import SimulatedTransport, SimulatedUpstream
    from ..sources import SourceTimeouts

    transport: httpx.AsyncBaseTransport | None = None
    upstream_url = settings.upstream_url
    if upstream_url is None:
        transport = SimulatedTransport(SimulatedUpstream())
        upstream_url = SIMULATED_UPSTREAM_URL
    secrets = [value for value in (settings.api_key, settings.admin_token) if value]
    limiter = cluster_limiter(settings)
    if limiter is None:
        manager = StreamManager(
            # Every manager option serve has a flag for (streammgr/_options.py).
            **{name: getattr(settings, name) for name in serve_options()},
            secrets=secrets,
        )
    else:
        # The limits are the cluster limiter's; the other options are the manager's.
        manager = StreamManager(
            **{
                name: getattr(settings, name)
                for name in serve_options()
                if name not in _LIMITER_OPTIONS
            },
            limiter=limiter,  # its password joins the manager's secrets
            secrets=secrets,
            # Stream ids name their instance: unique across the cluster.
            id_prefix=limiter.connection.instance_id,
        )
    # The cluster registry and cancels share the limiter's connection (created before
    # it is entered: the registry subscribes to its cancel channels).
    registry = None if limiter is None else cluster_registry(manager, limiter)
    options = ServiceOptions(
        upstream_url=upstream_url,
        api_key=settings.api_key,
        key_header=settings.key_header,
        cors_origins=settings.cors_origins,
        upstream_timeouts=SourceTimeouts(connect=30.0),
        # On loopback, every route answers loopback names and --allowed-host only (DNS
        # rebinding); beyond it, --allowed-host restricts them when given.
        allowed_hosts=(
            settings.allowed_hosts
            if settings.allowed_hosts or is_loopback_host(settings.host)
            else ("*",)
        ),
        access_log=settings.access_log,
    )
    log = structlog.get_logger("streammgr.cli")
    log.info(
        "gateway.starting",
        upstream="built-in simulator" if settings.upstream_url is None else upstream_url,
        max_streams=settings.max_streams,
        max_streams_per_key=settings.max_streams_per_key,
        # Across every instance on that Redis (its password shown as ***).
        cluster=None if limiter is None else limiter.connection.url,
    )
    async with contextlib.AsyncExitStack() as stack:
        if limiter is not None:
            # Connected before serving (the manager's own entry nests in this one):
            # Redis unreachable is a clear error and exit code 1, not a server that
            # refuses every stream.
            try:
                await stack.enter_async_context(limiter)
            except LimiterUnavailable as exc:
                log.error(  # noqa: TRY400 - the reason is enough: no traceback
                    "gateway.limiter_unavailable", error=str(exc)
                )
                return 1
        if registry is not None:
            await stack.enter_async_context(registry)
        upstream = await stack.enter_async_context(upstream_client(settings.max_streams, transport))
        return await _serve_gateway(
            settings,
            manager,
            upstream,
            options,
            registry=registry,
            sockets=sockets,
            on_listening=on_listening,
        )


def cluster_limiter(settings: ServeSettings) -> RedisLimiter | None:
    """The Redis limiter of ``--redis-url`` (``None`` without it)."""
    if settings.redis_url is None:
        return None
    try:
        from ..cluster import RedisLimiter
    except ImportError as exc:
        raise SystemExit(
            f"streammgr serve --redis-url needs the cluster extra ({exc.name} is missing): "
            f"pip install 'streammgr[server,cli,cluster]'"
        ) from None
    return RedisLimiter(
        settings.redis_url,
        max_streams=settings.max_streams,
        max_streams_per_key=settings.max_streams_per_key,
        max_waiting=settings.max_waiting,
        lease_ttl=settings.lease_ttl,
        # None: host:pid, computed here, in the process that serves (each worker's own).
        instance_id=settings.instance_id,
        fault_policy=settings.redis_fault_policy,
    )


def cluster_registry(manager: StreamManager, limiter: RedisLimiter) -> ClusterRegistry:
    """The cluster registry of ``--redis-url``, on the limiter's connection: snapshots
    live one ``--lease-ttl``, refreshed every ``min(1 s, lease_ttl / 3)``."""
    from ..cluster import ClusterRegistry

    interval = min(1.0, limiter.lease_ttl / 3)
    return ClusterRegistry(
        manager,
        limiter.connection,
        ttl=limiter.lease_ttl,
        interval=interval,
        min_interval=min(0.25, interval),
    )


async def _serve_gateway(
    settings: ServeSettings,
    manager: StreamManager,
    upstream: httpx.AsyncClient,
    options: ServiceOptions,
    *,
    sockets: Sequence[socket.socket],
    on_listening: Callable[[list[str]], object] | None,
    registry: ClusterRegistry | None = None,
) -> int:
    """The gateway and its inspection API, served until a signal."""
    from ..server import admin_app, build_service_app, serve_service

    # The inspection API, at /admin (check_exposure refused an exposed one
    # without a token before anything started).
    admin = admin_app(
        manager,
        token=settings.admin_token,
        prefix="",
        allowed_hosts=settings.allowed_hosts or None,
        allowed_origins=settings.cors_origins,
        cluster=registry,
    )
    app = build_service_app(
        manager, upstream, options, acquire_timeout=settings.acquire_timeout, admin=admin
    )
    # Everything imported and built: what is alive now lives as long as the process,
    # and is frozen out of every later collection (--gc-threshold, streammgr/_gc.py).
    tune_gc(settings.gc_threshold)
    # Young collections by time as well (streammgr/_gc.py): not with the interpreter's
    # collector left alone.
    interval = None if settings.gc_threshold is None else settings.gc_interval
    # The heap's free memory given back every so often (streammgr/_malloc.py): glibc only.
    trim = None if find_malloc_trim() is None else settings.malloc_trim
    structlog.get_logger("streammgr.cli").info(
        "gateway.gc",
        threshold=list(gc.get_threshold()),
        frozen=gc.get_freeze_count(),
        interval=interval,
        malloc_trim=trim,
    )

    async def run(
        stop: Callable[[], Awaitable[object]], task_status: trio.TaskStatus[list[str]]
    ) -> None:
        async with trio.open_nursery() as nursery:
            if interval is not None:
                nursery.start_soon(partial(collect_young, interval=interval))
            if trim is not None:
                nursery.start_soon(trim_malloc, trim)

            async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve_service(
                    app,
                    manager,
                    host=settings.host,
                    port=settings.port,
                    shutdown_trigger=stop,
                    grace=settings.shutdown_grace,
                    body_timeout=settings.body_timeout,
                    sockets=sockets,
                    certfile=settings.certfile,
                    keyfile=settings.keyfile,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()  # served: the collector's task ends too

            urls = await nursery.start(serve)
            if on_listening is not None:
                on_listening(urls)
            task_status.started(urls)

    return await _until_stopped(run, "gateway", settings.host, settings.port)


async def run_simulate(*, host: str, port: int, seed: int, log_format: LogFormat) -> int:
    """``streammgr simulate``: the simulated upstream until a signal."""
    configure_logging(log_format)
    try:
        from ..server import serve
    except ImportError as exc:
        raise SystemExit(
            f"streammgr simulate needs the server extra ({exc.name} is missing): "
            f"pip install 'streammgr[server,cli]'"
        ) from None
    from ..simulate import SimulatedUpstream

    upstream = SimulatedUpstream(seed=seed)

    async def run(
        stop: Callable[[], Awaitable[object]], task_status: trio.TaskStatus[list[str]]
    ) -> None:
        await serve(upstream, host=host, port=port, shutdown_trigger=stop, task_status=task_status)

    return await _until_stopped(run, "simulator", host, port)
