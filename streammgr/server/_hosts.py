"""Who a request may name: the ``Host`` check against DNS rebinding, and the ``Origin``
check of state-changing requests (:class:`HostGuard`, pure ASGI).

A web page whose domain its author resolves to 127.0.0.1 is same-origin for the
browser: it can call a service on loopback, and the browser sends the page's own
name as ``Host``. Answering only the names the service is really reached by
(loopback names, and the ones the operator allows) shuts that door; checking
``Origin`` on PUT/POST/PATCH/DELETE shuts the cross-site form and ``fetch`` one.
No framework and no I/O of its own: it reads the scope's headers and answers 403.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from .._logging import get_logger

__all__ = ["LOOPBACK_HOSTS", "HostGuard", "is_loopback_host", "is_same_origin"]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""The names every :class:`HostGuard` answers (with any port): a browser reaches
them only from a page that is on this machine already. ``*.localhost`` and the
rest of 127.0.0.0/8 are loopback too."""

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
"""The methods whose ``Origin`` :class:`HostGuard` checks when asked to."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ANY = "*"


@dataclass(frozen=True, slots=True)
class _Name:
    """A host as the checks compare it: lowercase, no trailing dot, IPv6 in brackets
    and compressed; and the port, if one was written."""

    host: str
    port: int | None


def _parse_host(value: str) -> _Name | None:
    """``Host``'s value (``name``, ``name:port``, ``[v6]:port``), or ``None`` when it
    is not one (userinfo, a path, a bare IPv6 address, a bad port, nothing)."""
    if not value or any(character in value for character in "@/\\?# \t,"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        try:
            address = ipaddress.IPv6Address(value[1:end])
        except ValueError:
            return None
        host, rest = f"[{address.compressed}]", value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_or_empty = value.partition(":")
        if ":" in port_text_or_empty:
            return None  # an IPv6 address without brackets
        port_text = port_text_or_empty if colon else None
        host = host.lower()
        if host.endswith("."):
            host = host[:-1]  # "localhost." is the same name, written fully qualified
        if not host or host.startswith("."):
            return None
    port = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            return None
        port = int(port_text)
    return _Name(host, port)


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header's value names this machine's loopback interface.

    ``localhost`` and ``*.localhost`` (browsers resolve them to loopback
    themselves), and loopback address literals (``127.0.0.1``, ``[::1]``), with or
    without a port; case and a trailing dot do not matter.

    Args:
        host: the header's value, e.g. ``"localhost:8000"``, or a listening
            address (``"::1"`` without brackets is taken too).
    """
    if host.count(":") > 1 and not host.startswith("["):
        return _loopback(host)  # a bare IPv6 address, as a listening address is written
    name = _parse_host(host)
    return name is not None and _loopback(name.host)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _allowed_name(entry: str) -> _Name | None:
    """An entry of ``allowed_hosts`` as a name (``None`` for ``*``)."""
    if not isinstance(entry, str):
        raise TypeError(f"allowed_hosts must hold str, got {type(entry).__name__}")
    if entry == _ANY:
        return None
    name = _parse_host(entry.strip())
    if name is None or entry != entry.strip():
        raise ValueError(
            f"--allowed-host must be a host name or address with an optional port "
            f"(api.example.com, api.example.com:8443, 10.0.0.5, [fd00::5]), or *; got {entry!r}"
        )
    return name


def _normal_origin(origin: str) -> str:
    if not isinstance(origin, str):
        raise TypeError(f"allowed_origins must hold str, got {type(origin).__name__}")
    return origin.rstrip("/").lower()


class HostGuard:
    """Pure ASGI middleware: answer only requests that name an allowed host.

    Every HTTP request and WebSocket handshake whose ``Host`` is not a loopback
    name (:data:`LOOPBACK_HOSTS`, any port) nor one of ``allowed_hosts`` gets a 403
    (a WebSocket handshake: the 403 through the denial-response extension, else a
    close before accepting), with a JSON body
    ``{"error": {"code": "host_not_allowed", "message", "type", "param"}}`` that
    both the inspection API's and OpenAI's clients read. A request without
    ``Host`` (HTTP/1.0, or an app driven in-process) passes: a browser always
    sends one, so such a request is not a rebinding page.

    With ``check_origins``, a POST, PUT, PATCH or DELETE that carries ``Origin``
    must come from the request's own origin (the ``Host`` it names), one of
    ``allowed_origins``, or an origin on one of ``allowed_hosts``; ``Origin: null``
    (a sandboxed page, a ``file:`` URL) is refused. Without ``Origin`` (curl, an
    SDK) it passes.

    Args:
        app: the app guarded.
        allowed_hosts: names answered besides the loopback ones: ``"api.example"``
            (any port), ``"api.example:8443"`` (that port only), an address
            (``"10.0.0.5"``, ``"[fd00::5]"``), or ``"*"``: every host (no Host
            check; the Origin check still applies). Case and a trailing dot do not
            matter.
        allowed_origins: origins that may send state-changing requests besides the
            request's own (e.g. the service's ``--cors-origin`` list); ``"*"`` in it
            allows none more.
        check_origins: check ``Origin`` on state-changing requests.

    Raises:
        ValueError / TypeError: a bad entry, named in the message.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        check_origins: bool = False,
    ) -> None:
        if isinstance(allowed_hosts, str) or isinstance(allowed_origins, str):
            raise TypeError("allowed_hosts and allowed_origins must be lists, not one str")
        self.app = app
        names = [_allowed_name(entry) for entry in allowed_hosts]
        self._any_host = None in names
        self._hosts = tuple(name for name in names if name is not None)
        self._origins = frozenset(
            _normal_origin(origin) for origin in allowed_origins if origin != _ANY
        )
        self._check_origins = check_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a 403 to a request that names a host or origin not allowed; pass
        every other one (and lifespan) to the app."""
        if scope["type"] in ("http", "websocket"):
            problem = self.check(scope)
            if problem is not None:
                await self.refuse(scope, send, problem)
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> tuple[str, str] | None:
        """What is wrong with an HTTP request's or WebSocket handshake's ``Host`` (or,
        with ``check_origins``, its ``Origin``): ``(code, message)``, or ``None`` when
        it may pass. Keeps nothing: a dispatcher calls it instead of nesting the
        guard (see :func:`~streammgr.server.build_service_app`)."""
        hosts = []
        origin = None
        for name, value in scope.get("headers", ()):
            if name == b"host":
                hosts.append(value.decode("latin-1"))
            elif name == b"origin":
                origin = value.decode("latin-1")
        problem = self._host_problem(hosts)
        if (
            problem is None
            and self._check_origins
            and origin is not None
            and scope["type"] == "http"
            and scope.get("method", "GET") in STATE_CHANGING
        ):
            problem = self._origin_problem(origin, hosts, scope.get("scheme", "http"))
        return problem

    async def refuse(self, scope: Scope, send: Send, problem: tuple[str, str]) -> None:
        """Log and answer the 403 for ``problem`` (from :meth:`check`)."""
        code, message = problem
        host = origin = None
        for name, value in scope.get("headers", ()):
            if name == b"host" and host is None:
                host = value.decode("latin-1")[:200]
            elif name == b"origin":
                origin = value.decode("latin-1")[:200]
        get_logger().warning(
            "host_guard.refused", code=code, host=host, origin=origin, path=scope.get("path")
        )
        await _refuse(scope, send, code, message)

    def allows_host(self, host: str) -> bool:
        """Whether a ``Host`` value is one this guard answers."""
        return self._host_problem([host]) is None

    def _host_problem(self, hosts: list[str]) -> tuple[str, str] | None:
        if not hosts:
            return None  # no browser sends no Host: not a rebinding page
        if len(hosts) > 1:
            return "host_not_allowed", "the request has several Host headers; send one"
        name = _parse_host(hosts[0])
        if name is None:
            return (
                "host_not_allowed",
                f"the Host header {hosts[0][:200]!r} is not a host name with an optional "
                f"port; send the server's name (e.g. localhost:8000)",
            )
        if self._any_host or _loopback(name.host) or self._named(name):
            return None
        return (
            "host_not_allowed",
            f"this server does not answer for the host {name.host!r} (a guard against DNS "
            f"rebinding): reach it as localhost, 127.0.0.1 or [::1], or have the operator "
            f"allow the name with --allowed-host {name.host}",
        )

    def _named(self, name: _Name) -> bool:
        return any(
            allowed.host == name.host and (allowed.port is None or allowed.port == name.port)
            for allowed in self._hosts
        )

    def _origin_problem(
        self, origin: str, hosts: list[str], request_scheme: str
    ) -> tuple[str, str] | None:
        refused = (
            "origin_not_allowed",
            f"a request from the origin {origin[:200]!r} may not change anything here; "
            f"send it from this server's own origin, or have the operator allow the origin "
            f"with --cors-origin (or its host with --allowed-host)",
        )
        if _normal_origin(origin) in self._origins:
            return None
        origin_name = _origin_name(origin)
        if origin_name is None:
            return refused  # "null", a file: or extension page, garbage
        if hosts and _same_name(origin_name, hosts[0], request_scheme):
            return None
        if self._named(origin_name):
            return None
        return refused


def _origin_name(origin: str) -> _Name | None:
    """An ``Origin`` value's host and port (the scheme's default when none is
    written), or ``None`` for one that names no host (``null``, ``file:``...)."""
    scheme, separator, rest = origin.rstrip("/").partition("://")
    default = _DEFAULT_PORTS.get(scheme.lower())
    parsed = _parse_host(rest) if separator and default is not None else None
    if parsed is None:
        return None
    return _Name(parsed.host, parsed.port if parsed.port is not None else default)


def _same_name(origin_name: _Name, host: str, request_scheme: str) -> bool:
    """Whether an origin names the host (and port) of a ``Host`` header. A ``Host``
    without a port came on its scheme's default one, as seen by the client: behind
    a proxy that ends TLS, the page is ``https://name`` (443) while the request
    reaches the service as ``http`` (80), so either default port is the same."""
    own = _parse_host(host)
    if own is None or own.host != origin_name.host:
        return False
    if own.port is None:
        return origin_name.port in (80, 443, _DEFAULT_PORTS.get(request_scheme))
    return origin_name.port == own.port


def is_same_origin(origin: str, host: str | None, scheme: str) -> bool:
    """Whether an ``Origin`` header names the request's own origin: the host and
    port of its ``Host`` header (the scheme's default port when none is written).

    Args:
        origin: the ``Origin`` header's value, e.g. ``"http://127.0.0.1:8000"``.
        host: the request's ``Host`` header, or ``None`` (then never the same).
        scheme: the request's scheme (``http``, ``https``, ``ws``, ``wss``), for
            the default port.
    """
    origin_name = _origin_name(origin)
    return origin_name is not None and host is not None and _same_name(origin_name, host, scheme)


async def _refuse(scope: Scope, send: Send, code: str, message: str) -> None:
    """The 403: JSON over HTTP; over a WebSocket handshake, the denial response the
    server supports, else a close before accepting (which servers answer as 403)."""
    error = {"message": message, "type": "invalid_request_error", "code": code, "param": None}
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": code})


def check_allowed_hosts(allowed_hosts: Sequence[str]) -> tuple[str, ...]:
    """``allowed_hosts`` checked (each a host, ``host:port`` or ``*``), as a tuple.

    Raises:
        ValueError / TypeError: a bad entry, named in the message.
    """
    if isinstance(allowed_hosts, str):
        raise TypeError("allowed_hosts must be a list of hosts, not one str")
    for entry in allowed_hosts:
        _allowed_name(entry)
    return tuple(allowed_hosts)
