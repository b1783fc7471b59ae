"""The StreamManager: the public face of a set of streams run in one nursery.

It holds the configuration (limits, default timeouts, buffer), opens streams,
and answers inspection and control calls. Running them is the
:class:`~streammgr._runner.StreamRunner`'s job, and every change of a stream's
state is decided by :mod:`streammgr._lifecycle`.
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

import sniffio
import trio

from ._inline import InlineStream
from ._lifecycle import CANCEL_REASONS
from ._limits import FairLimiter, Limiter, LimiterSnapshot
from ._logging import get_logger
from ._options import check_option
from ._registry import (
    Registry,
    RegistryWatcher,
    StreamInfo,
    StreamRecord,
    freeze_labels,
    snapshot_all,
)
from ._runner import StreamRunner
from ._states import CloseReason
from ._stream import ManagedStream, StreamSender, is_push_producer
from ._validate import UNSET, _Unset, check_strings

__all__ = ["ManagerStats", "StreamManager"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """Counters and limits of a manager at one moment.

    Attributes:
        active: streams holding an admission slot: admitted, and their producer
            has not finished yet. The slot is the upstream's, so it goes back the
            moment the producer has finished (its upstream closed), even while
            the reader still has buffered items or the producer's error to take;
            ``len(manager.streams())`` counts those too.
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

    The options are defined once, with their checks, in :mod:`streammgr._options`;
    ``open`` and :class:`~streammgr.server.EventStreamResponse` take the per-stream
    ones (timeouts, buffer) by the same names, to override these defaults.

    Args:
        max_streams: the most streams holding a slot at once (``None``: no limit).
        max_streams_per_key: the most streams holding a slot at once for one key
            (``None``: no limit).
        max_waiting: the most streams queued for a slot; more are refused at once
            (``0``: never queue; ``None``: no bound).
        acquire_timeout: seconds a stream may wait for a slot before it is refused
            (``None``: forever). The default of every ``open``.
        reader_timeout: seconds an item may wait for the reader to take it
            (``None``: forever). The default of every ``open``.
        idle_timeout: seconds the producer may deliver nothing (``None``: forever).
            The default of every ``open``.
        deadline: the longest life of a stream, in seconds from its admission
            (``None``: none). The default of every ``open``.
        buffer_size: hand-offs (items or batches) buffered between producer and
            reader (``0``: each is handed over directly). The default of every
            ``open``; 16 measured 4.3x the items/s of ``0`` per item and 2.7x per
            batch (docs/performance.md); ``0`` is the strongest back-pressure.
        shutdown_grace: seconds active streams get to finish at shutdown (when the
            block exits normally).
        cleanup_timeout: the most seconds a cancelled producer's cleanup may take
            when it was parked at ``yield`` (the shielded ``aclose()`` of its async
            generator: its ``finally`` blocks, closing its upstream). Cleanup that
            runs while the producer is cancelled mid-``await`` (and a push
            producer's own cleanup) is the producer's: Trio cannot abandon a task,
            so bound slow cleanup there.
        history_size: how many closed streams ``history()`` remembers.
        limiter: an admission :class:`Limiter` to use instead of the in-memory
            :class:`FairLimiter` (then the three limits above must be left unset).
        secrets: exact values (API keys...) to scrub from recorded and logged errors;
            the limiter's own (``Limiter.secrets``: a Redis URL's password) are added.
        id_prefix: what stream ids start with, e.g. the instance id in cluster mode:
            ids are then ``{id_prefix}-{4 random hex}-{n}``, unique across instances
            with distinct ids (and across restarts of one). ``None``: ``{6 random
            hex}-{n}``, unique within the manager.
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
        buffer_size: int = 16,
        shutdown_grace: float = 5.0,
        cleanup_timeout: float = 5.0,
        history_size: int = 1000,
        limiter: Limiter | None = None,
        secrets: tuple[str, ...] | list[str] = (),
        id_prefix: str | None = None,
    ) -> None:
        if limiter is None:
            limiter = FairLimiter(
                check_option("max_streams", max_streams),
                check_option("max_streams_per_key", max_streams_per_key),
                check_option("max_waiting", max_waiting),
            )
        elif (max_streams, max_streams_per_key, max_waiting) != (None, None, None):
            raise ValueError(
                "pass limits either to the limiter or to StreamManager, not both: "
                "max_streams, max_streams_per_key and max_waiting must be None with limiter="
            )
        self._limiter = limiter
        self._acquire_timeout: float | None = check_option("acquire_timeout", acquire_timeout)
        self._reader_timeout: float | None = check_option("reader_timeout", reader_timeout)
        self._idle_timeout: float | None = check_option("idle_timeout", idle_timeout)
        self._deadline: float | None = check_option("deadline", deadline)
        self._buffer_size: int = check_option("buffer_size", buffer_size)
        self._shutdown_grace: float = check_option("shutdown_grace", shutdown_grace)
        self._cleanup_timeout: float = check_option("cleanup_timeout", cleanup_timeout)
        self._registry = Registry(check_option("history_size", history_size))
        self._secrets = [value for value in check_strings("secrets", secrets) if value]
        for value in limiter.secrets:  # a Redis URL's password...
            self.add_secret(value)
        self._ids = itertools.count(1)
        if id_prefix is None:
            self._id_prefix = os.urandom(3).hex()
        elif isinstance(id_prefix, str) and id_prefix and id_prefix.isprintable():
            self._id_prefix = f"{id_prefix}-{os.urandom(2).hex()}"
        else:
            raise ValueError(
                f"id_prefix must be a non-empty printable str (e.g. the instance id), "
                f"got {id_prefix!r}"
            )
        self._nursery_manager: Any = None
        self._runner = StreamRunner(
            limiter, self._registry, self._secrets, self._cleanup_timeout, get_logger()
        )

    def __repr__(self) -> str:
        runner = self._runner
        state = "closed" if runner.closed else "closing" if runner.closing else "open"
        return (
            f"<StreamManager {state} active={len(self._registry.active)} limiter={self._limiter!r}>"
        )

    # -- lifetime ----------------------------------------------------------------

    async def __aenter__(self) -> StreamManager:
        require_trio()
        runner = self._runner
        if runner.nursery is not None or runner.closed:
            raise RuntimeError("a StreamManager can be entered only once")
        # Resolve the logging configuration once, now that the application has had
        # its chance to configure it: a bound logger is much cheaper per call than
        # the lazy proxy (and free when the level filters the event out).
        # Decided now, not at import: structlog if the application configured it,
        # else the standard library's "streammgr" logger (silent at INFO by default).
        runner.log = get_logger().bind()
        # The limiter lives longer than every stream: entered first, exited last.
        await self._limiter.__aenter__()
        self._nursery_manager = trio.open_nursery()
        try:
            runner.nursery = await self._nursery_manager.__aenter__()
        except BaseException:
            await self._limiter.__aexit__(None, None, None)
            raise
        runner.nursery.start_soon(runner.watchdog.run, name="streammgr-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        runner = self._runner
        assert runner.nursery is not None
        try:
            await self.aclose(grace=self._shutdown_grace if exc is None else 0.0)
        finally:
            # Also when aclose was interrupted: nothing may outlive the block.
            runner.cancel_everything()
            runner.nursery.cancel_scope.cancel()
            try:
                await self._nursery_manager.__aexit__(None, None, None)
            except BaseExceptionGroup as group:
                _raise_from_nursery(group, exc)
            finally:
                runner.close_watchers()
                await self._limiter.__aexit__(None, None, None)

    async def aclose(self, grace: float | None = None) -> None:
        """Shut down: stop admitting, let streams finish, then cancel the rest.

        New ``open`` calls raise :class:`ManagerClosed` and queued ones are
        cancelled (reason ``shutdown``) at once. Active streams get ``grace``
        seconds (default ``shutdown_grace``) to finish; the rest are cancelled
        with reason ``shutdown``. Returns when every producer has finished its
        cleanup. Safe to call from any task, and more than once.
        """
        runner = self._runner
        if runner.nursery is None:
            runner.closing = runner.closed = True
            return
        grace = self._shutdown_grace if grace is None else grace
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace}")
        runner.closing = True
        runner.cancel_waiting()
        if self._registry.active and grace > 0:
            if runner.drained is None:  # another task may be in aclose() too
                runner.drained = trio.Event()
            with trio.move_on_after(grace):
                await runner.drained.wait()
        runner.cancel_everything()
        if runner.running_producers:
            if runner.producers_done is None:
                runner.producers_done = trio.Event()
            await runner.producers_done.wait()
        runner.close_watchers()  # every stream has closed: their events are out

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
        item_size: Callable[[T], int] | None = ...,
        inline: bool = ...,
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
        item_size: Callable[[T], int] | None = ...,
        inline: bool = ...,
    ) -> ManagedStream[T]: ...

    def open(
        self,
        producer: Callable[..., Any],
        /,
        *args: object,
        key: str = "default",
        labels: Mapping[str, str] | None = None,
        acquire_timeout: float | None = UNSET,
        reader_timeout: float | None = UNSET,
        idle_timeout: float | None = UNSET,
        deadline: float | None = UNSET,
        buffer_size: int = UNSET,
        item_size: Callable[[Any], int] | None = None,
        inline: bool = False,
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
            acquire_timeout: seconds a stream may wait for a slot before it is
                refused (``None``: forever). Left out: the manager's.
            reader_timeout: seconds an item may wait for the reader to take it
                (``None``: forever). Left out: the manager's.
            idle_timeout: seconds the producer may deliver nothing (``None``:
                forever). Left out: the manager's.
            deadline: the longest life of a stream, in seconds from its admission
                (``None``: none). Left out: the manager's.
            buffer_size: hand-offs (items or batches) buffered between producer and
                reader (``0``: each is handed over directly). Left out: the manager's.
            item_size: how many bytes an item counts for in the registry; the
                default (``None``) counts ``len()`` of bytes and str items.
            inline: single-reader mode: the reader's own task pulls from the
                producer (an async iterator), with no task and no channel of its
                own: about 25 us less CPU per batch (docs/performance.md). Every
                guarantee holds (cancel, timeouts, slot, registry); what differs
                is in :class:`~streammgr.InlineStream`'s docstring: nothing is read
                ahead (``buffer_size`` does not apply), a stream ended from outside
                cancels the reader's block at its next checkpoint, and
                ``reader_timeout`` bounds the time between two pulls. A push
                producer (``async def p(send, ...)``) keeps its task: it pushes
                from its own frame while the reader waits, which needs a task.

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
        record.reader_timeout = _override(self._reader_timeout, "reader_timeout", reader_timeout)
        record.idle_timeout = _override(self._idle_timeout, "idle_timeout", idle_timeout)
        record.deadline = _override(self._deadline, "deadline", deadline)
        if not isinstance(inline, bool):
            raise TypeError(f"inline must be a bool, got {inline!r}")
        stream_class = InlineStream if inline and not push else ManagedStream
        return stream_class(
            self._runner,
            record,
            producer,
            args,
            push,
            _override(self._acquire_timeout, "acquire_timeout", acquire_timeout),
            _override(self._buffer_size, "buffer_size", buffer_size),
            item_size,
        )

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
            rejected_total=self._runner.rejected_total,
            closed_total=sum(closed.values()),
            closed_by_reason=closed,
            active_by_key=limits.active_by_key,
            waiting_by_key=limits.waiting_by_key,
            closing=self._runner.closing,
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
                reader's :class:`StreamCancelled`. An empty reason means none was
                given: the detail is ``None`` and the reader's error names only the
                close reason. Never put secrets here.
            close_reason: the :class:`CloseReason` to record (the gateway uses
                ``CLIENT_DISCONNECTED``): one that ends a stream from outside
                (``cancelled``, ``client_disconnected``, ``client_stalled``, ``shutdown``,
                ``reader_exit`` or a timeout's); the reader gets :class:`StreamCancelled`.

        Raises:
            ValueError: ``close_reason`` records how a stream ends by itself
                (``completed``, ``producer_error``, an upstream's...).

        Returns:
            ``True`` if the stream was found and not already ending.
        """
        _check_cancel_reason(close_reason)
        record = self._registry.active.get(stream_id)
        if record is None:
            return False
        return self._runner.cancel(record, close_reason, reason)

    def cancel_key(
        self,
        key: str,
        *,
        reason: str = "cancelled by operator",
        close_reason: CloseReason = CloseReason.CANCELLED,
    ) -> int:
        """End every stream of ``key`` (see :meth:`cancel`); returns how many."""
        _check_cancel_reason(close_reason)
        records = list(self._registry.by_key.get(key, {}).values())
        return sum(self._runner.cancel(record, close_reason, reason) for record in records)

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
        if self._runner.closed:
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


def _override(default: T, name: str, value: object) -> T:
    """``open``'s value of an option: the manager's ``default`` when left out."""
    return default if value is UNSET else cast(T, check_option(name, value))


def _check_cancel_reason(close_reason: CloseReason) -> None:
    """Only reasons that end a stream from outside may be given to ``cancel``."""
    if close_reason not in CANCEL_REASONS:
        allowed = ", ".join(sorted(str(reason) for reason in CANCEL_REASONS))
        raise ValueError(
            f"close_reason must be a reason that ends a stream from outside ({allowed}), "
            f"got {close_reason!s}: the others record how a stream ended by itself"
        )


def _raise_from_nursery(
    group: BaseExceptionGroup[BaseException], own: BaseException | None
) -> None:
    """What leaves the manager's block when its nursery ended with ``group``.

    Only a producer's fatal ``BaseException`` (or cancellations meant for a scope
    around the manager) get here. Cancellations alone give way to the block's own
    exception, if it has one; a lone exception leaves as itself, not wrapped,
    with its own cause and context kept.
    """
    if group.split(trio.Cancelled)[1] is None:
        if own is not None:
            return  # the block's own exception goes on
        raise group
    if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
        raise group
    lone = group.exceptions[0]
    cause, context, suppress = lone.__cause__, lone.__context__, lone.__suppress_context__
    try:
        raise lone
    finally:
        lone.__cause__, lone.__context__, lone.__suppress_context__ = cause, context, suppress
        del lone, group


def require_trio() -> None:
    """Raise a clear error unless the caller runs on Trio.

    Called where streammgr first needs Trio (entering a manager, the app's
    lifespan), so that a FastAPI app served by uvicorn (asyncio) fails with what
    to do instead of an ``AttributeError`` from Trio's internals. One contextvar
    read (sniffio, which Trio and httpx already use).

    Raises:
        RuntimeError: not running on Trio; the message names what runs instead
            and the two ways to serve an app on Trio.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "no async library"
    if library != "trio":
        raise RuntimeError(
            f"streammgr runs on Trio, but this code runs on {library}: serve the app "
            "with `hypercorn --worker-class trio module:app` or "
            "`streammgr.server.serve(app, ...)` (uvicorn runs asyncio), or run your "
            "own code with `trio.run`"
        )
