"""Shared by the SSE tests: a reference parser, raw-mode references, runners, fixtures.

:func:`assert_parses` feeds a fixture stream whole, byte by byte, split at every offset,
split at every pair of offsets (short fixtures), and with trailing garbage; all must give
the same events. :func:`reference_parse` is a deliberately naive, line-by-line
transcription of the standard over the whole stream decoded at once; property tests
compare the parser with it.

Raw mode goes through the same fixtures (whole, byte by byte, split at every offset):
``SSEParser.feed_raw`` gives the same events as ``feed``, each event's bytes as
:func:`reference_raw` cuts them out of the stream (the blocks kept for their id or retry,
then the event's own block), and the same events again when those bytes are forwarded
to a fresh parser; ``RawSSEParser.feed`` gives, per call, a batch of the same events
whose ``raw`` is the concatenation of their bytes.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Collection, Iterator, Sequence

from hypothesis import strategies as st

from streammgr._errors import SSEEventTooLarge
from streammgr.sse import RawBatch, RawSSEParser, ServerSentEvent, SSEParser

E = ServerSentEvent

# -- helpers --------------------------------------------------------------------------


class Outcome:
    """What a parser made of a stream: events, final properties, error if any."""

    def __init__(
        self,
        events: list[ServerSentEvent],
        last_event_id: str,
        retry: int | None,
        error: SSEEventTooLarge | None = None,
        raws: list[bytes] | None = None,
        batches: list[bytes] | None = None,
    ) -> None:
        self.events = events
        self.last_event_id = last_event_id
        self.retry = retry
        self.error = error
        self.raws = raws  # raw mode: the bytes of each event
        self.batches = batches  # raw mode: the bytes of the events of each call

    def key(self) -> tuple[object, ...]:
        error = None if self.error is None else type(self.error)
        return (self.events, self.last_event_id, self.retry, error)


def run(chunks: Sequence[bytes], max_event_size: int = 1_048_576) -> Outcome:
    """Feed ``chunks`` then close; stop at the first SSEEventTooLarge."""
    parser = SSEParser(max_event_size=max_event_size)
    events: list[ServerSentEvent] = []
    try:
        for chunk in chunks:
            events.extend(parser.feed(chunk))
        events.extend(parser.close())
    except SSEEventTooLarge as exc:
        return Outcome(events, parser.last_event_id, parser.retry, exc)
    return Outcome(events, parser.last_event_id, parser.retry)


def run_raw(chunks: Sequence[bytes], max_event_size: int = 1_048_576) -> Outcome:
    """Like :func:`run`, with ``feed_raw``; the outcome has the bytes of each event."""
    parser = SSEParser(max_event_size=max_event_size)
    pairs: list[tuple[ServerSentEvent, bytes]] = []
    batches = []
    error = None
    try:
        for chunk in chunks:
            completed = parser.feed_raw(chunk)
            pairs.extend(completed)
            batches.append(b"".join(raw for _, raw in completed))
        assert parser.close() == []
    except SSEEventTooLarge as exc:
        error = exc
    events = [event for event, _ in pairs]
    raws = [raw for _, raw in pairs]
    return Outcome(events, parser.last_event_id, parser.retry, error, raws, batches)


def run_batches(
    chunks: Sequence[bytes], max_event_size: int = 1_048_576, pairs_at: Collection[int] = ()
) -> Outcome:
    """Like :func:`run_raw`, with :meth:`RawSSEParser.feed`: the batch of each call.

    The calls whose index is in ``pairs_at`` use :meth:`RawSSEParser.feed_pairs`.
    """
    parser = RawSSEParser(max_event_size=max_event_size)
    events: list[ServerSentEvent] = []
    batches = []
    error = None
    try:
        for index, chunk in enumerate(chunks):
            if index in pairs_at:
                pairs = parser.feed_pairs(chunk)
                events.extend(event for event, _ in pairs)
                batches.append(b"".join(raw for _, raw in pairs))
                continue
            batch = parser.feed(chunk)
            assert type(batch) is RawBatch
            assert bool(batch) is bool(batch.raw)
            events.extend(batch)
            batches.append(batch.raw)
        closed = parser.close()
        assert type(closed) is RawBatch
        assert closed == []
        assert closed.raw == b""
    except SSEEventTooLarge as exc:
        error = exc
    return Outcome(events, parser.last_event_id, parser.retry, error, batches=batches)


def split_at(stream: bytes, offsets: Sequence[int]) -> list[bytes]:
    bounds = [0, *offsets, len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(bounds)]


def simple_chunkings(stream: bytes) -> Iterator[list[bytes]]:
    """Whole; byte by byte; two chunks split anywhere."""
    yield [stream]
    yield [stream[index : index + 1] for index in range(len(stream))]
    for offset in range(len(stream) + 1):
        yield split_at(stream, [offset])


def chunkings(stream: bytes, pairs_up_to: int = 40) -> Iterator[list[bytes]]:
    """Whole; byte by byte; two chunks split anywhere; three chunks if short."""
    yield from simple_chunkings(stream)
    if len(stream) <= pairs_up_to:
        for first in range(len(stream) + 1):
            for second in range(first, len(stream) + 1):
                yield split_at(stream, [first, second])


GARBAGE = b"data: an unterminated line: never dispatched \xe2\x82"


def assert_parses(
    stream: bytes,
    expected: list[ServerSentEvent],
    *,
    last_event_id: str | None = None,
    retry: int | None = None,
) -> None:
    """Every chunking of ``stream`` gives ``expected``; so does the reference.

    Raw mode too, for the chunkings of :func:`simple_chunkings`: see
    :func:`assert_raw_parses`.
    """
    assert [tuple(event) for event in reference_parse(stream).events] == [
        tuple(event) for event in expected
    ], "the fixture disagrees with the reference transcription of the standard"
    spans = reference_raw(stream)
    clients: dict[bytes, list[ServerSentEvent]] = {}
    simple = len(stream) + 3  # the first chunkings: see simple_chunkings()
    for index, chunks in enumerate(chunkings(stream)):
        outcome = run(chunks)
        assert outcome.error is None
        assert outcome.events == expected, chunks
        if last_event_id is not None:
            assert outcome.last_event_id == last_event_id, chunks
        assert outcome.retry == retry, chunks
        if index < simple:
            assert_raw_parses(stream, chunks, spans, outcome, clients)
    # An unterminated partial line after the last event changes nothing before it.
    for offset in range(len(GARBAGE) + 1):
        assert run([stream + GARBAGE[:offset]]).events == expected
        assert run([stream, GARBAGE[:offset], GARBAGE[offset:]]).events == expected
    assert run_raw([stream, GARBAGE]).events == expected


def assert_raw_parses(
    stream: bytes,
    chunks: Sequence[bytes],
    spans: list[RawSpan],
    outcome: Outcome,
    clients: dict[bytes, list[ServerSentEvent]] | None = None,
) -> Outcome:
    """``feed_raw`` agrees with ``outcome`` (of ``feed``), and its bytes with ``spans``.

    :class:`RawSSEParser`'s batches hold the same events, and the same bytes per call.
    A client's parser, fed the bytes of the events, sees the same events; ``clients``
    caches what it saw, by bytes sent, across chunkings of one stream.
    """
    raw = run_raw(chunks)
    assert raw.key() == outcome.key(), chunks
    assert raw.raws is not None
    assert raw.raws == expected_raws(stream, spans, chunks), chunks
    # RawSSEParser.feed: the same events; each call's batch, the bytes of its events.
    batches = run_batches(chunks)
    assert batches.key() == raw.key(), chunks
    assert batches.batches == raw.batches, chunks
    sent = forwarded(raw.raws)
    if clients is None or sent not in clients:
        client = run([sent])
        assert client.error is None
        clients = {} if clients is None else clients
        clients[sent] = client.events
    assert clients[sent] == raw.events, chunks
    return raw


RawSpan = tuple[ServerSentEvent, list[tuple[int, int]]]
BOM = b"\xef\xbb\xbf"
LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def reference_raw(stream: bytes) -> list[RawSpan]:
    """Raw mode, naively: each event and where the pieces of its bytes are in ``stream``.

    Cuts the stream into blocks at blank lines; a block's bytes start at its first line
    that is not a comment. :func:`reference_parse`, run on the stream up to the end of
    each block, tells whether the block dispatched an event (its bytes are the kept
    blocks, then its own), changed the last event ID or the reconnection time (kept, in
    place of the block kept before for the same reason), or neither (dropped).
    """
    start = len(BOM) if stream.startswith(BOM) else 0
    block_start = line_start = start
    first_field: int | None = None
    before = reference_parse(b"")
    kept: list[tuple[int, int, bool, bool]] = []  # start, stop, sets the id, sets retry
    spans = []
    for match in LINE_ENDING.finditer(stream, start):
        if match.start() == line_start:  # a blank line: the block ends
            after = reference_parse(stream[: match.end()])
            piece_start = line_start if first_field is None else first_field
            if len(after.events) > len(before.events):
                pieces = [(a, b) for a, b, _, _ in kept] + [(piece_start, match.end())]
                spans.append((after.events[-1], pieces))
                kept = []
            else:
                sets_id = after.last_event_id != before.last_event_id
                sets_retry = after.retry != before.retry
                if sets_id or sets_retry:
                    kept = [(a, b, i and not sets_id, r and not sets_retry) for a, b, i, r in kept]
                    kept = [piece for piece in kept if piece[2] or piece[3]]
                    kept.append((piece_start, match.end(), sets_id, sets_retry))
            before = after
            block_start = match.end()
            first_field = None
        elif first_field is None and stream[line_start : line_start + 1] != b":":
            first_field = line_start
        line_start = match.end()
    del block_start
    return spans


def expected_raws(stream: bytes, spans: list[RawSpan], chunks: Sequence[bytes]) -> list[bytes]:
    """The bytes of each event when ``stream`` is fed as ``chunks``.

    The slices of ``spans``, except that a block (the event's or a kept one) whose
    final CRLF is split across chunks ends at the CR, without the LF.
    """
    ends = set(itertools.accumulate(len(chunk) for chunk in chunks))
    raws = []
    for _, pieces in spans:
        raw = b""
        for start, stop in pieces:
            split_crlf = stream[stop - 2 : stop] == b"\r\n" and stop - 1 in ends
            raw += stream[start : stop - split_crlf]
        raws.append(raw)
    return raws


def forwarded(raws: Sequence[bytes]) -> bytes:
    """What a proxy sends: the bytes of the events, after a BOM if they start with one.

    A block that starts with U+FEFF is an unknown field to the proxy's parser, but at
    the start of a stream the client's parser drops it as a byte order mark (see
    docs/sse.md, "Raw mode").
    """
    body = b"".join(raws)
    return BOM + body if body.startswith(BOM) else body


def reference_parse(stream: bytes) -> Outcome:
    """WHATWG HTML 9.2.5-9.2.6, transcribed naively over the whole decoded stream."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    events: list[ServerSentEvent] = []
    data = event_type = id_buffer = last_event_id = ""
    event_retry: int | None = None
    retry: int | None = None
    position = 0
    for match in re.finditer("\r\n|\r|\n", text):  # only terminated lines count
        line = text[position : match.start()]
        position = match.end()
        if line == "":
            last_event_id = id_buffer
            if data:
                events.append(E(event_type or "message", data[:-1], id_buffer, event_retry))
            data = event_type = ""
            event_retry = None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                id_buffer = value
        elif name == "retry" and value and all(char in "0123456789" for char in value):
            with contextlib.suppress(ValueError):  # more digits than int() converts
                retry = event_retry = int(value)
    return Outcome(events, last_event_id, retry)


# -- hypothesis strategies ------------------------------------------------------------

LINE_LIKE = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\ufeff", "\x00", ":", " "]
no_cr_lf = st.text(
    st.one_of(
        st.characters(codec="utf-8", exclude_characters="\r\n"),
        st.sampled_from(LINE_LIKE),
    ),
    max_size=12,
)
any_text = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from([*LINE_LIKE, "\r", "\n", "\r\n"]),
    ),
    max_size=24,
).map("".join)
events_strategy = st.lists(
    st.builds(
        E,
        event=st.one_of(st.just("message"), no_cr_lf),
        data=any_text,
        id=no_cr_lf.map(lambda text: text.replace("\x00", "")),
        retry=st.none() | st.integers(min_value=0, max_value=10**12),
    ),
    max_size=8,
)


def chunked(data: st.DataObject, stream: bytes) -> list[bytes]:
    offsets = data.draw(st.lists(st.integers(0, len(stream)), max_size=12).map(sorted))
    return split_at(stream, offsets)


SSE_BYTES = [
    b"data",
    b"event",
    b"id",
    b"retry",
    b":",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"x",
    b"7",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xe2\x82",
    b"\xac",
    b"\xff",
    b"\xe2\x80\xa8",
    b"event: ",
    b"\n\nevent: ",
    b"\n\ndata: ",
]
streams = st.lists(st.sampled_from(SSE_BYTES) | st.binary(max_size=4), max_size=40).map(b"".join)
