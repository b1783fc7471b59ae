"""Registry: snapshots, phases, timings, counts, history, stats, the change feed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import streammgr
from streammgr import CloseReason, Phase, RegistryEvent, StreamManager, StreamSender

from .conftest import Probe
from .manager_helpers import slow_cleanup


async def test_phases_and_timings(autojump_clock: trio.abc.Clock) -> None:
    gate = trio.Event()

    async def producer() -> AsyncIterator[bytes]:
        await trio.sleep(2)  # "connecting"
        yield b"hello"
        await gate.wait()
        yield b"world!"

    release = trio.Event()
    async with StreamManager(max_streams=1) as manager, trio.open_nursery() as nursery:

        async def blocker() -> None:
            async def wait() -> AsyncIterator[int]:
                await release.wait()
                yield 0

            async with manager.open(wait, key="blocker") as stream:
                async for _ in stream:
                    pass

        nursery.start_soon(blocker)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as inner:
            stream_ids: list[str] = []

            async def read() -> None:
                async with manager.open(producer, key="k", labels={"model": "m"}) as stream:
                    stream_ids.append(stream.id)
                    async for _ in stream:
                        pass

            inner.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            waiting = next(s for s in manager.streams() if s.key == "k")
            assert waiting.phase is Phase.WAITING
            assert waiting.admitted_at is None
            await trio.sleep(3)
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            connecting = manager.get(waiting.id)
            assert connecting is not None
            assert connecting.phase is Phase.CONNECTING
            assert connecting.admitted_at == pytest.approx(3)
            await trio.sleep(2.5)
            streaming = manager.get(waiting.id)
            assert streaming is not None
            assert streaming.phase is Phase.STREAMING
            assert streaming.first_item_at == pytest.approx(5)
            assert (streaming.items, streaming.bytes) == (1, 5)
            assert streaming.to_dict(now=trio.current_time())["idle"] == pytest.approx(0.5)
            gate.set()
        closed = manager.get(stream_ids[0])
        assert closed is not None
        assert closed.phase is Phase.CLOSED
        assert closed.close_reason is CloseReason.COMPLETED
        assert (closed.items, closed.bytes) == (2, 11)
        assert closed.duration(now=1e9) == pytest.approx(5.5)
        assert closed.labels == {"model": "m"}


async def test_snapshots_are_immutable_and_detached(autojump_clock: trio.abc.Clock) -> None:
    async def producer() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    async with StreamManager() as manager, manager.open(producer) as stream:
        before = stream.info()
        await stream.__anext__()
        after = stream.info()
        assert (before.items, after.items) == (0, 1)
        with pytest.raises(AttributeError):
            after.items = 5  # type: ignore[misc]
        with pytest.raises(TypeError):
            after.labels["x"] = "y"  # type: ignore[index]


async def test_item_size_counts_bytes(autojump_clock: trio.abc.Clock) -> None:
    async def producer(send: StreamSender[dict[str, str]]) -> None:
        await send.send({"text": "hello"})
        await send.send({"text": "hi"})

    async with StreamManager() as manager:
        async with manager.open(producer, item_size=lambda item: len(item["text"])) as stream:
            async for _ in stream:
                pass
        info = manager.get(stream.id)
        assert info is not None
        assert (info.items, info.bytes) == (2, 7)


async def test_history_is_bounded_and_stats_count_by_reason(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager(history_size=3) as manager:
        ids = []
        for _ in range(5):
            async with manager.open(probe.ticker, 2) as stream:
                ids.append(stream.id)
                async for _ in stream:
                    pass
        assert [info.id for info in manager.history()] == ids[2:]
        assert manager.get(ids[0]) is None
        async with manager.open(probe.ticker, 2) as stream:
            await stream.__anext__()
        stats = manager.stats()
        assert stats.opened_total == 6
        assert stats.admitted_total == 6
        assert stats.closed_total == 6
        assert stats.closed_by_reason["completed"] == 5
        assert stats.closed_by_reason["reader_exit"] == 1
        assert stats.active == stats.waiting == 0


async def test_ten_thousand_snapshots(autojump_clock: trio.abc.Clock) -> None:
    async def producer() -> AsyncIterator[int]:
        await trio.sleep_forever()
        yield 0  # pragma: no cover

    async with StreamManager() as manager, trio.open_nursery() as nursery:

        async def read(key: str) -> None:
            async with manager.open(producer, key=key):
                await trio.sleep_forever()

        for index in range(10_000):
            nursery.start_soon(read, f"k{index % 10}")
        await trio.testing.wait_all_tasks_blocked()
        snapshots = manager.streams()
        assert len(snapshots) == 10_000
        assert len({info.id for info in snapshots}) == 10_000
        assert manager.stats().active_by_key["k3"] == 1000
        nursery.cancel_scope.cancel()
    assert manager.streams() == []


async def test_watch_reports_opened_admitted_closed(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    events: list[RegistryEvent] = []
    # The watcher's task is outside the manager: its loop ends when the manager closes.
    async with trio.open_nursery() as nursery, StreamManager() as manager:

        async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with manager.watch() as watcher:
                task_status.started()
                async for event in watcher:
                    events.append(event)

        await nursery.start(watch)
        async with manager.open(probe.ticker, 2, key="w") as stream:
            async for _ in stream:
                pass
        await trio.testing.wait_all_tasks_blocked()
        assert [event.kind for event in events] == ["opened", "admitted", "closed"]
        assert all(event.stream is not None and event.stream.id == stream.id for event in events)
        closed = events[-1].stream
        assert closed is not None
        assert closed.close_reason is CloseReason.COMPLETED


async def test_slow_watcher_gets_overflow_not_backpressure(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager() as manager, manager.watch(max_buffer=4) as watcher:
        for _ in range(3):
            async with manager.open(probe.ticker, 1) as stream:
                async for _ in stream:
                    pass
        kinds = []
        with trio.move_on_after(1):
            async for event in watcher:
                kinds.append(event.kind)
        # 9 events into a buffer of 4: the unread ones were dropped for one overflow.
        assert kinds[0] == "overflow"
        assert kinds[1:] == ["admitted", "closed"]


def test_watch_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_buffer must be a positive int"):
        streammgr.RegistryWatcher(0)


async def test_producer_context_reports_connection_and_bytes(
    autojump_clock: trio.abc.Clock,
) -> None:
    gate = trio.Event()
    seen: list[str | None] = []

    async def source() -> AsyncIterator[str]:
        context = streammgr.current_producer()
        assert context is not None
        seen.append(context.stream_id)
        await trio.sleep(1)
        context.connected()
        context.add_bytes(100)
        await gate.wait()
        yield "event"

    assert streammgr.current_producer() is None
    async with StreamManager() as manager, manager.open(source) as stream:
        await trio.sleep(0.5)
        info = stream.info()
        assert (info.phase, info.bytes) == (Phase.CONNECTING, 0)
        await trio.sleep(1)
        info = stream.info()
        assert (info.phase, info.bytes) == (Phase.FIRST_ITEM, 100)
        assert seen == [stream.id]
        gate.set()
        assert stream.info().phase is Phase.FIRST_ITEM
        assert await stream.__anext__() == "event"
        info = stream.info()
        # The producer finished right after handing its one item over.
        assert (info.phase, info.items, info.bytes) == (Phase.DRAINING, 1, 105)
        assert [item async for item in stream] == []
        assert stream.info().phase is Phase.CLOSED  # the end has been read
    # The reader's task never sees the producer's context.
    assert streammgr.current_producer() is None


def test_snapshot_fields_follow_streaminfo_order() -> None:
    from streammgr._registry import StreamRecord

    record = StreamRecord("s-1", "k", {"a": "b"}, 1.0, 2.0)
    for index, name in enumerate(streammgr.StreamInfo._fields):
        setattr(record, name, f"value-{index}")
    info = record.snapshot()
    assert tuple(info) == tuple(f"value-{index}" for index in range(len(info)))


# -- the change feed at shutdown -----------------------------------------------------------


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
