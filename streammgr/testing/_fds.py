"""File descriptors before and after: :class:`FdBaseline` (Linux ``/proc/self/fd``).

Where ``/proc/self/fd`` does not exist (macOS, Windows) the baseline is
unavailable: :attr:`FdBaseline.supported` is ``False`` and :meth:`FdBaseline.leaks`
returns ``[]``, so a check built on it is skipped rather than wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._leaks import Leak, LeakError

__all__ = ["FdBaseline", "open_fds"]

_FD_DIR = Path("/proc/self/fd")


def open_fds() -> dict[int, str] | None:
    """The process's open file descriptors and what each points at; ``None`` if unknown.

    The descriptor ``os.listdir`` itself used is closed by the time it returns,
    so it is left out (its link no longer resolves).
    """
    if not _FD_DIR.is_dir():
        return None
    found: dict[int, str] = {}
    for name in os.listdir(_FD_DIR):
        try:
            found[int(name)] = os.readlink(_FD_DIR / name)
        except (OSError, ValueError):
            continue  # closed in the meantime (the listing's own descriptor)
    return found


class FdBaseline:
    """The open file descriptors at one moment, to compare against later.

    ``baseline = FdBaseline.take()`` before the code under test, then
    ``baseline.check()`` after it (or :meth:`leaks` for the list). A descriptor
    counts as leaked when it is open now and was not then, or now points at
    something else.

    Attributes:
        fds: descriptor to target (``"socket:[1234]"``, a path), or ``None``
            where the platform has no ``/proc/self/fd``.
    """

    def __init__(self, fds: dict[int, str] | None) -> None:
        self.fds = fds

    @classmethod
    def take(cls) -> FdBaseline:
        """The descriptors open now."""
        return cls(open_fds())

    @property
    def supported(self) -> bool:
        """Whether this platform lists descriptors (Linux: ``/proc/self/fd``)."""
        return self.fds is not None

    def leaks(self) -> list[Leak]:
        """A :class:`Leak` (kind ``"fd"``) per descriptor opened since the baseline."""
        if self.fds is None:
            return []
        now = open_fds() or {}
        return [
            Leak("fd", f"file descriptor {fd} -> {target} opened and not closed")
            for fd, target in sorted(now.items())
            if self.fds.get(fd) != target
        ]

    def check(self) -> None:
        """Raise :class:`LeakError` if a descriptor was opened since the baseline."""
        found = self.leaks()
        if found:
            raise LeakError(found, where="in file descriptors")
