"""Tests for :mod:`streammgr.sse`: the parser against WHATWG HTML 9.2.6, the encoder.

Every fixture stream goes through :func:`assert_parses`, which feeds it whole, byte by
byte, split at every offset, split at every pair of offsets (short fixtures), and with
trailing garbage; all must give the same events. :func:`reference_parse` is a
deliberately naive, line-by-line transcription of the standard over the whole stream
decoded at once; property tests compare the parser with it.

Raw mode (``feed_raw``) goes through the same fixtures (whole, byte by byte, split at
every offset): same events as ``feed``, each event's bytes as :func:`reference_raw`
cuts them out of the stream (the blocks kept for their id or retry, then the event's
own block), and the same events again when those bytes are forwarded to a fresh parser.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streammgr._errors import SSEError, SSEEventTooLarge
from streammgr.sse import (
    OPENAI_DONE,
    ServerSentEvent,
    SSEParser,
    encode,
    encode_comment,
    is_done,
)

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
    ) -> None:
        self.events = events
        self.last_event_id = last_event_id
        self.retry = retry
        self.error = error
        self.raws = raws  # raw mode: the bytes of each event

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
    error = None
    try:
        for chunk in chunks:
            pairs.extend(parser.feed_raw(chunk))
        assert parser.close() == []
    except SSEEventTooLarge as exc:
        error = exc
    events = [event for event, _ in pairs]
    raws = [raw for _, raw in pairs]
    return Outcome(events, parser.last_event_id, parser.retry, error, raws)


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

    A client's parser, fed the bytes of the events, sees the same events; ``clients``
    caches what it saw, by bytes sent, across chunkings of one stream.
    """
    raw = run_raw(chunks)
    assert raw.key() == outcome.key(), chunks
    assert raw.raws is not None
    assert raw.raws == expected_raws(stream, spans, chunks), chunks
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


# -- the event type -----------------------------------------------------------------


def test_event_defaults_equality_repr_and_json() -> None:
    event = E(data='{"a": [1, 2]}')
    assert (event.event, event.data, event.id, event.retry) == (
        "message",
        '{"a": [1, 2]}',
        "",
        None,
    )
    assert event == E("message", '{"a": [1, 2]}', "", None)
    assert event != E(data='{"a": [1, 2]}', id="1")
    assert hash(event) == hash(E(data='{"a": [1, 2]}'))
    assert (
        repr(event) == "ServerSentEvent(event='message', data='{\"a\": [1, 2]}', id='', retry=None)"
    )
    assert event.json() == {"a": [1, 2]}
    with pytest.raises(json.JSONDecodeError):
        E(data="not json").json()


def test_event_is_immutable() -> None:
    event = E(data="x")
    with pytest.raises(AttributeError):
        event.data = "y"  # type: ignore[misc]


# -- line endings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [
        b"data: a\n\ndata: b\n\n",
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        b"data: a\r\rdata: b\r\r",
        b"data: a\r\n\ndata: b\r\r\n",
        b"data: a\n\r\ndata: b\r\n\r",
    ],
    ids=["LF", "CRLF", "CR", "mixed-1", "mixed-2"],
)
def test_line_endings(stream: bytes) -> None:
    assert_parses(stream, [E(data="a"), E(data="b")])


def test_cr_at_chunk_end_and_lf_at_next_start_is_one_line_ending() -> None:
    assert run([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).events == [E(data="a\nb")]
    # Two CRs, split the same way, are two line endings: the second is a blank line.
    assert run([b"data: a\r", b"\r"]).events == [E(data="a")]
    # The CR ends its line at once: the event does not wait for the next chunk.
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == [E(data="a")]
    assert parser.feed(b"\ndata: b\n\n") == [E(data="b")]


def test_lf_after_cr_is_swallowed_only_at_the_very_next_byte() -> None:
    # CR, an empty chunk, then LF: still one CRLF.
    assert run([b"data: a\r", b"", b"\n\n"]).events == [E(data="a")]
    assert_parses(b"data: a\r\n\n", [E(data="a")])


@pytest.mark.parametrize(
    "character",
    ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"],
    ids=["U+2028", "U+2029", "U+0085", "VT", "FF", "FS", "GS", "RS"],
)
def test_only_cr_and_lf_end_lines(character: str) -> None:
    # A parser that decodes and calls str.splitlines() would split here.
    stream = f"data: a{character}b\nevent: x{character}y\n\n".encode()
    assert_parses(stream, [E(event=f"x{character}y", data=f"a{character}b")])


# -- byte order mark and UTF-8 ----------------------------------------------------------


def test_one_leading_bom_is_dropped() -> None:
    assert_parses(b"\xef\xbb\xbfdata: x\n\n", [E(data="x")])
    assert run([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]).events == [E(data="x")]
    assert run([b"\xef\xbb", b"\xbf", b"data: x\n\n"]).events == [E(data="x")]


def test_a_second_bom_is_data() -> None:
    # The second BOM starts the field name, so "\ufeffdata" is an unknown field.
    assert_parses(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", [])
    assert_parses(b"\xef\xbb\xbfdata: \xef\xbb\xbfx\n\n", [E(data="\ufeffx")])
    assert_parses(b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [E(data="a")])


def test_a_truncated_bom_is_invalid_utf8_not_a_bom() -> None:
    assert_parses(b"\xef\xbbdata: x\n\ndata: y\n\n", [E(data="y")])


def test_utf8_split_across_chunks() -> None:
    stream = "event: été\nid: 日本\ndata: € 😀 ñ\n\n".encode()
    assert_parses(stream, [E(event="été", data="€ 😀 ñ", id="日本")], last_event_id="日本")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"a\xfe\xffb",
        b"x\xe2\x82",  # truncated 3-byte sequence at the end of the line
        b"\xf0\x9f\x98 y",  # truncated 4-byte sequence
        b"\xed\xa0\x80",  # an encoded surrogate
        b"\xc0\xaf",  # an overlong encoding
        b"\x80\x80\x80",  # lone continuation bytes
    ],
)
def test_invalid_utf8_becomes_replacement_characters(raw: bytes) -> None:
    expected = raw.decode("utf-8", "replace")
    assert "\ufffd" in expected
    stream = b"event: e" + raw + b"\nid: i" + raw + b"\ndata: " + raw + b"\ndata: " + raw + b"\n\n"
    event = E(event=f"e{expected}", data=f"{expected}\n{expected}", id=f"i{expected}")
    assert_parses(stream, [event])


def test_invalid_utf8_matches_decoding_the_whole_stream() -> None:
    stream = b"data: \xe2\x82\ndata: \xe2\n\ndata: ok \xf0\x9f\x98\x80\xf0\x9f\n\n"
    whole = stream.decode("utf-8", "replace")
    expected_data = [block.replace("data: ", "") for block in whole.split("\n\n")[:-1]]
    assert [event.data for event in run([stream]).events] == expected_data
    assert_parses(stream, [E(data=data) for data in expected_data])


# -- fields -------------------------------------------------------------------------


def test_comments_are_ignored() -> None:
    assert_parses(b": hello\ndata: x\n:\n: data: y\n\n", [E(data="x")])
    assert_parses(b": keep-alive\n\n:\n\n", [])


def test_a_line_without_colon_is_a_field_with_an_empty_value() -> None:
    assert_parses(b"data\n\n", [E(data="")])
    assert_parses(b"data\ndata\ndata: x\n\n", [E(data="\n\nx")])
    assert_parses(b"event: e\nevent\ndata: x\n\n", [E(data="x")])
    assert_parses(b"id: 1\nid\ndata: x\n\n", [E(data="x")], last_event_id="")


def test_one_leading_space_is_removed_from_the_value() -> None:
    assert_parses(b"data:  x\n\n", [E(data=" x")])
    assert_parses(b"data:x\n\n", [E(data="x")])
    assert_parses(b"data: \n\n", [E(data="")])
    assert_parses(b"data:\tx\n\n", [E(data="\tx")])
    assert_parses(b"event:  e\ndata: x\n\n", [E(event=" e", data="x")])
    assert_parses(b"data: a: b\n\n", [E(data="a: b")])


def test_data_lines_are_joined_by_lf() -> None:
    assert_parses(b"data: a\ndata: b\ndata:\ndata: c\n\n", [E(data="a\nb\n\nc")])
    assert_parses(b"data: a\ndata:\n\n", [E(data="a\n")])
    assert_parses(b'data: {\ndata:   "x": 1\ndata: }\n\n', [E(data='{\n  "x": 1\n}')])


def test_event_type() -> None:
    assert_parses(
        b"event: add\ndata: 1\n\ndata: 2\n\nevent: remove\nevent: update\ndata: 3\n\n",
        [E(event="add", data="1"), E(data="2"), E(event="update", data="3")],
    )
    assert_parses(b"event:\ndata: x\n\n", [E(data="x")])


def test_last_event_id_persists_until_an_id_field_changes_it() -> None:
    stream = (
        b"id: 1\ndata: a\n\n"
        b"data: b\n\n"
        b"id\ndata: c\n\n"
        b"id: 2\ndata: d\n\n"
        b"id:\ndata: e\n\n"
        b"id: 3\n\n"
        b"data: f\n\n"
        b"id: a:b\ndata: g\n\n"
    )
    assert_parses(
        stream,
        [
            E(data="a", id="1"),
            E(data="b", id="1"),
            E(data="c", id=""),
            E(data="d", id="2"),
            E(data="e", id=""),
            E(data="f", id="3"),
            E(data="g", id="a:b"),
        ],
        last_event_id="a:b",
    )


def test_last_event_id_property_follows_blank_lines_not_unfinished_events() -> None:
    parser = SSEParser()
    assert parser.last_event_id == ""
    parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    # Event 2 has no blank line yet: reconnecting must resume after event 1.
    assert parser.last_event_id == "1"
    parser.feed(b"\n")
    assert parser.last_event_id == "2"
    # An id-only block sets it too (the standard's step 1 of dispatch).
    parser.feed(b"id: 3\n\n")
    assert parser.last_event_id == "3"


def test_an_id_containing_nul_is_ignored() -> None:
    assert_parses(
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [E(data="a", id="1"), E(data="b", id="1")],
        last_event_id="1",
    )


def test_retry_sets_the_parser_and_its_own_event() -> None:
    assert_parses(
        b"retry: 1500\ndata: a\n\ndata: b\n\nretry: 0\nretry: 07\ndata: c\n\n",
        [E(data="a", retry=1500), E(data="b"), E(data="c", retry=7)],
        retry=7,
    )


def test_retry_is_reported_as_soon_as_its_line_is_complete() -> None:
    parser = SSEParser()
    seen = []
    for chunk in (b"retry: 3000", b"\n", b"\n", b"data: x\n\n"):
        seen.append((parser.feed(chunk), parser.retry))
    # A block with no data dispatches nothing but still sets the reconnection time.
    assert seen == [([], None), ([], 3000), ([], 3000), ([E(data="x")], 3000)]


@pytest.mark.parametrize(
    "value",
    [
        b"1.5",
        b" 10",
        b"-1",
        b"",
        b"10ms",
        b"+5",
        b"1e3",
        b"0x10",
        pytest.param("\uff11\uff10".encode(), id="fullwidth-10"),
        pytest.param(b"9" * 5000, id="more-digits-than-int-converts"),
    ],
)
def test_invalid_retry_is_ignored(value: bytes) -> None:
    stream = b"retry: 100\n\nretry: " + value + b"\ndata: x\n\n"
    assert_parses(stream, [E(data="x")], retry=100)


def test_unknown_and_differently_cased_fields_are_ignored() -> None:
    assert_parses(
        b"foo: bar\nDATA: y\nData: z\nEvent: e\nID: 1\nRETRY: 5\ndata : w\ndata: x\n\n",
        [E(data="x")],
        last_event_id="",
    )


def test_a_blank_line_without_data_dispatches_nothing_and_resets_the_type() -> None:
    assert_parses(b"event: x\n\n", [])
    assert_parses(b"event: x\n\ndata: y\n\n", [E(data="y")])
    assert_parses(b"\n\n\n\ndata: y\n\n\n\n", [E(data="y")])
    assert_parses(b"retry: 5\n\ndata: y\n\n", [E(data="y")], retry=5)


def test_an_unfinished_event_at_the_end_is_discarded() -> None:
    assert_parses(b"data: a\n\ndata: b\n", [E(data="a")])
    assert_parses(b"data: a\n\ndata: b", [E(data="a")])
    assert_parses(b"data: a\n\nid: 9\ndata: b\n", [E(data="a")], last_event_id="")
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\n") == [E(data="a")]
    assert parser.close() == []


def test_a_trailing_cr_ends_the_last_line() -> None:
    assert_parses(b"data: a\r\r", [E(data="a")])


def test_a_realistic_openai_stream() -> None:
    chunks = [
        {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": token}}]}
        for token in ["Hel", "lo", " wörld", "\n"]
    ]
    stream = b": keep-alive\n\n" + b"".join(
        b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n" for chunk in chunks
    )
    stream += b"data: [DONE]\n\n"
    events = run([stream]).events
    assert [event.json() for event in events[:-1]] == chunks
    assert is_done(events[-1])
    assert not any(is_done(event) for event in events[:-1])
    assert_parses(stream[:200], run([stream[:200]]).events)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (
            b"event: start\ndata: 1\n\nevent: delta\ndata: 2\n\nevent: delta\ndata: 3\n\n",
            [E("start", "1"), E("delta", "2"), E("delta", "3")],
        ),
        (b"event: \ndata: 1\n\nevent:  x\ndata:  2\n\n", [E(data="1"), E(" x", " 2")]),
        # Same count of LFs as the two-line shape, but not that shape.
        (b"event: a\ndata: 1\ndata: 2\n\nevent: b\n\n", [E("a", "1\n2")]),
        (b"event: a\n\nevent: b\ndata: 1\ndata: 2\n\n", [E("b", "1\n2")]),
        (b"event: a\nid: 7\n\nevent: b\ndata: 1\n\n", [E("b", "1", "7")]),
        (b"data: a\n\ndata: b\ndata: c\n\ndata: d\n\n", [E(data="a"), E(data="b\nc"), E(data="d")]),
        (b"data: a\n\n\ndata: b\n\n", [E(data="a"), E(data="b")]),
    ],
)
def test_usual_shapes_and_their_lookalikes(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert_parses(stream, expected)


def test_is_done() -> None:
    assert OPENAI_DONE == "[DONE]"
    assert is_done(E(data="[DONE]"))
    assert not is_done(E(data="[DONE] "))
    assert not is_done(E(data='{"done": true}'))
    assert run([b"data: [DONE]\n\n"]).events == [E(data=OPENAI_DONE)]


# -- feed() input, close() ----------------------------------------------------------------


def test_feed_takes_a_bytearray_and_copies_it() -> None:
    parser = SSEParser()
    buffer = bytearray(b"data: ab")
    assert parser.feed(buffer) == []  # type: ignore[arg-type]
    buffer[:] = b"XXXXXXXX"
    assert parser.feed(memoryview(b"\n\n")) == [E(data="ab")]  # type: ignore[arg-type]


def test_feed_rejects_str() -> None:
    with pytest.raises(TypeError, match="bytes"):
        SSEParser().feed("data: x\n\n")  # type: ignore[arg-type]


def test_feed_after_close_raises() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n\n")
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        parser.feed(b"data: b\n\n")


@pytest.mark.parametrize("value", [0, -1, 1.5, "1024", True, None])
def test_max_event_size_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(ValueError, match="max_event_size"):
        SSEParser(max_event_size=value)  # type: ignore[arg-type]


# -- bounded memory -------------------------------------------------------------------


def test_a_line_at_the_limit_is_accepted_one_byte_more_is_not() -> None:
    assert run([b"data: 1234\n\n"], max_event_size=10).events == [E(data="1234")]
    outcome = run([b"data: 12345\n\n"], max_event_size=10)
    assert isinstance(outcome.error, SSEEventTooLarge)
    assert isinstance(outcome.error, SSEError)
    assert outcome.error.max_event_size == 10
    message = str(outcome.error)
    assert "11 bytes" in message
    assert "max_event_size=10" in message
    assert "raise max_event_size" in message


def test_a_long_unfinished_line_raises_as_soon_as_it_is_too_long() -> None:
    parser = SSEParser(max_event_size=16)
    for _ in range(16):
        assert parser.feed(b"x") == []
    with pytest.raises(SSEEventTooLarge, match="unfinished line of 17 bytes"):
        parser.feed(b"x")


def test_a_long_line_in_one_chunk_raises() -> None:
    parser = SSEParser(max_event_size=16)
    with pytest.raises(SSEEventTooLarge, match="a line of 26 bytes"):
        parser.feed(b"data: " + b"x" * 20 + b"\n\n")


def test_a_long_comment_or_unknown_field_raises_too() -> None:
    # Otherwise the outcome would depend on how the stream is chunked.
    for line in (b": " + b"c" * 30, b"x" * 30):
        assert isinstance(run([line + b"\n\n"], max_event_size=16).error, SSEEventTooLarge)
        assert isinstance(run([line, b"\n\n"], max_event_size=16).error, SSEEventTooLarge)


def test_an_event_with_too_much_data_over_many_lines_raises() -> None:
    stream = b"data: 12345\n" * 4 + b"\n"  # each line is short; the data is 23 bytes
    assert run([stream], max_event_size=23).events == [E(data="12345\n12345\n12345\n12345")]
    outcome = run([stream], max_event_size=22)
    assert isinstance(outcome.error, SSEEventTooLarge)
    assert "the data of an event of 23 bytes" in str(outcome.error)


def test_size_errors_do_not_depend_on_chunking() -> None:
    stream = b"data: a\n\n" + b"data: 1234\n" * 3 + b"\ndata: c\n\ndata: " + b"y" * 9 + b"\n\n"
    expected = [E(data="a"), E(data="1234\n1234\n1234"), E(data="c")]
    # 12: the second event's data (14 bytes) is too large; 14: the last line (15).
    for limit, events in ((12, expected[:1]), (14, expected)):
        for chunks in chunkings(stream, pairs_up_to=0):
            outcome = run(chunks, max_event_size=limit)
            assert isinstance(outcome.error, SSEEventTooLarge), (limit, chunks)
            assert outcome.events == events, (limit, chunks)


def test_events_before_the_error_are_returned_and_the_error_deferred() -> None:
    parser = SSEParser(max_event_size=16)
    # The complete events come back; the long line after them fails the parser.
    assert parser.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 30) == [E(data="a"), E(data="b")]
    with pytest.raises(SSEEventTooLarge) as first:
        parser.feed(b"\n\n")
    with pytest.raises(SSEEventTooLarge) as second:
        parser.close()
    with pytest.raises(SSEEventTooLarge) as third:
        parser.feed(b"data: c\n\n")
    assert first.value is second.value is third.value


def test_events_after_a_too_long_line_in_the_same_chunk_are_not_returned() -> None:
    parser = SSEParser(max_event_size=16)
    stream = b"data: a\n\ndata: " + b"x" * 30 + b"\n\ndata: c\n\n"
    assert parser.feed(stream) == [E(data="a")]
    with pytest.raises(SSEEventTooLarge):
        parser.close()


def test_an_error_with_no_event_before_it_is_raised_at_once() -> None:
    parser = SSEParser(max_event_size=8)
    with pytest.raises(SSEEventTooLarge) as first:
        parser.feed(b"data: 123456789")
    with pytest.raises(SSEEventTooLarge) as again:
        parser.feed(b"")
    assert again.value is first.value


def test_a_long_line_in_tiny_chunks_is_kept_correctly() -> None:
    # Exercises compacting the unfinished line (every 64 KiB).
    payload = bytes(range(32, 127)) * 3000  # 285 KB
    stream = b"data: " + payload + b"\n\n"
    parser = SSEParser()
    events: list[ServerSentEvent] = []
    for offset in range(0, len(stream), 7):
        events.extend(parser.feed(stream[offset : offset + 7]))
    assert events == [E(data=payload.decode())]
    outcome = run(split_at(stream, list(range(13, len(stream), 13))), max_event_size=200_000)
    assert isinstance(outcome.error, SSEEventTooLarge)
    assert "unfinished line" in str(outcome.error)


# -- raw mode: feed_raw() ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(
            b"data: a\n\nevent: e\ndata: b\n\n",
            [(E(data="a"), b"data: a\n\n"), (E("e", "b"), b"event: e\ndata: b\n\n")],
            id="LF",
        ),
        pytest.param(
            b"data: a\r\n\r\nid: 1\r\ndata: b\r\n\r\n",
            [(E(data="a"), b"data: a\r\n\r\n"), (E(data="b", id="1"), b"id: 1\r\ndata: b\r\n\r\n")],
            id="CRLF",
        ),
        pytest.param(
            b"data: a\r\n\r\ndata: b\r\n\r\nevent: e\r\ndata: c\r\n\r\nevent: f\r\ndata: d\r\n\r\n",
            [
                (E(data="a"), b"data: a\r\n\r\n"),
                (E(data="b"), b"data: b\r\n\r\n"),
                (E("e", "c"), b"event: e\r\ndata: c\r\n\r\n"),
                (E("f", "d"), b"event: f\r\ndata: d\r\n\r\n"),
            ],
            id="CRLF-usual-shapes",
        ),
        pytest.param(
            b"data: a\r\rdata: b\rdata: c\r\r",
            [(E(data="a"), b"data: a\r\r"), (E(data="b\nc"), b"data: b\rdata: c\r\r")],
            id="CR",
        ),
        pytest.param(
            b"data: a\r\n: c\rdata: b\n\r\ndata: c\n\r",
            [(E(data="a\nb"), b"data: a\r\n: c\rdata: b\n\r\n"), (E(data="c"), b"data: c\n\r")],
            id="mixed",
        ),
        pytest.param(
            b": hi\nfoo: bar\ndata: x\nretry: 10\nData: y\n: bye\n\n",
            [(E(data="x", retry=10), b"foo: bar\ndata: x\nretry: 10\nData: y\n: bye\n\n")],
            id="comments-and-unknown-fields-inside",
        ),
        pytest.param(
            b": a\r: b\nid: 3\n: inside\ndata: c\n\n",
            [(E(data="c", id="3"), b"id: 3\n: inside\ndata: c\n\n")],
            id="comment-lines-before-the-first-field",
        ),
        pytest.param(
            b": ping\n\ndata: a\n\n: ping\n\n:\n\n\nevent: x\n\ndata: b\n\n",
            [(E(data="a"), b"data: a\n\n"), (E(data="b"), b"data: b\n\n")],
            id="keep-alives-and-empty-blocks-between",
        ),
        pytest.param(
            b"data: a\n\nid: 7\n\ndata: b\n\n",
            [(E(data="a"), b"data: a\n\n"), (E(data="b", id="7"), b"id: 7\n\ndata: b\n\n")],
            id="id-only-block",
        ),
        pytest.param(
            b"id: 7\r\n\r\n: ping\r\n\r\nevent: x\r\n\r\ndata: b\r\n\r\n",
            [(E(data="b", id="7"), b"id: 7\r\n\r\ndata: b\r\n\r\n")],
            id="id-only-block-then-keep-alive",
        ),
        pytest.param(
            b"id: 7\n\n" + b": ping\n\n" * 3 + b":\n: x\n\n\nfoo\n\nevent: x\n\ndata: b\n\n",
            [(E(data="b", id="7"), b"id: 7\n\ndata: b\n\n")],
            id="keep-alives-and-empty-blocks-after-an-id-only-block",
        ),
        pytest.param(
            b"retry: 5\n\n: ping\n\n:\ndata: b\n\n",
            [(E(data="b"), b"retry: 5\n\ndata: b\n\n")],
            id="keep-alives-after-a-retry-only-block",
        ),
        pytest.param(
            b"id: 1\n\nretry: 5\n\nid: 2\n\nretry: 6\n\n: ping\n\ndata: b\n\n",
            [(E(data="b", id="2"), b"id: 2\n\nretry: 6\n\ndata: b\n\n")],
            id="id-and-retry-blocks-superseded",
        ),
        pytest.param(
            b"id: 1\nretry: 5\n\nid: 2\n\ndata: b\n\n",
            [(E(data="b", id="2"), b"id: 1\nretry: 5\n\nid: 2\n\ndata: b\n\n")],
            id="a-block-kept-for-its-retry-when-its-id-is-superseded",
        ),
        pytest.param(
            b"event: x\n\ndata\n\nevent: y\ndata:\n\n",
            [(E(data=""), b"data\n\n"), (E("y", ""), b"event: y\ndata:\n\n")],
            id="event-only-block-and-empty-data",
        ),
        pytest.param(
            b"id: 7\ndata: a\n\nid: 7\n\nid: 7\x00\n\ndata: b\n\n",
            [(E(data="a", id="7"), b"id: 7\ndata: a\n\n"), (E(data="b", id="7"), b"data: b\n\n")],
            id="id-block-that-changes-nothing",
        ),
        pytest.param(
            b"id: 7\ndata: a\n\nid\n\ndata: b\n\n",
            [(E(data="a", id="7"), b"id: 7\ndata: a\n\n"), (E(data="b"), b"id\n\ndata: b\n\n")],
            id="id-reset-block",
        ),
        pytest.param(
            b"retry: 500\n\ndata: a\n\nretry: 500\n\ndata: b\n\n",
            [(E(data="a"), b"retry: 500\n\ndata: a\n\n"), (E(data="b"), b"data: b\n\n")],
            id="retry-only-block",
        ),
        pytest.param(
            b"data: a\n\nid: 9\n\n",
            [(E(data="a"), b"data: a\n\n")],
            id="id-only-block-at-the-end",
        ),
        pytest.param(
            b"\xef\xbb\xbfdata: a\n\n",
            [(E(data="a"), b"data: a\n\n")],
            id="BOM",
        ),
        pytest.param(
            b"\xef\xbb\xbf: hi\r\n\r\ndata: a\r\n\r\n",
            [(E(data="a"), b"data: a\r\n\r\n")],
            id="BOM-then-keep-alive",
        ),
        pytest.param(
            b"data: \xff\xe2\x82\nevent: \xc0\n\n",
            [(E("\ufffd", "\ufffd\ufffd"), b"data: \xff\xe2\x82\nevent: \xc0\n\n")],
            id="invalid-UTF-8-untouched",
        ),
    ],
)
def test_raw_bytes_are_the_event_blocks(
    stream: bytes, expected: list[tuple[ServerSentEvent, bytes]]
) -> None:
    spans = reference_raw(stream)
    assert [
        (event, b"".join(stream[start:stop] for start, stop in pieces)) for event, pieces in spans
    ] == expected
    whole = run([stream])
    for chunks in chunkings(stream):
        assert_raw_parses(stream, chunks, spans, whole)


def test_raw_bytes_of_an_event_are_returned_as_soon_as_it_is_complete() -> None:
    parser = SSEParser()
    assert parser.feed_raw(b"data: a\r") == []
    # The CR ended a line of the event being built: the LF is part of its bytes.
    assert parser.feed_raw(b"\n\r") == [(E(data="a"), b"data: a\r\n\r")]
    # The CR ended the event, which was returned: the LF that completes the CRLF is
    # dropped, not given to the next event.
    assert parser.feed_raw(b"\ndata: b\n\n") == [(E(data="b"), b"data: b\n\n")]
    parser = SSEParser()
    assert parser.feed_raw(b"id: 1\r\r") == []  # kept: the next event starts with it
    # The same for a kept block: it ended at the CR, so the LF is dropped.
    assert parser.feed_raw(b"\ndata: b\n") == []
    assert parser.feed_raw(b"\n") == [(E(data="b", id="1"), b"id: 1\r\rdata: b\n\n")]


def test_forwarding_the_raw_bytes_keeps_ids_and_retry() -> None:
    stream = (
        b"retry: 3000\n\n"
        b"id: 1\ndata: a\n\n"
        b": ping\n\n"
        b"id: 2\n\n"  # an id-only block: the next event's id
        b": ping\n\n"
        b"data: b\n\n"
        b"id\n\n"  # resets the id
        b"data: c\n\n"
    )
    upstream = SSEParser()
    pairs = upstream.feed_raw(stream)
    assert [raw for _, raw in pairs] == [
        b"retry: 3000\n\nid: 1\ndata: a\n\n",
        b"id: 2\n\ndata: b\n\n",
        b"id\n\ndata: c\n\n",
    ]
    client = SSEParser()
    events = client.feed(b"".join(raw for _, raw in pairs))
    assert events == [event for event, _ in pairs] == run([stream]).events
    assert events == [E(data="a", id="1"), E(data="b", id="2"), E(data="c", id="")]
    assert (client.last_event_id, client.retry) == (upstream.last_event_id, upstream.retry)


def test_raw_bytes_starting_with_a_bom_need_a_bom_before_them() -> None:
    # The proxy's parser ignores the field "\ufeffdata"; a client's parser that
    # receives these bytes first drops the BOM and reads "data: a".
    stream = b": hi\n\n\xef\xbb\xbfdata: a\ndata: b\n\n"
    raw = run_raw([stream])
    assert raw.events == [E(data="b")]
    assert raw.raws == [b"\xef\xbb\xbfdata: a\ndata: b\n\n"]
    assert run(raw.raws).events == [E(data="a\nb")]
    assert run([BOM, *raw.raws]).events == raw.events


def test_feed_and_feed_raw_cannot_be_mixed() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n")
    with pytest.raises(RuntimeError, match=r"feed_raw\(\) called on a parser used with feed\(\)"):
        parser.feed_raw(b"\n")
    assert parser.feed(b"\n") == [E(data="a")]  # the parser is still usable
    parser = SSEParser()
    parser.feed_raw(b"")
    with pytest.raises(RuntimeError, match=r"feed\(\) called on a parser used with feed_raw"):
        parser.feed(b"data: a\n\n")
    assert parser.feed_raw(b"data: a\n\n") == [(E(data="a"), b"data: a\n\n")]


def test_feed_raw_input_and_close() -> None:
    parser = SSEParser()
    buffer = bytearray(b"data: ab")
    assert parser.feed_raw(buffer) == []  # type: ignore[arg-type]
    buffer[:] = b"XXXXXXXX"
    assert parser.feed_raw(memoryview(b"\n\n")) == [  # type: ignore[arg-type]
        (E(data="ab"), b"data: ab\n\n")
    ]
    with pytest.raises(TypeError, match="bytes"):
        parser.feed_raw("data: x\n\n")  # type: ignore[arg-type]
    assert parser.feed_raw(b"id: 1\n\ndata: unfinished\n") == []
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        parser.feed_raw(b"\n")


def test_raw_bytes_are_bounded_by_max_event_size() -> None:
    # The limit counts an event's bytes without its blank line: here 11 bytes.
    assert run_raw([b"data: 1234\n\n"], max_event_size=11).events == [E(data="1234")]
    outcome = run_raw([b"data: 1234\r\n\r\n"], max_event_size=11)
    assert isinstance(outcome.error, SSEEventTooLarge)
    assert "the bytes of an event of 12 bytes" in str(outcome.error)
    assert run_raw([b"data: 1234\r\n\r\n"], max_event_size=12).events == [E(data="1234")]
    # Stricter than feed(), whose limit is on lines and data only.
    assert run([b"data: 1234\n\n"], max_event_size=10).error is None
    assert isinstance(run_raw([b"data: 1234\n\n"], max_event_size=10).error, SSEEventTooLarge)
    # Blocks kept for their id count; the keep-alives after them are dropped.
    second = b"id: 1\n\ndata: b\n\n"
    stream = b"data: a\n\nid: 1\n\n" + b": ping\n\n" * 3 + b"data: b\n\n"
    outcome = run_raw([stream], max_event_size=len(second) - 2)
    assert outcome.events == [E(data="a")]
    assert isinstance(outcome.error, SSEEventTooLarge)
    assert run_raw([stream], max_event_size=len(second) - 1).raws == [b"data: a\n\n", second]


def test_a_long_raw_event_raises_as_soon_as_it_is_too_long() -> None:
    parser = SSEParser(max_event_size=16)
    assert parser.feed_raw(b"data: a\n\n") == [(E(data="a"), b"data: a\n\n")]
    for chunk in (b"data: 1\n", b"data: 2\n"):
        assert parser.feed_raw(chunk) == []
    with pytest.raises(SSEEventTooLarge, match="unfinished event of 17 bytes") as first:
        parser.feed_raw(b"d")
    with pytest.raises(SSEEventTooLarge) as again:
        parser.close()
    assert again.value is first.value
    parser = SSEParser(max_event_size=16)
    for _ in range(16):
        assert parser.feed_raw(b"x") == []
    with pytest.raises(SSEEventTooLarge, match="unfinished event of 17 bytes"):
        parser.feed_raw(b"x")
    # The LF of a CRLF split across chunks counts when it arrives.
    parser = SSEParser(max_event_size=8)
    assert parser.feed_raw(b"data: 1\r") == []
    with pytest.raises(SSEEventTooLarge, match="unfinished event of 9 bytes"):
        parser.feed_raw(b"\n")


@pytest.mark.parametrize(
    "kept",
    [b"id: 1\n\n", b"retry: 10\n\n", b"id: 1\r\n\r\n", b"id: 1\nretry: 2\n\n", b""],
)
def test_keep_alives_never_accumulate_in_raw_mode(kept: bytes) -> None:
    # A long idle stream: keep-alive comments, as blocks and as lone comment lines,
    # after a block kept for its id or retry. feed() holds none of them; neither may
    # feed_raw(), or the stream would fail at max_event_size.
    event = b"data: x\n\n"
    parser = SSEParser(max_event_size=64)
    assert parser.feed_raw(b"data: a\n\n" + kept) == [(E(data="a"), b"data: a\n\n")]
    for _ in range(1000):
        assert parser.feed_raw(b": keep-alive\n\n") == []
        assert parser.feed_raw(b":\n") == []
        assert parser.feed_raw(b": ping\r\n:") == []
        assert parser.feed_raw(b" pong\r\n\r\n") == []
    for _ in range(1000):  # comment lines, and no blank line: the next event's block
        assert parser.feed_raw(b": ping\n") == []
    pairs = parser.feed_raw(event)
    assert pairs == [(run([b"data: a\n\n" + kept + event]).events[1], kept + event)]


def test_blocks_that_only_set_the_id_or_retry_never_accumulate_in_raw_mode() -> None:
    parser = SSEParser(max_event_size=64)
    for number in range(1000):
        assert parser.feed_raw(b"id: %d\n\nretry: %d\n\n: ping\n\n" % (number, number)) == []
    assert parser.feed_raw(b"data: x\n\n") == [
        (E(data="x", id="999"), b"id: 999\n\nretry: 999\n\ndata: x\n\n")
    ]
    assert parser.retry == 999


def test_raw_events_before_the_error_are_returned_and_the_error_deferred() -> None:
    parser = SSEParser(max_event_size=16)
    pairs = parser.feed_raw(b"data: a\n\n: x\ndata: " + b"y" * 20 + b"\n\ndata: c\n\n")
    assert pairs == [(E(data="a"), b"data: a\n\n")]
    with pytest.raises(SSEEventTooLarge, match="the bytes of an event") as first:
        parser.feed_raw(b"data: d\n\n")
    with pytest.raises(SSEEventTooLarge) as second:
        parser.close()
    assert first.value is second.value


def test_a_long_raw_event_in_tiny_chunks_is_kept_correctly() -> None:
    # Exercises compacting the bytes of the event: many lines, one chunk each.
    lines = [b"data: %d\r\n" % index for index in range(5_000)]
    stream = b"id: 1\n\n: ping\n\n" + b"".join(lines) + b"\r\n"
    sent = b"id: 1\n\n" + b"".join(lines) + b"\r\n"
    parser = SSEParser()
    pairs = []
    for line in (b"id: 1\n\n", b": ping\n\n", *lines, b"\r\n"):
        pairs += parser.feed_raw(line)
    assert pairs == [(E(data="\n".join(map(str, range(5_000))), id="1"), sent)]
    chunks = [stream[index : index + 5] for index in range(0, len(stream), 5)]
    assert run_raw(chunks).raws == [sent]
    outcome = run_raw(chunks, max_event_size=len(sent) // 2)
    assert isinstance(outcome.error, SSEEventTooLarge)
    assert "unfinished event" in str(outcome.error)
    # One long line, in chunks: compacted every 64 KiB, as feed() does.
    stream = b"data: " + bytes(range(32, 127)) * 1500 + b"\n\n"
    chunks = [stream[index : index + 999] for index in range(0, len(stream), 999)]
    assert run_raw(chunks).raws == [stream]


# -- encode ---------------------------------------------------------------------------


def test_encode() -> None:
    assert encode(E(data="hi")) == b"data: hi\n\n"
    assert encode(E(data="")) == b"data: \n\n"
    assert encode(E(event="message", data="x")) == b"data: x\n\n"
    assert encode(E(event="", data="x")) == b"data: x\n\n"
    assert (
        encode(E(event="update", data="a\nb", id="7", retry=2500))
        == b"event: update\nid: 7\nretry: 2500\ndata: a\ndata: b\n\n"
    )
    assert encode(E(data=" leading space")) == b"data:  leading space\n\n"
    assert encode(E(data="é")) == "data: é\n\n".encode()


def test_encode_treats_cr_and_crlf_in_data_as_line_breaks() -> None:
    encoded = encode(E(data="a\r\nb\rc\nd\r"))
    assert encoded == b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
    assert run([encoded]).events == [E(data="a\nb\nc\nd\n")]


@pytest.mark.parametrize(
    "event",
    [
        E(event="a\nb", data="x"),
        E(event="a\rb", data="x"),
        E(id="1\n", data="x"),
        E(id="1\r", data="x"),
        E(id="1\x002", data="x"),
        E(data="x", retry=-1),
    ],
    ids=repr,
)
def test_encode_rejects_injection(event: ServerSentEvent) -> None:
    with pytest.raises(ValueError, match="must"):
        encode(event)


def test_encode_rejects_text_that_is_not_utf8_encodable() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        encode(E(data="\ud800"))


def test_encode_comment() -> None:
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment() == b":\n\n"
    assert run([encode_comment("x"), encode(E(data="y")), encode_comment()]).events == [E(data="y")]
    for text in ("a\nb", "a\r"):
        with pytest.raises(ValueError, match="CR or LF"):
            encode_comment(text)


def test_encode_round_trips() -> None:
    events = [
        E(data="plain"),
        E(event="update", data="multi\nline\n\ndata", id="1", retry=10),
        E(data="", id="1"),
        E(event="x", data=" spaced ", id="2"),
        E(data="\u2028\u2029\x85\x0b\x0c", id="2"),
    ]
    stream = b"".join(map(encode, events))
    assert_parses(stream, events, last_event_id="2", retry=10)


# -- properties -----------------------------------------------------------------------

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


@settings(max_examples=200, deadline=None)
@given(events=events_strategy, data=st.data())
def test_encoded_events_parse_back_under_any_chunking(
    events: list[ServerSentEvent], data: st.DataObject
) -> None:
    stream = b"".join(map(encode, events))
    expected = []
    last_id = ""
    for event in events:
        last_id = event.id or last_id  # an empty id is not sent, so the last one persists
        expected.append(
            E(
                event=event.event or "message",
                data=event.data.replace("\r\n", "\n").replace("\r", "\n"),
                id=last_id,
                retry=event.retry,
            )
        )
    assert run(chunked(data, stream)).events == expected


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


@settings(max_examples=200, deadline=None)
@given(stream=streams, data=st.data())
def test_any_chunking_of_any_bytes_matches_the_whole_and_the_standard(
    stream: bytes, data: st.DataObject
) -> None:
    whole = run([stream])
    assert run(chunked(data, stream)).key() == whole.key()
    reference = reference_parse(stream)
    assert [tuple(event) for event in whole.events] == [tuple(event) for event in reference.events]
    assert whole.last_event_id == reference.last_event_id
    assert whole.retry == reference.retry


@settings(max_examples=100, deadline=None)
@given(stream=streams, data=st.data(), limit=st.integers(1, 12))
def test_size_errors_and_events_before_them_match_under_any_chunking(
    stream: bytes, data: st.DataObject, limit: int
) -> None:
    whole = run([stream], max_event_size=limit)
    chunked_outcome = run(chunked(data, stream), max_event_size=limit)
    assert chunked_outcome.events == whole.events
    assert type(chunked_outcome.error) is type(whole.error)


@settings(max_examples=200, deadline=None)
@given(stream=streams, data=st.data())
def test_raw_mode_under_any_chunking_matches_feed_and_forwards_the_same_events(
    stream: bytes, data: st.DataObject
) -> None:
    chunks = chunked(data, stream)
    assert_raw_parses(stream, chunks, reference_raw(stream), run([stream]))


@settings(max_examples=100, deadline=None)
@given(stream=streams, data=st.data(), limit=st.integers(1, 24))
def test_raw_size_errors_and_events_before_them_match_under_any_chunking(
    stream: bytes, data: st.DataObject, limit: int
) -> None:
    whole = run_raw([stream], max_event_size=limit)
    chunks = chunked(data, stream)
    chunked_outcome = run_raw(chunks, max_event_size=limit)
    assert chunked_outcome.events == whole.events
    assert whole.raws is not None
    assert (
        chunked_outcome.raws
        == expected_raws(stream, reference_raw(stream), chunks)[: len(whole.raws)]
    )
    assert type(chunked_outcome.error) is type(whole.error)
    if whole.error is None:
        assert whole.events == run([stream]).events
