"""Tests for :class:`streammgr.sse.SSEParser`: WHATWG HTML 9.2.6, bounded memory.

Every fixture goes through :func:`tests.sse_reference.assert_parses`: whole, byte by
byte, split at every offset, with trailing garbage, in raw mode too.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streammgr._errors import SSEError, SSEEventTooLarge
from streammgr.sse import RawSSEParser, ServerSentEvent, SSEParser, is_done

from .sse_reference import (
    E,
    assert_parses,
    chunked,
    chunkings,
    reference_parse,
    run,
    split_at,
    streams,
)

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


def test_the_cache_of_event_types_keeps_no_long_names() -> None:
    # Regression (found measuring what a parser holds, tests/sse_invariants.py): the parser
    # remembered the first 64 event types whatever their length, so 64 distinct names
    # each of half max_event_size stayed in memory for the stream's life: 32 times
    # the limit. Both paths: line by line, and the fast path.
    limit = 20_000
    names = [b"event: " + bytes([65 + index % 26]) * (limit // 2 - index) for index in range(64)]
    for parser in (SSEParser(limit), RawSSEParser(limit)):
        for name in names:
            assert parser.feed(name + b"\ndata: x\n\n")[0].event == name[7:].decode()
            assert parser.feed(b"data: y\n\n" + name + b"\ndata: x\n\n")[1].data == "x"
        assert sum(map(len, parser._event_types)) <= 64 * 64
    # The usual short names are still remembered: a cache hit returns the same str.
    parser = SSEParser()
    first = parser.feed(b"event: delta\ndata: 1\n\n")[0].event
    assert parser.feed(b"event: delta\ndata: 2\n\n")[0].event is first


# -- properties -----------------------------------------------------------------------


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
