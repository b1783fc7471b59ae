"""StreamManager and errors: a reader's or a producer's error reaches whom it should,
an error whose ``str()`` raises is still described, a BaseException that is not an
Exception propagates as in Trio, and a group of cancellations is not a fatal error.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import streammgr
from streammgr import CloseReason, StreamManager, StreamSender
from streammgr._logging import describe_error

from .conftest import Probe
from .manager_helpers import Abort, slow_cleanup

# -- describing an error never raises, and never runs before the cancel -----------------


class UnprintableError(Exception):
    """An application bug: ``__str__`` reads an attribute that is not there."""

    def __str__(self) -> str:
        return str(self.missing)  # type: ignore[attr-defined]


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


# -- BaseExceptions that are not Exceptions propagate, as in Trio ------------------------


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


# -- errors reach the reader ---------------------------------------------------------------


async def test_producer_error_reaches_reader_as_itself(autojump_clock: trio.abc.Clock) -> None:
    raised: list[Exception] = []

    async def producer() -> AsyncIterator[int]:
        yield 1
        error = ValueError("upstream said no")
        raised.append(error)
        raise error

    async with StreamManager() as manager:
        received = []
        with pytest.raises(ValueError, match="upstream said no") as caught:
            async with manager.open(producer) as stream:
                async for item in stream:
                    received.append(item)
        assert caught.value is raised[0]
        assert caught.value.__context__ is None  # no EndOfChannel chained on
        assert received == [1]
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.PRODUCER_ERROR
        assert info.error == "ValueError: upstream said no"


async def test_push_producer_error_and_buffered_items_come_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def producer(send: StreamSender[int]) -> None:
        await send.send(1)
        await send.send(2)
        raise OSError("connection reset")

    async with StreamManager(buffer_size=10) as manager:
        received = []
        with pytest.raises(OSError, match="connection reset"):
            async with manager.open(producer) as stream:
                await trio.testing.wait_all_tasks_blocked()
                async for item in stream:
                    received.append(item)
        assert received == [1, 2]


async def test_error_text_in_registry_is_redacted(autojump_clock: trio.abc.Clock) -> None:
    async def producer() -> AsyncIterator[int]:
        raise RuntimeError("401 for Authorization: Bearer sk-live-abcdefghijkl and my-secret-value")
        yield 1  # pragma: no cover

    async with StreamManager(secrets=["my-secret-value"]) as manager:
        with pytest.raises(RuntimeError):
            async with manager.open(producer) as stream:
                async for _ in stream:
                    pass  # pragma: no cover
        info = manager.get(stream.id)
        assert info is not None
        assert info.error is not None
        assert "sk-live" not in info.error
        assert "my-secret-value" not in info.error
        assert "[REDACTED]" in info.error
