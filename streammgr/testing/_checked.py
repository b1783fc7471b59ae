"""A manager that fails the test if anything is left: :func:`checked_manager`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TypedDict, Unpack

import trio
import trio.testing

from .._limits import Limiter
from .._manager import StreamManager
from ._fds import FdBaseline
from ._leaks import Leak, LeakError, find_leaks, format_leaks
from ._transport import TrackingTransport

__all__ = ["ManagerOptions", "checked_manager"]


class ManagerOptions(TypedDict, total=False):
    """The keyword arguments of :class:`~streammgr.StreamManager`, for
    :func:`checked_manager` (see the manager for what each means)."""

    max_streams: int | None
    max_streams_per_key: int | None
    max_waiting: int | None
    acquire_timeout: float | None
    reader_timeout: float | None
    idle_timeout: float | None
    deadline: float | None
    buffer_size: int
    shutdown_grace: float
    cleanup_timeout: float
    history_size: int
    limiter: Limiter | None
    secrets: tuple[str, ...] | list[str]


@asynccontextmanager
async def checked_manager(
    *,
    transports: Sequence[TrackingTransport] = (),
    fds: FdBaseline | bool = False,
    settle: bool = True,
    **options: Unpack[ManagerOptions],
) -> AsyncIterator[StreamManager]:
    """A running :class:`~streammgr.StreamManager` that fails if anything is left behind.

    ``async with checked_manager(max_streams=4) as manager:`` runs the manager as
    ``async with StreamManager(max_streams=4)`` would, and checks twice:

    1. when the block ends (after ``settle``): nothing of any stream may still be
       in flight: no open registry entry, no slot held, no caller queued, no
       producer task, no open change feed. Whatever the code under test left
       open is reported here, before shutdown would have tidied it up;
    2. after the manager closed: the same again (what shutdown itself left), and
       every response of ``transports`` closed exactly once, and no file
       descriptor opened since the block began (with ``fds``).

    Each finding is a :class:`Leak`; any leak raises :class:`LeakError` listing
    each one (stream id, key, phase, labels, age). If the block raised, its own
    exception goes on, with the leak report added as a note.

    Args:
        transports: :class:`TrackingTransport` instances whose responses must all
            be closed exactly once by the end.
        fds: ``True`` to take a file-descriptor baseline on entry, or a baseline
            taken earlier (:meth:`FdBaseline.take`); skipped where the platform
            cannot list descriptors.
        settle: wait until every task is blocked
            (``trio.testing.wait_all_tasks_blocked()``) before the first check,
            so that readers that are leaving have left.
        **options: passed to :class:`~streammgr.StreamManager`.

    Raises:
        LeakError: something was left behind.
    """
    baseline = fds if isinstance(fds, FdBaseline) else FdBaseline.take() if fds else None
    manager = StreamManager(**options)
    leaks: list[Leak] = []
    try:
        async with manager:
            yield manager
            if settle:
                await trio.testing.wait_all_tasks_blocked()
            leaks.extend(find_leaks(manager))
    except BaseException as exc:
        # The block's own error goes on; what was left is a note on it (not on a
        # cancellation, which leaves things half-way on purpose).
        found = [*leaks, *_after_close(manager, transports, baseline)]
        if found and not isinstance(exc, trio.Cancelled):
            exc.add_note(format_leaks(found, where="(found while the block failed)"))
        raise
    # What was already reported at the block's end (a slot never given back) once.
    leaks.extend(leak for leak in _after_close(manager, transports, baseline) if leak not in leaks)
    if leaks:
        raise LeakError(leaks, where="at the end of checked_manager")


def _after_close(
    manager: StreamManager, transports: Sequence[TrackingTransport], baseline: FdBaseline | None
) -> list[Leak]:
    """What is left once the manager has closed: its own leaks, responses, descriptors."""
    found = find_leaks(manager)
    for transport in transports:
        found.extend(transport.leaks())
    if baseline is not None:
        found.extend(baseline.leaks())
    return found
