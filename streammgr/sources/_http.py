"""Server-Sent Events over httpx: the public source, and its reconnect policy.

:class:`SSESource` is a producer: ``manager.open(SSESource(client, url))`` streams
the upstream's events to the reader, the events of each upstream read in one
hand-off. This module holds what a user configures (:class:`SourceTimeouts`,
:class:`Reconnect`, :class:`SSESource`) and the outermost of three layers, the
connection attempts: the reconnect policy, the delays, the count of attempts and
``Last-Event-ID``. One connection (the request, its checks, its timeouts, its
close) and its events (how a read becomes a batch) are in :mod:`._http_connection`,
which is also the one place httpx's exceptions become :class:`~streammgr.UpstreamError`;
it gets what it needs from the source as one frozen :class:`ConnectionSettings`.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import httpx
import trio

from .._batch import BatchIterator
from .._errors import UpstreamConnectError, UpstreamStatusError
from .._validate import check_count, check_seconds, check_strings
from ..sse import RawBatch, ServerSentEvent, SSEParser
from ._common import header_secrets, redact_url, url_secrets
from ._http_connection import (
    PARSED,
    RAW,
    RAW_BATCH,
    Connection,
    ConnectionSettings,
    Reading,
    Retryable,
)

__all__ = ["Reconnect", "SSESource", "SourceTimeouts"]

# The reconnect delays' jitter: one generator for every source (one per source cost
# 2.5 KiB per stream held; the jitter needs no stream of its own).
_JITTER = random.Random()

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SourceTimeouts:
    """A source's own timeouts, in seconds (``None``: no limit).

    Attributes:
        connect: from sending the request to having the response headers.
        first_event: from sending the request to the first event.
        idle: the longest gap between two events (comments do not count).
        total: the longest the whole stream may last, reconnections included.
    """

    connect: float | None = 30.0
    first_event: float | None = None
    idle: float | None = None
    total: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "first_event", "idle", "total"):
            check_seconds(f"timeouts.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class Reconnect:
    """When and how an :class:`SSESource` reconnects (opt-in per source).

    A dropped connection, a clean end of the response body, a connect / first-event
    / idle timeout, or a status in ``retry_statuses`` is followed by a new request
    carrying ``Last-Event-ID``, after a delay: the server's ``retry`` value if it
    sent one (else ``initial_delay``), never less than ``min_delay``, doubled by
    ``multiplier`` for each failed attempt in a row, capped at ``max_delay``, with
    up to ``jitter`` (a fraction) added at random. HTTP 204, another error status, a
    wrong content type and the total timeout are final.

    The count of attempts in a row resets only after a *healthy* connection: one
    that delivered at least one event and stayed up for at least ``healthy_after``
    seconds (from its response headers to its end). A connection that delivers an
    event and drops at once counts as a failed attempt, so an upstream that sends
    ``retry: 0`` and one event per connection is given up on after
    ``max_attempts`` reconnections instead of being hammered forever.

    A ``Retry-After`` header on a retryable status is honoured (raised to
    ``min_delay`` if smaller) when it is at most ``max_delay``. A longer one is
    final: the status error is raised at once, saying how long the upstream asked
    to wait, rather than either waiting that long inside the stream or coming back
    early against the upstream's explicit wish. Raise ``max_delay`` to honour such
    waits. The SSE ``retry`` field is a standing preference, not a refusal: a value
    above ``max_delay`` is capped at ``max_delay``.

    Attributes:
        max_attempts: reconnections in a row without a healthy connection before
            giving up; the last error is raised.
        initial_delay: seconds before the first reconnection, if the server set none.
        max_delay: the longest delay, in seconds; also the longest ``Retry-After``
            that is waited for.
        multiplier: backoff factor per failed attempt in a row.
        jitter: random extra delay, as a fraction of the delay (0 for none).
        retry_statuses: statuses worth trying again (``Retry-After`` is honoured).
        min_delay: the shortest delay, in seconds, whatever the server asks for
            (``retry: 0``, ``Retry-After: 0``); at most ``initial_delay``.
        healthy_after: seconds a connection must stay up, with at least one event,
            to reset the count of attempts.

    Raises:
        TypeError: a delay is not a number (``None`` included), or ``max_attempts``
            is not an int.
        ValueError: a delay is not positive and finite, ``min_delay`` is above
            ``initial_delay`` or ``max_delay``, ``max_attempts < 1``,
            ``multiplier < 1``, or ``jitter`` is outside 0..1.
    """

    max_attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retry_statuses: frozenset[int] = field(
        default_factory=lambda: frozenset({408, 429, 500, 502, 503, 504})
    )
    min_delay: float = 0.5
    healthy_after: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("initial_delay", "max_delay", "min_delay", "healthy_after"):
            value = getattr(self, name)
            if value is None:
                raise TypeError(f"{name} must be a number of seconds, got None")
            check_seconds(name, value)
        if self.min_delay > self.max_delay:
            raise ValueError(
                f"min_delay ({self.min_delay:g}s) must not be above max_delay ({self.max_delay:g}s)"
            )
        if self.initial_delay < self.min_delay:
            raise ValueError(
                f"initial_delay ({self.initial_delay:g}s) is below min_delay "
                f"({self.min_delay:g}s): lower min_delay too, or raise initial_delay"
            )
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def delay(self, attempt: int, server_retry_ms: int | None, rng: random.Random) -> float:
        """Seconds to wait before reconnection number ``attempt`` (1-based).

        Args:
            attempt: the reconnection's number in the current run of failures.
            server_retry_ms: the server's last ``retry`` value, or ``None``.
            rng: the source of the jitter.

        Returns:
            The backoff from ``server_retry_ms`` (else ``initial_delay``), at least
            ``min_delay``, capped at ``max_delay``, plus jitter.
        """
        base = server_retry_ms / 1000 if server_retry_ms is not None else self.initial_delay
        base = max(base, self.min_delay)
        delay = min(base * self.multiplier ** (attempt - 1), self.max_delay)
        return delay * (1 + self.jitter * rng.random())


class SSESource:
    """A producer that streams Server-Sent Events from an HTTP upstream with httpx.

    ``manager.open(SSESource(client, url))`` yields :class:`~streammgr.sse.ServerSentEvent`;
    ``manager.open(source.raw_events)`` yields ``(event, raw_bytes)`` pairs (the
    original bytes, for proxies). Both hand the manager the events of one upstream
    read in one hand-off (:class:`~streammgr.BatchIterator`), so ``stream.batches()``
    gets them as one list; iterated directly, ``source()`` yields one event at a time.
    Before streaming, the response is checked: a status that is not
    2xx raises :class:`~streammgr.UpstreamStatusError` with the status and an
    excerpt of the upstream's body; a content type other than ``text/event-stream``
    raises :class:`~streammgr.UpstreamProtocolError`.

    Args:
        client: the ``httpx.AsyncClient`` to send with (its own timeouts apply too).
        url: the upstream URL.
        method: the HTTP method (default ``"GET"``).
        headers: request headers. Credentials belong here (never in the URL); they
            never appear in errors, logs or reprs: the value of every header named
            like a credential (``auth``, ``key``, ``token``, ``session``, ``sig``...:
            see ``sources/_common.py``) and any ``Bearer`` / ``Basic`` / ``Token``
            credential.
        params: query parameters.
        json: a JSON body (for POST streams such as chat completions).
        content: a raw body, instead of ``json``.
        timeouts: connect / first event / idle / total (:class:`SourceTimeouts`).
        reconnect: a :class:`Reconnect` policy, or ``None`` (default) to never
            reconnect; a POST completion cannot be resumed, a GET feed can.
        last_event_id: the ``Last-Event-ID`` to send on the first request.
        max_event_size: the parser's bound on one line or event, in bytes.
        error_body_limit: the longest excerpt of an error response kept, in
            characters; a little more is read and redacted before the cut, so that
            a secret at the limit is removed whole.
        secrets: extra values to scrub from the URL and error messages, in any
            encoding (credential headers, the URL's password and credential
            parameters are scrubbed already).

    Raises:
        TypeError / ValueError: a bad argument (``url`` that httpx cannot parse
            included), named in the message.
    """

    # One source per gateway stream, for its whole life: no __dict__.
    __slots__ = (
        "_last_event_id",
        "_reconnect",
        "_secrets",
        "_settings",
        "_shown_url",
        "_timeouts",
    )

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str | httpx.URL,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json: object = None,
        content: bytes | str | None = None,
        timeouts: SourceTimeouts | None = None,
        reconnect: Reconnect | None = None,
        last_event_id: str = "",
        max_event_size: int = 1_048_576,
        error_body_limit: int = 2048,
        secrets: Iterable[str] = (),
    ) -> None:
        if not isinstance(client, httpx.AsyncClient):
            raise TypeError(f"client must be an httpx.AsyncClient, got {type(client).__name__}")
        if json is not None and content is not None:
            raise ValueError("pass either json= or content=, not both")
        check_count("error_body_limit", error_body_limit, minimum=0)
        extra_secrets = check_strings("secrets", secrets)
        SSEParser(max_event_size)  # validates max_event_size
        try:
            parsed_url = httpx.URL(url)
        except httpx.InvalidURL as exc:  # a caller's mistake: a builtin error, as for any
            raise ValueError(f"url is not a valid URL: {exc}") from None
        if params:
            parsed_url = parsed_url.copy_merge_params(dict(params))
        request_headers = httpx.Headers(headers or {})
        self._timeouts = timeouts if timeouts is not None else SourceTimeouts()
        self._reconnect = reconnect
        self._last_event_id = last_event_id
        # The secret parts of the request itself (credential headers, the URL's
        # userinfo and credential parameters), compared decoded: see _common.
        self._secrets = tuple(
            dict.fromkeys(
                [
                    *(value for value in extra_secrets if value),
                    *header_secrets(request_headers.multi_items()),
                    *url_secrets(str(parsed_url)),
                ]
            )
        )
        self._shown_url = redact_url(str(parsed_url), self._secrets)
        self._settings = ConnectionSettings(
            client=client,
            method=method.upper(),
            url=parsed_url,
            shown_url=self._shown_url,
            headers=request_headers,
            json=json,
            content=content,
            connect=self._timeouts.connect,
            first_event=self._timeouts.first_event,
            idle=self._timeouts.idle,
            total=self._timeouts.total,
            reconnects=reconnect is not None,
            retry_statuses=reconnect.retry_statuses if reconnect is not None else frozenset(),
            max_event_size=max_event_size,
            error_body_limit=error_body_limit,
            secrets=self._secrets,
        )

    @property
    def url(self) -> str:
        """The upstream URL with credentials redacted."""
        return self._shown_url

    def __repr__(self) -> str:
        return f"SSESource({self._settings.method} {self.url})"

    # -- producing: connection attempts, one after another ---------------------------

    def __call__(self) -> BatchIterator[ServerSentEvent]:
        """Stream the upstream's events (a fresh request per call), a read at a time."""
        return BatchIterator(self._batches(PARSED))

    def raw_events(self) -> BatchIterator[tuple[ServerSentEvent, bytes]]:
        """Stream ``(event, raw_bytes)`` pairs: each event with the bytes the
        upstream sent for it, unchanged, for a proxy to forward without decoding
        and re-encoding. ``manager.open(source.raw_events)``; a read at a time."""
        return BatchIterator(self._batches(RAW))

    def raw_batches(self) -> BatchIterator[ServerSentEvent]:
        """Stream events whose batches carry their original bytes in one piece.

        For a proxy that forwards a read in one write: ``manager.open(
        source.raw_batches)``, then ``async for batch in stream.batches()`` gives
        each read's events as a :class:`~streammgr.sse.RawBatch` (a list of events)
        whose ``.raw`` is the bytes the upstream sent for them, unchanged. Iterated
        item by item it yields the events, as ``source()`` does.
        """
        return BatchIterator(self._batches(RAW_BATCH))

    async def _batches(self, reading: Reading[T]) -> AsyncGenerator[list[T], None]:
        """Connection attempts, one after another, while the reconnect policy allows;
        each yields the batches of its reads (:class:`Connection`).

        No cancel scope is held across a ``yield`` (that would leak the scope into
        the consumer's task): each await gets its own scope with the deadline that
        applies to it, so a cancel scope is made per chunk read, never per event.
        """
        total = self._timeouts.total
        total_deadline = trio.current_time() + total if total is not None else math.inf
        attempts = _Attempts(self, total_deadline)
        last_event_id = self._last_event_id
        while True:
            connection = Connection(self._settings, reading, last_event_id, total_deadline)
            outcome: Retryable | None = None
            try:
                if not await connection.open():
                    return  # 204 No Content: nothing to stream, and never reconnect
                while (batch := await connection.next_batch()) is not None:
                    yield batch
                if self._reconnect is None:
                    return
            except Retryable as retryable:
                outcome = retryable
                if retryable.__cause__ is not None:
                    # The user gets the error, never the wrapper: give it the cause.
                    retryable.error.__cause__ = retryable.__cause__
            finally:
                await connection.close()
            last_event_id = connection.last_event_id
            await attempts.wait_to_reconnect(connection, outcome)


def raw_reads(source: SSESource) -> AsyncGenerator[RawBatch, None]:
    """The generator under ``source.raw_batches()``: each read's events as a
    :class:`~streammgr.sse.RawBatch`, never an empty one.

    For a producer of this package's own that reads a batch at a time (the gateway's):
    without the :class:`~streammgr.BatchIterator` around it, two coroutines less per
    read, each paid again at every suspension of the read. Close it (``aclosing``).
    """
    return cast("AsyncGenerator[RawBatch, None]", source._batches(RAW_BATCH))


class _Attempts:
    """The reconnect policy applied to one stream: the attempts in a row, the
    server's ``retry``, and the wait before the next connection (or giving up)."""

    __slots__ = ("_policy", "_source", "_total_deadline", "attempt", "server_retry")

    def __init__(self, source: SSESource, total_deadline: float) -> None:
        self._source = source
        self._policy = source._reconnect
        self._total_deadline = total_deadline
        self.attempt = 0
        self.server_retry: int | None = None

    async def wait_to_reconnect(
        self, connection: Connection[Any], outcome: Retryable | None
    ) -> None:
        """Sleep before the next attempt, or raise the error that ends the stream.

        Called only with a policy: without one, a connection's end is the stream's.
        """
        source, policy = self._source, self._policy
        assert policy is not None
        if connection.retry is not None:
            self.server_retry = connection.retry
        seen_event = connection.seen_event
        uptime = connection.uptime  # -inf when the upstream never answered
        if seen_event and uptime >= policy.healthy_after:
            self.attempt = 0  # a healthy connection: a fresh run of attempts
        self.attempt += 1
        last_error = outcome.error if outcome is not None else None
        server_delay = outcome.delay if outcome is not None else None
        if server_delay is not None and server_delay > policy.max_delay:
            assert isinstance(last_error, UpstreamStatusError)
            raise _wait_refused(last_error, server_delay, policy.max_delay)
        if self.attempt > policy.max_attempts:
            if last_error is not None:
                raise last_error
            if seen_event:
                raise UpstreamConnectError(
                    f"the upstream kept closing the stream soon after opening it (the "
                    f"last connection lasted {uptime:.3g}s, less than "
                    f"Reconnect.healthy_after={policy.healthy_after:g}s): gave up after "
                    f"{policy.max_attempts} reconnections; lower healthy_after if the "
                    f"upstream legitimately closes this soon",
                    url=source.url,
                )
            raise UpstreamConnectError(
                f"the upstream kept closing the stream without sending an event: gave up "
                f"after {policy.max_attempts} reconnections",
                url=source.url,
            )
        if server_delay is not None:
            delay = max(server_delay, policy.min_delay)
        else:
            delay = policy.delay(self.attempt, self.server_retry, _JITTER)
        if trio.current_time() + delay >= self._total_deadline:
            raise source._settings.total_timeout(
                "no time left to reconnect within the total timeout"
            ) from last_error
        await trio.sleep(delay)


def _wait_refused(
    error: UpstreamStatusError, retry_after: float, max_delay: float
) -> UpstreamStatusError:
    """The error for a ``Retry-After`` longer than the policy's ``max_delay``."""
    refused = UpstreamStatusError(
        f"{error}; it asked to wait {retry_after:g}s before trying again (Retry-After), "
        f"longer than Reconnect.max_delay={max_delay:g}s, so the source gave up instead "
        f"of waiting; raise max_delay to {retry_after:g} or more to honour such waits",
        status_code=error.status_code,
        body=error.body,
        url=error.url,
        retry_after=retry_after,
    )
    refused.__cause__ = error.__cause__
    return refused
