"""The I/O side of the lifecycle: admission, the producer tasks, and closing records.

:class:`StreamRunner` is what a :class:`ManagedStream` talks to (it implements the
reader's :class:`~streammgr._stream.StreamOwner` interface). It decides nothing by
itself: every change of a stream's state goes through
:func:`streammgr._lifecycle.apply`, and the runner carries out the actions the
answer lists (cancel a scope, release the slot, close the record, shut down).

How a stream runs::

    reader task                         manager nursery
    -----------                         ---------------
    async with manager.open(p) as s:    (admission: wait for a slot, FIFO)
                                        producer task, in its own cancel scope
        async for item in s:   <------  memory channel (bounded) <---- p yields
            ...
    # exit: cancel the producer's scope, wait (shielded) until it has finished
    # its cleanup, close the record.

The producer closes the channel as the very last thing it does, so "the channel
is closed" means "the producer has finished": the reader's exit waits on that,
with no extra event per stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import trio

from ._batch import _Batch
from ._errors import (
    DeadlineExceeded,
    IdleTimeout,
    LimiterError,
    LimiterUnavailable,
    ManagerClosed,
    ReaderTimeout,
    StreamCancelled,
    StreamLimitExceeded,
    UpstreamError,
)
from ._inline import InlineProducer, InlineStream
from ._lifecycle import Action, Event, State, apply
from ._limits import Limiter
from ._logging import describe_error, redact
from ._registry import Registry, StreamRecord
from ._states import CloseReason
from ._stream import CURRENT_RECORD, CURRENT_SECRETS, ManagedStream, StreamSender
from ._timeouts import TimeoutWatchdog
from ._timers import SharedTimers

__all__ = ["StreamRunner"]

T = TypeVar("T")

_TIMEOUT_ERRORS = {
    CloseReason.READER_TIMEOUT: ReaderTimeout,
    CloseReason.IDLE_TIMEOUT: IdleTimeout,
    CloseReason.DEADLINE: DeadlineExceeded,
}


class StreamRunner:
    """Runs the streams of one manager in its nursery (private).

    Args:
        limiter: admission.
        registry: the records.
        secrets: the manager's list of values to scrub (shared, so
            ``add_secret`` reaches it).
        cleanup_timeout: the bound on a parked generator's shielded ``aclose()``.
        log: the logger.
    """

    def __init__(
        self,
        limiter: Limiter,
        registry: Registry,
        secrets: list[str],
        cleanup_timeout: float,
        log: Any,
    ) -> None:
        self.limiter = limiter
        self.registry = registry
        self.secrets = secrets
        self.cleanup_timeout = cleanup_timeout
        self.log = log
        self.watchdog = TimeoutWatchdog(self._timeout_expired)
        # The timers of the manager's responses (keep-alives, write guards): the
        # watchdog's task serves them too.
        self.timers: SharedTimers = self.watchdog.timers
        self.nursery: trio.Nursery | None = None
        self.closing = False
        self.closed = False
        self.rejected_total = 0
        self.drained: trio.Event | None = None
        self.running_producers = 0
        self.producers_done: trio.Event | None = None

    # -- the lifecycle, carried out ------------------------------------------------

    def handle(
        self,
        record: StreamRecord,
        event: Event,
        *,
        reason: CloseReason | None = None,
        detail: str | None = None,
        error: BaseException | None = None,
    ) -> tuple[Action, ...]:
        """Apply ``event`` to the record and carry out what the lifecycle answers.

        ``START_PRODUCER`` and ``AWAIT_PRODUCER`` are left to the caller (they
        happen where the caller is: admission, the reader's exit). An ``error`` is
        described for the registry after the cancel it accompanies and before the
        record closes, so that the close is logged with it.
        """
        actions = apply(record, event, reason=reason, detail=detail, error=error)
        if not actions:
            return actions
        for action in actions:
            if action is Action.CANCEL_PRODUCER:
                assert record.scope is not None
                record.scope.cancel()
                producer = record.producer
                if producer is not None and not record.pulling and event is not Event.READER_LEFT:
                    # A single-reader stream whose reader is not pulling (parked in a
                    # write, say): nothing of it is waiting to be cancelled, so its
                    # producer is closed now, by the manager, and its slot goes back.
                    self._close_parked_soon(record, producer)
            elif action is Action.CANCEL_WAIT:
                if record.wait_scope is not None:
                    record.wait_scope.cancel()
            elif action is Action.RELEASE_SLOT:
                self._release(record)
            elif action is Action.CLOSE_RECORD:
                if error is not None and record.error is None:
                    record.error = describe_error(error, self.secrets)
                self._close_record(record)
            elif action is Action.SHUT_DOWN_MANAGER:
                self.cancel_everything()
        if error is not None and record.error is None:
            record.error = describe_error(error, self.secrets)
        return actions

    def cancel(self, record: StreamRecord, reason: CloseReason, detail: str) -> bool:
        """End a stream from outside with ``reason``; ``False`` if it was already ending.

        ``detail`` is redacted here, where every cancel's text is stored: the history,
        the logs and the reader's :class:`StreamCancelled` all take it from the record.
        """
        detail = redact(detail, self.secrets)
        return bool(self.handle(record, Event.CANCEL, reason=reason, detail=detail))

    def cancel_waiting(self) -> None:
        """Cancel every stream still waiting for a slot (shutdown's first step)."""
        for record in list(self.registry.active.values()):
            if record.state is State.WAITING:
                self.handle(record, Event.SHUTDOWN, detail="the manager is shutting down")

    def cancel_everything(self) -> None:
        """Stop admitting and end every stream, waiting or active (sync)."""
        self.closing = True
        for record in list(self.registry.active.values()):
            self.handle(record, Event.SHUTDOWN, detail="the manager shut down")

    def close_watchers(self) -> None:
        """The manager has closed: end every change feed, after its last ``closed`` event."""
        if not self.closed:
            self.closed = True
            for watcher in self.registry.watchers:
                watcher.close()

    def cancelled_error(self, record: StreamRecord) -> StreamCancelled:
        """The error a reader of a stream ended from outside gets."""
        reason = record.close_reason
        assert reason is not None
        detail = record.detail or ""
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
        self.log.info("stream.timeout", stream_id=record.id, key=record.key, reason=str(reason))
        self.cancel(record, reason, detail)

    def _release(self, record: StreamRecord) -> None:
        """Give the stream's slot back, once; a failing limiter breaks nothing here.

        The stream's outcome is already decided when its slot goes back, so a
        limiter whose ``release`` raises is logged (``stream.limiter_error``) and
        the close goes on: the record still closes and leaves ``streams()``.
        """
        permit = record.permit
        if permit is None:
            return
        record.permit = None
        try:
            self.limiter.release(permit)
        except Exception as exc:
            # Not log.exception: a traceback would carry the unredacted message.
            self.log.error(  # noqa: TRY400
                "stream.limiter_error",
                stream_id=record.id,
                key=record.key,
                operation="release",
                error=describe_error(exc, self.secrets),
            )

    def _close_record(self, record: StreamRecord) -> None:
        """Move a closed record to history and log it; nothing of it stays behind."""
        now = trio.current_time()
        record.closed_at = now
        self.watchdog.forget(record)
        self.registry.remove(record)
        self.log.info(
            "stream.closed",
            stream_id=record.id,
            key=record.key,
            reason=str(record.close_reason),
            duration=now - record.created_at,
            items=record.items,
            bytes=record.bytes,
            error=record.error,
            **({"notes": dict(record.notes)} if record.notes else {}),
        )
        if self.drained is not None and not self.registry.active:
            self.drained.set()

    # -- the reader's side calls these ---------------------------------------------

    async def admit(self, stream: ManagedStream[T]) -> trio.MemoryReceiveChannel[T]:
        """Admit a stream and start its producer; called by its ``__aenter__``."""
        record = stream._record
        now = await self._acquire(stream)
        send_channel, receive_channel = trio.open_memory_channel[T](stream._buffer_size)
        record.scope = trio.CancelScope()
        self.running_producers += 1
        self.nursery.start_soon(  # type: ignore[union-attr]
            self._run_producer, record, stream._producer, stream._producer_args, stream._push,
            send_channel,
        )  # fmt: skip
        self.watchdog.watch(record, now)
        return receive_channel

    async def admit_inline(self, stream: InlineStream[T]) -> InlineProducer:
        """Admit a single-reader stream; called by its ``__aenter__``.

        No task is started: the stream's cancel scope is entered here, in the
        reader's task, and exited by the reader's ``__aexit__``, so that it covers
        the reader's block (and every pull in it).
        """
        record = stream._record
        now = await self._acquire(stream)
        producer = InlineProducer(stream._producer, stream._producer_args)
        record.producer = producer
        record.pulling = False
        record.scope = scope = trio.CancelScope()
        self.running_producers += 1
        self.watchdog.watch(record, now)
        scope.__enter__()
        return producer

    async def _acquire(self, stream: ManagedStream[Any]) -> float:
        """Register a stream and wait for its slot; returns the admission time."""
        record = stream._record
        if self.closing or self.nursery is None:
            if self.nursery is None and not self.closed:
                raise RuntimeError(
                    "the StreamManager is not running: use it as "
                    "'async with StreamManager(...) as manager:' before opening streams"
                )
            raise ManagerClosed(
                f"the StreamManager is shutting down; stream for key {record.key!r} not opened"
            )
        self.registry.add(record)
        self.log.info(
            "stream.opened", stream_id=record.id, key=record.key, labels=dict(record.labels)
        )
        permit = None
        try:
            with trio.CancelScope() as record.wait_scope:
                permit = await self.limiter.acquire(record.key, timeout=stream._acquire_timeout)
        except StreamLimitExceeded as exc:
            if record.state is not State.WAITING:
                # Cancelled in the same instant: the reader gets what the record says.
                raise self.cancelled_error(record) from exc
            self.rejected_total += 1
            self.log.info(
                "stream.rejected",
                stream_id=record.id,
                key=record.key,
                limit=exc.limit,
                retry_after=exc.retry_after,
            )
            self.handle(record, Event.REJECTED, error=exc)
            raise
        except trio.Cancelled:
            self.handle(record, Event.READER_LEFT, detail="the reader's task was cancelled")
            raise
        except Exception as exc:
            # The limiter itself failed (a remote one: a network error).
            if record.state is not State.WAITING:
                raise self.cancelled_error(record) from exc  # as above
            text = describe_error(exc, self.secrets)
            self.log.error(  # noqa: TRY400 - no traceback: it would carry unredacted text
                "stream.limiter_error",
                stream_id=record.id,
                key=record.key,
                operation="acquire",
                error=text,
            )
            self.handle(record, Event.LIMITER_FAILED, error=exc)
            raise LimiterError(
                f"the admission limiter failed to acquire a slot for stream {record.id} "
                f"(key {record.key!r}): {text}; the stream was not opened: check the "
                f"limiter's backend, then open it again",
                key=record.key,
                stream_id=record.id,
                retry_after=exc.retry_after if isinstance(exc, LimiterUnavailable) else None,
            ) from exc
        except BaseException as exc:
            detail, error = reader_exit_detail(exc)
            self.handle(record, Event.READER_LEFT, detail=detail, error=error)
            raise
        record.wait_scope = None
        record.permit = permit
        if record.state is not State.WAITING:
            # Cancelled while waiting (or in the instant it was admitted).
            self._release(record)
            raise self.cancelled_error(record)
        now = trio.current_time()
        record.admitted_at = record.produced_at = now
        apply(record, Event.ADMITTED)  # its one action, START_PRODUCER, is what follows
        self.registry.admitted(record)
        self.log.info(
            "stream.admitted",
            stream_id=record.id,
            key=record.key,
            wait=now - record.created_at,
        )
        return now

    async def reader_left(
        self,
        record: StreamRecord,
        channel: trio.MemoryReceiveChannel[Any],
        exc: BaseException | None,
    ) -> None:
        """The reader left the block: end the stream, wait for its producer."""
        if record.state is State.CLOSED:
            return  # the common case: it read the end (the event would be ignored)
        detail, error = reader_exit_detail(exc)
        actions = self.handle(record, Event.READER_LEFT, detail=detail, error=error)
        if Action.AWAIT_PRODUCER not in actions:
            return
        # The producer closes the channel as its very last act: drain until then.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.cleanup_timeout) as patience:
                async for _ in channel:
                    pass
            if patience.cancelled_caught:
                # Still waiting (guarantee 1), but say which stream holds its reader.
                self.log.warning(
                    "stream.cleanup_slow",
                    stream_id=record.id,
                    key=record.key,
                    waited=self.cleanup_timeout,
                )
                async for _ in channel:
                    pass

    # -- the producer's task -----------------------------------------------------------

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
        event = Event.PRODUCER_CANCELLED
        scope = record.scope
        assert scope is not None
        CURRENT_RECORD.set(record)  # this task's own context: see current_producer()
        CURRENT_SECRETS.set(self.secrets)
        try:
            with scope:
                if push:
                    await producer(StreamSender(record, send_channel), *args)
                else:
                    await self._pump(record, producer(*args), send_channel)
                event = Event.PRODUCER_FINISHED
        except Exception as exc:
            error, event = exc, Event.PRODUCER_FAILED
        except trio.Cancelled:
            raise
        except BaseExceptionGroup as group:
            # A push producer's own nursery, cancelled from outside: its Cancelled
            # belong to the canceller's scope and go on; what else it holds is the
            # producer's error (an Exception) or a fatal one.
            cancelled, rest = group.split(trio.Cancelled)
            if rest is None:
                raise
            if isinstance(rest, Exception):
                error, event = rest, Event.PRODUCER_FAILED
                if cancelled is not None:
                    raise cancelled from None
            else:
                error, event = rest, Event.PRODUCER_ABORTED
                raise
        except BaseException as exc:
            # KeyboardInterrupt, SystemExit, a custom BaseException: as in Trio, it
            # propagates, through the nursery, and ends the manager and every stream.
            error, event = exc, Event.PRODUCER_ABORTED
            raise
        finally:
            if scope.cancelled_caught:
                event = Event.PRODUCER_CANCELLED
            if record.produced == record.items:
                # The end of the stream is "produced" now: the reader's turn starts
                # here (if items still wait, it started when the oldest was produced).
                record.produced_at = trio.current_time()
            send_channel.close()
            self._producer_done(record, event, error)
            del error  # its traceback holds this frame: no reference cycle left

    def _producer_done(
        self, record: StreamRecord, event: Event, error: BaseException | None
    ) -> None:
        """A producer has finished (its cleanup run): account its end, once."""
        self.running_producers -= 1
        reason = (
            error.close_reason
            if isinstance(error, UpstreamError)
            else CloseReason.PRODUCER_ERROR
            if error is not None
            else None
        )
        self.handle(record, event, reason=reason, error=error)
        if not self.running_producers and self.producers_done is not None:
            self.producers_done.set()

    async def _pump(
        self,
        record: StreamRecord,
        iterator: AsyncIterator[Any],
        channel: trio.MemorySendChannel[Any],
    ) -> None:
        """Move items from an async iterator to the channel; always ``aclose()`` it.

        An item goes in without a trip through the scheduler when the channel has
        room (or a reader is waiting); only a full channel makes the producer wait.
        This departs from Trio's convention that every ``send`` checkpoints: a
        hand-off through the scheduler costs more than everything else streammgr
        does per item (docs/performance.md), and the buffer still bounds how far
        the producer runs ahead. An iterator with ``anext_batch()`` (a
        :class:`~streammgr.BatchIterator`) is read a batch at a time, each batch
        one hand-off.
        """
        next_item = getattr(iterator, "__anext__", None)
        if next_item is None:
            raise TypeError(
                f"the producer returned {type(iterator).__name__}, not an async iterator; "
                f"pass an async generator function or a callable returning an async iterator"
            )
        next_batch = getattr(iterator, "anext_batch", None)
        # Only the activity timeouts need to know when the reader's turn began: when
        # the oldest item it has not taken was handed over.
        stamp = record.reader_timeout is not None or record.idle_timeout is not None
        clock = trio.current_time
        send, send_nowait, would_block = channel.send, channel.send_nowait, trio.WouldBlock
        try:
            while True:
                if next_batch is None:
                    try:
                        item = await next_item()
                    except StopAsyncIteration:
                        return
                    produced = record.produced
                    record.produced = produced + 1
                else:
                    try:
                        items = await next_batch()
                    except StopAsyncIteration:
                        return
                    if not items:
                        await trio.lowlevel.checkpoint()  # see BatchIterator._next_list
                        continue
                    produced = record.produced
                    record.produced = produced + len(items)
                    item = _Batch(items)
                if stamp and produced == record.items:
                    # The reader's turn starts now: the oldest item it has not taken.
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
                    cleanup.deadline = trio.current_time() + self.cleanup_timeout
                    await aclose()
                if cleanup.cancelled_caught:
                    self.log.warning(
                        "stream.cleanup_timeout",
                        stream_id=record.id,
                        key=record.key,
                        cleanup_timeout=self.cleanup_timeout,
                    )

    # -- single-reader streams: the reader's task runs the producer ----------------------

    async def reader_left_inline(
        self, record: StreamRecord, producer: InlineProducer, exc: BaseException | None
    ) -> None:
        """A single-reader stream's block exited: end the stream, close its producer."""
        if record.state is State.CLOSED:
            return  # the common case: it read the end, or took the error
        detail, error = reader_exit_detail(exc)
        actions = self.handle(record, Event.READER_LEFT, detail=detail, error=error)
        if Action.AWAIT_PRODUCER in actions:
            await self.inline_ended(record, producer, Event.PRODUCER_CANCELLED, None)

    async def inline_ended(
        self,
        record: StreamRecord,
        producer: InlineProducer,
        event: Event,
        error: BaseException | None,
    ) -> None:
        """Close a single-reader stream's producer and account its end, exactly once.

        Called by the reader (its producer finished, failed, or is left behind by
        the reader's exit). If the manager's closer is already at it, waits for it,
        shielded, as a reader waits for a producer's task.
        """
        closing = producer.closing
        if closing is None:
            producer.closing = trio.Event()
            await self._close_inline(record, producer, event, error)
            return
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.cleanup_timeout) as patience:
                await closing.wait()
            if patience.cancelled_caught:
                self.log.warning(
                    "stream.cleanup_slow",
                    stream_id=record.id,
                    key=record.key,
                    waited=self.cleanup_timeout,
                )
                await closing.wait()

    def inline_aborted(
        self, record: StreamRecord, producer: InlineProducer, error: BaseException
    ) -> None:
        """A single-reader stream's producer raised a fatal ``BaseException``: it has
        ended (its frames unwound); the manager shuts down, as with a task."""
        if producer.closing is not None:
            return
        producer.closing = closing = trio.Event()
        record.producer = None
        producer.forget()
        try:
            self._producer_done(record, Event.PRODUCER_ABORTED, error)
        finally:
            closing.set()

    def _close_parked_soon(self, record: StreamRecord, producer: InlineProducer) -> None:
        """Close a parked single-reader producer in the manager's nursery (once)."""
        if producer.closing is not None or self.nursery is None:
            return
        producer.closing = trio.Event()
        self.nursery.start_soon(self._close_parked, record, producer, name="streammgr-close-parked")

    async def _close_parked(self, record: StreamRecord, producer: InlineProducer) -> None:
        CURRENT_RECORD.set(record)  # this task's own context: see current_producer()
        CURRENT_SECRETS.set(self.secrets)
        await self._close_inline(record, producer, Event.PRODUCER_CANCELLED, None)

    async def _close_inline(
        self,
        record: StreamRecord,
        producer: InlineProducer,
        event: Event,
        error: BaseException | None,
    ) -> None:
        """``aclose()`` the producer (shielded, bounded, as ``_pump`` does), then
        account its end; an error of its cleanup is its error, as in a task."""
        closing = producer.closing
        assert closing is not None
        try:
            iterator = producer.iterator
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + self.cleanup_timeout
                    try:
                        await aclose()
                    except Exception as exc:
                        error, event = exc, Event.PRODUCER_FAILED
                if cleanup.cancelled_caught:
                    self.log.warning(
                        "stream.cleanup_timeout",
                        stream_id=record.id,
                        key=record.key,
                        cleanup_timeout=self.cleanup_timeout,
                    )
            record.pulling = None
            if record.produced == record.items:
                record.produced_at = trio.current_time()
            # Nothing of the closed producer stays reachable from the record.
            record.producer = None
            producer.forget()
            self._producer_done(record, event, error)
        finally:
            closing.set()


def reader_exit_detail(exc: BaseException | None) -> tuple[str, BaseException | None]:
    """The close detail for a reader that left with ``exc``, and the error to record."""
    if exc is None:
        return "the reader left the block", None
    if isinstance(exc, trio.Cancelled):
        return "the reader's task was cancelled", None
    if isinstance(exc, GeneratorExit | KeyboardInterrupt | SystemExit):
        return f"the reader stopped ({type(exc).__name__})", None
    return "the reader raised an exception", exc
