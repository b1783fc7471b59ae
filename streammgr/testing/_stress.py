"""Many streams at once, each treated badly on purpose: :func:`stress`.

Each stream gets an action drawn from a seeded generator (read to the end, leave
early, raise in the reader, be cancelled by an operator at a random moment, read
slowly, stop reading until ``reader_timeout`` strikes, wait for a slot with a
short ``acquire_timeout``). Afterwards every invariant is checked: the limits
were never exceeded at any admission, every stream was opened and closed exactly
once, with a close reason that fits what was done to it and an outcome the reader
saw that fits the reason, and nothing was left behind (:func:`find_leaks`).
Meant for the mock clock (``trio.testing.MockClock(autojump_threshold=0)``), where
every delay costs nothing. A seed repeats every choice (the actions, the counts, the
delays); Trio deliberately varies the order in which ready tasks run, so which of two
things happening in the same instant wins (a cancel and the stream's end) can
differ from run to run: the invariants hold either way.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import trio

from .._errors import StreamCancelled, StreamLimitExceeded
from .._manager import StreamManager
from .._registry import RegistryWatcher
from .._states import CloseReason
from ._leaks import find_leaks

__all__ = ["StressAction", "StressError", "StressReport", "stress"]

_LABEL = "streammgr.stress"

# How a stream can end by itself, whatever the reader does: the producer's own
# outcome (a simulated fault is one of these).
_NATURAL = frozenset(
    {
        CloseReason.COMPLETED,
        CloseReason.PRODUCER_ERROR,
        CloseReason.UPSTREAM_ERROR,
        CloseReason.UPSTREAM_TRUNCATED,
        CloseReason.UPSTREAM_CONNECT_TIMEOUT,
        CloseReason.UPSTREAM_FIRST_EVENT_TIMEOUT,
        CloseReason.UPSTREAM_IDLE_TIMEOUT,
        CloseReason.UPSTREAM_DEADLINE,
    }
)


class StressAction(enum.StrEnum):
    """What :func:`stress` does to one stream."""

    READ_ALL = "read_all"
    """Read every item to the end."""
    EARLY_EXIT = "early_exit"
    """Leave the block (``break``) after a random number of items."""
    READER_ERROR = "reader_error"
    """Raise in the reader after a random number of items."""
    CANCEL = "cancel"
    """An operator calls ``manager.cancel`` at a random moment (waiting, connecting, streaming)."""
    SLOW_READER = "slow_reader"
    """Read everything, sleeping a random while before each item."""
    STALL = "stall"
    """Stop reading after a few items, longer than the stream's ``reader_timeout``."""
    IMPATIENT = "impatient"
    """Wait for a slot at most a random, short ``acquire_timeout``; then read all."""


# The close reasons each action may lead to, besides the natural ones.
_ALLOWED: Mapping[StressAction, frozenset[CloseReason]] = {
    StressAction.READ_ALL: frozenset(),
    StressAction.EARLY_EXIT: frozenset({CloseReason.READER_EXIT}),
    StressAction.READER_ERROR: frozenset({CloseReason.READER_EXIT}),
    StressAction.CANCEL: frozenset({CloseReason.CANCELLED}),
    StressAction.SLOW_READER: frozenset(),
    StressAction.STALL: frozenset({CloseReason.READER_TIMEOUT}),
    StressAction.IMPATIENT: frozenset({CloseReason.REJECTED}),
}


class _ReaderFailure(Exception):
    """The error a READER_ERROR stream's reader raises on purpose."""


def _fail_reader() -> None:
    raise _ReaderFailure("stress: the reader failed on purpose")


@dataclass(frozen=True, slots=True)
class StressReport:
    """What :func:`stress` did and saw.

    Attributes:
        streams: streams opened.
        seed: the seed (the same seed repeats every choice made).
        actions: streams per :class:`StressAction` value.
        close_reasons: streams per :class:`~streammgr.CloseReason` value.
        items: items the readers received in total.
        max_active: the most slots seen held at an admission.
        violations: every broken invariant (empty when the run passed).
    """

    streams: int
    seed: int
    actions: Mapping[str, int]
    close_reasons: Mapping[str, int]
    items: int
    max_active: int
    violations: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        reasons = ", ".join(
            f"{reason}={count}" for reason, count in sorted(self.close_reasons.items())
        )
        actions = ", ".join(f"{action}={count}" for action, count in sorted(self.actions.items()))
        return (
            f"stress(streams={self.streams}, seed={self.seed}): {self.items} items, "
            f"max_active={self.max_active}; actions: {actions}; close reasons: {reasons}"
        )


class StressError(AssertionError):
    """:func:`stress` found broken invariants; the message lists them.

    Attributes:
        report: the :class:`StressReport`, with its ``violations``.
    """

    def __init__(self, report: StressReport) -> None:
        lines = "\n".join(f"  - {violation}" for violation in report.violations[:50])
        more = len(report.violations) - 50
        if more > 0:
            lines += f"\n  ... and {more} more"
        super().__init__(f"{len(report.violations)} invariant(s) broken in {report}:\n{lines}")
        self.report = report


@dataclass(slots=True)
class _Outcome:
    action: StressAction
    stream_id: str | None = None
    items: int = 0
    ended: bool = False  # the reader read the end of the stream
    left: bool = False  # the reader left on purpose (break or its own error)
    error: Exception | None = None
    close_reason: CloseReason | None = None


async def stress(
    manager: StreamManager,
    producer_factory: Callable[[int], Callable[[], AsyncIterator[object]]],
    *,
    streams: int = 100,
    seed: int = 0,
    keys: int = 3,
    actions: Mapping[StressAction, float] | None = None,
    max_items: int = 5,
    max_delay: float = 1.0,
    reader_timeout: float = 2.0,
    check: bool = True,
) -> StressReport:
    """Open ``streams`` streams at once against the user's producers, and check them.

    Args:
        manager: a running manager (its limits are what is checked).
        producer_factory: ``producer_factory(i)`` returns the producer of stream
            number ``i`` (what ``manager.open`` takes: an async generator function,
            an ``SSESource``, an ``OpenAIChat``...).
        streams: how many streams to open, all at once.
        seed: seeds every random choice.
        keys: streams are spread over this many admission keys (``stress-0``...).
        actions: the relative weight of each :class:`StressAction` (missing ones
            are never drawn); ``None``: all equally likely.
        max_items: the most items a reader takes before leaving early, raising,
            or stalling.
        max_delay: the longest random delay (a slow reader's wait per item, an
            operator's wait before cancelling, an impatient ``acquire_timeout``).
        reader_timeout: the ``reader_timeout`` of the stalled streams (they stall
            for three times as long).
        check: raise :class:`StressError` if an invariant broke; ``False`` returns
            the report with its ``violations`` instead.

    Returns:
        The :class:`StressReport`: streams per action and per close reason.

    Raises:
        StressError: an invariant broke (with ``check``).
        ValueError: a bad argument.
    """
    if streams < 1 or keys < 1 or max_items < 0:
        raise ValueError(
            f"streams and keys must be at least 1 and max_items at least 0, got "
            f"streams={streams}, keys={keys}, max_items={max_items}"
        )
    if not max_delay > 0 or not reader_timeout > 0:
        raise ValueError(
            f"max_delay and reader_timeout must be positive seconds, got "
            f"max_delay={max_delay}, reader_timeout={reader_timeout}"
        )
    weights = dict(actions) if actions is not None else dict.fromkeys(StressAction, 1.0)
    if not weights or any(weight < 0 for weight in weights.values()) or not any(weights.values()):
        raise ValueError(f"actions must give some action a positive weight, got {actions!r}")
    rng = random.Random(seed)
    choices = list(weights)
    drawn = rng.choices(choices, weights=[weights[action] for action in choices], k=streams)
    outcomes = [_Outcome(action) for action in drawn]
    violations: list[str] = []
    max_active = 0

    def sample(where: str) -> None:
        nonlocal max_active
        stats = manager.stats()
        max_active = max(max_active, stats.active)
        if stats.max_streams is not None and stats.active > stats.max_streams:
            violations.append(
                f"{where}: {stats.active} slots held, above max_streams={stats.max_streams}"
            )
        per_key = stats.max_streams_per_key
        if per_key is not None:
            for key, count in stats.active_by_key.items():
                if count > per_key:
                    violations.append(
                        f"{where}: key {key!r} holds {count}, above max_streams_per_key={per_key}"
                    )

    opened: Counter[str] = Counter()
    closed: Counter[str] = Counter()

    async def consume(watcher: RegistryWatcher) -> None:
        async for event in watcher:
            if event.kind == "overflow":
                violations.append("the registry feed overflowed: events were lost")
                continue
            info = event.stream
            if info is None or _LABEL not in info.labels:
                continue
            if event.kind == "opened":
                opened[info.id] += 1
            elif event.kind == "admitted":
                sample(f"admission of {info.id}")
            else:
                closed[info.id] += 1

    async def operator(outcome: _Outcome, delay: float) -> None:
        await trio.sleep(delay)
        if outcome.stream_id is not None:
            manager.cancel(outcome.stream_id, reason="stress: operator cancel")

    async def run_one(number: int, nursery: trio.Nursery) -> None:
        outcome = outcomes[number]
        action = outcome.action
        stream_rng = random.Random(f"{seed}-{number}")
        limit = stream_rng.randint(0, max_items)
        stream_reader_timeout = manager._reader_timeout
        acquire_timeout = manager._acquire_timeout
        if action is StressAction.STALL:
            stream_reader_timeout = reader_timeout
        elif action is StressAction.IMPATIENT:
            acquire_timeout = stream_rng.uniform(max_delay / 100, max_delay)
        stream = manager.open(
            producer_factory(number),
            key=f"stress-{number % keys}",
            labels={_LABEL: str(number), "action": str(action)},
            reader_timeout=stream_reader_timeout,
            acquire_timeout=acquire_timeout,
        )
        outcome.stream_id = stream.id
        if action is StressAction.CANCEL:
            nursery.start_soon(operator, outcome, stream_rng.uniform(0.0, max_delay))
        try:
            async with stream:
                sample(f"stream {stream.id} entered")
                async for _ in stream:
                    outcome.items += 1
                    if outcome.items > limit and action is StressAction.EARLY_EXIT:
                        outcome.left = True
                        break
                    if outcome.items > limit and action is StressAction.READER_ERROR:
                        outcome.left = True
                        _fail_reader()
                    if action is StressAction.SLOW_READER:
                        await trio.sleep(stream_rng.uniform(0.0, max_delay))
                    if action is StressAction.STALL and outcome.items > limit:
                        await trio.sleep(3 * reader_timeout)
                else:
                    outcome.ended = True
        except _ReaderFailure:
            pass
        except Exception as exc:
            outcome.error = exc
        outcome.close_reason = stream.info().close_reason

    async with (
        manager.watch(max_buffer=4 * streams + 64) as watcher,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(consume, watcher)
        async with trio.open_nursery() as stream_nursery:
            for number in range(streams):
                stream_nursery.start_soon(run_one, number, stream_nursery)
        watcher.close()  # every stream has closed: the feed drains, then ends

    natural = set(_NATURAL)
    defaults = {  # the manager's own default timeouts may strike any stream
        CloseReason.READER_TIMEOUT: manager._reader_timeout,
        CloseReason.IDLE_TIMEOUT: manager._idle_timeout,
        CloseReason.DEADLINE: manager._deadline,
    }
    natural.update(reason for reason, seconds in defaults.items() if seconds is not None)
    if manager.stats().max_waiting is not None:
        natural.add(CloseReason.REJECTED)  # a bounded queue may refuse any stream
    for number, outcome in enumerate(outcomes):
        violations.extend(_check_outcome(number, outcome, natural, opened, closed))
    for leak in find_leaks(manager):
        violations.append(f"left behind: {leak}")
    report = StressReport(
        streams=streams,
        seed=seed,
        actions=dict(Counter(str(outcome.action) for outcome in outcomes)),
        close_reasons=dict(Counter(str(outcome.close_reason) for outcome in outcomes)),
        items=sum(outcome.items for outcome in outcomes),
        max_active=max_active,
        violations=tuple(violations),
    )
    if check and violations:
        raise StressError(report)
    return report


def _check_outcome(
    number: int,
    outcome: _Outcome,
    natural: set[CloseReason],
    opened: Counter[str],
    closed: Counter[str],
) -> list[str]:
    """The invariants one stream broke (``[]`` if none)."""
    found: list[str] = []
    name = f"stream #{number} ({outcome.stream_id}, {outcome.action})"
    stream_id = outcome.stream_id or ""
    if opened[stream_id] != 1 or closed[stream_id] != 1:
        found.append(
            f"{name}: opened {opened[stream_id]} and closed {closed[stream_id]} times, not once"
        )
    reason = outcome.close_reason
    if reason is None:
        return [*found, f"{name}: no close reason recorded"]
    allowed = natural | _ALLOWED[outcome.action]
    if reason not in allowed:
        shown = ", ".join(sorted(str(item) for item in allowed))
        found.append(f"{name}: closed as {reason}, expected one of {shown}")
    error = outcome.error
    if reason is CloseReason.COMPLETED and (error is not None or not outcome.ended):
        found.append(f"{name}: completed, but the reader did not see a clean end ({error!r})")
    if reason is CloseReason.READER_EXIT and not outcome.left:
        found.append(f"{name}: closed as reader_exit, but the reader did not leave")
    if reason is CloseReason.REJECTED and not isinstance(error, StreamLimitExceeded):
        found.append(f"{name}: rejected, but the reader got {error!r}")
    if reason in (CloseReason.CANCELLED, CloseReason.READER_TIMEOUT) and not (
        isinstance(error, StreamCancelled) and error.close_reason is reason
    ):
        found.append(f"{name}: closed as {reason}, but the reader got {error!r}")
    return found
