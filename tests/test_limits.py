"""Admission: global and per-key limits, FIFO, fairness, queue bound, timeouts, resize,
and a limiter that raises."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel
import trio.testing

import streammgr
from streammgr import CloseReason, FairLimiter, Limiter, Phase, StreamLimitExceeded, StreamManager
from streammgr._limits import LimiterSnapshot, Permit
from streammgr._validate import UNSET, _Unset

from .conftest import Probe


async def hold(manager: StreamManager, key: str, release: trio.Event, log: list[str]) -> None:
    """Open a stream of ``key`` and hold it until ``release`` is set."""

    async def producer() -> AsyncIterator[str]:
        await release.wait()
        yield key

    async with manager.open(producer, key=key) as stream:
        log.append(f"admitted {key}")
        async for _ in stream:
            pass


async def test_global_limit_and_fifo_order(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=2)
    order: list[int] = []
    permits: list[streammgr.Permit] = []
    async with trio.open_nursery() as nursery:
        permits.append(await limiter.acquire("k"))
        permits.append(await limiter.acquire("k"))

        async def wait(index: int) -> None:
            permit = await limiter.acquire("k")
            order.append(index)
            permits.append(permit)

        for index in range(5):
            nursery.start_soon(wait, index)
            await trio.testing.wait_all_tasks_blocked()  # arrival order is index order
        assert limiter.snapshot().waiting == 5
        for _ in range(5):
            limiter.release(permits.pop(0))
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.snapshot().active == 2
    assert order == [0, 1, 2, 3, 4]


async def test_full_key_never_blocks_other_keys(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=10, max_streams_per_key=1)
    admitted: list[str] = []
    async with trio.open_nursery() as nursery:
        first_a = await limiter.acquire("a")

        async def wait(key: str, name: str) -> None:
            await limiter.acquire(key)
            admitted.append(name)

        nursery.start_soon(wait, "a", "a2")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "a", "a3")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "b", "b1")
        await trio.testing.wait_all_tasks_blocked()
        # b1 arrived after a2 and a3 but is admitted at once: key a is full, not b.
        assert admitted == ["b1"]
        limiter.release(first_a)
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == ["b1", "a2"]
        snapshot = limiter.snapshot()
        assert snapshot.active_by_key == {"a": 1, "b": 1}
        assert snapshot.waiting_by_key == {"a": 1}
        nursery.cancel_scope.cancel()


async def test_oldest_runnable_waiter_goes_first_across_keys(
    autojump_clock: trio.abc.Clock,
) -> None:
    limiter = FairLimiter(max_streams=1)
    admitted: list[str] = []
    async with trio.open_nursery() as nursery:
        permit = await limiter.acquire("x")

        async def wait(key: str) -> None:
            got = await limiter.acquire(key)
            admitted.append(key)
            limiter.release(got)

        for key in ["c", "a", "b", "a"]:
            nursery.start_soon(wait, key)
            await trio.testing.wait_all_tasks_blocked()
        limiter.release(permit)
    assert admitted == ["c", "a", "b", "a"]


async def test_max_waiting_rejects_at_once(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=1, max_waiting=1)
    async with trio.open_nursery() as nursery:
        await limiter.acquire("k")
        nursery.start_soon(limiter.acquire, "k")
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(StreamLimitExceeded) as caught:
            await limiter.acquire("k")
        assert trio.current_time() == start
        assert caught.value.limit == "max_waiting"
        assert caught.value.retry_after >= 1
        assert caught.value.key == "k"
        assert "max_waiting=1" in str(caught.value)
        nursery.cancel_scope.cancel()


async def test_max_waiting_zero_never_queues(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=1, max_waiting=0)
    await limiter.acquire("k")
    with pytest.raises(StreamLimitExceeded) as caught:
        await limiter.acquire("k")
    assert caught.value.limit == "max_waiting"


async def test_acquire_timeout_names_the_blocking_limit(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=2, max_streams_per_key=1)
    await limiter.acquire("a")
    start = trio.current_time()
    with pytest.raises(StreamLimitExceeded) as caught:
        await limiter.acquire("a", timeout=30)
    assert trio.current_time() == pytest.approx(start + 30)
    assert caught.value.limit == "max_streams_per_key"
    await limiter.acquire("b")
    with pytest.raises(StreamLimitExceeded) as caught:
        await limiter.acquire("c", timeout=5)
    assert caught.value.limit == "max_streams"
    assert "acquire_timeout=5" in str(caught.value)
    snapshot = limiter.snapshot()
    assert snapshot.waiting == 0
    assert snapshot.waiting_by_key == {}


async def test_retry_after_follows_hold_times(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=1, max_waiting=0)
    for _ in range(50):
        permit = await limiter.acquire("k")
        await trio.sleep(20)
        limiter.release(permit)
    await limiter.acquire("k")
    with pytest.raises(StreamLimitExceeded) as caught:
        await limiter.acquire("k")
    assert caught.value.retry_after == pytest.approx(20, abs=1)


async def test_cancelled_waiter_leaves_the_queue(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=1)
    permit = await limiter.acquire("k")
    admitted: list[str] = []
    async with trio.open_nursery() as nursery:

        async def wait(name: str, scope_holder: list[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                scope_holder.append(scope)
                await limiter.acquire("k")
                admitted.append(name)

        first: list[trio.CancelScope] = []
        nursery.start_soon(wait, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "second", [])
        await trio.testing.wait_all_tasks_blocked()
        first[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.snapshot().waiting == 1
        limiter.release(permit)
    assert admitted == ["second"]


async def test_release_is_idempotent(autojump_clock: trio.abc.Clock) -> None:
    limiter = FairLimiter(max_streams=1)
    permit = await limiter.acquire("k")
    limiter.release(permit)
    limiter.release(permit)
    assert limiter.snapshot().active == 0


async def test_raising_limits_admits_waiters_at_once(autojump_clock: trio.abc.Clock) -> None:
    release = trio.Event()
    log: list[str] = []
    async with StreamManager(max_streams=1, max_streams_per_key=1) as manager:
        async with trio.open_nursery() as nursery:
            for key in ["a", "a", "a", "b"]:
                nursery.start_soon(hold, manager, key, release, log)
                await trio.testing.wait_all_tasks_blocked()
            assert log == ["admitted a"]
            manager.set_limits(max_streams=10)
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["admitted a", "admitted b"]
            manager.set_limits(max_streams_per_key=3)
            await trio.testing.wait_all_tasks_blocked()
            assert log.count("admitted a") == 3
            # Lowering never cancels active streams.
            manager.set_limits(max_streams=1, max_streams_per_key=1)
            await trio.testing.wait_all_tasks_blocked()
            assert manager.stats().active == 4
            assert manager.stats().max_streams == 1
            release.set()
        assert manager.stats().closed_by_reason["completed"] == 4


async def test_lowered_limit_applies_to_new_streams(autojump_clock: trio.abc.Clock) -> None:
    release = trio.Event()
    log: list[str] = []
    async with StreamManager(max_streams=3) as manager, trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(hold, manager, "k", release, log)
        await trio.testing.wait_all_tasks_blocked()
        manager.set_limits(max_streams=1)
        with pytest.raises(StreamLimitExceeded):
            async with manager.open(Probe().ticker, 1, key="k", acquire_timeout=1):
                pass  # pragma: no cover
        release.set()


def test_bad_resize_changes_nothing() -> None:
    limiter = FairLimiter(max_streams=3, max_streams_per_key=2)
    with pytest.raises(ValueError, match="max_streams_per_key must be a positive int"):
        limiter.resize(max_streams=10, max_streams_per_key=0)
    snapshot = limiter.snapshot()
    assert (snapshot.max_streams, snapshot.max_streams_per_key) == (3, 2)


async def test_manager_rejection_is_recorded(autojump_clock: trio.abc.Clock, probe: Probe) -> None:
    async with StreamManager(max_streams=1, max_waiting=0) as manager:
        async with manager.open(probe.ticker, 10) as first:
            await first.__anext__()
            with pytest.raises(StreamLimitExceeded) as caught:
                async with manager.open(probe.ticker, 10, key="late"):
                    pass  # pragma: no cover
            assert caught.value.limit == "max_waiting"
        stats = manager.stats()
        assert stats.rejected_total == 1
        assert stats.closed_by_reason["rejected"] == 1
        rejected = [info for info in manager.history() if info.key == "late"]
        assert rejected[0].close_reason is streammgr.CloseReason.REJECTED
        assert probe.started == 1  # the rejected producer never ran


async def test_manager_acquire_timeout(autojump_clock: trio.abc.Clock, probe: Probe) -> None:
    async with StreamManager(max_streams=1, acquire_timeout=4) as manager:
        async with manager.open(probe.ticker, 100) as first:
            await first.__anext__()
            start = trio.current_time()
            with pytest.raises(StreamLimitExceeded) as caught:
                async with manager.open(probe.ticker, 1):
                    pass  # pragma: no cover
            assert trio.current_time() == pytest.approx(start + 4)
            assert caught.value.limit == "max_streams"


def test_manager_refuses_limits_and_limiter_together() -> None:
    with pytest.raises(ValueError, match="not both"):
        StreamManager(max_streams=3, limiter=FairLimiter(max_streams=3))


async def test_waiters_giving_up_leave_no_garbage(autojump_clock: trio.abc.Clock) -> None:
    """While every slot is held, thousands of waiters that time out must not grow
    the limiter's internal heap without bound."""
    limiter = FairLimiter(max_streams=1)
    await limiter.acquire("held")
    for index in range(5000):
        with pytest.raises(StreamLimitExceeded):
            await limiter.acquire(f"k{index % 7}", timeout=0.01)
    assert limiter.snapshot().waiting == 0
    assert len(limiter._ready) <= 64 + 2 * 7


# -- a limiter that raises -----------------------------------------------------------------


class FlakyLimiter(Limiter):
    """A FairLimiter whose acquire or release can be made to fail, like a remote one."""

    def __init__(self) -> None:
        self.inner = FairLimiter(max_streams=2)
        self.fail_acquire: Exception | None = None
        self.fail_release: Exception | None = None

    async def acquire(self, key: str, *, timeout: float | None = None) -> Permit:
        if self.fail_acquire is not None:
            await trio.lowlevel.checkpoint()
            raise self.fail_acquire
        return await self.inner.acquire(key, timeout=timeout)

    def release(self, permit: Permit) -> None:
        self.inner.release(permit)
        if self.fail_release is not None:
            raise self.fail_release

    def resize(
        self,
        *,
        max_streams: int | _Unset | None = UNSET,
        max_streams_per_key: int | _Unset | None = UNSET,
        max_waiting: int | _Unset | None = UNSET,
    ) -> None:
        self.inner.resize(
            max_streams=max_streams,
            max_streams_per_key=max_streams_per_key,
            max_waiting=max_waiting,
        )

    def snapshot(self) -> LimiterSnapshot:
        return self.inner.snapshot()


async def test_limiter_acquire_failure_is_a_typed_error_with_its_own_reason(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    limiter = FlakyLimiter()
    limiter.fail_acquire = ConnectionError("redis: connection refused")
    async with StreamManager(limiter=limiter) as manager:
        stream = manager.open(probe.ticker, 3, key="tenant-a")
        with pytest.raises(streammgr.LimiterError) as caught:
            async with stream:
                pass
        error = caught.value
        assert isinstance(error, streammgr.StreamError)
        assert error.__cause__ is limiter.fail_acquire
        assert (error.key, error.stream_id) == ("tenant-a", stream.id)
        assert "acquire" in str(error)
        assert "ConnectionError: redis: connection refused" in str(error)
        assert probe.started == 0
        assert manager.streams() == []
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.LIMITER_ERROR
        assert info.error is not None
        assert "redis: connection refused" in info.error
        assert manager.stats().closed_by_reason["limiter_error"] == 1


@pytest.mark.parametrize("fail_at", ["completed", "cancelled", "failed", "rejected"])
async def test_limiter_release_failure_still_closes_the_record(
    autojump_clock: trio.abc.Clock, probe: Probe, fail_at: str
) -> None:
    limiter = FlakyLimiter()
    async with StreamManager(limiter=limiter, acquire_timeout=1) as manager:
        limiter.fail_release = ConnectionError("redis: timed out")

        async def failing() -> AsyncIterator[int]:
            raise ValueError("upstream broke")
            yield 0

        if fail_at == "completed":
            async with manager.open(probe.ticker, 2) as stream:
                assert [item async for item in stream] == [0, 1]
            expected = CloseReason.COMPLETED
        elif fail_at == "cancelled":
            with pytest.raises(streammgr.StreamCancelled):
                async with manager.open(probe.ticker, 100) as stream:
                    async for _ in stream:
                        manager.cancel(stream.id)
            expected = CloseReason.CANCELLED
        elif fail_at == "failed":
            with pytest.raises(ValueError, match="upstream broke"):
                async with manager.open(failing) as stream:
                    async for _ in stream:
                        pass
            expected = CloseReason.PRODUCER_ERROR
        else:
            # A stream cancelled while waiting, in the instant it was admitted.
            limiter.fail_release = None
            async with manager.open(probe.ticker, 100), manager.open(probe.ticker, 100):
                async with trio.open_nursery() as nursery:

                    async def wait_for_slot() -> None:
                        with pytest.raises(streammgr.StreamLimitExceeded):
                            async with manager.open(probe.ticker, 1):
                                pass

                    nursery.start_soon(wait_for_slot)
                limiter.fail_release = ConnectionError("redis: timed out")
            stream = None
            expected = CloseReason.REJECTED
        assert manager.streams() == []
        if stream is not None:
            info = manager.get(stream.id)
            assert info is not None
            assert info.close_reason is expected
            assert info.phase is Phase.CLOSED
        assert manager.stats().closed_total >= 1


async def test_limiter_release_failure_is_logged(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    from structlog.testing import capture_logs

    limiter = FlakyLimiter()
    limiter.fail_release = ConnectionError("redis: timed out")
    with capture_logs() as logs:
        async with StreamManager(limiter=limiter) as manager:
            async with manager.open(probe.ticker, 1) as stream:
                assert [item async for item in stream] == [0]
    (event,) = [entry for entry in logs if entry["event"] == "stream.limiter_error"]
    assert event["log_level"] == "error"
    assert event["operation"] == "release"
    assert event["stream_id"] == stream.id
    assert "ConnectionError: redis: timed out" in event["error"]


class FailsWhenCancelled(FlakyLimiter):
    """A remote limiter whose cleanup fails when its caller gives up waiting."""

    async def acquire(self, key: str, *, timeout: float | None = None) -> Permit:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise ConnectionError("redis: connection lost while dequeuing") from None
        raise AssertionError("unreachable")


@pytest.mark.parametrize("how", ["cancel", "shutdown"])
async def test_limiter_failing_after_a_cancel_is_recorded_as_what_the_reader_got(
    autojump_clock: trio.abc.Clock, probe: Probe, how: str
) -> None:
    """acquire raising after cancel()/aclose() cancelled the wait: open raises
    LimiterError, but the record says cancelled/shutdown (the first reason) and
    closed_by_reason['limiter_error'] stays 0: the reader and the registry disagree."""
    limiter: Limiter = FailsWhenCancelled()
    errors: list[BaseException] = []
    async with StreamManager(limiter=limiter) as manager:
        async with trio.open_nursery() as nursery:

            async def opener() -> None:
                try:
                    async with manager.open(probe.ticker, 1):
                        pass
                except streammgr.StreamError as exc:
                    errors.append(exc)

            nursery.start_soon(opener)
            await trio.testing.wait_all_tasks_blocked()
            (waiting,) = manager.streams()
            if how == "cancel":
                assert manager.cancel(waiting.id)
            else:
                await manager.aclose()
    info = manager.get(waiting.id)
    assert info is not None
    (error,) = errors
    got_limiter_error = isinstance(error, streammgr.LimiterError)
    assert got_limiter_error == (info.close_reason is CloseReason.LIMITER_ERROR), (error, info)


class LifetimeLimiter(FlakyLimiter):
    """Records when the manager enters and exits it, and each release."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def __aenter__(self) -> LifetimeLimiter:
        await trio.sleep(1)  # a connection being made
        self.events.append("enter")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.events.append(f"exit, {self.inner.snapshot().active} held")

    def release(self, permit: Permit) -> None:
        self.events.append("release")
        super().release(permit)


async def test_the_manager_enters_its_limiter_first_and_exits_it_last(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """A limiter that needs a connection and tasks (Redis) starts before the first
    stream and stops after the last slot is given back."""
    limiter = LifetimeLimiter()
    async with StreamManager(limiter=limiter) as manager:
        assert limiter.events == ["enter"]
        async with manager.open(probe.ticker, 2) as stream:
            assert [item async for item in stream] == [0, 1]
    assert limiter.events == ["enter", "release", "exit, 0 held"]


async def test_the_default_limiter_lifetime_and_status_are_no_ops() -> None:
    limiter = FairLimiter(1)
    async with limiter as entered:
        assert entered is limiter
    assert limiter.status() == streammgr.LimiterStatus(degraded=False, detail=None, leases_lost=0)


async def test_a_limiter_unavailable_gives_open_its_retry_after(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """The limiter's backend lost (Redis, fail-closed): open() raises LimiterError with
    the limiter's retry_after, for the HTTP edge's Retry-After."""
    limiter = FlakyLimiter()
    limiter.fail_acquire = streammgr.LimiterUnavailable("redis lost", retry_after=3.0)
    async with StreamManager(limiter=limiter) as manager:
        with pytest.raises(streammgr.LimiterError) as caught:
            async with manager.open(probe.ticker, 1):
                pass
    assert caught.value.retry_after == 3.0
    assert isinstance(caught.value.__cause__, streammgr.LimiterUnavailable)


class SecretLimiter(FlakyLimiter):
    """A limiter whose backend URL holds a password (as a Redis URL may)."""

    @property
    def secrets(self) -> tuple[str, ...]:
        return ("pw-Backend-3301",)


async def test_the_limiters_secrets_are_the_managers(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """A limiter's error that quotes its URL's password reaches no reader and no record:
    the manager scrubs the limiter's secrets without being told them."""
    limiter = SecretLimiter()
    limiter.fail_acquire = ConnectionError("AUTH failed for redis://:pw-Backend-3301@redis:6379")
    async with StreamManager(limiter=limiter) as manager:
        with pytest.raises(streammgr.LimiterError) as caught:
            async with manager.open(probe.ticker, 1):
                pass
        (info,) = manager.history()
    assert "pw-Backend-3301" not in str(caught.value)
    assert "pw-Backend-3301" not in str(info.error)
