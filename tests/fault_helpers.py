"""A rig for the gateway fault and load tests, the invariants checked after each case,
and raw HTTP clients with parsers of what they receive (chunked bodies, SSE events).

:func:`open_rig` runs, in one Trio process, over real loopback sockets:

- the simulator (:class:`~streammgr.simulate.SimulatedUpstream`) served by
  :func:`~streammgr.server.serve` on a port of its own, so the gateway's path to its
  upstream is a real TCP connection and the simulator's
  :class:`~streammgr.simulate.ConnectionStats` count every upstream request;
- the service (:func:`~streammgr.server.build_service_app`: the gateway, and the
  inspection API at ``/admin``) served by :func:`~streammgr.server.serve_service`,
  reaching the simulator through a :class:`~streammgr.sources.ShardedTransport` of
  ``httpx.AsyncHTTPTransport`` shards (real pools), as ``streammgr serve`` does.

:meth:`Rig.check_quiet` is what every case must leave behind, checked exactly:
no stream in the registry, the limiter at zero, the simulator holding no response,
and the process's open file descriptors back to the baseline except the upstream
pool's idle keep-alive connections, each counted (its two ends are both in this
process: the gateway's socket and the simulator's). After the rig closes,
:func:`check_closed` wants the descriptors exactly as before it opened, and no
``ResourceWarning`` when the garbage collector runs.

Real time: every wait is on an event or a condition, bounded by ``PATIENCE``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import socket
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import trio
import trio.testing

from streammgr import CloseReason, StreamManager
from streammgr.server import ServiceOptions, admin_app, build_service_app, serve
from streammgr.simulate import SimulatedUpstream, plan_request
from streammgr.sources import ShardedTransport
from streammgr.testing import FdBaseline, find_leaks, format_leaks

from .server_helpers import (
    PATIENCE,
    CloseWatcher,
    RawResponse,
    quiet_hypercorn,
    serving_service,
    wait_until,
)

MESSAGES = [{"role": "user", "content": "hello there"}]

_TCP_ESTABLISHED = "01"
CASE_LIMIT = 40.0
"""The most seconds one case may take (below pytest's own timeout)."""


# -- the process's descriptors and sockets ------------------------------------------------


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each points at, as
    :class:`streammgr.testing.FdBaseline` lists them (the rig needs ``/proc``: Linux)."""
    found = FdBaseline.take().fds
    assert found is not None, "the fault rig counts descriptors in /proc/self/fd (Linux only)"
    return found


@dataclass(frozen=True)
class TcpSocket:
    """One TCP socket of this network namespace, from ``/proc/net/tcp``."""

    local_port: int
    remote_port: int
    state: str


def tcp_sockets() -> dict[str, TcpSocket]:
    """Every TCP socket (IPv4 and IPv6) by inode."""
    sockets: dict[str, TcpSocket] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    sockets[inode] = TcpSocket(
                        int(local.rpartition(":")[2], 16), int(remote.rpartition(":")[2], 16), state
                    )
        except FileNotFoundError:
            continue
    return sockets


def new_descriptors(baseline: dict[int, str]) -> dict[int, str]:
    """Descriptors open now that were not in ``baseline`` (or point elsewhere now)."""
    return {fd: target for fd, target in open_fds().items() if baseline.get(fd) != target}


def describe(descriptors: dict[int, str]) -> list[str]:
    """Descriptors as text, sockets with their ports and state, for a failure message."""
    sockets = tcp_sockets()
    out = []
    for fd, target in sorted(descriptors.items()):
        inode = target.removeprefix("socket:[").removesuffix("]")
        out.append(f"{fd} -> {target} {sockets.get(inode, '')}")
    return out


def collect_resource_warnings() -> list[str]:
    """Run the garbage collector; the ``ResourceWarning`` messages it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.collect()
    return [str(warning.message) for warning in caught if warning.category is ResourceWarning]


# -- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    """The simulator, the gateway and the inspection API, served on 127.0.0.1."""

    manager: StreamManager
    upstream: SimulatedUpstream
    upstream_port: int
    http: httpx.AsyncClient
    shards: list[httpx.AsyncHTTPTransport]  # every shard the transport made
    url: str
    port: int
    watcher: CloseWatcher
    stop: trio.Event
    stopped: trio.Event
    baseline: dict[int, str] = field(default_factory=dict)

    # -- clients

    async def post(
        self, body: dict[str, Any] | bytes, *, headers: str = "", receive_buffer: int | None = None
    ) -> RawResponse:
        """A chat-completions POST on a raw TCP connection, read only as a test asks."""
        return await raw_request(
            self.port,
            "POST",
            "/v1/chat/completions",
            body if isinstance(body, bytes) else json.dumps(body).encode(),
            headers=headers,
            receive_buffer=receive_buffer,
        )

    # -- waits

    async def until(self, condition: Callable[[], bool]) -> None:
        """Poll (bounded) until ``condition()``: the counters it reads announce nothing.

        Not ``wait_all_tasks_blocked``: a stream in flight wakes a task every few
        milliseconds, so every task is never idle for long.
        """
        await wait_until(condition, interval=0.002)

    async def open_streams(self, count: int) -> list[str]:
        """Wait until ``count`` streams are in the registry; their ids, oldest first."""
        await self.until(lambda: len(self.manager.streams()) >= count)
        return [info.id for info in self.manager.streams()]

    # -- the invariants

    def pool_connections(self) -> tuple[int, list[str]]:
        """Idle connections in the gateway's upstream pool, and any other (a problem)."""
        # httpx does not expose its pool; httpcore's pool lists its connections (a
        # shard the transport closed lists none).
        connections = [c for shard in self.shards for c in shard._pool.connections]
        busy = [repr(connection) for connection in connections if not connection.is_idle()]
        return len(connections) - len(busy), busy

    def leftovers(self) -> list[str]:
        """What is open beyond the baseline and is not an idle pooled upstream connection."""
        sockets = tcp_sockets()
        unexplained: dict[int, str] = {}
        gateway_ends = simulator_ends = 0
        for fd, target in new_descriptors(self.baseline).items():
            found = sockets.get(target.removeprefix("socket:[").removesuffix("]"))
            if found is not None and found.state == _TCP_ESTABLISHED:
                if found.remote_port == self.upstream_port:
                    gateway_ends += 1
                    continue
                if found.local_port == self.upstream_port:
                    simulator_ends += 1
                    continue
            unexplained[fd] = target
        pooled, busy = self.pool_connections()
        problems = describe(unexplained) + [f"in use: {connection}" for connection in busy]
        if (gateway_ends, simulator_ends) != (pooled, pooled):
            problems.append(
                f"{gateway_ends} gateway-side and {simulator_ends} simulator-side upstream "
                f"sockets, but {pooled} pooled connections"
            )
        return problems

    async def check_quiet(self) -> None:
        """Every case's end: nothing held anywhere (see the module docstring)."""
        manager = self.manager

        def quiet() -> bool:
            stats = manager.stats()
            return (
                not manager.streams()
                and stats.active == 0
                and stats.waiting == 0
                and self.upstream.stats().open == 0
                and not self.leftovers()
            )

        with contextlib.suppress(trio.TooSlowError):  # the asserts below say what is left
            await self.until(quiet)
        stats = manager.stats()
        assert manager.streams() == [], manager.streams()
        assert (stats.active, stats.waiting) == (0, 0), stats
        assert stats.active_by_key == {}, stats
        assert stats.waiting_by_key == {}, stats
        assert self.upstream.stats().open == 0, self.upstream.stats()
        left = self.leftovers()
        assert left == [], left
        # And what the users' kit checks (the admin app's own feeds run for its
        # lifetime: watchers are expected here).
        leaks = [leak for leak in find_leaks(manager) if leak.kind != "watcher"]
        assert leaks == [], format_leaks(leaks)

    def reasons(self) -> Counter[CloseReason]:
        """How many streams closed for each reason."""
        return Counter(
            info.close_reason for info in self.manager.history() if info.close_reason is not None
        )


@asynccontextmanager
async def open_rig(
    *,
    manager_options: dict[str, Any] | None = None,
    upstream_options: dict[str, Any] | None = None,
    grace: float = 5.0,
    close_timeout: float = 5.0,
    **service_options: Any,
) -> AsyncIterator[Rig]:
    """The rig (see the module docstring); stopped and checked for leaks on exit.

    Args:
        manager_options: the :class:`StreamManager`'s arguments.
        upstream_options: the :class:`SimulatedUpstream`'s defaults.
        grace: :func:`serve_service`'s ``grace``.
        close_timeout: :func:`serve_service`'s ``close_timeout``.
        **service_options: :class:`ServiceOptions` fields besides ``upstream_url``.
    """
    before = open_fds()
    upstream = SimulatedUpstream(
        **{"first_token_latency": 0.005, "token_latency": 0.002, **(upstream_options or {})}
    )
    manager = StreamManager(**(manager_options or {}))
    upstream_config = quiet_hypercorn()
    upstream_config.keep_alive_timeout = 60  # no pooled connection closes mid-case
    stop_upstream = trio.Event()
    with trio.fail_after(CASE_LIMIT):  # a hang fails with its traceback
        async with trio.open_nursery() as nursery:
            (upstream_url,) = await nursery.start(
                partial(
                    serve,
                    upstream,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=stop_upstream.wait,
                    config=upstream_config,
                )
            )
            shards: list[httpx.AsyncHTTPTransport] = []

            def shard(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
                shards.append(httpx.AsyncHTTPTransport(limits=limits))
                return shards[-1]

            transport = ShardedTransport(
                limits=httpx.Limits(max_connections=None), shard_transport=shard
            )
            timeout = httpx.Timeout(connect=PATIENCE, read=None, write=PATIENCE, pool=PATIENCE)
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
                app = build_service_app(
                    manager,
                    http,
                    ServiceOptions(upstream_url=f"{upstream_url}/v1", **service_options),
                    acquire_timeout=(manager_options or {}).get("acquire_timeout"),
                    admin=admin_app(manager, prefix=""),
                )
                async with serving_service(
                    nursery, app, manager, grace=grace, close_timeout=close_timeout
                ) as service:
                    watcher = CloseWatcher(manager)
                    await nursery.start(watcher.run)
                    rig = Rig(
                        manager=manager,
                        upstream=upstream,
                        upstream_port=int(upstream_url.rpartition(":")[2]),
                        http=http,
                        shards=shards,
                        url=service.url,
                        port=service.port,
                        watcher=watcher,
                        stop=service.stop,
                        stopped=service.stopped,
                    )
                    # Let every server task settle before the baseline.
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                    rig.baseline = open_fds()
                    yield rig
                    await rig.check_quiet()  # every case's end, also one that stopped the server
            stop_upstream.set()
    check_closed(before)


def check_closed(before: dict[int, str]) -> None:
    """After a rig: the descriptors exactly as before it, and no ResourceWarning."""
    warned = collect_resource_warnings()
    assert warned == [], warned
    left = describe(new_descriptors(before))
    assert left == [], left


# -- raw HTTP clients --------------------------------------------------------------------------


async def raw_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: str = "",
    receive_buffer: int | None = None,
    keep_alive: bool = False,
) -> RawResponse:
    """A request on a raw TCP connection (``headers``: extra ``name: value\\r\\n`` lines).

    ``receive_buffer`` shrinks the socket's receive buffer (set before connecting, so
    the TCP window stays small): a client that stops reading makes the server's
    writes block soon. ``keep_alive``: leave out ``connection: close``.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    try:
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    # By default connection: close, so that the server closes its end after the answer (an idle
    # keep-alive connection the client closes lingers in hypercorn until its
    # keep_alive_timeout: see docs/operations.md).
    head = f"{method} {path} HTTP/1.1\r\nhost: localhost\r\n"
    if not keep_alive:
        head += "connection: close\r\n"
    if body or method == "POST":
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    await stream.send_all((head + headers + "\r\n").encode() + body)
    return RawResponse(stream)


async def raw_post(
    port: int, body: dict[str, Any], *, path: str = "/v1/chat/completions", headers: str = ""
) -> RawResponse:
    """A JSON POST on a raw keep-alive TCP connection, read only as far as a test asks."""
    return await raw_request(
        port, "POST", path, json.dumps(body).encode(), headers=headers, keep_alive=True
    )


def chat(stream: bool = True, **simulate: Any) -> dict[str, Any]:
    """A chat-completions body; ``simulate``: the simulator's options for it."""
    body: dict[str, Any] = {"model": "sim-small", "messages": MESSAGES, "stream": stream}
    if simulate:
        body["streammgr_simulate"] = simulate
    return body


def token_chat(tokens: int, token_latency: float) -> dict[str, Any]:
    """A streaming chat body of ``tokens`` tokens, the first at once, then one every
    ``token_latency`` seconds."""
    return chat(tokens=tokens, first_token_latency=0, token_latency=token_latency)


def unchunked(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body, and whether it ended with its last chunk."""
    out, rest = b"", body
    while rest:
        size_line, found, rest = rest.partition(b"\r\n")
        if not found:
            return out, False
        size = int(size_line, 16)
        if size == 0:
            return out, rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            return out + rest[:size], False
        out, rest = out + rest[:size], rest[size + 2 :]
    return out, False


def data_events(payload: bytes) -> list[str]:
    """The data of every event of an SSE payload (comments, keep-alives, left out)."""
    events = []
    for block in payload.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        data = [line.removeprefix("data:").removeprefix(" ") for line in lines]
        if data:
            events.append("\n".join(data))
    return events


def streamed_text(events: list[str]) -> str:
    """The content of chat-completion chunk events, concatenated (others skipped)."""
    text = []
    for data in events:
        if not data.startswith("{"):
            continue
        for choice in json.loads(data).get("choices", ()):
            text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def expected_text(upstream: SimulatedUpstream, body: dict[str, Any]) -> str:
    """What the deterministic simulator answers to ``body``."""
    return plan_request(json.dumps(body).encode(), upstream.behaviour).text


def is_complete(response: RawResponse) -> bool:
    """The response's head and whole body are in (a chunked body's end, or its length)."""
    if b"\r\n\r\n" not in response.received:
        return False
    headers = response.headers
    if headers.get("transfer-encoding") == "chunked":
        return unchunked(response.body)[1]
    return len(response.body) >= int(headers.get("content-length", "0"))


def error_of(response: RawResponse) -> dict[str, Any]:
    """The OpenAI error object of a complete error answer (or of a stream's last event)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        payload, _ = unchunked(response.body)
        error: dict[str, Any] = json.loads(data_events(payload)[-1])["error"]
        return error
    body = (
        unchunked(response.body)[0]
        if "chunked" in response.headers.get("transfer-encoding", "")
        else response.body
    )
    found: dict[str, Any] = json.loads(body)["error"]
    return found


async def receive_until(
    response: RawResponse, wanted: Callable[[RawResponse], bool], patience: float
) -> None:
    """As ``response.until(wanted)``, bounded by ``patience`` seconds instead."""
    with trio.fail_after(patience):
        while not wanted(response):
            data = await response.stream.receive_some(1 << 16)
            if not data:
                raise AssertionError(f"the connection closed first: {response.received[-300:]!r}")
            response.received += data
