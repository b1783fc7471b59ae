"""The garbage collector for a long-running server: ``tune_gc`` (what it sets, what it
leaves), the timed young collections (``CollectionSchedule``'s choice, ``collect_young``
and its thread, ticked without time: what ``gc.get_stats()`` says ran, cycles still freed, young and
old), ``serve --gc-threshold`` and ``--gc-interval`` (applied at start-up,
overridable by flag and by variable), and served connections that leave no reference
cycle behind (with full collections rare, a cycle per connection would be memory
kept for hours).

No timing is asserted here: benchmarks/bench_gc.py measures the pauses.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from streammgr import (
    GC_INTERVAL,
    SERVER_GC_THRESHOLD,
    CloseReason,
    StreamManager,
    collect_young,
    tune_gc,
)
from streammgr._gc import (
    CollectionSchedule,
    parse_gc_interval,
    parse_gc_threshold,
    run_collections,
)
from streammgr.cli import main
from streammgr.server import ServiceOptions, admin_app

from .chat_ws_helpers import connect, request, until_done
from .cli_helpers import started
from .fault_helpers import chat, raw_request, token_chat
from .server_helpers import PATIENCE, Scope, Server, raw_client, running_service, wait_until


@pytest.fixture
def collector() -> Iterator[None]:
    """The interpreter's collector as it was, put back after the test."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_tune_gc_freezes_what_is_alive_then_sets_the_thresholds() -> None:
    tune_gc()
    assert gc.get_threshold() == SERVER_GC_THRESHOLD == (2_000, 0, 36_000)
    assert gc.get_freeze_count() > 1000  # the modules, classes and functions alive now
    assert gc.get_count()[0] < 100  # collected first: the young generation starts empty


@pytest.mark.usefixtures("collector")
def test_tune_gc_takes_thresholds_and_may_freeze_nothing() -> None:
    tune_gc((5000, 5, 50), freeze=False)
    assert gc.get_threshold() == (5000, 5, 50)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("collector")
def test_tune_gc_none_leaves_the_collector_alone() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(None)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("collector")
@pytest.mark.parametrize(
    ("threshold", "error", "words"),
    [
        ((0, 10, 10), ValueError, "turns the collector off"),
        ((700, -1, 10), ValueError, "at least 0"),
        ((700, 10), TypeError, "three whole numbers"),
        ((700, 10, 1.5), TypeError, "three whole numbers"),
        ((True, 10, 10), TypeError, "three whole numbers"),
    ],
)
def test_a_bad_threshold_is_named(threshold: object, error: type[Exception], words: str) -> None:
    before = gc.get_threshold()
    with pytest.raises(error, match="gc_threshold") as caught:
        tune_gc(threshold)  # type: ignore[arg-type]
    assert words in str(caught.value)
    assert gc.get_threshold() == before  # nothing changed
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server", SERVER_GC_THRESHOLD),
        (" Python ", None),
        ("5000,5,50", (5000, 5, 50)),
        ("5000, 5, 0", (5000, 5, 0)),
    ],
)
def test_the_flags_values(text: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_gc_threshold(text) == expected


@pytest.mark.parametrize("text", ["0,10,10", "700,10", "fast", "700,-1,10", "7e2,10,10", ""])
def test_a_bad_flag_value_is_a_one_line_error(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--gc-threshold", text]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--gc-threshold" in line
    assert "GEN0" in line


@pytest.mark.parametrize(
    ("text", "expected"), [("0.1", 0.1), (" 2 ", 2.0), ("off", None), ("OFF", None), ("0", None)]
)
def test_the_interval_flags_values(text: str, expected: float | None) -> None:
    assert parse_gc_interval(text) == expected


@pytest.mark.parametrize("text", ["-1", "soon", "nan", "inf", ""])
def test_a_bad_interval_is_a_one_line_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--gc-interval", text]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--gc-interval" in line
    assert "off" in line


class Blocks:
    """A stand-in for ``sys.getallocatedblocks``: the memory in use, set by the test."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        return self.value


def test_the_schedule_collects_young_then_middle_as_the_counts_say() -> None:
    schedule = CollectionSchedule((2000, 4, 7200), blocks=Blocks(100))
    schedule.collected(2, 0)
    # gc.get_count()[1]: young collections since the last middle one (CPython's ">").
    assert [schedule.due((0, young, 0), 0) for young in range(7)] == [0, 0, 0, 0, 0, 1, 1]
    # The young count (net allocations) plays no part: that is the point.
    assert schedule.due((50_000, 0, 0), 0) == 0


def test_a_full_collection_waits_for_the_count_and_for_growth() -> None:
    blocks = Blocks(1000)
    schedule = CollectionSchedule((2000, 4, 100), blocks=blocks)
    schedule.collected(2, 0)
    assert schedule.baseline == 1000
    assert schedule.due((0, 5, 100), 0) == 1  # 100 middle ones: not more than 100
    blocks.value = 1249
    assert schedule.due((0, 5, 101), 0) == 1  # due by count, but grew less than 25%
    blocks.value = 1250
    assert schedule.due((0, 5, 101), 0) == 2
    assert schedule.due((0, 0, 101), 0) == 0  # only ever in place of a middle one
    blocks.value = 900  # the full collection freed memory: the new baseline
    schedule.collected(2, 1)
    assert schedule.baseline == 900
    blocks.value = 1124
    assert schedule.due((0, 5, 101), 1) == 1
    blocks.value = 1125
    assert schedule.due((0, 5, 101), 1) == 2


def test_growth_is_checked_rarely_and_other_full_collections_count() -> None:
    blocks = Blocks(1000)
    schedule = CollectionSchedule((2000, 4, 1000), blocks=blocks)
    schedule.collected(2, 0)
    asked = blocks.asked
    # Due by count but not grown: the allocator is asked once every threshold[2] // 100.
    assert [schedule.due((0, 5, 1001), 0) for _ in range(25)] == [1] * 25
    assert blocks.asked - asked == 3  # the 1st, the 11th and the 21st
    # A full collection made elsewhere (the interpreter's, a gc.collect()) is the
    # last one: its memory is the baseline.
    blocks.value = 2000
    assert schedule.due((0, 0, 0), 1) == 0
    assert schedule.baseline == 2000


def test_the_schedule_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="gc_threshold"):
        CollectionSchedule((0, 4, 10))
    with pytest.raises(ValueError, match="growth must be at least 1"):
        CollectionSchedule((700, 4, 10), growth=0.5)


def _collections() -> list[int]:
    return [generation["collections"] for generation in gc.get_stats()]


class Node:
    """A container that can be part of a reference cycle and weakly referenced."""

    other: object = None


def _garbage_cycle() -> weakref.ref[Node]:
    node = Node()
    node.other = node
    return weakref.ref(node)


@pytest.fixture
def quiet_collector(collector: None) -> None:
    """No collection but the test's own: the interpreter's only after a million net
    allocations."""
    gc.collect()
    gc.set_threshold(1_000_000, 10, 10)


class Ticks:
    """``run_collections``'s wait, without time: ``ticks`` intervals, then stop; before
    each tick (after the first wait), ``check`` sees what the last one did."""

    def __init__(self, ticks: int, check: Callable[[int], object] = lambda tick: None) -> None:
        self.left = ticks
        self.done = 0
        self.check = check

    def __call__(self) -> bool:
        self.check(self.done)
        if self.left == 0:
            return True
        self.left -= 1
        self.done += 1
        return False


@pytest.mark.usefixtures("quiet_collector")
def test_each_tick_collects_whatever_the_count_says() -> None:
    cycle = _garbage_cycle()
    freed_at: list[int] = []

    def check(ticks: int) -> None:
        if cycle() is None and not freed_at:
            freed_at.append(ticks)

    before = _collections()
    run_collections(CollectionSchedule((1_000_000, 4, 7200)), Ticks(12, check))
    after = _collections()
    # A young one each tick, a middle one every sixth (more than 4 young since the
    # last), no full one: gc.get_stats() says what ran.
    assert [a - b for a, b in zip(after, before, strict=True)] == [10, 2, 0]
    assert freed_at == [1]  # a cycle that died young: freed by the first tick


@pytest.mark.usefixtures("quiet_collector")
def test_an_old_cycle_is_freed_once_the_memory_grows() -> None:
    old = Node()
    old.other = old
    gc.collect()  # ages it into the old generation, alive
    cycle = weakref.ref(old)
    del old  # now garbage only a full collection finds
    before = _collections()
    # A middle collection every other tick, a full one due after more than 1 of them.
    schedule = CollectionSchedule((1_000_000, 0, 1))
    run_collections(schedule, Ticks(10))
    assert cycle() is not None  # due by count since the 6th tick, but no growth
    assert _collections()[2] == before[2]
    ballast: list[list[int]] = [[] for _ in range(sys.getallocatedblocks() // 3)]
    run_collections(schedule, Ticks(2))  # the next middle collection's tick
    assert _collections()[2] == before[2] + 1  # a full one instead
    assert cycle() is None
    del ballast


def _collector_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "streammgr-gc"]


@pytest.mark.usefixtures("collector")
async def test_collect_young_runs_a_thread_until_cancelled() -> None:
    collected = threading.Event()

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and threading.current_thread().name == "streammgr-gc":
            collected.set()

    gc.callbacks.append(seen)
    try:
        gc.set_threshold(1_000_000, 4, 7200)  # none of the interpreter's own meanwhile
        async with trio.open_nursery() as nursery:
            schedule = await nursery.start(partial(collect_young, interval=0.001))
            assert schedule.threshold == (1_000_000, 4, 7200)  # gc.get_threshold()'s
            assert len(_collector_threads()) == 1
            assert await trio.to_thread.run_sync(collected.wait, PATIENCE)
            nursery.cancel_scope.cancel()
        assert not nursery.child_tasks
        assert not _collector_threads()  # joined when the task was cancelled
    finally:
        gc.callbacks.remove(seen)


async def test_collect_young_checks_its_interval() -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        await collect_young(interval=0)


@pytest.mark.parametrize(
    ("flags", "env", "threshold", "frozen", "interval"),
    [
        ((), {}, list(SERVER_GC_THRESHOLD), True, GC_INTERVAL),
        (("--gc-threshold", "python"), {}, [700, 10, 10], False, None),
        ((), {"STREAMMGR_GC_THRESHOLD": "5000,5,50"}, [5000, 5, 50], True, GC_INTERVAL),
        (
            ("--gc-threshold", "6000,6,60"),
            {"STREAMMGR_GC_THRESHOLD": "python"},
            [6000, 6, 60],
            True,
            GC_INTERVAL,
        ),
        (("--gc-interval", "off"), {}, list(SERVER_GC_THRESHOLD), True, None),
        ((), {"STREAMMGR_GC_INTERVAL": "0.25"}, list(SERVER_GC_THRESHOLD), True, 0.25),
        (
            ("--gc-threshold", "python", "--gc-interval", "0.5"),
            {},
            [700, 10, 10],
            False,
            None,  # the interpreter's collector is left alone: no task either
        ),
    ],
)
async def test_serve_tunes_the_collector_at_start_up(
    nursery: trio.Nursery,
    flags: tuple[str, ...],
    env: dict[str, str],
    threshold: list[int],
    frozen: bool,
    interval: float | None,
) -> None:
    async with started(nursery, "serve", *flags, **env) as running:
        tuned = await running.until("gateway.gc")
        await running.until("gateway.listening")  # tuned before it serves
        assert tuned["threshold"] == threshold
        assert tuned["interval"] == interval
        frozen_count = tuned["frozen"]
        assert isinstance(frozen_count, int)
        assert (frozen_count > 1000) is frozen
        # The collector's task ends with the server: a task left would hang the exit.
        assert await running.stop() == 0


async def _answer(scope: Scope, receive: Any, send: Any) -> None:
    """A streaming answer of three chunks, the last after the client may have left."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(3):
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        await trio.sleep(0.01 if scope["path"] == "/quick" else 0.5)
    await send({"type": "http.response.body", "body": b""})


_CONNECTION_TYPES = ("hypercorn.", "h11.", "streammgr.server.")


@contextlib.contextmanager
def garbage_kept() -> Iterator[list[object]]:
    """Cyclic garbage made inside the block, kept for the test to look at (automatic
    collections off meanwhile)."""
    gc.collect()  # what earlier tests left
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _types_of(garbage: list[object], modules: tuple[str, ...]) -> list[str]:
    return sorted(
        {
            f"{type(item).__module__}.{type(item).__qualname__}"
            for item in garbage
            if type(item).__module__.startswith(modules)
        }
    )


async def test_served_connections_leave_no_reference_cycle(nursery: trio.Nursery) -> None:
    with garbage_kept() as garbage:
        server = await Server().start(nursery, _answer)
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            for _ in range(5):  # read to the end, on one kept-alive connection
                response = await client.get(f"{server.url}/quick")
                assert response.content == b"data: x\n\n" * 3
        for _ in range(5):  # left mid-answer
            async with await raw_client(server.port, "/slow") as stream:
                received = b""
                with trio.fail_after(PATIENCE):
                    while b"data: x" not in received:
                        received += await stream.receive_some(65536)
        server.stop.set()
        with trio.fail_after(PATIENCE):
            await server.stopped.wait()
        gc.collect()
        kept = _types_of(garbage, _CONNECTION_TYPES)
        assert not kept, f"reference cycles left by the server's connections: {kept}"


async def test_gateway_streams_leave_no_reference_cycle() -> None:
    # With full collections rare (SERVER_GC_THRESHOLD), a cycle per stream is memory
    # kept for hours: a stream read to its end, or left mid-answer, must leave none.
    options = ServiceOptions(upstream_url="http://sim/v1")
    manager = StreamManager()
    with garbage_kept() as garbage:
        async with (
            trio.open_nursery() as nursery,
            running_service(nursery, manager, options) as (server, _),
        ):
            # Raw sockets: an httpx client here would leave cycles of its own.
            for _ in range(3):
                body = json.dumps(token_chat(3, 0)).encode()
                done = await raw_request(server.port, "POST", "/v1/chat/completions", body)
                await done.until(lambda answer: b"data: [DONE]" in answer.body)
                await done.stream.aclose()
            for _ in range(3):
                body = json.dumps(token_chat(50, 0.05)).encode()
                left = await raw_request(server.port, "POST", "/v1/chat/completions", body)
                await left.until(lambda answer: b'"content":"' in answer.body)
                await left.stream.aclose()
            await wait_until(lambda: manager.stats().closed_total == 6)
            await trio.testing.wait_all_tasks_blocked(0.05)  # the connections' tasks ended
            # Collected while the service runs: its own objects are alive, not garbage.
            gc.collect()
            kept = _types_of(garbage, ("streammgr.", "httpx.", "httpcore.", *_CONNECTION_TYPES))
        assert not kept, f"reference cycles left by the gateway's streams: {kept}"


async def test_gateway_streams_ending_in_an_error_leave_no_reference_cycle() -> None:
    # A stream that ends in an error (an operator's cancel, an upstream's error
    # event, an upstream dropping mid-answer; streamed, as a whole completion, and
    # on the WebSocket route) must leave no cycle either: the record kept the
    # exception, and the response, the routes and the event scans kept it in a
    # local of a frame its traceback holds; with it the whole connection, until a
    # full collection.
    options = ServiceOptions(upstream_url="http://sim/v1")
    manager = StreamManager()
    faults: tuple[dict[str, Any], ...] = (
        {"fault": "error_in_stream", "fault_after": 2},
        {"fault": "drop_mid_stream", "fault_after": 2},
    )
    with garbage_kept() as garbage:
        async with (
            trio.open_nursery() as nursery,
            running_service(nursery, manager, options, admin=admin_app(manager, prefix="")) as (
                server,
                _,
            ),
        ):
            for _ in range(2):
                body = json.dumps(token_chat(50, 0.05)).encode()
                held = await raw_request(server.port, "POST", "/v1/chat/completions", body)
                await held.until(lambda answer: b'"content":"' in answer.body)
                path = f"/admin/streams/{held.headers['x-stream-id']}"
                cancel = await raw_request(server.port, "DELETE", path)
                await cancel.until(lambda answer: answer.body.endswith(b"}"))
                assert cancel.status == 200
                await cancel.stream.aclose()
                await held.until(lambda answer: answer.body.endswith(b"0\r\n\r\n"))
                assert b'"code":"cancelled"' in held.body
                await held.stream.aclose()
            for fault in faults:
                body = json.dumps(chat(tokens=5, first_token_latency=0, **fault)).encode()
                failed = await raw_request(server.port, "POST", "/v1/chat/completions", body)
                await failed.until(lambda answer: answer.body.endswith(b"0\r\n\r\n"))
                assert b'"error"' in failed.body
                await failed.stream.aclose()
            # Not streamed: the whole answer an error (the completion route).
            body = json.dumps(chat(False, tokens=5, **faults[0])).encode()
            answered = await raw_request(server.port, "POST", "/v1/chat/completions", body)
            await answered.until(lambda answer: answer.body.endswith(b"}"))
            assert answered.status >= 400
            await answered.stream.aclose()
            # The WebSocket route: the error in the request's final message.
            async with connect(server.port) as ws:
                await ws.send_message(request("one", tokens=5, first_token_latency=0, **faults[0]))
                _, final = await until_done(ws)
                assert final["error"] is not None
            await wait_until(lambda: manager.stats().closed_total == 4 + len(faults))
            await trio.testing.wait_all_tasks_blocked(0.05)  # the connections' tasks ended
            assert manager.stats().closed_by_reason[CloseReason.CANCELLED] == 2
            gc.collect()
            kept = _types_of(garbage, ("streammgr.", "httpx.", "httpcore.", *_CONNECTION_TYPES))
        assert not kept, f"reference cycles left by streams ending in an error: {kept}"


class _Failed(Exception):
    """What the failing producer raises."""


async def _fails_after_one() -> AsyncIterator[int]:
    yield 1
    raise _Failed("the producer failed")


@pytest.mark.parametrize("inline", [False, True], ids=["task", "inline"])
async def test_a_failed_producer_leaves_no_reference_cycle(inline: bool) -> None:
    # The reader gets the producer's own exception; once it has left its block,
    # nothing of the stream may stay in a cycle (the record held the exception,
    # the producer's task kept it in a local of the frame its traceback holds).
    with garbage_kept() as garbage:
        async with StreamManager() as manager:
            for _ in range(3):
                with pytest.raises(_Failed):
                    async with manager.open(_fails_after_one, inline=inline) as stream:
                        async for _ in stream:
                            pass
            await trio.testing.wait_all_tasks_blocked()
            assert manager.stats().closed_by_reason[CloseReason.PRODUCER_ERROR] == 3
            gc.collect()
            kept = _types_of(garbage, ("streammgr.", __name__))
        assert not kept, f"reference cycles left by failed producers: {kept}"
