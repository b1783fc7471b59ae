"""What the streaming response's tests share: a limiter that counts releases, the
keep-alive comment, an encoder of ints, a producer that never yields, the names of
every task, and a client under the server's disconnect notice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import trio
import trio.lowlevel

from streammgr import FairLimiter, Permit
from streammgr.server import EventStreamResponse
from streammgr.server._hypercorn import DISCONNECT_NOTICE, _AppQueue


class CountingLimiter(FairLimiter):
    """A FairLimiter that counts releases, to check a slot goes back exactly once."""

    def __init__(self, max_streams: int | None = None, max_waiting: int | None = None) -> None:
        super().__init__(max_streams, None, max_waiting)
        self.releases = 0

    def release(self, permit: Permit) -> None:
        if not permit.released:
            self.releases += 1
        super().release(permit)


KEEP_ALIVE = b": keep-alive\n\n"


def encode_ints(batch: list[int]) -> bytes:
    """The probe's ticker yields ints."""
    return b"".join(b"data: %d\n\n" % item for item in batch)


async def forever() -> AsyncIterator[str]:
    await trio.sleep_forever()
    yield "never"


def task_names() -> list[str]:
    """The names of every task of this run (the whole tree), sorted."""
    names: list[str] = []
    root = trio.lowlevel.current_root_task()
    assert root is not None
    pending = [root]
    while pending:
        task = pending.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return sorted(names)


class NoticedClient:
    """One request to a response, with the disconnect notice :func:`streammgr.server.serve`
    offers (``scope["extensions"]``), and every write with the mock time it came at.

    The app's ``receive()`` is the notice's queue, as under the server; a test makes the
    client leave with :meth:`disconnect` (the server's ``http.disconnect``).
    """

    def __init__(self, *, notice: bool = True) -> None:
        self.queue = _AppQueue(10)
        extensions = {DISCONNECT_NOTICE: self.queue} if notice else {}
        self.scope: dict[str, Any] = {"type": "http", "extensions": extensions}
        self.writes: list[tuple[float, bytes]] = []
        self.started = trio.Event()
        self.returned = trio.Event()

    async def run(self, response: EventStreamResponse) -> None:
        """Call the response (start it in a nursery)."""
        self.started.set()
        try:
            await response(self.scope, self.queue.receive, self._send)
        finally:
            self.returned.set()

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.writes.append((trio.current_time(), message["body"]))
        await trio.lowlevel.checkpoint()

    async def disconnect(self) -> None:
        """The client goes away: what the server does when it sees the client's end."""
        await self.queue.put({"type": "http.disconnect"})

    def keep_alives(self) -> list[float]:
        """When each keep-alive comment was written."""
        return [when for when, body in self.writes if body == KEEP_ALIVE]
