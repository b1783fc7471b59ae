"""StreamManager: deterministic close, cancellation, timeouts, shutdown, arguments
(errors: test_manager_errors.py; how an end is recorded: test_manager_close.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel
import trio.testing

import streammgr
from streammgr import CloseReason, Phase, StreamManager, StreamSender

from .conftest import Probe


def living_tasks() -> int:
    return trio.lowlevel.current_statistics().tasks_living


# -- guarantee 1: deterministic close ------------------------------------------------


async def test_items_are_delivered_in_order_and_completion_is_recorded(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager() as manager:
        async with manager.open(probe.ticker, 5, key="tenant-a", labels={"model": "m"}) as stream:
            items = [item async for item in stream]
        assert items == [0, 1, 2, 3, 4]
        assert probe.cleanups == 1
        assert manager.streams() == []
        (closed,) = manager.history()
        assert closed.id == stream.id
        assert closed.close_reason is CloseReason.COMPLETED
        assert closed.items == 5
        assert closed.labels == {"model": "m"}


async def test_break_cancels_producer_and_cleanup_runs_before_exit_returns(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager() as manager:
        async with manager.open(probe.ticker, 1000) as stream:
            async for item in stream:
                if item == 2:
                    break
            assert probe.cleanups == 0
        # The block's exit returned: the producer has finished its cleanup.
        assert probe.cleanups == 1
        assert probe.live == 0
        assert manager.streams() == []
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.READER_EXIT
        assert info.items == 3
        assert manager.stats().active == 0


async def test_exception_in_reader_block_propagates_unchanged(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    error = KeyError("reader bug")
    async with StreamManager() as manager:
        with pytest.raises(KeyError) as caught:
            async with manager.open(probe.ticker, 1000) as stream:
                async for _ in stream:
                    raise error
        assert caught.value is error
        assert probe.cleanups == 1
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.READER_EXIT
        assert info.error == "KeyError: 'reader bug'"


async def test_reader_task_cancelled_closes_producer(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager() as manager:
        with trio.move_on_after(3.5):
            async with manager.open(probe.ticker, 1000) as stream:
                async for _ in stream:
                    pass
        assert trio.current_time() == pytest.approx(3.5)
        assert probe.cleanups == 1
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.READER_EXIT
        assert info.detail == "the reader's task was cancelled"
        assert info.items == 3


async def test_generator_suspended_at_yield_is_closed_with_aclose(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A reader that stops pulling leaves the generator parked at ``yield``: its
    ``finally`` (with an await in it, like closing a response) must still run."""
    events: list[str] = []

    async def producer() -> AsyncIterator[int]:
        try:
            for index in range(100):
                yield index
        finally:
            await trio.sleep(1)  # runs because aclose() is shielded
            events.append("closed upstream")

    async with StreamManager() as manager, manager.open(producer) as stream:
        async for _ in stream:
            break
    assert events == ["closed upstream"]


async def test_no_task_is_left_after_streams_close(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager() as manager:
        await trio.testing.wait_all_tasks_blocked()
        baseline = living_tasks()
        async with trio.open_nursery() as nursery:
            for _ in range(20):

                async def read_some() -> None:
                    async with manager.open(probe.ticker, 100) as stream:
                        async for item in stream:
                            if item == 3:
                                break

                nursery.start_soon(read_some)
        assert living_tasks() == baseline
        assert probe.cleanups == 20
        assert manager.streams() == []


async def test_push_style_producer(autojump_clock: trio.abc.Clock) -> None:
    cleanup: list[str] = []

    async def producer(send: StreamSender[str], prefix: str) -> None:
        try:
            for index in range(3):
                await send.send(f"{prefix}{index}")
        finally:
            cleanup.append(send.stream_id)

    async with StreamManager() as manager, manager.open(producer, "x") as stream:
        assert [item async for item in stream] == ["x0", "x1", "x2"]
    assert cleanup == [stream.id]


async def test_callable_returning_async_iterator(autojump_clock: trio.abc.Clock) -> None:
    class Feed:
        def __init__(self) -> None:
            self.items = [1, 2]

        def __aiter__(self) -> Feed:
            return self

        async def __anext__(self) -> int:
            if not self.items:
                raise StopAsyncIteration
            await trio.lowlevel.checkpoint()
            return self.items.pop(0)

    async with StreamManager() as manager, manager.open(Feed) as stream:
        assert [item async for item in stream] == [1, 2]


async def test_back_pressure_producer_waits_for_reader(autojump_clock: trio.abc.Clock) -> None:
    produced: list[int] = []

    async def producer() -> AsyncIterator[int]:
        for index in range(10):
            produced.append(index)
            yield index

    async with StreamManager(buffer_size=0) as manager, manager.open(producer) as stream:
        await trio.testing.wait_all_tasks_blocked()
        # Unbuffered: one item produced and parked in send, nothing more.
        assert produced == [0]
        assert await stream.__anext__() == 0
        await trio.testing.wait_all_tasks_blocked()
        assert produced == [0, 1]
    async with StreamManager(buffer_size=3) as manager, manager.open(producer) as stream:
        await trio.testing.wait_all_tasks_blocked()
        assert len(produced) == 2 + 4  # three buffered, one parked in send


# -- guarantee 3: cancellation from outside ------------------------------------------


async def test_cancel_streaming_stream_raises_in_reader_and_frees_slot(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager(max_streams=1) as manager:
        with pytest.raises(streammgr.StreamCancelled) as caught:
            async with manager.open(probe.ticker, 1000) as stream:
                async for item in stream:
                    if item == 1:
                        assert manager.cancel(stream.id, reason="operator") is True
        assert caught.value.reason == "operator"
        assert caught.value.close_reason is CloseReason.CANCELLED
        assert caught.value.stream_id == stream.id
        assert probe.cleanups == 1
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.CANCELLED
        assert info.detail == "operator"
        assert manager.cancel(stream.id) is False  # already closed


async def test_cancel_frees_slot_before_reader_returns(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """The slot is released when the producer has finished, even if the reader is
    busy elsewhere and only notices on its next pull."""
    async with StreamManager(max_streams=1) as manager:
        async with manager.open(probe.ticker, 1000) as stream:
            await stream.__anext__()
            manager.cancel(stream.id)
            await trio.testing.wait_all_tasks_blocked()
            assert probe.cleanups == 1
            assert manager.stats().active == 0
            # Another stream can be admitted while the first reader is still here.
            async with manager.open(probe.ticker, 1) as other:
                assert [item async for item in other] == [0]
            with pytest.raises(streammgr.StreamCancelled):
                await stream.__anext__()


async def test_cancel_waiting_stream(autojump_clock: trio.abc.Clock, probe: Probe) -> None:
    async with StreamManager(max_streams=1) as manager, trio.open_nursery() as nursery:
        outcome: list[BaseException] = []

        async def holder() -> None:
            async with manager.open(probe.ticker, 1000) as stream:
                async for _ in stream:
                    pass

        async def waiter() -> None:
            try:
                async with manager.open(probe.ticker, 1000, key="w"):
                    pytest.fail("must not be admitted")
            except streammgr.StreamCancelled as exc:
                outcome.append(exc)

        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        (waiting,) = [s for s in manager.streams() if s.phase is Phase.WAITING]
        assert manager.cancel(waiting.id, reason="not today")
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 1
        assert isinstance(outcome[0], streammgr.StreamCancelled)
        assert outcome[0].reason == "not today"
        assert manager.stats().waiting == 0
        info = manager.get(waiting.id)
        assert info is not None
        assert info.close_reason is CloseReason.CANCELLED
        assert info.admitted_at is None
        nursery.cancel_scope.cancel()


async def test_cancel_key_ends_only_that_key(autojump_clock: trio.abc.Clock, probe: Probe) -> None:
    results: dict[str, str] = {}
    async with StreamManager() as manager, trio.open_nursery() as nursery:

        async def read(name: str, key: str) -> None:
            try:
                async with manager.open(probe.ticker, 5, key=key) as stream:
                    async for _ in stream:
                        pass
                results[name] = "completed"
            except streammgr.StreamCancelled as exc:
                results[name] = exc.reason

        for name, key in [("a1", "a"), ("a2", "a"), ("b1", "b")]:
            nursery.start_soon(read, name, key)
        await trio.testing.wait_all_tasks_blocked()
        assert manager.cancel_key("a", reason="tenant suspended") == 2
        assert manager.cancel_key("a") == 0  # already ending
        assert manager.cancel_key("nobody") == 0
    assert results == {"a1": "tenant suspended", "a2": "tenant suspended", "b1": "completed"}
    assert probe.cleanups == 3
    assert manager._registry.by_key == {}  # the per-key index keeps no closed stream


async def test_cancel_after_producer_finished_but_before_reader_read_the_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def producer() -> AsyncIterator[int]:
        yield 1

    async with StreamManager(buffer_size=5) as manager, manager.open(producer) as stream:
        await trio.testing.wait_all_tasks_blocked()
        # The producer has finished: its slot is back, the record still open.
        assert manager.stats().active == 0
        assert len(manager.streams()) == 1
        assert manager.cancel(stream.id)
        assert manager.streams() == []  # closed at once: no producer to wait for
        with pytest.raises(streammgr.StreamCancelled):
            await stream.__anext__()


# -- guarantee 4: abandoned readers and timeouts --------------------------------------


async def test_reader_timeout(autojump_clock: trio.abc.Clock, probe: Probe) -> None:
    async with StreamManager(reader_timeout=30, buffer_size=0) as manager:
        async with manager.open(probe.ticker, 1000, 1.0) as stream:
            assert await stream.__anext__() == 0
            start = trio.current_time()
            await trio.sleep(1000)  # the reader walks away without leaving the block
            assert probe.cleanups == 1
            with pytest.raises(streammgr.ReaderTimeout) as caught:
                await stream.__anext__()
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.READER_TIMEOUT
        # Item 1 was ready one second after the reader's last pull; 30 s later: cut.
        assert info.closed_at == pytest.approx(start + 1 + 30)
        assert caught.value.timeout == 30
        assert isinstance(caught.value, streammgr.StreamCancelled)


async def test_reader_timeout_with_a_buffer_counts_from_the_oldest_untaken_item(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """With buffer_size > 0 the producer goes on handing over while the buffer has
    room; what it hands over later does not postpone the cut of a reader that
    stopped: reader_timeout counts from the oldest item the reader has not taken."""
    async with StreamManager(reader_timeout=30, buffer_size=4) as manager:
        async with manager.open(probe.ticker, 1000, 1.0) as stream:
            assert await stream.__anext__() == 0
            start = trio.current_time()
            await trio.sleep(1000)
            with pytest.raises(streammgr.ReaderTimeout):
                await stream.__anext__()
        info = manager.get(stream.id)
        assert info is not None
        # Item 1, the oldest the reader never took, was handed over at start + 1.
        assert info.closed_at == pytest.approx(start + 1 + 30)


async def test_slow_but_steady_reader_is_not_timed_out(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager(reader_timeout=5, idle_timeout=5) as manager:
        async with manager.open(probe.ticker, 20, 0.1) as stream:
            count = 0
            async for _ in stream:
                await trio.sleep(4)  # slow, but always back within 5 s
                count += 1
        assert count == 20


async def test_idle_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def hung() -> AsyncIterator[int]:
        yield 1
        await trio.sleep_forever()
        yield 2  # pragma: no cover

    async with StreamManager(idle_timeout=10) as manager:
        start = trio.current_time()
        with pytest.raises(streammgr.IdleTimeout) as caught:
            async with manager.open(hung) as stream:
                async for _ in stream:
                    pass
        assert trio.current_time() == pytest.approx(start + 10)
        assert caught.value.close_reason is CloseReason.IDLE_TIMEOUT
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.IDLE_TIMEOUT
        assert info.items == 1


async def test_idle_timeout_counts_time_to_first_item(autojump_clock: trio.abc.Clock) -> None:
    async def never() -> AsyncIterator[int]:
        await trio.sleep_forever()
        yield 1  # pragma: no cover

    async with StreamManager(idle_timeout=7) as manager:
        start = trio.current_time()
        with pytest.raises(streammgr.IdleTimeout):
            async with manager.open(never) as stream:
                async for _ in stream:
                    pass
        assert trio.current_time() == pytest.approx(start + 7)


async def test_idle_timeout_does_not_fire_while_reader_is_behind(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    """A producer parked in send (the reader is slow) is not idle."""
    async with StreamManager(idle_timeout=5, reader_timeout=50) as manager:
        async with manager.open(probe.ticker, 3, 0.1) as stream:
            items = []
            async for item in stream:
                items.append(item)
                await trio.sleep(20)  # longer than idle_timeout, shorter than reader_timeout
        assert items == [0, 1, 2]


async def test_deadline(autojump_clock: trio.abc.Clock, probe: Probe) -> None:
    async with StreamManager(deadline=10) as manager:
        start = trio.current_time()
        with pytest.raises(streammgr.DeadlineExceeded) as caught:
            async with manager.open(probe.ticker, 1000, 1.5) as stream:
                async for _ in stream:
                    pass
        assert trio.current_time() == pytest.approx(start + 10)
        assert caught.value.timeout == 10
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.DEADLINE
        assert info.items == 6  # items at t=1.5 .. 9.0; the one due at 10.5 was cut


async def test_per_stream_timeouts_override_defaults(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with StreamManager(deadline=5) as manager:
        async with manager.open(probe.ticker, 20, deadline=None) as stream:
            assert len([item async for item in stream]) == 20
        with pytest.raises(streammgr.DeadlineExceeded):
            async with manager.open(probe.ticker, 20, deadline=2) as stream:
                async for _ in stream:
                    pass
        assert trio.current_time() == pytest.approx(22)


# -- guarantee 5: shutdown -----------------------------------------------------------


async def test_shutdown_grace_lets_streams_finish_then_cancels_the_rest(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    results: dict[str, object] = {}

    async def read(manager: StreamManager, name: str, count: int) -> None:
        try:
            async with manager.open(probe.ticker, count) as stream:
                results[name] = len([item async for item in stream])
        except streammgr.StreamCancelled as exc:
            results[name] = exc.close_reason

    async with trio.open_nursery() as nursery:
        async with StreamManager(shutdown_grace=10) as manager:
            nursery.start_soon(read, manager, "short", 5)
            nursery.start_soon(read, manager, "long", 1000)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
        # The block's exit waited the grace period, then cancelled "long".
        assert trio.current_time() == pytest.approx(start + 10)
        assert probe.live == 0
        assert probe.cleanups == 2
        with pytest.raises(streammgr.ManagerClosed):
            async with manager.open(probe.ticker, 1):
                pass  # pragma: no cover
    assert results == {"short": 5, "long": CloseReason.SHUTDOWN}


async def test_shutdown_cancels_waiters_at_once(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    outcome: list[CloseReason] = []

    async def waiter(manager: StreamManager) -> None:
        try:
            async with manager.open(probe.ticker, 1):
                pass  # pragma: no cover
        except streammgr.StreamCancelled as exc:
            outcome.append(exc.close_reason)

    async def holder(manager: StreamManager) -> None:
        async with manager.open(probe.ticker, 3) as stream:
            async for _ in stream:
                pass

    async with trio.open_nursery() as nursery:
        async with StreamManager(max_streams=1, shutdown_grace=60) as manager:
            nursery.start_soon(holder, manager)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter, manager)
            await trio.testing.wait_all_tasks_blocked()
            assert manager.stats().waiting == 1
        # The holder finished within the grace period: shutdown returned then.
        assert trio.current_time() == pytest.approx(3)
    assert outcome == [CloseReason.SHUTDOWN]
    stats = manager.stats()
    assert stats.closed_by_reason["shutdown"] == 1
    assert stats.closed_by_reason["completed"] == 1


async def test_aclose_from_another_task(autojump_clock: trio.abc.Clock, probe: Probe) -> None:
    async with StreamManager() as manager, trio.open_nursery() as nursery:
        nursery.start_soon(manager.aclose, 2.0)
        with pytest.raises(streammgr.StreamCancelled) as caught:
            async with manager.open(probe.ticker, 1000) as stream:
                async for _ in stream:
                    pass
        assert caught.value.close_reason is CloseReason.SHUTDOWN
        assert trio.current_time() == pytest.approx(2)
        assert probe.cleanups == 1
        assert manager.stats().closing


async def test_concurrent_aclose_calls_all_return(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    returned: list[int] = []
    async with StreamManager() as manager, trio.open_nursery() as nursery:

        async def read() -> None:
            with pytest.raises(streammgr.StreamCancelled):
                async with manager.open(probe.ticker, 1000) as stream:
                    async for _ in stream:
                        pass

        async def close(index: int, grace: float) -> None:
            await manager.aclose(grace)
            returned.append(index)

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(close, 1, 3.0)
        nursery.start_soon(close, 2, 1.0)
    assert sorted(returned) == [1, 2]
    assert probe.cleanups == 1


async def test_body_exception_cancels_streams_immediately(
    autojump_clock: trio.abc.Clock, probe: Probe
) -> None:
    async with trio.open_nursery() as nursery:

        async def reader(manager: StreamManager) -> None:
            with pytest.raises(streammgr.StreamCancelled):
                async with manager.open(probe.ticker, 1000) as stream:
                    async for _ in stream:
                        pass

        with pytest.raises(ZeroDivisionError):
            async with StreamManager(shutdown_grace=100) as manager:
                nursery.start_soon(reader, manager)
                await trio.testing.wait_all_tasks_blocked()
                raise ZeroDivisionError
        assert trio.current_time() == 0
        assert probe.cleanups == 1


async def test_open_requires_a_running_manager() -> None:
    manager = StreamManager()

    async def producer() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(RuntimeError, match="async with StreamManager"):
        async with manager.open(producer):
            pass  # pragma: no cover


# -- arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_streams": -1}, ValueError, "max_streams must be a positive int"),
        ({"max_streams": 0}, ValueError, "max_streams must be a positive int"),
        ({"max_streams": 1.5}, TypeError, "max_streams must be an int"),
        ({"max_streams_per_key": 0}, ValueError, "max_streams_per_key"),
        ({"max_waiting": -1}, ValueError, "max_waiting must be a non-negative"),
        ({"idle_timeout": 0}, ValueError, "idle_timeout must be a positive"),
        ({"reader_timeout": "5"}, TypeError, "reader_timeout must be a number"),
        ({"deadline": float("inf")}, ValueError, "deadline must be a positive, finite"),
        ({"buffer_size": -1}, ValueError, "buffer_size must be a non-negative int"),
        ({"history_size": -1}, ValueError, "history_size"),
        ({"shutdown_grace": -1}, ValueError, "shutdown_grace"),
        ({"buffer_size": 1.5}, TypeError, "buffer_size must be an int"),
        ({"secrets": "sk-one-key"}, TypeError, "secrets must be a list of str"),
    ],
)
def test_bad_manager_arguments_are_named(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        StreamManager(**kwargs)  # type: ignore[arg-type]


async def test_bad_open_arguments_are_named(autojump_clock: trio.abc.Clock) -> None:
    async def producer() -> AsyncIterator[int]:
        yield 1

    async with StreamManager() as manager:
        with pytest.raises(ValueError, match="key must be a non-empty str"):
            manager.open(producer, key="")
        with pytest.raises(TypeError, match="labels must map str to str"):
            manager.open(producer, labels={"n": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="producer must be"):
            manager.open(42)  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="idle_timeout"):
            manager.open(producer, idle_timeout=-3)

        def not_async() -> list[int]:
            return [1]

        with pytest.raises(TypeError, match="not an async iterator"):
            async with manager.open(not_async) as stream:  # type: ignore[arg-type, var-annotated]
                async for _ in stream:
                    pass  # pragma: no cover


async def test_stream_can_be_entered_only_once(autojump_clock: trio.abc.Clock) -> None:
    async def producer() -> AsyncIterator[int]:
        yield 1

    async with StreamManager() as manager:
        stream = manager.open(producer)
        async with stream:
            pass
        with pytest.raises(RuntimeError, match="entered only once"):
            async with stream:
                pass  # pragma: no cover


async def test_upstream_errors_record_their_own_close_reason(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def producer() -> AsyncIterator[int]:
        yield 1
        raise streammgr.UpstreamIdleTimeout("no event for 30s", timeout=30, url="http://up/x")

    async with StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamIdleTimeout) as caught:
            async with manager.open(producer) as stream:
                async for _ in stream:
                    pass
        assert caught.value.phase == "idle"
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.UPSTREAM_IDLE_TIMEOUT
        assert info.error == "UpstreamIdleTimeout: no event for 30s"


async def test_callable_objects_count_by_their_call(autojump_clock: trio.abc.Clock) -> None:
    """An object with ``async def __call__(self, send)`` is a push producer (a source
    can hold a nursery inside one await); with an async generator ``__call__`` it
    is a generator producer."""

    class PushSource:
        async def __call__(self, send: StreamSender[str], prefix: str) -> None:
            async with trio.open_nursery():
                await send.send(prefix + "1")
                await send.send(prefix + "2")

    class GeneratorSource:
        async def __call__(self, prefix: str) -> AsyncIterator[str]:
            yield prefix + "a"

    async with StreamManager() as manager:
        async with manager.open(PushSource(), "p") as stream:
            assert [item async for item in stream] == ["p1", "p2"]
        async with manager.open(GeneratorSource(), "g") as stream:
            assert [item async for item in stream] == ["ga"]


async def test_reader_timeout_counts_from_the_end_of_the_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The end of a stream becomes the reader's to take when the producer finishes,
    not when it produced its last item."""

    async def producer() -> AsyncIterator[int]:
        yield 1
        await trio.sleep(100)  # finishing takes a while after the last item

    async with StreamManager(reader_timeout=30, idle_timeout=1000) as manager:
        async with manager.open(producer) as stream:
            assert await stream.__anext__() == 1
            await trio.sleep(125)  # the end has been ready for 25 s only
            assert stream.info().close_reason is None
            await trio.sleep(10)
            assert stream.info().close_reason is CloseReason.READER_TIMEOUT
            assert stream.info().closed_at == pytest.approx(130)


async def test_push_send_given_up_does_not_blame_the_reader(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A push producer that drops an item (send abandoned by move_on_after) owes the
    next one: the idle timeout applies, not the reader's."""

    async def producer(send: StreamSender[int]) -> None:
        with trio.move_on_after(1):
            await send.send(1)  # nobody reads yet: dropped after 1 s
        await trio.sleep_forever()

    async with StreamManager(reader_timeout=10, idle_timeout=60, buffer_size=0) as manager:
        with pytest.raises(streammgr.IdleTimeout):
            async with manager.open(producer) as stream:
                await trio.sleep(3)
                async for _ in stream:
                    pass  # pragma: no cover
        # Idle since it last produced (t=0): a reader timeout would have fired at t=10.
        assert trio.current_time() == pytest.approx(60)


async def test_relayed_cancellation_reaches_the_reader_as_itself(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A producer relaying another managed stream re-raises its StreamCancelled: the
    outer reader gets that same exception after the items before it."""

    async def hung() -> AsyncIterator[int]:
        yield 1
        await trio.sleep_forever()
        yield 2  # pragma: no cover

    async with StreamManager() as manager:

        async def relay() -> AsyncIterator[int]:
            async with manager.open(hung, idle_timeout=5) as inner:
                async for item in inner:
                    yield item * 10

        received = []
        with pytest.raises(streammgr.IdleTimeout) as caught:
            async with manager.open(relay, buffer_size=4) as outer:
                async for item in outer:
                    received.append(item)
        assert received == [10]
        assert caught.value.timeout == 5
        assert caught.value.stream_id != outer.id
        info = manager.get(outer.id)
        assert info is not None
        assert info.close_reason is CloseReason.PRODUCER_ERROR
