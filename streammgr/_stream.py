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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import trio

from ._batch import _Batch
from ._errors import StreamCancelled
from ._lifecycle import CANCEL_REASONS, Action, Event, ReaderOutcome, State, apply, reader_outcome
from ._logging import redact
from ._registry import MAX_NOTE_LENGTH, NoteValue, StreamInfo, StreamRecord, merged_notes

__all__ = [
    "CURRENT_RECORD",
    "CURRENT_SECRETS",
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
# Set beside it: the manager's secrets (its shared list), scrubbed from notes.
CURRENT_SECRETS: contextvars.ContextVar[Sequence[str]] = contextvars.ContextVar(
    "streammgr_current_secrets", default=()
)


class ProducerContext:
    """What a producer can tell the registry about its own stream.

    Sources use it to report what only they know: that the upstream answered
    (phase ``connecting`` -> ``first_item``) and how many bytes it sent. Get it
    with :func:`current_producer` from inside a producer.
    """

    __slots__ = ("_record", "_secrets")

    def __init__(self, record: StreamRecord, secrets: Sequence[str] = ()) -> None:
        self._record = record
        self._secrets = secrets

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

    def annotate(self, **notes: NoteValue) -> None:
        """Record ``notes`` about this stream in the registry (shown in snapshots,
        the inspection API and the ``closed`` log line).

        For what only the producer knows and an operator wants to see, such as an
        LLM answer's ``finish_reason`` and token counts (the OpenAI sources and the
        gateway record those). A later value replaces an earlier one of the same
        name. Values are JSON scalars; like labels, never put secrets in notes
        (a str is scrubbed of the manager's ``secrets`` and of credential-shaped
        text, as errors are, should one slip in). Notes recorded after the stream
        closed are ignored (its record is final).

        Raises:
            TypeError: a value that is not a str, int, float, bool or None.
            ValueError: a str of more than 256 characters, or more than 32 notes.
        """
        record = self._record
        if record.closed_at is not None:
            return
        if any(value.__class__ is str for value in notes.values()):
            notes = {name: self._scrubbed(value) for name, value in notes.items()}
        record.notes = merged_notes(record.notes, notes)
        record.cached = None

    def _scrubbed(self, value: NoteValue) -> NoteValue:
        """A note's str without secrets, cut to the longest note (a longer one is
        left for :func:`merged_notes` to refuse)."""
        if not isinstance(value, str) or len(value) > MAX_NOTE_LENGTH:
            return value
        return redact(value, self._secrets)[:MAX_NOTE_LENGTH]

    def __repr__(self) -> str:
        return f"<ProducerContext for stream {self._record.id}>"


def current_producer() -> ProducerContext | None:
    """The :class:`ProducerContext` of the stream whose producer is running now.

    Returns ``None`` outside a producer run by a :class:`StreamManager`, so
    sources also work on their own.
    """
    record = CURRENT_RECORD.get(None)
    return None if record is None else ProducerContext(record, CURRENT_SECRETS.get())


class StreamSender(Generic[T]):
    """The send side handed to a push-style producer.

    A producer written as ``async def producer(send: StreamSender[T], *args)``
    calls ``await send.send(item)`` for each item, or ``await send.send_batch(items)``
    for several that are ready together; both wait while the reader is behind
    (back-pressure), and the registry counts items.
    """

    __slots__ = ("_channel", "_record", "_stamp")

    def __init__(self, record: StreamRecord, channel: trio.MemorySendChannel[Any]) -> None:
        self._record = record
        self._channel = channel
        # Only the activity timeouts need to know when the reader's turn began.
        self._stamp = record.reader_timeout is not None or record.idle_timeout is not None

    @property
    def stream_id(self) -> str:
        """The id of the stream this producer feeds."""
        return self._record.id

    async def send(self, item: T) -> None:
        """Hand one item to the reader; waits while the reader's buffer is full."""
        await self._hand_over(item, 1)

    async def send_batch(self, items: Iterable[T]) -> None:
        """Hand several items to the reader in one hand-off (nothing if there are none).

        Use it for everything one upstream read produced: one trip through the
        channel instead of one per item, and ``stream.batches()`` gets the list
        whole. The items are copied into a new list, so the caller may reuse its own.
        Waits while the reader's buffer is full; ``buffer_size`` counts hand-offs.
        """
        batch = list(items)
        if batch:
            await self._hand_over(_Batch(batch), len(batch))

    async def _hand_over(self, payload: object, count: int) -> None:
        record = self._record
        produced_at = record.produced_at
        if self._stamp and record.produced == record.items:
            # The reader's turn starts now: this is the oldest item it has not taken.
            record.produced_at = trio.current_time()
        record.produced += count
        try:
            self._channel.send_nowait(payload)  # room in the buffer, or a reader waiting
        except trio.WouldBlock:
            pass
        else:
            return
        try:
            await self._channel.send(payload)  # outside the except: no exception kept alive
        except BaseException:
            # Not delivered (e.g. the producer gave up with move_on_after): it must not
            # count as items the reader owes, nor as activity that would keep a stalled
            # reader's timeout from running.
            record.produced -= count
            record.produced_at = produced_at
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
        "_batch",
        "_buffer_size",
        "_index",
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
        item_size: Callable[[T], int] | None,
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
        self._batch: list[T] | None = None  # what is left of a batch being iterated
        self._index = 0

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
            forget_exception(self._record)

    def __aiter__(self) -> ManagedStream[T]:
        return self

    async def __anext__(self) -> T:
        record = self._record
        if record.close_reason is not None and (
            record.state is State.CLOSED or record.close_reason in CANCEL_REASONS
        ):
            # Ended from outside, or closed (a failed stream closed by the shutdown):
            # what is buffered is dropped, so the reader and the record agree.
            self._end(record)
        batch = self._batch
        if batch is not None:
            # The rest of a batch handed over earlier: no channel, no scheduler.
            index = self._index
            item = batch[index]
            index += 1
            if index == len(batch):
                self._batch = None
            else:
                self._index = index
            self._count_one(record, item)
            return item
        taken = self._take_ready(record)
        if taken is _WAIT:
            taken = await self._wait(record)
        if taken is _END:
            self._end(record)
        if type(taken) is _Batch:
            items = taken.items
            taken = items[0]
            if len(items) > 1:
                self._batch, self._index = items, 1
        self._count_one(record, taken)
        return taken  # type: ignore[no-any-return]

    def batches(self) -> AsyncIterator[list[T]]:
        """Iterate lists of the items that were ready together (each non-empty, in order).

        A batch a producer handed over (``send_batch``, a :class:`BatchIterator`:
        what one upstream read carried) arrives as that same list; single items
        that are ready at once arrive gathered in one list; what is left of a batch
        that ``async for item in stream`` had begun comes first. Ends, fails and is
        cancelled exactly as iterating item by item does, and mixes with it.
        """
        return _Batches(self)

    async def _next_batch(self) -> list[T]:
        record = self._record
        if record.close_reason is not None and (
            record.state is State.CLOSED or record.close_reason in CANCEL_REASONS
        ):
            self._end(record)  # as in __anext__
        batch = self._batch
        if batch is not None:
            self._batch = None
            items = batch[self._index :]
        else:
            item = self._take_ready(record)
            if item is _WAIT:
                item = await self._wait(record)
            if item is _END:
                self._end(record)
            if type(item) is _Batch:
                items = item.items
            else:
                # Gather the single items that are ready too, up to the next batch.
                items = [item]
                receive_nowait = self._receive_nowait
                while True:
                    try:
                        ready: Any = receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if type(ready) is _Batch:
                        self._batch, self._index = ready.items, 0
                        break
                    items.append(ready)
        self._count(record, items)
        return items

    def _has_ready(self) -> bool:
        """Whether the next batch is ready, so that taking it will not wait (for a
        writer that would otherwise bound the wait with a cancel scope, which costs
        more than this check). ``False`` also before the stream is entered."""
        if self._batch is not None:
            return True
        channel = self._receive_channel
        return channel is not None and channel.statistics().current_buffer_used > 0

    def _take_ready(self, record: StreamRecord) -> Any:
        """The next item or batch envelope if one is ready, else ``_WAIT``; ``_END``.

        Takes it without a trip through the scheduler (and, being a plain function,
        without a coroutine per item); at most ``buffer_size + 1`` hand-offs are
        ever ready. The caller awaits :meth:`_wait` outside this except block, so
        that no WouldBlock (and its traceback) is kept alive by a parked reader.
        """
        try:
            return self._receive_nowait()
        except trio.WouldBlock:
            return _WAIT
        except trio.EndOfChannel:
            return _END
        except trio.ClosedResourceError:
            raise _iterated_after_exit(record) from None

    async def _wait(self, record: StreamRecord) -> Any:
        """Nothing was ready: wait for the next item or batch envelope, or the end."""
        try:
            item = await self._receive()
        except trio.EndOfChannel:
            return _END
        if record.state is State.CLOSED or record.close_reason in CANCEL_REASONS:
            # Handed over in the same step as the close: the record, the history and
            # the logs have it without this item, and so does the reader (as a
            # cancel drops what is buffered).
            return _END
        return item

    def _end(self, record: StreamRecord) -> NoReturn:
        """The channel has ended: raise what the lifecycle says the reader gets.

        Raised outside the receive's except block, so the producer's exception
        reaches the reader as itself, without EndOfChannel chained to it.
        """
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

    def _count_one(self, record: StreamRecord, item: T) -> None:
        """The registry's per-item bookkeeping: one clock read, a few counters."""
        now = trio.current_time()
        if record.first_item_at is None:
            record.first_item_at = now
            apply(record, Event.FIRST_ITEM_READ)
        record.items += 1
        item_size = self._item_size
        if item_size is None:
            sized = _SIZED_TYPES.get(type(item))
            if sized is None:
                sized = _SIZED_TYPES[type(item)] = isinstance(item, _SIZED)
            if sized:
                record.bytes += len(item)  # type: ignore[arg-type]
        else:
            record.bytes += item_size(item)
        record.last_item_at = now
        record.cached = None

    def _count(self, record: StreamRecord, items: list[T]) -> None:
        """The same for a whole batch: once per batch, not per item."""
        now = trio.current_time()
        if record.first_item_at is None:
            record.first_item_at = now
            apply(record, Event.FIRST_ITEM_READ)
        record.items += len(items)
        item_size = self._item_size
        if item_size is None:
            sizes = _SIZED_TYPES
            total = 0
            for item in items:
                sized = sizes.get(type(item))
                if sized is None:
                    sized = sizes[type(item)] = isinstance(item, _SIZED)
                if sized:
                    total += len(item)  # type: ignore[arg-type]
            record.bytes += total
        else:
            record.bytes += sum(map(item_size, items))
        record.last_item_at = now
        record.cached = None


def _iterated_after_exit(record: StreamRecord) -> RuntimeError:
    return RuntimeError(f"stream {record.id} was iterated after its async with block exited")


# The default size of an item: len() of bytes-like and str items, else 0. Decided
# once per item type (an isinstance against four types cost 0.7 us per item).
_SIZED = (bytes, bytearray, memoryview, str)
_SIZED_TYPES: dict[type, bool] = dict.fromkeys(_SIZED, True)


class _Batches(Generic[T]):
    """``ManagedStream.batches()``: an async iterator of lists."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ManagedStream[T]) -> None:
        self._stream = stream

    def __aiter__(self) -> _Batches[T]:
        return self

    async def __anext__(self) -> list[T]:
        return await self._stream._next_batch()


def forget_exception(record: StreamRecord) -> None:
    """The reader has left its block: nothing reads the producer's exception again.

    Kept, it would be a reference cycle: its traceback holds the reader's frames
    and the producer's, which hold this stream and its record. With full
    collections rare (``SERVER_GC_THRESHOLD``), each failed or cancelled stream
    would keep its whole connection for hours (issue #15's soak). The record's
    ``error`` (the text the registry and the logs show) stays.
    """
    record.exception = None
