"""Single-reader streams (``manager.open(..., inline=True)``) against task streams.

Every test runs twice, with the producer in a task of its own (``task``) and in
the reader's task (``inline``), and asserts the same outcome for both: the
close reason and detail, the counters, what the reader gets, the slot, the
registry, the producer's cleanup and ``aclose()`` run exactly once, and no task
left in the manager's nursery. The ways a stream ends through
:class:`~streammgr.server.EventStreamResponse` (which always uses the mode) are
at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import trio
import trio.testing

import streammgr
from streammgr import (
    CloseReason,
    InlineStream,
    ManagedStream,
    StreamCancelled,
    StreamManager,
    StreamSender,
    UpstreamTruncated,
    current_producer,
)
from streammgr.server import EventStreamResponse

from .asgi_driver import ASGIExchange
from .conftest import Probe
from .manager_helpers import Abort
from .response_helpers import CountingLimiter, encode_ints

MODES = pytest.mark.parametrize("inline", [False, True], ids=["task", "inline"])


class Ticks:
    """An async iterator of ints, one every ``interval`` s; counts its ``aclose()``."""

    def __init__(self, count: int, interval: float = 1.0, fail_at: int | None = None) -> None:
        self.count = count
        self.interval = interval
        self.fail_at = fail_at
        self.index = 0
        self.acloses = 0
        self.cancelled = 0

    def __call__(self) -> Ticks:
        return self

    def __aiter__(self) -> Ticks:
        return self

    async def __anext__(self) -> int:
        if self.index == self.fail_at:
            raise UpstreamTruncated("the upstream cut the stream short")
        if self.index >= self.count:
            raise StopAsyncIteration
        try:
            await trio.sleep(self.interval)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.index += 1
        return self.index - 1

    async def aclose(self) -> None:
        self.acloses += 1


def assert_settled(manager: StreamManager) -> None:
    """Nothing of any stream is left: registry, slots, tasks (the watchdog only)."""
    assert manager.streams() == []
    assert manager.stats().active == 0
    nursery = manager._runner.nursery
    assert nursery is not None
    assert [task.name for task in nursery.child_tasks] == ["streammgr-watchdog"]


def last(manager: StreamManager) -> streammgr.StreamInfo:
    (info,) = manager.history()
    return info


@MODES
async def test_the_mode_is_chosen_by_inline(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    async def push(send: StreamSender[int]) -> None:
        await send.send(1)

    async with StreamManager() as manager:
        stream = manager.open(Ticks(1), inline=inline)
        assert isinstance(stream, InlineStream) is inline
        # A push producer pushes from its own frame: it keeps its task.
        assert type(manager.open(push, inline=inline)) is ManagedStream
        with pytest.raises(TypeError, match="inline must be a bool"):
            manager.open(Ticks(1), inline=1)  # type: ignore[call-overload]


@MODES
async def test_finish(autojump_clock: trio.testing.MockClock, inline: bool) -> None:
    ticks = Ticks(3)
    async with StreamManager(max_streams=1) as manager:
        async with manager.open(ticks, inline=inline) as stream:
            assert [item async for item in stream] == [0, 1, 2]
            # Read again after the end: the end again.
            assert [item async for item in stream] == []
        info = last(manager)
        assert (info.close_reason, info.items, info.error) == (CloseReason.COMPLETED, 3, None)
        assert info.closed_at == pytest.approx(3.0)
        assert ticks.acloses == 1
        closed = manager.stats().closed_by_reason
        assert {reason: count for reason, count in closed.items() if count} == {"completed": 1}
        assert_settled(manager)


@MODES
async def test_batches_and_counters(autojump_clock: trio.testing.MockClock, inline: bool) -> None:
    @streammgr.batched
    async def reads() -> AsyncIterator[list[bytes]]:
        for index in range(3):
            await trio.sleep(1)
            yield [b"ab"] * (index + 1)
            yield []  # a read that completed nothing

    async with StreamManager() as manager:
        async with manager.open(reads, inline=inline) as stream:
            first = await stream.__anext__()
            assert first == b"ab"
            batches = [batch async for batch in stream.batches()]
        assert batches == [[b"ab"] * 2, [b"ab"] * 3]
        info = last(manager)
        assert (info.close_reason, info.items, info.bytes) == (CloseReason.COMPLETED, 6, 12)
        assert_settled(manager)


@MODES
async def test_producer_error(
    autojump_clock: trio.testing.MockClock, probe: Probe, inline: bool
) -> None:
    async def failing() -> AsyncIterator[int]:
        async for item in probe.ticker(2):
            yield item
        raise ValueError("the producer broke")

    async with StreamManager() as manager:
        got: list[int] = []
        with pytest.raises(ValueError, match="the producer broke"):
            async with manager.open(failing, inline=inline) as stream:
                async for item in stream:
                    got.append(item)
        info = last(manager)
        assert got == [0, 1]
        assert info.close_reason is CloseReason.PRODUCER_ERROR
        assert info.error == "ValueError: the producer broke"
        assert probe.cleanups == 1
        assert_settled(manager)


@MODES
async def test_upstream_error(autojump_clock: trio.testing.MockClock, inline: bool) -> None:
    ticks = Ticks(5, fail_at=2)
    async with StreamManager() as manager:
        with pytest.raises(UpstreamTruncated):
            async with manager.open(ticks, inline=inline) as stream:
                async for _ in stream:
                    pass
        info = last(manager)
        assert (info.close_reason, info.items) == (UpstreamTruncated.close_reason, 2)
        assert ticks.acloses == 1
        assert_settled(manager)


@MODES
async def test_reader_leaves(autojump_clock: trio.testing.MockClock, inline: bool) -> None:
    ticks = Ticks(10)
    async with StreamManager() as manager:
        async with manager.open(ticks, inline=inline) as stream:
            async for item in stream:
                if item == 1:
                    break
        info = last(manager)
        assert (info.close_reason, info.detail, info.items) == (
            CloseReason.READER_EXIT,
            "the reader left the block",
            2,
        )
        assert ticks.acloses == 1
        assert_settled(manager)


@MODES
async def test_reader_raises(autojump_clock: trio.testing.MockClock, inline: bool) -> None:
    ticks = Ticks(10)
    async with StreamManager() as manager:
        with pytest.raises(KeyError):
            async with manager.open(ticks, inline=inline) as stream:
                async for _ in stream:
                    raise KeyError("the reader's own bug")
        info = last(manager)
        assert (info.close_reason, info.detail) == (
            CloseReason.READER_EXIT,
            "the reader raised an exception",
        )
        assert info.error is not None
        assert "KeyError" in info.error
        assert ticks.acloses == 1
        assert_settled(manager)


@MODES
async def test_reader_task_cancelled_while_pulling(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    ticks = Ticks(10)
    async with StreamManager() as manager:
        with trio.move_on_after(2.5):
            async with manager.open(ticks, inline=inline) as stream:
                async for _ in stream:
                    pass
        info = last(manager)
        assert (info.close_reason, info.detail, info.items) == (
            CloseReason.READER_EXIT,
            "the reader's task was cancelled",
            2,
        )
        assert ticks.acloses == 1
        assert_settled(manager)


@MODES
async def test_operator_cancel_while_pulling(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    ticks = Ticks(10)
    async with StreamManager() as manager, trio.open_nursery() as nursery:
        stream = manager.open(ticks, inline=inline)

        async def cancel_later() -> None:
            await trio.sleep(2.5)
            assert manager.cancel(stream.id, reason="maintenance")

        nursery.start_soon(cancel_later)
        with pytest.raises(StreamCancelled, match="maintenance") as raised:
            async with stream:
                async for _ in stream:
                    pass
        assert raised.value.close_reason is CloseReason.CANCELLED
        info = last(manager)
        assert (info.close_reason, info.detail, info.items) == (
            CloseReason.CANCELLED,
            "maintenance",
            2,
        )
        assert info.closed_at == pytest.approx(2.5)
        assert (ticks.cancelled, ticks.acloses) == (1, 1)
        assert_settled(manager)


@MODES
@pytest.mark.parametrize("shielded", [False, True], ids=["parked", "parked-shielded"])
async def test_cancel_while_the_reader_is_parked_frees_the_slot_at_once(
    autojump_clock: trio.testing.MockClock, inline: bool, shielded: bool
) -> None:
    # The reader is busy elsewhere (a write to a client that reads nothing, which
    # hypercorn shields): the producer is closed and its slot freed at the cancel.
    ticks = Ticks(10)
    limiter = CountingLimiter()
    closed_at: list[float] = []
    checked = trio.Event()
    async with StreamManager(limiter=limiter) as manager, trio.open_nursery() as nursery:
        stream = manager.open(ticks, key="k", inline=inline)

        async def cancel_later() -> None:
            await trio.sleep(1.5)
            assert manager.cancel_key("k", reason="maintenance") == 1
            await trio.testing.wait_all_tasks_blocked()
            closed_at.append(trio.current_time())
            assert (limiter.releases, ticks.acloses) == (1, 1)
            assert manager.streams() == []
            checked.set()

        nursery.start_soon(cancel_later)
        with pytest.raises(StreamCancelled):
            async with stream:
                async for _ in stream:
                    with trio.CancelScope(shield=shielded):
                        await trio.sleep(10)
        await checked.wait()
        assert closed_at == [pytest.approx(1.5)]
        info = last(manager)
        assert (info.close_reason, info.items) == (CloseReason.CANCELLED, 1)
        assert limiter.releases == 1
        assert ticks.acloses == 1
        assert_settled(manager)


@MODES
async def test_cancelled_while_waiting_for_a_slot(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    async with StreamManager(max_streams=1) as manager:
        async with manager.open(Ticks(10), inline=inline) as holder:
            waiting = manager.open(Ticks(10), inline=inline)
            async with trio.open_nursery() as nursery:

                async def enter() -> None:
                    with pytest.raises(StreamCancelled):
                        async with waiting:
                            pass

                nursery.start_soon(enter)
                await trio.testing.wait_all_tasks_blocked()
                assert manager.cancel(waiting.id)
            await holder.__anext__()
        info = manager.get(waiting.id)
        assert info is not None
        assert info.close_reason is CloseReason.CANCELLED
        assert info.admitted_at is None
        assert_settled(manager)


@MODES
@pytest.mark.parametrize(
    ("options", "reason", "at"),
    [
        ({"idle_timeout": 2.0}, CloseReason.IDLE_TIMEOUT, 2.0),
        ({"deadline": 2.5}, CloseReason.DEADLINE, 2.5),
    ],
    ids=["idle_timeout", "deadline"],
)
async def test_timeouts_of_the_producer(
    autojump_clock: trio.testing.MockClock,
    inline: bool,
    options: dict[str, Any],
    reason: CloseReason,
    at: float,
) -> None:
    ticks = Ticks(10, interval=5.0 if "idle_timeout" in options else 1.0)
    async with StreamManager(**options) as manager:
        with pytest.raises(StreamCancelled) as raised:
            async with manager.open(ticks, inline=inline) as stream:
                async for _ in stream:
                    pass
        assert raised.value.close_reason is reason
        info = last(manager)
        assert info.close_reason is reason
        assert info.closed_at == pytest.approx(at)
        assert ticks.acloses == 1
        assert_settled(manager)


@MODES
async def test_reader_timeout_while_the_reader_is_parked(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    # A task producer's item waits in the buffer; an inline producer waits to be
    # pulled: either way the reader took nothing for reader_timeout, the stream
    # ends and its slot is freed while the reader is still parked (shielded).
    ticks = Ticks(10, interval=0.5)
    async with StreamManager(reader_timeout=2) as manager:
        with pytest.raises(StreamCancelled) as raised:
            async with manager.open(ticks, inline=inline) as stream:
                async for _ in stream:
                    with trio.CancelScope(shield=True):
                        await trio.sleep(10)
                        assert manager.stats().active == 0
                        assert ticks.acloses == 1
        assert raised.value.close_reason is CloseReason.READER_TIMEOUT
        info = last(manager)
        assert (info.close_reason, info.items) == (CloseReason.READER_TIMEOUT, 1)
        assert_settled(manager)


@MODES
async def test_a_steady_reader_is_not_timed_out(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    async with StreamManager(reader_timeout=1.5, idle_timeout=1.5) as manager:
        async with manager.open(Ticks(6), inline=inline) as stream:
            async for _ in stream:
                await trio.sleep(1)  # the reader's own work, shorter than its timeout
        assert last(manager).close_reason is CloseReason.COMPLETED
        assert_settled(manager)


@MODES
@pytest.mark.parametrize("grace", [0.0, 20.0])
async def test_shutdown(autojump_clock: trio.testing.MockClock, inline: bool, grace: float) -> None:
    ticks = Ticks(5)
    async with StreamManager() as manager, trio.open_nursery() as nursery:
        got: list[int] = []
        raised: list[CloseReason] = []

        async def read() -> None:
            try:
                async with manager.open(ticks, inline=inline) as stream:
                    async for item in stream:
                        got.append(item)
            except StreamCancelled as exc:
                raised.append(exc.close_reason)

        nursery.start_soon(read)
        await trio.sleep(2.5)
        await manager.aclose(grace=grace)
        info = last(manager)
        if grace:
            assert (info.close_reason, got) == (CloseReason.COMPLETED, [0, 1, 2, 3, 4])
        else:
            assert (info.close_reason, got) == (CloseReason.SHUTDOWN, [0, 1])
            await trio.testing.wait_all_tasks_blocked()
            assert raised == [CloseReason.SHUTDOWN]
            assert trio.current_time() == pytest.approx(2.5)
        assert ticks.acloses == 1
        assert manager.stats().active == 0


@MODES
async def test_cleanup_is_bounded_by_cleanup_timeout(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    closed = trio.Event()

    async def slow_close() -> AsyncIterator[int]:
        try:
            while True:
                await trio.sleep(1)
                yield 0
        finally:
            try:
                await trio.sleep(100)  # cancelled by the bound: aclose() is shielded
            finally:
                closed.set()

    async with StreamManager(cleanup_timeout=0.5) as manager:
        async with manager.open(slow_close, inline=inline) as stream:
            await stream.__anext__()
        assert closed.is_set()
        # A task producer was cancelled mid-sleep (its cleanup's sleep is cancelled
        # at once); an inline one is closed at its yield: bounded by 0.5 s.
        assert trio.current_time() <= 1.5
        assert last(manager).close_reason is CloseReason.READER_EXIT
        assert_settled(manager)


@MODES
async def test_the_producer_finds_its_stream(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    async def noting() -> AsyncIterator[int]:
        context = current_producer()
        assert context is not None
        for index in range(2):
            await trio.sleep(1)
            context.annotate(seen=index)
            yield index

    async with StreamManager() as manager:
        async with manager.open(noting, inline=inline) as stream:
            async for _ in stream:
                # The reader's own code is not the producer, whatever the mode.
                assert current_producer() is None
        assert last(manager).notes == {"seen": 1}


@MODES
async def test_a_fatal_exception_of_the_producer_shuts_the_manager_down(
    autojump_clock: trio.testing.MockClock, inline: bool
) -> None:
    async def fatal() -> AsyncIterator[int]:
        await trio.sleep(1)
        yield 0
        raise Abort

    manager = StreamManager()
    # A task producer's Abort leaves through the manager's block; an inline one
    # through the reader's block (then the manager's, which it is inside).
    with pytest.raises(Abort):
        async with manager:
            async with manager.open(fatal, inline=inline) as stream:
                async for _ in stream:
                    await trio.sleep(5)
    info = last(manager)
    assert info.close_reason is CloseReason.PRODUCER_ERROR
    assert info.error is not None
    assert info.error.startswith("Abort")
    assert manager.stats().closing


# -- through the streaming response ------------------------------------------------------


def as_push(ticks: Ticks) -> Any:
    """The same producer, pushing: EventStreamResponse then runs it in a task."""

    async def push(send: StreamSender[int]) -> None:
        try:
            async for item in ticks:
                await send.send(item)
        finally:
            await ticks.aclose()

    return push


@MODES
async def test_a_client_that_disconnects(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, inline: bool
) -> None:
    ticks = Ticks(100, interval=0.5)
    async with StreamManager() as manager:
        producer = ticks if inline else as_push(ticks)
        response = EventStreamResponse(manager, producer, answer_within=0, encode=encode_ints)
        exchange = ASGIExchange(response, "GET", "/")
        nursery.start_soon(exchange.run)
        await trio.sleep(2.2)
        exchange.disconnect()
        await exchange.returned.wait()
        info = last(manager)
        assert (info.close_reason, info.items) == (CloseReason.CLIENT_DISCONNECTED, 4)
        assert ticks.acloses == 1
        assert_settled(manager)


class StallingSend:
    """An ASGI ``send`` that, once stalled, waits shielded (as hypercorn's does)."""

    def __init__(self) -> None:
        self.stalled = False
        self.unstall = trio.Event()
        self.bodies: list[bytes] = []

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if self.stalled:
            with trio.CancelScope(shield=True):
                await self.unstall.wait()
        if message["type"] == "http.response.body":
            self.bodies.append(message["body"])
        await trio.lowlevel.checkpoint()


@MODES
async def test_a_client_that_stalls(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, inline: bool
) -> None:
    ticks = Ticks(100, interval=0.5)
    limiter = CountingLimiter()
    async with StreamManager(limiter=limiter) as manager:
        producer = ticks if inline else as_push(ticks)
        response = EventStreamResponse(
            manager, producer, answer_within=0, stall_timeout=3, encode=encode_ints
        )
        send = StallingSend()
        never: trio.MemoryReceiveChannel[dict[str, Any]]
        _, never = trio.open_memory_channel(0)
        done = trio.Event()

        async def run() -> None:
            await response({"type": "http"}, never.receive, send)
            done.set()

        nursery.start_soon(run)
        await trio.sleep(1.2)
        send.stalled = True
        await trio.sleep(5)
        # Released while the response's send is still parked.
        assert not done.is_set()
        info = last(manager)
        assert info.close_reason is CloseReason.CLIENT_STALLED
        assert (limiter.releases, ticks.acloses) == (1, 1)
        assert manager.stats().active == 0
        send.unstall.set()
        await done.wait()
        assert_settled(manager)
