"""Finding what a manager left behind: :func:`find_leaks`, :class:`Leak`, :class:`LeakError`.

A leak is anything of a stream that outlives the code that should have ended it:
a record still in the registry, an admission slot still held or a caller still
queued in the limiter, a task still running in the manager's nursery, an entry of
the timeout watchdog still pointing at a stream, a change feed still open. This
module reads the manager's own bookkeeping (its registry, limiter, runner and
watchdog) rather than guessing from the outside, so a report names the stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .._manager import StreamManager

__all__ = ["Leak", "LeakError", "find_leaks", "format_leaks"]

_WATCHDOG_TASK = "streammgr-watchdog"
_PRODUCER_TASK = "streammgr._runner.StreamRunner._run_producer"


@dataclass(frozen=True, slots=True)
class Leak:
    """One thing left behind.

    Attributes:
        kind: what leaked: ``"stream"`` (a registry entry still open), ``"slot"``
            (the limiter still counts active slots), ``"waiter"`` (the limiter
            still counts queued callers), ``"task"`` (a task still running in the
            manager's nursery), ``"watchdog"`` (a timeout entry still pointing at a
            closed stream), ``"watcher"`` (a ``manager.watch()`` feed still open),
            ``"response"`` (an upstream response not closed, or closed twice) or
            ``"fd"`` (a file descriptor opened and not closed).
        what: a one-line description of it.
        stream_id: the stream's id, when the leak belongs to one stream.
        key: the stream's admission key.
        phase: the stream's phase (``"waiting"``, ``"streaming"``...).
        labels: the stream's labels.
        age: seconds (on the Trio clock) since the stream or response was opened.
    """

    kind: str
    what: str
    stream_id: str | None = None
    key: str | None = None
    phase: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    age: float | None = None

    def __str__(self) -> str:
        parts = [f"[{self.kind}] {self.what}"]
        if self.stream_id is not None:
            parts.append(f"stream_id={self.stream_id}")
        if self.key is not None:
            parts.append(f"key={self.key!r}")
        if self.phase is not None:
            parts.append(f"phase={self.phase}")
        if self.labels:
            parts.append(f"labels={self.labels}")
        if self.age is not None:
            parts.append(f"age={self.age:.3f}s")
        return " ".join(parts)


def format_leaks(leaks: Iterable[Leak], *, where: str = "") -> str:
    """A readable, multi-line report of ``leaks`` (one per line).

    Args:
        leaks: what :func:`find_leaks` (or a tracker's ``leaks()``) returned.
        where: when the check ran, e.g. ``"at the end of the block"``.
    """
    found = list(leaks)
    head = f"{len(found)} leak{'s' if len(found) != 1 else ''}"
    if where:
        head += f" {where}"
    return head + ":\n" + "\n".join(f"  - {leak}" for leak in found)


class LeakError(AssertionError):
    """Something of a stream was left behind; the message lists each leak.

    An ``AssertionError``, so pytest reports it as a failed check.

    Attributes:
        leaks: the leaks found.
    """

    def __init__(self, leaks: Sequence[Leak], *, where: str = "") -> None:
        super().__init__(format_leaks(leaks, where=where))
        self.leaks = list(leaks)


def find_leaks(manager: StreamManager) -> list[Leak]:
    """Everything of ``manager``'s streams still held now; ``[]`` when nothing is.

    Call it when no stream should be in flight: at the end of a test, after the
    code under test has returned (or after the manager closed). While the manager
    runs, its own watchdog task is expected and not reported.

    Reports registry entries still open (with id, key, phase, labels and age),
    limiter slots still active or callers still waiting (from ``stats()``),
    tasks still running in the manager's nursery other than its watchdog, timeout
    watchdog entries that still point at a closed stream, and open
    ``manager.watch()`` feeds.

    Args:
        manager: the manager to inspect (open, or closed).

    Returns:
        The leaks, streams first.
    """
    leaks: list[Leak] = []
    registry = manager._registry
    runner = manager._runner
    now = _now()
    for record in list(registry.active.values()):
        leaks.append(
            Leak(
                "stream",
                "stream still open in the registry",
                stream_id=record.id,
                key=record.key,
                phase=str(record.phase),
                labels=dict(record.labels),
                age=None if now is None else now - record.created_at,
            )
        )
    stats = manager.stats()
    if stats.active:
        by_key = ", ".join(
            f"{key!r}: {count}" for key, count in sorted(stats.active_by_key.items())
        )
        leaks.append(Leak("slot", f"limiter still counts {stats.active} active slot(s) ({by_key})"))
    if stats.waiting:
        by_key = ", ".join(
            f"{key!r}: {count}" for key, count in sorted(stats.waiting_by_key.items())
        )
        leaks.append(
            Leak("waiter", f"limiter still counts {stats.waiting} waiting caller(s) ({by_key})")
        )
    nursery = runner.nursery
    if nursery is not None and not runner.closed:
        for task in nursery.child_tasks:
            if task.name in (_WATCHDOG_TASK, _PRODUCER_TASK):
                continue  # the manager's own; a producer is its stream's, reported above
            leaks.append(Leak("task", f"task {task.name!r} still running in the manager's nursery"))
    if runner.running_producers and not registry.active:
        leaks.append(
            Leak("task", f"{runner.running_producers} producer(s) still counted as running")
        )
    for entry in list(runner.watchdog._heap):
        record = entry[2]
        if record is not None and record.id not in registry.active:
            leaks.append(
                Leak(
                    "watchdog",
                    "timeout watchdog still holds a closed stream",
                    stream_id=record.id,
                    key=record.key,
                    phase=str(record.phase),
                    labels=dict(record.labels),
                )
            )
    if registry.watchers:
        leaks.append(Leak("watcher", f"{len(registry.watchers)} manager.watch() feed(s) open"))
    return leaks


def _now() -> float | None:
    """The Trio clock, or ``None`` outside a Trio run."""
    try:
        return trio.current_time()
    except RuntimeError:
        return None
