"""Raw mode, for proxies: ``SSEParser.feed_raw`` and :class:`streammgr.sse.RawSSEParser`.

The fixtures of the other SSE tests run in raw mode too (see
:func:`tests.sse_reference.assert_raw_parses`); here are the rules of raw mode itself,
and the batch that :meth:`RawSSEParser.feed` returns.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streammgr._errors import SSEEventTooLarge
from streammgr.sse import RawBatch, RawSSEParser, ServerSentEvent, SSEParser

from .sse_reference import (
    BOM,
    E,
    assert_raw_parses,
    chunked,
    chunkings,
    expected_raws,
    reference_raw,
    run,
    run_batches,
    run_raw,
    streams,
)

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


@pytest.mark.parametrize("limit", [19, 20])
def test_a_kept_block_counts_the_same_whether_its_crlf_is_split_or_not(limit: int) -> None:
    # Regression (found by fuzz/fuzz_sse.py): a kept block whose blank line is a CRLF
    # split across chunks is kept without its LF, and counted a byte less, so whether
    # the next event was too large depended on where the chunk ended.
    stream = b"id: 1\r\n\r\ndata: abc\r\n\r\n"  # 9 bytes kept, 11 of the event's own
    split = stream.index(b"\r\n\r\n") + 3  # between the CR and the LF of the blank line
    whole = run_batches([stream], max_event_size=limit)
    chunked = run_batches([stream[:split], stream[split:]], max_event_size=limit)
    assert type(chunked.error) is type(whole.error)
    assert chunked.events == whole.events
    assert (whole.error is None) is (limit == 20)
    # The bytes are as before: the kept block ends at the CR, its LF is not forwarded.
    if limit == 20:
        assert chunked.batches == [b"", b"id: 1\r\n\rdata: abc\r\n\r\n"]


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


# -- RawSSEParser and its batch ------------------------------------------------------------


def test_a_batch_is_the_list_of_its_events_with_their_bytes_in_one_piece() -> None:
    parser = RawSSEParser()
    batch = parser.feed(b": hi\n\ndata: a\n\nid: 1\n\n: ping\n\nevent: e\ndata: b\n\ndata: c")
    assert isinstance(batch, list)
    assert batch == [E(data="a"), E("e", "b", "1")]
    assert batch.raw == b"data: a\n\nid: 1\n\nevent: e\ndata: b\n\n"
    empty = parser.feed(b"\n")
    assert type(empty) is RawBatch
    assert not empty
    assert empty.raw == b""
    assert parser.feed(b"\n").raw == b"data: c\n\n"
    # Equality is the list's; repr shows the bytes.
    assert RawBatch([E(data="a")], raw=b"data: a\n\n") == RawBatch([E(data="a")])
    assert RawBatch() == []
    assert RawBatch().raw == b""
    assert repr(RawBatch([E(data="a")], b"data: a\n\n")) == (
        "RawBatch([ServerSentEvent(event='message', data='a', id='', retry=None)], "
        "raw=b'data: a\\n\\n')"
    )


def test_the_batch_of_a_read_of_usual_events_is_the_read_itself() -> None:
    # No per-event bytes and no copy: the events' bytes are the chunk, one slice of it.
    parser = RawSSEParser()
    for chunk in (
        b"data: a\n\ndata: b\n\n",  # the first call (BOM check)
        b'data: {"x": 1}\n\ndata: [DONE]\n\n',  # the fast path
        b"event: e\ndata: a\n\nevent: f\ndata: b\n\n",
        b"data: a\r\n\r\ndata: b\r\n\r\n",  # CRLF: one replace, not one per event
    ):
        batch = parser.feed(chunk)
        assert len(batch) == 2
        assert batch.raw == chunk
        if b"\r" not in chunk:
            assert batch.raw is chunk


def test_a_batch_is_plain_only_when_the_parser_proved_it_has_no_id_or_retry_field() -> None:
    parser = RawSSEParser()
    for chunk in (
        b"data: a\n\ndata: b\n\n",
        b'data: {"id": "x"}\n\ndata: [DONE]\n\n',  # "id" inside data is no field
        b"event: e\ndata: a\n\n",
        b"data: a\r\n\r\n",
        b"data: unfinished",  # nothing completed: vacuously plain
    ):
        assert parser.feed(chunk).plain, chunk
    for chunk in (
        b"\n\nid: 1\ndata: a\n\n",  # ends the unfinished line, then an id
        b"retry: 5\ndata: a\n\n",
        b"id: 2\n\ndata: b\n\n",  # a kept id block, forwarded with the next event
        b": comment\ndata: c\n\n",  # a shape the fast path does not prove
    ):
        assert not parser.feed(chunk).plain, chunk
    # A batch made by hand is never plain unless its maker says so.
    assert not RawBatch([E(data="a")], b"data: a\n\n").plain
    assert parser.close().plain


def test_raw_parser_input_close_and_properties() -> None:
    parser = RawSSEParser()
    buffer = bytearray(b"retry: 5\nid: 7\ndata: ab")
    assert parser.feed(buffer) == []  # type: ignore[arg-type]
    buffer[:] = b"X" * len(buffer)
    assert parser.retry == 5
    assert parser.last_event_id == ""
    batch = parser.feed(memoryview(b"\n\n"))  # type: ignore[arg-type]
    assert batch == [E(data="ab", id="7", retry=5)]
    assert batch.raw == b"retry: 5\nid: 7\ndata: ab\n\n"
    assert parser.last_event_id == "7"
    for method in (parser.feed, parser.feed_pairs):
        takes_bytes = r"RawSSEParser\.feed(_pairs)?\(\) takes bytes, got str"
        with pytest.raises(TypeError, match=takes_bytes):
            method("data: x\n\n")  # type: ignore[arg-type]
    assert parser.feed_pairs(b"id: 8\n\ndata: unfinished\n") == []
    closed = parser.close()
    assert type(closed) is RawBatch
    assert (closed, closed.raw) == ([], b"")
    assert parser.close() == []
    assert parser.last_event_id == "8"
    after_close = r"RawSSEParser\.feed\(\) called after close\(\); use a new RawSSEParser"
    with pytest.raises(RuntimeError, match=after_close):
        parser.feed(b"\n")
    with pytest.raises(RuntimeError, match=r"RawSSEParser\.feed_pairs\(\) called after close"):
        parser.feed_pairs(b"\n")


@pytest.mark.parametrize("value", [0, -1, 1.5, "1024", True, None])
def test_raw_parser_max_event_size_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(ValueError, match="max_event_size"):
        RawSSEParser(max_event_size=value)  # type: ignore[arg-type]


def test_a_raw_parser_returns_the_events_before_an_error_and_defers_it() -> None:
    parser = RawSSEParser(max_event_size=16)
    batch = parser.feed(b"data: a\n\n: x\ndata: " + b"y" * 20 + b"\n\ndata: c\n\n")
    assert batch == [E(data="a")]
    assert batch.raw == b"data: a\n\n"
    with pytest.raises(SSEEventTooLarge, match="the bytes of an event") as first:
        parser.feed(b"data: d\n\n")
    with pytest.raises(SSEEventTooLarge) as second:
        parser.feed_pairs(b"")
    with pytest.raises(SSEEventTooLarge) as third:
        parser.close()
    assert first.value is second.value is third.value


def test_a_failed_parser_raises_its_error_before_any_mode_or_type_error() -> None:
    # The order of the checks: failed, then closed, then the other mode, then str.
    parser = SSEParser(max_event_size=8)
    with pytest.raises(SSEEventTooLarge) as failed:
        parser.feed(b"data: 123456789")
    for call in (
        lambda: parser.feed_raw(b"data: a\n\n"),
        lambda: parser.feed_raw("str"),  # type: ignore[arg-type]
        lambda: parser.feed("str"),  # type: ignore[arg-type]
        parser.close,
    ):
        with pytest.raises(SSEEventTooLarge) as again:
            call()
        assert again.value is failed.value
    parser = SSEParser(max_event_size=8)
    with pytest.raises(SSEEventTooLarge) as failed:
        parser.feed_raw(b"data: 123456789")
    for call in (
        lambda: parser.feed(b"data: a\n\n"),
        lambda: parser.feed("str"),  # type: ignore[arg-type]
        lambda: parser.feed_raw("str"),  # type: ignore[arg-type]
        lambda: parser.feed_raw(b"data: a\n\n"),
        parser.close,
    ):
        with pytest.raises(SSEEventTooLarge) as again:
            call()
        assert again.value is failed.value
    # The mode before the type; and a str fixes no mode.
    parser = SSEParser()
    parser.feed(b"")
    with pytest.raises(RuntimeError, match=r"feed_raw\(\) called on a parser used with feed\(\)"):
        parser.feed_raw("str")  # type: ignore[arg-type]
    parser = SSEParser()
    with pytest.raises(TypeError, match=r"SSEParser\.feed_raw\(\) takes bytes"):
        parser.feed_raw("str")  # type: ignore[arg-type]
    assert parser.feed(b"data: a\n\n") == [E(data="a")]
    # Closed, in either mode: the closed error names the method called.
    for first in ("feed", "feed_raw"):
        parser = SSEParser()
        getattr(parser, first)(b"id: 1\n\n")
        parser.close()
        assert parser.last_event_id == "1"
        for method in ("feed", "feed_raw"):
            with pytest.raises(RuntimeError, match=rf"SSEParser\.{method}\(\) called after close"):
                getattr(parser, method)(b"data: a\n\n")


# -- properties -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(stream=streams, data=st.data())
def test_raw_mode_under_any_chunking_matches_feed_and_forwards_the_same_events(
    stream: bytes, data: st.DataObject
) -> None:
    chunks = chunked(data, stream)
    assert_raw_parses(stream, chunks, reference_raw(stream), run([stream]))
    # A batch said to be plain holds no id or retry field line, whatever the chunking.
    parser = RawSSEParser()
    for chunk in chunks:
        try:
            batch = parser.feed(chunk)
        except SSEEventTooLarge:
            break
        if batch.plain:
            lines = batch.raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            assert not any(re.match(rb"(id|retry)(:|$)", line) for line in lines), batch.raw


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
    # RawSSEParser.feed: the same events before the same error, the same bytes per call.
    batches = run_batches(chunks, max_event_size=limit)
    assert batches.key() == chunked_outcome.key()
    assert batches.batches == chunked_outcome.batches


@settings(max_examples=200, deadline=None)
@given(stream=streams, data=st.data(), limit=st.integers(1, 64))
def test_feed_and_feed_pairs_may_be_mixed_on_a_raw_parser(
    stream: bytes, data: st.DataObject, limit: int
) -> None:
    chunks = chunked(data, stream)
    pairs_at = data.draw(st.sets(st.integers(0, len(chunks))))
    mixed = run_batches(chunks, max_event_size=limit, pairs_at=pairs_at)
    raw = run_raw(chunks, max_event_size=limit)
    assert mixed.key() == raw.key()
    assert mixed.batches == raw.batches
