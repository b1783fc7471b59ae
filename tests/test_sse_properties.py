"""Properties of the SSE parsers and encoder that the fixture tests do not already cover.

tests/test_sse_parser.py, test_sse_raw.py and test_sse_encoder.py check any chunking
against the whole stream and the standard, raw mode against a reference, and encoding
against parsing, on short streams of SSE-like tokens. Here: every invariant of
:func:`tests.sse_invariants.check_stream` (bounded buffers measured after every call,
all four ways of parsing in agreement, a proxy's forwarded bytes accepted by a client
with the same limit) on those streams and on longer line-structured ones with every
line ending; chunkings that split each CRLF, the byte order mark and each UTF-8
sequence; encoded events coming back from raw mode as their own encoding; and
feeding a pattern far past the limit.

Settings: derandomized, no example database (pytest runs with -p no:cacheprovider and
CI must be repeatable); the file runs in a few seconds.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streammgr._errors import SSEEventTooLarge
from streammgr.sse import RawSSEParser, ServerSentEvent, SSEParser, encode, encode_comment

from .sse_invariants import check_held, check_stream
from .sse_reference import BOM, E, events_strategy, run, streams

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies -----------------------------------------------------------------------

line_endings = st.sampled_from([b"\n", b"\r", b"\r\n"])
field_names = st.sampled_from(
    [b"data", b"event", b"id", b"retry", b"", b"Data", b"data ", b"\xef\xbb\xbfdata", b"x"]
)
values = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"", b" ", b"7", b"12", b"[DONE]", b"\x00", b"\xe2\x82\xac", b"\xe2\x82"]),
    st.text(max_size=8).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@st.composite
def structured_streams(draw: st.DrawFn) -> bytes:
    """Streams of lines (fields, comments, blank lines) with any line endings.

    Long runs of the usual shapes reach the parsers' fast paths; mixed endings, the
    byte order mark and invalid UTF-8 their slow ones.
    """
    lines = []
    if draw(st.booleans()):
        lines.append(BOM)
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["field", "field", "usual", "blank", "comment"]))
        ending = draw(line_endings)
        if kind == "blank":
            lines.append(ending)
        elif kind == "comment":
            lines.append(b":" + draw(values) + ending)
        elif kind == "usual":
            lines.append(b"data: " + draw(values).replace(b"\n", b"").replace(b"\r", b""))
            lines.append(b"\n\n")
        else:
            name = draw(field_names)
            separator = draw(st.sampled_from([b": ", b":", b"", b":  "]))
            value = draw(values).replace(b"\n", b"").replace(b"\r", b"")
            lines.append(name + separator + value + ending)
    if draw(st.booleans()):
        lines.append(draw(values))  # an unterminated last line
    return b"".join(lines)


any_stream = streams | structured_streams()


@st.composite
def offsets_of(draw: st.DrawFn, stream: bytes) -> list[int]:
    """Cut points: anywhere, and inside CRLF pairs, the BOM and UTF-8 sequences."""
    tricky = [
        index
        for index in range(1, len(stream))
        if stream[index - 1 : index + 1] == b"\r\n" or 0x80 <= stream[index] < 0xC0
    ]
    tricky += [1, 2] if stream.startswith(BOM) else []
    anywhere = st.integers(0, len(stream))
    choice = st.sampled_from(tricky) | anywhere if tricky else anywhere
    return draw(st.lists(choice, max_size=16))


# -- every invariant, on any input ---------------------------------------------------


@PROPERTY
@given(data=st.data(), stream=any_stream, limit=st.integers(1, 48))
def test_every_invariant_holds_under_a_small_limit(
    data: st.DataObject, stream: bytes, limit: int
) -> None:
    check_stream(stream, data.draw(offsets_of(stream)), limit)


@PROPERTY
@given(data=st.data(), stream=any_stream)
def test_every_invariant_holds_under_the_default_limit(data: st.DataObject, stream: bytes) -> None:
    check_stream(stream, data.draw(offsets_of(stream)), 1_048_576)


@PROPERTY
@given(stream=any_stream)
def test_byte_by_byte_is_the_whole_stream(stream: bytes) -> None:
    check_stream(stream, range(1, len(stream)), 1_048_576)


# -- the encoder and raw mode --------------------------------------------------------


@st.composite
def forwardable_events(draw: st.DrawFn) -> list[ServerSentEvent]:
    """Events whose encoding comes back unchanged from a parser.

    An empty id is not sent, so a parsed event carries the previous one: every event
    has an id, or none has. The type ``""`` comes back as ``"message"``, which encodes
    the same; CR in data comes back as LF, which encodes the same.
    """
    events = draw(events_strategy)
    if draw(st.booleans()):
        return [event._replace(id="") for event in events]
    return [event._replace(id=event.id or "1") for event in events]


@PROPERTY
@given(data=st.data(), events=forwardable_events(), comments=st.lists(st.text(max_size=4)))
def test_a_raw_batch_is_the_encoding_of_its_events(
    data: st.DataObject, events: list[ServerSentEvent], comments: list[str]
) -> None:
    # Keep-alive comments between the events are dropped: never in an event's bytes.
    comments = [text.replace("\r", "").replace("\n", "") for text in comments]
    pieces = [
        piece
        for event, comment in itertools.zip_longest(events, comments)
        for piece in (
            encode(event) if event is not None else b"",
            encode_comment(comment) if comment is not None else b"",
        )
    ]
    stream = b"".join(pieces)
    chunks = data.draw(offsets_of(stream))
    bounds = [0, *sorted(chunks), len(stream)]
    parser = RawSSEParser()
    decoding = SSEParser()
    pairs = SSEParser()
    got: list[ServerSentEvent] = []
    for start, end in itertools.pairwise(bounds):
        chunk = stream[start:end]
        batch = parser.feed(chunk)
        assert batch.raw == b"".join(map(encode, batch))
        assert batch == decoding.feed(chunk)
        for event, raw in pairs.feed_raw(chunk):
            assert raw == encode(event)
        got += batch
    assert got == [event._replace(event=event.event or "message") for event in got]
    assert len(got) == len(events)
    assert b"".join(map(encode, got)) == b"".join(map(encode, events))


# -- bounded memory, far past the limit ------------------------------------------------

PATTERNS = [
    b"x",  # one endless line
    b"data: x\n",  # an event whose data never ends
    b"data: x\r\n",
    b":keep-alive\n",  # comments that never end a block
    b":keep-alive\n\n",  # keep-alives: dropped
    b"id: 1\n",  # a block that only sets the id, never ended
    b"id: 1\n\n",  # blocks that only set the id: one kept at a time
    b"retry: 5\r\rid: 2\r\r",
    b"event: a\n",
    b"data: x\n\n",  # events: returned, never held
]


@PROPERTY
@given(
    pattern=st.sampled_from(PATTERNS) | st.binary(min_size=1, max_size=8),
    limit=st.integers(1, 200),
    chunk_size=st.integers(1, 97),
    raw=st.booleans(),
)
def test_a_parser_never_holds_more_than_its_limit(
    pattern: bytes, limit: int, chunk_size: int, raw: bool
) -> None:
    """Feed a pattern repeated to four times the limit: what the parser holds stays
    bounded after every call, and if it fails, it fails before holding the limit and
    one chunk."""
    stream = pattern * (4 * limit // len(pattern) + 2)
    parser: SSEParser | RawSSEParser = RawSSEParser(limit) if raw else SSEParser(limit)
    for start in range(0, len(stream), chunk_size):
        chunk = stream[start : start + chunk_size]
        try:
            parser.feed(chunk)
        except SSEEventTooLarge:
            check_held(parser, limit, len(chunk), failed=True)
            return
        check_held(parser, limit, len(chunk), failed=False)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_past_a_large_limit_in_many_chunks(pattern: bytes) -> None:
    """The same bound when the fast paths keep many small chunks (checked every 64 KiB)."""
    limit = 100_000
    stream = pattern * (2 * limit // len(pattern) + 1)
    events = []
    for raw in (False, True):
        parser: SSEParser | RawSSEParser = RawSSEParser(limit) if raw else SSEParser(limit)
        for start in range(0, len(stream), 4096):
            chunk = stream[start : start + 4096]
            try:
                completed = parser.feed(chunk)
            except SSEEventTooLarge:
                check_held(parser, limit, len(chunk), failed=True)
                break
            check_held(parser, limit, len(chunk), failed=False)
            if raw:
                events += completed
    assert all(event == E(data="x") for event in events)
    assert run([stream], max_event_size=limit).events == events
