"""The timeout watchdog: check-time arithmetic and the heap's upkeep."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
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
