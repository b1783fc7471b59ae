"""Memory a manager still holds after its streams have closed (should be ~0).

A closed stream may leave only its snapshot in ``history()``; this measures what
else survives, with ``history_size=0`` so that the snapshots do not count:

    python benchmarks/bench_retention.py

Prints the bytes still allocated (tracemalloc) after 2,000 failed streams with
``deadline=3600`` and 20,000 completed ones with ``idle_timeout=600``, while the
manager is still running (before its timeouts would ever fire).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator

import trio

from streammgr import StreamManager


class UpstreamBroke(Exception):
    """Stands for an upstream error, with a traceback through the producer."""


async def failing(payload: bytes) -> AsyncIterator[bytes]:
    """A producer with a sizeable frame that fails after one item."""
    frame_local = payload * 1  # noqa: F841 - kept alive by the traceback if leaked
    yield b"x"
    raise UpstreamBroke("upstream broke")


async def completing() -> AsyncIterator[bytes]:
    """A producer that yields one item and finishes."""
    yield b"x"


async def retained(count: int, producer: str, **timeouts: float) -> int:
    """Bytes still allocated after ``count`` streams closed, manager still open."""
    async with StreamManager(history_size=0, **timeouts) as manager:  # type: ignore[arg-type]
        await trio.lowlevel.checkpoint()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            try:
                if producer == "failing":
                    async with manager.open(failing, b"p" * 50_000) as stream:
                        async for _ in stream:
                            pass
                else:
                    async with manager.open(completing) as stream:
                        async for _ in stream:
                            pass
            except UpstreamBroke:
                pass
        del stream
        await trio.lowlevel.checkpoint()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return after - before


async def main() -> None:
    """Print the retained memory of both scenarios."""
    failed = await retained(2_000, "failing", deadline=3600)
    print(f"2,000 failed streams, deadline=3600:      {failed / 1e6:8.2f} MB retained")
    completed = await retained(20_000, "completing", idle_timeout=600)
    print(f"20,000 completed streams, idle_timeout=600: {completed / 1e6:8.2f} MB retained")


if __name__ == "__main__":
    trio.run(main)
