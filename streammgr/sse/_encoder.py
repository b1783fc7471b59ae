"""The server side: :func:`encode`, :func:`encode_comment`; OpenAI's terminator."""

from __future__ import annotations

from ._event import ServerSentEvent

OPENAI_DONE = "[DONE]"
"""The ``data`` of the event that ends an OpenAI-style stream (``data: [DONE]``)."""


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
