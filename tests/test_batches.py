"""Items that travel together: send_batch, BatchIterator / batched, ManagedStream.batches()."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import streammgr
from streammgr import BatchIterator, CloseReason, StreamManager, StreamSender, batched


@batched
async def reads(*batches: list[Any]) -> AsyncGenerator[list[Any], None]:
    """One list per 'upstream read', a second apart."""
    for batch in batches:
        await trio.sleep(1)
        yield batch


async def test_a_batch_producer_hands_each_list_over_whole(autojump_clock: trio.abc.Clock) -> None:
    async with StreamManager() as manager:
        async with manager.open(reads, [b"a", b"bb"], [], [b"ccc"]) as stream:
            got = [batch async for batch in stream.batches()]
        assert got == [[b"a", b"bb"], [b"ccc"]]  # the empty read is no hand-off
        (info,) = manager.history()
        assert (info.items, info.bytes) == (3, 6)  # items, not batches
        assert info.close_reason is CloseReason.COMPLETED


async def test_items_of_batches_are_iterated_one_by_one(autojump_clock: trio.abc.Clock) -> None:
    async with StreamManager() as manager:
        async with manager.open(reads, [b"a", b"b"], [b"c"]) as stream:
            assert [item async for item in stream] == [b"a", b"b", b"c"]
        assert manager.history()[0].items == 3


async def test_batches_continue_where_item_iteration_stopped(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with StreamManager() as manager, manager.open(reads, [1, 2, 3], [4]) as stream:
        assert await stream.__anext__() == 1
        assert stream.info().items == 1
        assert [batch async for batch in stream.batches()] == [[2, 3], [4]]
        assert stream.info().items == 4


async def test_ready_single_items_are_gathered(autojump_clock: trio.abc.Clock) -> None:
    async def burst(send: StreamSender[int]) -> None:
        for index in range(5):
            await send.send(index)
        await send.send_batch([5, 6])
        await send.send(7)

    async with StreamManager(buffer_size=16) as manager, manager.open(burst) as stream:
        await trio.testing.wait_all_tasks_blocked()
        # Five single items were ready at once; the batch stays a batch of its own.
        assert [batch async for batch in stream.batches()] == [[0, 1, 2, 3, 4], [5, 6], [7]]


async def test_send_batch_copies_skips_empty_and_waits_for_the_reader(
    autojump_clock: trio.abc.Clock,
) -> None:
    handed: list[str] = []

    async def producer(send: StreamSender[str]) -> None:
        buffer = ["x", "y"]
        await send.send_batch(buffer)
        buffer.clear()  # the reader's batch is a copy
        await send.send_batch([])
        handed.append("first")
        await send.send_batch(iter(["z"]))
        handed.append("second")

    async with StreamManager(buffer_size=0) as manager, manager.open(producer) as stream:
        await trio.testing.wait_all_tasks_blocked()
        assert handed == []  # unbuffered: the first batch waits for the reader
        assert [batch async for batch in stream.batches()] == [["x", "y"], ["z"]]
        assert handed == ["first", "second"]


async def test_a_producer_error_comes_after_the_batches_before_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    @batched
    async def failing() -> AsyncGenerator[list[int], None]:
        yield [1, 2]
        raise ValueError("upstream broke")

    async with StreamManager() as manager:
        got: list[list[int]] = []
        with pytest.raises(ValueError, match="upstream broke"):
            async with manager.open(failing) as stream:
                async for batch in stream.batches():
                    got.append(batch)
        assert got == [[1, 2]]
        assert manager.history()[0].close_reason is CloseReason.PRODUCER_ERROR


async def test_cancel_wins_over_the_rest_of_a_batch(autojump_clock: trio.abc.Clock) -> None:
    async with StreamManager() as manager:
        with pytest.raises(streammgr.StreamCancelled):
            async with manager.open(reads, [1, 2, 3]) as stream:
                assert await stream.__anext__() == 1
                manager.cancel(stream.id, reason="operator")
                await stream.__anext__()  # 2 is in the reader's hands, yet: cancelled
        info = manager.history()[0]
        assert (info.close_reason, info.items) == (CloseReason.CANCELLED, 1)


async def test_reader_timeout_counts_a_waiting_batch(autojump_clock: trio.abc.Clock) -> None:
    async with StreamManager(reader_timeout=10) as manager:
        async with manager.open(reads, [1, 2]) as stream:
            assert await stream.__anext__() == 1
            # Item 2 waits in the reader's own hands: still the reader's turn.
            await trio.sleep(60)
            with pytest.raises(streammgr.ReaderTimeout):
                await stream.__anext__()
        info = manager.history()[0]
        assert info.close_reason is CloseReason.READER_TIMEOUT
        assert info.closed_at == pytest.approx(1 + 10)


async def test_a_reader_busy_with_a_batch_is_not_timed_out(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with StreamManager(reader_timeout=10) as manager:
        async with manager.open(reads, list(range(20))) as stream:
            async for _ in stream:
                await trio.sleep(5)  # 100 s over the batch, never 10 s between pulls
        assert manager.history()[0].close_reason is CloseReason.COMPLETED


async def test_idle_timeout_with_batches(autojump_clock: trio.abc.Clock) -> None:
    @batched
    async def stalls() -> AsyncGenerator[list[int], None]:
        yield [1, 2]
        await trio.sleep(100)
        yield [3]

    async with StreamManager(idle_timeout=30) as manager:
        with pytest.raises(streammgr.IdleTimeout):
            async with manager.open(stalls) as stream:
                async for _ in stream.batches():
                    pass
        assert manager.history()[0].closed_at == pytest.approx(30)


async def test_a_batch_parked_in_send_is_not_counted_when_the_producer_gives_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def impatient(send: StreamSender[int]) -> None:
        with trio.move_on_after(5):
            await send.send_batch([1, 2, 3])
        await trio.sleep_forever()

    async with (
        StreamManager(reader_timeout=10, buffer_size=0) as manager,
        manager.open(impatient) as stream,
    ):
        await trio.sleep(20)  # the reader never pulls; the producer gave up after 5 s
        assert stream.info().close_reason is None  # not blamed for a batch it never got


async def test_batch_iterator_alone_yields_items_and_closes_its_generator() -> None:
    closed: list[bool] = []

    @batched
    async def source() -> AsyncGenerator[list[str], None]:
        try:
            yield ["a", "b"]
            yield []
            yield ["c"]
            yield ["d", "e"]
        finally:
            closed.append(True)

    iterator = source()
    assert isinstance(iterator, BatchIterator)
    assert [await iterator.__anext__(), await iterator.__anext__()] == ["a", "b"]
    assert await iterator.__anext__() == "c"
    assert await iterator.__anext__() == "d"
    assert await iterator.anext_batch() == ["e"]  # what is left of a batch begun
    with pytest.raises(StopAsyncIteration):
        await iterator.anext_batch()
    await iterator.aclose()
    assert closed == [True]


async def test_batched_keeps_the_function_name() -> None:
    assert reads.__name__ == "reads"
    iterator = reads([1])
    await iterator.aclose()


async def test_a_plain_iterator_with_anext_batch_is_read_in_batches(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def lists() -> AsyncIterator[list[int]]:
        yield [1, 2]
        yield [3]

    async with StreamManager() as manager:
        async with manager.open(lambda: BatchIterator(lists())) as stream:
            assert [batch async for batch in stream.batches()] == [[1, 2], [3]]


async def test_a_loop_stopped_mid_batch_leaves_the_rest_for_anext_batch() -> None:
    async def lists() -> AsyncIterator[list[int]]:
        yield [1, 2, 3]
        yield [4]

    iterator = BatchIterator(lists())
    seen = []
    async for item in iterator:
        seen.append(item)
        if item == 2:
            break
    assert seen == [1, 2]
    assert await iterator.anext_batch() == [3]
    assert [item async for item in iterator] == [4]
    await iterator.aclose()


# -- batches at the edges: a shutdown, a retried send, empty reads, cancel reasons, has_ready ---


async def test_shutdown_of_a_failed_stream_keeps_record_and_reader_in_agreement(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A producer failed after handing over a batch; the manager shuts down before
    the reader has taken it. The record closes (FAILED + shutdown) with the items
    counted so far, yet the reader still takes the whole buffered batch."""

    async def producer(send: StreamSender[bytes]) -> None:
        await send.send_batch([b"a", b"bb", b"ccc"])
        raise ValueError("upstream broke")

    got: list[bytes] = []
    async with StreamManager() as manager:
        async with manager.open(producer) as stream:
            await trio.testing.wait_all_tasks_blocked()  # the producer has failed
            await manager.aclose(grace=0)  # e.g. the service is stopping
            with pytest.raises((ValueError, streammgr.StreamCancelled)):
                async for item in stream:
                    got.append(item)
        (info,) = manager.history()
        assert (info.items, info.bytes) == (len(got), sum(map(len, got)))


async def test_a_producer_retrying_a_blocked_send_does_not_hide_a_stalled_reader(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A 'drop when the reader is slow' push producer: each tick it tries to hand a
    batch over for 1 s and gives up. The reader stopped reading at once, its buffer
    full of batches produced long ago, yet every abandoned attempt re-stamps the
    producer's activity, so reader_timeout (10 s) never fires."""

    async def ticker(send: StreamSender[int]) -> None:
        tick = 0
        while True:
            with trio.move_on_after(1):
                await send.send_batch([tick, tick + 1])
            tick += 2

    async with StreamManager(reader_timeout=10, buffer_size=1) as manager:
        async with manager.open(ticker) as stream:
            await trio.sleep(100)  # the reader never pulls
            assert stream.info().close_reason is CloseReason.READER_TIMEOUT


async def test_empty_reads_do_not_starve_the_other_tasks(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A batch producer whose reads complete nothing (keep-alives, a part of an event)
    and that does not itself reach a checkpoint: ``_next_list`` / ``_pump`` skip the
    empty lists in a loop with no checkpoint of their own, so the producer's task runs
    on without ever letting another task run: no timeout, cancel or reader can act.
    (Bounded here at 10,000 empty reads; unbounded, it hangs the whole Trio run.)"""
    other_ran = trio.Event()
    spins = 0

    @batched
    async def keepalives() -> AsyncGenerator[list[int], None]:
        nonlocal spins
        while not other_ran.is_set() and spins < 10_000:
            spins += 1
            yield []  # a read that completed no event
        yield [spins]

    async def other() -> None:
        other_ran.set()

    async with StreamManager() as manager, trio.open_nursery() as nursery:
        async with manager.open(keepalives) as stream:
            nursery.start_soon(other)
            await stream.__anext__()
        assert spins < 10_000


@pytest.mark.parametrize(
    "close_reason",
    [CloseReason.COMPLETED, CloseReason.UPSTREAM_IDLE_TIMEOUT, CloseReason.PRODUCER_ERROR],
)
async def test_cancel_refuses_a_reason_a_stream_only_ends_with_by_itself(
    autojump_clock: trio.abc.Clock, close_reason: CloseReason
) -> None:
    """``cancel(id, close_reason=COMPLETED)`` used to close the record while its reader
    went on taking the buffered batch (and ended cleanly, as if the producer had
    finished): such reasons are refused, and nothing is disturbed."""

    async def producer(send: StreamSender[bytes]) -> None:
        await send.send_batch([b"a", b"bb"])
        await trio.sleep_forever()

    async with StreamManager() as manager, manager.open(producer) as stream:
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match=rf"close_reason must be .* got {close_reason}"):
            manager.cancel(stream.id, close_reason=close_reason)
        with pytest.raises(ValueError, match="close_reason must be"):
            manager.cancel_key(stream.key, close_reason=close_reason)
        assert [await stream.__anext__(), await stream.__anext__()] == [b"a", b"bb"]
        assert manager.cancel(stream.id, close_reason=CloseReason.CLIENT_DISCONNECTED)
        with pytest.raises(streammgr.StreamCancelled):
            await stream.__anext__()
    (info,) = manager.history()
    assert (info.close_reason, info.items) == (CloseReason.CLIENT_DISCONNECTED, 2)


async def test_has_ready_tells_whether_the_next_batch_will_wait() -> None:
    # The streaming response skips its keep-alive scope when a batch is ready.
    sent = trio.Event()

    async def producer(send: streammgr.StreamSender[int]) -> None:
        await send.send_batch([1, 2])
        await send.send(3)
        sent.set()
        await trio.sleep_forever()

    async with streammgr.StreamManager() as manager:
        stream = manager.open(producer, buffer_size=4)
        assert not stream._has_ready()  # not entered
        async with stream:
            await sent.wait()
            assert stream._has_ready()
            batches = stream.batches()
            assert await anext(batches) == [1, 2]
            assert stream._has_ready()
            assert await anext(stream) == 3
            assert not stream._has_ready()
            manager.cancel(stream.id)
