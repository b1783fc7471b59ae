"""The simulated upstream in-process, as an httpx transport: :class:`SimulatedTransport`.

``httpx.AsyncClient(transport=SimulatedTransport())`` answers every request from
the same scenarios as the ASGI app, with no socket: the transport plans the
response (:meth:`SimulatedUpstream.respond`) and streams its body step by step,
sleeping with ``trio.sleep`` in the reading task, so the mock clock drives it and a
body that never ends can be read incrementally (``httpx.ASGITransport`` would
buffer it whole). The body is an ``httpx.AsyncByteStream`` whose ``aclose()``
counts the response closed exactly once; reading it after the close raises
``httpx.StreamClosed`` and a planned drop raises ``httpx.RemoteProtocolError``, as
a real connection would.
"""

from __future__ import annotations

import httpx
import trio

from ._app import SimulatedUpstream
from ._response import Pause, SimulatedResponse, Write
from ._stats import Ending, ResponseRecord

__all__ = ["SimulatedTransport"]

_DROPPED = "peer closed connection without sending complete message body: incomplete chunked read"


class SimulatedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that answers from a :class:`SimulatedUpstream`, in-process.

    Args:
        upstream: the upstream to answer from (its defaults, models and counters);
            ``None``: a new one with the default behaviour.

    Attributes:
        upstream: the upstream; ``transport.upstream.stats()`` counts the responses.
    """

    def __init__(self, upstream: SimulatedUpstream | None = None) -> None:
        self.upstream = upstream if upstream is not None else SimulatedUpstream()

    def __repr__(self) -> str:
        return f"SimulatedTransport({self.upstream!r})"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer one request: wait out the head delay, then return a streaming body.

        Raises:
            trio.Cancelled: the caller gave up while the head was delayed (the
                response is then counted closed, as ``client_left``).
        """
        body = await request.aread()
        record = self.upstream.ledger.open()
        answered = False
        try:
            response = self.upstream.respond(request.method, request.url.path, body)
            if response.head_delay is None:
                await trio.sleep_forever()
            await trio.sleep(response.head_delay)
            answered = True
        finally:
            if not answered:
                record.close(Ending.CLIENT_LEFT)
        return httpx.Response(
            response.status,
            headers=list(response.headers),
            stream=_SimulatedBody(response, record),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )


class _SimulatedBody(httpx.AsyncByteStream):
    """One response body, read step by step; its close is counted once."""

    def __init__(self, response: SimulatedResponse, record: ResponseRecord) -> None:
        self._steps = response.steps
        self._drops = response.drops
        self._fault = response.fault
        self._record = record
        self._position = 0
        self._sent_all = False  # the last byte was handed over
        self._closed = False

    def __aiter__(self) -> _SimulatedBody:
        return self

    async def __anext__(self) -> bytes:
        # An iterator object rather than an async generator: nothing is left
        # suspended for the garbage collector when a reader stops half-way.
        steps = self._steps
        while True:
            if self._closed:
                raise httpx.StreamClosed()
            if self._position >= len(steps):
                if self._drops:
                    self._sent_all = True  # all there was to send: the drop is the end
                    raise httpx.RemoteProtocolError(_DROPPED)
                self._sent_all = True
                raise StopAsyncIteration
            step = steps[self._position]
            if isinstance(step, Pause):
                if step.seconds is None:
                    await trio.sleep_forever()
                await trio.sleep(step.seconds)
                self._position += 1
                continue
            assert isinstance(step, Write)
            self._position += 1
            if self._position == len(steps) and not self._drops:
                self._sent_all = True
            return step.data

    async def aclose(self) -> None:
        """Close the body: counted once, as completed, faulted, or the client leaving."""
        if self._closed:
            return
        self._closed = True
        if not self._sent_all:
            ending = Ending.CLIENT_LEFT
        elif self._fault is not None:
            ending = Ending.FAULT
        else:
            ending = Ending.COMPLETED
        self._record.close(ending)
