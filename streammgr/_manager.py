"""The StreamManager: one nursery, one cancel scope per stream, timeouts, shutdown.

How a stream runs::

    reader task                         manager nursery
    -----------                         ---------------
    async with manager.open(p) as s:    (admission: wait for a slot, FIFO)
                                        producer task, in its own cancel scope
        async for item in s:   <------  memory channel (bounded) <---- p yields
            ...
    # exit: cancel the producer's scope, wait (shielded) until it has finished
    # its cleanup, release the slot, move the record to history.

The producer closes the channel as the very last thing it does, so "the channel
is closed" means "the producer has finished": the reader's exit waits on that,
with no extra event per stream. Timeouts are watched by one watchdog task for the
whole manager, from a heap of per-stream check times, so the per-item cost is two
counter updates and two clock reads.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, TypeVar, cast, overload

import trio

from ._errors import (
    DeadlineExceeded,
    IdleTimeout,
    ManagerClosed,
    ReaderTimeout,
    StreamCancelled,
    StreamLimitExceeded,
    UpstreamError,
)
from ._limits import UNSET, FairLimiter, Limiter, LimiterSnapshot, _Unset
from ._logging import describe_error, get_logger
from ._registry import (
    Registry,
    RegistryWatcher,
    StreamInfo,
    StreamRecord,
    freeze_labels,
    snapshot_all,
)
from ._states import CloseReason, Phase
from ._stream import CURRENT_RECORD, ManagedStream, StreamSender, is_push_producer
from ._timeouts import TimeoutWatchdog
from ._validate import check_count, check_seconds, check_strings

__all__ = ["ManagerStats", "StreamManager"]

T = TypeVar("T")

_TIMEOUT_ERRORS = {
    CloseReason.READER_TIMEOUT: ReaderTimeout,
    CloseReason.IDLE_TIMEOUT: IdleTimeout,
    CloseReason.DEADLINE: DeadlineExceeded,
}


class _Default:
    """Marker: use the manager's default for this per-stream setting."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


def default_item_size(item: object) -> int:
    """Bytes counted for an item: ``len()`` of bytes-like and str items, else 0."""
    if isinstance(item, bytes | bytearray | memoryview | str):
        return len(item)
    return 0


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """Counters and limits of a manager at one moment.

    Attributes:
        active: streams holding a slot (admitted, not yet closed).
        waiting: streams queued for a slot.
        max_streams: global limit (``None``: unlimited).
        max_streams_per_key: per-key limit (``None``: unlimited).
        max_waiting: queue bound (``None``: unbounded).
        opened_total: streams that entered ``open`` since the manager started.
        admitted_total: streams that got a slot.
        rejected_total: streams refused by a limit (``StreamLimitExceeded``).
        closed_total: streams that finished, for any reason.
        closed_by_reason: ``closed_total`` split by :class:`CloseReason` value.
        active_by_key: slots held per key.
        waiting_by_key: queued streams per key.
        closing: whether the manager has stopped admitting.
    """

    active: int
    waiting: int
    max_streams: int | None
    max_streams_per_key: int | None
    max_waiting: int | None
    opened_total: int
    admitted_total: int
    rejected_total: int
    closed_total: int
    closed_by_reason: Mapping[str, int]
    active_by_key: Mapping[str, int]
    waiting_by_key: Mapping[str, int]
    closing: bool


class StreamManager:
    """Runs many streams at once, safely.

    Use it as an async context manager: it owns a nursery in which every producer
    runs in its own cancel scope. Leaving the block stops admitting, gives active
    streams ``shutdown_grace`` seconds to finish, cancels the rest and waits until
    nothing of any stream is left running.

    Args:
        max_streams: the most streams holding a slot at once (``None``: no limit).
        max_streams_per_key: the most for one key (``None``: no limit).
        max_waiting: the most ``open`` calls queued for a slot; more are rejected at
            once (``0``: never queue; ``None``: unbounded).
        acquire_timeout: default seconds ``open`` waits for a slot (``None``: forever).
        reader_timeout: default seconds an item may wait for the reader to take it.
        idle_timeout: default seconds the producer may deliver nothing.
        deadline: default longest life of a stream, from admission.
        buffer_size: default items buffered between producer and reader (``0``: each
            item is handed over directly: strongest back-pressure).
        shutdown_grace: seconds active streams get to finish when the block exits
            normally.
        cleanup_timeout: the most seconds the shielded ``aclose()`` of a cancelled
            async generator (its ``finally`` blocks, closing its upstream) may take
            when it was parked at ``yield``. Cleanup that runs while the producer
            is cancelled mid-``await`` (and a push producer's own cleanup) is the
            producer's: Trio cannot abandon a task, so bound slow cleanup there.
        history_size: how many closed streams ``history()`` remembers.
        limiter: an admission :class:`Limiter` to use instead of the in-memory
            :class:`FairLimiter` (then the three limits above must be left unset).
        secrets: exact values (API keys...) to scrub from recorded and logged errors.
    """

    def __init__(
        self,
        max_streams: int | None = None,
        max_streams_per_key: int | None = None,
        *,
        max_waiting: int | None = None,
        acquire_timeout: float | None = None,
        reader_timeout: float | None = None,
        idle_timeout: float | None = None,
        deadline: float | None = None,
        buffer_size: int = 0,
        shutdown_grace: float = 5.0,
        cleanup_timeout: float = 5.0,
        history_size: int = 1000,
        limiter: Limiter | None = None,
        secrets: tuple[str, ...] | list[str] = (),
    ) -> None:
        if limiter is None:
            limiter = FairLimiter(max_streams, max_streams_per_key, max_waiting)
        elif (max_streams, max_streams_per_key, max_waiting) != (None, None, None):
            raise ValueError(
                "pass limits either to the limiter or to StreamManager, not both: "
                "max_streams, max_streams_per_key and max_waiting must be None with limiter="
            )
        self._limiter = limiter
        self._acquire_timeout = check_seconds("acquire_timeout", acquire_timeout)
        self._reader_timeout = check_seconds("reader_timeout", reader_timeout)
        self._idle_timeout = check_seconds("idle_timeout", idle_timeout)
        self._deadline = check_seconds("deadline", deadline)
        self._buffer_size = check_count("buffer_size", buffer_size, minimum=0)
        if not shutdown_grace >= 0:
            raise ValueError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace}")
        self._shutdown_grace = float(shutdown_grace)
        self._cleanup_timeout = cast(float, check_seconds("cleanup_timeout", cleanup_timeout))
        self._registry = Registry(history_size)
        self._secrets = [value for value in check_strings("secrets", secrets) if value]
        self._log = get_logger()
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(3).hex()
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._closing = False
        self._closed = False
        self._drained: trio.Event | None = None
        self._running_producers = 0
        self._producers_done: trio.Event | None = None
        self._rejected_total = 0
        self._watchdog = TimeoutWatchdog(self._timeout_expired)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return (
            f"<StreamManager {state} active={len(self._registry.active)} limiter={self._limiter!r}>"
        )

    # -- lifetime ----------------------------------------------------------------

    async def __aenter__(self) -> StreamManager:
        if self._nursery is not None or self._closed:
            raise RuntimeError("a StreamManager can be entered only once")
        # Resolve structlog's configuration once, now that the application has had
        # its chance to configure it: a bound logger is much cheaper per call than
        # the lazy proxy (and free when the level filters the event out).
        self._log = get_logger().bind()
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._nursery.start_soon(self._watchdog.run, name="streammgr-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._nursery is not None
        try:
            await self.aclose(grace=self._shutdown_grace if exc is None else 0.0)
        finally:
            # Also when aclose was interrupted: nothing may outlive the block.
            self._cancel_everything()
            self._nursery.cancel_scope.cancel()
            await self._nursery_manager.__aexit__(None, None, None)

    async def aclose(self, grace: float | None = None) -> None:
        """Shut down: stop admitting, let streams finish, then cancel the rest.

        New ``open`` calls raise :class:`ManagerClosed` and queued ones are
        cancelled (reason ``shutdown``) at once. Active streams get ``grace``
        seconds (default ``shutdown_grace``) to finish; the rest are cancelled
        with reason ``shutdown``. Returns when every producer has finished its
        cleanup. Safe to call from any task, and more than once.
        """
        if self._nursery is None:
            self._closing = self._closed = True
            return
        grace = self._shutdown_grace if grace is None else grace
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace}")
        self._closing = True
        for record in list(self._registry.active.values()):
            if record.phase is Phase.WAITING:
                self._request_cancel(record, CloseReason.SHUTDOWN, "the manager is shutting down")
        if self._registry.active and grace > 0:
            if self._drained is None:  # another task may be in aclose() too
                self._drained = trio.Event()
            with trio.move_on_after(grace):
                await self._drained.wait()
        self._cancel_everything()
        if self._running_producers:
            if self._producers_done is None:
                self._producers_done = trio.Event()
            await self._producers_done.wait()

    def _cancel_everything(self) -> None:
        """Stop admitting and cancel every stream, waiting or active (sync)."""
        self._closing = True
        for record in list(self._registry.active.values()):
            if record.producer_done and record.close_reason is not None:
                self._finish(record)  # failed producer whose reader has not looked yet
            else:
                self._request_cancel(record, CloseReason.SHUTDOWN, "the manager shut down")
        if not self._closed:
            self._closed = True
            for watcher in self._registry.watchers:
                watcher.close()

    # -- opening streams -----------------------------------------------------------

    @overload
    def open(
        self,
        producer: Callable[..., AsyncIterator[T]],
        /,
        *args: object,
        key: str = ...,
        labels: Mapping[str, str] | None = ...,
        acquire_timeout: float | None = ...,
        reader_timeout: float | None = ...,
        idle_timeout: float | None = ...,
        deadline: float | None = ...,
        buffer_size: int = ...,
        item_size: Callable[[T], int] = ...,
    ) -> ManagedStream[T]: ...

    @overload
    def open(
        self,
        producer: Callable[Concatenate[StreamSender[T], ...], Awaitable[None]],
        /,
        *args: object,
        key: str = ...,
        labels: Mapping[str, str] | None = ...,
        acquire_timeout: float | None = ...,
        reader_timeout: float | None = ...,
        idle_timeout: float | None = ...,
        deadline: float | None = ...,
        buffer_size: int = ...,
        item_size: Callable[[T], int] = ...,
    ) -> ManagedStream[T]: ...

    def open(
        self,
        producer: Callable[..., Any],
        /,
        *args: object,
        key: str = "default",
        labels: Mapping[str, str] | None = None,
        acquire_timeout: float | None = DEFAULT,
        reader_timeout: float | None = DEFAULT,
        idle_timeout: float | None = DEFAULT,
        deadline: float | None = DEFAULT,
        buffer_size: int = DEFAULT,
        item_size: Callable[[Any], int] = default_item_size,
    ) -> ManagedStream[Any]:
        """Open a stream: use the result as ``async with manager.open(...) as stream``.

        Entering the block waits for an admission slot (FIFO, fair across keys),
        then starts ``producer(*args)`` in the manager's nursery, in its own cancel
        scope. Iterate the stream for its items. Leaving the block (normally, by
        ``break``, by an exception or by cancellation) cancels the producer and
        returns only after it has finished its cleanup.

        Args:
            producer: an async generator function (``producer(*args)`` yields
                items); or an async function ``producer(send, *args)`` that calls
                ``await send.send(item)``; or a callable returning an async iterator.
            *args: positional arguments for the producer.
            key: the admission key (per-key limit, ``cancel_key``). Default
                ``"default"``.
            labels: str-to-str labels shown in the registry and logs. Never put
                secrets in labels.
            acquire_timeout: override the manager's default (``None``: wait forever).
            reader_timeout: override the manager's default (``None``: none).
            idle_timeout: override the manager's default (``None``: none).
            deadline: override the manager's default (``None``: none).
            buffer_size: override the manager's default channel buffer.
            item_size: how many bytes an item counts for in the registry; the
                default counts ``len()`` of bytes and str items.

        Raises:
            ManagerClosed: (on entering) the manager is shutting down or closed.
            StreamLimitExceeded: (on entering) the queue was full or the wait for a
                slot timed out.
            StreamCancelled: (on entering) cancelled while waiting for a slot.
            TypeError / ValueError: a bad argument, named in the message.
        """
        push = is_push_producer(producer)
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty str, got {key!r}")
        frozen_labels = freeze_labels(labels)
        record = StreamRecord(
            f"{self._id_prefix}-{next(self._ids)}",
            key,
            frozen_labels,
            trio.current_time(),
            time.time(),
        )
        record.reader_timeout = (
            self._reader_timeout
            if reader_timeout is DEFAULT
            else check_seconds("reader_timeout", reader_timeout)
        )
        record.idle_timeout = (
            self._idle_timeout
            if idle_timeout is DEFAULT
            else check_seconds("idle_timeout", idle_timeout)
        )
        record.deadline = (
            self._deadline if deadline is DEFAULT else check_seconds("deadline", deadline)
        )
        return ManagedStream(
            self,
            record,
            producer,
            args,
            push,
            self._acquire_timeout
            if acquire_timeout is DEFAULT
            else check_seconds("acquire_timeout", acquire_timeout),
            self._buffer_size
            if buffer_size is DEFAULT
            else check_count("buffer_size", buffer_size, minimum=0),
            item_size,
        )

    async def _start(self, stream: ManagedStream[T]) -> trio.MemoryReceiveChannel[T]:
        """Admit a stream and start its producer; called by ``__aenter__``."""
        record = stream._record
        if self._closing or self._nursery is None:
            if self._nursery is None and not self._closed:
                raise RuntimeError(
                    "the StreamManager is not running: use it as "
                    "'async with StreamManager(...) as manager:' before opening streams"
                )
            raise ManagerClosed(
                f"the StreamManager is shutting down; stream for key {record.key!r} not opened"
            )
        registry = self._registry
        registry.add(record)
        self._log.info(
            "stream.opened", stream_id=record.id, key=record.key, labels=dict(record.labels)
        )
        permit = None
        try:
            with trio.CancelScope() as record.wait_scope:
                permit = await self._limiter.acquire(record.key, timeout=stream._acquire_timeout)
        except StreamLimitExceeded as exc:
            self._rejected_total += 1
            self._log.info(
                "stream.rejected",
                stream_id=record.id,
                key=record.key,
                limit=exc.limit,
                retry_after=exc.retry_after,
            )
            self._finish(record, CloseReason.REJECTED, error=exc)
            raise
        except BaseException as exc:
            # The reader's own task was cancelled (or failed) while it waited.
            detail, error = _reader_exit_detail(exc)
            self._finish(record, CloseReason.READER_EXIT, detail=detail, error=error)
            raise
        record.wait_scope = None
        if record.close_reason is not None:
            # Cancelled while waiting (or in the instant it was admitted).
            if permit is not None:
                self._limiter.release(permit)
            self._finish(record)
            raise self._cancelled_error(record)
        assert permit is not None
        now = trio.current_time()
        record.permit = permit
        record.admitted_at = record.produced_at = now
        record.move_to(Phase.CONNECTING)
        registry.admitted(record)
        self._log.info(
            "stream.admitted",
            stream_id=record.id,
            key=record.key,
            wait=now - record.created_at,
        )
        send_channel, receive_channel = trio.open_memory_channel[T](stream._buffer_size)
        record.scope = trio.CancelScope()
        self._running_producers += 1
        self._nursery.start_soon(
            self._run_producer, record, stream._producer, stream._producer_args, stream._push,
            send_channel,
        )  # fmt: skip
        self._watchdog.watch(record, now)
        return receive_channel

    async def _run_producer(
        self,
        record: StreamRecord,
        producer: Callable[..., Any],
        args: tuple[object, ...],
        push: bool,
        send_channel: trio.MemorySendChannel[Any],
    ) -> None:
        """The producer's task: run it in its own scope, always close the channel last."""
        error: BaseException | None = None
        completed = False
        assert record.scope is not None
        CURRENT_RECORD.set(record)  # this task's own context: see current_producer()
        try:
            with record.scope:
                if push:
                    await producer(StreamSender(record, send_channel), *args)
                else:
                    await self._pump(record, producer(*args), send_channel)
                completed = True
        except Exception as exc:
            error = exc
        finally:
            # The end of the stream is "produced" now: the reader's turn starts here.
            record.produced_at = trio.current_time()
            record.producer_done = True
            send_channel.close()
            self._running_producers -= 1
            self._producer_ended(record, error, completed)
            if not self._running_producers and self._producers_done is not None:
                self._producers_done.set()

    async def _pump(
        self,
        record: StreamRecord,
        iterator: AsyncIterator[Any],
        channel: trio.MemorySendChannel[Any],
    ) -> None:
        """Move items from an async iterator to the channel; always ``aclose()`` it.

        An item goes in without a trip through the scheduler when the channel has
        room (or a reader is waiting); only a full channel makes the producer wait.
        A hand-off through the scheduler costs more than everything else streammgr
        does per item, and the buffer bounds how far the producer can run ahead.
        """
        next_item = getattr(iterator, "__anext__", None)
        if next_item is None:
            raise TypeError(
                f"the producer returned {type(iterator).__name__}, not an async iterator; "
                f"pass an async generator function or a callable returning an async iterator"
            )
        clock = trio.current_time
        send, send_nowait, would_block = channel.send, channel.send_nowait, trio.WouldBlock
        try:
            while True:
                try:
                    item = await next_item()
                except StopAsyncIteration:
                    return
                record.produced += 1
                record.produced_at = clock()
                try:
                    send_nowait(item)
                    continue
                except would_block:
                    pass
                await send(item)  # outside the except: no exception kept alive
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                # Runs even when cancelled, and cannot hang the stream's close.
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + self._cleanup_timeout
                    await aclose()
                if cleanup.cancelled_caught:
                    self._log.warning(
                        "stream.cleanup_timeout",
                        stream_id=record.id,
                        key=record.key,
                        cleanup_timeout=self._cleanup_timeout,
                    )

    def _producer_ended(
        self, record: StreamRecord, error: BaseException | None, completed: bool
    ) -> None:
        if record.phase is Phase.CLOSED:
            return
        if error is not None and record.close_reason is None:
            # The upstream is gone, so the slot goes back now; the record closes
            # when the reader has taken the buffered items and then the error.
            record.exception = error
            record.close_reason = (
                error.close_reason
                if isinstance(error, UpstreamError)
                else CloseReason.PRODUCER_ERROR
            )
            record.error = describe_error(error, self._secrets)
            record.move_to(Phase.CLOSING)
            if record.permit is not None:
                self._limiter.release(record.permit)
        elif record.close_reason is not None:
            if error is not None:
                # Failed while being cancelled: keep the cancel reason, note the error.
                record.error = describe_error(error, self._secrets)
            self._finish(record)
        elif not completed:
            # Cancelled from outside its own scope: the manager's nursery is shutting down.
            self._finish(record, CloseReason.SHUTDOWN, detail="the manager shut down")
        # else: finished normally; the reader closes it once it has read the end.

    async def _end(
        self,
        record: StreamRecord,
        channel: trio.MemoryReceiveChannel[Any],
        exc: BaseException | None,
    ) -> None:
        """The reader left the block: stop the producer, wait for it, close the record."""
        if record.phase is Phase.CLOSED:
            return
        if not record.producer_done:
            if record.close_reason is None:
                detail, error = _reader_exit_detail(exc)
                if error is not None:
                    record.error = describe_error(error, self._secrets)
                self._request_cancel(record, CloseReason.READER_EXIT, detail)
            # The producer closes the channel as its very last act: drain until then.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._cleanup_timeout) as patience:
                    async for _ in channel:
                        pass
                if patience.cancelled_caught:
                    # Still waiting (guarantee 1), but say which stream holds its reader.
                    self._log.warning(
                        "stream.cleanup_slow",
                        stream_id=record.id,
                        key=record.key,
                        waited=self._cleanup_timeout,
                    )
                    async for _ in channel:
                        pass
            return
        if record.close_reason is not None:
            self._finish(record)  # the producer failed; the reader left before the error
        elif record.reader_saw_end:
            self._finish(record, CloseReason.COMPLETED)
        else:
            detail, error = _reader_exit_detail(exc)
            self._finish(record, CloseReason.READER_EXIT, detail=detail, error=error)

    # -- closing -----------------------------------------------------------------

    def _request_cancel(self, record: StreamRecord, reason: CloseReason, detail: str) -> bool:
        """Ask a stream to end with ``reason``; the first reason wins."""
        if record.close_reason is not None or record.phase is Phase.CLOSED:
            return False
        record.close_reason = reason
        record.detail = detail
        if record.phase is Phase.WAITING:
            record.move_to(Phase.CLOSING)
            if record.wait_scope is not None:
                record.wait_scope.cancel()
            return True
        record.move_to(Phase.CLOSING)
        if record.producer_done:
            self._finish(record)
        elif record.scope is not None:
            record.scope.cancel()
        return True

    def _finish(
        self,
        record: StreamRecord,
        reason: CloseReason | None = None,
        *,
        detail: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Close a record for good: release its slot, move it to history, log it."""
        if record.phase is Phase.CLOSED:
            return
        if reason is not None and record.close_reason is None:
            record.close_reason = reason
        if detail is not None and record.detail is None:
            record.detail = detail
        if error is not None and record.error is None:
            record.error = describe_error(error, self._secrets)
        now = trio.current_time()
        record.closed_at = now
        record.move_to(Phase.CLOSED)
        if record.permit is not None:
            self._limiter.release(record.permit)
        self._watchdog.forget(record)
        self._registry.remove(record)
        self._log.info(
            "stream.closed",
            stream_id=record.id,
            key=record.key,
            reason=str(record.close_reason),
            duration=now - record.created_at,
            items=record.items,
            bytes=record.bytes,
            error=record.error,
        )
        if self._drained is not None and not self._registry.active:
            self._drained.set()

    def _cancelled_error(self, record: StreamRecord) -> StreamCancelled:
        reason = record.close_reason
        assert reason is not None
        detail = record.detail or str(reason)
        error_class = _TIMEOUT_ERRORS.get(reason)
        if error_class is not None:
            timeout = {
                CloseReason.READER_TIMEOUT: record.reader_timeout,
                CloseReason.IDLE_TIMEOUT: record.idle_timeout,
                CloseReason.DEADLINE: record.deadline,
            }[reason]
            return error_class(
                detail, close_reason=reason, stream_id=record.id, timeout=timeout or 0.0
            )
        return StreamCancelled(detail, close_reason=reason, stream_id=record.id)

    def _timeout_expired(self, record: StreamRecord, reason: CloseReason, detail: str) -> None:
        self._log.info("stream.timeout", stream_id=record.id, key=record.key, reason=str(reason))
        self._request_cancel(record, reason, detail)

    # -- inspection and control ------------------------------------------------------

    def streams(self) -> list[StreamInfo]:
        """Snapshots of every stream in flight (waiting, streaming or closing)."""
        return snapshot_all(self._registry.active.values())

    def get(self, stream_id: str) -> StreamInfo | None:
        """The snapshot of an active or recently closed stream, or ``None``."""
        return self._registry.get(stream_id)

    def history(self) -> list[StreamInfo]:
        """Recently closed streams, oldest first (at most ``history_size``)."""
        return list(self._registry.history.values())

    def stats(self) -> ManagerStats:
        """Counters and limits now."""
        registry = self._registry
        limits: LimiterSnapshot = self._limiter.snapshot()
        closed = {str(reason): count for reason, count in registry.closed_by_reason.items()}
        return ManagerStats(
            active=limits.active,
            waiting=limits.waiting,
            max_streams=limits.max_streams,
            max_streams_per_key=limits.max_streams_per_key,
            max_waiting=limits.max_waiting,
            opened_total=registry.opened_total,
            admitted_total=registry.admitted_total,
            rejected_total=self._rejected_total,
            closed_total=sum(closed.values()),
            closed_by_reason=closed,
            active_by_key=limits.active_by_key,
            waiting_by_key=limits.waiting_by_key,
            closing=self._closing,
        )

    def cancel(
        self,
        stream_id: str,
        *,
        reason: str = "cancelled by operator",
        close_reason: CloseReason = CloseReason.CANCELLED,
    ) -> bool:
        """End one stream from outside, whether it waits for a slot or streams.

        Its reader's loop (or its waiting ``open``) raises :class:`StreamCancelled`
        carrying ``reason``; the producer is cancelled and its slot freed as soon as
        its cleanup has run.

        Args:
            stream_id: the id of the stream.
            reason: free text, recorded as the close ``detail`` and passed to the
                reader's :class:`StreamCancelled`. Never put secrets here.
            close_reason: the :class:`CloseReason` to record (the gateway uses
                ``CLIENT_DISCONNECTED``).

        Returns:
            ``True`` if the stream was found and not already ending.
        """
        record = self._registry.active.get(stream_id)
        if record is None:
            return False
        return self._request_cancel(record, close_reason, reason)

    def cancel_key(
        self,
        key: str,
        *,
        reason: str = "cancelled by operator",
        close_reason: CloseReason = CloseReason.CANCELLED,
    ) -> int:
        """End every stream of ``key`` (see :meth:`cancel`); returns how many."""
        records = [r for r in self._registry.active.values() if r.key == key]
        return sum(self._request_cancel(record, close_reason, reason) for record in records)

    def set_limits(
        self,
        *,
        max_streams: int | _Unset | None = UNSET,
        max_streams_per_key: int | _Unset | None = UNSET,
        max_waiting: int | _Unset | None = UNSET,
    ) -> None:
        """Change admission limits now; arguments left out stay as they are.

        Raising a limit admits waiters at once; lowering one never cancels an
        active stream (new ones wait until enough have finished).
        """
        self._limiter.resize(
            max_streams=max_streams,
            max_streams_per_key=max_streams_per_key,
            max_waiting=max_waiting,
        )

    def add_secret(self, value: str) -> None:
        """Scrub ``value`` (an API key, a token) from every error text recorded or logged."""
        if value and value not in self._secrets:
            self._secrets.append(value)

    @asynccontextmanager
    async def watch(self, max_buffer: int = 1024) -> AsyncIterator[RegistryWatcher]:
        """Watch registry changes: ``async with manager.watch() as events:``.

        Yields an async iterator of :class:`RegistryEvent` (opened, admitted,
        closed; overflow if this watcher fell ``max_buffer`` events behind). Take
        ``manager.streams()`` right after entering for a consistent starting point.
        Iteration ends when the manager closes.
        """
        watcher = RegistryWatcher(max_buffer)
        if self._closed:
            watcher.close()
        self._registry.watchers.append(watcher)
        try:
            yield watcher
        finally:
            self._registry.watchers.remove(watcher)
            watcher.close()

    @property
    def limiter(self) -> Limiter:
        """The admission limiter in use."""
        return self._limiter


def _reader_exit_detail(exc: BaseException | None) -> tuple[str, BaseException | None]:
    if exc is None:
        return "the reader left the block", None
    if isinstance(exc, trio.Cancelled):
        return "the reader's task was cancelled", None
    if isinstance(exc, GeneratorExit | KeyboardInterrupt | SystemExit):
        return f"the reader stopped ({type(exc).__name__})", None
    return "the reader raised an exception", exc
