"""The upstream client's pools: ``ShardedTransport`` (``streammgr/sources/_pools.py``).

Its bookkeeping (which shard a request goes to, the limits across shards, idle shards
closed, a failed request's slot given back) runs in memory on the mock clock, with
``httpx.MockTransport`` shards. What only a real pool shows (connections reused,
orphans reclaimed) runs over loopback against hypercorn, counting the TCP connections
the server accepted: each has its own client address in the ASGI scope.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpcore
import httpx
import pytest
import trio
import trio.testing

from streammgr.sources import ShardedTransport
from streammgr.sources._pools import _default_shard, _TrioBackend, _TrioStream

from .pool_helpers import CancelAfterConnect, HeldUpstream, Streams
from .server_helpers import PATIENCE, Server

# -- in memory: the bookkeeping ---------------------------------------------------------


class Body(httpx.AsyncByteStream):
    """A streamed body (``content=`` would be read, and closed, by the mock at once)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"


class Shards:
    """A ``shard_transport`` factory of mock shards: each answers with its own index
    (header ``x-shard``) and records the limits it was made with and its close."""

    def __init__(self) -> None:
        self.limits: list[httpx.Limits] = []
        self.closed: list[int] = []
        self.fail_next = False

    def __call__(self, limits: httpx.Limits) -> httpx.AsyncBaseTransport:
        index = len(self.limits)
        self.limits.append(limits)
        shards = self

        def answer(request: httpx.Request) -> httpx.Response:
            if shards.fail_next:
                shards.fail_next = False
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, headers={"x-shard": str(index)}, stream=Body())

        class Shard(httpx.MockTransport):
            async def aclose(self) -> None:
                shards.closed.append(index)

        return Shard(answer)


@contextlib.asynccontextmanager
async def sharded(
    shards: Shards, *, shard_size: int, limits: httpx.Limits | None = None, pool: float = 5.0
) -> AsyncIterator[tuple[httpx.AsyncClient, ShardedTransport]]:
    transport = ShardedTransport(limits=limits, shard_size=shard_size, shard_transport=shards)
    timeout = httpx.Timeout(5.0, pool=pool)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        yield client, transport


async def held(client: httpx.AsyncClient) -> httpx.Response:
    """A response held open: its request stays on its shard until it is closed."""
    return await client.send(client.build_request("GET", "http://upstream.local/"), stream=True)


def shard_of(response: httpx.Response) -> int:
    return int(response.headers["x-shard"])


async def test_requests_fill_the_most_loaded_shard_with_room() -> None:
    shards = Shards()
    async with sharded(shards, shard_size=3, limits=httpx.Limits(max_connections=None)) as (
        client,
        transport,
    ):
        responses = [await held(client) for _ in range(7)]
        assert [shard_of(response) for response in responses] == [0, 0, 0, 1, 1, 1, 2]
        assert (transport.shard_count, transport.in_flight) == (3, 7)
        await responses[0].aclose()  # shard 0: 2 in flight, the most loaded with room
        assert shard_of(await held(client)) == 0
        await responses[3].aclose()
        await responses[4].aclose()  # shard 1 holds idle connections, shard 2 none
        assert shard_of(await held(client)) == 1
        assert transport.in_flight == 6


async def test_each_shard_may_keep_alive_all_its_connections() -> None:
    # httpcore 1.0.9 counts all of a pool's connections against its keep-alive bound:
    # a bound below the shard's size would close every connection a stream releases.
    shards = Shards()
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=20, keepalive_expiry=7)
    async with sharded(shards, shard_size=100, limits=limits) as (client, _):
        responses = [await held(client) for _ in range(250)]
        for response in responses:
            await response.aclose()
    assert [(s.max_connections, s.max_keepalive_connections) for s in shards.limits] == [
        (100, 100),
        (100, 100),
        (50, 50),  # the shards add up to max_connections
    ]
    assert {s.keepalive_expiry for s in shards.limits} == {7}


async def test_max_connections_bounds_the_requests_in_flight_across_shards(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shards = Shards()
    limits = httpx.Limits(max_connections=5)
    async with sharded(shards, shard_size=2, limits=limits, pool=3.0) as (client, transport):
        responses = [await held(client) for _ in range(5)]
        assert [shard_of(response) for response in responses] == [0, 0, 1, 1, 2]
        started = trio.current_time()
        with pytest.raises(httpx.PoolTimeout, match=re.escape("raise limits.max_connections")):
            await held(client)
        assert trio.current_time() - started == pytest.approx(3.0)
        assert transport.in_flight == 5

        async with trio.open_nursery() as nursery:
            waiting: list[httpx.Response] = []

            async def wait_for_room() -> None:
                waiting.append(await held(client))

            nursery.start_soon(wait_for_room)
            await trio.testing.wait_all_tasks_blocked()
            assert waiting == []
            await responses[2].aclose()  # a slot of shard 1
        assert [shard_of(response) for response in waiting] == [1]
        assert shards.limits[2].max_connections == 1  # 2 + 2 + 1 = max_connections


async def test_idle_shards_beyond_the_keepalive_bound_are_closed() -> None:
    # max_keepalive_connections=3 with shards of 2: two idle shards are kept.
    shards = Shards()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=3)
    async with sharded(shards, shard_size=2, limits=limits) as (client, transport):
        responses = [await held(client) for _ in range(8)]
        assert transport.shard_count == 4
        for response in responses:
            await response.aclose()
        assert shards.closed == [0, 1]  # the ones idle the longest
        assert (transport.shard_count, transport.in_flight) == (2, 0)
        # The shard idle the shortest (3) serves the next request: its connections are warm.
        assert shard_of(await held(client)) == 3
    assert sorted(shards.closed) == [0, 1, 2, 3]  # the client's close closes the rest


@pytest.mark.parametrize(("keepalive", "kept"), [(0, 0), (None, 3)])
async def test_the_keepalive_bound_zero_keeps_no_idle_shard_and_none_keeps_them_all(
    keepalive: int | None, kept: int
) -> None:
    shards = Shards()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=keepalive)
    async with sharded(shards, shard_size=2, limits=limits) as (client, transport):
        responses = [await held(client) for _ in range(6)]
        for response in responses:
            await response.aclose()
        assert transport.shard_count == kept
        assert len(shards.closed) == 3 - kept


async def test_a_failed_request_gives_its_slot_back() -> None:
    shards = Shards()
    limits = httpx.Limits(max_connections=1)
    async with sharded(shards, shard_size=2, limits=limits, pool=1.0) as (client, transport):
        shards.fail_next = True
        with pytest.raises(httpx.ConnectError):
            await held(client)
        assert transport.in_flight == 0
        response = await held(client)  # the one slot is free again
        assert shard_of(response) == 0
        await response.aclose()
        await response.aclose()  # closing twice gives one slot back, not two
        assert transport.in_flight == 0


async def test_a_cancelled_wait_for_room_takes_no_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shards = Shards()
    async with sharded(shards, shard_size=1, limits=httpx.Limits(max_connections=1)) as (
        client,
        transport,
    ):
        response = await held(client)
        with trio.move_on_after(1):
            await held(client)
        await response.aclose()
        assert transport.in_flight == 0
        assert shard_of(await held(client)) == 0


class SlowShard(httpx.AsyncBaseTransport):
    """A shard that, like httpcore over HTTP/2 for a GET, never reads the request's
    body; ``/slow`` answers once ``answer_slow`` is set. Every answer says ``version``."""

    def __init__(self, version: bytes) -> None:
        self.version = version
        self.answer_slow = trio.Event()
        self.refuse_next = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.refuse_next:
            self.refuse_next = False
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/slow":
            await self.answer_slow.wait()
        return httpx.Response(200, stream=Body(), extensions={"http_version": self.version})


@pytest.mark.parametrize(("version", "waits"), [(b"HTTP/1.1", True), (b"HTTP/2", False)])
async def test_requests_for_a_shards_idle_connections_go_one_at_a_time_over_http1(
    version: bytes, waits: bool
) -> None:
    # httpcore 1.0.9 would give requests arriving together the same idle connection:
    # until a request starts sending (its body read), the next one for that shard's
    # idle connections waits; over HTTP/2 (many requests a connection) none does.
    shard = SlowShard(version)
    transport = ShardedTransport(shard_size=10, shard_transport=lambda limits: shard)
    async with httpx.AsyncClient(transport=transport) as client, trio.open_nursery() as nursery:
        first, second = await held(client), await held(client)  # 2 connections opened
        await first.aclose()
        await second.aclose()  # both idle: the next requests go for them
        answered: list[str] = []

        async def send(path: str) -> None:
            request = client.build_request("GET", f"http://upstream.local{path}")
            await client.send(request, stream=True)
            answered.append(path)

        nursery.start_soon(send, "/slow")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "/fast")
        await trio.testing.wait_all_tasks_blocked()
        assert answered == ([] if waits else ["/fast"])
        shard.answer_slow.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(answered) == ["/fast", "/slow"]
        assert transport.in_flight == 2


async def test_a_request_that_failed_leaves_no_idle_connection_to_wait_for() -> None:
    # An upstream refusing connections: the failed request's connection is gone, so the
    # next requests do not go one at a time for it.
    shard = SlowShard(b"HTTP/1.1")
    transport = ShardedTransport(shard_size=10, shard_transport=lambda limits: shard)
    async with httpx.AsyncClient(transport=transport) as client, trio.open_nursery() as nursery:
        first, second = await held(client), await held(client)
        await first.aclose()
        await second.aclose()  # two idle connections
        shard.refuse_next = True
        with pytest.raises(httpx.ConnectError):
            await held(client)  # it went for an idle connection, and failed: one is left
        answered: list[str] = []

        async def send(path: str) -> None:
            request = client.build_request("GET", f"http://upstream.local{path}")
            await client.send(request, stream=True)
            answered.append(path)

        nursery.start_soon(send, "/slow")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "/fast")
        await trio.testing.wait_all_tasks_blocked()
        assert answered == ["/fast"]
        shard.answer_slow.set()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"shard_size": 0}, ValueError, "shard_size must be a positive int, got 0"),
        ({"shard_size": 1.5}, TypeError, "shard_size must be an int, got 1.5"),
        ({"limits": {"max_connections": 5}}, TypeError, "limits must be an httpx.Limits, got"),
        (
            {"limits": httpx.Limits(max_connections=0)},
            ValueError,
            "limits.max_connections must be positive or None, got 0",
        ),
    ],
)
def test_bad_arguments_are_named(arguments: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ShardedTransport(**arguments)


# -- over loopback: connections reused, orphans reclaimed -------------------------------


async def roll_over(nursery: trio.Nursery, client: httpx.AsyncClient, held: int) -> int:
    """Hold ``held`` streams, then replace each, one at a time, by a new one opened after
    it ended; return how many TCP connections the replacements opened."""
    upstream = HeldUpstream()
    server = await Server().start(nursery, upstream)
    streams = Streams(nursery, client, f"{server.url}/stream")
    await streams.open(held)
    assert len(upstream.connections) == held
    for _ in range(held):
        upstream.release()
        await streams.wait_ended()
        await streams.open()
    opened = len(upstream.connections) - held
    upstream.release(held)
    await streams.wait_ended(held)
    server.stop.set()
    return opened


# What a gateway holding more streams than its keep-alive bound configures.
HELD_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


async def test_connections_are_reused_while_more_streams_are_held_than_kept_alive(
    nursery: trio.Nursery,
) -> None:
    transport = ShardedTransport(limits=HELD_LIMITS)
    async with httpx.AsyncClient(transport=transport, timeout=PATIENCE) as client:
        opened = await roll_over(nursery, client, 150)
        assert transport.shard_count == 1  # 100 idle connections kept: one shard
    assert opened <= 2  # each replacement took the connection its predecessor left


async def test_httpx_alone_reuses_no_connection_while_it_holds_more_than_it_keeps_alive(
    nursery: trio.Nursery,
) -> None:
    # Why ShardedTransport exists (httpcore 1.0.9, connection_pool.py): the pool counts
    # all its connections against max_keepalive_connections, not the idle ones, so while
    # it holds more than that, every connection a stream releases is closed at once.
    # Should this fail, httpcore has fixed it: the shards' keep-alive bound may then be
    # the user's share again.
    async with httpx.AsyncClient(limits=HELD_LIMITS, timeout=PATIENCE) as client:
        opened = await roll_over(nursery, client, 150)
    assert opened >= 140


async def test_serves_upstream_client_reuses_a_first_waves_connections(
    nursery: trio.Nursery,
) -> None:
    from streammgr.cli._run import upstream_client

    upstream = HeldUpstream()
    server = await Server().start(nursery, upstream)
    async with upstream_client(200, None) as client:
        assert isinstance(client._transport, ShardedTransport)
        streams = Streams(nursery, client, f"{server.url}/stream")
        await streams.open(150)
        upstream.release(150)
        await streams.wait_ended(150)
        await streams.open(150)
        assert len(upstream.connections) <= 152  # the second wave on the first's connections
        upstream.release(150)
        await streams.wait_ended(150)
    assert upstream.requests == 300
    server.stop.set()


async def test_a_shards_orphaned_connection_is_reclaimed(nursery: trio.Nursery) -> None:
    # httpcore 1.0.9 (encode/httpcore#1093): a request cancelled after its pool gave it
    # a new connection, before it used it, leaves that connection in the pool for ever.
    # Each shard's are reclaimed as its request fails: the shard's slots stay usable.
    upstream = HeldUpstream()
    server = await Server().start(nursery, upstream)
    scopes: list[trio.CancelScope] = []
    pools: list[httpcore.AsyncConnectionPool] = []

    def shard(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
        transport = httpx.AsyncHTTPTransport(limits=limits)
        backend = CancelAfterConnect(lambda: scopes and scopes[-1].cancel())
        pool = httpcore.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            network_backend=backend,
        )
        transport._pool = pool
        pools.append(pool)
        return transport

    sharded = ShardedTransport(
        limits=httpx.Limits(max_connections=4), shard_size=2, shard_transport=shard
    )
    timeout = httpx.Timeout(PATIENCE, pool=1.0)
    async with httpx.AsyncClient(transport=sharded, timeout=timeout) as client:
        streams = Streams(nursery, client, f"{server.url}/stream")
        await streams.open(2)  # shard 0 full
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await client.get(f"{server.url}/stream")  # shard 1, cancelled once connected
        assert scope.cancelled_caught
        scopes.clear()
        assert len(pools) == 2
        assert pools[1].connections == []  # the orphan was removed and closed
        assert sharded.in_flight == 2
        await streams.open(2)  # both of shard 1's slots: no wait for the pool timeout
        assert sharded.in_flight == 4
        upstream.release(4)
        await streams.wait_ended(4)
    server.stop.set()


class GatedUpstream:
    """A raw ASGI SSE upstream that answers no request until ``expected`` requests have
    arrived whole (head and body): a client that sends one only after another's answer
    or body waits for ever."""

    def __init__(self) -> None:
        self.connections: set[tuple[str, int]] = set()
        self.requests = 0
        self.expected = 0
        self._all_in = trio.Event()

    def expect(self, count: int) -> None:
        self.requests, self.expected, self._all_in = 0, count, trio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        self.connections.add(tuple(scope["client"]))
        self.requests += 1
        if self.requests == self.expected:
            self._all_in.set()
        await self._all_in.wait()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def test_a_burst_of_streams_reaches_the_upstream_before_any_is_answered(
    nursery: trio.Nursery,
) -> None:
    # What a fresh `serve` does with its first 12 streams, then with 12 more on the
    # connections they left: every request goes out at once, none waits for another's
    # answer or body (the claim on a shard's idle connections is held only until the
    # request's body starts). A request parked on an opened connection would wait here
    # for ever, as it would upstream until a keep-alive timer closed its connection.
    upstream = GatedUpstream()
    server = await Server().start(nursery, upstream)
    transport = ShardedTransport(
        limits=httpx.Limits(max_connections=28, max_keepalive_connections=12)
    )
    url = f"{server.url}/v1/chat/completions"

    async def post(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", url, json={"stream": True}) as response:
            assert (await response.aread()) == b"data: [DONE]\n\n"

    async with httpx.AsyncClient(transport=transport, timeout=PATIENCE) as client:
        for _wave in range(2):
            upstream.expect(12)
            with trio.fail_after(PATIENCE):
                async with trio.open_nursery() as burst:
                    for _ in range(12):
                        burst.start_soon(post, client)
            assert upstream.requests == 12
        assert transport.in_flight == 0
    assert len(upstream.connections) < 24  # the second wave reused connections
    server.stop.set()


# -- a shard's reads: no cancel scope for a deadline of infinity --------------------------


def test_a_default_shard_reads_through_the_lighter_trio_stream() -> None:
    transport = _default_shard(httpx.Limits(max_connections=10, max_keepalive_connections=10))
    pool = getattr(transport, "_pool", None)
    if httpcore.__version__ != "1.0.9":
        pytest.skip("the pool is httpcore's own on other versions (nothing replaced)")
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    assert type(pool._network_backend) is _TrioBackend


async def test_a_read_without_timeout_maps_trios_errors_as_httpcore_does() -> None:
    sent, received = trio.testing.memory_stream_pair()
    stream = _TrioStream(received)
    await sent.send_all(b"data: 1\n\n")
    assert await stream.read(64) == b"data: 1\n\n"
    await received.aclose()
    with pytest.raises(httpcore.ReadError) as caught:
        await stream.read(64)
    assert isinstance(caught.value.__cause__, trio.ClosedResourceError)


async def test_a_read_with_a_timeout_still_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _sent, received = trio.testing.memory_stream_pair()
    stream = _TrioStream(received)
    started = trio.current_time()
    with pytest.raises(httpcore.ReadTimeout):
        await stream.read(64, timeout=2.5)
    assert trio.current_time() - started == pytest.approx(2.5)
