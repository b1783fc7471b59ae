"""The simulated upstream's count of the responses it holds, and how each ended.

Both I/O layers (the ASGI app and the httpx transport) open a
:class:`ResponseRecord` when a request arrives and close it when the response is
over; closing twice counts once. :meth:`ConnectionLedger.stats` is a frozen
snapshot, so a test can compare before and after.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ConnectionLedger", "ConnectionStats", "Ending", "ResponseRecord"]


class Ending(enum.StrEnum):
    """How a simulated response ended."""

    COMPLETED = "completed"
    """Every byte was handed over (error answers such as a 404 included)."""
    CLIENT_LEFT = "client_left"
    """The client went away (closed the body, disconnected, was cancelled) first."""
    FAULT = "fault"
    """The response carried its injected fault to its end (a drop, an error...)."""


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """A snapshot of the responses the simulated upstream holds and has held.

    Attributes:
        open: responses open now (a request arrived, its response is not over).
        opened: responses opened in total.
        closed: responses closed in total (``opened - open``).
        max_open: the most that were open at once.
        completed: closed after every byte was handed over.
        client_left: closed because the client went away first.
        faulted: closed after carrying their fault to its end.
    """

    open: int
    opened: int
    closed: int
    max_open: int
    completed: int
    client_left: int
    faulted: int


class ResponseRecord:
    """One response's entry in the ledger: closed exactly once."""

    __slots__ = ("_ledger", "ending")

    def __init__(self, ledger: ConnectionLedger) -> None:
        self._ledger: ConnectionLedger | None = ledger
        self.ending: Ending | None = None

    @property
    def closed(self) -> bool:
        """The response is over and counted."""
        return self._ledger is None

    def close(self, ending: Ending) -> None:
        """Count this response as closed, ended by ``ending``; later calls do nothing."""
        ledger = self._ledger
        if ledger is None:
            return
        self._ledger = None
        self.ending = ending
        ledger._close(ending)


class ConnectionLedger:
    """Counts of the responses an upstream opened and closed, and how they ended."""

    def __init__(self) -> None:
        self._open = self._opened = self._max_open = 0
        self._endings = dict.fromkeys(Ending, 0)

    def open(self) -> ResponseRecord:
        """Count a new response; close the returned record when it is over."""
        self._open += 1
        self._opened += 1
        self._max_open = max(self._max_open, self._open)
        return ResponseRecord(self)

    def _close(self, ending: Ending) -> None:
        self._open -= 1
        self._endings[ending] += 1

    def stats(self) -> ConnectionStats:
        """A snapshot of the counts."""
        endings = self._endings
        return ConnectionStats(
            open=self._open,
            opened=self._opened,
            closed=self._opened - self._open,
            max_open=self._max_open,
            completed=endings[Ending.COMPLETED],
            client_left=endings[Ending.CLIENT_LEFT],
            faulted=endings[Ending.FAULT],
        )
