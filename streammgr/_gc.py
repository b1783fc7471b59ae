"""The cyclic garbage collector tuned for a long-running server holding many streams.

CPython's full (generation 2) collection visits every live container object, and
stops the process while it does: a held gateway stream keeps a few hundred of them
(its connection, its tasks and their frames, h11's and httpx's state), so with the
interpreter's thresholds one full collection took 0.15-0.23 s at 500 held streams
and 1.5-1.7 s at 5,000, stalling every stream (issue #15). :func:`tune_gc` sets
what ``streammgr serve`` uses: young collections that run less often (each is
bounded by the objects allocated since the last one, not by what is alive), full
collections only after many young ones, and the start-up's objects (modules, the
app) frozen out of every later collection. benchmarks/bench_gc.py measures it.

What it trades: a reference cycle that outlives two young collections waits
longer for a full collection to free it. Nothing in a stream's normal life is
meant to leave cycles behind (tests/test_gc.py counts them).

No I/O; nothing here runs on import.
"""

from __future__ import annotations

import gc

__all__ = ["SERVER_GC_THRESHOLD", "parse_gc_threshold", "tune_gc"]

SERVER_GC_THRESHOLD = (2_000, 10, 1_000)
"""``gc.set_threshold`` for a server: a young collection every 2,000 net container
allocations (the interpreter's: 700), a middle one every 10 young ones, a full one
after 1,000 middle ones (and only when the objects promoted since the last full
collection are a quarter of those it left alive, CPython's own rule).

A young collection is due after 2,000 *net* allocations (CPython 3.11 takes one off
for every tracked object freed, however old), so it visits what survived since the
last one, which is more than 2,000 (or 22,000 for generation 1) when old objects are
freed as fast as new ones are made: at 10,000 held streams (bench_gc.py, a loaded
machine) one generation-1 collection visited 142,049 young objects while streams
opened and ended, 152 ms of CPU (about 1 us each on a 700 MiB heap; 67-84 ms in an
earlier run, against 96-150 ms with 5000, 10, 1000). docs/performance.md says what
would bound it (collecting the young generation by time too). A full collection waits
for 20 million net allocations: none while 10,000 streams are opened (about 430
objects each), and rarely after, as long as streams leave no reference cycles behind."""


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
