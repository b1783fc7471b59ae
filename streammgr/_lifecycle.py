"""A stream's lifecycle, sans-IO: its states, the events that move it, what each move requires.

Everything that affects a stream's state lives here, as in h11's ``_state.py``.
:data:`TRANSITIONS` is a literal table: for each state, the events it accepts,
the state each leads to, the close reason the edge records, and the
:class:`Action` s the I/O layer (the manager and the reader's side) must carry
out. :func:`apply` is the only function that changes a record's state; an event
that the table does not accept in the current state raises
:class:`InvalidTransition`, and :data:`IGNORED` lists the events that are no-ops
in a state (an operator's ``cancel`` racing the stream's end, say).

No Trio, no logging, no clock: the manager decides *when* an event happened and
does what the answer says. docs/concepts.md shows this table as a diagram made by
:func:`mermaid_diagram`, and a test keeps the two identical.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Protocol

from ._states import CloseReason, Phase

__all__ = [
    "CANCEL_REASONS",
    "IGNORED",
    "PHASE_OF",
    "TRANSITIONS",
    "Action",
    "Edge",
    "Event",
    "InvalidTransition",
    "LifecycleRecord",
    "ReaderOutcome",
    "State",
    "apply",
    "mermaid_diagram",
    "reader_outcome",
]


class State(enum.Enum):
    """Where a stream is in its life (finer than the public :class:`Phase`)."""

    # Members are singletons compared by identity: hash them by identity too, in C
    # (Enum's own __hash__ is Python code, and the table is looked up per event).
    __hash__ = object.__hash__

    WAITING = "waiting"
    """Queued for an admission slot."""
    CONNECTING = "connecting"
    """Admitted; the producer runs and has not reported its upstream's answer."""
    FIRST_ITEM = "first_item"
    """The upstream answered (reported by a source); no item read yet."""
    STREAMING = "streaming"
    """The reader has taken at least one item; the producer runs."""
    DRAINING = "draining"
    """The producer finished; the reader has not read the end yet."""
    FAILED = "failed"
    """The producer raised; the reader has not taken the error yet."""
    CANCELLING = "cancelling"
    """Ending (cancelled, timed out, the reader left); the producer is cleaning up."""
    CLOSED = "closed"
    """Over: the record is in the history."""


class Event(enum.Enum):
    """What can happen to a stream. Each is caused by exactly one party."""

    # Members are singletons compared by identity: hash them by identity too, in C
    # (Enum's own __hash__ is Python code, and the table is looked up per event).
    __hash__ = object.__hash__

    ADMITTED = "admitted"
    """The limiter granted a slot (manager)."""
    REJECTED = "rejected"
    """The limiter refused: queue full or acquire timeout (manager)."""
    LIMITER_FAILED = "limiter failed"
    """The limiter raised instead of answering (manager)."""
    CONNECTED = "connected"
    """The producer reports that its upstream answered (source)."""
    FIRST_ITEM_READ = "first item read"
    """The reader took its first item (reader)."""
    PRODUCER_FINISHED = "producer finished"
    """The producer returned (producer task)."""
    PRODUCER_FAILED = "producer failed"
    """The producer raised an ``Exception`` (producer task)."""
    PRODUCER_ABORTED = "producer aborted"
    """The producer raised a ``BaseException`` that is not an ``Exception``
    (``KeyboardInterrupt``, ``SystemExit``...): it propagates (producer task)."""
    PRODUCER_CANCELLED = "producer cancelled"
    """The producer ended by cancellation (producer task)."""
    READ_END = "reader read the end"
    """The reader's loop reached the end of a finished producer (reader)."""
    ERROR_TAKEN = "reader took the error"
    """The reader received the producer's exception (reader)."""
    READER_LEFT = "reader left"
    """The reader's block exited, or its task was cancelled while waiting (reader)."""
    CANCEL = "cancel"
    """Operator cancel, a timeout, a client disconnect: carries its reason (manager)."""
    SHUTDOWN = "shutdown"
    """The manager is shutting down (manager)."""


class Action(enum.Enum):
    """What the I/O layer must do after a move, in this order."""

    # Members are singletons compared by identity: hash them by identity too, in C
    # (Enum's own __hash__ is Python code, and the table is looked up per event).
    __hash__ = object.__hash__

    START_PRODUCER = "start the producer"
    CANCEL_WAIT = "cancel the wait for a slot"
    CANCEL_PRODUCER = "cancel the producer's scope"
    RELEASE_SLOT = "release the slot"
    AWAIT_PRODUCER = "wait until the producer has finished"
    CLOSE_RECORD = "close the record"
    SHUT_DOWN_MANAGER = "shut the manager down"


class Edge(NamedTuple):
    """One row of the table.

    Attributes:
        target: the state the event leads to.
        reason: the close reason this edge records: a :class:`CloseReason`, or
            ``None`` to take the event's own (``CANCEL``, ``PRODUCER_FAILED``) or,
            when the stream already has one, keep it (the first reason wins).
        actions: what the I/O layer must do, in order.
    """

    target: State
    reason: CloseReason | None
    actions: tuple[Action, ...]


class InvalidTransition(RuntimeError):
    """An event the table does not accept in the current state: a bug in streammgr."""


_A = Action
_S = State
_E = Event

_PRODUCER_ENDED_EARLY: dict[Event, Edge] = {
    # While running: the upstream is closed, so the slot goes back now.
    _E.PRODUCER_FINISHED: Edge(_S.DRAINING, None, (_A.RELEASE_SLOT,)),
    _E.PRODUCER_FAILED: Edge(_S.FAILED, None, (_A.RELEASE_SLOT,)),
    _E.PRODUCER_ABORTED: Edge(
        _S.CLOSED,
        CloseReason.PRODUCER_ERROR,
        (_A.RELEASE_SLOT, _A.CLOSE_RECORD, _A.SHUT_DOWN_MANAGER),
    ),
    # Cancelled without a request: the manager's nursery itself is ending.
    _E.PRODUCER_CANCELLED: Edge(
        _S.CLOSED, CloseReason.SHUTDOWN, (_A.RELEASE_SLOT, _A.CLOSE_RECORD)
    ),
    _E.READER_LEFT: Edge(
        _S.CANCELLING, CloseReason.READER_EXIT, (_A.CANCEL_PRODUCER, _A.AWAIT_PRODUCER)
    ),
    _E.CANCEL: Edge(_S.CANCELLING, None, (_A.CANCEL_PRODUCER,)),
    _E.SHUTDOWN: Edge(_S.CANCELLING, CloseReason.SHUTDOWN, (_A.CANCEL_PRODUCER,)),
}

TRANSITIONS: dict[State, dict[Event, Edge]] = {
    _S.WAITING: {
        _E.ADMITTED: Edge(_S.CONNECTING, None, (_A.START_PRODUCER,)),
        _E.REJECTED: Edge(_S.CLOSED, CloseReason.REJECTED, (_A.CLOSE_RECORD,)),
        _E.LIMITER_FAILED: Edge(_S.CLOSED, CloseReason.LIMITER_ERROR, (_A.CLOSE_RECORD,)),
        _E.READER_LEFT: Edge(_S.CLOSED, CloseReason.READER_EXIT, (_A.CLOSE_RECORD,)),
        _E.CANCEL: Edge(_S.CLOSED, None, (_A.CANCEL_WAIT, _A.CLOSE_RECORD)),
        _E.SHUTDOWN: Edge(_S.CLOSED, CloseReason.SHUTDOWN, (_A.CANCEL_WAIT, _A.CLOSE_RECORD)),
    },
    _S.CONNECTING: {
        _E.CONNECTED: Edge(_S.FIRST_ITEM, None, ()),
        _E.FIRST_ITEM_READ: Edge(_S.STREAMING, None, ()),
        **_PRODUCER_ENDED_EARLY,
    },
    _S.FIRST_ITEM: {
        _E.FIRST_ITEM_READ: Edge(_S.STREAMING, None, ()),
        **_PRODUCER_ENDED_EARLY,
    },
    _S.STREAMING: dict(_PRODUCER_ENDED_EARLY),
    _S.DRAINING: {
        _E.READ_END: Edge(_S.CLOSED, CloseReason.COMPLETED, (_A.CLOSE_RECORD,)),
        _E.READER_LEFT: Edge(_S.CLOSED, CloseReason.READER_EXIT, (_A.CLOSE_RECORD,)),
        _E.CANCEL: Edge(_S.CLOSED, None, (_A.CLOSE_RECORD,)),
        _E.SHUTDOWN: Edge(_S.CLOSED, CloseReason.SHUTDOWN, (_A.CLOSE_RECORD,)),
    },
    _S.FAILED: {
        _E.ERROR_TAKEN: Edge(_S.CLOSED, None, (_A.CLOSE_RECORD,)),
        _E.READER_LEFT: Edge(_S.CLOSED, None, (_A.CLOSE_RECORD,)),
        _E.SHUTDOWN: Edge(_S.CLOSED, None, (_A.CLOSE_RECORD,)),
    },
    _S.CANCELLING: {
        # However the producer ends now, the stream ends with the reason given first.
        _E.PRODUCER_FINISHED: Edge(_S.CLOSED, None, (_A.RELEASE_SLOT, _A.CLOSE_RECORD)),
        _E.PRODUCER_FAILED: Edge(_S.CLOSED, None, (_A.RELEASE_SLOT, _A.CLOSE_RECORD)),
        _E.PRODUCER_CANCELLED: Edge(_S.CLOSED, None, (_A.RELEASE_SLOT, _A.CLOSE_RECORD)),
        _E.PRODUCER_ABORTED: Edge(
            _S.CLOSED, None, (_A.RELEASE_SLOT, _A.CLOSE_RECORD, _A.SHUT_DOWN_MANAGER)
        ),
        _E.READER_LEFT: Edge(_S.CANCELLING, None, (_A.AWAIT_PRODUCER,)),
    },
    _S.CLOSED: {},
}

IGNORED: dict[State, frozenset[Event]] = {
    # A source may report "connected" late or twice; items read after the first.
    _S.WAITING: frozenset(),
    _S.CONNECTING: frozenset(),
    _S.FIRST_ITEM: frozenset({_E.CONNECTED}),
    _S.STREAMING: frozenset({_E.CONNECTED, _E.FIRST_ITEM_READ}),
    _S.DRAINING: frozenset({_E.FIRST_ITEM_READ}),
    # The reason is decided: cancels and timeouts racing the end change nothing.
    _S.FAILED: frozenset({_E.FIRST_ITEM_READ, _E.CANCEL}),
    _S.CANCELLING: frozenset({_E.CONNECTED, _E.FIRST_ITEM_READ, _E.CANCEL, _E.SHUTDOWN}),
    # A wait cancelled in the instant the limiter refused or failed: the cancel stands.
    _S.CLOSED: frozenset(
        {
            _E.REJECTED,
            _E.LIMITER_FAILED,
            _E.CONNECTED,
            _E.FIRST_ITEM_READ,
            _E.CANCEL,
            _E.SHUTDOWN,
            _E.READER_LEFT,
            _E.READ_END,
            _E.ERROR_TAKEN,
        }
    ),
}

PHASE_OF: dict[State, Phase] = {
    _S.WAITING: Phase.WAITING,
    _S.CONNECTING: Phase.CONNECTING,
    _S.FIRST_ITEM: Phase.FIRST_ITEM,
    _S.STREAMING: Phase.STREAMING,
    _S.DRAINING: Phase.DRAINING,
    _S.FAILED: Phase.CLOSING,
    _S.CANCELLING: Phase.CLOSING,
    _S.CLOSED: Phase.CLOSED,
}
"""The public phase shown for each state."""

CANCEL_REASONS = frozenset(
    {
        CloseReason.CANCELLED,
        CloseReason.READER_TIMEOUT,
        CloseReason.IDLE_TIMEOUT,
        CloseReason.DEADLINE,
        CloseReason.SHUTDOWN,
        CloseReason.CLIENT_DISCONNECTED,
        CloseReason.CLIENT_STALLED,
        CloseReason.READER_EXIT,
    }
)
"""Reasons after which the reader's next pull raises ``StreamCancelled`` instead of
taking buffered items."""


class LifecycleRecord(Protocol):
    """The fields :func:`apply` reads and writes (``StreamRecord`` has them all)."""

    state: State
    phase: Phase
    close_reason: CloseReason | None
    detail: str | None
    exception: BaseException | None
    cached: Any  # the record's snapshot cache: apply() drops it


# The table as apply() reads it: one dict per state, each edge a plain tuple with
# its target's public phase (the same data, laid out for the per-stream hot path).
_EDGES: dict[State, dict[Event, tuple[State, CloseReason | None, tuple[Action, ...], Phase]]] = {
    state: {event: (*edge, PHASE_OF[edge.target]) for event, edge in edges.items()}
    for state, edges in TRANSITIONS.items()
}


def apply(
    record: LifecycleRecord,
    event: Event,
    reason: CloseReason | None = None,
    detail: str | None = None,
    error: BaseException | None = None,
) -> tuple[Action, ...]:
    """Move ``record`` by ``event``; return what the I/O layer must do now.

    Args:
        record: the stream's record.
        event: what happened.
        reason: the close reason an event carries (``CANCEL``, ``PRODUCER_FAILED``);
            recorded unless the edge sets its own or the stream has one already.
        detail: free text for the close (``None``: none); the first one stays.
        error: the producer's exception for ``PRODUCER_FAILED`` (the reader gets it).

    Returns:
        The actions, in order; ``()`` for an ignored event.

    Raises:
        InvalidTransition: the event is neither accepted nor ignored in this state.
    """
    state = record.state
    edge = _EDGES[state].get(event)
    if edge is None:
        if event in IGNORED[state]:
            return ()
        raise InvalidTransition(
            f"a stream in state {state.value!r} cannot take the event {event.value!r}"
        )
    target, edge_reason, actions, phase = edge
    if record.close_reason is None:
        new_reason = reason if edge_reason is None else edge_reason
        if new_reason is not None:
            record.close_reason = new_reason
            if detail:
                record.detail = detail
    if target is State.FAILED and error is not None:
        record.exception = error
    record.state = target
    record.phase = phase
    record.cached = None
    return actions


class ReaderOutcome(enum.Enum):
    """What the reader gets when the channel has ended."""

    END = "the end: StopAsyncIteration"
    ERROR = "the producer's own exception"
    CANCELLED = "StreamCancelled (or a StreamTimeout) naming the close reason"


def reader_outcome(record: LifecycleRecord) -> ReaderOutcome:
    """What a reader that reached the end of the channel must get now."""
    state = record.state
    if state is State.DRAINING or record.close_reason is CloseReason.COMPLETED:
        return ReaderOutcome.END
    if record.exception is not None:
        return ReaderOutcome.ERROR
    return ReaderOutcome.CANCELLED


_RUNNING = (State.CONNECTING, State.FIRST_ITEM, State.STREAMING)


def mermaid_diagram() -> str:
    """The table as a Mermaid state diagram (docs/concepts.md embeds it verbatim).

    The three states of a running producer share most of their edges: those are
    drawn once, from a composite ``running`` state.
    """

    def label(event: Event, edge: Edge) -> str:
        text = event.value
        if edge.target is State.CLOSED and edge.reason is not None:
            text += f" ({edge.reason.value})"
        return text

    shared = {
        event: edge
        for event, edge in TRANSITIONS[State.STREAMING].items()
        if all(TRANSITIONS[state].get(event) == edge for state in _RUNNING)
    }
    lines = [
        "stateDiagram-v2",
        "    [*] --> waiting",
        "    state running {",
        "        [*] --> connecting",
    ]
    for state in _RUNNING:
        for event, edge in TRANSITIONS[state].items():
            if event not in shared:
                lines.append(f"        {state.value} --> {edge.target.value}: {label(event, edge)}")
    lines.append("    }")
    for state, edges in TRANSITIONS.items():
        if state in _RUNNING:
            continue
        for event, edge in edges.items():
            target = "running" if edge.target in _RUNNING else edge.target.value
            lines.append(f"    {state.value} --> {target}: {label(event, edge)}")
    for event, edge in shared.items():
        lines.append(f"    running --> {edge.target.value}: {label(event, edge)}")
    lines.append("    closed --> [*]")
    return "\n".join(lines)
