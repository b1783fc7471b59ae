"""One deadline heap for the timers of many objects (a manager's responses).

A streaming response needs a timer for its keep-alives, its headers' deadline and its
write guard. A task and a sleep of its own per response cost ~1.8 KiB each and a task
switch per wake-up, for a stream that is idle most of its life. Here the manager's
one timer task (its :class:`~streammgr._timeouts.TimeoutWatchdog`'s, which owns this
heap beside its own) sleeps until the earliest deadline of all, and calls that object's
:meth:`Timed.fire`, which says when it wants to be called next (lazily: an object
that did something in the meantime, a write, pushes nothing; it answers the later
time when its old deadline comes). The heap holds no reference to an object once
its timer is cancelled (the entry's slot is emptied at once, as in
:class:`~streammgr._timeouts.TimeoutWatchdog`).

What it must not do: await inside ``fire`` (it runs in the shared task: one object's
wait would delay every other); work that waits goes to a task of the object's own.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Protocol

import trio

from ._validate import MIN_SECONDS

__all__ = ["SharedTimers", "Timed", "TimerEntry"]

# Sweep emptied entries out of the heap when there are this many and they are more
# than half of it.
_SWEEP_AT = 1024

TimerEntry = list[Any]
"""A heap entry: ``[when, order, object]`` (the object ``None`` once cancelled)."""


class Timed(Protocol):
    """An object with a timer in :class:`SharedTimers`."""

    def fire(self, now: float) -> float:
        """The deadline came: act (without awaiting), and return when to be called
        next (``math.inf``: not again). Must not raise."""


class SharedTimers:
    """A heap of ``[when, order, object]`` entries; a task that owns it sleeps until
    :meth:`next_deadline` in :attr:`sleep` (a cancel scope this heap moves earlier
    when an earlier timer comes), then calls :meth:`fire_due`.

    :meth:`schedule` returns the entry; the object keeps it to :meth:`cancel` it (its
    slot is emptied, the entry is skipped when popped) or to :meth:`reschedule` it
    earlier. When an entry fires, the object's answer re-queues the same entry, so
    the object's handle stays valid.
    """

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._order = itertools.count()
        self._stale = 0  # entries cancelled but still in the heap
        # The owner's sleep, while it sleeps: moved earlier by an earlier timer.
        self.sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        """The timers scheduled (cancelled ones not counted)."""
        return len(self._heap) - self._stale

    def schedule(self, timed: Timed, when: float) -> TimerEntry | None:
        """Call ``timed.fire`` at ``when`` (``math.inf``: never, and ``None`` is returned)."""
        if when == math.inf:
            return None
        entry = [when, next(self._order), timed]
        self._push(entry)
        return entry

    def reschedule(self, entry: TimerEntry | None, timed: Timed, when: float) -> TimerEntry | None:
        """Move ``timed``'s timer to ``when`` if that is earlier; returns its entry."""
        if entry is not None and entry[2] is not None:
            if entry[0] <= when:
                return entry
            self.cancel(entry)
        return self.schedule(timed, when)

    def cancel(self, entry: TimerEntry | None) -> None:
        """Forget a timer now (nothing of its object stays reachable from the heap)."""
        if entry is None or entry[2] is None:
            return
        entry[2] = None
        self._stale += 1
        if self._stale > _SWEEP_AT and self._stale * 2 > len(self._heap):
            heap = self._heap
            heap[:] = [kept for kept in heap if kept[2] is not None]
            heapq.heapify(heap)
            self._stale = 0

    def _push(self, entry: TimerEntry) -> None:
        heapq.heappush(self._heap, entry)
        sleep = self.sleep
        if sleep is not None and entry[0] < sleep.deadline:
            sleep.deadline = entry[0]

    def next_deadline(self) -> float:
        """The earliest deadline in the heap (``math.inf``: none; a cancelled entry's
        deadline may come first: it is skipped then)."""
        heap = self._heap
        return heap[0][0] if heap else math.inf

    def fire_due(self, now: float) -> None:
        """Fire every entry due (a function of its own, so that no local variable keeps
        the last object alive while the owner sleeps)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            timed: Timed | None = entry[2]
            if timed is None:
                self._stale -= 1
                continue
            when = timed.fire(now)
            if entry[2] is None:
                self._stale -= 1  # cancelled from inside fire: already counted
                continue
            if when == math.inf:
                entry[2] = None
                continue
            # Never sooner than the shortest time allowed: a deadline that vanishes in
            # the clock would have this loop fire forever without a checkpoint.
            entry[0] = max(when, now + MIN_SECONDS)
            entry[1] = next(self._order)
            heapq.heappush(heap, entry)
