"""Raw mode, for proxies: :class:`RawSSEParser` and the :class:`RawBatch` it returns.

A proxy parses its upstream's events (to route them, spot ``[DONE]``, log them) and
forwards their original bytes instead of re-encoding them. What "the bytes of an event"
are, which blocks are dropped or kept, and the limits: see docs/sse.md, "Raw mode".

Why a batch: a proxy writes what one upstream read completed in one write, so
:meth:`RawSSEParser.feed` returns the events with the concatenation of their bytes as
one ``bytes``, and builds no per-event bytes. On the usual shapes (every event one
``data:`` line, or one ``event:`` and one ``data:`` line) that concatenation is one
slice of the chunk: 47 ns for a read of 10 OpenAI-sized events, against 576 ns to build
each event's bytes (``b"data: %b\\n\\n" % payload``, the cheapest per-event form; an
offsets list to cut them out of the batch later costs 350-500 ns more, so the batch
keeps none). Other blocks are sliced one by one and joined once per call. Per-event
pairs, for :meth:`~streammgr.sse.SSEParser.feed_raw`, come from :meth:`feed_pairs`,
which runs the same parse and builds each event's bytes as before. In
benchmarks/bench_sse.py, ``feed`` takes 0.87x the time of ``feed_pairs`` on 1-4 KiB
reads; on 7-16 byte reads 1.1x, as a new batch costs 40 ns more than ``[]`` and most
such reads complete nothing (a shared empty batch would be a shared mutable list).

A batch is a ``list`` of its events, so that code written for ``SSEParser.feed()``
takes it as it is, and ``if batch:`` means what it says (a ``(events, raw)`` tuple
would always be true).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .._errors import SSEEventTooLarge
from ._event import ServerSentEvent
from ._lines import _COMPACT_STEP, _compact, _LineParser, _too_large

# Complete lines of a raw event kept as separate pieces before they are compacted.
_RAW_PIECES = 16
# One block, in raw mode, from a line start: non-blank lines, then a blank line.
# Possessive: backtracking could split a CRLF into a line ending and a blank line.
_BLOCK = re.compile(rb"(?:[^\r\n]++(?:\r\n?+|\n))*+(?:\r\n?+|\n)")


class RawBatch(list[ServerSentEvent]):
    """The events that one :meth:`RawSSEParser.feed` call completed, and their bytes.

    A ``list`` of the events, in order, with :attr:`raw`: the concatenation of each
    event's original bytes, to forward in one write. ``raw`` is empty exactly when the
    batch is. Equality is the list's: it compares the events, not ``raw``.

    Args:
        events: the events.
        raw: the concatenation of their bytes.
        plain: whether ``raw`` is known to hold only ``data:`` lines (and ``event:``
            lines), so no ``id`` or ``retry`` field: only a parser that proved it says so.

    Attributes:
        raw: the bytes of the events, in order, in one piece.
        plain: ``True`` when :class:`RawSSEParser` proved that every event is one
            ``data:`` line, or one ``event:`` and one ``data:`` line (its fast path's
            shapes): a proxy that must never forward an ``id`` or ``retry`` field
            need not look for one. ``False`` says nothing.
    """

    __slots__ = ("plain", "raw")
    raw: bytes
    plain: bool

    def __init__(
        self, events: Iterable[ServerSentEvent] = (), raw: bytes = b"", plain: bool = False
    ) -> None:
        super().__init__(events)
        self.raw = raw
        self.plain = plain

    def __repr__(self) -> str:
        return f"RawBatch({list.__repr__(self)}, raw={self.raw!r})"


# Makes an empty batch without going through __init__: about half the cost.
_new_list = list.__new__
# What RawSSEParser._feed_lines() is given for a batch when it returns pairs: untouched.
_UNUSED_EVENTS: list[ServerSentEvent] = []
_UNUSED_RAWS: list[bytes] = []


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


class RawSSEParser(_LineParser):
    """Incremental, sans-IO parser that returns events with their original bytes.

    It parses exactly like :class:`~streammgr.sse.SSEParser` (same events, same
    ``last_event_id`` and ``retry``, whatever the chunking) and returns, with the
    events, the bytes the upstream sent for them: see docs/sse.md, "Raw mode".
    :meth:`feed` and :meth:`feed_pairs` differ only in the shape of what they return
    and may be mixed. ``max_event_size`` also bounds the bytes of each event; a failure
    is deferred, as in :class:`~streammgr.sse.SSEParser`.

    Args:
        max_event_size: the largest event's bytes (kept blocks included, the blank line
            that ends it not), and the largest dropped comment line, in bytes.

    Raises:
        ValueError: ``max_event_size`` is not a positive int.
    """

    __slots__ = (
        "_block_pieces",
        "_block_retry",
        "_event_size",
        "_kept",
        "_kept_cr",
        "_kept_size",
        "_other_block",
    )

    def __init__(self, max_event_size: int = 1_048_576) -> None:
        super().__init__(max_event_size)
        # The original bytes of the block being built, from its first line that is not a
        # comment up to the unfinished line (which is in _pieces: it has no line ending,
        # so it is the same in both forms).
        self._block_pieces: list[bytes | bytearray] = []
        # Blocks kept for the next event because they changed the last event ID or the
        # reconnection time: (bytes, still the last to set the id, ... the retry). At
        # most two: a later block that sets the same thing replaces the earlier one.
        self._kept: list[tuple[bytes, bool, bool]] = []
        self._kept_size = 0
        # The last block was kept and ended with a CR: if an LF starts the next chunk,
        # the block's blank line was a CRLF, and it counts as one (see _prepared).
        self._kept_cr = False
        # The bytes of the event being built: kept blocks, then _block_pieces.
        self._event_size = 0
        # The reconnection time when the block being built began.
        self._block_retry: int | None = None
        # An event of this feed() came from _block, not _simple: its batch is not plain.
        self._other_block = False

    @property
    def last_event_id(self) -> str:
        """The ID to send as ``Last-Event-ID`` when reconnecting, or ``""``."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The most recent valid ``retry`` value (reconnection time, in ms), or ``None``."""
        return self._retry

    def feed(self, data: bytes) -> RawBatch:
        """Parse the next chunk; return its events and their bytes in one piece.

        Args:
            data: the next bytes of the body, split anywhere. A ``bytearray`` or
                ``memoryview`` is accepted too, and copied.

        Returns:
            The events that this chunk completed, in order (often none), with ``.raw``
            the concatenation of their bytes.

        Raises:
            SSEEventTooLarge: the bytes of an event are longer than ``max_event_size``,
                now or in an earlier call (events completed before it are returned
                first; the next call raises).
            RuntimeError: :meth:`close` was called before.
            TypeError: ``data`` is a ``str``.
        """
        # The fast path of SSEParser.feed(): an LF-only chunk once the first bytes are past.
        if self._plain and data.__class__ is bytes and not data.partition(b"\r")[1]:
            if not data.partition(b"\n")[1]:
                self._pieces.append(data)
                self._pending += len(data)
                if self._pending > self._checkpoint:
                    self._line_grew()
                batch = _new_list(RawBatch)
                batch.raw = b""
                batch.plain = True
                return batch
            cr = False
        else:
            prepared = self._prepared(data, "RawSSEParser.feed")
            if prepared is None:
                batch = _new_list(RawBatch)
                batch.raw = b""
                batch.plain = True
                return batch
            data, cr = prepared
        batch = _new_list(RawBatch)
        raws: list[bytes] = []
        self._feed_lines(data, cr, batch, raws, None)
        batch.raw = b"".join(raws)
        # Plain unless an event came another way than _simple's proven shapes.
        if self._other_block:
            self._other_block = False
            batch.plain = False
        else:
            batch.plain = True
        return batch

    def feed_pairs(self, data: bytes) -> list[tuple[ServerSentEvent, bytes]]:
        """Parse the next chunk like :meth:`feed`; return each event with its own bytes.

        Args:
            data: as for :meth:`feed`.

        Returns:
            ``(event, raw_bytes)`` for each event that this chunk completed, in order.

        Raises:
            SSEEventTooLarge: as for :meth:`feed`.
            RuntimeError: :meth:`close` was called before.
            TypeError: ``data`` is a ``str``.
        """
        if self._plain and data.__class__ is bytes and not data.partition(b"\r")[1]:
            if not data.partition(b"\n")[1]:
                self._pieces.append(data)
                self._pending += len(data)
                if self._pending > self._checkpoint:
                    self._line_grew()
                return []
            return self._pairs(data, False)
        prepared = self._prepared(data, "RawSSEParser.feed_pairs")
        if prepared is None:
            return []
        return self._pairs(*prepared)

    def close(self) -> RawBatch:
        """Mark the end of the stream.

        An unfinished event, and blocks kept for an event that never came, are dropped.
        Calling it again does nothing.

        Returns:
            An empty batch: the end of the stream completes no event.

        Raises:
            SSEEventTooLarge: an earlier :meth:`feed` or :meth:`feed_pairs` failed.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        self._clear()
        self._block_pieces = []
        self._kept = []
        self._kept_size = 0
        self._event_size = 0
        return RawBatch(plain=True)

    # -- the slow path: first bytes, CR line endings, closed or failed parser --------
    #
    # The bytes of the event being built are kept in _block_pieces as they came; the
    # line machine above them is SSEParser's. A chunk is handled in one of three forms:
    # LF-only (the fast paths of SSEParser); CRLF-only, parsed in its LF form whose
    # bytes are turned back into CRLF ("crlf"); any other mix of CR, LF and CRLF, cut
    # into blocks by a regular expression ("mixed").

    def _pairs(self, data: bytes, cr: bool) -> list[tuple[ServerSentEvent, bytes]]:
        """:meth:`feed_pairs` once ``data`` is checked; the fast path of
        :meth:`SSEParser.feed_raw <streammgr.sse.SSEParser.feed_raw>` calls it too."""
        pairs: list[tuple[ServerSentEvent, bytes]] = []
        self._feed_lines(data, cr, _UNUSED_EVENTS, _UNUSED_RAWS, pairs)
        return pairs

    def _prepared(self, data: bytes, method: str) -> tuple[bytes, bool] | None:
        """Check ``data`` and take a split CRLF off it; ``(data, has CR)``, or ``None``
        if it completes no line (it is then kept as the unfinished line)."""
        if self._error is not None or self._closed or data.__class__ is not bytes:
            data = self._checked(data, method)
        if self._head is not None:
            data = self._after_head(data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]  # the LF of a CRLF split across chunks
                if self._block_pieces or self._kept_cr:  # else it ended a block already
                    # returned or dropped. A kept block keeps its bytes (the reference,
                    # tests/sse_reference.py, cuts a split CRLF at the CR) but counts
                    # the LF, as it does when the CRLF comes in one chunk.
                    if self._block_pieces:
                        self._block_pieces.append(b"\n")
                    else:
                        self._kept_size += 1
                    self._event_size += 1
                    limit = self._max_event_size
                    if self._event_size > limit:
                        size = self._event_size
                        self._fail(_too_large("the bytes of an unfinished event", size, limit))
                    self._checkpoint = min(limit - self._event_size, _COMPACT_STEP)
            self._kept_cr = False
        cr = data.find(b"\r") >= 0
        if cr:
            self._skip_lf = data[-1] == 0x0D
        self._plain = self._head is None and not self._skip_lf
        if cr or data.find(b"\n") >= 0:
            return data, cr
        if data:
            self._pieces.append(data)
            self._pending += len(data)
            if self._pending > self._checkpoint:
                self._line_grew()
        return None

    def _line_grew(self) -> None:
        """The unfinished line passed a checkpoint: check the event's size, compact it.

        As in SSEParser, called every ``_COMPACT_STEP`` bytes, not per chunk.
        """
        pending = self._pending
        limit = self._max_event_size
        if self._dropped_line():
            if pending > limit:
                self._fail(_too_large("an unfinished line", pending, limit))
            budget = limit
        else:
            if self._event_size + pending > limit:
                size = self._event_size + pending
                self._fail(_too_large("the bytes of an unfinished event", size, limit))
            budget = limit - self._event_size
        _compact(self._pieces)
        self._checkpoint = min(budget, pending + _COMPACT_STEP)

    def _dropped_line(self) -> bool:
        """Whether the unfinished line is a comment that starts a block: dropped, so
        only the limit on a line applies to it, as in SSEParser."""
        return not self._block_pieces and bool(self._pieces) and self._pieces[0][:1] == b":"

    def _budget(self) -> int:
        """How long the unfinished line may grow before :meth:`_line_grew` checks."""
        if self._dropped_line():
            return self._max_event_size
        return self._max_event_size - self._event_size

    def _feed_lines(
        self,
        data: bytes,
        cr: bool,
        events: list[ServerSentEvent],
        raws: list[bytes],
        pairs: list[tuple[ServerSentEvent, bytes]] | None,
    ) -> None:
        """Parse ``data``, which has a line ending, and has no CR unless ``cr``.

        Adds ``(event, bytes)`` to ``pairs`` for each event it completes; or, if
        ``pairs`` is None, the event to ``events`` and pieces to ``raws`` whose
        concatenation is the bytes of the events (the batch).
        """
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
        try:
            start = self._blocks(data, end, crlf, mixed, events, raws, pairs)
            # data[start:] belongs to the block being built; its bytes start at its
            # first line that is not a comment.
            first = start if self._block_pieces else _skip_comments(data, start, end, mixed)
            raw = data[first:end]
            if crlf:
                raw = raw.replace(b"\n", b"\r\n")
            pending = len(data) - end
            if first < end or self._block_pieces or data[end : end + 1] != b":":
                size = self._event_size + len(raw) + pending
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
                    self._keep_piece(raw)
        except SSEEventTooLarge as error:
            self._error = error
            self._plain = False
            if not (events if pairs is None else pairs):
                raise
            return  # what came before the offending event; the error comes next
        if pending:
            pieces.append(data[end:])
        if self._kept_cr and (pending or start < end):
            self._kept_cr = False  # a line came after the kept block: its CR is not last
        self._pending = pending
        self._checkpoint = min(self._budget(), pending + _COMPACT_STEP)

    def _keep_piece(self, piece: bytes) -> None:
        block_pieces = self._block_pieces
        block_pieces.append(piece)
        self._event_size += len(piece)
        if len(block_pieces) > _RAW_PIECES:
            _compact(block_pieces)  # many lines, each in its own chunk

    def _blocks(
        self,
        data: bytes,
        end: int,
        crlf: bool,
        mixed: bool,
        events: list[ServerSentEvent],
        raws: list[bytes],
        pairs: list[tuple[ServerSentEvent, bytes]] | None,
    ) -> int:
        """Finish the blocks that end in ``data[:end]``; return where the next one starts.

        ``data`` starts at a line start. Blocks of the usual shapes go through
        :meth:`_simple`; the others one by one.
        """
        if mixed:
            position = 0
            while (match := _BLOCK.match(data, position, end)) is not None:
                stop = match.end()
                self._block(data, position, stop, False, True, events, raws, pairs)
                position = stop
            return position
        last_blank = data.rfind(b"\n\n")
        # If data starts a block, no event is half-built: all may be usual.
        if (
            not self._block_pieces
            and not self._kept
            and last_blank >= 0
            and self._simple(data, 0, last_blank, crlf, events, raws, pairs)
        ):
            return last_blank + 2
        if data[0] == 0x0A:
            first = 1  # a blank line at once
        elif last_blank < 0:
            return 0
        else:
            first = data.find(b"\n\n") + 2
        self._block(data, 0, first, crlf, False, events, raws, pairs)
        position = first
        last = max(last_blank + 2, first)
        if (
            position < last_blank
            and not self._block_pieces
            and not self._kept
            and self._simple(data, position, last_blank, crlf, events, raws, pairs)
        ):
            return last
        while position < last:
            stop = position + 1 if data[position] == 0x0A else data.find(b"\n\n", position) + 2
            self._block(data, position, stop, crlf, False, events, raws, pairs)
            position = stop
        return last

    def _simple(
        self,
        data: bytes,
        start: int,
        last_blank: int,
        crlf: bool,
        events: list[ServerSentEvent],
        raws: list[bytes],
        pairs: list[tuple[ServerSentEvent, bytes]] | None,
    ) -> bool:
        """The events of ``data[start:last_blank]`` if it has a usual shape."""
        # The region bounds the bytes of each event, which are checked no further; a
        # CRLF-only region was up to twice as long.
        if (last_blank - start + 1) * (2 if crlf else 1) > self._max_event_size:
            return False
        if pairs is None:
            simple = self._simple_events(data, start, last_blank)
            if simple is None:
                return False
            events += simple
            # Every event is exactly its block: their bytes are one slice.
            region = data[start : last_blank + 2]
            raws.append(region.replace(b"\n", b"\r\n") if crlf else region)
        else:
            own: list[bytes] = []
            simple = self._simple_events(data, start, last_blank, own)
            if simple is None:
                return False
            if crlf:
                own = [raw.replace(b"\n", b"\r\n") for raw in own]
            pairs += zip(simple, own, strict=True)
        self._last_event_id = self._id_buffer
        return True

    def _block(
        self,
        data: bytes,
        start: int,
        stop: int,
        crlf: bool,
        mixed: bool,
        events: list[ServerSentEvent],
        raws: list[bytes],
        pairs: list[tuple[ServerSentEvent, bytes]] | None,
    ) -> None:
        """Finish the block that ``data[start:stop]`` ends; return, keep or drop it."""
        block_pieces = self._block_pieces
        first = start if block_pieces else _skip_comments(data, start, stop, mixed)
        raw = data[first:stop]
        if crlf:
            raw = raw.replace(b"\n", b"\r\n")
        # The blank line does not count: a CRLF split across chunks loses its LF.
        blank = 2 if (crlf or mixed) and raw.endswith(b"\r\n") else 1
        # Nothing but the blank line (no field, maybe comments): dropped, never counted.
        if block_pieces or len(raw) > blank:
            checked = self._event_size + len(raw) - blank
            if checked > self._max_event_size:
                raise _too_large("the bytes of an event", checked, self._max_event_size)
        last_event_id = self._last_event_id  # as of the block's start: set at blank lines
        retry = self._block_retry
        found: list[ServerSentEvent] = []
        if mixed:
            lines = data[start:stop].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            self._parse_span(lines, 0, len(lines), found)
        else:
            self._parse_span(data, start, stop, found)
        self._block_retry = self._retry
        kept = self._kept
        if found:
            if block_pieces or kept:
                raw = b"".join([*(block for block, _, _ in kept), *block_pieces, raw])
                block_pieces.clear()
                kept.clear()
                self._kept_size = self._event_size = 0
            if pairs is None:
                events.append(found[0])
                raws.append(raw)
                self._other_block = True
            else:
                pairs.append((found[0], raw))
            self._kept_cr = False
            return
        sets_id = self._last_event_id != last_event_id
        sets_retry = self._retry != retry
        if sets_id or sets_retry:
            # The client must see this id or retry: the next event's bytes start with it.
            self._keep_block(b"".join([*block_pieces, raw]), sets_id, sets_retry)
        self._kept_cr = (sets_id or sets_retry) and raw.endswith(b"\r")
        block_pieces.clear()
        self._event_size = self._kept_size

    def _keep_block(self, block: bytes, sets_id: bool, sets_retry: bool) -> None:
        """Keep ``block`` for the next event, in place of the blocks it supersedes.

        A kept block stays while it is the last to have set the id or the retry:
        comments and blocks that change nothing are never kept, so a long stream of
        keep-alives, or of ``id:``-only blocks, holds at most two blocks.
        """
        kept = [
            (kept_block, sets_kept_id and not sets_id, sets_kept_retry and not sets_retry)
            for kept_block, sets_kept_id, sets_kept_retry in self._kept
        ]
        kept = [entry for entry in kept if entry[1] or entry[2]]
        kept.append((block, sets_id, sets_retry))
        self._kept = kept
        self._kept_size = sum(len(entry[0]) for entry in kept)
