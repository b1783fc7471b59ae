"""The chat page, ``GET /chat``: a few static files shipped in the package, and the
headers that keep them safe (:func:`chat_page_routes`).

The page (``static/chat/``: HTML, one CSS file, one ES module, and the SSE parser both
pages share, ``static/common/sse.js``, served as ``/chat/sse.js``; no build step) streams
from a gateway with ``fetch`` or the WebSocket route. Which gateway is the page's own
origin, or ``?gateway=URL`` (then that gateway must list the page's origin in
``--cors-origin``). The Content-Security-Policy allows scripts and styles from this
origin only (no inline script) and connections to this origin and the chosen gateway
only, which is why the gateway is a query parameter the server checks, not a field the
page could change unseen. This room serves files: it knows nothing of chats.
"""

from __future__ import annotations

import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ._page_files import shared_page_files

__all__ = ["CHAT_PAGE_PATH", "chat_page_routes", "gateway_origin"]

CHAT_PAGE_PATH = "/chat"
"""Where the service serves the chat page."""

# The files of the page, and their types; nothing else under /chat/ is served. sse.js is
# the one both pages share (static/common/).
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "sse.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}

# An http(s) gateway URL as the CSP can name it: a host name or an IP address (no
# userinfo, query or fragment; nothing that could end a CSP directive), a port, and
# an optional path prefix of plain characters.
_GATEWAY = re.compile(
    r"(?P<origin>(?i:https?)://"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?)"
    r"(?P<path>(?:/[A-Za-z0-9._~%-]*)*)"
)
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")

_COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
    "cross-origin-opener-policy": "same-origin",
    "x-frame-options": "DENY",
}


def gateway_origin(value: str) -> str:
    """The origin (``scheme://host[:port]``) of a ``?gateway=`` value.

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL of a host, with an
            optional port and path prefix (no credentials, query or fragment).
    """
    match = _GATEWAY.fullmatch(value)
    if match is None:
        raise ValueError(
            f"gateway must be the gateway's http:// or https:// base URL, such as "
            f"https://gateway.example:8000 (no credentials, query or fragment), got {value!r}"
        )
    return match["origin"].lower()


def _content_security_policy(request: Request, gateway: str | None) -> str:
    """The page's CSP: this origin's scripts and styles, connections to this origin
    and the gateway (HTTP and WebSocket) only."""
    connect = ["'self'"]
    host = request.headers.get("host", "")
    if _HOST.fullmatch(host):  # the WebSocket route on this origin
        connect.append(f"{'wss' if request.url.scheme == 'https' else 'ws'}://{host.lower()}")
    if gateway is not None:
        connect += [gateway, "ws" + gateway.removeprefix("http")]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",  # the empty icon (no /favicon.ico request)
            f"connect-src {' '.join(connect)}",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def chat_page_routes() -> list[BaseRoute]:
    """The routes of the chat page: ``GET /chat`` (``?gateway=``, ``?model=``,
    ``?transport=websocket``) and its files ``/chat/chat.js``, ``/chat/sse.js``,
    ``/chat/chat.css``.

    Every answer has ``X-Content-Type-Options: nosniff``, ``no-referrer`` and a CSP
    that forbids inline script and connections to any origin but this one and the
    chosen gateway. A ``?gateway=`` that is not an http(s) base URL is a 400.

    Raises:
        FileNotFoundError: the page's files are missing from the installed package.
    """
    folder = resources.files(__package__).joinpath("static", "chat")
    shared = shared_page_files()
    contents = {
        name: shared[name] if name in shared else folder.joinpath(name).read_bytes()
        for name in _FILES
    }

    async def page(request: Request) -> Response:
        gateway = request.query_params.get("gateway")
        origin = None
        if gateway is not None:
            try:
                origin = gateway_origin(gateway)
            except ValueError as exc:
                return PlainTextResponse(
                    f"{exc}; see docs/gateway.md, Chat page", 400, headers=_COMMON_HEADERS
                )
        headers = {
            **_COMMON_HEADERS,
            "content-security-policy": _content_security_policy(request, origin),
        }
        return Response(contents["index.html"], media_type=_FILES["index.html"], headers=headers)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _FILES or name == "index.html":
            return PlainTextResponse(
                f"no file {name!r} in the chat page", 404, headers=_COMMON_HEADERS
            )
        return Response(contents[name], media_type=_FILES[name], headers=_COMMON_HEADERS)

    async def slash(request: Request) -> Response:
        target = CHAT_PAGE_PATH + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(target, 308, headers=_COMMON_HEADERS)

    return [
        Route(CHAT_PAGE_PATH, page, methods=["GET"]),
        Route(CHAT_PAGE_PATH + "/", slash, methods=["GET"]),
        Route(CHAT_PAGE_PATH + "/{name}", asset, methods=["GET"]),
    ]
