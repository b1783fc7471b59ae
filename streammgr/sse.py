"""A sans-IO Server-Sent Events parser, event type and encoder.

The parser follows the WHATWG HTML standard, section 9.2.6 "Interpreting an event
stream", exactly: it takes the bytes of a ``text/event-stream`` body in chunks of any
size and returns the events that those bytes complete. It does no I/O, never awaits
and never logs; the caller reads from the network and acts on the events::

    parser = SSEParser()
    for chunk in chunks:             # bytes, as the transport returns them
        for event in parser.feed(chunk):
            handle(event)
    parser.close()                   # end of stream: an unfinished event is dropped

A proxy that forwards events without decoding and re-encoding them uses
:meth:`SSEParser.feed_raw` instead, which also returns each event's original bytes.

The server side builds the bytes of an event with :func:`encode` and of a keep-alive
comment with :func:`encode_comment`. :func:`is_done` recognises the ``data: [DONE]``
terminator of OpenAI-style streams.

Memory is bounded: a line, or the data of one event, longer than ``max_event_size``
bytes raises :class:`~streammgr.SSEEventTooLarge` (see :class:`SSEParser`).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from ._errors import SSEEventTooLarge

__all__ = [
    "OPENAI_DONE",
    "SSEParser",
    "ServerSentEvent",
    "encode",
    "encode_comment",
    "is_done",
]

OPENAI_DONE = "[DONE]"
"""The ``data`` of the event that ends an OpenAI-style stream (``data: [DONE]``)."""

_BOM = b"\xef\xbb\xbf"
_EVENT_TYPE_CACHE_SIZE = 64
# Bytes of an unfinished line between size checks and compactions of its pieces.
_COMPACT_STEP = 65_536
# Complete lines of a raw event kept as separate pieces before they are compacted.
_RAW_PIECES = 16
# One block, in raw mode, from a line start: non-blank lines, then a blank line.
# Possessive: backtracking could split a CRLF into a line ending and a blank line.
_BLOCK = re.compile(rb"(?:[^\r\n]++(?:\r\n?+|\n))*+(?:\r\n?+|\n)")


class ServerSentEvent(NamedTuple):
    """One dispatched Server-Sent Event; immutable.

    The field names are those of ``httpx_sse.ServerSentEvent``. An event is a
    :class:`typing.NamedTuple`: the cheapest immutable, typed object that Python can
    build (the parser makes one per event, on the hot path). It compares equal to an
    event with the same four fields (and, being a tuple, to a plain 4-tuple of them),
    and it can be unpacked: ``event, data, id, retry = sse``.

    Attributes:
        event: the event type; ``"message"`` when the stream set none.
        data: the data lines of the event joined with ``"\\n"``.
        id: the last event ID when the event was dispatched: the value of the most
            recent ``id`` field of the stream, which persists across events, or ``""``.
        retry: the reconnection time in milliseconds if this event's own block carried
            a valid ``retry`` field, else ``None``.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None

    def json(self) -> Any:
        """Decode :attr:`data` as JSON.

        Returns:
            ``json.loads(self.data)``.

        Raises:
            json.JSONDecodeError: the data is not valid JSON.
        """
        return json.loads(self.data)


# Builds an event from a 4-tuple without going through the generated Python
# ``__new__``: about a third cheaper per event.
_new_tuple = tuple.__new__


def _compact(pieces: list[bytes | bytearray]) -> None:
    """Join ``pieces`` in place into one bytearray, which later joins extend."""
    if len(pieces) > 1:
        head = pieces[0]
        compacted = head if isinstance(head, bytearray) else bytearray(head)
        compacted += b"".join(pieces[1:])
        pieces[:] = [compacted]


def _skip_comments(data: bytes, start: int, stop: int, mixed: bool) -> int:
    """Where the first line of ``data[start:stop]`` that is not a comment starts.

    ``data[start:stop]`` is complete lines, ending with LF only unless ``mixed`` (then
    with CR, LF or CRLF); ``stop`` if every line is a comment.
    """
    while start < stop and data[start] == 0x3A:  # ":"
        line_feed = data.find(b"\n", start, stop)
        if not mixed:
            start = line_feed + 1
            continue
        carriage_return = data.find(b"\r", start, line_feed if line_feed >= 0 else stop)
        if carriage_return < 0:
            start = line_feed + 1
        elif carriage_return + 1 == line_feed:
            start = line_feed + 1  # CRLF
        else:
            start = carriage_return + 1
    return start


def _too_large(what: str, size: int, limit: int) -> SSEEventTooLarge:
    return SSEEventTooLarge(
        f"{what} of {size} bytes is larger than max_event_size={limit} bytes; "
        "raise max_event_size if the server legitimately sends events this large",
        max_event_size=limit,
    )


class SSEParser:
    """Incremental, sans-IO parser of a ``text/event-stream`` byte stream.

    Feed it the body in chunks split anywhere (inside a line, inside a CRLF pair or a
    UTF-8 sequence): it returns the same events whatever the chunking.

    The input is decoded as UTF-8, invalid bytes becoming U+FFFD exactly as
    ``body.decode("utf-8", "replace")`` would; one leading byte order mark is dropped.
    Lines end with CRLF, LF or CR, and only those (U+2028, U+0085, VT, FF ... are
    ordinary characters). Field processing follows WHATWG HTML section 9.2.6.

    Bounded memory: if a line (complete or not) or the data of one event grows past
    ``max_event_size`` bytes, the parser fails with :class:`~streammgr.SSEEventTooLarge`.
    Nothing is lost: if events were completed by the same :meth:`feed` call before the
    offending line, that call returns them, and the error is raised by the next call of
    :meth:`feed` or :meth:`close`. Once failed, every call raises the same error.

    Raw mode, for proxies: :meth:`feed_raw` parses exactly like :meth:`feed` and returns,
    with each event, its original bytes, which a proxy can forward as they are. A parser
    is used with one of the two for its whole life; :meth:`close` ends either. In raw
    mode, ``max_event_size`` also bounds the bytes of each event.

    Args:
        max_event_size: the largest line, and the largest data of one event, in bytes.

    Raises:
        ValueError: ``max_event_size`` is not a positive int.
    """

    __slots__ = (
        "_checkpoint",
        "_closed",
        "_data_lines",
        "_data_size",
        "_error",
        "_event_retry",
        "_event_type",
        "_event_types",
        "_feed_refused",
        "_head",
        "_id_buffer",
        "_last_event_id",
        "_max_event_size",
        "_pending",
        "_pieces",
        "_plain",
        "_raw_kept",
        "_raw_kept_size",
        "_raw_pieces",
        "_raw_plain",
        "_raw_refused",
        "_raw_retry",
        "_raw_size",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, max_event_size: int = 1_048_576) -> None:
        if (
            not isinstance(max_event_size, int)
            or isinstance(max_event_size, bool)
            or max_event_size <= 0
        ):
            raise ValueError(f"max_event_size must be a positive int, got {max_event_size!r}")
        self._max_event_size = max_event_size
        # The unfinished line: LF-normalised chunks, and their total length.
        self._pieces: list[bytes | bytearray] = []
        self._pending = 0
        self._checkpoint = min(max_event_size, _COMPACT_STEP)
        # The event being built (WHATWG "data buffer", "event type buffer").
        self._data_lines: list[bytes] = []
        self._data_size = 0
        self._event_type = ""
        self._event_retry: int | None = None
        self._event_types: dict[bytes, str] = {}
        # WHATWG "last event ID buffer", and "last event ID string" (set at dispatch).
        self._id_buffer = ""
        self._last_event_id = ""
        self._retry: int | None = None
        # The first bytes of the stream while they could still be a byte order mark.
        self._head: bytes | None = b""
        # The previous chunk ended with CR: an LF starting this one ends no line.
        self._skip_lf = False
        self._closed = False
        self._error: SSEEventTooLarge | None = None
        # True when feed() may skip the BOM / CR / closed / failed / mode checks.
        self._plain = False
        # After close(), or once the other method has been called (the first call fixes
        # the mode, where it drops a byte order mark: checking costs nothing after it).
        self._feed_refused = False
        self._raw_refused = False
        # The same as _plain, for feed_raw().
        self._raw_plain = False
        # The original bytes of the block being built, from its first line that is not a
        # comment up to the unfinished line (which is in _pieces: it has no line ending,
        # so it is the same in both forms).
        self._raw_pieces: list[bytes | bytearray] = []
        # Blocks kept for the next event because they changed the last event ID or the
        # reconnection time: (bytes, still the last to set the id, ... the retry). At
        # most two: a later block that sets the same thing replaces the earlier one.
        self._raw_kept: list[tuple[bytes, bool, bool]] = []
        self._raw_kept_size = 0
        # The bytes of the event being built: kept blocks, then _raw_pieces.
        self._raw_size = 0
        # The reconnection time when the block being built began.
        self._raw_retry: int | None = None

    @property
    def last_event_id(self) -> str:
        """The ID to send as ``Last-Event-ID`` when reconnecting, or ``""``.

        This is the WHATWG "last event ID string": the last event ID buffer as it was
        at the most recent blank line. An ``id`` field of an event that the stream did
        not finish does not count.
        """
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The most recent valid ``retry`` value (reconnection time, in ms), or ``None``.

        Updated as soon as the ``retry`` line is complete, even if its event is never
        dispatched.
        """
        return self._retry

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

        For a proxy that forwards events without decoding and re-encoding them. The bytes
        of an event are its block, from its first line that is not a comment through the
        line ending of the blank line that dispatched it: comments after that first line,
        unknown fields, ``id`` and ``retry`` lines and line endings (CR, LF, CRLF)
        untouched. Sending the bytes of every event, in order, to a client makes the
        client's parser produce the same events, ``id`` and ``retry`` included.

        A block that dispatches nothing (a ``: keep-alive`` comment; ``event: x`` with
        no data) is dropped, and so are comment lines before a block's first field: the
        parser holds none of them, so keep-alives never accumulate. A block that changed
        the last event ID or the reconnection time (``id: 7`` alone) is kept: the bytes
        of the next event start with it, so that the client sees the same ids. Only the
        last block to set the id and the last to set the retry are kept (at most two).
        Kept blocks that no event follows before the end of the stream are never
        returned.

        Each block in an event's bytes is a slice of the stream, with two exceptions,
        both harmless to a parser. The leading byte order mark of the stream is not part
        of any event. When a chunk ends between the CR and the LF of the CRLF that ends a
        block, the block ends at once, as :meth:`feed` ends it, so its bytes end with the
        CR and the LF is dropped. One trap: a client's parser takes bytes that start its
        stream with a byte order mark (an event whose first line starts with U+FEFF, an
        unknown field here) for the stream's BOM; a proxy that forwards such events first
        sends a BOM of its own.

        Args:
            data: the next bytes of the body, split anywhere. A ``bytearray`` or
                ``memoryview`` is accepted too, and copied.

        Returns:
            ``(event, raw_bytes)`` for each event that this chunk completed, in order.

        Raises:
            SSEEventTooLarge: the bytes of an event (kept blocks included, the blank
                line that ends it not) are longer than ``max_event_size``, now or in an
                earlier call. This bounds lines and data too, a little more tightly than
                :meth:`feed` does; a dropped comment is bounded as a line, as by
                :meth:`feed`. As for :meth:`feed`, the events completed before the
                offending one are returned first, and the next call raises.
            RuntimeError: :meth:`close` was called before, or :meth:`feed` was used on
                this parser.
            TypeError: ``data`` is a ``str``.
        """
        # The same fast path as feed()'s: an LF-only chunk once the first bytes are past.
        if self._raw_plain and data.__class__ is bytes and not data.partition(b"\r")[1]:
            if not data.partition(b"\n")[1]:
                self._pieces.append(data)
                self._pending += len(data)
                if self._pending > self._checkpoint:
                    self._raw_line_grew()
                return []
            return self._feed_raw_lines(data, False)
        return self._feed_raw_slow(data)

    def close(self) -> list[ServerSentEvent]:
        """Mark the end of the stream.

        As the standard says, an event without its terminating blank line is
        discarded, and so is an unterminated last line: this returns ``[]``, in raw
        mode too (where blocks kept for an event that never came are dropped). Calling
        it again does nothing.

        Returns:
            ``[]``: the end of the stream completes no event.

        Raises:
            SSEEventTooLarge: an earlier :meth:`feed` or :meth:`feed_raw` failed (see
                the class docstring).
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        self._closed = True
        self._feed_refused = self._raw_refused = True
        self._plain = False
        self._pieces = []
        self._pending = 0
        self._data_lines = []
        self._data_size = 0
        self._event_type = ""
        self._event_retry = None
        self._head = None
        self._raw_plain = False
        self._raw_pieces = []
        self._raw_kept = []
        self._raw_kept_size = 0
        self._raw_size = 0
        return []

    # -- the slow path: first bytes, CR line endings, closed or failed parser --------

    def _feed_slow(self, data: bytes) -> list[ServerSentEvent]:
        # Every chunk of a CRLF stream comes here: it checks no more than it must.
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._feed_refused or data.__class__ is not bytes:
            data = self._checked(data, "feed", self._feed_refused)
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

    def _checked(self, data: bytes, method: str, refused: bool) -> bytes:
        """``data`` as bytes, once ``method`` may be called: not failed, not refused."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        if refused and self._closed:
            raise RuntimeError(
                f"SSEParser.{method}() called after close(); use a new SSEParser for a new stream"
            )
        if refused:
            other = "feed_raw" if method == "feed" else "feed"
            raise RuntimeError(
                f"SSEParser.{method}() called on a parser used with {other}(); a parser "
                "works in one mode for its whole life: use a new SSEParser"
            )
        if data.__class__ is not bytes:
            chunk: object = data  # the annotation says bytes; a caller may not
            if isinstance(chunk, str):
                raise TypeError(f"SSEParser.{method}() takes bytes, got str: pass the raw body")
            data = bytes(data)  # a bytearray could change under us while buffered
        return data

    def _after_head(self, data: bytes) -> bytes:
        """Drop a leading byte order mark, even split across chunks."""
        data = self._head + data if self._head else data
        if len(data) < len(_BOM) and _BOM.startswith(data):
            self._head = data  # could still become a byte order mark
            return b""
        self._head = None
        return data[len(_BOM) :] if data.startswith(_BOM) else data

    def _fail(self, error: SSEEventTooLarge) -> None:
        self._error = error
        self._plain = False
        self._raw_plain = False
        raise error

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

    # -- raw mode: feed_raw() ---------------------------------------------------------
    #
    # The bytes of the event being built are kept in _raw_pieces as they came; the line
    # machine above them is the one feed() uses. A chunk is handled in one of three
    # forms: LF-only (the fast paths of feed()); CRLF-only, parsed in its LF form whose
    # bytes are turned back into CRLF ("crlf"); any other mix of CR, LF and CRLF, cut
    # into blocks by a regular expression ("mixed").

    def _feed_raw_slow(self, data: bytes) -> list[tuple[ServerSentEvent, bytes]]:
        data = self._checked(data, "feed_raw", self._raw_refused)
        if self._head is not None:
            self._feed_refused = True  # the first call: this parser is for feed_raw()
            data = self._after_head(data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]  # the LF of a CRLF split across chunks
                if self._raw_pieces:  # else it ended a block already returned or dropped
                    self._raw_pieces.append(b"\n")
                    self._raw_size += 1
                    limit = self._max_event_size
                    if self._raw_size > limit:
                        size = self._raw_size
                        self._fail(_too_large("the bytes of an unfinished event", size, limit))
                    self._checkpoint = min(limit - self._raw_size, _COMPACT_STEP)
        cr = data.find(b"\r") >= 0
        if cr:
            self._skip_lf = data[-1] == 0x0D
        self._raw_plain = self._head is None and not self._skip_lf
        if cr or data.find(b"\n") >= 0:
            return self._feed_raw_lines(data, cr)
        if data:
            self._pieces.append(data)
            self._pending += len(data)
            if self._pending > self._checkpoint:
                self._raw_line_grew()
        return []

    def _raw_line_grew(self) -> None:
        """Like :meth:`_unfinished_line_grew`, for the bytes of the event being built."""
        pending = self._pending
        limit = self._max_event_size
        if self._dropped_line():
            if pending > limit:
                self._fail(_too_large("an unfinished line", pending, limit))
            budget = limit
        else:
            if self._raw_size + pending > limit:
                size = self._raw_size + pending
                self._fail(_too_large("the bytes of an unfinished event", size, limit))
            budget = limit - self._raw_size
        _compact(self._pieces)
        self._checkpoint = min(budget, pending + _COMPACT_STEP)

    def _dropped_line(self) -> bool:
        """Whether the unfinished line is a comment that starts a block: dropped, so
        only the limit on a line applies to it, as in :meth:`feed`."""
        return not self._raw_pieces and bool(self._pieces) and self._pieces[0][:1] == b":"

    def _raw_budget(self) -> int:
        """How long the unfinished line may grow before :meth:`_raw_line_grew` checks."""
        if self._dropped_line():
            return self._max_event_size
        return self._max_event_size - self._raw_size

    def _feed_raw_lines(self, data: bytes, cr: bool) -> list[tuple[ServerSentEvent, bytes]]:
        """Parse ``data``, which has a line ending, and has no CR unless ``cr``."""
        end = (max(data.rfind(b"\n"), data.rfind(b"\r")) if cr else data.rfind(b"\n")) + 1
        limit = self._max_event_size
        pieces = self._pieces
        if pieces:
            pieces.append(data)
            data = b"".join(pieces)
            end += self._pending
            pieces.clear()
        # data[:end] is complete lines; data[end:] is the start of the next line.
        crlf = mixed = False
        if cr:
            line_endings = data.count(b"\n")
            if data.count(b"\r") == line_endings == data.count(b"\r\n"):
                data = data.replace(b"\r\n", b"\n")
                end -= line_endings
                crlf = True
            else:
                mixed = True
        pairs: list[tuple[ServerSentEvent, bytes]] = []
        try:
            start = self._raw_blocks(data, end, crlf, mixed, pairs)
            # data[start:] belongs to the block being built; its bytes start at its
            # first line that is not a comment.
            first = start if self._raw_pieces else _skip_comments(data, start, end, mixed)
            raw = data[first:end]
            if crlf:
                raw = raw.replace(b"\n", b"\r\n")
            pending = len(data) - end
            if first < end or self._raw_pieces or data[end : end + 1] != b":":
                size = self._raw_size + len(raw) + pending
                if size > limit:
                    raise _too_large("the bytes of an unfinished event", size, limit)
            elif pending > limit:  # a comment that starts a block: dropped, but a line
                raise _too_large("an unfinished line", pending, limit)
            if start < end:
                if mixed:
                    lines = data[start:end].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                    self._parse_span(lines, 0, len(lines), [])
                else:
                    self._parse_span(data, start, end, [])
                if first < end:
                    self._keep_raw(raw)
        except SSEEventTooLarge as error:
            self._error = error
            self._raw_plain = False
            if not pairs:
                raise
            return pairs  # what came before the offending event; the error comes next
        if pending:
            pieces.append(data[end:])
        self._pending = pending
        self._checkpoint = min(self._raw_budget(), pending + _COMPACT_STEP)
        return pairs

    def _keep_raw(self, piece: bytes) -> None:
        raw_pieces = self._raw_pieces
        raw_pieces.append(piece)
        self._raw_size += len(piece)
        if len(raw_pieces) > _RAW_PIECES:
            _compact(raw_pieces)  # many lines, each in its own chunk

    def _raw_blocks(
        self,
        data: bytes,
        end: int,
        crlf: bool,
        mixed: bool,
        pairs: list[tuple[ServerSentEvent, bytes]],
    ) -> int:
        """Finish the blocks that end in ``data[:end]``; return where the next one starts.

        ``data`` starts at a line start. Blocks of the usual shapes go through
        :meth:`_simple_events`, as in :meth:`feed`; the others one by one.
        """
        if mixed:
            position = 0
            while (match := _BLOCK.match(data, position, end)) is not None:
                stop = match.end()
                self._raw_block(data, position, stop, False, True, pairs)
                position = stop
            return position
        last_blank = data.rfind(b"\n\n")
        # If data starts a block, no event is half-built: all may be usual.
        if (
            not self._raw_pieces
            and not self._raw_kept
            and last_blank >= 0
            and self._raw_simple(data, 0, last_blank, crlf, pairs)
        ):
            return last_blank + 2
        if data[0] == 0x0A:
            first = 1  # a blank line at once
        elif last_blank < 0:
            return 0
        else:
            first = data.find(b"\n\n") + 2
        self._raw_block(data, 0, first, crlf, False, pairs)
        position = first
        last = max(last_blank + 2, first)
        if (
            position < last_blank
            and not self._raw_pieces
            and not self._raw_kept
            and self._raw_simple(data, position, last_blank, crlf, pairs)
        ):
            return last
        while position < last:
            stop = position + 1 if data[position] == 0x0A else data.find(b"\n\n", position) + 2
            self._raw_block(data, position, stop, crlf, False, pairs)
            position = stop
        return last

    def _raw_simple(
        self,
        data: bytes,
        start: int,
        last_blank: int,
        crlf: bool,
        pairs: list[tuple[ServerSentEvent, bytes]],
    ) -> bool:
        """The events of ``data[start:last_blank]`` if it has a usual shape."""
        # The region bounds the bytes of each event, which are checked no further; a
        # CRLF-only region was up to twice as long.
        if (last_blank - start + 1) * (2 if crlf else 1) > self._max_event_size:
            return False
        raws: list[bytes] = []
        events = self._simple_events(data, start, last_blank, raws)
        if events is None:
            return False
        if crlf:
            raws = [raw.replace(b"\n", b"\r\n") for raw in raws]
        pairs += zip(events, raws, strict=True)
        self._last_event_id = self._id_buffer
        return True

    def _raw_block(
        self,
        data: bytes,
        start: int,
        stop: int,
        crlf: bool,
        mixed: bool,
        pairs: list[tuple[ServerSentEvent, bytes]],
    ) -> None:
        """Finish the block that ``data[start:stop]`` ends; return, keep or drop it."""
        raw_pieces = self._raw_pieces
        first = start if raw_pieces else _skip_comments(data, start, stop, mixed)
        raw = data[first:stop]
        if crlf:
            raw = raw.replace(b"\n", b"\r\n")
        # The blank line does not count: a CRLF split across chunks loses its LF.
        blank = 2 if (crlf or mixed) and raw.endswith(b"\r\n") else 1
        # Nothing but the blank line (no field, maybe comments): dropped, never counted.
        if raw_pieces or len(raw) > blank:
            checked = self._raw_size + len(raw) - blank
            if checked > self._max_event_size:
                raise _too_large("the bytes of an event", checked, self._max_event_size)
        last_event_id = self._last_event_id  # as of the block's start: set at blank lines
        retry = self._raw_retry
        events: list[ServerSentEvent] = []
        if mixed:
            lines = data[start:stop].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            self._parse_span(lines, 0, len(lines), events)
        else:
            self._parse_span(data, start, stop, events)
        self._raw_retry = self._retry
        kept = self._raw_kept
        if events:
            if raw_pieces or kept:
                raw = b"".join([*(block for block, _, _ in kept), *raw_pieces, raw])
                raw_pieces.clear()
                kept.clear()
                self._raw_kept_size = self._raw_size = 0
            pairs.append((events[0], raw))
            return
        sets_id = self._last_event_id != last_event_id
        sets_retry = self._retry != retry
        if sets_id or sets_retry:
            # The client must see this id or retry: the next event's bytes start with it.
            self._keep_block(b"".join([*raw_pieces, raw]), sets_id, sets_retry)
        raw_pieces.clear()
        self._raw_size = self._raw_kept_size

    def _keep_block(self, block: bytes, sets_id: bool, sets_retry: bool) -> None:
        """Keep ``block`` for the next event, in place of the blocks it supersedes.

        A kept block stays while it is the last to have set the id or the retry:
        comments and blocks that change nothing are never kept, so a long stream of
        keep-alives, or of ``id:``-only blocks, holds at most two blocks.
        """
        kept = [
            (kept_block, sets_kept_id and not sets_id, sets_kept_retry and not sets_retry)
            for kept_block, sets_kept_id, sets_kept_retry in self._raw_kept
        ]
        kept = [entry for entry in kept if entry[1] or entry[2]]
        kept.append((block, sets_id, sets_retry))
        self._raw_kept = kept
        self._raw_kept_size = sum(len(entry[0]) for entry in kept)

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

    def _parse_span(self, data: bytes, start: int, end: int, events: list[ServerSentEvent]) -> None:
        """Parse the complete lines ``data[start:end]`` one by one."""
        lines = data[start:end].split(b"\n")
        lines.pop()  # the empty string after the last LF
        if end - start > self._max_event_size:
            self._parse_long_lines(lines, events)
        else:
            self._parse_lines(lines, events)

    def _simple_events(
        self, data: bytes, start: int, last_blank: int, raws: list[bytes] | None = None
    ) -> list[ServerSentEvent] | None:
        """The events of ``data[start:last_blank]`` if it has a usual shape, else None.

        The usual shapes: every event is one ``data: `` line (OpenAI), or one
        ``event: `` line and one ``data: `` line (Anthropic). Splitting on the
        separator between events and counting the LFs proves the shape without a
        Python loop over lines. The caller checked that no event is half-built.
        In raw mode, the bytes of each event are added to ``raws``, rebuilt from the
        pieces of the split: cheaper than cutting them out of ``data``.
        """
        event_id = self._id_buffer
        if data[start : start + 6] == b"data: ":
            region = data[start + 6 : last_blank]
            payloads = region.split(b"\n\ndata: ")
            # Every LF is in a separator: each event is exactly one data line.
            if region.count(b"\n") != 2 * len(payloads) - 2:
                return None
            if raws is not None:
                raws += [b"data: %b\n\n" % payload for payload in payloads]
            try:
                return [
                    _new_tuple(ServerSentEvent, ("message", payload.decode(), event_id, None))
                    for payload in payloads
                ]
            except UnicodeDecodeError:
                return [
                    _new_tuple(
                        ServerSentEvent,
                        ("message", payload.decode("utf-8", "replace"), event_id, None),
                    )
                    for payload in payloads
                ]
        if data[start : start + 7] == b"event: ":
            region = data[start + 7 : last_blank]
            blocks = region.split(b"\n\nevent: ")
            # One LF per event besides the separators; each must start a data line.
            if region.count(b"\n") != 3 * len(blocks) - 2:
                return None
            event_types = self._event_types
            events: list[ServerSentEvent] = []
            for block in blocks:
                name, separator, payload = block.partition(b"\ndata: ")
                if not separator:
                    return None
                events.append(
                    _new_tuple(
                        ServerSentEvent,
                        (
                            event_types.get(name) or self._decode_event_type(name) or "message",
                            payload.decode("utf-8", "replace"),
                            event_id,
                            None,
                        ),
                    )
                )
            if raws is not None:
                raws += [b"event: %b\n\n" % block for block in blocks]
            return events
        return None

    def _decode_event_type(self, name: bytes) -> str:
        """Decode an event type, remembering a few: streams repeat the same ones."""
        event_type = name.decode("utf-8", "replace")
        if len(self._event_types) < _EVENT_TYPE_CACHE_SIZE:
            self._event_types[name] = event_type
        return event_type

    def _parse_long_lines(self, lines: list[bytes], events: list[ServerSentEvent]) -> None:
        """Like :meth:`_parse_lines`, but stop with an error at a line over the limit."""
        limit = self._max_event_size
        for index, line in enumerate(lines):
            if len(line) > limit:
                self._parse_lines(lines[:index], events)
                raise _too_large("a line", len(line), limit)
        self._parse_lines(lines, events)

    def _parse_lines(self, lines: list[bytes], events: list[ServerSentEvent]) -> None:
        """The WHATWG line loop, over complete lines without their terminator."""
        data_lines = self._data_lines
        data_size = self._data_size
        event_type = self._event_type
        event_retry = self._event_retry
        id_buffer = self._id_buffer
        last_event_id = self._last_event_id
        event_types = self._event_types
        limit = self._max_event_size
        append_event = events.append
        try:
            for line in lines:
                if not line:
                    # A blank line dispatches the event, if it has data.
                    last_event_id = id_buffer
                    if data_lines:
                        append_event(
                            _new_tuple(
                                ServerSentEvent,
                                (
                                    event_type or "message",
                                    (
                                        data_lines[0]
                                        if len(data_lines) == 1
                                        else b"\n".join(data_lines)
                                    ).decode("utf-8", "replace"),
                                    id_buffer,
                                    event_retry,
                                ),
                            )
                        )
                        data_lines = []
                        data_size = 0
                    event_type = ""
                    event_retry = None
                    continue
                if line[:6] == b"data: ":  # the most common line, first
                    value = line[6:]
                    name = b"data"
                else:
                    name, _, value = line.partition(b":")
                    if not name:
                        continue  # a comment
                    if value[:1] == b" ":
                        value = value[1:]
                if name == b"data":
                    data_lines.append(value)
                    data_size += len(value) + 1  # the data, and an LF per line
                    if data_size > limit + 1:
                        raise _too_large("the data of an event", data_size - 1, limit)
                elif name == b"event":
                    event_type = event_types.get(value) or self._decode_event_type(value)
                elif name == b"id":
                    if value.find(b"\0") < 0:
                        id_buffer = value.decode("utf-8", "replace")
                elif name == b"retry" and value.isdigit():  # ASCII digits only
                    try:
                        event_retry = int(value)
                    except ValueError:  # more digits than int() converts
                        continue
                    self._retry = event_retry
        finally:
            self._data_lines = data_lines
            self._data_size = data_size
            self._event_type = event_type
            self._event_retry = event_retry
            self._id_buffer = id_buffer
            self._last_event_id = last_event_id


def encode(event: ServerSentEvent) -> bytes:
    """Encode one event as the bytes a server sends.

    Writes an ``event:`` line unless the type is ``"message"`` (or empty), an ``id:``
    line if the id is not empty, a ``retry:`` line if retry is set, one ``data:`` line
    per line of data, and the blank line that dispatches the event. CRLF, CR and LF in
    ``data`` all separate lines, as they do for the parser: a receiver gets them back
    as LF (a CR cannot be sent inside SSE data). Empty data still gives one ``data:``
    line, so the event is dispatched.

    Args:
        event: the event to encode.

    Returns:
        The UTF-8 bytes of the event.

    Raises:
        ValueError: the event type or id contains CR or LF, or the id contains NUL
            (each would let a value inject fields); retry is negative; or a string
            cannot be encoded as UTF-8 (``UnicodeEncodeError``, for a lone surrogate).
    """
    parts: list[str] = []
    event_type = event.event
    if event_type and event_type != "message":
        if "\r" in event_type or "\n" in event_type:
            raise ValueError(f"event type must not contain CR or LF, got {event_type!r}")
        parts.append(f"event: {event_type}\n")
    event_id = event.id
    if event_id:
        if "\r" in event_id or "\n" in event_id or "\0" in event_id:
            raise ValueError(f"event id must not contain CR, LF or NUL, got {event_id!r}")
        parts.append(f"id: {event_id}\n")
    retry = event.retry
    if retry is not None:
        if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
            raise ValueError(f"event retry must be a non-negative int or None, got {retry!r}")
        parts.append(f"retry: {retry}\n")
    data = event.data
    if "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n")
    parts.append("data: ")
    parts.append(data.replace("\n", "\ndata: "))
    parts.append("\n\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """Encode a comment line, for example a keep-alive, followed by a blank line.

    The blank line dispatches nothing (a comment carries no data) but resets the event
    type, so send comments between events, not inside one.

    Args:
        text: the comment; ``""`` gives ``b":\\n\\n"``.

    Returns:
        ``b": text\\n\\n"`` in UTF-8.

    Raises:
        ValueError: the text contains CR or LF.
    """
    if "\r" in text or "\n" in text:
        raise ValueError(f"comment text must not contain CR or LF, got {text!r}")
    return f": {text}\n\n".encode() if text else b":\n\n"


def is_done(event: ServerSentEvent) -> bool:
    """Tell whether ``event`` is the ``data: [DONE]`` terminator of an OpenAI stream.

    Args:
        event: a parsed event.

    Returns:
        True if the event's data is exactly :data:`OPENAI_DONE`.
    """
    return event.data == OPENAI_DONE
