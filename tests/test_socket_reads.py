"""Socket reads at the bytes' own size (``streammgr/_reads.py``): what a read returns,
its errors and its checkpoints, and that the gateway's two plain-TCP read paths (the
client's, in ``_ClientStream``; the upstream's, in the sharded pool's ``_TrioStream``)
use it, so a small read's bytes do not sit in glibc's heap (where ``recv(65536)``
leaves a 64 KiB hole behind each, issue #15's soak).

Where the bytes live is told from ``/proc/self/maps``: glibc's main heap is the
``[heap]`` mapping; CPython's small-object arenas are mappings of their own.
"""

from __future__ import annotations

import select
import socket
import struct
from functools import partial

import pytest
import trio
import trio.testing

from streammgr._reads import BUFFER_SIZE, read_now, receive_some
from streammgr.server._hypercorn import _ClientStream
from streammgr.sources._pools import _TrioBackend


def _in_glibc_heap(value: bytes) -> bool:
    """Whether the object lies in the main thread's malloc heap (``[heap]``)."""
    address = id(value)
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[heap]"):
                start, end = (int(part, 16) for part in line.split()[0].split("-"))
                if start <= address < end:
                    return True
    return False


def _pair() -> tuple[trio.socket.SocketType, socket.socket]:
    """A connected pair: a Trio socket (non-blocking) and a plain blocking peer."""
    left, right = socket.socketpair()
    return trio.socket.from_stdlib_socket(left), right


async def test_recv_leaves_a_small_read_in_the_heap_and_read_now_does_not() -> None:
    # The premise (CPython 3.11 on glibc): recv(65536) shrinks a heap block in place.
    plain, peer = socket.socketpair()
    with plain, peer:
        peer.send(b"x" * 300)
        assert _in_glibc_heap(plain.recv(65536))
    left, right = _pair()
    with left, right:
        right.send(b"y" * 300)
        data = read_now(left)
        assert data == b"y" * 300
        assert type(data) is bytes
        assert not _in_glibc_heap(data)


async def test_read_now_says_what_is_there() -> None:
    left, right = _pair()
    with left, right:
        assert read_now(left) is None  # nothing yet: wait, then call again
        right.send(b"a" * 1000)
        assert read_now(left, 100) == b"a" * 100  # at most max_bytes
        assert read_now(left) == b"a" * 900
        right.sendall(b"b" * (BUFFER_SIZE + 10))
        first = read_now(left, 10 * BUFFER_SIZE)
        assert first is not None
        assert 0 < len(first) <= BUFFER_SIZE  # capped at the buffer
        rest = b""
        while len(first) + len(rest) < BUFFER_SIZE + 10:
            more = read_now(left)
            assert more
            rest += more
        assert first + rest == b"b" * (BUFFER_SIZE + 10)
        right.shutdown(socket.SHUT_WR)
        assert read_now(left) == b""  # the peer's end
        with pytest.raises(ValueError, match="max_bytes"):
            read_now(left, 0)


async def test_read_now_errors_are_trios() -> None:
    left, right = _pair()
    left.close()
    right.close()
    with pytest.raises(trio.ClosedResourceError):
        read_now(left)
    # A reset connection: the peer closes with SO_LINGER 0 (an RST).
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = trio.socket.from_stdlib_socket(socket.create_connection(server.getsockname()))
        accepted, _ = server.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()
        with client, pytest.raises(trio.BrokenResourceError, match="broken"):
            select.select([client.fileno()], [], [], 30)  # the RST readable (over loopback)
            read_now(client)


async def test_receive_some_waits_and_is_a_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = trio.socket.socketpair()
    with left, right:
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                got.append(await receive_some(left))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert not got  # waiting for data
            await right.send(b"data: a\n\n")
        assert got == [b"data: a\n\n"]
        # Cancelled before reading: nothing is taken from the socket.
        await right.send(b"data: b\n\n")
        with trio.CancelScope() as scope:
            scope.cancel()
            await receive_some(left)
        assert scope.cancelled_caught
        assert await receive_some(left) == b"data: b\n\n"
        # Cancelled while waiting.
        with trio.move_on_after(0.01) as waited:
            await receive_some(left)
        assert waited.cancelled_caught
        with trio.testing.assert_checkpoints():
            await right.send(b"c")
            await receive_some(left)


async def test_the_client_reader_reads_at_the_bytes_own_size() -> None:
    left, right = trio.socket.socketpair()
    client = _ClientStream(
        trio.SocketStream(left),
        send_timeout=None,
        body_timeout=None,
        keep_alive_timeout=5.0,
        timeout_answer=b"",
    )
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n\r\n"
    await right.send(request)
    data = await client.receive_some(65536)
    assert data == request
    assert not _in_glibc_heap(bytes(data))
    right.close()
    assert await client.receive_some(65536) == b""
    await client.aclose()


async def test_the_upstream_pool_reads_plain_tcp_at_the_bytes_own_size() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _answer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await _TrioBackend().connect_tcp("127.0.0.1", port)
        await stream.write(b"ping")
        data = await stream.read(65536)
        assert data == b"data: x\n\n"
        assert not _in_glibc_heap(data)
        assert await stream.read(65536) == b""  # the server closed
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def _answer(stream: trio.SocketStream) -> None:
    async with stream:
        assert await stream.receive_some(64) == b"ping"
        await stream.send_all(b"data: x\n\n")
