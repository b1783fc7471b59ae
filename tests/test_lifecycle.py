"""The lifecycle table, without Trio: every event in every state."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streammgr import CloseReason, Phase, StreamCancelled, StreamManager
from streammgr._lifecycle import (
    CANCEL_REASONS,
    IGNORED,
    PHASE_OF,
    TRANSITIONS,
    Action,
    Event,
    InvalidTransition,
    ReaderOutcome,
    State,
    apply,
    mermaid_diagram,
    reader_outcome,
)
from streammgr._registry import StreamRecord

ALL = [(state, event) for state in State for event in Event]


def record_in(state: State, reason: CloseReason | None = None) -> StreamRecord:
    record = StreamRecord("s-1", "k", {}, 0.0, 0.0)
    record.state, record.phase, record.close_reason = state, PHASE_OF[state], reason
    return record


def test_every_state_has_a_row_and_a_phase() -> None:
    assert set(TRANSITIONS) == set(State) == set(IGNORED) == set(PHASE_OF)


def test_no_event_is_both_accepted_and_ignored() -> None:
    for state in State:
        assert not set(TRANSITIONS[state]) & IGNORED[state], state


@pytest.mark.parametrize(("state", "event"), ALL, ids=[f"{s.value}-{e.value}" for s, e in ALL])
def test_every_event_in_every_state(state: State, event: Event) -> None:
    record = record_in(state)
    edge = TRANSITIONS[state].get(event)
    if edge is not None:
        actions = apply(record, event, reason=CloseReason.CANCELLED, detail="why")
        assert actions == edge.actions
        assert record.state is edge.target
        assert record.phase is PHASE_OF[edge.target]
        if edge.target is State.CLOSED:
            assert record.close_reason is not None  # a closed stream always has a reason
    elif event in IGNORED[state]:
        assert apply(record, event, reason=CloseReason.CANCELLED) == ()
        assert (record.state, record.close_reason) == (state, None)
    else:
        with pytest.raises(InvalidTransition, match=rf"state '{state.value}' cannot take"):
            apply(record, event)
        assert record.state is state


def test_closed_is_final() -> None:
    assert TRANSITIONS[State.CLOSED] == {}


def test_every_state_can_reach_closed() -> None:
    reachable = {State.CLOSED}
    changed = True
    while changed:
        changed = False
        for state, edges in TRANSITIONS.items():
            if state not in reachable and any(e.target in reachable for e in edges.values()):
                reachable.add(state)
                changed = True
    assert reachable == set(State)


def test_every_edge_into_closed_closes_the_record_and_a_running_producer_gives_its_slot() -> None:
    for state, edges in TRANSITIONS.items():
        for event, edge in edges.items():
            if edge.target is State.CLOSED:
                assert Action.CLOSE_RECORD in edge.actions, (state, event)
            if event.name.startswith("PRODUCER_"):
                assert Action.RELEASE_SLOT in edge.actions, (state, event)


def test_first_reason_wins() -> None:
    record = record_in(State.STREAMING)
    apply(record, Event.CANCEL, reason=CloseReason.READER_TIMEOUT, detail="slow reader")
    assert apply(record, Event.CANCEL, reason=CloseReason.CANCELLED, detail="operator") == ()
    apply(record, Event.PRODUCER_FAILED, reason=CloseReason.PRODUCER_ERROR, error=ValueError())
    assert (record.state, record.close_reason) == (State.CLOSED, CloseReason.READER_TIMEOUT)
    assert record.detail == "slow reader"
    assert record.exception is None  # failed while being cancelled: the cancel stands


def test_a_failed_producer_keeps_its_error_for_the_reader() -> None:
    record = record_in(State.STREAMING)
    error = ValueError("upstream broke")
    actions = apply(record, Event.PRODUCER_FAILED, reason=CloseReason.UPSTREAM_ERROR, error=error)
    assert actions == (Action.RELEASE_SLOT,)
    assert (record.state, record.phase) == (State.FAILED, Phase.CLOSING)
    assert record.exception is error
    assert reader_outcome(record) is ReaderOutcome.ERROR
    assert apply(record, Event.ERROR_TAKEN) == (Action.CLOSE_RECORD,)
    assert record.close_reason is CloseReason.UPSTREAM_ERROR


def test_reading_the_end_completes_and_nothing_rewrites_it() -> None:
    record = record_in(State.STREAMING)
    apply(record, Event.PRODUCER_FINISHED)
    assert reader_outcome(record) is ReaderOutcome.END
    apply(record, Event.READ_END)
    assert (record.state, record.close_reason) == (State.CLOSED, CloseReason.COMPLETED)
    for late in (Event.CANCEL, Event.SHUTDOWN, Event.READER_LEFT, Event.READ_END):
        assert apply(record, late, reason=CloseReason.READER_TIMEOUT) == ()
    assert record.close_reason is CloseReason.COMPLETED
    assert reader_outcome(record) is ReaderOutcome.END


def test_an_empty_detail_is_no_detail() -> None:
    record = record_in(State.STREAMING)
    apply(record, Event.CANCEL, reason=CloseReason.CANCELLED, detail="")
    assert record.detail is None
    assert reader_outcome(record) is ReaderOutcome.CANCELLED


def test_the_diagram_in_the_docs_is_made_from_the_table() -> None:
    text = (Path(__file__).parent.parent / "docs" / "concepts.md").read_text()
    match = re.search(r"```mermaid\n(.*?)\n```", text, re.DOTALL)
    assert match is not None, "docs/concepts.md has no mermaid diagram"
    assert match.group(1) == mermaid_diagram(), (
        "docs/concepts.md's lifecycle diagram is stale: paste "
        "python -c 'from streammgr._lifecycle import mermaid_diagram; print(mermaid_diagram())'"
    )


async def test_a_stalled_client_ends_a_stream_from_outside() -> None:
    # streammgr.server records a client that stopped reading with its own reason:
    # manager.cancel accepts it, and the reader's next pull raises StreamCancelled.
    assert CloseReason.CLIENT_STALLED in CANCEL_REASONS

    async def ticks() -> AsyncIterator[int]:
        while True:
            yield 1

    async with StreamManager() as manager:
        with pytest.raises(StreamCancelled) as caught:
            async with manager.open(ticks) as stream:
                async for _ in stream:
                    assert manager.cancel(
                        stream.id, reason="stalled", close_reason=CloseReason.CLIENT_STALLED
                    )
    assert caught.value.close_reason is CloseReason.CLIENT_STALLED
    info = manager.get(stream.id)
    assert info is not None
    assert info.close_reason is CloseReason.CLIENT_STALLED
