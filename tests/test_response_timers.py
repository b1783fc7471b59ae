"""The responses' shared timer: one deadline heap per manager, served by its watchdog task.

A held streaming response keeps no task of its own beside the one answering (no keeper,
no watcher under the server's disconnect notice) and one heap entry: keep-alives come
on time and in order for many responses, writes re-arm nothing, a response leaving
takes its entry with it, and nothing is left once all have gone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import trio
import trio.testing

from streammgr import CloseReason, StreamManager
from streammgr._timers import SharedTimers
from streammgr.server import EventStreamResponse

from .response_helpers import (
    KEEP_ALIVE,
    CountingLimiter,
    NoticedClient,
    encode_ints,
    forever,
    task_names,
)


def responses_timers(manager: StreamManager) -> SharedTimers:
    return manager._runner.timers


async def test_many_responses_get_their_keep_alives_on_time_from_one_heap(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with StreamManager() as manager:
        before = task_names()
        clients = [NoticedClient() for _ in range(20)]
        for client in clients:
            response = EventStreamResponse(manager, forever, answer_within=0, keep_alive=15)
            nursery.start_soon(client.run, response)
            await trio.sleep(1)
        # Each response: its own task only (the client's run), one heap entry.
        assert len(responses_timers(manager)) == 20
        await trio.testing.wait_all_tasks_blocked()
        added = Counter(task_names()) - Counter(before)
        assert added == Counter({f"{NoticedClient.run.__module__}.NoticedClient.run": 20})
        await trio.sleep(49.5 - trio.current_time())
        for index, client in enumerate(clients):
            # The headers with a keep-alive at once, then one every 15 s, exactly.
            due = [float(when) for when in range(index, 50, 15)]
            assert client.keep_alives() == due
        for client in clients:
            await client.disconnect()
            await client.returned.wait()
        assert len(responses_timers(manager)) == 0
        assert task_names() == before


async def test_writes_rearm_nothing_and_move_the_next_keep_alive_lazily(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def every_ten_seconds_then_quiet() -> AsyncIterator[int]:
        for index in range(100):
            await trio.sleep(0.1)
            yield index
        await trio.sleep_forever()

    async with StreamManager() as manager:
        timers = responses_timers(manager)
        client = NoticedClient()
        response = EventStreamResponse(
            manager,
            every_ten_seconds_then_quiet,
            answer_within=0,
            keep_alive=15,
            encode=encode_ints,
        )
        nursery.start_soon(client.run, response)
        await trio.sleep(0.15)
        entries = len(timers._heap)
        await trio.sleep(9.9)
        # 100 batches written, and the heap holds still one entry: none re-armed.
        assert len([body for _, body in client.writes if body != KEEP_ALIVE]) == 100
        assert (len(timers), len(timers._heap)) == (1, entries)
        await trio.sleep(30 - trio.current_time())
        # The last write at 10.0: the next keep-alive 15 s after it, not at 15.
        assert client.keep_alives() == [0.0, pytest.approx(25.0)]
        await client.disconnect()
        await client.returned.wait()
        assert timers._heap == [] or all(entry[2] is None for entry in timers._heap)


async def test_a_response_leaving_takes_its_timer_with_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    limiter = CountingLimiter()
    async with StreamManager(limiter=limiter) as manager:
        timers = responses_timers(manager)
        clients = [NoticedClient() for _ in range(3)]
        for client in clients:
            nursery.start_soon(client.run, EventStreamResponse(manager, forever, answer_within=0))
        await trio.testing.wait_all_tasks_blocked()
        assert len(timers) == 3
        await clients[1].disconnect()
        await clients[1].returned.wait()
        assert len(timers) == 2
        # The heap keeps no reference to the response that left.
        assert sum(entry[2] is not None for entry in timers._heap) == 2
        (info,) = manager.history()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert limiter.releases == 1
        # Its old deadline passes without effect on the others.
        await trio.sleep(31)
        assert [len(c.keep_alives()) for c in (clients[0], clients[2])] == [3, 3]
        for client in (clients[0], clients[2]):
            await client.disconnect()
            await client.returned.wait()
        assert len(timers) == 0
        nursery_of_manager = manager._runner.nursery
        assert nursery_of_manager is not None
        assert [task.name for task in nursery_of_manager.child_tasks] == ["streammgr-watchdog"]
    assert limiter.releases == 3


async def test_the_write_guard_fires_from_the_heap_for_a_stalled_client(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    limiter = CountingLimiter()
    unstall = trio.Event()

    class Stalling(NoticedClient):
        async def _send(self, message: MutableMapping[str, Any]) -> None:
            if trio.current_time() >= 5:
                with trio.CancelScope(shield=True):  # as hypercorn's send
                    await unstall.wait()
            await super()._send(message)

    async with StreamManager(limiter=limiter) as manager:
        client = Stalling()
        response = EventStreamResponse(
            manager, forever, answer_within=0, keep_alive=2, stall_timeout=7
        )
        nursery.start_soon(client.run, response)
        await trio.sleep(12.9)
        assert manager.history() == []
        # The keep-alive due at 6 began its write then (stalled): released 7 s later.
        await trio.sleep(0.2)
        (info,) = manager.history()
        assert info.close_reason is CloseReason.CLIENT_STALLED
        assert limiter.releases == 1
        assert not client.returned.is_set()  # still parked in the shielded send
        unstall.set()
        await client.returned.wait()
        assert len(responses_timers(manager)) == 0


async def test_no_keep_alive_and_no_guard_means_no_timer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with StreamManager() as manager:
        client = NoticedClient()
        response = EventStreamResponse(
            manager, forever, answer_within=None, keep_alive=None, stall_timeout=None
        )
        nursery.start_soon(client.run, response)
        await trio.testing.wait_all_tasks_blocked()
        assert len(responses_timers(manager)) == 0
        assert responses_timers(manager).next_deadline() == math.inf
        await client.disconnect()
        await client.returned.wait()
