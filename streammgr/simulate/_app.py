"""The simulated upstream as a pure ASGI app: :class:`SimulatedUpstream`.

It needs nothing but streammgr's core dependencies (Trio): no web framework. It
answers through :func:`~streammgr.simulate.respond` and carries the response out
with ASGI messages, waiting with ``trio.sleep`` (so the mock clock drives it in
tests). While it streams it watches ``receive()`` for ``http.disconnect``, and
treats a failing ``send`` the same way: the client went away, the response stops.
A planned drop is the app returning before its last body message, which servers
(hypercorn, uvicorn) answer by closing the connection without ending the chunked
body. Every response is counted in :meth:`SimulatedUpstream.stats`.

Serving it on a socket is one line, for example
``hypercorn --worker-class trio "streammgr.simulate:SimulatedUpstream()"``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence

import trio

from ._response import DEFAULT_MODELS, SimulatedResponse, Write, error_response, respond
from ._scenario import Behaviour, Fault
from ._stats import ConnectionLedger, ConnectionStats, Ending, ResponseRecord

__all__ = ["Message", "Receive", "Scope", "Send", "SimulatedUpstream"]

Scope = Mapping[str, object]
"""An ASGI connection scope."""
Message = MutableMapping[str, object]
"""An ASGI event (``{"type": "http.request", ...}``)."""
Receive = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable."""
Send = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable."""

MAX_REQUEST_SIZE = 1024 * 1024
"""The largest request body read (bytes); a larger one gets a 413."""

# What a failing ``send`` raises: ASGI servers raise an OSError when the client has
# gone (the spec's ``ClientDisconnected``); memory channels driving the app in tests
# raise Trio's resource errors.
_CLIENT_GONE = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class _ClientLeft(Exception):
    """Internal: the client disconnected before its request body arrived whole."""


class SimulatedUpstream:
    """A simulated OpenAI-compatible upstream, as an ASGI app with counters.

    Every keyword is a server default for the behaviour of an answer; a request
    overrides any of them with the extra body field ``streammgr_simulate``.

    Args:
        tokens: tokens per answer (``max_tokens`` may cut it).
        first_token_latency: seconds before the first chunk.
        token_latency: seconds between tokens.
        jitter: each delay moves by up to this many seconds either way.
        fault: the fault every request gets unless it picks its own (a
            :class:`~streammgr.simulate.Fault` or its name), ``None`` for none.
        fault_after: tokens sent before a mid-stream fault (``None``: half).
        status: the status of the ``http_error`` fault.
        retry_after: the seconds ``rate_limited`` asks for.
        stall: how long a stall lasts (``None``: forever).
        seed: mixed with each request into its random generators.
        models: what ``GET /v1/models`` lists (every name is answered).

    Raises:
        TypeError, ValueError: an option has the wrong type or is out of range.
    """

    def __init__(
        self,
        *,
        tokens: int = 16,
        first_token_latency: float = 0.1,
        token_latency: float = 0.02,
        jitter: float = 0.0,
        fault: Fault | str | None = None,
        fault_after: int | None = None,
        status: int = 500,
        retry_after: float = 1.0,
        stall: float | None = None,
        seed: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
    ) -> None:
        if isinstance(fault, str) and not isinstance(fault, Fault):
            names = ", ".join(fault.value for fault in Fault)
            try:
                fault = Fault(fault)
            except ValueError:
                raise ValueError(f"fault must be None or one of {names}, got {fault!r}") from None
        self.behaviour = Behaviour(
            tokens=tokens,
            first_token_latency=first_token_latency,
            token_latency=token_latency,
            jitter=jitter,
            fault=fault,
            fault_after=fault_after,
            status=status,
            retry_after=retry_after,
            stall=stall,
            seed=seed,
        )
        if isinstance(models, str) or not all(isinstance(model, str) for model in models):
            raise TypeError(f"models must be a sequence of model names, got {models!r}")
        self.models = tuple(models)
        self.ledger = ConnectionLedger()

    def __repr__(self) -> str:
        return f"SimulatedUpstream({self.behaviour!r})"

    def stats(self) -> ConnectionStats:
        """A snapshot of the responses held now and in total, and how they ended."""
        return self.ledger.stats()

    def respond(self, method: str, path: str, body: bytes) -> SimulatedResponse:
        """The planned response to one request (pure: nothing is sent or counted)."""
        return respond(method, path, body, behaviour=self.behaviour, models=self.models)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: HTTP requests and the lifespan protocol."""
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            raise ValueError(
                f"the simulated upstream serves HTTP only, not ASGI {kind!r} connections"
            )
        record = self.ledger.open()
        ending = Ending.CLIENT_LEFT  # unless it gets further: cancelled, a failed send...
        try:
            try:
                body = await _request_body(receive)
            except _ClientLeft:
                return
            if body is None:
                response = error_response(
                    413,
                    f"the request body is larger than {MAX_REQUEST_SIZE} bytes; send less",
                    code="request_too_large",
                )
            else:
                response = self.respond(str(scope.get("method", "GET")), _path(scope), body)
            ending = await _serve(response, receive, send, record)
        finally:
            record.close(ending)


def _path(scope: Scope) -> str:
    path = scope.get("path")
    return path if isinstance(path, str) else "/"


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer ASGI lifespan startup and shutdown (there is nothing to set up)."""
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _request_body(receive: Receive) -> bytes | None:
    """The request body; ``None`` if it is larger than :data:`MAX_REQUEST_SIZE`.

    Raises:
        _ClientLeft: the client disconnected first.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "http.disconnect":
            raise _ClientLeft
        if kind != "http.request":
            continue
        part = message.get("body", b"")
        if isinstance(part, bytes | bytearray):
            size += len(part)
            if size > MAX_REQUEST_SIZE:
                return None
            parts.append(bytes(part))
        if not message.get("more_body", False):
            return b"".join(parts)


class _Progress:
    """How far a response got: every byte handed over, or the client gone first."""

    __slots__ = ("client_left", "record", "sent_all")

    def __init__(self, record: ResponseRecord | None = None) -> None:
        self.sent_all = False
        self.client_left = False
        self.record = record


async def _serve(
    response: SimulatedResponse,
    receive: Receive,
    send: Send,
    record: ResponseRecord | None = None,
) -> Ending:
    """Carry out ``response`` over ASGI while watching for the client to leave;
    ``record`` is closed as the end is handed over."""
    progress = _Progress(record)
    async with trio.open_nursery() as nursery:

        async def watch_disconnect() -> None:
            while (await receive()).get("type") != "http.disconnect":
                pass
            # Servers also say http.disconnect once a response is over (hypercorn does,
            # even while the last message is being sent): only before that is it a leave.
            progress.client_left = not progress.sent_all
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_disconnect)
        try:
            await _send_response(response, send, progress)
        except _CLIENT_GONE:
            progress.client_left = not progress.sent_all
        nursery.cancel_scope.cancel()
    if progress.client_left:
        return Ending.CLIENT_LEFT
    return Ending.COMPLETED if response.fault is None else Ending.FAULT


async def _send_response(response: SimulatedResponse, send: Send, progress: _Progress) -> None:
    """The steps as ASGI messages; a planned drop returns before the body's end."""
    if response.head_delay is None:
        await trio.sleep_forever()
    await trio.sleep(response.head_delay)
    headers = [(name.encode(), value.encode()) for name, value in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    for step in response.steps:
        if isinstance(step, Write):
            await send({"type": "http.response.body", "body": step.data, "more_body": True})
        elif step.seconds is None:
            await trio.sleep_forever()
        else:
            await trio.sleep(step.seconds)
    progress.sent_all = True  # the last byte is handed over (the end message has none)
    if not response.drops:
        if progress.record is not None:
            # Counted as closed as its end is handed over, not when this task resumes
            # after it: a client that read the end may open its next request at once
            # (on the same connection, now reused), which must not count as one more
            # open at the same time.
            progress.record.close(Ending.COMPLETED if response.fault is None else Ending.FAULT)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
