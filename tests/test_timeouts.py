"""The timeout watchdog: check-time arithmetic, the heap's upkeep, nothing of a closed
stream kept, and timeouts below the clock's resolution refused."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel
import trio.testing

import streammgr
from streammgr import CloseReason, StreamManager
from streammgr._lifecycle import State
from streammgr._registry import StreamRecord
from streammgr._timeouts import next_check


def admitted_record(now: float, **timeouts: float) -> StreamRecord:
    record = StreamRecord("s-1", "k", {}, now, 0.0)
    record.admitted_at = record.produced_at = now
    record.reader_timeout = timeouts.get("reader_timeout")
    record.idle_timeout = timeouts.get("idle_timeout")
    record.deadline = timeouts.get("deadline")
    return record


def test_next_check_producer_turn() -> None:
    record = admitted_record(100.0, idle_timeout=10, reader_timeout=3, deadline=50)
    # Nothing produced: the producer's turn. Idle expires at 110, but the reader's
    # turn could start now and expire at now + 3.
    assert next_check(record, 101.0) == (104.0, None, "")
    assert next_check(record, 109.0)[0] == 110.0
    assert next_check(record, 110.0)[0] == 110.0
    reason = next_check(record, 110.0)[1]
    assert reason is CloseReason.IDLE_TIMEOUT


def test_next_check_reader_turn() -> None:
    record = admitted_record(100.0, idle_timeout=10, reader_timeout=3)
    record.produced, record.produced_at = 1, 105.0  # an item waits for the reader
    assert next_check(record, 106.0) == (108.0, None, "")
    assert next_check(record, 108.0)[1] is CloseReason.READER_TIMEOUT
    record.items, record.last_item_at = 1, 107.0  # the reader took it
    assert next_check(record, 108.0) == (111.0, None, "")  # now + reader_timeout < 117


def test_next_check_deadline_wins() -> None:
    record = admitted_record(0.0, deadline=5, idle_timeout=100)
    assert next_check(record, 4.0)[0] == 5.0
    assert next_check(record, 5.0)[1] is CloseReason.DEADLINE


def test_finished_producer_is_the_readers_turn_only() -> None:
    record = admitted_record(0.0, idle_timeout=1, reader_timeout=10)
    record.state = State.DRAINING  # the producer has finished
    assert next_check(record, 0.5) == (10.0, None, "")


async def test_stale_entries_are_swept(autojump_clock: trio.abc.Clock) -> None:
    async def one() -> AsyncIterator[int]:
        yield 1

    async with StreamManager(deadline=10_000) as manager:
        for _ in range(3000):
            async with manager.open(one) as stream:
                async for _ in stream:
                    pass
        heap = manager._runner.watchdog._heap
        # Closed streams' entries hold no reference to them, and are swept as they
        # become most of the heap: their number stays bounded.
        assert len(heap) <= 1025
        assert all(entry[2] is None for entry in heap)
        with pytest.raises(streammgr.DeadlineExceeded):
            async with manager.open(one, deadline=1) as stream:
                await trio.sleep(5)
                async for _ in stream:
                    pass
        assert len(heap) <= 1025
        assert all(entry[2] is None for entry in heap)


# -- the watchdog keeps nothing of a stream after its close --------------------------------


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


# -- timeouts below the clock's resolution ------------------------------------------------


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
