"""Timeouts for every stream of a manager, served by one watchdog task.

Per item, the hot path only updates counters and time stamps on the record
(``produced``/``produced_at`` on the producer side, ``items``/``last_item_at`` on
the reader side). The watchdog keeps a heap of *check times*, one entry per
stream with a timeout, sleeps until the earliest, and then asks
:func:`next_check` whether a timeout really expired or when to look again. So a
stream that streams steadily costs a heap operation once per timeout period, not
per item, and a manager with no timeouts configured costs nothing.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import trio

from ._lifecycle import State
from ._registry import StreamRecord
from ._states import CloseReason
from ._timers import SharedTimers
from ._validate import MIN_SECONDS

__all__ = ["TimeoutWatchdog", "next_check"]

# Sweep entries of closed streams out of the heap when there are this many and
# they are more than half of it.
_SWEEP_AT = 1024


def next_check(record: StreamRecord, now: float) -> tuple[float, CloseReason | None, str]:
    """When to look at this stream again, or which timeout has expired now.

    Returns ``(check time, None, "")``, or ``(now, reason, detail)`` if a timeout
    expired. Whose turn it is decides which activity timeout runs: while an item
    (or the end of the stream) waits for the reader, ``reader_timeout``;
    otherwise the producer owes the next item, ``idle_timeout``. Both count from
    the latest activity of either side: the reader's last take, or ``produced_at``,
    which the producer sets only when the reader's turn begins (the oldest item the
    reader has not taken was handed over) and at admission. A turn can only change at ``now`` or
    later, so the other turn's timeout cannot expire before ``now + timeout``.
    """
    check = math.inf
    if record.deadline is not None and record.admitted_at is not None:
        expires = record.admitted_at + record.deadline
        if now >= expires:
            return now, CloseReason.DEADLINE, f"deadline of {record.deadline:g}s passed"
        check = expires
    last = record.produced_at  # admission time until the first item
    last_item_at = record.last_item_at
    if last_item_at is not None and last_item_at > last:
        last = last_item_at
    producer_done = record.state is State.DRAINING
    # A single-reader stream (``pulling`` not None) has no buffer: between its
    # pulls, it is the reader's turn.
    reader_turn = producer_done or record.produced > record.items or record.pulling is False
    reader_timeout, idle_timeout = record.reader_timeout, record.idle_timeout
    if reader_timeout is not None:
        if reader_turn:
            expires = last + reader_timeout
            if now >= expires:
                detail = f"the reader took nothing for {reader_timeout:g}s"
                return now, CloseReason.READER_TIMEOUT, detail
            check = min(check, expires)
        else:
            check = min(check, now + reader_timeout)
    if idle_timeout is not None:
        if not reader_turn:
            expires = last + idle_timeout
            if now >= expires:
                detail = f"the producer delivered nothing for {idle_timeout:g}s"
                return now, CloseReason.IDLE_TIMEOUT, detail
            check = min(check, expires)
        elif not producer_done:
            check = min(check, now + idle_timeout)
    return check, None, ""


class TimeoutWatchdog:
    """The heap of check times and the task that works through it.

    A heap entry is a small list ``[check time, order, record]``; when a stream
    closes, :meth:`forget` empties its entry's record slot at once, so nothing of
    a closed stream (its exception, traceback, producer frames) stays reachable
    from the heap until the entry's check time. Entries emptied this way are
    skipped when popped, and swept as soon as they are most of a heap of more than
    ``_SWEEP_AT`` entries, so their number stays bounded by the open streams.

    The same task serves :attr:`timers`, the manager's other timers (its streaming
    responses' keep-alives and write guards): one sleep for all of them.

    Args:
        on_expired: called (synchronously) with the record, the reason and a
            human-readable detail when one of its timeouts expires.
    """

    def __init__(self, on_expired: Callable[[StreamRecord, CloseReason, str], None]) -> None:
        self._on_expired = on_expired
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._stale = 0  # entries whose stream has closed
        self._scope: trio.CancelScope | None = None
        self.timers = SharedTimers()

    def watch(self, record: StreamRecord, now: float) -> None:
        """Start watching a just-admitted stream (if it has any timeout)."""
        if record.reader_timeout or record.idle_timeout or record.deadline:
            self._push(record, next_check(record, now)[0], now)

    def forget(self, record: StreamRecord) -> None:
        """A stream closed: drop the heap's reference to it now."""
        entry = record.timer
        if entry is not None:
            entry[2] = None
            record.timer = None
            self._stale += 1
            if self._stale > _SWEEP_AT and self._stale * 2 > len(self._heap):
                self._sweep()

    def _sweep(self) -> None:
        """Drop the emptied entries (amortised: only when they are most of the heap)."""
        heap = self._heap
        heap[:] = [entry for entry in heap if entry[2] is not None]
        heapq.heapify(heap)
        self._stale = 0

    def _push(self, record: StreamRecord, when: float, now: float) -> None:
        if when == math.inf:
            return
        # Never look again sooner than the shortest timeout allowed: a timeout that
        # vanishes in the clock (``now + t == now``) would otherwise have the
        # watchdog re-check forever without a checkpoint.
        when = max(when, now + MIN_SECONDS)
        entry = [when, next(self._order), record]
        record.timer = entry
        heapq.heappush(self._heap, entry)
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    async def run(self) -> None:
        """Sleep until the earliest check, check, repeat; runs until cancelled."""
        heap = self._heap
        timers = self.timers
        while True:
            deadline = min(heap[0][0] if heap else math.inf, timers.next_deadline())
            with trio.CancelScope(deadline=deadline) as scope:
                self._scope = timers.sleep = scope
                await trio.sleep_forever()
            self._scope = timers.sleep = None
            now = trio.current_time()
            self._check_due(now)
            timers.fire_due(now)

    def _check_due(self, now: float) -> None:
        """Check every stream whose check time has come (a function of its own, so
        that no local variable keeps the last record alive while the task sleeps)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            record: StreamRecord | None = heapq.heappop(heap)[2]
            if record is None:
                self._stale -= 1
                continue
            record.timer = None
            if record.close_reason is not None:
                continue  # already ending for another reason
            when, reason, detail = next_check(record, now)
            if reason is not None:
                self._on_expired(record, reason, detail)
            else:
                self._push(record, when, now)
