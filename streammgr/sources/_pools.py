"""The upstream client's connection pools: :class:`ShardedTransport`, and the reclaim of
the connections httpcore 1.0.9 orphans.

httpcore 1.0's pool walks every connection and every request it holds on each request
and on each response's close (``_assign_requests_to_connections``): about 1.5 us per
held connection per stream opened, 35-43% of a gateway's opening CPU at 5,000 held
streams. No pool setting changes that. :class:`ShardedTransport` splits the client into
pools of at most ``shard_size`` requests in flight, and picks one with room in constant
time, so a pool's walk is bounded by its shard, not by the streams held.

The same walk counts *all* of a pool's connections where it means the idle ones
(``len([connection.is_idle() for connection in self._connections])``), so a pool holding
more than ``max_keepalive_connections`` connections closes every connection a request
releases: past that many, no connection is ever reused (a new TCP and TLS handshake per
stream). Each shard is therefore given a keep-alive bound equal to its size, which that
count never exceeds; the user's keep-alive bound is applied here, across shards.

This room owns the pools and reaches into httpx's and httpcore's internals only to
reclaim orphans (:func:`reclaim_orphaned_connections`), to make a shard's walk
linear (:class:`_LinearWalkPool`) and its reads lighter (:class:`_TrioStream`); nothing
else here does.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import cast

import httpcore
import httpx
import trio
from httpcore import AsyncConnectionInterface
from httpcore._backends.base import SOCKET_OPTION
from httpcore._backends.trio import TrioBackend, TrioStream

from .._reads import receive_some
from .._validate import check_count

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "ShardedTransport",
    "reclaim_client_orphans",
    "reclaim_orphaned_connections",
]

DEFAULT_SHARD_SIZE = 100
"""Requests in flight per shard: where httpcore's walk stays cheap (a trial: opening CPU
from 21 to 7.8 ms a stream at 5,000 held)."""

_CLOSE_TIMEOUT = 5.0  # seconds closing a shard or an orphan may take, shielded


async def reclaim_orphaned_connections(transport: object) -> None:
    """Close the connections a failed or cancelled request left in an httpx transport's pool.

    httpcore 1.0.9 (encode/httpcore#1093, #986, unfixed): a request cancelled after
    the pool gave it a new connection and before it used it leaves that connection
    in the pool for ever: never idle, never closed, owned by no request. Each one
    holds a pool slot and, once connected, a socket: a gateway whose clients leave
    while its upstream requests connect ends with every slot taken and every request
    waiting for the pool timeout. So after a send that returned no response, every
    connection of the transport's pool that no request owns and that is neither idle
    nor closed is removed and closed (shielded, bounded). Reaches into httpx's and
    httpcore's internals: anything else (another transport, changed internals) is
    left alone; tests/test_gateway_faults.py and tests/test_source_pools.py pin it.
    """
    pool = getattr(transport, "_pool", None)
    connections = getattr(pool, "_connections", None)
    requests = getattr(pool, "_requests", None)
    if not isinstance(connections, list) or not isinstance(requests, list):
        return
    owned = {id(getattr(request, "connection", None)) for request in requests}
    orphans = [
        connection
        for connection in connections
        if id(connection) not in owned and not connection.is_idle() and not connection.is_closed()
    ]
    if not orphans:
        return
    for connection in orphans:
        connections.remove(connection)
    with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
        for connection in orphans:
            with contextlib.suppress(Exception):
                await connection.aclose()


async def reclaim_client_orphans(client: httpx.AsyncClient) -> None:
    """:func:`reclaim_orphaned_connections` on a client's default transport.

    A :class:`ShardedTransport` reclaims its own, shard by shard, as each send fails:
    for it (and any transport without an httpcore pool) this does nothing.
    """
    await reclaim_orphaned_connections(getattr(client, "_transport", None))


def _default_shard(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """httpx's own transport with ``limits``: what a :class:`ShardedTransport` shard is
    (its pool's walk made linear: see :class:`_LinearWalkPool`)."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    if type(pool) is httpcore.AsyncConnectionPool and httpcore.__version__ == _WALK_VERSION:
        pool.__class__ = _LinearWalkPool
        pool._network_backend = _TrioBackend()
    return transport


_WALK_VERSION = "1.0.9"  # the httpcore whose walk _LinearWalkPool repeats


class _LinearWalkPool(httpcore.AsyncConnectionPool):
    """httpcore 1.0.9's pool, its walk (``_assign_requests_to_connections``) linear.

    httpcore's walk counts the pool's connections once *per idle connection* (a list
    built to take its length, which is the number of connections): 100 idle
    connections cost 10,000 ``is_idle()`` calls on each request and on each
    response's close (0.37 ms with stub connections, more with real ones; see
    docs/performance.md): more than the TCP handshake a reused connection saves.
    This is the same walk with that length taken once: the same decisions in the
    same order. Used only on the httpcore version it repeats (``_WALK_VERSION``).
    """

    def _assign_requests_to_connections(self) -> list[AsyncConnectionInterface]:
        closing_connections: list[AsyncConnectionInterface] = []
        connections = self._connections
        keepalive = self._max_keepalive_connections
        for connection in list(connections):
            if connection.is_closed():
                connections.remove(connection)
            elif connection.has_expired() or (
                connection.is_idle() and len(connections) > keepalive
            ):
                connections.remove(connection)
                closing_connections.append(connection)
        for pool_request in [request for request in self._requests if request.is_queued()]:
            origin = pool_request.request.url.origin
            available_connections = [
                connection
                for connection in connections
                if connection.can_handle_request(origin) and connection.is_available()
            ]
            idle_connections = [connection for connection in connections if connection.is_idle()]
            if available_connections:
                pool_request.assign_to_connection(available_connections[0])
            elif len(connections) < self._max_connections:
                connection = self.create_connection(origin)
                connections.append(connection)
                pool_request.assign_to_connection(connection)
            elif idle_connections:
                connection = idle_connections[0]
                connections.remove(connection)
                closing_connections.append(connection)
                connection = self.create_connection(origin)
                connections.append(connection)
                pool_request.assign_to_connection(connection)
        return closing_connections


class _TrioStream(TrioStream):
    """httpcore's Trio stream, whose reads without a timeout arm no cancel scope.

    httpcore's ``read`` enters ``fail_after(inf)`` and an exception-mapping context
    manager on every read, also when no read timeout is set (the gateway's client
    sets none: a stream may last long, the manager's timeouts bound it): 3% of the
    gateway's CPU at 100 unpaced streams, for a deadline of infinity. This reads
    without them, and maps trio's errors to httpcore's as ``map_exceptions`` does.
    Over plain TCP it reads each chunk at its own size (:mod:`streammgr._reads`),
    not into a 64 KiB bytes object then shrunk, which left a hole in the heap.
    """

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if timeout is not None:
            return await super().read(max_bytes, timeout)
        try:
            stream = self._stream
            if type(stream) is trio.SocketStream:
                # Plain TCP: the bytes at their own size, not 64 KiB shrunk (a hole
                # in the heap per read: streammgr/_reads.py).
                return await receive_some(stream.socket, max_bytes)
            # An SSLStream's reads are bytes, as httpcore's own read says.
            return cast("bytes", await stream.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.ReadError(exc) from exc

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await super().start_tls(ssl_context, server_hostname, timeout)
        assert isinstance(stream, TrioStream)
        return _TrioStream(stream._stream)


class _TrioBackend(TrioBackend):
    """httpcore's Trio backend, its streams :class:`_TrioStream`."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_tcp(host, port, timeout, local_address, socket_options)
        assert isinstance(stream, TrioStream)
        return _TrioStream(stream._stream)


class _Shard:
    """One pool of a :class:`ShardedTransport`: its transport, how many requests it
    may carry and carries, how many connections it has opened at most (its peak load:
    for HTTP/1.1, the connections its pool holds, until some expire), and whether it
    was closed."""

    __slots__ = (
        "capacity",
        "claim",
        "connections",
        "load",
        "multiplexed",
        "released_at",
        "retired",
        "transport",
    )

    def __init__(self, transport: httpx.AsyncBaseTransport, capacity: int) -> None:
        self.transport = transport
        self.capacity = capacity
        self.load = 0
        self.connections = 0
        self.released_at = 0.0
        self.retired = False
        # Held by the one request on its way to an idle connection (see _Claim); never
        # once the shard answered over HTTP/2, whose connections take many requests.
        self.claim = trio.Semaphore(1)
        self.multiplexed = False

    @property
    def warm(self) -> bool:
        """Whether it likely holds an idle connection a request could reuse."""
        return self.load < self.connections


class _Buckets:
    """Shards by their load, the most loaded found in constant time: ``by_load[n]``
    holds those carrying ``n`` requests (dicts as ordered sets), and bit ``n`` of
    ``mask`` is set when it holds any (``int.bit_length`` finds the highest)."""

    __slots__ = ("by_load", "mask")

    def __init__(self, size: int) -> None:
        self.by_load: list[dict[_Shard, None]] = [{} for _ in range(size)]
        self.mask = 0

    def add(self, shard: _Shard) -> None:
        self.by_load[shard.load][shard] = None
        self.mask |= 1 << shard.load

    def remove(self, shard: _Shard) -> None:
        bucket = self.by_load[shard.load]
        del bucket[shard]
        if not bucket:
            self.mask &= ~(1 << shard.load)

    def pop_most_loaded(self) -> _Shard | None:
        """The most loaded shard (of those as loaded, the last added), removed."""
        if not self.mask:
            return None
        load = self.mask.bit_length() - 1
        bucket = self.by_load[load]
        shard, _ = bucket.popitem()
        if not bucket:
            self.mask &= ~(1 << load)
        return shard

    def clear(self) -> None:
        for bucket in self.by_load:
            bucket.clear()
        self.mask = 0


class ShardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport made of several pools of at most ``shard_size`` requests in
    flight each: costs flat in the number of upstream streams held.

    Use it as the client's transport:
    ``httpx.AsyncClient(transport=ShardedTransport(limits=httpx.Limits(...)))``
    (``streammgr serve`` does). Each request goes to a shard with room, found in
    constant time: the most loaded of those likely to hold an idle connection (its
    load below the most it carried), else the most loaded: connections are reused,
    and load gathers in few shards. It stays there until its response is closed.
    Shards are made when every one is full, and a shard with no request left is
    closed once more such shards are idle than the keep-alive bound allows (below).
    Requests on their way to a shard's idle connections go one at a time (see
    :class:`_Claim`): httpcore would give them all the same one.

    How ``limits`` apply across the shards:

    - ``max_connections``: the most requests in flight (for HTTP/1.1, connections in
      use) across all shards; the shards' sizes add up to it, so the connections held,
      idle ones included, never exceed it. Past it, a request waits for one to end, up
      to the request's pool timeout, then fails with ``httpx.PoolTimeout``, as with
      httpx's own pool. ``None``: no bound.
    - ``max_keepalive_connections``: idle connections kept, counted in whole shards:
      shards with no request in flight are kept up to this number divided by
      ``shard_size``, rounded up (``0``: none; ``None``: all); a shard still in use
      keeps its idle connections for its next requests, up to ``keepalive_expiry``.
      Each shard's own pool is given a keep-alive bound equal to its size: httpcore
      1.0.9 counts all of a pool's connections against that bound, not just the idle
      ones, so a lower one would close every released connection once the pool holds
      more than it, and no connection would ever be reused.
    - ``keepalive_expiry``: each shard's, as httpx's.

    The transport is Trio's, as streammgr is. It reclaims, shard by shard, the
    connections httpcore 1.0.9 orphans when a request is cancelled while it connects
    (encode/httpcore#1093): see :func:`reclaim_orphaned_connections`.

    Args:
        limits: the connection limits across all shards (httpx's defaults if ``None``).
        shard_size: the most requests in flight on one shard (default 100): small
            enough that httpcore's walk of a pool stays cheap, large enough that few
            shards are needed.
        shard_transport: makes a shard's transport from its limits (default:
            ``httpx.AsyncHTTPTransport(limits=limits)``); pass your own to set TLS,
            proxies, HTTP/2 or retries: ``lambda limits:
            httpx.AsyncHTTPTransport(limits=limits, verify=context)``.

    Raises:
        TypeError: ``limits`` is not an ``httpx.Limits``, or ``shard_size`` not an int.
        ValueError: ``shard_size`` is below 1, or ``limits.max_connections`` is 0.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        shard_transport: Callable[[httpx.Limits], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        if limits is None:
            limits = httpx.Limits()
        if not isinstance(limits, httpx.Limits):
            raise TypeError(f"limits must be an httpx.Limits, got {type(limits).__name__}")
        check_count("shard_size", shard_size, minimum=1)
        maximum = limits.max_connections
        if maximum is not None and maximum < 1:
            raise ValueError(
                f"limits.max_connections must be positive or None, got {maximum}: "
                f"a transport that may open no connection sends nothing"
            )
        keepalive = limits.max_keepalive_connections
        self._limits = limits
        self._shard_size = shard_size
        self._make = shard_transport or _default_shard
        self._max_connections = maximum
        self._idle_shards = None if keepalive is None else -(-keepalive // shard_size)
        # The shards with room: those likely to hold an idle connection (warm), and
        # the others (every connection in use: a request there opens a new one).
        self._warm = _Buckets(shard_size)
        self._cold = _Buckets(shard_size)
        self._shards: dict[_Shard, None] = {}  # every live shard, full ones included
        self._capacity = 0  # the sum of the live shards' capacities
        self._in_flight = 0
        self._slots = trio.Semaphore(maximum) if maximum is not None else None

    @property
    def shard_count(self) -> int:
        """The shards open now."""
        return len(self._shards)

    @property
    def in_flight(self) -> int:
        """Requests sent and whose responses are not closed yet, across all shards."""
        return self._in_flight

    def __repr__(self) -> str:
        return (
            f"ShardedTransport(shards={len(self._shards)}, in_flight={self._in_flight}, "
            f"shard_size={self._shard_size}, max_connections={self._max_connections})"
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a shard with room (waiting for one within the request's
        pool timeout if ``max_connections`` are in flight); the shard carries it until
        its response is closed.

        Raises:
            httpx.PoolTimeout: ``max_connections`` requests stayed in flight for the
                whole pool timeout.
            httpx.HTTPError: whatever the shard's transport raises.
        """
        slots = self._slots
        if slots is not None:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                await self._wait_for_room(slots, request)
        shard, reuse = self._take()
        response: httpx.Response | None = None
        claim: _Claim | None = None
        try:
            if reuse:
                await shard.claim.acquire()
                claim = _Claim(request.stream, shard.claim)
                request.stream = claim
            response = await shard.transport.handle_async_request(request)
        finally:
            if claim is not None:
                claim.release()
            if response is None:  # failed or cancelled: reclaim, then give the slot back
                with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
                    await reclaim_orphaned_connections(shard.transport)
                    await self._release(shard, failed=True)
        if response.extensions.get("http_version") == b"HTTP/2":
            shard.multiplexed = True
        response.stream = _ShardStream(response.stream, self, shard)
        return response

    async def aclose(self) -> None:
        """Close every shard and its connections; requests still in flight end as their
        connections close. The transport may be used again: it opens new shards."""
        shards = list(self._shards)
        self._shards.clear()
        self._warm.clear()
        self._cold.clear()
        self._capacity = 0
        for shard in shards:
            shard.retired = True
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
            for shard in shards:
                await shard.transport.aclose()

    # -- the choice of a shard: constant time ---------------------------------------------

    async def _wait_for_room(self, slots: trio.Semaphore, request: httpx.Request) -> None:
        timeouts = request.extensions.get("timeout", {})
        timeout = timeouts.get("pool") if isinstance(timeouts, dict) else None
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            await slots.acquire()
            return
        raise httpx.PoolTimeout(
            f"{self._max_connections} upstream requests stayed in flight for the whole pool "
            f"timeout ({timeout:g}s); raise limits.max_connections or the pool timeout",
            request=request,
        )

    def _take(self) -> tuple[_Shard, bool]:
        """A shard with room, one more request counted on it: the most loaded of those
        likely to hold an idle connection, else the most loaded with room, else a new
        one; and whether the request is likely to reuse a connection. The caller holds
        a slot, so one of the three exists."""
        shard = self._warm.pop_most_loaded() or self._cold.pop_most_loaded()
        if shard is not None:
            expiry = self._limits.keepalive_expiry
            if expiry is not None and trio.current_time() - shard.released_at > expiry:
                shard.connections = shard.load  # its idle connections have expired
        else:
            capacity = self._shard_size
            if self._max_connections is not None:
                capacity = min(capacity, self._max_connections - self._capacity)
            assert capacity > 0, "a slot was held, so some shard had room"
            shard = _Shard(self._make(_shard_limits(self._limits, capacity)), capacity)
            self._shards[shard] = None
            self._capacity += capacity
        reuse = shard.load < shard.connections and not shard.multiplexed
        shard.load += 1
        if not reuse:
            shard.connections = shard.load  # its pool opens a connection for it
        self._in_flight += 1
        self._place(shard)
        return shard, reuse

    def _place(self, shard: _Shard) -> None:
        if shard.load < shard.capacity:
            (self._warm if shard.warm else self._cold).add(shard)

    async def _release(self, shard: _Shard, *, failed: bool = False) -> None:
        """One request fewer on ``shard``; an idle shard past the keep-alive bound closed.

        A request that ``failed`` (no response) likely left no connection behind: it
        counts one fewer, so that an upstream refusing connections does not send the
        next requests one at a time for idle connections that are not there.
        """
        self._in_flight -= 1
        if self._slots is not None:
            self._slots.release()
        if shard.retired:
            shard.load -= 1
            return
        if shard.load < shard.capacity:
            (self._warm if shard.warm else self._cold).remove(shard)
        shard.load -= 1
        if failed and shard.connections > shard.load:
            shard.connections -= 1
        shard.released_at = trio.current_time()
        self._place(shard)
        if shard.load or self._idle_shards is None:
            return
        idle = self._warm.by_load[0]
        if len(idle) <= self._idle_shards:
            return
        oldest = next(iter(idle))  # the one idle the longest
        self._warm.remove(oldest)
        del self._shards[oldest]
        self._capacity -= oldest.capacity
        oldest.retired = True
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
            await oldest.transport.aclose()


def _shard_limits(limits: httpx.Limits, capacity: int) -> httpx.Limits:
    """A shard's own limits: ``capacity`` connections, all of which it may keep alive
    (see :class:`ShardedTransport` for why), the user's expiry."""
    return httpx.Limits(
        max_connections=capacity,
        max_keepalive_connections=capacity,
        keepalive_expiry=limits.keepalive_expiry,
    )


class _Claim(httpx.AsyncByteStream):
    """A request's body, which gives its shard's claim back when the shard's pool
    starts sending it: by then the request owns its connection.

    httpcore 1.0.9 marks an idle connection taken only once its request runs on it,
    past a checkpoint, so requests arriving together are all given the same idle
    connection; all but one fail over (``ConnectionNotAvailable``) and go round the
    pool again, walking it each time: 100 streams opened at once on 100 idle
    connections took 1.9 s (150: 5.9 s, and connections expired meanwhile), where
    new connections took 0.2 s. One claim per shard lets one request at a time on
    its way to an idle connection: a few of the event loop's turns each. (HTTP/2
    sends no body for a GET: the claim is then given back with the response, and a
    shard that answered over HTTP/2 takes no claim any more, since its connections
    take many requests at once.)
    """

    __slots__ = ("_claim", "_inner", "_released")

    def __init__(
        self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, claim: trio.Semaphore
    ) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner = inner
        self._claim = claim
        self._released = False

    def release(self) -> None:
        """Give the claim back (once)."""
        if not self._released:
            self._released = True
            self._claim.release()

    def __aiter__(self) -> AsyncIterator[bytes]:
        self.release()
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ShardStream(httpx.AsyncByteStream):
    """A response's body on its shard: iterated as the shard's own (no extra layer per
    chunk); closing it closes that, then gives the shard's slot back, once."""

    __slots__ = ("_closed", "_inner", "_owner", "_shard")

    def __init__(
        self,
        inner: httpx.SyncByteStream | httpx.AsyncByteStream,
        owner: ShardedTransport,
        shard: _Shard,
    ) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)
        self._inner = inner
        self._owner = owner
        self._shard = shard
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._inner.aclose()
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
                await self._owner._release(self._shard)
