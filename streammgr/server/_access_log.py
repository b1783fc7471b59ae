"""One log line per error answer, and the opt-in access log (:class:`AccessLog`, pure ASGI).

Every answer with a status of 400 or more is logged once as ``http.error``; with
``requests=True`` every other answer is logged as ``http.request``. A line holds the
method, the path (never the query string, which may carry a secret; the path
redacted), the status, the answer's ``x-request-id``, the caller's hashed key and
the duration; never a header's value or a body.

Cheap on the streaming hot path: it looks at the ``http.response.start`` message
only (a body write costs one comparison), and logs when the app returns.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._logging import excerpt, get_logger
from ._chat_request import caller_key

__all__ = ["AccessLog"]

_MAX_PATH = 200  # characters of a path kept in a line


class AccessLog:
    """Pure ASGI middleware: log error answers (``http.error``) and, opt-in, every
    answer (``http.request``), one line each.

    Fields: ``method``, ``path`` (no query string; redacted of ``secrets`` and of
    anything shaped like a credential, cut to 200 characters), ``status``,
    ``request_id`` (the answer's ``x-request-id``, if any), ``key`` (the caller's
    key as the gateway computes it: the ``key_header``'s value, else the hashed
    credential; see :func:`~streammgr.server.caller_key`), ``duration`` (seconds
    from the request to the app's return: for a stream, its whole life). A request
    the app ends without an answer (it failed, or the client left) has ``status``
    500 or ``None``. WebSocket handshakes are logged when refused (a denial
    response of 400 or more).

    Args:
        app: the app whose answers are logged.
        requests: also log every answer below 400 (the access log).
        key_header: the gateway's ``key_header``, so that ``key`` names the same
            caller as the gateway's limits.
        secrets: exact values never to log (API keys, the admin token).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        requests: bool = False,
        key_header: str | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.requests = requests
        self.key_header = key_header
        self.secrets = tuple(secret for secret in secrets if secret)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app, note its answer's status, log when it returns."""
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start_message = "http.response.start" if kind == "http" else "websocket.http.response.start"
        started = trio.current_time()
        answer: Message | None = None

        async def noting_send(message: Message) -> None:
            nonlocal answer
            if answer is None and message["type"] == start_message:
                answer = message
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, noting_send)
        except Exception:
            failed = True  # the server answers 500 (a cancellation answers nothing)
            raise
        finally:
            if answer is not None or (failed and kind == "http"):
                self.log(scope, answer, failed, trio.current_time() - started)

    def log(self, scope: Scope, answer: Message | None, failed: bool, duration: float) -> None:
        """Log one request's line, if it is to be logged: for a layer that notes the
        answer itself instead of nesting this one (the service's chat route).

        Args:
            scope: the request's scope.
            answer: its ``http.response.start`` (or WebSocket denial) message, or
                ``None`` if none was sent.
            failed: the app raised (an answer of 500 if none was sent).
            duration: seconds from the request to the app's return.
        """
        status: int | None = None if answer is None else int(answer["status"])
        if status is None and failed:
            status = 500  # what the server answers for an app that raised
        error = status is not None and status >= 400
        if not error and not self.requests:
            return
        request_id = None
        if answer is not None:
            for name, value in answer.get("headers", ()):
                if name.lower() == b"x-request-id":
                    request_id = value.decode("latin-1")
        headers = Headers(scope=scope)
        fields = {
            "method": scope.get("method", "GET"),
            "path": excerpt(scope.get("path", ""), _MAX_PATH, self.secrets, ellipsis="..."),
            "status": status,
            "request_id": request_id,
            "key": caller_key(headers, self.key_header),
            "duration": round(duration, 6),
        }
        if scope["type"] == "websocket":
            fields["method"] = "WEBSOCKET"
        log = get_logger()
        if not error:
            log.info("http.request", **fields)
        elif status is not None and status >= 500:
            log.warning("http.error", **fields)
        else:
            log.info("http.error", **fields)
