"""The cyclic garbage collector tuned for a long-running server holding many streams.

CPython's full (generation 2) collection visits every live container object, and
stops the process while it does: a held gateway stream keeps a few hundred of them
(its connection, its tasks and their frames, h11's and httpx's state), so with the
interpreter's thresholds one full collection took 0.15-0.23 s at 500 held streams
and 1.5-1.7 s at 5,000, stalling every stream (issue #15). :func:`tune_gc` sets
what ``streammgr serve`` uses: the start-up's objects (modules, the app) frozen out
of every later collection, and thresholds that make full collections rare.

Young collections by time (:func:`collect_young`, since issue #15's second pass):
CPython 3.11 starts a young collection after ``threshold[0]`` *net* allocations of
tracked objects (freeing one, however old, takes one off the count), so while
streams open and end at once none comes due and the young generations pile up: at
10,000 held streams one generation-1 collection visited 142,049 young objects, 152 ms
of CPU. :func:`collect_young` (a Trio task and the thread it owns) collects the young
generation every ``interval`` (0.05 s) whatever the count says, so each collection
visits at most what the last interval left alive; the interpreter's own collections
still run between (a burst of net allocations). Which generation each tick collects
is decided by :class:`CollectionSchedule` (no I/O): CPython's own rule by counts, and a full
collection only when, besides ``threshold[2]`` middle collections, the memory really
grew (``sys.getallocatedblocks()`` a quarter above what the last full collection
left): it is the only collection that frees a reference cycle which became garbage
after it had aged into the old generation, and its pause grows with everything alive.

benchmarks/bench_gc.py measures the pauses; docs/operations.md and
docs/performance.md say how to choose.

No I/O; nothing here runs on import; :func:`collect_young` starts the one thread.
"""

from __future__ import annotations

import gc
import math
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import NoReturn

import trio

from ._validate import parse_seconds_or_off

__all__ = [
    "GC_INTERVAL",
    "GROWTH_FOR_FULL",
    "SERVER_GC_THRESHOLD",
    "CollectionSchedule",
    "collect_young",
    "parse_gc_interval",
    "parse_gc_threshold",
    "run_collections",
    "tune_gc",
]

SERVER_GC_THRESHOLD = (2_000, 0, 36_000)
"""``gc.set_threshold`` for a server: a young collection every 2,000 net container
allocations (the interpreter's: 700) or every :data:`GC_INTERVAL` (with
:func:`collect_young`), whichever comes first; a middle (generation 1) one once more
than 0 young ones ran since the last (every other tick with the task: each visits
what 0.1 s left alive, which then ages into the old generation); a full one once more
than 36,000 middle ones ran (an hour with the task), and then only when the
memory grew by :data:`GROWTH_FOR_FULL` since the last full collection
(:class:`CollectionSchedule`; the interpreter's own collections apply its rule: the
objects promoted since the last full collection a quarter of those it left alive).

Until issue #15's second pass this was ``(2_000, 10, 1_000)`` with no task: a young
collection came due only after 2,000 *net* allocations (CPython 3.11 takes one off
for every tracked object freed, however old), so while streams opened and ended at
once the young generations piled up, and at 10,000 held streams one generation-1
collection visited 142,049 young objects, 152 ms of CPU (bench_gc.py). A full
collection at 10,000 held streams visits about 4 million objects (430 a stream):
seconds, during which every stream stalls; hence rare, and only for growth.

Why a middle collection every other tick rather than after 3-5 young ones: a middle
collection visits every young survivor since the last one, and a busy gateway makes
them at about 80,000 a second of CPU (streams opening, a churn, clients leaving),
each visit ~0.5-1.5 us on a large heap. At 3,000 held streams (bench_gc.py, a loaded
machine), after 4 young ones 0.1 s apart the longest visited 24,032 young objects
with a churn beside (19.6 ms of CPU) and 17,407 while every client left (20.1 ms);
every other tick 0.05 s apart, 5,357 (2.7 ms) and 14,170 (12.3 ms). What survives
0.1 s ages into the old generation: a reference cycle that becomes garbage later waits
for a full collection (the trade; the served streams leave none)."""

GC_INTERVAL = 0.05
"""Seconds between the young collections of :func:`collect_young` (``serve
--gc-interval``): each visits what the interval left alive, ~1 us an object (0.1 s,
with the same thresholds: 7.4 ms instead of 2.7 beside a churn at 3,000 held; a tick
costs a few microseconds when there is nothing to visit)."""

GROWTH_FOR_FULL = 1.25
"""A full collection, once due by count, waits until ``sys.getallocatedblocks()`` is
this many times what the last full collection left (CPython's own rule, in objects
promoted rather than memory blocks, is the same quarter)."""


def tune_gc(
    threshold: tuple[int, int, int] | None = SERVER_GC_THRESHOLD, *, freeze: bool = True
) -> None:
    """Tune the garbage collector for a long-running server; call it once, at start-up,
    after the imports and the app are built (``streammgr serve`` does).

    Args:
        threshold: the three ``gc.set_threshold`` values (``None``: leave the
            interpreter's collector as it is, and freeze nothing).
        freeze: collect once, then move every object alive now (modules, classes,
            the app) to the permanent generation (``gc.freeze``), which no later
            collection visits.

    Raises:
        ValueError / TypeError: a threshold that is not three whole numbers, the
            first at least 1.
    """
    if threshold is None:
        return
    threshold = check_gc_threshold(threshold)
    if freeze:
        gc.collect()
        gc.freeze()
    gc.set_threshold(*threshold)


def check_gc_threshold(threshold: tuple[int, int, int]) -> tuple[int, int, int]:
    """``threshold`` checked: three whole numbers, the first at least 1 (0 would turn
    the collector off), the others at least 0.

    Raises:
        ValueError / TypeError: naming ``gc_threshold`` and the bad value.
    """
    values = tuple(threshold)
    if len(values) != 3 or not all(
        isinstance(value, int) and not isinstance(value, bool) for value in values
    ):
        raise TypeError(f"gc_threshold must be three whole numbers, got {threshold!r}")
    if values[0] < 1 or values[1] < 0 or values[2] < 0:
        raise ValueError(
            f"gc_threshold's first value must be at least 1 (0 turns the collector off) "
            f"and the others at least 0, got {threshold!r}"
        )
    return values[0], values[1], values[2]


def parse_gc_threshold(text: str) -> tuple[int, int, int] | None:
    """``serve --gc-threshold``'s value: ``server`` (:data:`SERVER_GC_THRESHOLD`),
    ``python`` (the interpreter's collector left as it is: ``None``), or three whole
    numbers separated by commas, ``GEN0,GEN1,GEN2``.

    Raises:
        ValueError: anything else, saying what is accepted.
    """
    word = text.strip().lower()
    if word == "server":
        return SERVER_GC_THRESHOLD
    if word == "python":
        return None
    parts = [part.strip() for part in word.split(",")]
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(
            f"accepts server, python, or three whole numbers GEN0,GEN1,GEN2 "
            f"(as gc.set_threshold takes them, e.g. 2000,10,1000); got {text!r}"
        )
    first, second, third = (int(part) for part in parts)
    try:
        return check_gc_threshold((first, second, third))
    except ValueError:
        raise ValueError(
            f"accepts GEN0 of at least 1 (0 turns the collector off); got {text!r}"
        ) from None


def parse_gc_interval(text: str) -> float | None:
    """``serve --gc-interval``'s value: seconds between young collections (a
    positive number), or ``off`` (``None``: only the interpreter's own, by count).

    Raises:
        ValueError: anything else, saying what is accepted.
    """
    return parse_seconds_or_off(
        text, "seconds between young collections (a positive number, e.g. 0.1)"
    )


class CollectionSchedule:
    """Which generation a timed collection takes (no I/O: :func:`collect_young` asks,
    collects, and tells). CPython's own choice by counts, the full collection held
    back until the memory grew.

    Each tick: generation 1 when more than ``threshold[1]`` young collections ran
    since the last middle one (``gc.get_count()[1]``, which every collection keeps,
    the interpreter's own included), else generation 0. When a middle collection is
    due and more than ``threshold[2]`` middle ones ran since the last full one
    (``gc.get_count()[2]``), a full collection replaces it if ``blocks()`` (the
    allocated memory blocks) is at least ``growth`` times what it was after the last
    full collection; that check runs at most once every ``threshold[2] // 100``
    middle collections (it walks the allocator's pools: ~1 ms on a 700 MiB heap).

    Args:
        threshold: as ``gc.set_threshold`` takes them (checked).
        blocks: the memory in use, in any unit that grows with it
            (``sys.getallocatedblocks``).
        growth: how much ``blocks()`` must have grown since the last full collection.
    """

    def __init__(
        self,
        threshold: tuple[int, int, int],
        *,
        blocks: Callable[[], int] = sys.getallocatedblocks,
        growth: float = GROWTH_FOR_FULL,
    ) -> None:
        self.threshold = check_gc_threshold(threshold)
        if not growth >= 1:
            raise ValueError(f"growth must be at least 1, got {growth!r}")
        self.growth = growth
        self._blocks = blocks
        self._check_every = max(1, self.threshold[2] // 100)
        self._since_check = self._check_every
        self._full_collections = -1
        self.baseline = 0
        """``blocks()`` after the last full collection seen."""

    def due(self, count: tuple[int, int, int], full_collections: int) -> int:
        """The generation to collect now.

        Args:
            count: ``gc.get_count()``.
            full_collections: ``gc.get_stats()[2]["collections"]``: a full
                collection made elsewhere (the interpreter's, a ``gc.collect()``)
                counts as the last one.
        """
        if full_collections != self._full_collections:
            self.collected(2, full_collections)
        if count[1] <= self.threshold[1]:
            return 0
        if count[2] > self.threshold[2]:
            self._since_check += 1
            if self._since_check >= self._check_every:
                self._since_check = 0
                if self._blocks() >= self.baseline * self.growth:
                    return 2
        return 1

    def collected(self, generation: int, full_collections: int) -> None:
        """Told after a collection of ``generation``; ``full_collections`` as in
        :meth:`due`, counted after it."""
        if generation == 2:
            self._full_collections = full_collections
            self.baseline = self._blocks()
            self._since_check = self._check_every


def run_collections(schedule: CollectionSchedule, wait: Callable[[], bool]) -> None:
    """The collector thread's loop: ``wait()`` (an interval; ``True``: stop), then
    ``gc.collect`` of the generation ``schedule`` picks, until ``wait()`` says stop.
    The schedule's first tick takes the memory in use as its baseline."""
    while not wait():
        generation = schedule.due(gc.get_count(), gc.get_stats()[2]["collections"])
        gc.collect(generation)
        schedule.collected(generation, gc.get_stats()[2]["collections"])


async def collect_young(
    threshold: tuple[int, int, int] | None = None,
    *,
    interval: float = GC_INTERVAL,
    task_status: trio.TaskStatus[CollectionSchedule] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Collect the young generation every ``interval`` seconds until cancelled: run it
    in the server's nursery, after :func:`tune_gc` (``streammgr serve`` does,
    ``--gc-interval``).

    Each tick is ``gc.collect(generation)`` with the generation
    :class:`CollectionSchedule` picks, so every young collection visits what the last
    interval (a middle one: ``threshold[1] + 1`` intervals) left alive, however many
    objects were freed meanwhile; a full collection comes only when the memory grew.
    The interpreter's own collections (by count) go on between. On an idle server a
    tick finds almost nothing to visit: a few microseconds.

    A departure from Trio's conventions, measured: the ticks run on a thread of their
    own (named ``streammgr-gc``), which this task starts, owns and joins when
    cancelled. A Trio task runs only between the scheduler's batches, and one batch
    can be long: when 1,000 clients left at once, a task's tick found 19,510 young
    objects made in one batch (12 ms of CPU; ten times that at 10,000), while the
    thread's tick takes the interpreter's lock within its switch interval (5 ms), in
    the middle of a batch, as the interpreter's own collections come at any
    allocation. What a collection runs (finalizers of cyclic garbage, weak reference
    callbacks) then runs on that thread: the served streams leave no cyclic garbage
    (tests/test_gc.py).

    Args:
        threshold: the schedule's thresholds; ``None``: ``gc.get_threshold()``.
        interval: seconds between collections (positive).
        task_status: started with the schedule (to look at; for tests).

    Raises:
        ValueError: an interval that is not a positive number of seconds.
    """
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
    schedule = CollectionSchedule(gc.get_threshold() if threshold is None else threshold)
    # Held until the task ends: each tick is one timed acquire (cheaper than an
    # Event's wait, which makes a lock and a condition every time).
    stop = threading.Lock()
    stop.acquire()
    thread = threading.Thread(
        target=run_collections,
        args=(schedule, partial(stop.acquire, timeout=interval)),
        name="streammgr-gc",
        daemon=True,  # never keeps a process alive that forgot to cancel the task
    )
    thread.start()
    try:
        task_status.started(schedule)
        await trio.sleep_forever()
    finally:
        stop.release()
        # At most the collection in progress: the thread's wait returns at once.
        thread.join()
