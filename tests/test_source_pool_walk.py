"""ShardedTransport's shards walk their pool in linear time (``_LinearWalkPool``), making
httpcore 1.0.9's decisions: which connections close, which request gets which one."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, cast

import httpcore
import httpx
import pytest

from streammgr.sources import ShardedTransport
from streammgr.sources._pools import _default_shard, _LinearWalkPool


@dataclass(eq=False)
class Stub:
    """A connection in one of the states the walk asks about."""

    name: str
    closed: bool = False
    expired: bool = False
    idle: bool = False
    available: bool = False
    origin: str = "a"

    def is_closed(self) -> bool:
        return self.closed

    def has_expired(self) -> bool:
        return self.expired

    def is_idle(self) -> bool:
        return self.idle

    def is_available(self) -> bool:
        return self.available

    def can_handle_request(self, origin: str) -> bool:
        return origin == self.origin


@dataclass(eq=False)
class Url:
    origin: str


@dataclass(eq=False)
class Request:
    url: Url


@dataclass(eq=False)
class Queued:
    """A pool request: queued or not, and the connection it was given."""

    request: Request
    queued: bool
    given: list[str] = field(default_factory=list)

    def is_queued(self) -> bool:
        return self.queued

    def assign_to_connection(self, connection: Stub) -> None:
        self.given.append(connection.name)


def pool_of(kind: type[httpcore.AsyncConnectionPool], seed: int) -> httpcore.AsyncConnectionPool:
    """A pool in a random state (the same for both kinds with the same seed)."""
    rng = random.Random(seed)
    size = rng.randrange(0, 12)
    pool = kind(
        max_connections=rng.randrange(1, 12), max_keepalive_connections=rng.randrange(0, 12)
    )
    stubbed: Any = pool  # its connections and requests are stubs
    states = ["closed", "expired", "idle", "available", "busy"]
    connections = []
    for index in range(size):
        state = rng.choice(states)
        connections.append(
            Stub(
                f"c{index}",
                closed=state == "closed",
                expired=state == "expired",
                idle=state == "idle",
                available=state in ("idle", "available"),
                origin=rng.choice("ab"),
            )
        )
    stubbed._connections = connections
    requests = [
        Queued(Request(Url(rng.choice("ab"))), rng.random() < 0.7)
        for _ in range(rng.randrange(0, 6))
    ]
    stubbed._requests = requests
    made = iter(range(100))
    stubbed.create_connection = lambda origin: Stub(f"new{next(made)}", origin=origin)
    return pool


def outcome(pool: httpcore.AsyncConnectionPool) -> tuple[list[str], list[str], list[list[str]]]:
    closing = pool._assign_requests_to_connections()
    return (
        [cast(Stub, connection).name for connection in closing],
        [cast(Stub, connection).name for connection in pool._connections],
        [cast(Queued, request).given for request in pool._requests],
    )


@pytest.mark.parametrize("seed", range(300))
def test_the_linear_walk_decides_as_httpcores(seed: int) -> None:
    assert outcome(pool_of(_LinearWalkPool, seed)) == outcome(
        pool_of(httpcore.AsyncConnectionPool, seed)
    )


def test_the_pools_that_walk_tell_idle_from_all() -> None:
    """Many idle connections and a low keep-alive bound: both close the surplus."""
    for kind in (_LinearWalkPool, httpcore.AsyncConnectionPool):
        pool = kind(max_connections=10, max_keepalive_connections=2)
        stubbed: Any = pool
        stubbed._connections = [Stub(f"c{i}", idle=True, available=True) for i in range(5)]
        closing = pool._assign_requests_to_connections()
        assert [cast(Stub, connection).name for connection in closing] == ["c0", "c1", "c2"]


def test_a_shard_uses_the_linear_walk_on_the_httpcore_it_repeats() -> None:
    transport = _default_shard(httpx.Limits(max_connections=100, max_keepalive_connections=100))
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    expected = _LinearWalkPool if httpcore.__version__ == "1.0.9" else httpcore.AsyncConnectionPool
    assert type(transport._pool) is expected
    assert ShardedTransport()._make is _default_shard  # the shards of serve's transport
