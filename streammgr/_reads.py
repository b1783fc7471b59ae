"""Socket reads whose bytes are allocated at their own size, not 64 KiB then shrunk.

``socket.recv(65536)`` (what trio's ``SocketStream.receive_some`` does, for hypercorn's
reader and for httpcore's upstream reads) allocates a 65,569-byte bytes object from
``malloc``, reads into it, and shrinks it in place to what arrived: a token's worth,
a few hundred bytes. glibc splits the block and frees the tail; the small head stays
where it is, so every read leaves a 64 KiB hole behind a live object for as long as
that object lives, and anything long-lived that lands in such a hole pins it. A
later 64 KiB buffer that fits no hole extends the heap. Issue #15's soak measured it
by layer: glibc's heap grew by its *free* memory (~5 MiB an hour at 94 streams a
second), its memory in use, CPython's arenas and the mapped files flat; with 64 KiB
blocks taken by ``mmap`` instead (``MALLOC_MMAP_THRESHOLD_=65536``, an experiment)
the heap stopped growing.

:func:`receive_some` reads into a per-thread 64 KiB buffer and copies out exactly
what arrived: a read of at most 512 bytes then comes from CPython's small-object
allocator, a larger one from ``malloc`` at its own size, and no read leaves a hole.
The copy costs less than trio's own layers it replaces. Plain TCP sockets only: a
TLS stream reads through ``ssl`` (its own buffers).
"""

from __future__ import annotations

import errno
import os
import threading

import trio

__all__ = ["BUFFER_SIZE", "read_now", "receive_some"]

BUFFER_SIZE = 65536
"""The most one read returns (trio's and httpcore's default receive size)."""

_buffers = threading.local()  # each thread its own: os.readv lets go of the GIL


def _view() -> memoryview:
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(BUFFER_SIZE))
    return view


def read_now(sock: trio.socket.SocketType, max_bytes: int = BUFFER_SIZE) -> bytes | None:
    """What the socket holds now, at most ``max_bytes`` (capped at
    :data:`BUFFER_SIZE`), as bytes of their own size; ``b""`` at the peer's end;
    ``None`` when nothing is there yet (wait for readability, then call again).

    Raises:
        trio.ClosedResourceError: the socket was closed (here).
        trio.BrokenResourceError: the connection failed (a reset, say).
        ValueError: ``max_bytes`` below 1.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    fd = sock.fileno()
    if fd == -1:
        raise trio.ClosedResourceError("the socket was already closed")
    view = _view()
    try:
        count = os.readv(fd, [view[:max_bytes]])
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise trio.ClosedResourceError("the socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
    return bytes(view[:count])


async def receive_some(sock: trio.socket.SocketType, max_bytes: int = BUFFER_SIZE) -> bytes:
    """Trio's ``SocketStream.receive_some`` for a plain TCP socket, the bytes at their own
    size (:func:`read_now`): waits until something arrives; ``b""`` at the peer's end.

    A checkpoint as trio's is: cancelled before reading if the scope is cancelled,
    a schedule point after an immediate read, and cancellable while waiting.

    Raises:
        trio.ClosedResourceError, trio.BrokenResourceError: as :func:`read_now`.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    data = read_now(sock, max_bytes)
    if data is not None:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    while True:
        await trio.lowlevel.wait_readable(sock)
        data = read_now(sock, max_bytes)
        if data is not None:
            return data
