"""The reader's side of a stream: ManagedStream, and StreamSender for push producers.

A :class:`ManagedStream` is what ``manager.open()`` returns: entering it asks its
owner for admission and starts the producer; iterating it takes items from the
channel and counts them in the registry (the per-item hot path); leaving it asks
the owner to end the stream and waits until the producer has finished. It knows
its owner only through the small :class:`StreamOwner` interface.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import trio

from ._errors import StreamCancelled
from ._lifecycle import CANCEL_REASONS, Action, Event, ReaderOutcome, State, apply, reader_outcome
from ._registry import StreamInfo, StreamRecord

__all__ = [
    "CURRENT_RECORD",
    "ManagedStream",
    "ProducerContext",
    "StreamOwner",
    "StreamSender",
    "current_producer",
    "is_push_producer",
]

T = TypeVar("T")


class StreamOwner(Protocol):
    """What a :class:`ManagedStream` needs from whoever runs its producer."""

    async def admit(self, stream: ManagedStream[T]) -> trio.MemoryReceiveChannel[T]:
        """Wait for a slot, start the producer, return the channel to read from."""
        ...

    async def reader_left(
        self,
        record: StreamRecord,
        channel: trio.MemoryReceiveChannel[Any],
        exc: BaseException | None,
    ) -> None:
        """The reader's block exited (with ``exc``): end the stream, wait for the producer."""
        ...

    def handle(self, record: StreamRecord, event: Event) -> tuple[Action, ...]:
        """Apply a lifecycle event and carry out its actions."""
        ...

    def cancelled_error(self, record: StreamRecord) -> StreamCancelled:
        """The error for a reader whose stream was ended from outside."""
        ...


# Set in each producer's task, so a producer (a source) can reach its own stream.
CURRENT_RECORD: contextvars.ContextVar[StreamRecord] = contextvars.ContextVar(
    "streammgr_current_record"
)


class ProducerContext:
    """What a producer can tell the registry about its own stream.

    Sources use it to report what only they know: that the upstream answered
    (phase ``connecting`` -> ``first_item``) and how many bytes it sent. Get it
    with :func:`current_producer` from inside a producer.
    """

    __slots__ = ("_record",)

    def __init__(self, record: StreamRecord) -> None:
        self._record = record

    @property
    def stream_id(self) -> str:
        """The id of the stream this producer feeds."""
        return self._record.id

    def connected(self) -> None:
        """The upstream has answered: the stream now waits for its first item."""
        record = self._record
        if record.state is State.CONNECTING:
            apply(record, Event.CONNECTED)

    def add_bytes(self, count: int) -> None:
        """Count ``count`` bytes received from the upstream in the registry."""
        record = self._record
        record.bytes += count
        record.cached = None

    def __repr__(self) -> str:
        return f"<ProducerContext for stream {self._record.id}>"


def current_producer() -> ProducerContext | None:
    """The :class:`ProducerContext` of the stream whose producer is running now.

    Returns ``None`` outside a producer run by a :class:`StreamManager`, so
    sources also work on their own.
    """
    record = CURRENT_RECORD.get(None)
    return None if record is None else ProducerContext(record)


class StreamSender(Generic[T]):
    """The send side handed to a push-style producer.

    A producer written as ``async def producer(send: StreamSender[T], *args)``
    calls ``await send.send(item)`` for each item; ``send`` waits while the reader
    is behind (back-pressure) and is counted by the registry.
    """

    __slots__ = ("_channel", "_record")

    def __init__(self, record: StreamRecord, channel: trio.MemorySendChannel[T]) -> None:
        self._record = record
        self._channel = channel

    @property
    def stream_id(self) -> str:
        """The id of the stream this producer feeds."""
        return self._record.id

    async def send(self, item: T) -> None:
        """Hand one item to the reader; waits while the reader's buffer is full."""
        record = self._record
        record.produced += 1
        record.produced_at = trio.current_time()
        try:
            self._channel.send_nowait(item)  # room in the buffer, or a reader waiting
        except trio.WouldBlock:
            pass
        else:
            return
        try:
            await self._channel.send(item)  # outside the except: no exception kept alive
        except BaseException:
            # Not delivered (e.g. the producer gave up with move_on_after): it must not
            # count as an item the reader owes, or the reader gets blamed for it.
            record.produced -= 1
            raise

    def __repr__(self) -> str:
        return f"<StreamSender for stream {self._record.id}>"


_END: Any = object()  # the reader's marker for "the channel is closed"
_WAIT: Any = object()  # the reader's marker for "nothing ready: wait"


def is_push_producer(producer: object) -> bool:
    """Whether ``producer`` pushes (``async def p(send, *args)``) rather than being
    called for an async iterator (an async generator function, or any callable
    returning an async iterator).

    A callable object counts by its ``__call__``: ``async def __call__(self, send)``
    is a push producer. That is how a source that needs a nursery of its own (a
    WebSocket client) stays inside one ``await`` instead of across ``yield``s.
    """
    if not callable(producer):
        raise TypeError(
            f"producer must be an async generator function, an async function taking a "
            f"StreamSender, or a callable returning an async iterator; got {producer!r}"
        )
    if inspect.isasyncgenfunction(producer):
        return False
    if inspect.iscoroutinefunction(producer):
        return True
    # Anything else is called for an iterator, unless its __call__ is async def.
    call = getattr(type(producer), "__call__", None)  # noqa: B004 - the method itself is needed
    return inspect.iscoroutinefunction(call)


class ManagedStream(Generic[T]):
    """One stream: an async context manager that yields itself, then an async iterator.

    Get one from :meth:`StreamManager.open`. Iterating yields the producer's items;
    the loop ends when the producer finishes, raises the producer's own exception
    if it failed, and raises :class:`StreamCancelled` (or a :class:`StreamTimeout`
    subclass) if the stream was cancelled. Leaving the ``async with`` block ends
    the stream and returns only after the producer has finished.
    """

    __slots__ = (
        "_acquire_timeout",
        "_buffer_size",
        "_item_size",
        "_owner",
        "_producer",
        "_producer_args",
        "_push",
        "_receive",
        "_receive_channel",
        "_receive_nowait",
        "_record",
    )

    def __init__(
        self,
        owner: StreamOwner,
        record: StreamRecord,
        producer: Callable[..., Any],
        args: tuple[object, ...],
        push: bool,
        acquire_timeout: float | None,
        buffer_size: int,
        item_size: Callable[[T], int],
    ) -> None:
        self._owner = owner
        self._record = record
        self._producer = producer
        self._producer_args = args
        self._push = push
        self._acquire_timeout = acquire_timeout
        self._buffer_size = buffer_size
        self._item_size = item_size
        self._receive_channel: trio.MemoryReceiveChannel[T] | None = None

    @property
    def id(self) -> str:
        """The stream id (also in ``manager.streams()`` and the logs)."""
        return self._record.id

    @property
    def key(self) -> str:
        """The admission key."""
        return self._record.key

    @property
    def labels(self) -> Mapping[str, str]:
        """The labels given to ``open`` (read-only)."""
        return self._record.labels

    def info(self) -> StreamInfo:
        """A snapshot of this stream now (works after it closed, too)."""
        return self._record.snapshot()

    def __repr__(self) -> str:
        record = self._record
        return f"<ManagedStream {record.id} key={record.key!r} phase={record.phase}>"

    async def __aenter__(self) -> ManagedStream[T]:
        if self._receive_channel is not None or self._record.state is not State.WAITING:
            raise RuntimeError("a ManagedStream can be entered only once; call open() again")
        self._receive_channel = await self._owner.admit(self)
        self._receive = self._receive_channel.receive
        self._receive_nowait = self._receive_channel.receive_nowait
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        channel = self._receive_channel
        assert channel is not None
        try:
            await self._owner.reader_left(self._record, channel, exc)
        finally:
            channel.close()

    def __aiter__(self) -> ManagedStream[T]:
        return self

    async def __anext__(self) -> T:
        record = self._record
        if record.close_reason in CANCEL_REASONS:
            raise self._owner.cancelled_error(record)
        try:
            # Take a ready item without a trip through the scheduler; wait only
            # when there is none (at most buffer_size + 1 items are ever ready).
            item = self._receive_nowait()
        except trio.WouldBlock:
            item = _WAIT
        except trio.EndOfChannel:
            item = _END
        except trio.ClosedResourceError:
            raise RuntimeError(
                f"stream {record.id} was iterated after its async with block exited"
            ) from None
        if item is _WAIT:
            # Awaited outside the except block: a reader parked here would otherwise
            # keep the WouldBlock and its traceback alive (about 0.6 KiB a stream).
            try:
                item = await self._receive()
            except trio.EndOfChannel:
                item = _END
        if item is _END:
            # Raised outside the except block, so the producer's exception reaches
            # the reader as itself, without EndOfChannel chained to it.
            outcome = reader_outcome(record)
            if outcome is ReaderOutcome.END:
                # The end has been read: the stream is completed, now. Nothing that
                # happens while the reader stays in its block can rewrite that.
                self._owner.handle(record, Event.READ_END)
                raise StopAsyncIteration
            if outcome is ReaderOutcome.ERROR:
                self._owner.handle(record, Event.ERROR_TAKEN)
                assert record.exception is not None
                raise record.exception
            raise self._owner.cancelled_error(record)
        now = trio.current_time()
        if record.first_item_at is None:
            record.first_item_at = now
            apply(record, Event.FIRST_ITEM_READ)
        record.items += 1
        record.bytes += self._item_size(item)
        record.last_item_at = now
        record.cached = None
        return item
