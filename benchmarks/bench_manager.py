"""Manager benchmark: streammgr beside the bare Trio primitives it is built on.

Run: ``.venv/bin/python benchmarks/bench_manager.py`` (or ``python3 dev.py bench``).

The floor for each figure is the same work done with nothing but Trio: a producer
task started in a shared nursery, inside its own cancel scope, connected to the
reader by a memory channel (the reader's exit cancels the scope and waits for the
channel to close). streammgr adds admission, the registry, timeouts and logging
on top; the ratios say what that costs. Logging is configured the way production
apps run it (structlog filtering below WARNING), so a filtered ``info`` costs what
it costs there.

Printed: medians over several repeats, and ratios against the floor, with the
targets of issue #2. One run, one machine: compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
import trio
import trio.testing

import streammgr


async def one_item() -> AsyncIterator[int]:
    yield 1


async def blocked() -> AsyncIterator[int]:
    while True:
        await trio.sleep(math.inf)
        yield 1  # pragma: no cover


# -- the floor: bare Trio ------------------------------------------------------------


class BareManager:
    """The least a correct design needs: shared nursery, scope, channel per stream."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.scopes: list[trio.CancelScope] = []

    async def _producer(
        self,
        scope: trio.CancelScope,
        send: trio.MemorySendChannel[int],
        body: Callable[[], AsyncIterator[int]],
    ) -> None:
        try:
            with scope:
                iterator = body()
                try:
                    async for item in iterator:
                        await send.send(item)
                finally:
                    with trio.CancelScope(shield=True):
                        await iterator.aclose()  # type: ignore[attr-defined]
        finally:
            send.close()

    async def stream(
        self, body: Callable[[], AsyncIterator[int]], hold: Callable[[], Awaitable[None]] | None
    ) -> None:
        send, receive = trio.open_memory_channel[int](0)
        scope = trio.CancelScope()
        self.nursery.start_soon(self._producer, scope, send, body)
        try:
            if hold is not None:
                self.scopes.append(scope)
                await hold()
            async for _ in receive:
                pass
        finally:
            scope.cancel()
            with trio.CancelScope(shield=True):
                async for _ in receive:
                    pass


# -- measurements ----------------------------------------------------------------------


async def open_close_streammgr(count: int) -> float:
    async with streammgr.StreamManager(max_streams=1000, max_streams_per_key=100) as manager:
        start = time.perf_counter()
        for _ in range(count):
            async with manager.open(one_item, key="k") as stream:
                async for _ in stream:
                    pass
        return (time.perf_counter() - start) / count


async def open_close_bare(count: int) -> float:
    async with trio.open_nursery() as nursery:
        bare = BareManager(nursery)
        start = time.perf_counter()
        for _ in range(count):
            await bare.stream(one_item, None)
        return (time.perf_counter() - start) / count


async def hold_streams_streammgr(count: int, action: str) -> float:
    """Open ``count`` blocked streams, then measure memory, snapshot or cancel."""
    async with (
        trio.open_nursery() as readers,
        streammgr.StreamManager(shutdown_grace=0) as manager,
    ):

        async def read(key: str) -> None:
            try:
                async with manager.open(blocked, key=key) as stream:
                    async for _ in stream:
                        pass
            except streammgr.StreamCancelled:
                pass

        gc.collect()
        before = tracemalloc.get_traced_memory()[0] if action == "memory" else 0
        for index in range(count):
            readers.start_soon(read, f"tenant-{index % 100}")
        await trio.testing.wait_all_tasks_blocked()
        if action == "memory":
            gc.collect()
            result = (tracemalloc.get_traced_memory()[0] - before) / count
        elif action in ("snapshot", "snapshot-changed"):
            samples = []
            records = list(manager._registry.active.values())
            for _ in range(7):
                if action == "snapshot-changed":
                    for record in records:  # as if every stream got an item since
                        record.cached = None
                start = time.perf_counter()
                snapshots = manager.streams()
                samples.append(time.perf_counter() - start)
                assert len(snapshots) == count
            result = statistics.median(samples)
        else:
            start = time.perf_counter()
            for tenant in range(100):
                manager.cancel_key(f"tenant-{tenant}")
            await trio.testing.wait_all_tasks_blocked()
            result = time.perf_counter() - start
            assert not manager.streams()
        readers.cancel_scope.cancel()
    return result


async def hold_streams_bare(count: int, action: str) -> float:
    async with trio.open_nursery() as shared, trio.open_nursery() as readers:
        bare = BareManager(shared)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0] if action == "memory" else 0
        for _ in range(count):
            readers.start_soon(bare.stream, blocked, trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        if action == "memory":
            gc.collect()
            result = (tracemalloc.get_traced_memory()[0] - before) / count
        else:
            assert len(bare.scopes) == count
            start = time.perf_counter()
            for scope in bare.scopes:
                scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            result = time.perf_counter() - start
            assert not shared.child_tasks
        readers.cancel_scope.cancel()
    return result


# -- throughput: items through the hand-off ---------------------------------------------

ITEMS = 100_000
BATCH = 10  # items an upstream read typically carries


async def items_producer(count: int) -> AsyncIterator[int]:
    for index in range(count):
        yield index


@streammgr.batched
async def batches_producer(count: int) -> AsyncIterator[list[int]]:
    for start in range(0, count, BATCH):
        yield list(range(start, min(start + BATCH, count)))


async def throughput_streammgr(mode: str, buffer_size: int) -> float:
    """Seconds per item through a manager; mode: items, batches-per-item, batches."""
    async with streammgr.StreamManager(buffer_size=buffer_size) as manager:
        start = time.perf_counter()
        taken = 0
        if mode == "items":
            async with manager.open(items_producer, ITEMS) as stream:
                async for _ in stream:
                    taken += 1
        elif mode == "batches-per-item":
            async with manager.open(batches_producer, ITEMS) as stream:
                async for _ in stream:
                    taken += 1
        else:
            async with manager.open(batches_producer, ITEMS) as stream:
                async for batch in stream.batches():
                    taken += len(batch)
        assert taken == ITEMS
        return (time.perf_counter() - start) / ITEMS


async def throughput_floor(batch: int, buffer_size: int) -> float:
    """The honest floor: a bare channel whose ends try send_nowait/receive_nowait
    first (Trio's send()/receive() yield to the scheduler on every call, even when
    the buffer has room), carrying lists of ``batch`` items when ``batch > 1``."""
    send, receive = trio.open_memory_channel[object](buffer_size)

    async def produce() -> None:
        with send:
            if batch == 1:
                async for item in items_producer(ITEMS):
                    try:
                        send.send_nowait(item)
                        continue
                    except trio.WouldBlock:
                        pass
                    await send.send(item)
            else:
                iterator = batches_producer(ITEMS)
                while True:
                    try:
                        items = await iterator.anext_batch()
                    except StopAsyncIteration:
                        return
                    try:
                        send.send_nowait(items)
                        continue
                    except trio.WouldBlock:
                        pass
                    await send.send(items)

    taken = 0
    async with trio.open_nursery() as nursery:
        start = time.perf_counter()
        nursery.start_soon(produce)
        while True:
            try:
                got = receive.receive_nowait()
            except trio.WouldBlock:
                try:
                    got = await receive.receive()
                except trio.EndOfChannel:
                    break
            except trio.EndOfChannel:
                break
            taken += 1 if batch == 1 else len(got)  # type: ignore[arg-type]
    assert taken == ITEMS
    return (time.perf_counter() - start) / ITEMS


def median_of(repeats: int, function: Callable[[], Awaitable[float]]) -> float:
    samples = []
    for _ in range(repeats):
        gc.collect()
        samples.append(trio.run(function))
    return statistics.median(samples)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams and repeats")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() before holding streams (the garbage-collector lever)",
    )
    options = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    repeats = 3 if options.quick else 5
    sequential = 5_000 if options.quick else 20_000
    held = [10_000] if options.quick else [10_000, 50_000]
    if options.gc_freeze:
        gc.freeze()

    print(f"streammgr manager benchmark ({repeats} repeats, medians)")
    ours = median_of(repeats, lambda: open_close_streammgr(sequential))
    floor = median_of(repeats, lambda: open_close_bare(sequential))
    print(
        f"open+close, {sequential} sequential: streammgr {ours * 1e6:7.1f} us "
        f"({1 / ours:8.0f}/s)  floor {floor * 1e6:7.1f} us ({1 / floor:8.0f}/s)  "
        f"ratio {floor / ours:.2f}x of floor rate  target >=0.5x: {verdict(floor / ours >= 0.5)}"
    )

    tracemalloc.start()
    for count in held:
        ours = median_of(1, lambda count=count: hold_streams_streammgr(count, "memory"))  # type: ignore[misc]
        floor = median_of(1, lambda count=count: hold_streams_bare(count, "memory"))  # type: ignore[misc]
        print(
            f"memory per open stream at {count}: streammgr {ours / 1024:5.2f} KiB  "
            f"floor {floor / 1024:5.2f} KiB  ratio {ours / floor:.2f}x  "
            f"target <=1.5x: {verdict(ours / floor <= 1.5)}"
        )
    tracemalloc.stop()

    print(f"throughput, {ITEMS:,} items, batches of {BATCH} (items/s; ratio to the honest floor)")
    for buffer_size in (0, 16):
        floor_items = median_of(repeats, lambda b=buffer_size: throughput_floor(1, b))  # type: ignore[misc]
        floor_batches = median_of(repeats, lambda b=buffer_size: throughput_floor(BATCH, b))  # type: ignore[misc]
        for mode, floor, what in [
            ("items", floor_items, "per item, item producer      "),
            ("batches-per-item", floor_items, "per item, batch producer     "),
            ("batches", floor_batches, "batches(), batch producer    "),
        ]:
            ours = median_of(repeats, lambda m=mode, b=buffer_size: throughput_streammgr(m, b))  # type: ignore[misc]
            print(
                f"  buffer_size={buffer_size:<2} {what} streammgr {1 / ours:10,.0f}/s  "
                f"floor {1 / floor:10,.0f}/s  ratio {floor / ours:.2f}x"
            )

    count = 10_000
    ours = median_of(repeats, lambda: hold_streams_streammgr(count, "cancel"))
    floor = median_of(repeats, lambda: hold_streams_bare(count, "cancel"))
    print(
        f"cancel {count} streams: streammgr {ours * 1e3:7.1f} ms  floor {floor * 1e3:7.1f} ms  "
        f"ratio {ours / floor:.2f}x  target <=1.5x: {verdict(ours / floor <= 1.5)}"
    )
    for action, what in [("snapshot", "unchanged"), ("snapshot-changed", "all changed")]:
        ours = median_of(repeats, lambda action=action: hold_streams_streammgr(count, action))  # type: ignore[misc]
        print(
            f"snapshot of {count} streams ({what} since the last one): {ours * 1e3:.2f} ms  "
            f"target <15 ms: {verdict(ours < 0.015)}"
        )


if __name__ == "__main__":
    main()
