"""The streaming response a backend service returns from its own endpoints.

:class:`EventStreamResponse` opens a stream through a :class:`StreamManager` and
answers ``text/event-stream``, one body write per batch. One task of its own serves
a held stream, and nothing is armed per response beyond a heap entry, so that no
phase can hide a client that went away and an idle stream costs almost nothing:

- the **response's task** opens the stream (single-reader mode: it pulls from the
  upstream itself, no producer task, no channel) and writes its batches and the end,
  with no cancel scope armed per read or per write;
- the **client's leaving**: under :func:`~streammgr.server.serve`, the server calls
  back at ``http.disconnect`` (its :class:`~streammgr.server._hypercorn.DisconnectNotice`),
  which cancels the stream (``client_disconnected``) and the response. Under any
  other server a **client watcher** task receives ASGI messages until
  ``http.disconnect`` and does the same. It does not rely on the server's ASGI spec
  version (Starlette's ``StreamingResponse`` listens for ``http.disconnect`` only
  when the server reports spec < 2.4, and otherwise waits for ``send()`` to fail,
  which hypercorn's trio worker never does);
- a **timer** in the manager's one deadline heap (:class:`~streammgr._timers.SharedTimers`,
  served by the manager's watchdog task), not a task: when it fires it starts what is
  due while the response's task waits for its upstream (the headers at
  ``answer_within``, keep-alives), each write in a short task of the response, and
  it is the write guard (``stall_timeout``): a write in flight that waited
  ``stall_timeout`` means the client stopped reading. It cancels the stream
  (``client_stalled``): the manager closes the parked producer and releases its slot
  even while the response's task is parked in a ``send()`` that hypercorn shields
  from cancellation. Then a short task closes the connection, if
  :func:`~streammgr.server.serve` serves it, which wakes that send. Writes only stamp
  their times: the timer is never re-armed per batch; when it fires early (a write
  moved the next keep-alive later) it answers the later time.

Nothing is written while the stream waits for a slot: its status is not known yet.
The wait ends by ``answer_within`` (then a 429), so that every refusal by a limit is
a 429 by the order of decisions, never a ``200`` and an in-band error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import trio
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import StreamCancelled
from .._logging import get_logger
from .._manager import StreamManager
from .._options import check_option
from .._states import CloseReason
from .._stream import ManagedStream
from .._timers import TimerEntry
from .._validate import UNSET
from ._answers import (
    KEEP_ALIVE,
    BatchEncoder,
    ErrorAnswer,
    encode_batch,
    error_answer,
    without_resume_fields,
)
from ._hypercorn import Connection, current_connection, disconnect_notice

__all__ = ["EventStreamResponse"]

_CLIENT_GONE = (CloseReason.CLIENT_DISCONNECTED, CloseReason.CLIENT_STALLED)


class EventStreamResponse(Response):
    """A Server-Sent Events response that runs its producer through a manager.

    Return it from a Starlette or FastAPI endpoint, or call it as an ASGI app. It
    opens ``manager.open(producer, *args, ...)`` (limits, registry, timeouts), and
    answers ``text/event-stream`` with one ``http.response.body`` message per batch
    (``stream.batches()``). Keep-alive comments go out every ``keep_alive`` seconds
    without a write, from the moment the headers are out: before the first item
    and between items (never while the stream waits for a slot: see below).

    **Admission and headers.** Nothing is sent while the stream waits for a slot,
    and it waits at most ``answer_within`` seconds (or its ``acquire_timeout``, if
    shorter): a refusal (``StreamLimitExceeded``) is always a 429 with
    ``Retry-After`` and a JSON error body, before any byte of a stream. Once the
    stream is admitted no limit can refuse it: the headers go out with its first
    batch, or with a keep-alive comment ``answer_within`` seconds after the request
    came (at once if that moment has passed). A stream that fails before its headers
    gets its status (502 for an upstream error, 429 for an upstream's 429...); a
    later failure ends the body with an in-band ``data: {"error": {...}}`` event:
    never a silent end.

    **The client going away**, in any phase (waiting for a slot, before the first
    item, mid-stream): the stream is cancelled with ``client_disconnected`` and the
    registry records what had been delivered. A client that stops reading with its
    socket open: see ``stall_timeout``. Every answer carries ``x-stream-id``.

    Args:
        manager: the running manager the stream is opened in.
        producer: the producer, as ``manager.open`` takes it.
        *args: its positional arguments.
        key: the admission key.
        labels: registry labels.
        acquire_timeout: seconds a stream may wait for a slot before it is refused
            (``None``: forever); no longer than ``answer_within``. Left out: the
            manager's.
        reader_timeout: seconds an item may wait for the reader to take it
            (``None``: forever); the response's task reads a pull producer itself
            (single-reader mode), so this bounds the time between two reads, the
            write of what was read included. It ends the stream (and frees its
            slot) also while the response is parked in a write. Left out: the
            manager's.
        idle_timeout: seconds the producer may deliver nothing (``None``: forever).
            Left out: the manager's.
        deadline: the longest life of a stream, in seconds from its admission
            (``None``: none). Left out: the manager's.
        buffer_size: hand-offs (items or batches) buffered between producer and
            reader (``0``: each is handed over directly); a push producer's only (a
            pull producer is read by the response's own task). Left out: the
            manager's.
        item_size: as ``manager.open``.
        encode: turns a batch (a list of items) into the bytes of one write; default
            :func:`encode_batch`-like: ``RawBatch.raw``, or each
            :class:`~streammgr.sse.ServerSentEvent` / ``str`` / ``bytes`` item encoded.
        resumable: ``False`` never sends ``id:`` or ``retry:`` fields (OpenAI routes:
            once the openai SDK has seen an ``id:``, a comment-only keep-alive makes
            it fail).
        keep_alive: seconds without a write before a keep-alive comment (``None``:
            none). The default, 15: load balancers cut connections idle for 60 s.
        answer_within: the most seconds before the status is decided: a stream
            still waiting for a slot then is refused with a 429, an admitted one
            sends its headers (``0``: never wait for a slot; ``None``: no
            deadline). Default 1. With ``0`` the headers go out as soon as the stream
            is admitted; with ``None`` the stream waits as long as its
            ``acquire_timeout`` lets it, and the headers go out with its first batch
            (or its error's status), at the latest ``keep_alive`` seconds after its
            admission, with a keep-alive. To let streams queue longer, raise it: the
            client sees no byte while its stream waits.
        stall_timeout: the most seconds one write may wait for a client that reads
            nothing (then ``client_stalled``; ``None``: no bound). Default 30: then
            the stream's producer and slot are released, and the connection is
            closed when :func:`~streammgr.server.serve` serves it.
        status_code: the status of a streaming answer.
        headers: extra headers of a streaming answer.
        answer_error: how an error becomes the client's answer (default
            :func:`~streammgr.server.error_answer`): called with the error, the stream
            id and the registry's redacted description; a gateway passes one that
            keeps an upstream's 4xx status (so a client does not retry a bad request).

    Raises:
        TypeError / ValueError: a bad argument, named in the message (also those
            ``manager.open`` checks).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        manager: StreamManager,
        producer: Callable[..., Any],
        /,
        *args: object,
        key: str = "default",
        labels: Mapping[str, str] | None = None,
        acquire_timeout: float | None = UNSET,
        reader_timeout: float | None = UNSET,
        idle_timeout: float | None = UNSET,
        deadline: float | None = UNSET,
        buffer_size: int = UNSET,
        item_size: Callable[[Any], int] | None = None,
        encode: Callable[[list[Any]], bytes] | None = None,
        resumable: bool = True,
        keep_alive: float | None = 15.0,
        answer_within: float | None = 1.0,
        stall_timeout: float | None = 30.0,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        answer_error: Callable[[BaseException, str, str | None], ErrorAnswer] = error_answer,
    ) -> None:
        self._answer_error = answer_error
        self._keep_alive: float | None = check_option("keep_alive", keep_alive)
        self._stall_timeout: float | None = check_option("stall_timeout", stall_timeout)
        self._answer_within: float | None = check_option("answer_within", answer_within)
        encoder: BatchEncoder = encode_batch if encode is None else encode
        self._encode = encoder if resumable else without_resume_fields(encoder)
        # Single-reader mode: the response's own task pulls from a pull producer
        # (a push producer keeps its task: see manager.open's ``inline``).
        self._stream: ManagedStream[Any] = manager.open(
            producer,
            *args,
            key=key,
            labels=labels,
            acquire_timeout=acquire_timeout,
            reader_timeout=reader_timeout,
            idle_timeout=idle_timeout,
            deadline=deadline,
            buffer_size=buffer_size,
            item_size=item_size,
            inline=True,
        )
        # The status is due at answer_within: the wait for a slot ends by then, so
        # that a refusal comes before the headers, never after them.
        self._stream._acquire_timeout = _admission_wait(
            self._stream._acquire_timeout, self._answer_within
        )
        self._manager = manager
        self.status_code = status_code
        self.background = None
        self.init_headers(
            {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}
        )
        self.raw_headers.append((b"x-stream-id", self._stream.id.encode()))

    @property
    def stream_id(self) -> str:
        """The id of the response's stream (in the registry, logs and ``x-stream-id``)."""
        return self._stream.id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request (the ASGI application interface)."""
        if scope["type"] != "http":
            raise TypeError(f"EventStreamResponse answers http requests, not {scope['type']!r}")
        async with trio.open_nursery() as nursery:
            run = _Run(self, scope, send, nursery)
            notice = disconnect_notice(scope)
            if notice is None:
                nursery.start_soon(run.watch_client, receive, name="streammgr-client-watcher")
            elif notice.notify(run.client_left):
                # Gone already: told once the stream is registered (as the watcher
                # would, from its first turn), so that the reason is recorded.
                nursery.start_soon(run.left_before_the_call, name="streammgr-client-gone")
            run.arm()
            try:
                await run.respond()
            finally:
                run.disarm()
                if notice is not None:
                    notice.stop_notifying()
            nursery.cancel_scope.cancel()


DIRECT_SEND = "streammgr.direct_send"
"""The scope key under which :class:`DirectBodyWrites` leaves the server's ``send``."""


class DirectBodyWrites:
    """Pure ASGI middleware: streaming responses inside send body messages straight to
    the ``send`` this layer received, past the layers in between.

    Each ASGI middleware that wraps ``send`` costs a coroutine per message, and
    most look only at ``http.response.start`` (Starlette's error middlewares, the
    request id, CORS, the access log). An :class:`EventStreamResponse` still sends
    its start through every layer, and then its bodies directly. Only an app that
    knows every layer between this one and its responses looks only at the start
    may use it (the gateway and the service do): a layer that rewrites bodies
    (compression) must not be in between. The outermost such layer wins.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app, with this layer's ``send`` in the scope for its bodies."""
        if scope["type"] != "http" or DIRECT_SEND in scope:
            await self.app(scope, receive, send)
            return
        scope[DIRECT_SEND] = send
        try:
            await self.app(scope, receive, send)
        finally:
            # hypercorn's HTTPStream holds the scope, and this send holds the HTTPStream:
            # a cycle per request that only a full collection would free.
            del scope[DIRECT_SEND]


async def until_stalled(write_started: Callable[[], float | None], stall_timeout: float) -> None:
    """Return when one write has waited ``stall_timeout`` for the client.

    ``write_started()`` is when the write in flight began (``None``: none is). Wakes
    once per ``stall_timeout`` while no write is in flight, and at the exact moment a
    write in flight reaches it: writers only stamp the time.
    """
    while True:
        started = write_started()
        if started is None:
            await trio.sleep(stall_timeout)
        elif trio.current_time() < started + stall_timeout:
            await trio.sleep_until(started + stall_timeout)
        else:
            return


def _admission_wait(acquire_timeout: float | None, answer_within: float | None) -> float | None:
    """The most seconds the stream may wait for a slot: until its status is due."""
    if answer_within is None:
        return acquire_timeout
    return answer_within if acquire_timeout is None else min(acquire_timeout, answer_within)


class _Writer:
    """Every write of one response: the headers once, bodies, keep-alives, the end.

    Records when the write in flight began, for the guard, and when the last one
    ended, for the keep-alives.
    """

    # One per held response: no instance dict (#15, memory per held stream).
    __slots__ = (
        "_admitted",
        "_answer_at",
        "_answer_error",
        "_body_send",
        "_headers",
        "_last_write",
        "_send",
        "_status",
        "_stream_id",
        "ended",
        "headers_sent",
        "keep_alive_done",
        "keep_alive_period",
        "write_started",
    )

    def __init__(self, send: Send, response: EventStreamResponse, body_send: Send) -> None:
        self._send = send
        # Body messages, once the start went through ``send``: the server's own
        # send where a DirectBodyWrites layer vouches for the layers in between.
        self._body_send = body_send
        # Set while the timer's keep-alive write is in flight: every other write
        # waits for it (one check per write), so that writes never interleave.
        self.keep_alive_done: trio.Event | None = None
        self._admitted = False
        self._status = response.status_code
        self._headers = response.raw_headers
        self._stream_id = response.stream_id.encode()
        self._answer_error = response._answer_error
        self.keep_alive_period = math.inf if response._keep_alive is None else response._keep_alive
        self.headers_sent = False
        self.ended = False
        self.write_started: float | None = None
        # None: no deadline while the stream waits for its slot (see admitted()).
        within = response._answer_within
        self._answer_at = math.inf if within is None else trio.current_time() + within
        self._last_write = -math.inf

    def admitted(self) -> float:
        """The stream holds its slot: the status is decided. Without an answer
        deadline, the headers go out with the first keep-alive at the latest, so
        that a slow upstream never leaves the client without its headers. Returns
        when they are due."""
        if self._answer_at == math.inf:
            self._answer_at = trio.current_time() + self.keep_alive_period
        self._admitted = True
        return self._answer_at

    def idle_write_at(self) -> float:
        """When to write if nothing else is: the headers, or a keep-alive (never
        before admission, nor after the end)."""
        if not self._admitted or self.ended:
            return math.inf
        if not self.headers_sent:
            return self._answer_at
        return self._last_write + self.keep_alive_period

    async def _write(self, message: Message, body: bool = True) -> None:
        self.write_started = trio.current_time()
        try:
            await (self._body_send if body else self._send)(message)
        except OSError as exc:
            # Servers that report a gone client by failing send() (ASGI spec 2.4).
            raise _ClientGone from exc
        finally:
            self.write_started = None
            self._last_write = trio.current_time()

    async def _start(self) -> None:
        self.headers_sent = True
        await self._write(
            {"type": "http.response.start", "status": self._status, "headers": self._headers},
            body=False,
        )

    async def body(self, data: bytes) -> None:
        """One body write (the headers first if they are not out)."""
        if self.keep_alive_done is not None:
            await self.keep_alive_done.wait()
        if not self.headers_sent:
            await self._start()
        if data:
            await self._write({"type": "http.response.body", "body": data, "more_body": True})

    async def keep_alive(self, done: trio.Event) -> None:
        """The timer's write: the headers with a keep-alive, or a keep-alive.

        ``done`` is :attr:`keep_alive_done`, set by the timer when it decided to
        write; it is set when this write is over, whatever happens.
        """
        try:
            if not self.headers_sent:
                await self._start()
            await self._write({"type": "http.response.body", "body": KEEP_ALIVE, "more_body": True})
        finally:
            self.keep_alive_done = None
            done.set()

    async def end(self, last: bytes = b"") -> None:
        """The last body write: ``last``, then the end of the body."""
        if self.keep_alive_done is not None:
            await self.keep_alive_done.wait()
        if not self.headers_sent:
            await self._start()
        self.ended = True
        await self._write({"type": "http.response.body", "body": last, "more_body": False})

    async def error(self, error: BaseException, recorded: str | None) -> None:
        """Tell the client: a JSON error answer, or an in-band event and the end."""
        answer = self._answer_error(error, self._stream_id.decode(), recorded)
        if self.keep_alive_done is not None:
            await self.keep_alive_done.wait()
        if self.headers_sent:
            await self.end(answer.event())
            return
        self.headers_sent = self.ended = True
        body = answer.json()
        headers = [
            *answer.headers(),
            (b"content-length", str(len(body)).encode()),
            (b"x-stream-id", self._stream_id),
        ]
        await self._write(
            {"type": "http.response.start", "status": answer.status, "headers": headers},
            body=False,
        )
        await self._write({"type": "http.response.body", "body": body, "more_body": False})


class _ClientGone(Exception):
    """``send()`` failed: the client is gone (raised only inside one response)."""


class _Run:
    """One call of an :class:`EventStreamResponse`: what its task, its timer and the
    server's disconnect notice (or the watcher task) share."""

    __slots__ = (
        "_connection",
        "_manager",
        "_nursery",
        "_response",
        "_stall",
        "_stream",
        "_timer",
        "_timers",
        "_writer",
    )

    def __init__(
        self, response: EventStreamResponse, scope: Scope, send: Send, nursery: trio.Nursery
    ) -> None:
        self._response = response
        self._stream = response._stream
        self._manager = response._manager
        self._nursery = nursery
        self._connection: Connection | None = current_connection()
        self._writer = _Writer(send, response, scope.get(DIRECT_SEND, send))
        stall_timeout = response._stall_timeout
        self._stall = math.inf if stall_timeout is None else stall_timeout
        self._timers = response._manager._runner.timers
        self._timer: TimerEntry | None = None

    def _stop(self, close_reason: CloseReason, detail: str) -> None:
        """The client is gone: end the stream (the first reason stays) and the response."""
        self._manager.cancel(self._stream.id, reason=detail, close_reason=close_reason)
        self._nursery.cancel_scope.cancel()

    def client_left(self) -> None:
        """``http.disconnect``, as the server's notice or the watcher saw it.

        Once the last write has begun, a disconnect is the server's, not the
        client's: hypercorn says ``http.disconnect`` from *inside* the app's last
        ``send()``, while it closes or recycles the connection. Cancelling the
        response then would cancel that work half-way (at a graceful shutdown, the
        connection was left open until hypercorn's own timeout). A client that
        stops reading during the last write is still the write guard's business.
        """
        if not self._writer.ended:
            self._stop(CloseReason.CLIENT_DISCONNECTED, "the client disconnected")

    async def left_before_the_call(self) -> None:
        """The disconnect came before the response was called."""
        self.client_left()

    async def watch_client(self, receive: Receive) -> None:
        """Receive until ``http.disconnect``, whatever the server's ASGI spec version
        (under a server that offers no disconnect notice)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_left()
                return

    def arm(self) -> None:
        """Put the response's timer in the manager's heap: before admission it only
        guards writes (none happen then), so it first looks ``stall_timeout`` on."""
        self._timer = self._timers.schedule(self, trio.current_time() + self._stall)

    def disarm(self) -> None:
        """The response is over: its timer leaves the heap now."""
        self._timers.cancel(self._timer)
        self._timer = None

    def fire(self, now: float) -> float:
        """The timer: keep-alives, the headers when they are due, and the write guard.

        While the response's task waits for the stream (in single-reader mode it
        runs the producer's read itself, which no timer may interrupt), this
        writes what is due: the headers (``answer_within``) and keep-alive comments
        (``keep_alive``), each in a short task of the response's nursery. It also
        ends the response when one write has waited ``stall_timeout`` for the
        client (writers only stamp the time). Returns when to look again: a write
        that ends early moves the next keep-alive later, and the timer, firing at
        the old time, answers the new one (never re-armed per batch).
        """
        writer = self._writer
        stall = self._stall
        started = writer.write_started
        if started is None and writer.keep_alive_done is None:
            due = writer.idle_write_at()
            if now < due:
                # No write in flight: look again within stall_timeout, since one
                # that starts now must be caught the moment it reaches it.
                return min(due, now + stall)
            writer.write_started = started = now  # watched from now on
            writer.keep_alive_done = done = trio.Event()
            self._nursery.start_soon(self._keep_alive, done, name="streammgr-keep-alive")
        elif started is None:
            started = now  # between the two writes of a keep-alive with the headers
        if now < started + stall:
            # The next keep-alive is due a period after this write ends, at the
            # earliest a period from now.
            return min(started + stall, now + writer.keep_alive_period)
        get_logger().warning(
            "response.client_stalled", stream_id=self._stream.id, stall_timeout=stall
        )
        # The stream first, so that its reason is recorded before the connection's
        # close makes the server report a disconnect.
        self._stop(CloseReason.CLIENT_STALLED, f"the client read nothing for {stall:g}s")
        if self._connection is not None:
            self._nursery.start_soon(self._abort, name="streammgr-abort")
        return math.inf

    async def _abort(self) -> None:
        assert self._connection is not None
        with trio.CancelScope(shield=True):
            await self._connection.abort()

    async def _keep_alive(self, done: trio.Event) -> None:
        try:
            await self._writer.keep_alive(done)
        except _ClientGone:
            self._stop(CloseReason.CLIENT_DISCONNECTED, "the client disconnected")

    async def respond(self) -> None:
        """Open the stream, write its batches, and end the body, whatever happens."""
        stream, writer = self._stream, self._writer
        try:
            # Nothing is written while the stream waits: a refusal is a 429.
            async with stream:
                try:
                    await self._write_batches(stream)
                except _ClientGone:
                    # Cancelled before the block exits, so that the record says why.
                    self._stop(CloseReason.CLIENT_DISCONNECTED, "the client disconnected")
                    return
        except StreamCancelled as exc:
            if exc.close_reason in _CLIENT_GONE:
                return  # nobody to tell
            error: Exception = exc
        except Exception as exc:
            error = exc
        else:
            return
        try:
            if writer.ended:
                return  # the end was written; what failed after it cannot be told
            await writer.error(error, stream.info().error)
        except _ClientGone:
            return
        finally:
            # The error's traceback holds this frame: without this, every stream
            # that ends in an error (an operator's cancel among them) would leave a
            # reference cycle holding its whole connection until a full collection,
            # which SERVER_GC_THRESHOLD makes rare (the soak's RSS growth, #15).
            del error

    async def _write_batches(self, stream: ManagedStream[Any]) -> None:
        """Pull a batch, write it; nothing armed per batch: keep-alives, the
        headers' deadline and the stall guard are the timer's (see :meth:`fire`)."""
        writer, encode = self._writer, self._response._encode
        self._timer = self._timers.reschedule(self._timer, self, writer.admitted())
        # stream.batches()'s own step, without its wrapper: one coroutine less
        # per batch, paid again at every suspension of an inline producer.
        next_batch = stream._next_batch
        body = writer.body
        while True:
            try:
                batch = await next_batch()
            except StopAsyncIteration:
                break
            await body(encode(batch))
        await writer.end()
