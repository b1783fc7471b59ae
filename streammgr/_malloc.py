"""Freed heap memory given back to the system, for a long-running server.

A gateway's resident memory crept up for hours while nothing it held grew (issue
#15's soak: Python's allocations flat under ``tracemalloc``, the oldest generation
flat): glibc's heap kept memory freed between long-lived blocks. A socket read
through ``recv(65536)`` takes a 64 KiB block from ``malloc`` and shrinks it in place
to what arrived; a block that outlives it pins the hole behind it, a later 64 KiB
buffer that fits no hole extends the heap, and the free memory left behind stays
resident: glibc returns only the free memory at the top of a heap, by itself.
``benchmarks/load_gateway.py --soak`` measures it by layer: glibc's free memory grew
~5 MiB an hour at 94 streams a second; its memory in use, CPython's arenas and the
mapped files did not. ``serve``'s plain-TCP reads no longer do this
(:mod:`streammgr._reads`); reads through TLS (``ssl`` and trio's ``SSLStream``
allocate the same way), and whatever else a deployment adds, still can.

:func:`trim_malloc` calls glibc's ``malloc_trim(0)`` every ``interval`` seconds,
which also frees the whole free pages inside every heap (``madvise``), so they stop
counting in the RSS until they are used again. Elsewhere than glibc (macOS, musl,
Windows) it does nothing.

No I/O on import; :func:`trim_malloc` runs each trim on a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Callable

import trio

from ._validate import parse_seconds_or_off

__all__ = ["MALLOC_TRIM_INTERVAL", "find_malloc_trim", "parse_malloc_trim", "trim_malloc"]

MALLOC_TRIM_INTERVAL = 10.0
"""Seconds between two ``malloc_trim(0)`` of :func:`trim_malloc` (``serve
--malloc-trim``). A trim's cost is its walk of the heaps' free blocks plus an
``madvise`` of each page freed since the last (benchmarks/bench_malloc_trim.py): in
the gateway's soak, 0.4-0.6 ms of CPU on a worker thread every 10 s; on a heap of
800 MiB half in 64 KiB holes, ~50 ms for the first trim and ~9 ms for each later one,
with the heap's lock held meanwhile. A page given back costs a page fault when it is
used again."""


@functools.cache
def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (``int malloc_trim(size_t pad)``: 1 when it gave memory
    back), or ``None`` where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


async def trim_malloc(
    interval: float = MALLOC_TRIM_INTERVAL,
    *,
    task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Give the heap's free memory back to the system every ``interval`` seconds until
    cancelled: run it in a long-running server's nursery (``streammgr serve`` does,
    ``--malloc-trim``).

    Each trim is glibc's ``malloc_trim(0)`` on a Trio worker thread (ctypes lets go
    of the interpreter's lock for the call, so streams go on meanwhile; the heaps'
    own locks are held while each is trimmed). Where the C library has no
    ``malloc_trim``, it returns at once.

    Args:
        interval: seconds between trims (positive).
        task_status: started with ``True`` when it trims, ``False`` when there is no
            ``malloc_trim`` here (it then returns).

    Raises:
        ValueError: an interval that is not a positive number of seconds.
    """
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
    trim = find_malloc_trim()
    task_status.started(trim is not None)
    if trim is None:
        return
    while True:
        await trio.sleep(interval)
        await trio.to_thread.run_sync(trim, 0)


def parse_malloc_trim(text: str) -> float | None:
    """``serve --malloc-trim``'s value: seconds between trims (a positive number), or
    ``off`` (``None``: the heap left to glibc).

    Raises:
        ValueError: anything else, saying what is accepted.
    """
    return parse_seconds_or_off(
        text, "seconds between two trims of the heap (a positive number, e.g. 10)"
    )
