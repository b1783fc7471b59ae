"""RedisLimiter against a real redis-server: leases, expiry, fencing, faults.

Several limiters in one Trio run stand for several instances. Real clock (Redis keeps
its own time): lease TTLs are short and every wait is bounded and ends on the state it
waits for; a test that holds a slot for a while holds it on purpose.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator

import coredis
import pytest
import structlog
import trio
import trio.lowlevel
import trio.testing
from coredis.tokens import PureToken

from streammgr import LimiterError, LimiterUnavailable, StreamLimitExceeded, StreamManager
from streammgr.cluster import RedisConnection, RedisLimiter
from streammgr.cluster._scripts import ACQUIRE, JOIN
from streammgr.server._answers import error_answer
from tests.redis_helpers import RedisServer, redis_client, redis_server
from tests.server_helpers import PATIENCE, wait_until

__all__ = ["redis_server"]  # the fixture, used by name

TTL = 0.9
"""The lease TTL of the tests that watch leases expire or Redis go (commands may take
TTL / 3 = 0.3 s before Redis counts as lost)."""
STEADY_TTL = 3.0
"""The lease TTL of the others: commands may take 1 s on a loaded machine."""


@contextlib.asynccontextmanager
async def instances(
    url: str,
    count: int,
    *,
    lease_ttl: float = STEADY_TTL,
    max_streams: int | None = None,
    max_streams_per_key: int | None = None,
    fault_policy: str = "fail-closed",
) -> AsyncIterator[list[RedisLimiter]]:
    """``count`` limiters (instances ``i0``, ``i1``...) on one Redis, entered."""
    async with contextlib.AsyncExitStack() as stack:
        limiters = []
        for index in range(count):
            limiter = RedisLimiter(
                url,
                instance_id=f"i{index}",
                lease_ttl=lease_ttl,
                max_streams=max_streams,
                max_streams_per_key=max_streams_per_key,
                fault_policy=fault_policy,  # type: ignore[arg-type]
            )
            limiters.append(await stack.enter_async_context(limiter))
        yield limiters


async def zcard(url: str, key: str = "streammgr:leases") -> int:
    """Leases in one set, counted in Redis (expired ones included until swept)."""
    async with redis_client(url) as client:
        return await client.zcard(key)


async def test_the_limits_hold_across_instances_under_contention(
    redis_server: RedisServer,
) -> None:
    """Three instances, 30 callers on two keys: never more than max_streams held (counted
    by the callers and sampled in Redis), never more than max_streams_per_key per key,
    and every caller is served in the end."""
    held = {"all": 0, "a": 0, "b": 0}
    peak = {"all": 0, "a": 0, "b": 0, "redis": 0}
    served = 0
    async with instances(redis_server.url, 3, max_streams=4, max_streams_per_key=3) as limiters:

        async def caller(index: int) -> None:
            nonlocal served
            key = "a" if index % 3 else "b"
            limiter = limiters[index % 3]
            permit = await limiter.acquire(key, timeout=PATIENCE)
            held["all"] += 1
            held[key] += 1
            peak["all"] = max(peak["all"], held["all"])
            peak[key] = max(peak[key], held[key])
            await trio.sleep(random.uniform(0.0, 0.03))  # the stream's life
            held["all"] -= 1
            held[key] -= 1
            limiter.release(permit)
            served += 1

        async def sampler() -> None:
            while True:
                peak["redis"] = max(peak["redis"], await zcard(redis_server.url))
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            async with trio.open_nursery() as callers:
                for index in range(30):
                    callers.start_soon(caller, index)
            nursery.cancel_scope.cancel()
        for limiter in limiters:
            await limiter._jobs_idle.wait()
    assert served == 30
    assert peak["all"] == 4  # reached, never passed
    assert peak["a"] <= 3
    assert peak["b"] <= 3
    assert peak["redis"] <= 4
    assert await zcard(redis_server.url) == 0


async def test_fifo_within_an_instance(redis_server: RedisServer) -> None:
    """Callers of one key on one instance are admitted in arrival order."""
    order: list[int] = []
    async with instances(redis_server.url, 1, max_streams_per_key=1) as (limiter,):
        first = await limiter.acquire("k")

        async def caller(index: int) -> None:
            permit = await limiter.acquire("k", timeout=PATIENCE)
            order.append(index)
            limiter.release(permit)

        async with trio.open_nursery() as nursery:
            for index in range(5):
                nursery.start_soon(caller, index)
                await wait_until(lambda: limiter.snapshot().waiting == index + 1)  # noqa: B023
            assert limiter.snapshot().waiting_by_key == {"k": 5}
            limiter.release(first)
    assert order == [0, 1, 2, 3, 4]


async def test_a_dead_holders_slots_come_back_within_the_ttl(redis_server: RedisServer) -> None:
    """Leases whose holder stopped renewing them (a killed instance) expire: a waiter on
    another instance is admitted after about one TTL, not before, not much later."""
    ttl = 0.6
    async with RedisConnection(redis_server.url, instance_id="dead") as dead:
        keys = ["streammgr:epoch", "streammgr:fence", "streammgr:instances", "streammgr:limits"]
        await dead.run(JOIN, keys, [int(ttl * 1000), "dead", "e", 2, -1])
        for _ in range(2):
            await dead.run(
                ACQUIRE,
                [
                    "streammgr:epoch",
                    "streammgr:fence",
                    "streammgr:leases",
                    "streammgr:key:k",
                ],
                [int(ttl * 1000), secrets.token_hex(8), 2, -1, "e"],
            )
    assert await zcard(redis_server.url) == 2
    async with instances(redis_server.url, 1, lease_ttl=ttl, max_streams=2) as (limiter,):
        started = trio.current_time()
        permit = await limiter.acquire("k", timeout=PATIENCE)
        waited = trio.current_time() - started
        limiter.release(permit)
    assert waited <= ttl * 2, waited


async def test_the_heartbeat_keeps_a_long_streams_lease(redis_server: RedisServer) -> None:
    """A slot held for four TTLs stays held: another instance is still refused."""
    # TTL, not shorter: its commands may take TTL / 3 before Redis counts as lost (at
    # 0.4 s, 0.13 s: a loaded CI machine once timed out the third instance's JOIN).
    ttl = TTL
    async with instances(redis_server.url, 2, lease_ttl=ttl, max_streams=1) as (a, b):
        permit = await a.acquire("k")
        await b.heartbeat()
        assert (b.instances_seen, b.cluster_active) == (2, 1)  # the cluster's view
        assert b.snapshot().active == 0  # this instance's
        await trio.sleep(ttl * 4)  # the stream's long life, not a wait for an event
        assert await zcard(redis_server.url) == 1
        with pytest.raises(StreamLimitExceeded) as caught:
            await b.acquire("k", timeout=0)
        assert caught.value.limit == "max_streams"
        a.release(permit)
        second = await b.acquire("k", timeout=PATIENCE)
        b.release(second)
        async with RedisLimiter(redis_server.url, instance_id="c", lease_ttl=ttl):
            await b.heartbeat()
            assert b.instances_seen == 3
        await b.heartbeat()
        assert b.instances_seen == 2  # c stopped cleanly: it left


async def test_a_cancelled_acquire_gives_its_lease_back(redis_server: RedisServer) -> None:
    """An acquire cancelled while its script waits in Redis (busy with another client's
    long script) ends in Cancelled and leaves no lease. The script is shielded: its
    answer is awaited (at most the command timeout), and a lease it took is released.
    (coredis 6.9 also drops a cancelled command unsent, so this passes without the
    shield too; the shield keeps it true whatever the client does.)"""
    busy = "local x = 0 for i = 1, 30000000 do x = x + i end return 1"  # ~0.4 s
    async with (
        # Commands may take 1 s (lease_ttl / 3) before Redis counts as lost.
        instances(redis_server.url, 1, max_streams=5) as (limiter,),
        redis_client(redis_server.url) as admin,
    ):
        await admin.ping()  # connected: the script goes out at once
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run_script, admin, busy)
            # The busy script's head start, so that the acquire's script waits behind it
            # (the one wait on time here: were it too short, the test would pass
            # without testing the trap, never fail).
            await trio.sleep(0.05)
            scope = trio.CancelScope()
            nursery.start_soon(_acquire_in, limiter, scope)
            await trio.testing.wait_all_tasks_blocked(0.02)
            scope.cancel()
        assert scope.cancelled_caught
        assert limiter.snapshot().active == 0
        await limiter._jobs_idle.wait()
        assert await zcard(redis_server.url) == 0
        assert await zcard(redis_server.url, "streammgr:key:k") == 0


async def _run_script(client: coredis.Redis[str], script: str) -> None:
    await client.eval(script, [], [])


async def _acquire_in(limiter: RedisLimiter, scope: trio.CancelScope) -> None:
    with scope:
        await limiter.acquire("k")


async def _never_admitted(limiter: RedisLimiter, until: float) -> int:
    """Ask for a slot again and again until ``until`` (trio time); return how many
    times it was refused. Fails the test if it is ever admitted."""
    refused = 0
    while trio.current_time() < until:
        try:
            permit = await limiter.acquire("k", timeout=0)
        except (StreamLimitExceeded, LimiterUnavailable):
            refused += 1
        else:
            limiter.release(permit)
            pytest.fail("admitted beyond the limit while the leases were being re-added")
        await trio.sleep(0.02)  # the next attempt, not a wait for an event
    return refused


async def _peak(url: str, peak: list[int]) -> None:
    while True:
        peak.append(await zcard(url))
        await trio.sleep(0.005)


@pytest.mark.parametrize("loss", ["flushall", "restart"])
async def test_epoch_fencing_after_redis_lost_its_data(
    redis_server: RedisServer, loss: str
) -> None:
    """Redis emptied (FLUSHALL, or restarted on the same port) under 3 held leases of a
    limit of 3: the other instance is refused while the holder re-adds its leases (the
    fence), Redis never counts more than 3, and a release lets it in afterwards."""
    async with instances(redis_server.url, 2, max_streams=3, lease_ttl=TTL) as (holder, other):
        permits = [await holder.acquire("k") for _ in range(3)]
        if loss == "flushall":
            async with redis_client(redis_server.url) as admin:
                await admin.flushall()
        else:
            redis_server.restart()
        peak: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_peak, redis_server.url, peak)
            refused = await _never_admitted(other, trio.current_time() + TTL * 2.5)
            nursery.cancel_scope.cancel()
        assert refused > 0
        assert max(peak) <= 3
        assert await zcard(redis_server.url) == 3  # the holder's leases, re-added
        assert holder.status().leases_lost == 3
        holder.release(permits[0])
        permit = await other.acquire("k", timeout=PATIENCE)
        other.release(permit)
        for permit in permits[1:]:
            holder.release(permit)


async def _pause(url: str, milliseconds: int) -> None:
    async with redis_client(url) as admin:
        await admin.client_pause(milliseconds, PureToken.ALL)


async def test_fail_closed_refuses_while_redis_is_paused_and_recovers(
    redis_server: RedisServer,
) -> None:
    """Redis paused: new streams refused with LimiterUnavailable (retry_after, a 503 with
    Retry-After and x-should-retry at the edge), the running one keeps its slot; back:
    admitted again, the held lease renewed."""
    async with instances(redis_server.url, 1, max_streams=2, lease_ttl=TTL) as (limiter,):
        running = await limiter.acquire("k")
        await _pause(redis_server.url, 1200)
        with pytest.raises(LimiterUnavailable) as caught:
            await limiter.acquire("k", timeout=PATIENCE)
        assert caught.value.retry_after == TTL
        status = limiter.status()
        assert status.degraded
        assert "fail-closed" in (status.detail or "")
        assert not running.released
        await wait_until(lambda: not limiter.status().degraded)
        permit = await limiter.acquire("k", timeout=PATIENCE)
        assert await zcard(redis_server.url) == 2
        limiter.release(permit)
        limiter.release(running)


async def test_fail_closed_when_redis_is_killed_reaches_the_edge_as_a_503(
    redis_server: RedisServer,
) -> None:
    """Redis killed under a manager: open() raises LimiterError carrying retry_after, which
    the HTTP edge answers with 503, Retry-After and x-should-retry: true; Redis back: the
    running stream's lease is re-established."""
    limiter = RedisLimiter(redis_server.url, instance_id="i0", lease_ttl=TTL, max_streams=2)
    async with StreamManager(limiter=limiter) as manager:
        running = await limiter.acquire("held")
        redis_server.kill()
        with pytest.raises(LimiterError) as caught:
            async with manager.open(_one, key="k") as stream:
                async for _ in stream:
                    pass
        assert isinstance(caught.value.__cause__, LimiterUnavailable)
        answer = error_answer(caught.value, caught.value.stream_id, None)
        headers = dict(answer.headers())
        assert answer.status == 503
        assert headers[b"retry-after"] == b"1"
        assert headers[b"x-should-retry"] == b"true"
        redis_server.start()
        await wait_until(lambda: not limiter.status().degraded)
        assert await zcard(redis_server.url) == 1
        limiter.release(running)


async def _one() -> AsyncIterator[int]:
    yield 1


async def test_local_policy_admits_a_share_of_each_limit(redis_server: RedisServer) -> None:
    """Redis killed under two instances with max_streams=4: each admits up to
    ceil(4 / 2) = 2 on its own (its running streams count), never a whole limit; back:
    every local slot becomes a lease."""
    async with instances(
        redis_server.url, 2, max_streams=4, fault_policy="local", lease_ttl=TTL
    ) as (a, b):
        await a.heartbeat()  # a has seen b
        assert a.instances_seen == 2
        held = [await a.acquire("k")]
        redis_server.kill()
        held.append(await a.acquire("k", timeout=0))
        assert a.status().degraded
        with pytest.raises(StreamLimitExceeded):
            await a.acquire("k", timeout=0)
        held += [await b.acquire("k", timeout=0), await b.acquire("k", timeout=0)]
        with pytest.raises(StreamLimitExceeded):
            await b.acquire("k", timeout=0)
        redis_server.start()
        await wait_until(lambda: not a.status().degraded and not b.status().degraded)
        assert await zcard(redis_server.url) == 4
        for permit in held[:2]:
            a.release(permit)
        for permit in held[2:]:
            b.release(permit)


async def test_unreachable_at_start_is_a_clear_error(redis_server: RedisServer) -> None:
    """Nothing listens: entering the limiter raises LimiterUnavailable naming the URL and
    the flag to check."""
    url = redis_server.url
    redis_server.kill()
    with pytest.raises(LimiterUnavailable, match="--redis-url") as caught:
        async with RedisLimiter(url, lease_ttl=TTL):
            pass
    assert url in str(caught.value)


async def test_the_url_password_appears_nowhere(tmp_path: object) -> None:
    """A password in the URL is never in a log line, an error or a repr: not when Redis
    is lost, not when the password is wrong."""
    import pathlib

    password = "s3cret-" + secrets.token_hex(6)
    server = RedisServer(pathlib.Path(str(tmp_path)), password=password)
    server.start()
    try:
        seen: list[str] = []
        with structlog.testing.capture_logs() as logs:
            limiter = RedisLimiter(server.url, lease_ttl=TTL, max_streams=1)
            seen.append(repr(limiter))
            async with limiter:
                permit = await limiter.acquire("k")
                seen.append(repr(limiter))
                server.kill()
                with pytest.raises(LimiterUnavailable) as caught:
                    await limiter.acquire("k")
                seen.append(str(caught.value))
                await limiter.heartbeat()
                server.start()
                await wait_until(lambda: not limiter.status().degraded)
                limiter.release(permit)
            wrong = server.url.replace(password, "not-" + password)
            with pytest.raises(LimiterUnavailable) as caught:
                async with RedisLimiter(wrong, lease_ttl=TTL):
                    pass
            seen.append(str(caught.value))
        assert limiter.secrets == (password,)
        assert any(entry["event"] == "limiter.degraded" for entry in logs)
        seen += [repr(entry) for entry in logs]
        for text in seen:
            assert password not in text, text
        assert "***" in seen[0]
    finally:
        server.kill()


async def test_resize_applies_here_and_is_recorded_in_redis(redis_server: RedisServer) -> None:
    """A raised limit admits a waiter at once; the limits are stored in Redis (the hash
    streammgr:limits) for the other instances."""
    async with instances(redis_server.url, 1, max_streams=1) as (limiter,):
        first = await limiter.acquire("k")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(limiter.acquire, "k", timeout=PATIENCE))
            await trio.testing.wait_all_tasks_blocked(0.05)
            limiter.resize(max_streams=2)
        assert limiter.snapshot().active == 2
        await limiter._jobs_idle.wait()
        async with redis_client(redis_server.url) as admin:
            assert await admin.hgetall("streammgr:limits") == {
                "max_streams": "2",
                "max_streams_per_key": "-1",
            }
        for permit in list(limiter._held.values()):
            limiter.release(permit)
        del first


_WORKER = """
import random, sys, trio
from streammgr.cluster import RedisLimiter

# Counts the slots held in Redis itself (live now, the peak), next to the leases.
COUNT = '''
local live = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[1]) > 0 and live > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], live)
end
redis.call('PEXPIRE', KEYS[1], 60000)
redis.call('PEXPIRE', KEYS[2], 60000)
return live
'''

async def main(url, name, rounds, hold_forever):
    ttl = 0.9 if hold_forever else 3.0  # the holder's slots must expire soon
    async with RedisLimiter(url, instance_id=name, max_streams=3, lease_ttl=ttl) as limiter:
        run = limiter.connection.run
        if hold_forever:
            for _ in range(3):
                await limiter.acquire("k", timeout=10)
            print("held", flush=True)
            await trio.sleep_forever()
        for _ in range(rounds):
            permit = await limiter.acquire(random.choice("ab"), timeout=20)
            await run(COUNT, ["test:live", "test:peak"], [1])
            await trio.sleep(random.uniform(0.01, 0.04))
            await run(COUNT, ["test:live", "test:peak"], [-1])
            limiter.release(permit)
    print("served", rounds, flush=True)

trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "hold")
"""


async def _worker(url: str, name: str, rounds: int, mode: str = "contend") -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-c", _WORKER, url, name, str(rounds), mode],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


async def test_three_processes_hold_the_limit_and_a_killed_one_frees_its_slots(
    redis_server: RedisServer,
) -> None:
    """Three processes contend for max_streams=3 (counted in Redis by the holders, and
    sampled as leases): never more than 3. Then a process holding all 3 is killed with
    SIGKILL: another instance gets a slot within the lease TTL (0.9 s)."""
    peak: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_peak, redis_server.url, peak)
        workers = [await _worker(redis_server.url, f"p{index}", 40) for index in range(3)]
        with trio.fail_after(PATIENCE * 3):
            outputs = [await _finish(worker) for worker in workers]
        nursery.cancel_scope.cancel()
    assert outputs == ["served 40"] * 3
    async with redis_client(redis_server.url) as admin:
        assert int(await admin.get("test:peak") or 0) == 3  # reached, never passed
    assert max(peak) <= 3
    holder = await _worker(redis_server.url, "holder", 0, "hold")
    try:
        assert holder.stdout is not None
        with trio.fail_after(PATIENCE):
            assert (await holder.stdout.receive_some(100)).startswith(b"held")
        # The same TTL as the holder's: a waiter polls every third of its own.
        async with instances(redis_server.url, 1, max_streams=3, lease_ttl=TTL) as (limiter,):
            holder.kill()
            killed_at = trio.current_time()
            permit = await limiter.acquire("k", timeout=PATIENCE)
            waited = trio.current_time() - killed_at
            limiter.release(permit)
    finally:
        holder.kill()
        await holder.wait()
    assert waited <= 0.9 * 1.5, waited


async def _finish(process: trio.Process) -> str:
    assert process.stdout is not None
    output = b""
    while chunk := await process.stdout.receive_some(1000):
        output += chunk
    assert await process.wait() == 0
    return output.decode().strip()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"lease_ttl": 0.01}, "lease_ttl must be from 0.05 to 3600 seconds"),
        ({"fault_policy": "open"}, "fault_policy must be 'fail-closed' or 'local'"),
        ({"max_streams": 0}, "max_streams must be a positive int"),
    ],
)
def test_bad_arguments_name_themselves(arguments: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        RedisLimiter("redis://127.0.0.1:6379/0", **arguments)  # type: ignore[arg-type]


def test_a_bad_url_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ValueError, match="redis://") as caught:
        RedisLimiter("http://user:hunter2-pw@redis:6379/0")
    assert "hunter2-pw" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown", "secrets"),
    [
        ("redis://redis:6379/0", "redis://redis:6379/0", ()),
        ("redis://:pw%40x@redis:6379/0", "redis://:***@redis:6379/0", ("pw%40x", "pw@x")),
        ("rediss://app:pw@[::1]:6380/1", "rediss://app:***@[::1]:6380/1", ("pw",)),
        ("redis://onlytoken@redis/0", "redis://:***@redis/0", ("onlytoken",)),
    ],
)
def test_the_url_as_shown(url: str, shown: str, secrets: tuple[str, ...]) -> None:
    connection = RedisConnection(url)
    assert connection.url == shown
    assert connection.secrets == secrets
    assert (
        repr(connection)
        == f"RedisConnection(url={shown!r}, instance_id={connection.instance_id!r})"
    )


async def test_retry_after_follows_the_hold_times_seen(redis_server: RedisServer) -> None:
    """A refusal's retry_after comes from how long this instance saw slots held (as the
    in-memory limiter's does), not a constant."""
    async with instances(redis_server.url, 1, max_streams=1) as (limiter,):
        held = await limiter.acquire("k")
        with pytest.raises(StreamLimitExceeded) as first:
            await limiter.acquire("k", timeout=0)
        assert first.value.retry_after == 1.0  # nothing seen yet: the floor
        await trio.sleep(1.5)  # the stream's life, on purpose
        limiter.release(held)
        held = await limiter.acquire("k", timeout=PATIENCE)
        with pytest.raises(StreamLimitExceeded) as second:
            await limiter.acquire("k", timeout=0)
        assert second.value.retry_after == 2.0  # ceil(1.5 s held x 1 ahead / 1 slot)
        assert second.value.limit == "max_streams"
        limiter.release(held)
