"""The one exception tree of streammgr.

::

    StreamError                      anything streammgr raises on purpose
    ├── StreamLimitExceeded          not admitted: .limit names the limit, .retry_after in seconds
    ├── ManagerClosed                open() on a manager that is shutting down or closed
    ├── StreamCancelled              the stream was ended from outside: .reason, .close_reason
    │   └── StreamTimeout            ended by one of its timeouts: .timeout in seconds
    │       ├── ReaderTimeout        the reader did not take an item for reader_timeout
    │       ├── IdleTimeout          the producer delivered nothing for idle_timeout
    │       └── DeadlineExceeded     the stream outlived its deadline
    └── SSEError                     Server-Sent Events input that cannot be parsed safely
        └── SSEEventTooLarge         a line or event over max_event_size

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
    "ManagerClosed",
    "ReaderTimeout",
    "SSEError",
    "SSEEventTooLarge",
    "StreamCancelled",
    "StreamError",
    "StreamLimitExceeded",
    "StreamTimeout",
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


class StreamCancelled(StreamError):
    """The stream was ended from outside before it finished.

    Attributes:
        reason: human-readable text: what the canceller passed to
            ``manager.cancel(..., reason=...)``, or a description of the timeout.
        close_reason: the :class:`CloseReason` recorded in the registry.
        stream_id: the id of the stream.
    """

    def __init__(self, reason: str, *, close_reason: CloseReason, stream_id: str) -> None:
        super().__init__(f"stream {stream_id} was cancelled ({close_reason}): {reason}")
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
