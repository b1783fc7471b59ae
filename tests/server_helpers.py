"""What the loopback server tests share: a server on 127.0.0.1, raw socket clients,
an ASGI middleware that counts body writes, registry waits and a bounded poll, and the
gateway and the whole service served on a free port.

These tests run on real time (real sockets), so every wait is on an event or a
condition, bounded by ``fail_after``; intervals are fractions of a second.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import trio
import trustme
from hypercorn.config import Config
from starlette.applications import Starlette

from streammgr import StreamInfo, StreamManager
from streammgr.server import ServiceOptions, build_service_app, gateway_app, serve, serve_service
from streammgr.simulate import SimulatedTransport, SimulatedUpstream
from streammgr.sources import SourceTimeouts

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]

PATIENCE = 10.0
"""The most seconds any loopback wait may take before the test fails: a bound, not a
timing (waits end as soon as what they wait for happens), generous for slow CI machines."""


async def wait_until(
    condition: Callable[[], bool], *, interval: float = 0.005, patience: float = PATIENCE
) -> None:
    """Poll (bounded by ``patience`` seconds) until ``condition()``, for a condition that
    no event announces (the simulator's counters, the limiter's counts, descriptors).

    Not ``wait_all_tasks_blocked``: a stream in flight wakes a task every few
    milliseconds, so every task is never idle for long.
    """
    with trio.fail_after(patience):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but counters
            await trio.sleep(interval)


def quiet_hypercorn() -> Config:
    """A hypercorn config that logs no access lines and only warnings."""
    config = Config()
    config.accesslog = None
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    return config


class BodyCounter:
    """Pure ASGI middleware: records each ``http.response.body`` the app sends."""

    def __init__(self, app: App, spec_version: str | None = None) -> None:
        self.app = app
        self.bodies: list[bytes] = []
        self.spec_version = spec_version
        self.returned = trio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.spec_version is not None:
            # What the app would see from a server that reports another ASGI version.
            scope = {**scope, "asgi": {**scope["asgi"], "spec_version": self.spec_version}}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.bodies.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.returned.set()


class Server:
    """One app served by :func:`streammgr.server.serve` on 127.0.0.1 in a nursery."""

    def __init__(self) -> None:
        self.url = ""
        self.port = 0
        self.stop = trio.Event()
        self.stopped = trio.Event()

    async def start(
        self, nursery: trio.Nursery, app: App, *, send_timeout: float | None = 60.0
    ) -> Server:
        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(
                    app,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=self.stop.wait,
                    send_timeout=send_timeout,
                    config=quiet_hypercorn(),
                    task_status=task_status,
                )
            finally:
                self.stopped.set()

        (self.url,) = await nursery.start(run)
        self.port = int(self.url.rpartition(":")[2])
        return self


async def raw_client(
    port: int, path: str, *, receive_buffer: int | None = None
) -> trio.SocketStream:
    """A TCP connection that sent ``GET path`` and reads only when told to.

    ``receive_buffer`` shrinks the socket's receive buffer (set before connecting,
    so the TCP window stays small) so that a client that stops reading makes the
    server's writes block soon.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n".encode())
    return stream


class RawResponse:
    """What a raw client has received so far: status, headers, and the (chunked) body.

    A test reads only as far as it needs (httpx's streaming iterators, left early,
    are async generators nested four deep, which the garbage collector would finish).
    Each body write is one chunk, so an event never straddles chunk framing.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.received = b""

    async def until(self, wanted: Callable[[RawResponse], bool]) -> None:
        """Read (bounded in time) until ``wanted(self)``."""
        with trio.fail_after(PATIENCE):
            while not wanted(self):
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    raise AssertionError(f"the connection closed first: {self.received!r}")
                self.received += data

    @property
    def head(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[0]

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    @property
    def headers(self) -> dict[str, str]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }

    @property
    def body(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[2]


async def read_until_closed(stream: trio.SocketStream) -> int:
    """Read until the server closes the connection; return how many bytes came."""
    total = 0
    with trio.fail_after(PATIENCE):
        while True:
            try:
                data = await stream.receive_some(1 << 20)
            except trio.BrokenResourceError:  # reset: closed too
                break
            if not data:
                break
            total += len(data)
    await stream.aclose()
    return total


class CloseWatcher:
    """The registry's closes, as they happen: start it with ``nursery.start``."""

    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager
        self.closed: dict[str, StreamInfo] = {}
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.manager.watch() as events:
            task_status.started()
            async for event in events:
                if event.kind == "closed" and event.stream is not None:
                    self.closed[event.stream.id] = event.stream
                    self._changed.set()
                    self._changed = trio.Event()

    async def next_close(self, *, besides: tuple[str, ...] = ()) -> StreamInfo:
        """Wait (bounded) until a stream not in ``besides`` has closed; return it."""
        with trio.fail_after(PATIENCE):
            while True:
                for stream_id, info in self.closed.items():
                    if stream_id not in besides:
                        return info
                await self._changed.wait()


def fast_upstream(**options: Any) -> SimulatedUpstream:
    """The simulator, fast: 10 ms to the first token, 2 ms between tokens."""
    return SimulatedUpstream(**{"first_token_latency": 0.01, "token_latency": 0.002, **options})


def instant_upstream() -> SimulatedUpstream:
    """The simulator with no latency at all."""
    return SimulatedUpstream(first_token_latency=0, token_latency=0)


@asynccontextmanager
async def serving_service(
    nursery: trio.Nursery, app: App, manager: StreamManager, **serve_options: Any
) -> AsyncIterator[Server]:
    """``app`` (from ``build_service_app``) under ``serve_service`` on 127.0.0.1, on a
    free port; at the end, stopped gracefully and waited for (bounded).

    Args:
        nursery: where the server runs.
        app: the service's ASGI app; its lifespan runs ``manager``.
        manager: the manager the app runs its streams in (not entered yet).
        **serve_options: ``serve_service``'s ``grace``, ``close_timeout``, ``backlog``.
    """
    server = Server()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve_service(
                app,
                manager,
                host="127.0.0.1",
                port=0,
                shutdown_trigger=server.stop.wait,
                task_status=task_status,
                **serve_options,
            )
        finally:
            server.stopped.set()

    (server.url,) = await nursery.start(run)
    server.port = int(server.url.rpartition(":")[2])
    try:
        yield server
    finally:
        server.stop.set()
        with trio.fail_after(PATIENCE):
            await server.stopped.wait()


@asynccontextmanager
async def running_service(
    nursery: trio.Nursery,
    manager: StreamManager,
    options: ServiceOptions,
    *,
    upstream: SimulatedUpstream | None = None,
    acquire_timeout: float | None = 0.1,
    admin: Starlette | None = None,
    **serve_options: Any,
) -> AsyncIterator[tuple[Server, SimulatedUpstream]]:
    """The whole service (gateway, CORS, admin) under ``serve_service`` on a free port,
    in front of an in-process simulator; stopped at the end.

    Args:
        nursery: where the server runs.
        manager: the manager (not entered yet: the service's lifespan runs it).
        options: the service's options.
        upstream: the simulator (default: 20 ms between tokens).
        acquire_timeout: ``build_service_app``'s ``acquire_timeout``.
        admin: the inspection API to mount at ``/admin`` (``admin_app(..., prefix="")``).
        **serve_options: ``serve_service``'s ``grace``, ``close_timeout``, ``backlog``.
    """
    upstream = upstream if upstream is not None else fast_upstream(token_latency=0.02)
    async with httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http:
        app = build_service_app(
            manager, http, options, acquire_timeout=acquire_timeout, admin=admin
        )
        async with serving_service(nursery, app, manager, **serve_options) as server:
            yield server, upstream


GATEWAY_BASE = "http://simulated.local/v1"
"""The upstream URL the gateway tests give (the in-process simulator answers it)."""
GATEWAY_UPSTREAM_KEY = "sk-upstream-key-0123456789"
"""The gateway's own upstream key in the gateway tests."""


@dataclass
class Running:
    """A gateway served by :func:`running_gateway`."""

    manager: StreamManager
    upstream: SimulatedUpstream
    server: Server

    @property
    def url(self) -> str:
        return self.server.url


@asynccontextmanager
async def running_gateway(
    nursery: trio.Nursery,
    *,
    upstream: SimulatedUpstream | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    upstream_url: str = GATEWAY_BASE,
    manager_options: dict[str, Any] | None = None,
    send_timeout: float | None = 60.0,
    **gateway_options: Any,
) -> AsyncIterator[Running]:
    """The gateway over a running manager, served on a free port."""
    upstream = upstream if upstream is not None else fast_upstream()
    transport = transport if transport is not None else SimulatedTransport(upstream)
    # idle: long enough that a loaded machine's late loop never passes for a stalled
    # upstream (0.5 s was seen to in a full run beside other work), short enough for
    # the tests of a stalled upstream.
    gateway_options.setdefault("upstream_timeouts", SourceTimeouts(connect=2.0, idle=2.0))
    async with (
        httpx.AsyncClient(transport=transport) as http,
        StreamManager(**(manager_options or {})) as manager,
    ):
        app = gateway_app(
            manager,
            http,
            upstream_url=upstream_url,
            api_key=GATEWAY_UPSTREAM_KEY,
            **gateway_options,
        )
        server = await Server().start(nursery, app, send_timeout=send_timeout)
        yield Running(manager, upstream, server)
        server.stop.set()


def assert_quiet(gateway: Running) -> None:
    """Nothing left behind by a gateway: no stream in the registry, no slot held or
    waited for (the upstream's connections: :func:`assert_upstream_released`)."""
    assert gateway.manager.streams() == []
    stats = gateway.manager.stats()
    assert stats.active == 0
    assert stats.waiting == 0


async def assert_upstream_released(gateway: Running) -> None:
    """Wait (bounded) until the simulator holds no response of ``gateway``'s open."""
    await wait_until(lambda: gateway.upstream.stats().open == 0)


def missing_server(message: str) -> NoReturn:
    """A real server a test needs is not installed: skip, but fail under CI, which
    installs it (``python3 dev.py test`` as root), so a skip never hides a broken set-up."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA (trustme) and a server certificate it signed, on disk."""

    ca: trustme.CA
    certfile: Path
    keyfile: Path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the throwaway CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def tls_files(directory: Path) -> TlsFiles:
    """A CA and a certificate for ``127.0.0.1`` and ``localhost``, written in
    ``directory`` as PEM files (the chain, the key)."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(keyfile))
    return TlsFiles(ca, certfile, keyfile)
