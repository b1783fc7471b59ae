"""The manager under load: thousands of streams with every way of ending, at once;
nothing may leak, no limit may be exceeded."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

import trio
import trio.lowlevel
import trio.testing

import streammgr
from streammgr import StreamManager

MAX_STREAMS = 40
MAX_PER_KEY = 8
KEYS = [f"tenant-{index}" for index in range(8)]
BEHAVIOURS = [
    "complete",
    "break",
    "reader_raises",
    "outside_cancel",
    "producer_error",
    "idle",
    "slow_reader",
    "reader_cancelled",
    "impatient",
]


class Ledger:
    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.cleaned: Counter[str] = Counter()
        self.live = 0
        self.max_live = 0
        self.live_by_key: Counter[str] = Counter()
        self.max_live_by_key = 0
        self.outcomes: Counter[str] = Counter()


class Boom(Exception):
    pass


async def test_stress_thousands_of_streams(autojump_clock: trio.abc.Clock) -> None:
    rng = random.Random(20261125)
    ledger = Ledger()

    async def producer(
        token: str, key: str, items: int, fail_at: int, hang: bool
    ) -> AsyncIterator[int]:
        ledger.started[token] += 1
        ledger.live += 1
        ledger.live_by_key[key] += 1
        ledger.max_live = max(ledger.max_live, ledger.live)
        ledger.max_live_by_key = max(ledger.max_live_by_key, ledger.live_by_key[key])
        try:
            for index in range(items):
                if index == fail_at:
                    raise Boom(token)
                if hang and index == 1:
                    await trio.sleep_forever()
                await trio.sleep(rng.uniform(0.01, 0.5))
                yield index
        finally:
            ledger.live -= 1
            ledger.live_by_key[key] -= 1
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()  # an awaiting cleanup, like closing a response
            ledger.cleaned[token] += 1

    async def reader(manager: StreamManager, token: str, behaviour: str) -> None:
        key = rng.choice(KEYS)
        items = rng.randint(1, 12)
        fail_at = rng.randint(0, items - 1) if behaviour == "producer_error" else -1
        acquire_timeout = rng.uniform(0.01, 0.3) if behaviour == "impatient" else None
        try:
            with trio.move_on_after(
                rng.uniform(0.1, 2.0) if behaviour == "reader_cancelled" else 1e9
            ):
                async with manager.open(
                    producer,
                    token,
                    key,
                    items,
                    fail_at,
                    behaviour == "idle",
                    key=key,
                    acquire_timeout=acquire_timeout,
                ) as stream:
                    async for index in stream:
                        if behaviour == "break" and index >= items // 2:
                            break
                        if behaviour == "reader_raises" and index >= items // 2:
                            raise Boom("reader")
                        if behaviour == "outside_cancel" and index == 0:
                            manager.cancel(stream.id, reason="stress")
                        if behaviour == "slow_reader":
                            await trio.sleep(100)
            ledger.outcomes["ok"] += 1
        except Boom:
            ledger.outcomes["boom"] += 1
        except streammgr.StreamLimitExceeded:
            ledger.outcomes["rejected"] += 1
        except streammgr.StreamCancelled as exc:
            ledger.outcomes[str(exc.close_reason)] += 1

    await trio.testing.wait_all_tasks_blocked()
    baseline = trio.lowlevel.current_statistics().tasks_living
    count = 3000
    async with StreamManager(
        max_streams=MAX_STREAMS,
        max_streams_per_key=MAX_PER_KEY,
        idle_timeout=5,
        reader_timeout=20,
        history_size=10,
    ) as manager:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(reader, manager, f"s{index}", rng.choice(BEHAVIOURS))
                if index % 50 == 0:
                    await trio.sleep(rng.uniform(0, 0.2))
        assert manager.streams() == []
        stats = manager.stats()
        assert (stats.active, stats.waiting) == (0, 0)
        assert stats.opened_total == count
        assert stats.closed_total == count
        assert sum(ledger.outcomes.values()) == count
    assert trio.lowlevel.current_statistics().tasks_living == baseline
    # Every producer that started was cleaned up exactly once; none is alive.
    assert ledger.started.keys() == ledger.cleaned.keys()
    assert set(ledger.started.values()) == {1}
    assert set(ledger.cleaned.values()) == {1}
    assert ledger.live == 0
    # The limits held all along, and were reached.
    assert ledger.max_live == MAX_STREAMS
    assert ledger.max_live_by_key == MAX_PER_KEY
    # Every way of ending happened.
    closed = stats.closed_by_reason
    for reason in [
        "completed",
        "reader_exit",
        "cancelled",
        "producer_error",
        "idle_timeout",
        "reader_timeout",
        "rejected",
    ]:
        assert closed[reason] > 0, reason
