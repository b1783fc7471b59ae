"""Drive an ASGI app directly, with Trio memory channels as its receive and send.

``httpx.ASGITransport`` buffers a whole response body, so it cannot show an
endless stream, a stall or a client leaving mid-stream; :class:`ASGIExchange` runs
the app in a task, records every message it sends, and lets the test disconnect
(``http.disconnect``) or make ``send`` fail at any point, on the mock clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

Message = dict[str, Any]


class ASGIExchange:
    """One request to an ASGI app, and what the app answered.

    Args:
        app: the ASGI callable.
        method: the request method.
        path: the request path.
        body: the request body, sent in one ``http.request`` message unless
            ``parts`` gives the pieces.
        parts: the body in several messages (``body`` is then ignored).
        body_ends: the last part says ``more_body: False``; if not, the body's end
            never comes.
    """

    def __init__(
        self,
        app: Any,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        parts: list[bytes] | None = None,
        body_ends: bool = True,
    ) -> None:
        self.app = app
        self.scope: Message = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
        }
        self._to_app, self._app_inbox = trio.open_memory_channel[Message](math.inf)
        pieces = parts if parts is not None else [body]
        for index, piece in enumerate(pieces):
            more = index < len(pieces) - 1 or not body_ends
            self._to_app.send_nowait({"type": "http.request", "body": piece, "more_body": more})
        self.messages: list[Message] = []
        self.returned = trio.Event()
        self.error: BaseException | None = None
        self.fail_sends = False
        # As hypercorn does: http.disconnect as soon as the last body message is sent.
        self.disconnect_when_done = False
        self._changed = trio.Event()

    async def run(self) -> None:
        """Run the app to its end (start it in a nursery)."""
        try:
            await self.app(self.scope, self._app_inbox.receive, self._send)
        finally:
            self.returned.set()
            self._changed.set()

    async def _send(self, message: Message) -> None:
        if self.fail_sends:
            raise OSError("the client went away (simulated by the test)")
        self.messages.append(message)
        last = message["type"] == "http.response.body" and not message.get("more_body", False)
        if last and self.disconnect_when_done:
            self.disconnect()
        self._changed.set()
        self._changed = trio.Event()

    def disconnect(self) -> None:
        """The client goes away: the app's next ``receive()`` is ``http.disconnect``."""
        self._to_app.send_nowait({"type": "http.disconnect"})

    async def wait_until(self, condition: Callable[[ASGIExchange], bool]) -> None:
        """Wait (on the app's own pace, no polling) until ``condition(self)`` holds."""
        while not condition(self):
            if self.returned.is_set():
                raise AssertionError("the app returned before the condition held")
            await self._changed.wait()

    @property
    def start(self) -> Message:
        """The ``http.response.start`` message."""
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.messages
        return starts[0]

    @property
    def status(self) -> int:
        """The response status."""
        return int(self.start["status"])

    @property
    def headers(self) -> dict[str, str]:
        """The response headers, decoded."""
        return {name.decode(): value.decode() for name, value in self.start["headers"]}

    @property
    def chunks(self) -> list[bytes]:
        """The non-empty body pieces, in order."""
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m["body"]]

    @property
    def body(self) -> bytes:
        """The body received so far."""
        return b"".join(self.chunks)

    @property
    def complete(self) -> bool:
        """The app sent its last body message (``more_body`` false): no drop."""
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False)
            for m in self.messages
        )
