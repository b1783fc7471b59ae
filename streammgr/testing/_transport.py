"""Counting upstream responses: :class:`TrackingTransport`.

An httpx transport that wraps another one (``httpx.MockTransport``, the simulated
upstream's :class:`~streammgr.simulate.SimulatedTransport`, the real
``httpx.AsyncHTTPTransport``) and wraps the body of every response it returns, so
that each response's ``aclose()`` calls are counted. A response is leaked when it
is never closed, and mishandled when it is closed more than once (httpx's own
``Response.aclose()`` guards against that, so a double close means someone closed
the raw stream behind httpx's back).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import trio

from ._leaks import Leak, LeakError, _now

__all__ = ["TrackedResponse", "TrackingTransport"]


@dataclass(slots=True)
class TrackedResponse:
    """One response a :class:`TrackingTransport` returned, and how often it was closed.

    Attributes:
        number: its order among the transport's responses, from 1.
        method: the request's method.
        url: scheme, host and path of the request (no query string, no userinfo:
            those can carry credentials).
        status: the response status.
        opened_at: when the transport returned it (Trio clock).
        closes: how many times its body's ``aclose()`` was called.
        preloaded: the inner transport returned it already read and closed (an
            ``httpx.Response`` built with ``content=``): it counts as closed once,
            and nothing about its closing can be checked. Give a mock a streaming
            body (``stream=``) to check that the code under test closes it.
    """

    number: int
    method: str
    url: str
    status: int
    opened_at: float
    closes: int = 0
    preloaded: bool = False

    def __str__(self) -> str:
        return f"response #{self.number} {self.status} to {self.method} {self.url}"


class TrackingTransport(httpx.AsyncBaseTransport):
    """An httpx transport that counts the responses of ``inner`` opened and closed.

    Use it as the client's transport: ``httpx.AsyncClient(transport=
    TrackingTransport(inner))``, then :meth:`check` at the end of a test.

    Args:
        inner: the transport that answers (``httpx.MockTransport``,
            ``SimulatedTransport``, ``httpx.AsyncHTTPTransport``...).

    Attributes:
        inner: the wrapped transport.
        responses: every response returned, in order.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        if not isinstance(inner, httpx.AsyncBaseTransport):
            raise TypeError(
                f"inner must be an httpx.AsyncBaseTransport (httpx.MockTransport, "
                f"SimulatedTransport...), got {type(inner).__name__}"
            )
        self.inner = inner
        self.responses: list[TrackedResponse] = []
        self._numbers = itertools.count(1)

    def __repr__(self) -> str:
        return (
            f"TrackingTransport({self.inner!r}, opened={self.opened}, "
            f"open={len(self.open_responses)})"
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through ``inner``; the response's body is wrapped to count its closes."""
        response = await self.inner.handle_async_request(request)
        url = request.url
        tracked = TrackedResponse(
            next(self._numbers),
            request.method,
            f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}{url.path}",
            response.status_code,
            trio.current_time(),
        )
        self.responses.append(tracked)
        if response.is_closed:
            # Built from bytes (httpx.Response(200, content=...)): httpx read and
            # closed it before returning it, so there is nothing left to close.
            tracked.closes = 1
            tracked.preloaded = True
            return response
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError(
                f"the inner transport returned a response with a synchronous body "
                f"({type(stream).__name__}); an async transport must give an "
                f"httpx.AsyncByteStream (with MockTransport: stream=, or content=)"
            )
        response.stream = _TrackedStream(stream, tracked)
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.inner.aclose()

    @property
    def opened(self) -> int:
        """How many responses were returned."""
        return len(self.responses)

    @property
    def closed(self) -> int:
        """How many responses were closed at least once."""
        return sum(1 for response in self.responses if response.closes)

    @property
    def open_responses(self) -> list[TrackedResponse]:
        """The responses not closed (yet)."""
        return [response for response in self.responses if not response.closes]

    @property
    def closed_twice(self) -> list[TrackedResponse]:
        """The responses whose body was closed more than once."""
        return [response for response in self.responses if response.closes > 1]

    def leaks(self) -> list[Leak]:
        """A :class:`Leak` (kind ``"response"``) per response not closed, or closed twice."""
        now = _now()
        found = [
            Leak(
                "response",
                f"{response} never closed",
                age=None if now is None else now - response.opened_at,
            )
            for response in self.open_responses
        ]
        found += [
            Leak("response", f"{response} closed {response.closes} times, not once")
            for response in self.closed_twice
        ]
        return found

    def check(self) -> None:
        """Raise :class:`LeakError` unless every response was closed exactly once."""
        found = self.leaks()
        if found:
            raise LeakError(found, where="in upstream responses")


class _TrackedStream(httpx.AsyncByteStream):
    """A response body that counts its ``aclose()`` calls and passes everything on.

    An iterator object, not an async generator: a reader that stops half-way
    leaves nothing suspended for the garbage collector (nor does this layer).
    """

    def __init__(self, inner: httpx.AsyncByteStream, tracked: TrackedResponse) -> None:
        self._inner = inner
        self._tracked = tracked
        self._chunks: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> _TrackedStream:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = self._inner.__aiter__()
        return await chunks.__anext__()

    async def aclose(self) -> None:
        self._tracked.closes += 1
        await self._inner.aclose()
