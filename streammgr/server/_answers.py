"""What a streaming response sends, decided without I/O.

How a batch becomes bytes (:func:`encode_batch`, :func:`without_resume_fields`),
and the one table from an error to its answer (:func:`error_answer`): an HTTP
status with a JSON body before the headers are out, an in-band error event after.
Both forms carry the same ``{"error": {"message", "type", "code", "param"}}``
object, OpenAI's error format, which the openai SDK raises on when it sees it in a
stream (a stream that just ends looks to it like success).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import (
    LimiterError,
    ManagerClosed,
    StreamCancelled,
    StreamLimitExceeded,
    StreamTimeout,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .._logging import redact
from .._states import CloseReason
from ..sse import RawBatch, ServerSentEvent, encode, encode_comment

__all__ = [
    "KEEP_ALIVE",
    "ErrorAnswer",
    "encode_batch",
    "error_answer",
    "without_resume_fields",
]

KEEP_ALIVE = encode_comment("keep-alive")
"""The keep-alive comment, ``b": keep-alive\\n\\n"``: carries no event."""

BatchEncoder = Callable[[list[Any]], bytes]


def encode_batch(batch: list[Any]) -> bytes:
    """The default encoder: one batch of items as the bytes of one write.

    A :class:`~streammgr.sse.RawBatch` (``SSESource.raw_batches``) is forwarded as
    its ``.raw``, unchanged. Otherwise each item is encoded: a
    :class:`~streammgr.sse.ServerSentEvent` with :func:`streammgr.sse.encode`, a
    ``str`` as the data of one event, ``bytes`` as already encoded SSE.

    Raises:
        TypeError: an item of another type (pass ``encode=`` to the response).
    """
    if type(batch) is RawBatch:
        return batch.raw
    parts: list[bytes] = []
    for item in batch:
        if isinstance(item, ServerSentEvent):
            parts.append(encode(item))
        elif isinstance(item, str):
            parts.append(encode(ServerSentEvent(data=item)))
        elif isinstance(item, bytes):
            parts.append(item)
        else:
            raise TypeError(
                f"the default encoder takes ServerSentEvent, str or bytes items, got "
                f"{type(item).__name__}: pass encode= to EventStreamResponse"
            )
    return b"".join(parts)


# A line that may start an id or retry field, at the start of the bytes or of a line.
_RESUME_FIELD = re.compile(rb"(?:^|[\r\n])(?:id|retry)(?:[:\r\n]|$)")


def _has_resume_field(data: bytes) -> bool:
    """Whether ``data`` holds an ``id`` or ``retry`` field line.

    The regular expression tries every position: the substring checks first (each a
    fast scan) leave it only the bytes that may hold one, 3x cheaper per batch.
    """
    if (
        data.startswith((b"id", b"retry"))
        or b"\nid" in data
        or b"\rid" in data
        or b"\nretry" in data
        or b"\rretry" in data
    ):
        return _RESUME_FIELD.search(data) is not None
    return False


def without_resume_fields(encoder: BatchEncoder) -> BatchEncoder:
    """Wrap ``encoder`` so that no ``id:`` or ``retry:`` field is ever sent.

    For OpenAI-compatible routes: once the openai SDK has seen an ``id:``, a later
    comment-only keep-alive makes it fail to parse. Events are sent without their
    ``id`` and ``retry``; a :class:`~streammgr.sse.RawBatch` is forwarded as it is
    unless its bytes hold such a field, then its events are encoded anew.
    """

    def encode_without(batch: list[Any]) -> bytes:
        if type(batch) is RawBatch and (batch.plain or not _has_resume_field(batch.raw)):
            return batch.raw  # plain: the parser proved it holds data: lines only
        plain = [
            item._replace(id="", retry=None) if isinstance(item, ServerSentEvent) else item
            for item in batch
        ]
        data = encoder(plain)
        if _has_resume_field(data):
            # bytes items, or an encoder of the caller's own: refuse rather than send.
            raise ValueError(
                "resumable=False but the encoded batch holds an id or retry field; "
                "remove it in encode="
            )
        return data

    return encode_without


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What to tell a client about an error.

    Attributes:
        status: the HTTP status, when the headers are not out yet.
        type: the error's ``type`` (``"rate_limit_exceeded"``, ``"upstream_error"``...).
        code: the error's ``code``: the limit, the close reason.
        message: what happened and what to do; never an unredacted secret.
        retry_after: seconds for ``Retry-After``, or ``None``.
        should_retry: ``x-should-retry`` (``true``/``false``), which the openai SDK
            obeys before its own rule (retry 408, 409, 429 and 5xx); ``None``: not
            sent, the client's rule decides.
    """

    status: int
    type: str
    code: str
    message: str
    retry_after: float | None = None
    should_retry: bool | None = None

    def json(self) -> bytes:
        """The ``{"error": {...}}`` object, as UTF-8 JSON."""
        error = {"message": self.message, "type": self.type, "code": self.code, "param": None}
        return json.dumps({"error": error}, separators=(",", ":")).encode()

    def event(self) -> bytes:
        """The in-band error event: ``data: {"error": {...}}`` and a blank line."""
        return b"data: " + self.json() + b"\n\n"

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The headers of the JSON answer (``Retry-After`` in whole seconds, rounded
        up, and ``retry-after-ms``, which the openai SDK honours)."""
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            # An upstream's wait is finite but may be huge (1e308 * 1000 is infinite).
            wait = min(max(self.retry_after, 0.0), _MAX_RETRY_AFTER)
            headers.append((b"retry-after", str(math.ceil(wait)).encode()))
            headers.append((b"retry-after-ms", str(math.ceil(wait * 1000)).encode()))
        if self.should_retry is not None:
            headers.append((b"x-should-retry", b"true" if self.should_retry else b"false"))
        return headers


_MAX_RETRY_AFTER = 366 * 86400.0
"""The longest wait the headers say (a year): an upstream's longer one is cut to it."""

_NOT_RETRIED = frozenset({CloseReason.CANCELLED, CloseReason.CLIENT_STALLED})


def error_answer(error: BaseException, stream_id: str, recorded: str | None) -> ErrorAnswer:
    """The answer for an error that ended a response's stream.

    Args:
        error: what ``open`` or the stream's iteration raised.
        stream_id: the stream's id, named in messages that send the reader to logs.
        recorded: the registry's description of the error (``StreamInfo.error``),
            redacted with the manager's secrets, if any.
    """
    if isinstance(error, StreamLimitExceeded):
        return ErrorAnswer(
            429, "rate_limit_exceeded", error.limit, _limit_message(error), error.retry_after, True
        )
    if isinstance(error, ManagerClosed):
        return ErrorAnswer(
            503,
            "service_unavailable",
            "shutting_down",
            "the server is shutting down; retry",
            should_retry=True,  # another instance, or this one restarted
        )
    if isinstance(error, LimiterError):
        return ErrorAnswer(
            503,
            "service_unavailable",
            "limiter_error",
            f"admission is unavailable (stream {stream_id}); retry, or see the server's logs",
            # A limiter that knows when to come back (Redis lost, fail-closed) says so:
            # another instance, or this one a moment later, may admit the request.
            error.retry_after,
            True if error.retry_after is not None else None,
        )
    if isinstance(error, StreamCancelled):
        reason = error.close_reason
        if reason is CloseReason.SHUTDOWN:
            message = "the server is shutting down; retry"
        else:
            message = f"the stream was ended: {reason}" + (
                f" ({error.reason})" if error.reason else ""
            )
        status = 504 if isinstance(error, StreamTimeout) else 503
        # An operator's cut or a stalled client: the same request again would be cut
        # again. A shutdown or a timeout may go better on the next try.
        retry = False if reason in _NOT_RETRIED else None
        return ErrorAnswer(status, "stream_cancelled", str(reason), message, should_retry=retry)
    if isinstance(error, UpstreamError):
        text = recorded if recorded is not None else redact(f"{type(error).__name__}: {error}")
        message = f"the upstream failed: {text}"
        code = str(error.close_reason)
        if isinstance(error, UpstreamStatusError) and error.status_code == 429:
            # Every 429 says when to retry: the upstream's own wait, else one second.
            wait = error.retry_after if error.retry_after is not None else 1.0
            return ErrorAnswer(429, "rate_limit_exceeded", code, message, wait, True)
        status = 504 if isinstance(error, UpstreamTimeout) else 502
        # An upstream's 4xx (its refusal of the gateway's key, most often) is the
        # same on every try: the 502 must not be retried as a 5xx would be.
        refused = (
            isinstance(error, UpstreamStatusError)
            and 400 <= error.status_code < 500
            and error.status_code not in (408, 409)
        )
        return ErrorAnswer(
            status, "upstream_error", code, message, should_retry=False if refused else None
        )
    return ErrorAnswer(
        500,
        "server_error",
        str(CloseReason.PRODUCER_ERROR),
        f"the stream failed ({type(error).__name__}); see the server's logs for stream {stream_id}",
    )


_LIMIT_SENTENCES = {
    "max_streams": "the server has as many streams open as it allows at once (max_streams)",
    "max_streams_per_key": (
        "this API key has as many streams open as the server allows per key (max_streams_per_key)"
    ),
    "max_waiting": "the server's queue of streams waiting for a slot is full (max_waiting)",
}


def _limit_message(error: StreamLimitExceeded) -> str:
    """The 429's message, for an API client: which limit, how long to wait.

    Not ``str(error)``: its advice (``manager.set_limits()``) is for Python callers.
    """
    what = _LIMIT_SENTENCES.get(error.limit, f"the server's {error.limit} limit was reached")
    return f"{what}; retry after {error.retry_after:g}s (Retry-After)"
