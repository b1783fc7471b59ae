"""The argument checks of :class:`~streammgr.sources.WebSocketSource`: headers,
subprotocols, messages and the TLS context, each refused with a message naming the
argument (``TypeError`` / ``ValueError``, as every caller mistake in streammgr)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Mapping

from .._validate import check_strings

__all__ = ["check_headers", "check_messages", "check_ssl_context", "check_subprotocols"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110)
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "transfer-encoding",
        "upgrade",
    }
)


def check_headers(extra_headers: object) -> list[tuple[str, str]]:
    if isinstance(extra_headers, str | bytes) or not isinstance(extra_headers, Iterable):
        raise TypeError(
            f"extra_headers must be a mapping or (name, value) pairs, "
            f"got {type(extra_headers).__name__}"
        )
    pairs: list[object] = (
        list(extra_headers.items()) if isinstance(extra_headers, Mapping) else list(extra_headers)
    )
    checked: list[tuple[str, str]] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"extra_headers must contain (name, value) pairs, got {pair!r}")
        name, value = pair
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                f"extra_headers names and values must be str, got "
                f"{type(name).__name__} and {type(value).__name__}"
            )
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"extra_headers has an invalid header name: {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(
                f"extra_headers cannot set {name!r}: the WebSocket handshake sets it "
                f"(use subprotocols= for Sec-WebSocket-Protocol)"
            )
        if any(character in value for character in "\r\n\0"):
            raise ValueError(f"extra_headers value of {name!r} contains a line break or NUL")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"extra_headers value of {name!r} is not Latin-1 text") from None
        checked.append((name, value))
    return checked


def check_ssl_context(ssl_context: object, tls: bool) -> ssl.SSLContext | None:
    if ssl_context is None:
        return None
    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(
            f"ssl_context must be an ssl.SSLContext or None, got {type(ssl_context).__name__}"
        )
    if not tls:
        raise ValueError("ssl_context is only used with wss:// URLs; this URL is ws://")
    return ssl_context


def check_subprotocols(subprotocols: object) -> tuple[str, ...]:
    checked = check_strings("subprotocols", subprotocols)
    for name in checked:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"subprotocols must be HTTP tokens (like 'graphql-ws'), got {name!r}")
    return tuple(checked)


def check_messages(send: object) -> tuple[str | bytes, ...]:
    if isinstance(send, str | bytes | bytearray) or not isinstance(send, Iterable):
        raise TypeError(
            f"send must be a list of messages (wrap a single one: send=[message]), "
            f"got {type(send).__name__}"
        )
    checked: list[str | bytes] = []
    for message in send:
        if isinstance(message, bytearray | memoryview):
            checked.append(bytes(message))
        elif isinstance(message, str | bytes):
            checked.append(message)
        else:
            raise TypeError(
                f"send messages must be str (text) or bytes (binary), got {type(message).__name__}"
            )
    return tuple(checked)
