"""Run an ASGI app's lifespan in-process, as a server would, so that tests can call the
app through ``httpx.ASGITransport`` (which runs no lifespan) on the mock clock.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

Message = dict[str, Any]


@asynccontextmanager
async def running_lifespan(app: Any) -> AsyncIterator[None]:
    """Start ``app``'s lifespan (``lifespan.startup``), yield, then shut it down.

    Raises:
        AssertionError: the app's startup or shutdown failed.
    """
    to_app, app_inbox = trio.open_memory_channel[Message](math.inf)
    from_app, outbox = trio.open_memory_channel[Message](math.inf)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, app_inbox.receive, from_app.send)
        await to_app.send({"type": "lifespan.startup"})
        started = await outbox.receive()
        assert started["type"] == "lifespan.startup.complete", started
        try:
            yield
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(60):
                await to_app.send({"type": "lifespan.shutdown"})
                stopped = await outbox.receive()
            assert stopped["type"] == "lifespan.shutdown.complete", stopped
