"""The public vocabulary of a stream's life: its phases and the reasons it can end.

Plain data, standard library only (the exception tree imports it). The rules that
move a stream from phase to phase live in :mod:`streammgr._lifecycle`.
"""

from __future__ import annotations

import enum

__all__ = ["CloseReason", "Phase"]


class Phase(enum.StrEnum):
    """Where a stream is in its life.

    ``WAITING`` (for an admission slot) -> ``CONNECTING`` (admitted, the producer is
    opening its upstream) -> ``FIRST_ITEM`` (connected, nothing delivered yet) ->
    ``STREAMING`` -> ``DRAINING`` (the producer finished; the reader has not read
    the end yet) or ``CLOSING`` (cancelled or failed: the producer is cleaning up,
    or the reader has not taken the error yet) -> ``CLOSED``.
    """

    WAITING = "waiting"
    CONNECTING = "connecting"
    FIRST_ITEM = "first_item"
    STREAMING = "streaming"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


class CloseReason(enum.StrEnum):
    """Why a stream ended: exactly one per finished stream."""

    COMPLETED = "completed"
    """The producer finished and the reader consumed the end of the stream."""
    READER_EXIT = "reader_exit"
    """The reader left the ``async with`` block before the end (break, exception, cancel)."""
    READER_TIMEOUT = "reader_timeout"
    """An item waited longer than ``reader_timeout`` for the reader to take it."""
    IDLE_TIMEOUT = "idle_timeout"
    """The producer delivered nothing for ``idle_timeout``."""
    DEADLINE = "deadline"
    """The stream outlived its ``deadline``."""
    CANCELLED = "cancelled"
    """Cancelled from outside: ``manager.cancel`` or ``manager.cancel_key``."""
    PRODUCER_ERROR = "producer_error"
    """The producer raised an exception; the reader receives it."""
    SHUTDOWN = "shutdown"
    """The manager shut down before the stream finished."""
    REJECTED = "rejected"
    """Never admitted: the queue was full or the wait for a slot timed out."""
    LIMITER_ERROR = "limiter_error"
    """Never admitted: the admission limiter itself failed (``LimiterError``)."""
    CLIENT_DISCONNECTED = "client_disconnected"
    """The HTTP client of a gateway went away."""
    CLIENT_STALLED = "client_stalled"
    """The HTTP client stopped reading but kept its connection open: one write to it
    waited longer than the response's ``stall_timeout`` (``streammgr.server``)."""
    UPSTREAM_ERROR = "upstream_error"
    """The upstream failed: an error status, a refused connection, a protocol
    violation or an error object in the stream (``UpstreamError``)."""
    UPSTREAM_TRUNCATED = "upstream_truncated"
    """The upstream ended the stream before its end marker (``UpstreamTruncated``)."""
    UPSTREAM_CONNECT_TIMEOUT = "upstream_connect_timeout"
    """The upstream did not accept the connection in time."""
    UPSTREAM_FIRST_EVENT_TIMEOUT = "upstream_first_event_timeout"
    """The upstream sent no event in time after the request."""
    UPSTREAM_IDLE_TIMEOUT = "upstream_idle_timeout"
    """The upstream went quiet between events for too long."""
    UPSTREAM_DEADLINE = "upstream_deadline"
    """The upstream stream outlived its total deadline."""
