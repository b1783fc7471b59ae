"""``GET /admin/streams/events``: the registry's changes as Server-Sent Events.

Not an :class:`~streammgr.server.EventStreamResponse`: that one runs a producer as
a stream *in* the manager, so a watcher would count against the limits and show up
in the very registry it watches. This small response reads ``manager.watch()``
directly:

- it **starts with a snapshot** (``event: snapshot``, every stream in flight), taken
  right after the watch began, with no checkpoint between, so no change is missed
  or told twice; then one event per change (``opened``, ``admitted``, ``closed``),
  every change that is ready gathered in one write;
- **a slow watcher never slows the manager**: the manager pushes into the watch's
  bounded buffer without waiting; a watcher that falls ``max_buffer`` events behind
  loses them and gets a fresh snapshot (``"reason": "overflow"``) instead;
- keep-alive comments every ``keep_alive`` seconds without a write;
- it ends when the client disconnects (a task receives ``http.disconnect``), when
  one write waited ``stall_timeout`` for a client that stopped reading (the
  connection is closed if :func:`~streammgr.server.serve` serves it), and when the
  manager closes (``event: end``, then the end of the body).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .._logging import get_logger
from .._manager import StreamManager
from .._registry import RegistryEvent, RegistryWatcher
from ..sse import ServerSentEvent, encode
from ._admin_models import stream_dict
from ._answers import KEEP_ALIVE
from ._hypercorn import current_connection

__all__ = ["MAX_EVENTS_PER_WRITE", "EventFeedResponse", "WatcherSlots"]

MAX_EVENTS_PER_WRITE = 256
"""The most changes gathered in one write (so that one write stays small)."""


class WatcherSlots:
    """How many event feeds are open, bounded: each holds a buffer of up to
    ``max_buffer`` events."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        """Take a slot; ``False`` when all are taken."""
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        """Give a slot back."""
        self.open -= 1


def _event(kind: str, data: object) -> bytes:
    return encode(ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event=kind))


class EventFeedResponse(Response):
    """The events feed of one client (see the module's docstring).

    Args:
        manager: the manager watched.
        slots: the slot this response took; given back when it ends.
        clean: redacts free text (details, errors) once more.
        keep_alive: seconds without a write before a keep-alive comment.
        max_buffer: changes the client may fall behind before it gets a new snapshot.
        stall_timeout: the most seconds one write may wait for the client.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        manager: StreamManager,
        slots: WatcherSlots,
        clean: Callable[[str], str],
        *,
        keep_alive: float,
        max_buffer: int,
        stall_timeout: float,
    ) -> None:
        self._manager = manager
        self._slots = slots
        self._clean = clean
        self._keep_alive = keep_alive
        self._max_buffer = max_buffer
        self._stall_timeout = stall_timeout
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._write_started: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the feed until the client goes or the manager closes."""
        try:
            async with self._manager.watch(self._max_buffer) as events:
                snapshot = self._snapshot("start")  # no checkpoint since the watch began
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_client, receive, nursery.cancel_scope)
                    nursery.start_soon(self._guard_writes, nursery.cancel_scope)
                    await self._write(
                        send,
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": self.raw_headers,
                        },
                    )
                    await self._body(send, snapshot)
                    await self._forward(events, send)
                    await self._write(
                        send, {"type": "http.response.body", "body": b"", "more_body": False}
                    )
                    nursery.cancel_scope.cancel()
        finally:
            self._slots.give_back()

    def _snapshot(self, reason: str) -> bytes:
        now, clean = trio.current_time(), self._clean
        streams = [stream_dict(info, now, clean) for info in self._manager.streams()]
        return _event("snapshot", {"reason": reason, "streams": streams})

    async def _forward(self, events: RegistryWatcher, send: Send) -> None:
        """Each change as it comes, gathered per write; keep-alives between."""
        next_event = events.__anext__
        while True:
            with trio.move_on_after(self._keep_alive) as idle:
                try:
                    first = await next_event()
                except StopAsyncIteration:
                    await self._body(send, _event("end", {"reason": "manager_closed"}))
                    return
            if idle.cancelled_caught:
                await self._body(send, KEEP_ALIVE)
                continue
            batch = [first]
            closed = False
            # What is already buffered comes without a checkpoint (RegistryWatcher
            # returns a buffered event at once); the cancelled scope stops at the
            # first wait, so this never blocks.
            with trio.CancelScope() as drain:
                drain.cancel()
                while len(batch) < MAX_EVENTS_PER_WRITE:
                    try:
                        batch.append(await next_event())
                    except StopAsyncIteration:
                        closed = True
                        break
            await self._body(send, self._encode(batch))
            if closed:
                await self._body(send, _event("end", {"reason": "manager_closed"}))
                return

    def _encode(self, batch: list[RegistryEvent]) -> bytes:
        # After an overflow, what came before it is moot: a new snapshot replaces it.
        for index in range(len(batch) - 1, -1, -1):
            if batch[index].kind == "overflow":
                batch = batch[index + 1 :]
                parts = [self._snapshot("overflow")]
                break
        else:
            parts = []
        now, clean = trio.current_time(), self._clean
        for event in batch:
            if event.stream is not None:
                parts.append(_event(event.kind, stream_dict(event.stream, now, clean)))
        return b"".join(parts)

    async def _body(self, send: Send, data: bytes) -> None:
        await self._write(send, {"type": "http.response.body", "body": data, "more_body": True})

    async def _write(self, send: Send, message: Message) -> None:
        self._write_started = trio.current_time()
        try:
            await send(message)
        finally:
            self._write_started = None

    async def _watch_client(self, receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    async def _guard_writes(self, scope: trio.CancelScope) -> None:
        """A write that waited ``stall_timeout``: end the feed and close the connection
        (hypercorn's write is shielded: cancelling the response alone cannot end it)."""
        connection = current_connection()
        while True:
            started = self._write_started
            if started is None:
                await trio.sleep(self._stall_timeout)
                continue
            if trio.current_time() < started + self._stall_timeout:
                await trio.sleep_until(started + self._stall_timeout)
                continue
            get_logger().warning("admin.events_stalled", stall_timeout=self._stall_timeout)
            scope.cancel()
            if connection is not None:
                with trio.CancelScope(shield=True):
                    await connection.abort()
            return
