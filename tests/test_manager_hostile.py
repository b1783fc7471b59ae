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
from streammgr import CloseReason, FairLimiter, Limiter, Phase, StreamManager, StreamSender
from streammgr._limits import LimiterSnapshot, Permit
from streammgr._logging import describe_error
from streammgr._validate import UNSET, _Unset

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


# == found by a hostile review of the fixes above ===================================


# -- promise 2: nothing of a stream survives its close ------------------------------


async def test_watchdog_keeps_nothing_of_a_stream_it_rechecked(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The watchdog's run() keeps the last record it looked at in a local variable
    while it sleeps until the next check: a stream rechecked once (idle_timeout, items
    flowing) that then fails stays reachable, with its exception, traceback and
    producer frames, until the next heap entry pops (here 400 s after the close)."""
    refs: list[weakref.ref[Tracked]] = []

    async def fails_after_a_recheck() -> AsyncIterator[int]:
        yield 1
        await trio.sleep(500)
        yield 2  # the watchdog looks at t=600, sees this item, re-arms for t=1100
        await trio.sleep(200)
        error = Tracked("upstream broke")
        refs.append(weakref.ref(error))
        raise error

    async with StreamManager(idle_timeout=600) as manager:
        with pytest.raises(Tracked):
            async with manager.open(fails_after_a_recheck) as stream:
                async for _ in stream:
                    pass
        del stream
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        assert trio.current_time() == pytest.approx(700.0)
        assert refs[0]() is None


async def test_watchdog_keeps_nothing_of_a_stream_whose_timeout_it_fired(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Same local: after expiring a deadline the watchdog sleeps (forever, if no other
    stream has a timeout) holding the closed stream's record."""

    async def slow() -> AsyncIterator[int]:
        await trio.sleep(100)
        yield 1

    async with StreamManager(deadline=10) as manager:
        with pytest.raises(streammgr.DeadlineExceeded):
            async with manager.open(slow) as stream:
                async for _ in stream:
                    pass
        record = weakref.ref(stream._record)
        del stream
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        assert record() is None


# -- promise 7: BaseExceptions that are not Exceptions ------------------------------


async def push_with_a_nursery(send: StreamSender[int]) -> None:
    """A push producer holding a nursery, like WebSocketSource: cancelled from
    outside, it raises a BaseExceptionGroup of Cancelled (no error at all)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        await send.send(1)
        await trio.sleep_forever()


async def test_a_group_of_cancellations_is_not_a_fatal_producer_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An outer cancellation reaching a push producer that has a nursery (its group
    holds only Cancelled) is taken for a producer's fatal BaseException: the stream is
    recorded producer_error with error "BaseExceptionGroup: ...", its reader gets
    StreamCancelled(producer_error), and the manager stops admitting while its block
    is still running. A pull producer cancelled the same way is recorded shutdown."""
    errors: list[BaseException] = []
    async with trio.open_nursery() as outer:
        with trio.CancelScope() as manager_scope:
            async with StreamManager() as manager:

                async def reader(*, task_status: trio.TaskStatus[None]) -> None:
                    try:
                        async with manager.open(push_with_a_nursery) as stream:
                            task_status.started()
                            async for _ in stream:
                                pass
                    except streammgr.StreamCancelled as exc:
                        errors.append(exc)

                await outer.start(reader)  # a reader outside the manager's scope
                await trio.testing.wait_all_tasks_blocked()
                with trio.CancelScope(shield=True):  # the block is still busy
                    manager_scope.cancel()
                    await trio.sleep(1)
                    closing_while_the_block_runs = manager.stats().closing
    (info,) = manager.history()
    assert info.close_reason is CloseReason.SHUTDOWN, info
    assert info.error is None
    assert [exc.close_reason for exc in errors] == [CloseReason.SHUTDOWN]  # type: ignore[attr-defined]
    assert not closing_while_the_block_runs


async def test_the_blocks_own_error_survives_a_group_of_cancellations(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Same misclassification, worse effect: __aexit__ unwraps the nursery's group
    and raises the producer's group of Cancelled "as itself"; the enclosing scope
    absorbs it, and the exception the manager's block raised is gone without a trace."""
    async with trio.open_nursery() as outer:
        with pytest.raises(ValueError, match="the block's own error"):
            with trio.CancelScope() as manager_scope:
                async with StreamManager() as manager:

                    async def reader(*, task_status: trio.TaskStatus[None]) -> None:
                        with pytest.raises(streammgr.StreamCancelled):
                            async with manager.open(push_with_a_nursery) as stream:
                                task_status.started()
                                async for _ in stream:
                                    pass

                    await outer.start(reader)
                    await trio.testing.wait_all_tasks_blocked()
                    with trio.CancelScope(shield=True):
                        manager_scope.cancel()
                        await trio.sleep(1)
                        raise ValueError("the block's own error")


async def slow_cleanup() -> AsyncIterator[int]:
    """Ticks forever; its cleanup takes a second (closing an upstream connection)."""
    try:
        while True:
            await trio.sleep(1)
            yield 0
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(1)


async def test_fatal_error_from_a_stream_already_ending_still_shuts_down_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A producer whose stream already has a close reason (here cancel(); the same with
    a timeout or a reader that left) raising a BaseException skips the fatal branch:
    the manager still ends (the exception crosses the nursery), but the other streams
    are not recorded shutdown "at once": their readers see the nursery's cancellation
    and they are recorded reader_exit."""
    error = Abort("stop everything")

    async def aborts_in_cleanup() -> AsyncIterator[int]:
        try:
            await trio.sleep(100)
            yield 0
        finally:
            raise error

    with pytest.raises(Abort):
        async with StreamManager() as manager:
            async with trio.open_nursery() as nursery:

                async def bystander() -> None:
                    async with manager.open(slow_cleanup) as stream:
                        async for _ in stream:
                            pass

                nursery.start_soon(bystander)
                with pytest.raises(streammgr.StreamCancelled):
                    async with manager.open(aborts_in_cleanup) as ending:
                        await trio.sleep(1)
                        assert manager.cancel(ending.id)
                        async for _ in ending:
                            pass
    others = [info for info in manager.history() if info.id != ending.id]
    assert [(info.close_reason, info.detail) for info in others] == [
        (CloseReason.SHUTDOWN, "the manager shut down")
    ]


async def test_fatal_error_leaves_the_manager_with_its_cause_intact(
    autojump_clock: trio.abc.Clock,
) -> None:
    """`raise lone from None` in StreamManager.__aexit__ overwrites the producer's own
    __cause__ (and sets __suppress_context__): "as itself" loses its chain."""
    root = OSError("config file missing")

    async def exits() -> AsyncIterator[int]:
        await trio.sleep(1)
        raise SystemExit(2) from root
        yield 0

    with pytest.raises(SystemExit) as caught:
        async with StreamManager() as manager:
            async with manager.open(exits) as stream:
                async for _ in stream:
                    pass
    assert caught.value.__cause__ is root


# -- the watch() change feed ----------------------------------------------------------


async def test_watch_feed_has_a_closed_event_for_every_stream_closed_at_shutdown(
    autojump_clock: trio.abc.Clock,
) -> None:
    """_cancel_everything() closes the watchers when it *asks* the streams to end; the
    streams close later (after their cleanup), so a watcher's loop has already ended
    and their closed events are lost. A UI mirroring streams() keeps them forever."""

    closed: list[str] = []
    async with trio.open_nursery() as nursery:
        async with StreamManager(shutdown_grace=0) as manager:

            async def watcher(*, task_status: trio.TaskStatus[None]) -> None:
                async with manager.watch() as events:
                    task_status.started()
                    async for event in events:
                        if event.kind == "closed":
                            assert event.stream is not None
                            closed.append(event.stream.id)

            await nursery.start(watcher)

            async def reader() -> None:
                with pytest.raises(streammgr.StreamCancelled):
                    async with manager.open(slow_cleanup) as stream:
                        async for _ in stream:
                            pass

            nursery.start_soon(reader)
            await trio.sleep(5)
    assert sorted(closed) == sorted(info.id for info in manager.history())
    assert len(closed) == 1


# -- promise 1: describing an error never raises -----------------------------------------


class StrRaisesBase(Exception):
    """``__str__`` raising a BaseException (a KeyboardInterrupt landing in a slow
    ``__str__``, or a custom BaseException)."""

    def __str__(self) -> str:
        raise Abort("from __str__")


async def test_reader_error_whose_str_raises_a_base_exception_still_closes_deterministically(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """describe_error catches only Exception: in _end it raises after the cancel and
    before the shielded drain, so the block exits before the producer's cleanup ran,
    with __str__'s exception instead of the reader's."""
    error = StrRaisesBase()
    async with StreamManager() as manager:
        with pytest.raises(StrRaisesBase) as caught:
            async with manager.open(probe.ticker, 1000) as stream:
                async for _ in stream:
                    raise error
        assert caught.value is error
        assert probe.cleanups == 1
        assert manager.streams() == []


async def test_producer_error_whose_str_raises_a_base_exception_does_not_crash_the_manager(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Producer side: _producer_ended describes the error in the producer's task, so
    __str__'s BaseException ends the manager's nursery."""
    error = StrRaisesBase()

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise error

    async with StreamManager() as manager:
        with pytest.raises(StrRaisesBase):
            async with manager.open(broken) as stream:
                async for _ in stream:
                    pass
        await trio.sleep(1)
        assert not manager.stats().closing
    info = manager.get(stream.id)
    assert info is not None
    assert info.close_reason is CloseReason.PRODUCER_ERROR


# -- promise 5: a limiter that raises ---------------------------------------------------


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


# -- promise 6: an empty cancel reason -------------------------------------------------


async def test_empty_cancel_reason_is_not_filled_in_by_a_later_detail(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """_finish treats detail None as "not set yet": a waiting stream cancelled with
    reason="" whose reader's task is cancelled in the same instant is recorded
    cancelled with the detail "the reader's task was cancelled" (with reason="ops" the
    detail stays "ops")."""
    async with StreamManager(max_streams=1) as manager:
        async with manager.open(probe.ticker, 100), trio.open_nursery() as nursery:
            scopes: list[trio.CancelScope] = []

            async def waiter() -> None:
                with trio.CancelScope() as scope:
                    scopes.append(scope)
                    async with manager.open(probe.ticker, 1):
                        pass

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            (waiting,) = [info for info in manager.streams() if info.admitted_at is None]
            assert manager.cancel(waiting.id, reason="")
            scopes[0].cancel()
    info = manager.get(waiting.id)
    assert info is not None
    assert info.close_reason is CloseReason.CANCELLED
    assert info.detail is None


# -- a closed stream's record changes after its close -------------------------------------


async def test_item_in_flight_at_the_close_is_counted_the_same_everywhere(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An item handed to a parked reader in the step that closes the stream is returned
    to the reader after the record closed, and __anext__ updates the CLOSED record:
    stream.info() says 2 items, manager.get() / history() / the closed event / the
    stream.closed log say 1. Here the close is a fatal BaseException raised right after
    the hand-off (deterministic); the same race happens with cancel() and timeouts
    when the producer finishes before the reader's task runs (a randomized stress hit it
    with deadline=4 in 3 of 300 seeds)."""

    async def push(send: StreamSender[str]) -> None:
        await send.send("a")
        await trio.sleep(1)
        await send.send("b")  # handed straight to the parked reader
        raise Abort("stop")  # the record closes now, before the reader's task runs

    received: list[str] = []
    with pytest.raises(Abort):
        async with StreamManager() as manager:
            with pytest.raises(streammgr.StreamCancelled):
                async with manager.open(push) as stream:
                    async for item in stream:
                        received.append(item)
    recorded = manager.get(stream.id)
    assert recorded is not None
    assert stream.info() == recorded  # a closed stream's snapshot does not change
    assert recorded.items == len(received)
