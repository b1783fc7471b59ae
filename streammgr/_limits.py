"""Admission: who may open a stream now, who waits, and who is turned away.

The manager talks to admission only through the small :class:`Limiter` interface
(acquire / release / resize / snapshot, and a lifetime: the manager enters its
limiter as an async context manager), so a distributed limiter
(``streammgr.cluster.RedisLimiter``) can replace the in-memory :class:`FairLimiter`
without touching the manager.

:class:`FairLimiter` keeps one FIFO queue per key and a heap of the keys whose head
waiter could be admitted, ordered by arrival. When a slot frees, the oldest waiter
*that can run* goes first: a waiter whose key is at ``max_streams_per_key`` never
blocks waiters of other keys, and within one key order is strictly FIFO.
"""

from __future__ import annotations

import abc
import heapq
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import trio

from ._errors import StreamLimitExceeded
from ._validate import UNSET, _Unset, check_limit

__all__ = [
    "FairLimiter",
    "Limiter",
    "LimiterSnapshot",
    "LimiterStatus",
    "Permit",
    "mean_hold",
    "refusal",
    "resized",
]

# Smoothing factor of the running mean of slot hold times (for retry_after).
_HOLD_SMOOTHING = 0.1
_MIN_RETRY_AFTER = 1.0
_MAX_RETRY_AFTER = 3600.0


class Permit:
    """Proof that a stream holds an admission slot; give it back with ``release``.

    Attributes:
        key: the admission key the slot was taken for.
        acquired_at: Trio clock time of admission.
    """

    __slots__ = ("acquired_at", "key", "released")

    def __init__(self, key: str, acquired_at: float) -> None:
        self.key = key
        self.acquired_at = acquired_at
        self.released = False

    def __repr__(self) -> str:
        return f"Permit(key={self.key!r}, released={self.released})"


@dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """The state of admission at one moment.

    Attributes:
        active: slots held.
        waiting: callers queued for a slot.
        max_streams: global limit, ``None`` for unlimited.
        max_streams_per_key: per-key limit, ``None`` for unlimited.
        max_waiting: queue bound, ``None`` for unbounded.
        active_by_key: slots held per key (keys with none are absent).
        waiting_by_key: queued callers per key (keys with none are absent).
    """

    active: int
    waiting: int
    max_streams: int | None
    max_streams_per_key: int | None
    max_waiting: int | None
    active_by_key: Mapping[str, int]
    waiting_by_key: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class LimiterStatus:
    """Whether a limiter works as configured (for probes and metrics).

    Attributes:
        degraded: the limiter's backend is lost and it runs on a fault policy.
        detail: what is wrong and what the limiter does about it, or ``None``.
        leases_lost: slots that a remote backend lost while a stream held them
            (found missing at a renewal), since the limiter started.
    """

    degraded: bool = False
    detail: str | None = None
    leases_lost: int = 0


class Limiter(abc.ABC):
    """The admission interface the manager uses.

    Implementations must be safe to call from any task of one Trio run. ``release``
    and ``resize`` must not block: a distributed implementation hands the remote
    update to a background task of its own.

    Lifetime: ``StreamManager`` enters its limiter (``async with``) before it opens
    its nursery and exits it after every stream has closed, so a limiter that needs
    background tasks or a connection (Redis) starts and stops with the manager. The
    defaults do nothing; a limiter that is also entered by its user must accept
    being entered again while it is open (``RedisLimiter`` counts its entries).
    """

    async def __aenter__(self) -> Self:
        """Start what the limiter needs (a connection, background tasks)."""
        return self

    async def __aexit__(  # noqa: B027 - a no-op default, as the docstring says
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop what ``__aenter__`` started."""

    def status(self) -> LimiterStatus:
        """Whether the limiter works as configured; an in-memory one always does."""
        return LimiterStatus()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values the manager must scrub from what it records and logs (a password
        in the limiter's backend URL); none by default."""
        return ()

    @abc.abstractmethod
    async def acquire(self, key: str, *, timeout: float | None = None) -> Permit:
        """Wait for a slot for ``key`` and return its permit.

        Args:
            key: the admission key (a tenant, an API key's name, a model...).
            timeout: the most seconds to wait; ``None`` waits as long as needed.

        Raises:
            StreamLimitExceeded: the queue is full (``limit="max_waiting"``), or the
                timeout passed (``limit`` names the limit that kept it waiting).
        """

    @abc.abstractmethod
    def release(self, permit: Permit) -> None:
        """Give a slot back. Releasing a permit twice is a no-op."""

    @abc.abstractmethod
    def resize(
        self,
        *,
        max_streams: int | _Unset | None = UNSET,
        max_streams_per_key: int | _Unset | None = UNSET,
        max_waiting: int | _Unset | None = UNSET,
    ) -> None:
        """Change limits now. Raising a limit admits waiters at once; lowering one
        never takes a slot away from a stream that holds it."""

    @abc.abstractmethod
    def snapshot(self) -> LimiterSnapshot:
        """The current admission state."""


class _Waiter:
    __slots__ = ("event", "key", "permit", "seq")

    def __init__(self, key: str, seq: int) -> None:
        self.key = key
        self.seq = seq
        self.event = trio.Event()
        self.permit: Permit | None = None


class FairLimiter(Limiter):
    """In-memory admission with a global and a per-key limit, fair FIFO waiting.

    Args:
        max_streams: the most slots held at once; ``None`` for no limit.
        max_streams_per_key: the most slots one key may hold; ``None`` for no limit.
        max_waiting: the most callers queued at once (beyond it ``acquire`` fails at
            once with ``limit="max_waiting"``); ``0`` never queues; ``None`` is
            unbounded.
    """

    def __init__(
        self,
        max_streams: int | None = None,
        max_streams_per_key: int | None = None,
        max_waiting: int | None = None,
    ) -> None:
        self._max_streams = check_limit("max_streams", max_streams)
        self._max_per_key = check_limit("max_streams_per_key", max_streams_per_key)
        self._max_waiting = check_limit("max_waiting", max_waiting)
        self._active = 0
        self._active_by_key: dict[str, int] = {}
        self._queues: dict[str, OrderedDict[int, _Waiter]] = {}
        # Heap of (seq of a key's head waiter, key) for keys that have room; an
        # entry is current only while _heap_seq[key] equals its seq.
        self._ready: list[tuple[int, str]] = []
        self._heap_seq: dict[str, int] = {}
        self._waiting = 0
        self._seq = 0
        self._mean_hold: float | None = None

    def __repr__(self) -> str:
        return (
            f"FairLimiter(active={self._active}, waiting={self._waiting}, "
            f"max_streams={self._max_streams}, max_streams_per_key={self._max_per_key}, "
            f"max_waiting={self._max_waiting})"
        )

    # -- the interface -------------------------------------------------------------

    async def acquire(self, key: str, *, timeout: float | None = None) -> Permit:
        if self._has_room() and self._key_has_room(key):
            return self._grant(key)
        if self._max_waiting is not None and self._waiting >= self._max_waiting:
            raise self._rejection(
                key,
                "max_waiting",
                f"admission queue is full ({self._waiting} of max_waiting={self._max_waiting} "
                f"waiting)",
            )
        if timeout is not None and timeout <= 0:
            raise self._blocked_rejection(key, timeout)
        self._seq += 1
        waiter = _Waiter(key, self._seq)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = OrderedDict()
        queue[waiter.seq] = waiter
        self._waiting += 1
        if len(queue) == 1:
            self._mark_ready(key)
        try:
            if timeout is None:
                await waiter.event.wait()
            else:
                with trio.move_on_after(timeout):
                    await waiter.event.wait()
        except BaseException:
            # Cancelled while queued, or admitted in the same instant: either way
            # this caller will not use a slot.
            if waiter.permit is not None:
                self.release(waiter.permit)
            else:
                self._forget(waiter)
            raise
        if waiter.permit is None:
            self._forget(waiter)
            raise self._blocked_rejection(key, timeout)
        return waiter.permit

    def release(self, permit: Permit) -> None:
        if permit.released:
            return
        permit.released = True
        key = permit.key
        self._active -= 1
        remaining = self._active_by_key[key] - 1
        if remaining:
            self._active_by_key[key] = remaining
        else:
            del self._active_by_key[key]
        hold = trio.current_time() - permit.acquired_at
        mean = self._mean_hold
        self._mean_hold = mean_hold(mean, hold)
        if key in self._queues:
            self._mark_ready(key)
        self._admit()

    def resize(
        self,
        *,
        max_streams: int | _Unset | None = UNSET,
        max_streams_per_key: int | _Unset | None = UNSET,
        max_waiting: int | _Unset | None = UNSET,
    ) -> None:
        # Validate everything before changing anything.
        self._max_streams, self._max_per_key, self._max_waiting = resized(
            (self._max_streams, self._max_per_key, self._max_waiting),
            max_streams,
            max_streams_per_key,
            max_waiting,
        )
        for key in self._queues:
            self._mark_ready(key)
        self._admit()

    def snapshot(self) -> LimiterSnapshot:
        return LimiterSnapshot(
            active=self._active,
            waiting=self._waiting,
            max_streams=self._max_streams,
            max_streams_per_key=self._max_per_key,
            max_waiting=self._max_waiting,
            active_by_key=dict(self._active_by_key),
            waiting_by_key={key: len(queue) for key, queue in self._queues.items()},
        )

    # -- internals ---------------------------------------------------------------

    def _has_room(self) -> bool:
        return self._max_streams is None or self._active < self._max_streams

    def _key_has_room(self, key: str) -> bool:
        return self._max_per_key is None or self._active_by_key.get(key, 0) < self._max_per_key

    def _grant(self, key: str) -> Permit:
        self._active += 1
        self._active_by_key[key] = self._active_by_key.get(key, 0) + 1
        return Permit(key, trio.current_time())

    def _mark_ready(self, key: str) -> None:
        """Make sure the heap has a current entry for ``key`` if its head could run."""
        queue = self._queues.get(key)
        if not queue or not self._key_has_room(key):
            return
        head = next(iter(queue))
        if self._heap_seq.get(key) != head:
            self._heap_seq[key] = head
            heapq.heappush(self._ready, (head, key))

    def _admit(self) -> None:
        """Admit the oldest runnable waiters while there is global room."""
        ready = self._ready
        while ready and self._has_room():
            seq, key = heapq.heappop(ready)
            if self._heap_seq.get(key) != seq:
                continue  # superseded entry
            del self._heap_seq[key]
            queue = self._queues.get(key)
            if not queue or not self._key_has_room(key):
                continue
            if next(iter(queue)) != seq:
                self._mark_ready(key)
                continue
            _, waiter = queue.popitem(last=False)
            self._waiting -= 1
            if not queue:
                del self._queues[key]
            waiter.permit = self._grant(key)
            waiter.event.set()
            self._mark_ready(key)

    def _forget(self, waiter: _Waiter) -> None:
        """Remove a waiter that gave up (timeout or cancellation)."""
        queue = self._queues.get(waiter.key)
        if queue is None or queue.pop(waiter.seq, None) is None:
            return
        self._waiting -= 1
        if not queue:
            del self._queues[waiter.key]
            self._heap_seq.pop(waiter.key, None)
        else:
            self._mark_ready(waiter.key)
        if len(self._ready) > 2 * len(self._heap_seq) + 64:
            # Waiters that gave up while every slot was held leave superseded
            # entries that only _admit() would pop: rebuild from the current ones.
            self._ready = [(seq, key) for key, seq in self._heap_seq.items()]
            heapq.heapify(self._ready)

    def _blocked_rejection(self, key: str, timeout: float | None) -> StreamLimitExceeded:
        if not self._key_has_room(key):
            return self._rejection(
                key,
                "max_streams_per_key",
                f"key {key!r} holds {self._active_by_key.get(key, 0)} of "
                f"max_streams_per_key={self._max_per_key} slots; "
                f"no slot freed within acquire_timeout={timeout}s",
            )
        return self._rejection(
            key,
            "max_streams",
            f"{self._active} of max_streams={self._max_streams} slots are held; "
            f"no slot freed within acquire_timeout={timeout}s",
        )

    def _rejection(self, key: str, limit: str, what: str) -> StreamLimitExceeded:
        if limit == "max_streams_per_key":
            queue = self._queues.get(key)
            ahead, capacity = (len(queue) if queue else 0), self._max_per_key
        else:
            ahead, capacity = self._waiting, self._max_streams
        return refusal(key, limit, what, hold=self._mean_hold, ahead=ahead, capacity=capacity)


def mean_hold(mean: float | None, hold: float) -> float:
    """The running mean of slot hold times, with ``hold`` just seen (for retry_after)."""
    return hold if mean is None else mean + _HOLD_SMOOTHING * (hold - mean)


def refusal(
    key: str, limit: str, what: str, *, hold: float | None, ahead: int, capacity: int | None
) -> StreamLimitExceeded:
    """The error of a refused stream, with a ``retry_after`` estimated from the mean
    hold time, the callers ``ahead`` and the slots of the ``limit`` (shared by every
    limiter, so that a client sees the same advice whichever refused it)."""
    estimate = (hold if hold is not None else _MIN_RETRY_AFTER) * (ahead + 1) / (capacity or 1)
    retry_after = float(min(max(math.ceil(estimate), _MIN_RETRY_AFTER), _MAX_RETRY_AFTER))
    return StreamLimitExceeded(
        f"stream for key {key!r} not admitted: {what}; retry in about {retry_after:g}s, "
        f"or raise the limit with manager.set_limits()",
        limit=limit,
        retry_after=retry_after,
        key=key,
    )


def resized(
    current: tuple[int | None, int | None, int | None],
    max_streams: int | _Unset | None,
    max_streams_per_key: int | _Unset | None,
    max_waiting: int | _Unset | None,
) -> tuple[int | None, int | None, int | None]:
    """``(max_streams, max_streams_per_key, max_waiting)`` after a resize: each given
    value checked (all before any is used), each left out (``UNSET``) kept."""
    limits = (max_streams, max_streams_per_key, max_waiting)
    names = ("max_streams", "max_streams_per_key", "max_waiting")
    checked = [
        old if isinstance(new, _Unset) else check_limit(name, new)
        for old, new, name in zip(current, limits, names, strict=True)
    ]
    return checked[0], checked[1], checked[2]
