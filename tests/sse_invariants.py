"""The invariants of the SSE parsers on one input, shared by the property tests and the fuzzer.

:func:`check_stream` feeds one byte string, whole and cut into the given chunks, to every
way of parsing it (``SSEParser.feed``, ``SSEParser.feed_raw``, ``RawSSEParser.feed`` and
``RawSSEParser.feed_pairs``) and asserts what must hold whatever the bytes:

- the only exception is :class:`~streammgr.SSEEventTooLarge`; once raised, every later
  call raises the same one;
- the chunking changes nothing: the same events, ``last_event_id``, ``retry`` and error
  (``retry`` may differ after an error in raw mode, which applies the ``retry:`` line
  of a too-large event only if it arrived in an earlier chunk: known, left as it is);
- the four ways agree: the raw modes give the same events as each other, and the events
  of the decoding parser (a prefix of them when a size limit stops the raw parser,
  which counts an event's bytes, not just its data); each batch's ``raw`` is the
  concatenation of its events' bytes; forwarding those bytes to a fresh parser with
  the same limit gives the same events again;
- with a limit that the stream cannot reach, the events are those of the naive
  transcription of the standard (:func:`tests.sse_reference.reference_parse`);
- after every call the parser holds no more than its limit allows (:func:`held`),
  measured through its internal buffers.

fuzz/fuzz_sse.py runs it on the fuzzer's inputs; tests/test_sse_properties.py on
hypothesis's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from streammgr._errors import SSEEventTooLarge
from streammgr.sse import RawSSEParser, ServerSentEvent, SSEParser
from streammgr.sse._lines import _LineParser

from .sse_reference import BOM, reference_parse, split_at

# Bytes that a parser may hold in its cache of event type names, whatever its limit.
CACHE_BOUND = 64 * 64


class Held(NamedTuple):
    """What a parser holds between two calls, in bytes (or characters, for strings)."""

    line: int  # the unfinished line
    data: int  # the data of the event being built, its lines joined by LF
    event: int  # raw mode: the bytes of the event being built (kept blocks included)
    strings: int  # the longest of the event type, id buffer and last event ID
    cache: int  # the names in the cache of event types
    head: int  # the first bytes of the stream while they could be a byte order mark


def held(parser: _LineParser) -> Held:
    """Measure what ``parser`` holds, from its buffers themselves (not its counters)."""
    line = sum(len(piece) for piece in parser._pieces)
    data = sum(len(value) for value in parser._data_lines) + max(len(parser._data_lines) - 1, 0)
    event = 0
    if isinstance(parser, RawSSEParser):
        event = sum(len(piece) for piece in parser._block_pieces)
        event += sum(len(block) for block, _, _ in parser._kept)
    strings = max(len(parser._event_type), len(parser._id_buffer), len(parser._last_event_id))
    cache = sum(len(name) for name in parser._event_types)
    return Held(line, data, event, strings, cache, len(parser._head or b""))


def check_held(parser: _LineParser, limit: int, chunk: int, failed: bool) -> None:
    """Assert that ``parser`` holds what its limit allows after a call.

    ``chunk`` is the size of the call's chunk, or of the chunk of the call that failed
    the parser: a call that fails may have kept that chunk before it checked (the fast paths check
    the size of the unfinished line every 64 KiB, or at the limit if smaller), or the
    data line that went over the limit.
    """
    measured = held(parser)
    # A call that completed events before its error returns them and defers the error.
    failed = failed or parser._error is not None
    if not failed:  # a failed parser drops what it held, but may not update its counter
        assert measured.line == parser._pending, (measured, parser._pending)
    slack = chunk if failed else 0
    assert measured.line <= limit + slack, (measured, limit)
    # The data line that goes over the limit is added before the check: a line more.
    assert measured.data <= (2 * limit + 1 if failed else limit), (measured, limit)
    assert measured.strings <= limit, (measured, limit)
    assert measured.cache <= CACHE_BOUND, (measured, limit)
    assert measured.head < len(BOM), measured
    if isinstance(parser, RawSSEParser):
        # A kept block's blank line is not counted against the limit: up to a CRLF more.
        assert measured.event <= limit + 2, (measured, limit)
        if not failed and not parser._dropped_line():
            assert measured.event + measured.line <= limit + 2, (measured, limit)
    assert measured.line + measured.data + measured.event <= 4 * limit + 3 + slack


class Run(NamedTuple):
    """What one way of parsing made of a stream."""

    events: list[ServerSentEvent]
    last_event_id: str
    retry: int | None
    error: type[SSEEventTooLarge] | None
    raws: list[bytes]  # the bytes of the events of each call (raw modes), else []

    def key(self) -> tuple[object, ...]:
        return (self.events, self.last_event_id, self.retry, self.error)


Feed = Callable[[bytes], tuple[list[ServerSentEvent], bytes]]


def _feeder(mode: str, parser: SSEParser | RawSSEParser) -> Feed:
    """The call that feeds ``parser`` in ``mode``, as (events, their bytes)."""
    if mode == "feed":
        assert isinstance(parser, SSEParser)
        decoding = parser

        def feed(chunk: bytes) -> tuple[list[ServerSentEvent], bytes]:
            return decoding.feed(chunk), b""

    elif mode in ("feed_raw", "feed_pairs"):
        pairs = parser.feed_raw if isinstance(parser, SSEParser) else parser.feed_pairs

        def feed(chunk: bytes) -> tuple[list[ServerSentEvent], bytes]:
            completed = pairs(chunk)
            return [event for event, _ in completed], b"".join(raw for _, raw in completed)

    else:
        assert isinstance(parser, RawSSEParser)
        raw_parser = parser

        def feed(chunk: bytes) -> tuple[list[ServerSentEvent], bytes]:
            batch = raw_parser.feed(chunk)
            assert bool(batch) is bool(batch.raw)
            return list(batch), batch.raw

    return feed


MODES = ("feed", "feed_raw", "batch", "feed_pairs")


def run_mode(mode: str, chunks: Sequence[bytes], limit: int) -> Run:
    """Feed ``chunks`` in ``mode`` then close, checking :func:`held` after every call."""
    parser: SSEParser | RawSSEParser
    parser = SSEParser(limit) if mode in ("feed", "feed_raw") else RawSSEParser(limit)
    feed = _feeder(mode, parser)

    def inner() -> _LineParser:
        if isinstance(parser, SSEParser) and parser._raw is not None:
            return parser._raw
        return parser

    events: list[ServerSentEvent] = []
    raws: list[bytes] = []
    error: SSEEventTooLarge | None = None
    failed_by: int | None = None  # the size of the chunk that failed the parser
    for chunk in chunks:
        try:
            completed, raw = feed(chunk)
        except SSEEventTooLarge as exc:
            error = exc
            check_held(inner(), limit, failed_by or len(chunk), failed=True)
            break
        events += completed
        raws.append(raw)
        if failed_by is None and inner()._error is not None:
            failed_by = len(chunk)  # it returned events first, and deferred the error
        check_held(inner(), limit, failed_by or len(chunk), failed=False)
    if error is None:
        try:
            closed = parser.close()
        except SSEEventTooLarge as exc:  # a failure deferred by the last call
            error = exc
        else:
            assert list(closed) == []
            check_held(inner(), limit, 0, failed=False)
    if error is not None:
        # A failed parser raises the same error from every call, close() included.
        for again in (lambda: feed(b"data: x\n\n"), parser.close):
            raised: SSEEventTooLarge | None = None
            try:
                again()
            except SSEEventTooLarge as exc:
                raised = exc
            assert raised is error, "a failed parser accepted another call, or changed error"
    error_type = None if error is None else type(error)
    return Run(events, parser.last_event_id, parser.retry, error_type, raws)


def check_stream(stream: bytes, offsets: Sequence[int], limit: int) -> None:
    """Assert every invariant of the module docstring for ``stream`` cut at ``offsets``."""
    chunks = split_at(stream, sorted(offsets))
    runs = {}
    for mode in MODES:
        whole = run_mode(mode, [stream], limit)
        cut = run_mode(mode, chunks, limit)
        assert cut.key()[:2] == whole.key()[:2], (mode, chunks)
        assert cut.error == whole.error, (mode, chunks)
        if whole.error is None or mode == "feed":
            assert cut.retry == whole.retry, (mode, chunks)
        runs[mode] = cut
        if mode != "feed":
            # One parse behind every raw mode: the same events, the same bytes per call.
            assert cut.key() == runs["feed_raw"].key(), (mode, chunks)
            assert cut.raws == runs["feed_raw"].raws, (mode, chunks)
    decoded, raw = runs["feed"], runs["feed_raw"]
    # The raw parser's limit counts every byte of an event, the decoding parser's only
    # its lines and data: where the raw parser stops, the decoding parser may go on.
    assert raw.events == decoded.events[: len(raw.events)], chunks
    if raw.error is None:
        assert raw.key() == decoded.key(), chunks
        # A proxy forwards the bytes; its client, with the same limit, sees the same.
        body = b"".join(raw.raws)
        client = run_mode("feed", [BOM + body if body.startswith(BOM) else body], limit)
        assert client.error is None, chunks
        assert client.events == raw.events, chunks
    if limit >= len(stream):  # no line or event can be longer than the stream
        reference = reference_parse(stream)
        assert decoded.error is None
        assert [tuple(event) for event in decoded.events] == [
            tuple(event) for event in reference.events
        ]
        assert decoded.last_event_id == reference.last_event_id
        assert decoded.retry == reference.retry
