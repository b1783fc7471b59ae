"""StreamManager under hostile use: what a careless application or a failing limiter does.

Each test here reproduces a defect found by a hostile trial of the public API; each
failed before its fix.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel
import trio.testing

import streammgr
from streammgr import CloseReason, FairLimiter, Limiter, Phase, StreamManager
from streammgr._limits import UNSET, LimiterSnapshot, Permit, _Unset
from streammgr._logging import describe_error

from .conftest import Probe


class UnprintableError(Exception):
    """An application bug: ``__str__`` reads an attribute that is not there."""

    def __str__(self) -> str:
        return str(self.missing)  # type: ignore[attr-defined]


# -- 1. describing an error never raises, and never runs before the cancel ----------


async def test_reader_error_whose_str_raises_still_closes_deterministically(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    error = UnprintableError()
    async with StreamManager(max_streams=1) as manager:
        with pytest.raises(UnprintableError) as caught:
            async with manager.open(probe.ticker, 1000) as stream:
                async for _ in stream:
                    raise error
        assert caught.value is error
        # The producer's cleanup ran before the block exited, and the slot is back.
        assert probe.cleanups == 1
        assert manager.streams() == []
        assert manager.stats().active == 0
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.READER_EXIT
        assert info.error is not None
        assert info.error.startswith("UnprintableError")
        assert "str() raised AttributeError" in info.error


async def test_producer_error_whose_str_raises_reaches_its_reader_only(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    error = UnprintableError()

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise error

    async with StreamManager() as manager:
        async with trio.open_nursery() as nursery:
            other: list[int] = []

            async def bystander() -> None:
                async with manager.open(probe.ticker, 5) as stream:
                    other.extend([item async for item in stream])

            nursery.start_soon(bystander)
            with pytest.raises(UnprintableError) as caught:
                async with manager.open(broken) as stream:
                    async for _ in stream:
                        pass
            assert caught.value is error
        assert other == [0, 1, 2, 3, 4]  # the manager and its other streams lived on
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.PRODUCER_ERROR
        assert info.error is not None
        assert "str() raised AttributeError" in info.error


def test_describe_error_never_raises() -> None:
    class WrongType(Exception):
        def __str__(self) -> str:
            return 5  # type: ignore[return-value]  # noqa: PLE0307

    assert describe_error(WrongType()).startswith("WrongType: <str() raised TypeError")
    assert describe_error(UnprintableError()).startswith("UnprintableError: <str() raised")


# -- 2. nothing of a stream survives its close --------------------------------------


class Tracked(Exception):
    """Weak-referenceable, so a test can see whether anything still holds it."""


@pytest.mark.parametrize("timeouts", [{"deadline": 3600.0}, {"idle_timeout": 600.0}])
async def test_closed_streams_are_not_kept_by_the_watchdog(
    autojump_clock: trio.abc.Clock, timeouts: dict[str, float]
) -> None:
    refs: list[weakref.ref[Tracked]] = []

    async def failing() -> AsyncIterator[int]:
        error = Tracked("upstream broke")
        refs.append(weakref.ref(error))
        yield 1
        raise error

    async with StreamManager(**timeouts) as manager:  # type: ignore[arg-type]
        for _ in range(3):
            with pytest.raises(Tracked):
                async with manager.open(failing) as stream:
                    async for _ in stream:
                        pass
        del stream
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        assert [ref() for ref in refs] == [None, None, None]
        assert manager.stats().closed_total == 3


async def test_completed_stream_records_are_freed_at_close(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def two() -> AsyncIterator[int]:
        yield 1
        yield 2

    async with StreamManager(idle_timeout=600) as manager:
        async with manager.open(two) as stream:
            assert [item async for item in stream] == [1, 2]
        record = weakref.ref(stream._record)
        del stream
        # Trio's run loop holds the last outcome it resumed this task with (the
        # channel's EndOfChannel, whose traceback has the reader's frame) until
        # this task's next step: a checkpoint, not a leak.
        await trio.lowlevel.checkpoint()
        gc.collect()
        assert record() is None


# -- 3. once the end has been read, the stream is completed --------------------------


@pytest.mark.parametrize("timeouts", [{"reader_timeout": 5.0}, {"deadline": 5.0}])
async def test_reader_that_read_the_end_then_lingers_is_completed(
    autojump_clock: trio.abc.Clock, timeouts: dict[str, float]
) -> None:
    async def two() -> AsyncIterator[int]:
        yield 1
        yield 2

    async with StreamManager(max_streams=1, **timeouts) as manager:  # type: ignore[arg-type]
        async with manager.open(two) as stream:
            assert [item async for item in stream] == [1, 2]
            # The end has been read: closed and its slot back, before the block exits.
            assert manager.streams() == []
            assert manager.stats().active == 0
            await trio.sleep(60)  # the reader lingers past every timeout
            assert manager.cancel(stream.id) is False
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.COMPLETED
        assert info.closed_at == pytest.approx(0.0)


async def test_slot_goes_back_when_the_producer_finishes(autojump_clock: trio.abc.Clock) -> None:
    """The slot is the upstream's: a finished producer frees it even while the reader
    still has buffered items to take, and stats().active says the same."""

    async def three() -> AsyncIterator[int]:
        for index in range(3):
            yield index

    async with StreamManager(max_streams=1, buffer_size=8) as manager:
        async with manager.open(three) as stream:
            await trio.testing.wait_all_tasks_blocked()
            # The producer has finished; its three items wait in the buffer.
            assert manager.stats().active == 0
            (info,) = manager.streams()
            assert info.phase is not Phase.CLOSED
            async with manager.open(three) as second:  # admitted at once
                assert [item async for item in second] == [0, 1, 2]
            assert [item async for item in stream] == [0, 1, 2]


async def test_failed_stream_not_yet_read_is_not_active(autojump_clock: trio.abc.Clock) -> None:
    async def failing() -> AsyncIterator[int]:
        raise ValueError("upstream broke")
        yield 0

    async with StreamManager(max_streams=1) as manager:
        async with manager.open(failing) as stream:
            await trio.testing.wait_all_tasks_blocked()
            stats = manager.stats()
            assert stats.active == 0
            assert stats.active_by_key == {}
            (info,) = manager.streams()
            assert info.phase is Phase.CLOSING
            with pytest.raises(ValueError, match="upstream broke"):
                await stream.__anext__()
        assert manager.streams() == []


# -- 4. timeouts below the clock's resolution ------------------------------------------


@pytest.mark.parametrize("name", ["reader_timeout", "idle_timeout", "deadline", "acquire_timeout"])
def test_timeouts_below_a_millisecond_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be at least 0\.001 seconds, got 1e-13"):
        StreamManager(**{name: 1e-13})  # type: ignore[arg-type]


async def test_watchdog_cannot_spin_when_a_timeout_vanishes_in_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Even a timeout that slipped past validation (set on the record directly, as
    a bug could) must not hang the run: the watchdog never re-checks sooner than
    the shortest timeout allowed."""
    autojump_clock.jump(1e6)  # Trio's real clock starts far from 0, too
    assert trio.current_time() + 1e-13 == trio.current_time()

    async def slow() -> AsyncIterator[int]:
        await trio.sleep(10)
        yield 1

    async with StreamManager(idle_timeout=1.0) as manager:
        async with manager.open(slow) as stream:
            stream._record.reader_timeout = 1e-13  # now + 1e-13 == now at this clock
            stream._record.idle_timeout = None
            assert [item async for item in stream] == [1]
    assert trio.current_time() == pytest.approx(1e6 + 10.0)


# -- 5. a limiter that raises -------------------------------------------------------


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


# -- 6. an empty cancel reason -------------------------------------------------------


async def test_cancel_with_an_empty_reason_records_no_detail(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager() as manager:
        with pytest.raises(streammgr.StreamCancelled) as caught:
            async with manager.open(probe.ticker, 100) as stream:
                async for _ in stream:
                    assert manager.cancel(stream.id, reason="")
        assert caught.value.reason == ""
        assert str(caught.value) == f"stream {stream.id} was cancelled (cancelled)"
        info = manager.get(stream.id)
        assert info is not None
        assert info.detail is None
        assert info.close_reason is CloseReason.CANCELLED


# -- 7. BaseExceptions that are not Exceptions propagate, as in Trio ------------------


class Abort(BaseException):
    """A custom BaseException: by convention, not for ``except Exception``."""


@pytest.mark.parametrize("error_class", [Abort, KeyboardInterrupt])
async def test_base_exception_from_a_producer_ends_the_manager_and_propagates(
    autojump_clock: trio.abc.Clock, probe: Probe, error_class: type[BaseException]
) -> None:
    error = error_class("stop everything")

    async def aborting() -> AsyncIterator[int]:
        await trio.sleep(1)
        raise error
        yield 0

    with pytest.raises(error_class) as caught:
        async with StreamManager() as manager:
            async with trio.open_nursery() as nursery:

                async def bystander() -> None:
                    async with manager.open(probe.ticker, 100) as stream:
                        async for _ in stream:
                            pass

                nursery.start_soon(bystander)
                async with manager.open(aborting) as stream:
                    async for _ in stream:
                        pass
    # Raised as itself, not wrapped in an ExceptionGroup.
    assert caught.value is error
    assert probe.cleanups == 1
    assert manager.streams() == []
    info = manager.get(stream.id)
    assert info is not None
    assert info.close_reason is CloseReason.PRODUCER_ERROR
    assert info.error == f"{error_class.__name__}: stop everything"
    others = [item for item in manager.history() if item.id != stream.id]
    assert [item.close_reason for item in others] == [CloseReason.SHUTDOWN]
    assert math.isfinite(trio.current_time())
