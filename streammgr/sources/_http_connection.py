"""One connection of an :class:`~streammgr.sources.SSESource`: the request, its
checks, its timeouts and its close; its events; and httpx's errors, mapped.

:class:`Connection` is the middle of the source's three layers: it sends one
request, refuses an error status or a body that is not an event stream, reads the
body within the timeout that applies (connect, first event, idle, total), turns
each read into a batch (:class:`Reading`: parsed events, or raw ``(event, bytes)``
pairs), and closes the response on every path, shielded and bounded, so a stream
cancelled by the manager closes its connection before the reader's ``async with``
block returns. What can go wrong on the way is mapped here, at this edge, to a
typed :class:`~streammgr.UpstreamError`, by the tables :data:`_SEND_ERRORS` and
:data:`_READ_ERRORS`: no httpx exception reaches the user.

It knows the source only through :class:`ConnectionSettings`, a frozen object the
source builds once: this module imports nothing from :mod:`._http`.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeVar, cast

import httpx
import trio

from .._errors import (
    SSEEventTooLarge,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDeadlineExceeded,
    UpstreamError,
    UpstreamFirstEventTimeout,
    UpstreamIdleTimeout,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .._logging import describe_error, get_logger, redact
from .._stream import current_producer
from ..sse import RawSSEParser, ServerSentEvent, SSEParser
from ._common import body_excerpt, excerpt_margin
from ._common import retry_after as parse_retry_after
from ._pools import reclaim_client_orphans

__all__ = ["PARSED", "RAW", "RAW_BATCH", "Connection", "ConnectionSettings", "Reading", "Retryable"]

T = TypeVar("T")

_CLOSE_TIMEOUT = 5.0  # seconds a response's close may take, shielded
_ERROR_READ_TIMEOUT = 5.0  # seconds to read the excerpt of an error body
_NO_RECONNECT_STATUS = 204  # "stop reconnecting" (WHATWG)
# After a response is closed, its body iterator is pulled at most this many times:
# a real closed stream fails at once; one that does not is left, not drained.
_FINISH_PULLS = 100
# Content-Encodings httpx's aiter_bytes leaves as they are (its IdentityDecoder).
_IDENTITY = frozenset({"", "identity"})


class Retryable(Exception):
    """Internal: this connection ended in a way a reconnection may cure.

    Raised ``from`` the upstream's own error (httpx's, when there is one); the
    reconnect loop hands that cause on to :attr:`error`, which is what the user gets.
    """

    def __init__(self, error: UpstreamError, delay: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Everything one connection needs from its source, fixed when the source is made.

    Built by :class:`~streammgr.sources.SSESource` from its arguments (already
    checked there), and shared by each of its connections.

    Attributes:
        client: the ``httpx.AsyncClient`` to send with.
        method: the HTTP method, upper case.
        url: the upstream URL, query parameters merged.
        shown_url: ``url`` with its credentials redacted: the only one in errors.
        headers: the request's own headers.
        json: a JSON body, or ``None``.
        content: a raw body, or ``None``.
        connect: seconds from sending to the response headers (``None``: no limit).
        first_event: seconds from sending to the first event (``None``: no limit).
        idle: the longest gap between two events, in seconds (``None``: no limit).
        total: the longest the whole stream may last (``None``: no limit).
        reconnects: whether a reconnect policy is set: then an error a reconnection
            may cure is raised wrapped in :class:`Retryable`.
        retry_statuses: the statuses the reconnect policy retries (empty without one).
        max_event_size: the parser's bound on one line or event, in bytes.
        error_body_limit: the longest excerpt of an error body, in characters.
        secrets: the values to scrub from every message.
    """

    client: httpx.AsyncClient
    method: str
    url: httpx.URL
    shown_url: str
    headers: httpx.Headers
    json: object
    content: bytes | str | None
    connect: float | None
    first_event: float | None
    idle: float | None
    total: float | None
    reconnects: bool
    retry_statuses: frozenset[int]
    max_event_size: int
    error_body_limit: int
    secrets: tuple[str, ...]

    def redact(self, text: str) -> str:
        """``text`` with every secret of the request scrubbed."""
        return redact(text, self.secrets)

    def retryable(self, error: UpstreamError, delay: float | None = None) -> Exception:
        """Wrap ``error`` for the reconnect loop when a policy is set; else as is."""
        if not self.reconnects:
            return error
        return Retryable(error, delay)

    def total_timeout(self, what: str) -> UpstreamDeadlineExceeded:
        """The error for a stream that outlived ``total``; ``what`` says where."""
        total = self.total or 0.0
        return UpstreamDeadlineExceeded(
            f"{what} ({total:g}s); raise timeouts.total if streams this long are expected",
            timeout=total,
            url=self.shown_url,
        )


# -- one connection's events: how a read becomes the batch handed over ------------------


class Reading(NamedTuple, Generic[T]):
    """How one upstream read becomes a batch: the parser, its feed, and which event
    ID a batch leaves (for Last-Event-ID on a reconnection)."""

    parser: Callable[[int], SSEParser | RawSSEParser]
    batch: Callable[[Any, bytes], list[T]]
    last_event_id: Callable[[list[T]], str]


PARSED: Reading[ServerSentEvent] = Reading(SSEParser, SSEParser.feed, lambda batch: batch[-1].id)
"""``SSESource()``: the events of a read."""
RAW: Reading[tuple[ServerSentEvent, bytes]] = Reading(
    RawSSEParser, RawSSEParser.feed_pairs, lambda batch: batch[-1][0].id
)
"""``raw_events()``: each event of a read with its own original bytes."""
RAW_BATCH: Reading[ServerSentEvent] = Reading(
    RawSSEParser, RawSSEParser.feed, lambda batch: batch[-1].id
)
"""``raw_batches()``: the events of a read as a ``RawBatch``, their bytes in one piece."""


# -- one connection: the request, its checks, its timeouts, its close --------------------


class Connection(Generic[T]):
    """One request of an :class:`~streammgr.sources.SSESource` and its response.

    :meth:`open` sends the request and checks the answer; :meth:`next_batch`
    returns the events of the next read that carried any, within the timeout that
    applies; :meth:`close` closes the response, shielded and bounded, and must be
    called on every path. What the reconnect loop needs afterwards stays readable:
    :attr:`seen_event`, :attr:`uptime`, :attr:`last_event_id`, :attr:`retry`.
    """

    __slots__ = (
        "_add_bytes",
        "_body",
        "_context",
        "_deadline",
        "_delivered",
        "_parser",
        "_reading",
        "_response",
        "_settings",
        "_total_deadline",
        "connected_at",
        "ended_at",
        "last_event_id",
        "retry",
        "seen_event",
    )

    def __init__(
        self,
        settings: ConnectionSettings,
        reading: Reading[T],
        last_event_id: str,
        total_deadline: float,
    ) -> None:
        self._settings = settings
        self._reading = reading
        self._parser = reading.parser(settings.max_event_size)
        self._total_deadline = total_deadline
        self._deadline = math.inf
        self._delivered = False  # a batch went out: the idle timeout restarts
        self._response: httpx.Response | None = None
        self._body: _Body | None = None
        self._context = current_producer()
        self._add_bytes = self._context.add_bytes if self._context is not None else None
        self.last_event_id = last_event_id
        self.seen_event = False
        self.connected_at = self.ended_at = math.inf
        self.retry: int | None = None

    @property
    def uptime(self) -> float:
        """Seconds from the response headers to the close (``-inf``: never answered)."""
        return self.ended_at - self.connected_at

    async def open(self) -> bool:
        """Send the request and check the response.

        Returns ``False`` for 204 No Content: nothing to stream, never reconnect.
        """
        settings = self._settings
        started = trio.current_time()
        self._response = await self._send(self._request())
        if not await self._check(self._response):
            return False
        self.connected_at = trio.current_time()
        if self._context is not None:
            self._context.connected()
        first_event, idle = settings.first_event, settings.idle
        if first_event is not None:
            self._deadline = started + first_event
        elif idle is not None:
            self._deadline = started + idle
        self._body = _Body(self._response)
        return True

    async def next_batch(self) -> list[T] | None:
        """The events of the next read that completed any; ``None`` at the body's end.

        Reads that complete no event (comments, a part of an event) do not count as
        activity: the idle timeout runs on across them.
        """
        assert self._body is not None
        idle = self._settings.idle
        if self._delivered and idle is not None:
            # From now: time parked at yield behind a slow reader is not the
            # upstream's idleness.
            self._deadline = trio.current_time() + idle
        body = self._body
        chunks, parser = body.chunks, self._parser
        feed, add_bytes = self._reading.batch, self._add_bytes
        while True:
            deadline = min(self._deadline, self._total_deadline)
            if deadline == math.inf:
                # No timeout applies: the read is awaited right here, without the
                # cancel scope (it costs as much as parsing the chunk:
                # benchmarks/bench_sources.py) nor two more coroutines, which every
                # suspension of the read passes through again.
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    chunk = None
                except _HTTPX_ERRORS as exc:
                    raise _upstream_error(self._settings, exc, _READ_ERRORS, body.encoding) from exc
            else:
                chunk = await self._next_chunk(chunks, deadline)
            if chunk is None:
                parser.close()
                return None
            if add_bytes is not None:
                add_bytes(len(chunk))
            try:
                batch = feed(parser, chunk)
            except SSEEventTooLarge as exc:
                raise UpstreamProtocolError(
                    f"{exc}; the upstream sent an event larger than this source accepts",
                    url=self._settings.shown_url,
                ) from exc
            if batch:
                if not self.seen_event:
                    self.seen_event = True
                    if idle is None:
                        self._deadline = math.inf
                self._delivered = True
                self.last_event_id = self._reading.last_event_id(batch)
                return batch

    async def close(self) -> None:
        """Close the response and its body, even when cancelled; it cannot hang."""
        self.ended_at = trio.current_time()
        self.retry = self._parser.retry
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + _CLOSE_TIMEOUT
            if self._response is not None:
                await _close(self._response, self._body)

    # -- the request -------------------------------------------------------------------

    def _request(self) -> httpx.Request:
        settings = self._settings
        headers = settings.headers.copy()
        headers.setdefault("accept", "text/event-stream")
        headers.setdefault("cache-control", "no-store")
        if self.last_event_id:
            headers["last-event-id"] = self.last_event_id
        return settings.client.build_request(
            settings.method,
            settings.url,
            headers=headers,
            json=settings.json,
            content=settings.content,
        )

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send the request within the connect timeout; map every way it can fail."""
        settings = self._settings
        connect = settings.connect
        total_deadline = self._total_deadline
        response: httpx.Response | None = None
        deadline = trio.current_time() + connect if connect is not None else math.inf
        try:
            try:
                with trio.CancelScope(deadline=min(deadline, total_deadline)):
                    response = await settings.client.send(request, stream=True)
            finally:
                if response is None:  # cancelled, timed out or failed: see the helper
                    await reclaim_client_orphans(settings.client)
        except _HTTPX_ERRORS as exc:
            raise _upstream_error(settings, exc, _SEND_ERRORS) from exc
        if response is None:
            if total_deadline <= deadline:
                raise settings.total_timeout("the upstream stream outlived its total timeout")
            raise settings.retryable(
                UpstreamConnectTimeout(
                    f"the upstream did not answer within the connect timeout of {connect:g}s; "
                    f"check the upstream, or raise timeouts.connect",
                    timeout=connect or 0.0,
                    url=settings.shown_url,
                )
            )
        return response

    async def _check(self, response: httpx.Response) -> bool:
        """Refuse an error status or a body that is not an event stream.

        Returns ``False`` for 204 No Content: nothing to stream, never reconnect.
        """
        settings = self._settings
        status = response.status_code
        if status == _NO_RECONNECT_STATUS:
            return False
        if not 200 <= status < 300:
            body = await self._excerpt(response)
            retry_after = _retry_after_ms(response.headers.get("retry-after-ms"))
            if retry_after is None:
                retry_after = parse_retry_after(
                    response.headers.get("retry-after"), datetime.now(UTC)
                )
            hint = {
                401: "check the API key or credentials",
                403: "check the credentials' permissions",
                404: "check the URL",
                429: "the upstream is rate limiting: slow down or lower max_streams",
            }.get(status, "see the upstream's message")
            error = UpstreamStatusError(
                f"upstream returned {status}: {_error_message(body)}; {hint}",
                status_code=status,
                body=body,
                url=settings.shown_url,
                retry_after=retry_after,
            )
            if settings.reconnects and status in settings.retry_statuses:
                raise Retryable(error, retry_after)
            raise error
        content_type = response.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "text/event-stream":
            body = await self._excerpt(response)
            raise UpstreamProtocolError(
                f"upstream answered {status} with content type {content_type or 'none'!r}, "
                f"not text/event-stream: {_error_message(body)}; check the URL and that the "
                f"request asks for a stream",
                url=settings.shown_url,
            )
        return True

    async def _excerpt(self, response: httpx.Response) -> str:
        """Up to ``error_body_limit`` characters of the body (see
        :func:`~streammgr.sources._common.body_excerpt`); the response is closed."""
        settings = self._settings
        wanted = settings.error_body_limit + excerpt_margin(settings.secrets)
        pieces: list[bytes] = []
        size = 0
        complete = False
        body = _Body(response)
        try:
            with trio.move_on_after(_ERROR_READ_TIMEOUT):
                while (chunk := await self._read_chunk(body.chunks, body)) is not None:
                    pieces.append(chunk)
                    size += len(chunk)
                    if size > wanted:
                        break
                else:
                    complete = True
        except (UpstreamError, Retryable):
            pass  # an excerpt is best effort: the status is the error
        finally:
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = trio.current_time() + _CLOSE_TIMEOUT
                await _close(response, body)
        return body_excerpt(
            b"".join(pieces), settings.error_body_limit, settings.secrets, whole=complete
        )

    # -- the reads -------------------------------------------------------------------

    async def _next_chunk(self, chunks: AsyncIterator[bytes], deadline: float) -> bytes | None:
        """The next body chunk (``None`` at the end), within ``deadline`` (finite: see
        :meth:`next_batch` for a read without one)."""
        body = self._body
        assert body is not None
        with trio.CancelScope(deadline=deadline) as scope:
            return await self._read_chunk(chunks, body)
        assert scope.cancelled_caught
        settings = self._settings
        if deadline >= self._total_deadline:
            raise settings.total_timeout("the upstream stream outlived its total timeout")
        if not self.seen_event and settings.first_event is not None:
            raise settings.retryable(
                UpstreamFirstEventTimeout(
                    f"the upstream sent no event within {settings.first_event:g}s of the "
                    f"request; raise timeouts.first_event if it is just slow to start",
                    timeout=settings.first_event,
                    url=settings.shown_url,
                )
            )
        raise settings.retryable(
            UpstreamIdleTimeout(
                f"the upstream sent no event for {settings.idle:g}s; raise timeouts.idle if "
                f"gaps this long are normal",
                timeout=settings.idle or 0.0,
                url=settings.shown_url,
            )
        )

    async def _read_chunk(self, chunks: AsyncIterator[bytes], body: _Body) -> bytes | None:
        """The next body chunk, ``None`` at the end; httpx's errors mapped."""
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return None
        except _HTTPX_ERRORS as exc:
            raise _upstream_error(self._settings, exc, _READ_ERRORS, body.encoding) from exc


# -- httpx's errors, mapped at this edge -------------------------------------------------

# Everything httpx raises on purpose: HTTPError, and StreamError (StreamClosed,
# StreamConsumed...), which is a RuntimeError, not an HTTPError.
_HTTPX_ERRORS = (httpx.HTTPError, httpx.StreamError)

# How each httpx error becomes streammgr's, by where it happened: the first entry
# whose class matches wins (so the last, _HTTPX_ERRORS, catches anything httpx adds
# later). The one place httpx's exceptions are translated, as httpx's own
# _transports/default.py does for httpcore's. Each entry: the httpx class(es), the
# UpstreamError to raise, whether a reconnection may cure it, the message ({name}: the
# httpx class, {message}: its text redacted, {encoding}: the Content-Encoding).
_HttpxErrors = type[Exception] | tuple[type[Exception], ...]
_ErrorTable = tuple[tuple[_HttpxErrors, type[UpstreamError], bool, str], ...]

_SEND_ERRORS: _ErrorTable = (
    (
        (httpx.ConnectTimeout, httpx.PoolTimeout),
        UpstreamConnectTimeout,
        True,
        "could not connect to the upstream: {message}; check the upstream is up, or raise "
        "the client's connect timeout",
    ),
    (
        httpx.TimeoutException,
        UpstreamConnectTimeout,
        True,
        "the upstream did not answer the request in time ({name}); raise the client's "
        "timeouts if it is just slow",
    ),
    (
        httpx.TransportError,
        UpstreamConnectError,
        True,
        "could not reach the upstream ({name}: {message}); check the URL and that the "
        "upstream is up",
    ),
    (  # TooManyRedirects, StreamConsumed, and anything httpx adds later
        _HTTPX_ERRORS,
        UpstreamProtocolError,
        False,
        "the request to the upstream failed ({name}: {message})",
    ),
)

_READ_ERRORS: _ErrorTable = (
    (
        httpx.TimeoutException,
        UpstreamIdleTimeout,
        True,
        "the upstream stopped sending ({name}); raise the client's read timeout if gaps "
        "this long are normal",
    ),
    (
        httpx.TransportError,
        UpstreamConnectError,
        True,
        "the upstream connection broke mid-stream ({name}: {message})",
    ),
    (
        httpx.DecodingError,
        UpstreamProtocolError,
        False,
        "the upstream's body does not decode as its Content-Encoding says ({encoding!r}): "
        "{message}; the upstream or a proxy on the way sent a corrupt or mislabelled body: "
        "check its Content-Encoding",
    ),
    (  # StreamClosed, and anything httpx adds later
        _HTTPX_ERRORS,
        UpstreamProtocolError,
        False,
        "could not read the upstream's body ({name}: {message})",
    ),
)


def _upstream_error(
    settings: ConnectionSettings, exc: Exception, table: _ErrorTable, encoding: str = ""
) -> Exception:
    """The error to raise ``from exc``, as ``table`` says (wrapped to be retried if
    the entry allows it and the source has a reconnect policy)."""
    error_class, retryable, message = next(
        (error_class, retryable, message)
        for httpx_class, error_class, retryable, message in table
        if isinstance(exc, httpx_class)
    )
    text = message.format(
        name=type(exc).__name__, message=settings.redact(str(exc)), encoding=encoding or "none"
    )
    error: UpstreamError
    if issubclass(error_class, UpstreamTimeout):
        timeout = settings.connect if error_class is UpstreamConnectTimeout else settings.idle
        error = error_class(text, timeout=timeout or 0.0, url=settings.shown_url)
    else:
        error = error_class(text, url=settings.shown_url)
    return settings.retryable(error) if retryable else error


class _Body:
    """A response's decoded body chunks, with every generator under them in reach.

    httpx's ``aiter_bytes()`` decodes what ``aiter_raw()`` yields, and both are async
    generators over the transport's own (stacked several deep: httpx, httpcore).
    When the decoder fails (a corrupt ``Content-Encoding``), ``aiter_bytes`` ends
    with the error while ``aiter_raw`` stays suspended inside it, where nobody can
    reach it, and Trio warns when it garbage-collects it. So this starts
    ``aiter_raw`` itself and gives it to the response, whose ``aiter_bytes`` calls
    ``self.aiter_raw()``: :meth:`finish` can then run both to their end. (Should
    httpx stop calling it, the generator kept here is never started, which Trio
    does not warn about, and pulling it in :meth:`finish` only raises.)

    Attributes:
        chunks: the decoded chunks (``response.aiter_bytes()``).
        encoding: the response's ``Content-Encoding``, ``""`` if none, for errors.
    """

    __slots__ = ("_raw", "chunks", "encoding")

    def __init__(self, response: httpx.Response) -> None:
        raw = response.aiter_raw()

        def aiter_raw(chunk_size: int | None = None) -> AsyncIterator[bytes]:
            return raw

        response.aiter_raw = aiter_raw  # type: ignore[method-assign]
        self._raw: AsyncGenerator[bytes, None] = cast("AsyncGenerator[bytes, None]", raw)
        self.encoding = response.headers.get("content-encoding", "")
        if self.encoding in _IDENTITY and not response.is_stream_consumed:
            # Nothing to decode: aiter_bytes would yield aiter_raw's chunks unchanged
            # (both skip empty ones), one generator more per stream for its whole life
            # and one more level per chunk. (A body already read, as a MockTransport's
            # content, is aiter_bytes' own: it never calls aiter_raw then.)
            self.chunks = self._raw
        else:
            self.chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())

    async def finish(self) -> None:
        """Run both generators to their end, once the response is closed.

        ``aclose()`` on an outer generator leaves the ones it iterates suspended, and
        Trio warns when it garbage-collects them. Once the response is closed, pulling
        again makes the innermost one fail (or drain what was already buffered), and
        that failure runs every layer to its end: nothing is left suspended. Each
        generator is pulled at most ``_FINISH_PULLS`` times (one that still yields is
        left, not drained), then closed.
        """
        for generator in (self.chunks, self._raw):  # the same one when not encoded
            try:
                for _ in range(_FINISH_PULLS):
                    await generator.__anext__()
            except Exception:
                pass  # the end we wanted: StopAsyncIteration, StreamClosed, a read error
            with contextlib.suppress(Exception):
                await generator.aclose()  # a no-op for a generator that has ended


async def _close(response: httpx.Response, body: _Body | None) -> None:
    """Close a response, then run its body's generators to their end (see :class:`_Body`)."""
    try:
        await response.aclose()
    except Exception as exc:  # closing is best effort; the stream is over either way
        get_logger().warning("source.close_failed", error=describe_error(exc))
    if body is not None:
        await body.finish()
    # Break httpx's cycles (response.stream <-> its BoundAsyncStream, the cached
    # aiter_raw closure): with full collections made rare in a server (tune_gc), a
    # cycle per stream would be memory kept for hours.
    vars(response).pop("aiter_raw", None)
    response.stream = httpx.ByteStream(b"")


def _error_message(body: str) -> str:
    """The upstream's own message from a JSON error body, else the excerpt itself."""
    try:
        parsed = jsonlib.loads(body)
    except ValueError:
        return body.strip() or "(empty body)"
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return body.strip()


def _retry_after_ms(value: str | None) -> float | None:
    """``retry-after-ms`` (OpenAI's and the openai SDK's, more precise than
    ``Retry-After``) in seconds, or ``None`` if absent or not a number of ms."""
    if value is None:
        return None
    try:
        milliseconds = float(value.strip())
    except ValueError:
        return None
    if not milliseconds >= 0 or milliseconds == float("inf"):
        return None
    return milliseconds / 1000
