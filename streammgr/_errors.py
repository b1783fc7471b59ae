"""The one exception tree of streammgr.

::

    StreamError                      anything streammgr raises on purpose
    ├── StreamLimitExceeded          not admitted: .limit names the limit, .retry_after in seconds
    ├── ManagerClosed                open() on a manager that is shutting down or closed
    ├── LimiterError                 the admission limiter itself failed (a Redis error...)
    ├── LimiterUnavailable           a limiter's backend (Redis) cannot be reached: .retry_after
    ├── StreamCancelled              the stream was ended from outside: .reason, .close_reason
    │   └── StreamTimeout            ended by one of its timeouts: .timeout in seconds
    │       ├── ReaderTimeout        the reader did not take an item for reader_timeout
    │       ├── IdleTimeout          the producer delivered nothing for idle_timeout
    │       └── DeadlineExceeded     the stream outlived its deadline
    ├── SSEError                     Server-Sent Events input that cannot be parsed safely
    │   └── SSEEventTooLarge         a line or event over max_event_size
    └── UpstreamError                a source's upstream failed: .url (redacted), .close_reason
        ├── UpstreamStatusError      a non-2xx status: .status_code, .body (bounded excerpt)
        ├── UpstreamConnectError     the connection could not be made or broke
        ├── UpstreamProtocolError    not what was promised (content type, framing, bad JSON)
        │   └── UpstreamTruncated    ended without its end marker ([DONE], finish reason)
        ├── UpstreamAPIError         an error object inside the stream: .error_type, .code
        ├── UpstreamClosed           a WebSocket closed with an error code: .code, .reason
        └── UpstreamTimeout          .timeout (seconds), .phase
            ├── UpstreamConnectTimeout      no connection within the connect timeout
            ├── UpstreamFirstEventTimeout   no event within the first-event timeout
            ├── UpstreamIdleTimeout         no event within the idle timeout
            └── UpstreamDeadlineExceeded    the stream outlived its total deadline

A producer's exception that has a ``close_reason`` (every ``UpstreamError``) is
recorded in the registry with that reason instead of ``producer_error``.

An exception raised by a producer is not wrapped: the reader receives it as itself.
Caller mistakes (a bad argument) are builtin ``ValueError`` / ``TypeError`` whose
message names the argument. ``trio.Cancelled`` is never caught to continue.

This module imports only the standard library, so that :mod:`streammgr.sse` stays
free of third-party imports.
"""

from __future__ import annotations

from ._states import CloseReason

__all__ = [
    "DeadlineExceeded",
    "IdleTimeout",
    "LimiterError",
    "LimiterUnavailable",
    "ManagerClosed",
    "ReaderTimeout",
    "SSEError",
    "SSEEventTooLarge",
    "StreamCancelled",
    "StreamError",
    "StreamLimitExceeded",
    "StreamTimeout",
    "UpstreamAPIError",
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDeadlineExceeded",
    "UpstreamError",
    "UpstreamFirstEventTimeout",
    "UpstreamIdleTimeout",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamTruncated",
]


class StreamError(Exception):
    """Base class of every error streammgr raises on purpose."""


class StreamLimitExceeded(StreamError):
    """A stream was not admitted because an admission limit was hit.

    Attributes:
        limit: which limit: ``"max_streams"``, ``"max_streams_per_key"`` or
            ``"max_waiting"``.
        retry_after: a suggested wait in seconds before trying again (at least 1),
            estimated from how long streams have been holding their slots.
        key: the admission key of the rejected stream.
    """

    def __init__(self, message: str, *, limit: str, retry_after: float, key: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = retry_after
        self.key = key


class ManagerClosed(StreamError):
    """``open()`` was called on a manager that is shutting down or already closed."""


class LimiterError(StreamError):
    """The admission limiter raised instead of admitting or refusing a stream.

    A limiter backed by a network service (Redis) fails this way when the service
    is unreachable. The stream was not opened and holds nothing; the limiter's own
    exception is the ``__cause__``. Recorded with close reason ``limiter_error``.

    Attributes:
        key: the admission key of the stream.
        stream_id: the id of the stream.
        retry_after: seconds after which trying again may succeed, when the
            limiter's error said so (a :class:`LimiterUnavailable`), else ``None``.
    """

    def __init__(
        self, message: str, *, key: str, stream_id: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.key = key
        self.stream_id = stream_id
        self.retry_after = retry_after


class LimiterUnavailable(StreamError):
    """A limiter's backend (Redis) cannot be reached, so nothing is admitted.

    Raised by ``RedisLimiter`` when Redis is unreachable as it starts (``async
    with``), and by its ``acquire`` while Redis is lost under the ``fail-closed``
    policy. ``manager.open`` turns the latter into a :class:`LimiterError` whose
    ``__cause__`` it is and whose ``retry_after`` it carries (an HTTP server
    answers 503 with ``Retry-After`` and ``x-should-retry: true``).

    Attributes:
        retry_after: seconds after which trying again may succeed.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StreamCancelled(StreamError):
    """The stream was ended from outside before it finished.

    Attributes:
        reason: human-readable text: what the canceller passed to
            ``manager.cancel(..., reason=...)`` (``""`` when it gave none), or a
            description of the timeout.
        close_reason: the :class:`CloseReason` recorded in the registry.
        stream_id: the id of the stream.
    """

    def __init__(self, reason: str, *, close_reason: CloseReason, stream_id: str) -> None:
        message = f"stream {stream_id} was cancelled ({close_reason})"
        super().__init__(f"{message}: {reason}" if reason else message)
        self.reason = reason
        self.close_reason = close_reason
        self.stream_id = stream_id


class StreamTimeout(StreamCancelled):
    """The stream was cancelled by one of its own timeouts.

    Attributes:
        timeout: the timeout, in seconds, that expired.
    """

    def __init__(
        self, reason: str, *, close_reason: CloseReason, stream_id: str, timeout: float
    ) -> None:
        super().__init__(reason, close_reason=close_reason, stream_id=stream_id)
        self.timeout = timeout


class ReaderTimeout(StreamTimeout):
    """An item waited ``reader_timeout`` seconds for a reader that did not take it."""


class IdleTimeout(StreamTimeout):
    """The producer delivered nothing for ``idle_timeout`` seconds."""


class DeadlineExceeded(StreamTimeout):
    """The stream was still running ``deadline`` seconds after it was admitted."""


class SSEError(StreamError):
    """Server-Sent Events input that the parser cannot accept safely."""


class SSEEventTooLarge(SSEError):
    """A line or an event grew past the parser's ``max_event_size``.

    Attributes:
        max_event_size: the configured limit, in bytes.
    """

    def __init__(self, message: str, *, max_event_size: int) -> None:
        super().__init__(message)
        self.max_event_size = max_event_size


class UpstreamError(StreamError):
    """A source's upstream failed.

    Attributes:
        url: the upstream URL with credentials redacted (``""`` if unknown).
        close_reason: the :class:`CloseReason` the registry records for it.
    """

    close_reason: CloseReason = CloseReason.UPSTREAM_ERROR

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a status that is not a success.

    Attributes:
        status_code: the HTTP status code.
        body: the start of the response body (bounded), decoded leniently: an
            upstream's own error message, e.g. ``{"error": {"message": ...}}``.
        retry_after: seconds from the upstream's ``Retry-After`` header, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str,
        url: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after


class UpstreamConnectError(UpstreamError):
    """The connection to the upstream could not be made, or broke mid-stream."""


class UpstreamProtocolError(UpstreamError):
    """The upstream did not speak the protocol it promised (content type, framing,
    JSON that does not parse)."""


class UpstreamTruncated(UpstreamProtocolError):
    """The upstream ended the stream before its end marker (``data: [DONE]`` or a
    finish reason): what was received is incomplete, not a success."""

    close_reason = CloseReason.UPSTREAM_TRUNCATED


class UpstreamAPIError(UpstreamError):
    """The upstream sent an error object inside the stream (``{"error": {...}}`` or
    ``event: error``).

    Attributes:
        error_type: the error's ``type`` field, or ``None``.
        code: the error's ``code`` field, or ``None``.
    """

    def __init__(
        self, message: str, *, error_type: str | None, code: str | None, url: str = ""
    ) -> None:
        super().__init__(message, url=url)
        self.error_type = error_type
        self.code = code


class UpstreamClosed(UpstreamError):
    """A WebSocket upstream closed the connection with an error code.

    Attributes:
        code: the WebSocket close code (e.g. 1011), or ``None`` if the connection
            dropped without a close frame.
        reason: the close reason text the upstream sent.
    """

    def __init__(self, message: str, *, code: int | None, reason: str, url: str = "") -> None:
        super().__init__(message, url=url)
        self.code = code
        self.reason = reason


class UpstreamTimeout(UpstreamError):
    """One of a source's own timeouts expired.

    Attributes:
        timeout: the timeout, in seconds, that expired.
        phase: ``"connect"``, ``"first_event"``, ``"idle"`` or ``"total"``.
    """

    phase = ""

    def __init__(self, message: str, *, timeout: float, url: str = "") -> None:
        super().__init__(message, url=url)
        self.timeout = timeout


class UpstreamConnectTimeout(UpstreamTimeout):
    """The upstream did not accept the connection (or answer the request) in time."""

    phase = "connect"
    close_reason = CloseReason.UPSTREAM_CONNECT_TIMEOUT


class UpstreamFirstEventTimeout(UpstreamTimeout):
    """The upstream sent no event within the first-event timeout of the request."""

    phase = "first_event"
    close_reason = CloseReason.UPSTREAM_FIRST_EVENT_TIMEOUT


class UpstreamIdleTimeout(UpstreamTimeout):
    """The upstream sent no event for the idle timeout between two events."""

    phase = "idle"
    close_reason = CloseReason.UPSTREAM_IDLE_TIMEOUT


class UpstreamDeadlineExceeded(UpstreamTimeout):
    """The upstream stream outlived its total deadline."""

    phase = "total"
    close_reason = CloseReason.UPSTREAM_DEADLINE
