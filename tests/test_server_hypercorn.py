"""What streammgr.server relies on in hypercorn's trio worker, pinned.

If hypercorn changes any of this, a test here fails and ``streammgr/server/_hypercorn.py``
(and docs/server.md) must be looked at again:

- the installed version is one the adaptation was tested with;
- an app's ``send()`` to a client that stopped reading cannot be cancelled (the
  worker shields ``send_all``): it returns only when the client goes;
- under :func:`streammgr.server.serve` it returns within ``send_timeout``, and the
  connection is closed;
- the app's task sees the connection :func:`serve` set in the connection's task;
- hypercorn reports ASGI spec version 2.1 (Starlette's ``StreamingResponse``
  listens for ``http.disconnect`` only below 2.4; EventStreamResponse always does).
"""

from __future__ import annotations

import importlib.metadata
import ssl
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypercorn.trio import serve as hypercorn_serve

from streammgr.server import TESTED_HYPERCORN_VERSIONS, Connection, current_connection
from streammgr.server._hypercorn import _ClientStream, _SendWatch

from .server_helpers import PATIENCE, Scope, Server, quiet_hypercorn, raw_client, read_until_closed


class Flooder:
    """A raw ASGI app that writes 64 KiB bodies until its scope is cancelled."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.started = trio.Event()
        self.left = trio.Event()
        self.spec_version = ""
        self.connection: Connection | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        self.spec_version = scope["asgi"]["spec_version"]
        self.connection = current_connection()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.started.set()
        chunk = b"x" * 65536
        with self.scope:
            while True:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.left.set()


async def parked(app: Flooder) -> None:
    """Wait until the app is parked in a write to the stalled client."""
    with trio.fail_after(PATIENCE):
        await app.started.wait()
    # Every task blocked for 50 ms: the worker's send_all waits for the socket.
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)


def test_the_installed_hypercorn_is_a_tested_version() -> None:
    version = importlib.metadata.version("hypercorn")
    assert version in TESTED_HYPERCORN_VERSIONS, (
        f"hypercorn {version} is not among {TESTED_HYPERCORN_VERSIONS}: check that the tests "
        f"in this file pass, then add it there and to the pin in pyproject.toml"
    )


async def test_hypercorn_alone_cannot_cancel_a_send_to_a_stalled_client(
    nursery: trio.Nursery,
) -> None:
    app = Flooder()
    config = quiet_hypercorn()
    config.bind = ["127.0.0.1:0"]
    (url,) = await nursery.start(hypercorn_serve, app, config)
    client = await raw_client(int(url.rpartition(":")[2]), "/", receive_buffer=4096)
    await parked(app)
    assert app.connection is None  # hypercorn's own serve: no connection to close
    assert app.spec_version == "2.1"
    app.scope.cancel()
    with trio.move_on_after(0.3):
        await app.left.wait()
    assert not app.left.is_set(), "hypercorn no longer shields send_all: revisit _hypercorn.py"
    await client.aclose()  # only the client going away wakes it
    with trio.fail_after(PATIENCE):
        await app.left.wait()


async def test_serve_bounds_a_write_to_a_stalled_client(nursery: trio.Nursery) -> None:
    app = Flooder()
    server = await Server().start(nursery, app, send_timeout=0.2)
    client = await raw_client(server.port, "/", receive_buffer=4096)
    await parked(app)
    assert app.connection is not None  # the app's task inherited it
    app.scope.cancel()
    with trio.fail_after(PATIENCE):
        await app.left.wait()  # woken by the write's timeout, not by the client
    assert app.connection.closed
    await read_until_closed(client)


async def test_abort_closes_the_connection_at_once(nursery: trio.Nursery) -> None:
    app = Flooder()
    server = await Server().start(nursery, app, send_timeout=None)
    client = await raw_client(server.port, "/", receive_buffer=4096)
    await parked(app)
    assert app.connection is not None
    app.scope.cancel()
    await app.connection.abort()
    with trio.fail_after(PATIENCE):
        await app.left.wait()
    await read_until_closed(client)


async def test_serve_reports_where_it_listens_and_stops_on_its_trigger(
    nursery: trio.Nursery,
) -> None:
    server = await Server().start(nursery, Flooder())
    assert server.url.startswith("http://127.0.0.1:")
    assert server.port > 0
    server.stop.set()
    with trio.fail_after(PATIENCE):
        await server.stopped.wait()


async def test_serve_refuses_a_bad_send_timeout() -> None:
    from streammgr.server import serve

    with pytest.raises(ValueError, match="send_timeout"):
        await serve(Flooder(), send_timeout=0)


class _Writing:
    """A connection as serve()'s send watch sees it: when its write began."""

    def __init__(self) -> None:
        self.send_started: float | None = None
        self.expired_at: float | None = None

    async def expire_send(self) -> None:
        self.expired_at = trio.current_time()
        self.send_started = None  # the closed stream's write returns


async def test_one_send_watch_bounds_every_write_at_its_own_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    first, second = _Writing(), _Writing()
    watch = _SendWatch(1.0, cast(Any, {first, second}))
    nursery.start_soon(watch.run)
    first.send_started = trio.current_time()
    watch.arm(first.send_started)  # the first write while idle arms it; later ones only stamp
    await trio.sleep(0.3)
    second.send_started = trio.current_time()
    await trio.sleep(0.5)
    first.send_started = None  # done in time
    await trio.sleep(1.0)
    assert first.expired_at is None
    assert second.expired_at == pytest.approx(1.3)
    assert not watch.armed  # nothing in flight: it sleeps until a write arms it


# -- a write the socket takes at once: no lock, no scope, no checkpoint ----------------------


def _client_stream(stream: trio.SocketStream) -> _ClientStream:
    return _ClientStream(
        stream, send_timeout=None, body_timeout=None, keep_alive_timeout=5.0, timeout_answer=b""
    )


async def test_send_now_writes_what_the_socket_takes_and_nothing_once_closed() -> None:
    left, right = trio.socket.socketpair()
    client, peer = _client_stream(trio.SocketStream(left)), trio.SocketStream(right)
    assert client.send_now(b"data: a\n\n") == len(b"data: a\n\n")
    assert await peer.receive_some(64) == b"data: a\n\n"
    # A full buffer takes part of a write, then nothing: the caller sends the rest
    # with send_all, which waits.
    big = b"x" * (1 << 24)
    sent = client.send_now(big)
    assert 0 < sent < len(big)
    assert client.send_now(big) == 0
    await client.aclose()
    assert client.send_now(b"data: b\n\n") == 0  # closed: send_all reports it
    await peer.aclose()


async def test_send_now_leaves_tls_to_send_all() -> None:
    left, right = trio.socket.socketpair()
    context = ssl.create_default_context()
    tls = trio.SSLStream(trio.SocketStream(left), context, server_side=False)
    client = _ClientStream(
        tls, send_timeout=None, body_timeout=None, keep_alive_timeout=5.0, timeout_answer=b""
    )
    assert client.send_now(b"data: a\n\n") == 0
    right.close()
    left.close()
