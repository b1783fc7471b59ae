"""The parser: :class:`SSEParser`, WHATWG HTML 9.2.6 over a ``text/event-stream`` body.

How to use it, the rules it follows and its performance: docs/sse.md.
"""

from __future__ import annotations

from .._errors import SSEEventTooLarge
from ._event import ServerSentEvent
from ._lines import _COMPACT_STEP, _compact, _LineParser, _too_large
from ._raw import RawSSEParser


class SSEParser(_LineParser):
    """Incremental, sans-IO parser of a ``text/event-stream`` byte stream.

    Feed it the body in chunks split anywhere (inside a line, a CRLF pair or a UTF-8
    sequence): it returns the same events whatever the chunking. Invalid UTF-8 becomes
    U+FFFD; one leading byte order mark is dropped; lines end with CRLF, LF or CR only.

    A line (complete or not) or the data of one event longer than ``max_event_size``
    bytes fails the parser with :class:`~streammgr.SSEEventTooLarge`. Events that the
    same call completed before the offending line are returned, and the error is raised
    by the next call; once failed, every call raises the same error.

    :meth:`feed_raw` is raw mode, for proxies (a :class:`~streammgr.sse.RawSSEParser`
    inside). A parser uses :meth:`feed` or :meth:`feed_raw` for its whole life.

    Args:
        max_event_size: the largest line, and the largest data of one event, in bytes.

    Raises:
        ValueError: ``max_event_size`` is not a positive int.
    """

    __slots__ = ("_feed_refused", "_raw", "_raw_refused")

    def __init__(self, max_event_size: int = 1_048_576) -> None:
        super().__init__(max_event_size)
        # After close(), or once the other method has been called (the first call fixes
        # the mode, where it drops a byte order mark: checking costs nothing after it).
        self._feed_refused = False
        self._raw_refused = False
        # Raw mode: the parser that feed_raw() delegates to, made by its first call.
        self._raw: RawSSEParser | None = None

    @property
    def last_event_id(self) -> str:
        """The ID to send as ``Last-Event-ID`` when reconnecting, or ``""``.

        The WHATWG "last event ID string": the last event ID buffer as it was at the
        most recent blank line. An ``id`` field of an unfinished event does not count.
        """
        raw = self._raw
        return self._last_event_id if raw is None else raw.last_event_id

    @property
    def retry(self) -> int | None:
        """The most recent valid ``retry`` value (reconnection time, in ms), or ``None``.

        Updated as soon as the ``retry`` line is complete, even if its event is never
        dispatched.
        """
        raw = self._raw
        return self._retry if raw is None else raw.retry

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Parse the next chunk of the stream.

        Args:
            data: the next bytes of the body, split anywhere. A ``bytearray`` or
                ``memoryview`` is accepted too, and copied.

        Returns:
            The events that this chunk completed, in order (often none).

        Raises:
            SSEEventTooLarge: a line or an event's data is longer than
                ``max_event_size``, now or in an earlier call.
            RuntimeError: :meth:`close` was called before, or :meth:`feed_raw` was used
                on this parser.
            TypeError: ``data`` is a ``str``.
        """
        # Fast path: an LF-only chunk, once the stream's first bytes are past. On
        # CPython 3.11, ``bytes.partition`` is the cheapest test for a byte: ``in``
        # and ``find`` cost twice as much on a small chunk.
        if self._plain and data.__class__ is bytes and not data.partition(b"\r")[1]:
            if not data.partition(b"\n")[1]:
                # No line is complete: just keep the chunk.
                self._pieces.append(data)
                self._pending += len(data)
                if self._pending > self._checkpoint:
                    self._unfinished_line_grew()
                return []
            return self._feed_lines(data)
        return self._feed_slow(data)

    def feed_raw(self, data: bytes) -> list[tuple[ServerSentEvent, bytes]]:
        """Parse the next chunk like :meth:`feed`; return each event with its original bytes.

        The same as :meth:`RawSSEParser.feed_pairs <streammgr.sse.RawSSEParser.feed_pairs>`
        (what the bytes of an event are: docs/sse.md, "Raw mode").

        Args:
            data: the next bytes of the body, split anywhere. A ``bytearray`` or
                ``memoryview`` is accepted too, and copied.

        Returns:
            ``(event, raw_bytes)`` for each event that this chunk completed, in order.

        Raises:
            SSEEventTooLarge: the bytes of an event (kept blocks included, the blank
                line that ends it not) are longer than ``max_event_size``, now or in an
                earlier call; a dropped comment is bounded as a line. Events completed
                before it are returned first, and the next call raises.
            RuntimeError: :meth:`close` was called before, or :meth:`feed` was used on
                this parser.
            TypeError: ``data`` is a ``str``.
        """
        raw = self._raw
        # RawSSEParser.feed_pairs()'s fast path, inlined: a call more would cost 25 ns
        # a chunk, 8% of the time of feed_raw() on 7-16 byte chunks.
        if (
            raw is not None
            and raw._plain
            and data.__class__ is bytes
            and not data.partition(b"\r")[1]
        ):
            if not data.partition(b"\n")[1]:
                raw._pieces.append(data)
                raw._pending += len(data)
                if raw._pending > raw._checkpoint:
                    raw._line_grew()
                return []
            return raw._pairs(data, False)
        if raw is None or self._closed or data.__class__ is not bytes:
            data, raw = self._raw_checked(data)
        return raw.feed_pairs(data)

    def close(self) -> list[ServerSentEvent]:
        """Mark the end of the stream.

        As the standard says, an unfinished event and an unterminated last line are
        discarded (in raw mode, so are blocks kept for an event that never came).
        Calling it again does nothing.

        Returns:
            ``[]``: the end of the stream completes no event.

        Raises:
            SSEEventTooLarge: an earlier :meth:`feed` or :meth:`feed_raw` failed.
        """
        raw = self._raw
        if raw is not None:
            raw.close()
        elif self._error is not None:
            raise self._error.with_traceback(None)
        self._clear()
        self._feed_refused = self._raw_refused = True
        return []

    # -- the slow path: first bytes, CR line endings, closed or failed parser --------

    def _feed_slow(self, data: bytes) -> list[ServerSentEvent]:
        # Every chunk of a CRLF stream comes here: it checks no more than it must.
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._feed_refused or data.__class__ is not bytes:
            raw = self._raw
            if raw is not None and raw._error is not None:
                raise raw._error.with_traceback(None)
            other = "feed_raw" if self._feed_refused else None
            data = self._checked(data, "SSEParser.feed", other)
        if self._head is not None:
            self._raw_refused = True  # the first call: this parser is for feed()
            data = self._after_head(data)
            if not data:
                return []
        if self._skip_lf and data:
            if data[0] == 0x0A:
                data = data[1:]  # the LF of a CRLF split across chunks
            self._skip_lf = False
        if data.find(b"\r") >= 0:
            # CR and CRLF become LF. UTF-8 never uses these bytes inside a multi-byte
            # sequence, so this is safe before decoding. A CR at the end ends its line
            # now; the LF that may start the next chunk belongs to it.
            self._skip_lf = data[-1] == 0x0D
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._plain = not self._skip_lf
        return self._feed_lines(data)

    def _raw_checked(self, data: bytes) -> tuple[bytes, RawSSEParser]:
        """``data`` as bytes and the raw parser, once :meth:`feed_raw` may be called."""
        raw = self._raw
        if raw is not None and raw._error is not None:
            raise raw._error.with_traceback(None)
        other = "feed" if self._raw_refused else None
        data = self._checked(data, "SSEParser.feed_raw", other)
        if raw is None:
            self._feed_refused = True  # the first call: this parser is for feed_raw()
            raw = self._raw = RawSSEParser(self._max_event_size)
        return data, raw

    def _unfinished_line_grew(self) -> None:
        """The unfinished line passed a checkpoint: check its size, compact it.

        Called every ``_COMPACT_STEP`` bytes, not per chunk, so that the fast path
        does one comparison. Compacting into one bytearray keeps a long line that
        arrives in tiny chunks from costing a Python object per chunk.
        """
        pending = self._pending
        limit = self._max_event_size
        if pending > limit:
            self._fail(_too_large("an unfinished line", pending, limit))
        _compact(self._pieces)
        self._checkpoint = min(limit, pending + _COMPACT_STEP)

    # -- the core: LF-only bytes, starting where the unfinished line starts ------------

    def _feed_lines(self, data: bytes) -> list[ServerSentEvent]:
        end = data.rfind(b"\n") + 1
        if not end:
            if data:
                self._pieces.append(data)
                self._pending += len(data)
                if self._pending > self._checkpoint:
                    self._unfinished_line_grew()
            return []
        limit = self._max_event_size
        pieces = self._pieces
        if pieces:
            pieces.append(data)
            data = b"".join(pieces)
            end += self._pending
            pieces.clear()
            self._checkpoint = min(limit, _COMPACT_STEP)
        # data[:end] is complete lines; data[end:] is the start of the next line.
        pending = len(data) - end
        if pending:
            pieces.append(data[end:])
        self._pending = pending
        events: list[ServerSentEvent] = []
        try:
            start = 0
            last_blank = data.rfind(b"\n\n")
            if last_blank >= 0:
                simple = None
                if (
                    last_blank <= limit
                    and not self._data_lines
                    and not self._event_type
                    and self._event_retry is None
                ):
                    simple = self._simple_events(data, 0, last_blank)
                if simple is None:
                    start = self._parse_events(data, last_blank, events)
                else:
                    events = simple
                    self._last_event_id = self._id_buffer
                    start = last_blank + 2
            if start < end:
                self._parse_span(data, start, end, events)
        except SSEEventTooLarge as error:
            self._error = error
            self._plain = False
            if not events:
                raise
            return events  # what came before the offending line; the error comes next
        if pending > limit:
            too_long = _too_large("an unfinished line", pending, limit)
            self._error = too_long
            self._plain = False
            if not events:
                raise too_long
        return events

    def _parse_events(self, data: bytes, last_blank: int, events: list[ServerSentEvent]) -> int:
        """Parse the events of ``data`` up to ``last_blank``; return where to go on.

        The first event is often the end of one that began in an earlier chunk, or is
        unusual: if the next one has a usual shape, parse the first line by line and
        try the fast path on the rest. Otherwise return 0: all goes line by line.
        """
        first_blank = data.find(b"\n\n")
        start = first_blank + 2
        if first_blank == last_blank or last_blank - start > self._max_event_size:
            return 0
        # A look at the event at start, so as not to split the region in vain.
        first_lf = data.find(b"\n", start)
        if data[start : start + 6] == b"data: ":
            if data[first_lf + 1] != 0x0A:  # the event has a second line
                return 0
        elif data[start : start + 7] != b"event: " or data[first_lf + 1 : first_lf + 7] != (
            b"data: "
        ):
            return 0
        self._parse_span(data, 0, start, events)
        simple = self._simple_events(data, start, last_blank)
        if simple is None:
            return start
        events += simple
        self._last_event_id = self._id_buffer
        return last_blank + 2
