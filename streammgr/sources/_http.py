"""Server-Sent Events over httpx: check the response, parse, time out, reconnect.

:class:`SSESource` is a producer: ``manager.open(SSESource(client, url))`` streams
the upstream's events to the reader. Everything that can go wrong on the way is
mapped, at this edge, to a typed :class:`~streammgr.UpstreamError`; no httpx
exception reaches the user. Every response is closed on every path (shielded and
bounded), so a stream cancelled by the manager closes its connection before the
reader's ``async with`` block returns.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

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
)
from .._logging import describe_error, excerpt, get_logger, redact
from .._stream import current_producer
from .._validate import check_count, check_seconds, check_strings
from ..sse import ServerSentEvent, SSEParser
from ._common import excerpt_margin, header_secrets, redact_url, url_secrets

__all__ = ["Reconnect", "SSESource", "SourceTimeouts"]

_CLOSE_TIMEOUT = 5.0  # seconds a response's close may take, shielded
_ERROR_READ_TIMEOUT = 5.0  # seconds to read the excerpt of an error body
_NO_RECONNECT_STATUS = 204  # "stop reconnecting" (WHATWG)
# After a response is closed, its body iterator is pulled at most this many times:
# a real closed stream fails at once; one that does not is left, not drained.
_FINISH_PULLS = 100


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


class _Retryable(Exception):
    """Internal: this connection ended in a way a reconnection may cure.

    Raised ``from`` the upstream's own error (httpx's, when there is one); the
    reconnect loop hands that cause on to :attr:`error`, which is what the user gets.
    """

    def __init__(self, error: UpstreamError, delay: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


class SSESource:
    """A producer that streams Server-Sent Events from an HTTP upstream with httpx.

    ``manager.open(SSESource(client, url))`` yields :class:`~streammgr.sse.ServerSentEvent`;
    ``manager.open(source.raw_events)`` yields ``(event, raw_bytes)`` pairs (the
    original bytes, for proxies). Before streaming, the response is checked: a status that is not
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
    """

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
        self._client = client
        self._method = method.upper()
        self._url = httpx.URL(url)
        if params:
            self._url = self._url.copy_merge_params(dict(params))
        self._headers = httpx.Headers(headers or {})
        self._json = json
        self._content = content
        self._timeouts = timeouts if timeouts is not None else SourceTimeouts()
        self._reconnect = reconnect
        self._last_event_id = last_event_id
        self._max_event_size = max_event_size
        self._error_body_limit = error_body_limit
        # The secret parts of the request itself (credential headers, the URL's
        # userinfo and credential parameters), compared decoded: see _common.
        self._secrets = tuple(
            dict.fromkeys(
                [
                    *(value for value in extra_secrets if value),
                    *header_secrets(self._headers.multi_items()),
                    *url_secrets(str(self._url)),
                ]
            )
        )
        self._shown_url = redact_url(str(self._url), self._secrets)
        self._rng = random.Random()

    @property
    def url(self) -> str:
        """The upstream URL with credentials redacted."""
        return self._shown_url

    def __repr__(self) -> str:
        return f"SSESource({self._method} {self.url})"

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # -- producing ---------------------------------------------------------------

    def __call__(self) -> AsyncGenerator[ServerSentEvent, None]:
        """Stream the upstream's events (a fresh async generator per call)."""
        return cast("AsyncGenerator[ServerSentEvent, None]", self._stream(raw=False))

    def raw_events(self) -> AsyncGenerator[tuple[ServerSentEvent, bytes], None]:
        """Stream ``(event, raw_bytes)`` pairs: each event with the bytes the
        upstream sent for it, unchanged, for a proxy to forward without decoding
        and re-encoding. ``manager.open(source.raw_events)``."""
        return cast("AsyncGenerator[tuple[ServerSentEvent, bytes], None]", self._stream(raw=True))

    async def _stream(self, *, raw: bool) -> AsyncGenerator[object, None]:
        """Connections one after another, while the reconnect policy allows.

        No cancel scope is held across a ``yield`` (that would leak the scope into
        the consumer's task): each await gets its own scope with the deadline that
        applies to it, so a cancel scope is made per chunk read, never per event.
        """
        timeouts = self._timeouts
        now = trio.current_time()
        total_deadline = now + timeouts.total if timeouts.total is not None else math.inf
        last_event_id = self._last_event_id
        server_retry: int | None = None
        attempt = 0
        context = current_producer()
        add_bytes = context.add_bytes if context is not None else None
        while True:
            parser = SSEParser(self._max_event_size)
            feed = parser.feed_raw if raw else parser.feed
            outcome: _Retryable | None = None
            response: httpx.Response | None = None
            body: _Body | None = None
            seen_event = False
            connected_at = ended_at = math.inf
            try:
                started = trio.current_time()
                response = await self._send(self._request(last_event_id), total_deadline)
                if not await self._check(response):
                    return  # 204 No Content: nothing to stream, and never reconnect
                connected_at = trio.current_time()
                if context is not None:
                    context.connected()
                first_event, idle = timeouts.first_event, timeouts.idle
                deadline = (
                    started + first_event
                    if first_event is not None
                    else (started + idle if idle is not None else math.inf)
                )
                body = _Body(response)
                chunks = body.chunks
                while True:
                    chunk = await self._next_chunk(
                        chunks, min(deadline, total_deadline), seen_event, total_deadline, body
                    )
                    if chunk is None:
                        parser.close()
                        break
                    if add_bytes is not None:
                        add_bytes(len(chunk))
                    try:
                        items = feed(chunk)
                    except SSEEventTooLarge as exc:
                        raise UpstreamProtocolError(
                            f"{exc}; the upstream sent an event larger than this source accepts",
                            url=self.url,
                        ) from exc
                    if not items:
                        continue
                    if not seen_event:
                        seen_event = True
                        if idle is None:
                            deadline = math.inf
                    for item in items:
                        yield item
                    if idle is not None:
                        # From now: time parked at yield behind a slow reader is not
                        # the upstream's idleness.
                        deadline = trio.current_time() + idle
                    last = items[-1]
                    last_event_id = (last[0] if raw else last).id  # type: ignore[union-attr]
                if self._reconnect is None:
                    return
            except _Retryable as retryable:
                outcome = retryable
                if retryable.__cause__ is not None:
                    # The user gets the error, never the wrapper: give it the cause.
                    retryable.error.__cause__ = retryable.__cause__
            finally:
                ended_at = trio.current_time()
                if parser.retry is not None:
                    server_retry = parser.retry
                # Closed on every path, even when cancelled, and it cannot hang.
                with trio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = trio.current_time() + _CLOSE_TIMEOUT
                    if response is not None:
                        await _close(response, body)
            policy = self._reconnect
            assert policy is not None
            uptime = ended_at - connected_at  # -inf when the upstream never answered
            if seen_event and uptime >= policy.healthy_after:
                attempt = 0  # a healthy connection: a fresh run of attempts
            attempt += 1
            last_error = outcome.error if outcome is not None else None
            server_delay = outcome.delay if outcome is not None else None
            if server_delay is not None and server_delay > policy.max_delay:
                assert isinstance(last_error, UpstreamStatusError)
                raise self._wait_refused(last_error, server_delay, policy.max_delay)
            if attempt > policy.max_attempts:
                if last_error is not None:
                    raise last_error
                if seen_event:
                    raise UpstreamConnectError(
                        f"the upstream kept closing the stream soon after opening it (the "
                        f"last connection lasted {uptime:.3g}s, less than "
                        f"Reconnect.healthy_after={policy.healthy_after:g}s): gave up after "
                        f"{policy.max_attempts} reconnections; lower healthy_after if the "
                        f"upstream legitimately closes this soon",
                        url=self.url,
                    )
                raise UpstreamConnectError(
                    f"the upstream kept closing the stream without sending an event: gave up "
                    f"after {policy.max_attempts} reconnections",
                    url=self.url,
                )
            if server_delay is not None:
                delay = max(server_delay, policy.min_delay)
            else:
                delay = policy.delay(attempt, server_retry, self._rng)
            if trio.current_time() + delay >= total_deadline:
                raise self._total_timeout(
                    "no time left to reconnect within the total timeout"
                ) from last_error
            await trio.sleep(delay)

    async def _read_chunk(self, chunks: AsyncIterator[bytes], body: _Body) -> bytes | None:
        """The next body chunk, ``None`` at the end; httpx's errors mapped."""
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return None
        except httpx.TimeoutException as exc:
            raise self._retryable(
                UpstreamIdleTimeout(
                    f"the upstream stopped sending ({type(exc).__name__}); raise the "
                    f"client's read timeout if gaps this long are normal",
                    timeout=self._timeouts.idle or 0.0,
                    url=self.url,
                )
            ) from exc
        except httpx.TransportError as exc:
            raise self._retryable(
                UpstreamConnectError(
                    f"the upstream connection broke mid-stream ({type(exc).__name__}: "
                    f"{self._redact(str(exc))})",
                    url=self.url,
                )
            ) from exc
        except httpx.DecodingError as exc:
            encoding = body.encoding or "none"
            raise UpstreamProtocolError(
                f"the upstream's body does not decode as its Content-Encoding says "
                f"({encoding!r}): {self._redact(str(exc))}; the upstream or a proxy on the "
                f"way sent a corrupt or mislabelled body: check its Content-Encoding",
                url=self.url,
            ) from exc
        except httpx.HTTPError as exc:  # StreamClosed and anything httpx adds later
            raise UpstreamProtocolError(
                f"could not read the upstream's body ({type(exc).__name__}: "
                f"{self._redact(str(exc))})",
                url=self.url,
            ) from exc

    def _request(self, last_event_id: str) -> httpx.Request:
        headers = self._headers.copy()
        headers.setdefault("accept", "text/event-stream")
        headers.setdefault("cache-control", "no-store")
        if last_event_id:
            headers["last-event-id"] = last_event_id
        return self._client.build_request(
            self._method, self._url, headers=headers, json=self._json, content=self._content
        )

    def _total_timeout(self, what: str) -> UpstreamDeadlineExceeded:
        total = self._timeouts.total or 0.0
        return UpstreamDeadlineExceeded(
            f"{what} ({total:g}s); raise timeouts.total if streams this long are expected",
            timeout=total,
            url=self.url,
        )

    async def _next_chunk(
        self,
        chunks: AsyncIterator[bytes],
        deadline: float,
        seen_event: bool,
        total_deadline: float,
        body: _Body,
    ) -> bytes | None:
        """The next body chunk (``None`` at the end), within ``deadline``."""
        if deadline == math.inf:
            # No timeout applies: skip the cancel scope, which costs as much as
            # parsing the chunk (benchmarks/bench_sources.py).
            return await self._read_chunk(chunks, body)
        timeouts = self._timeouts
        with trio.CancelScope(deadline=deadline) as scope:
            return await self._read_chunk(chunks, body)
        assert scope.cancelled_caught
        if deadline >= total_deadline:
            raise self._total_timeout("the upstream stream outlived its total timeout")
        if not seen_event and timeouts.first_event is not None:
            raise self._retryable(
                UpstreamFirstEventTimeout(
                    f"the upstream sent no event within {timeouts.first_event:g}s of the "
                    f"request; raise timeouts.first_event if it is just slow to start",
                    timeout=timeouts.first_event,
                    url=self.url,
                )
            )
        raise self._retryable(
            UpstreamIdleTimeout(
                f"the upstream sent no event for {timeouts.idle:g}s; raise timeouts.idle if "
                f"gaps this long are normal",
                timeout=timeouts.idle or 0.0,
                url=self.url,
            )
        )

    async def _send(self, request: httpx.Request, total_deadline: float) -> httpx.Response:
        """Send the request; map every way it can fail."""
        connect = self._timeouts.connect
        response: httpx.Response | None = None
        deadline = trio.current_time() + connect if connect is not None else math.inf
        try:
            with trio.CancelScope(deadline=min(deadline, total_deadline)):
                response = await self._client.send(request, stream=True)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise self._retryable(
                UpstreamConnectTimeout(
                    f"could not connect to the upstream: {self._redact(str(exc))}; check the "
                    f"upstream is up, or raise the client's connect timeout",
                    timeout=connect or 0.0,
                    url=self.url,
                )
            ) from exc
        except httpx.TimeoutException as exc:
            raise self._retryable(
                UpstreamConnectTimeout(
                    f"the upstream did not answer the request in time "
                    f"({type(exc).__name__}); raise the client's timeouts if it is just slow",
                    timeout=connect or 0.0,
                    url=self.url,
                )
            ) from exc
        except httpx.TransportError as exc:
            raise self._retryable(
                UpstreamConnectError(
                    f"could not reach the upstream ({type(exc).__name__}: "
                    f"{self._redact(str(exc))}); check the URL and that the upstream is up",
                    url=self.url,
                )
            ) from exc
        except httpx.HTTPError as exc:  # TooManyRedirects, and anything httpx adds later
            raise UpstreamProtocolError(
                f"the request to the upstream failed ({type(exc).__name__}: "
                f"{self._redact(str(exc))})",
                url=self.url,
            ) from exc
        if response is None:
            if total_deadline <= deadline:
                raise self._total_timeout("the upstream stream outlived its total timeout")
            raise self._retryable(
                UpstreamConnectTimeout(
                    f"the upstream did not answer within the connect timeout of {connect:g}s; "
                    f"check the upstream, or raise timeouts.connect",
                    timeout=connect or 0.0,
                    url=self.url,
                )
            )
        return response

    def _wait_refused(
        self, error: UpstreamStatusError, retry_after: float, max_delay: float
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

    def _retryable(self, error: UpstreamError, delay: float | None = None) -> Exception:
        """Wrap ``error`` for the reconnect loop when a policy is set; else as is."""
        if self._reconnect is None:
            return error
        return _Retryable(error, delay)

    async def _check(self, response: httpx.Response) -> bool:
        """Refuse an error status or a body that is not an event stream.

        Returns ``False`` for 204 No Content: nothing to stream, never reconnect.
        """
        status = response.status_code
        if status == _NO_RECONNECT_STATUS:
            return False
        if not 200 <= status < 300:
            body = await self._excerpt(response)
            retry_after = _retry_after(response.headers.get("retry-after"))
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
                url=self.url,
                retry_after=retry_after,
            )
            policy = self._reconnect
            if policy is not None and status in policy.retry_statuses:
                raise _Retryable(error, retry_after)
            raise error
        content_type = response.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "text/event-stream":
            body = await self._excerpt(response)
            raise UpstreamProtocolError(
                f"upstream answered {status} with content type {content_type or 'none'!r}, "
                f"not text/event-stream: {_error_message(body)}; check the URL and that the "
                f"request asks for a stream",
                url=self.url,
            )
        return True

    async def _excerpt(self, response: httpx.Response) -> str:
        """Up to ``error_body_limit`` characters of the body, decoded leniently:
        redacted first, then cut (:func:`~streammgr._logging.excerpt`).

        A little more than the limit is read, so that a secret the upstream echoes
        across the limit is recognised whole before the cut.
        """
        limit = self._error_body_limit
        wanted = limit + excerpt_margin(self._secrets)
        pieces: list[bytes] = []
        size = 0
        complete = False
        body = _Body(response)
        try:
            with trio.move_on_after(_ERROR_READ_TIMEOUT):
                async for chunk in body.chunks:
                    pieces.append(chunk)
                    size += len(chunk)
                    if size > wanted:
                        break
                else:
                    complete = True
        except httpx.HTTPError:
            pass  # an excerpt is best effort: the status is the error
        finally:
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = trio.current_time() + _CLOSE_TIMEOUT
                await _close(response, body)
        text = b"".join(pieces)[:wanted].decode("utf-8", "replace")
        return excerpt(text, limit, self._secrets, complete=complete)


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
        self.chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        self.encoding = response.headers.get("content-encoding", "")

    async def finish(self) -> None:
        """Run both generators to their end, once the response is closed.

        ``aclose()`` on an outer generator leaves the ones it iterates suspended, and
        Trio warns when it garbage-collects them. Once the response is closed, pulling
        again makes the innermost one fail (or drain what was already buffered), and
        that failure runs every layer to its end: nothing is left suspended. Each
        generator is pulled at most ``_FINISH_PULLS`` times (one that still yields is
        left, not drained), then closed.
        """
        for generator in (self.chunks, self._raw):
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


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), or ``None``."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: use the backoff instead
    return seconds if 0 <= seconds < 86_400 else None


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
