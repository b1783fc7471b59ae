"""The line machine that both parsers share: WHATWG HTML 9.2.6 over LF-only bytes.

:class:`_LineParser` holds the state of the event being built (data buffer, event type,
last event ID, retry), the unfinished line and the byte order mark check, and parses
complete LF-terminated lines: the line loop (:meth:`_LineParser._parse_lines`) and the
fast path for the usual event shapes (:meth:`_LineParser._simple_events`). It turns no
CR into LF and returns nothing itself: :class:`~streammgr.sse.SSEParser` and
:class:`~streammgr.sse.RawSSEParser` feed it and decide what to return.
"""

from __future__ import annotations

from .._errors import SSEEventTooLarge
from ._event import ServerSentEvent, _new_tuple

_BOM = b"\xef\xbb\xbf"
_EVENT_TYPE_CACHE_SIZE = 64
# The longest event type remembered, in bytes: usual names are short, and remembering
# long ones would let a stream keep 64 lines of max_event_size for its whole life.
_EVENT_TYPE_CACHE_NAME = 64
# Bytes of an unfinished line between size checks and compactions of its pieces.
_COMPACT_STEP = 65_536


def _compact(pieces: list[bytes | bytearray]) -> None:
    """Join ``pieces`` in place into one bytearray, which later joins extend."""
    if len(pieces) > 1:
        head = pieces[0]
        compacted = head if isinstance(head, bytearray) else bytearray(head)
        compacted += b"".join(pieces[1:])
        pieces[:] = [compacted]


def _too_large(what: str, size: int, limit: int) -> SSEEventTooLarge:
    return SSEEventTooLarge(
        f"{what} of {size} bytes is larger than max_event_size={limit} bytes; "
        "raise max_event_size if the server legitimately sends events this large",
        max_event_size=limit,
    )


class _LineParser:
    """The state and the line machine of a parser; see the module docstring."""

    __slots__ = (
        "_checkpoint",
        "_closed",
        "_data_lines",
        "_data_size",
        "_error",
        "_event_retry",
        "_event_type",
        "_event_types",
        "_head",
        "_id_buffer",
        "_last_event_id",
        "_max_event_size",
        "_pending",
        "_pieces",
        "_plain",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, max_event_size: int) -> None:
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
        # True when the fast path may skip the BOM / CR / closed / failed checks.
        self._plain = False

    def _checked(self, data: bytes, method: str, other: str | None = None) -> bytes:
        """``data`` as bytes, once ``method`` (``"Class.name"``) may be called.

        Raises the parser's error, then :class:`RuntimeError` if it is closed or (when
        ``other`` names a method) in the mode of ``other``, then :class:`TypeError`.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        parser = method.partition(".")[0]
        if self._closed:
            raise RuntimeError(
                f"{method}() called after close(); use a new {parser} for a new stream"
            )
        if other is not None:
            raise RuntimeError(
                f"{method}() called on a parser used with {other}(); a parser "
                f"works in one mode for its whole life: use a new {parser}"
            )
        if data.__class__ is not bytes:
            chunk: object = data  # the annotation says bytes; a caller may not
            if isinstance(chunk, str):
                raise TypeError(f"{method}() takes bytes, got str: pass the raw body")
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
        raise error

    def _clear(self) -> None:
        """Drop the unfinished line and event: the end of the stream."""
        self._closed = True
        self._plain = False
        self._pieces = []
        self._pending = 0
        self._data_lines = []
        self._data_size = 0
        self._event_type = ""
        self._event_retry = None
        self._head = None

    # -- the core: LF-only complete lines -------------------------------------------

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
        If ``raws`` is given, the bytes of each event are added to it, rebuilt from the
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
        if len(self._event_types) < _EVENT_TYPE_CACHE_SIZE and len(name) <= _EVENT_TYPE_CACHE_NAME:
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
