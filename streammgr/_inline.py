"""Single-reader streams: the reader's own task pulls from the producer.

``manager.open(producer, inline=True)`` returns an :class:`InlineStream`. Its
producer (an async iterator: a pull producer) gets no task and no channel: each
pull of the reader awaits the producer's next item or batch in the reader's own
task. What the manager guarantees stays the same; only who does the work changes::

    reader task
    -----------
    async with manager.open(p, inline=True) as s:   admission; then the stream's
                                                    cancel scope is entered here
        async for item in s:      <------ p's next item, awaited right here
            ...
    # exit: the producer's aclose() (shielded, bounded), the record closed.

How each guarantee is kept without a task of its own:

- **Ending from outside** (``manager.cancel``, a timeout, shutdown) cancels the
  stream's scope, entered by ``__aenter__`` around the reader's block: a pull in
  flight is interrupted where the producer waits, as its own task would be. The
  reader's block then leaves with :class:`StreamCancelled` (the scope's
  ``Cancelled`` is turned into it on exit), as a pull would raise it. A stream
  ended while its reader is *not* pulling (parked in a write to a stalled client,
  say) has its producer closed at once by a short task in the manager's nursery,
  so that its slot goes back without waiting for the reader.
- **The producer's end** is accounted in the reader's task, in the same order of
  lifecycle events as with a task: ``producer finished`` then ``reader read the
  end``; ``producer failed`` then ``reader took the error``.
- **Timeouts**: there is no buffer, so the turn is told by the pull: while one is
  in flight the producer owes an item (``idle_timeout``); between pulls the reader
  does (``reader_timeout``: the time it spends on an item, writing it to a client
  included).

Nothing here decides a state: every event goes through the owner (the
:class:`~streammgr._runner.StreamRunner`), which applies the lifecycle table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar

import trio
import trio.lowlevel

from ._batch import BatchIterator
from ._lifecycle import CANCEL_REASONS, Event, State
from ._registry import StreamRecord
from ._stream import (
    CURRENT_RECORD,
    CURRENT_SECRETS,
    ManagedStream,
    StreamOwner,
    forget_exception,
)

__all__ = ["InlineOwner", "InlineProducer", "InlineStream"]

T = TypeVar("T")


class InlineProducer:
    """A pull producer as its reader's task sees it: started at the first pull.

    ``closing`` is ``None`` while the producer is open; whoever starts closing it
    (the reader, or the manager's closer for a parked producer) sets it to an
    event that is set once the producer's end has been accounted, so that it is
    closed and accounted exactly once.
    """

    __slots__ = ("_args", "_factory", "closing", "iterator")

    def __init__(self, factory: Callable[..., Any], args: tuple[object, ...]) -> None:
        self._factory: Callable[..., Any] | None = factory
        self._args = args
        self.iterator: AsyncIterator[Any] | None = None
        self.closing: trio.Event | None = None

    def forget(self) -> None:
        """The producer has ended: drop what it held (its iterator, its arguments)."""
        self.iterator = self._factory = None
        self._args = ()

    def start(self) -> tuple[Callable[[], Awaitable[Any]], bool]:
        """Call the producer for its iterator (at the first pull, as its task would).

        Returns what to await for the next pull and whether it returns a batch
        (a list, maybe empty) rather than one item. A :class:`BatchIterator` is read
        through the iterator of lists it wraps: one coroutine less per batch (each
        level of ``await`` is paid again at every suspension of the producer).
        """
        factory = self._factory
        assert factory is not None
        self._factory, args, self._args = None, self._args, ()
        iterator = factory(*args)
        next_item = getattr(iterator, "__anext__", None)
        if next_item is None:
            raise TypeError(
                f"the producer returned {type(iterator).__name__}, not an async iterator; "
                f"pass an async generator function or a callable returning an async iterator"
            )
        self.iterator = iterator
        if type(iterator) is BatchIterator:
            return iterator._batches.__anext__, True
        next_batch = getattr(iterator, "anext_batch", None)
        if next_batch is not None:
            return next_batch, True
        return next_item, False


class InlineOwner(StreamOwner, Protocol):
    """What an :class:`InlineStream` needs from the manager's runner."""

    secrets: list[str]

    async def admit_inline(self, stream: InlineStream[Any]) -> InlineProducer:
        """Wait for a slot; enter the stream's scope in the caller's task."""
        ...

    async def inline_ended(
        self,
        record: StreamRecord,
        producer: InlineProducer,
        event: Event,
        error: BaseException | None,
    ) -> None:
        """The producer ended (``event``): close it, once, and account its end."""
        ...

    def inline_aborted(
        self, record: StreamRecord, producer: InlineProducer, error: BaseException
    ) -> None:
        """The producer raised a ``BaseException`` that is not a cancellation."""
        ...

    async def reader_left_inline(
        self, record: StreamRecord, producer: InlineProducer, exc: BaseException | None
    ) -> None:
        """The reader's block exited (with ``exc``): end the stream, close its producer."""
        ...


class InlineStream(ManagedStream[T]):
    """A :class:`ManagedStream` whose reader's task runs the producer (single-reader mode).

    Get one from ``manager.open(producer, inline=True)``; it is used exactly as
    any stream (``async with``, ``async for``, ``batches()``). The differences, all
    of them consequences of having no task and no buffer of its own:

    - the producer runs only while the reader pulls: nothing is read ahead
      (``buffer_size`` does not apply), and the producer runs in the reader's
      context (``current_producer()`` works in it as in a task of its own);
    - a stream ended from outside cancels the reader's block at its next
      checkpoint (its scope is around the block), not only at its next pull; the
      block then leaves with :class:`StreamCancelled`, as a pull would raise it;
    - ``reader_timeout`` bounds the time between two pulls (the reader's turn),
      ``idle_timeout`` the time a pull waits for the producer;
    - a producer's fatal ``BaseException`` (``KeyboardInterrupt``...) shuts the
      manager down as always, but propagates through the reader's task.
    """

    __slots__ = ("_inline", "_next", "_returns_batches", "_stamp")

    _owner: InlineOwner

    async def __aenter__(self) -> InlineStream[T]:
        if self._receive_channel is not None or self._record.state is not State.WAITING:
            raise RuntimeError("a ManagedStream can be entered only once; call open() again")
        record = self._record
        # Only the activity timeouts need to know when the producer's turn began.
        self._stamp = record.reader_timeout is not None or record.idle_timeout is not None
        self._next: Callable[[], Awaitable[Any]] | None = None
        self._returns_batches = False
        self._inline = await self._owner.admit_inline(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        record = self._record
        scope = record.scope
        assert scope is not None
        try:
            await self._owner.reader_left_inline(record, self._inline, exc)
        finally:
            forget_exception(record)
            # The scope entered by __aenter__, around the reader's block.
            caught = scope.__exit__(exc_type, exc, traceback)
        if caught and exc is not None:
            # The stream's own cancel reached the block: say why, as a pull would.
            raise self._owner.cancelled_error(record) from None

    async def __anext__(self) -> T:
        record = self._record
        if record.close_reason is not None and (
            record.state is State.CLOSED or record.close_reason in CANCEL_REASONS
        ):
            self._end(record)  # as ManagedStream.__anext__
        batch = self._batch
        if batch is not None:
            index = self._index
            item = batch[index]
            index += 1
            if index == len(batch):
                self._batch = None
            else:
                self._index = index
            self._count_one(record, item)
            return item
        items = await self._pull(record)
        if len(items) > 1:
            self._batch, self._index = items, 1
        item = items[0]
        self._count_one(record, item)
        return item

    async def _next_batch(self) -> list[T]:
        record = self._record
        if record.close_reason is not None and (
            record.state is State.CLOSED or record.close_reason in CANCEL_REASONS
        ):
            self._end(record)
        batch = self._batch
        if batch is not None:
            self._batch = None
            items = batch[self._index :]
        else:
            items = await self._pull(record)
        self._count(record, items)
        return items

    def _has_ready(self) -> bool:
        return self._batch is not None

    async def _pull(self, record: StreamRecord) -> list[Any]:
        """Await the producer's next batch in this task; at its end, account it.

        The only per-batch costs beyond the producer's own: two context variable
        sets (so that ``current_producer()`` finds this stream), the pull flag the
        watchdog reads, and a clock read if an activity timeout is set.
        """
        if self._stamp:
            record.produced_at = trio.current_time()  # the producer's turn begins
        owner = self._owner
        record_token = CURRENT_RECORD.set(record)
        secrets_token = CURRENT_SECRETS.set(owner.secrets)
        record.pulling = True
        error: BaseException | None = None
        try:
            pull = self._next
            if pull is None:
                pull, self._returns_batches = self._inline.start()
                self._next = pull
            batch: list[Any]
            if self._returns_batches:
                batch = await pull()
                while not batch:
                    # A read that completed nothing: let other tasks run, even if
                    # the producer reached no checkpoint of its own.
                    await trio.lowlevel.checkpoint()
                    batch = await pull()
            else:
                batch = [await pull()]
        except StopAsyncIteration:
            event = Event.PRODUCER_FINISHED
        except Exception as exc:
            error, event = exc, Event.PRODUCER_FAILED
        except BaseException as exc:
            record.pulling = False
            if not _is_cancellation(exc):
                owner.inline_aborted(record, self._inline, exc)
            raise  # a cancellation: the block's exit closes the producer
        else:
            record.pulling = False
            record.produced += len(batch)
            if record.close_reason in CANCEL_REASONS:
                # Ended while the producer was handing this over: dropped, as a
                # cancel drops what a channel holds.
                raise owner.cancelled_error(record)
            return batch
        finally:
            CURRENT_SECRETS.reset(secrets_token)
            CURRENT_RECORD.reset(record_token)
        record.pulling = False
        try:
            await owner.inline_ended(record, self._inline, event, error)
        finally:
            del error  # no reference cycle through the traceback
        return self._end(record)  # raises what the reader gets


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is Trio's cancellation (alone, or a group of nothing else)."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False
