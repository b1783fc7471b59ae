"""EventStreamResponse's ASGI logic, driven directly on the mock clock.

The server's side of one request is :class:`FakeServer`: ``receive`` and ``send``
over Trio memory channels, every message stamped with the (mock) time it was sent.
It can stall: its ``send`` then waits in a shielded scope, as hypercorn's trio worker
does for a client that stopped reading, so nothing the response does can cancel it.
The same phases over a real socket: tests/test_server_loopback.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import trio
import trio.testing

import streammgr
from streammgr import CloseReason, FairLimiter, Permit, StreamManager, StreamSender
from streammgr.server import EventStreamResponse, encode_batch
from streammgr.server._answers import (
    _RESUME_FIELD,
    _has_resume_field,
    error_answer,
    without_resume_fields,
)
from streammgr.server._response import DirectBodyWrites
from streammgr.sse import RawBatch, ServerSentEvent

from .conftest import Probe
from .response_helpers import KEEP_ALIVE, CountingLimiter, encode_ints, forever

Message = MutableMapping[str, Any]


class FakeServer:
    """The server's side of one ASGI request, in memory."""

    def __init__(self, spec_version: str = "2.1") -> None:
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": spec_version},
            "method": "GET",
            "path": "/",
            "headers": [],
        }
        self._to_app, self._from_server = trio.open_memory_channel[Message](10)
        self._to_app.send_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.sent: list[tuple[float, Message]] = []
        self.stalled = False
        self.unstall = trio.Event()
        self.parked = False
        self.done = trio.Event()

    async def receive(self) -> Message:
        return await self._from_server.receive()

    async def send(self, message: Message) -> None:
        if self.stalled:
            self.parked = True
            with trio.CancelScope(shield=True):  # hypercorn's shield around send_all
                await self.unstall.wait()
            self.parked = False
        self.sent.append((trio.current_time(), message))
        await trio.lowlevel.checkpoint()

    def disconnect(self) -> None:
        self._to_app.send_nowait({"type": "http.disconnect"})

    async def run(self, response: EventStreamResponse) -> None:
        try:
            await response(self.scope, self.receive, self.send)
        finally:
            self.done.set()

    # -- what was sent -------------------------------------------------------------

    def start(self) -> Message:
        starts = [message for _, message in self.sent if message["type"] == "http.response.start"]
        assert len(starts) == 1, starts
        return starts[0]

    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start()["headers"])

    def bodies(self) -> list[bytes]:
        return [m["body"] for _, m in self.sent if m["type"] == "http.response.body"]

    def times(self, body: bytes) -> list[float]:
        return [
            round(t, 6)
            for t, m in self.sent
            if m["type"] == "http.response.body" and m["body"] == body
        ]

    def ended(self) -> bool:
        last = self.sent[-1][1]
        return last["type"] == "http.response.body" and not last.get("more_body", False)


@streammgr.batched
async def reads(count: int, interval: float = 0.5) -> AsyncIterator[list[str]]:
    for index in range(count):
        await trio.sleep(interval)
        yield [f"{index}a", f"{index}b"]


async def watch_close(
    manager: StreamManager,
    stream_id: str,
    closed: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Set ``closed`` when the registry closes the stream ``stream_id``."""
    async with manager.watch() as events:
        task_status.started()
        async for event in events:
            if event.kind == "closed" and event.stream is not None and event.stream.id == stream_id:
                closed.set()
                return


async def wait_until_done(server: FakeServer) -> None:
    with trio.fail_after(1000):
        await server.done.wait()


async def test_one_body_write_per_batch(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with StreamManager() as manager:
        server = FakeServer()
        response = EventStreamResponse(manager, reads, 3)
        nursery.start_soon(server.run, response)
        await wait_until_done(server)
    start = server.start()
    assert start["status"] == 200
    headers = server.headers()
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-stream-id"] == response.stream_id.encode()
    assert server.bodies() == [
        b"data: 0a\n\ndata: 0b\n\n",
        b"data: 1a\n\ndata: 1b\n\n",
        b"data: 2a\n\ndata: 2b\n\n",
        b"",
    ]
    assert server.ended()
    info = manager.get(response.stream_id)
    assert info is not None
    assert (info.close_reason, info.items) == (CloseReason.COMPLETED, 6)


async def test_headers_wait_for_the_first_batch_up_to_answer_within(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
) -> None:
    async with StreamManager() as manager:
        server = FakeServer()
        start = trio.current_time()
        nursery.start_soon(
            server.run, EventStreamResponse(manager, reads, 1, 3.0, answer_within=1, keep_alive=5)
        )
        await wait_until_done(server)
    (started_at,) = [t for t, m in server.sent if m["type"] == "http.response.start"]
    assert started_at - start == pytest.approx(1.0)
    assert [t - start for t in server.times(KEEP_ALIVE)] == pytest.approx([1.0])
    assert server.bodies() == [KEEP_ALIVE, b"data: 0a\n\ndata: 0b\n\n", b""]


async def test_nothing_is_sent_while_waiting_for_a_slot(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # No header (so no keep-alive) before the status is known: a stream may queue up
    # to answer_within, and its client sees no byte meanwhile.
    async with StreamManager(max_streams=1) as manager:
        async with manager.open(forever) as holder:
            server = FakeServer()
            start = trio.current_time()
            response = EventStreamResponse(manager, reads, 1, answer_within=20, keep_alive=5)
            nursery.start_soon(server.run, response)
            await trio.sleep(12)
            info = manager.get(response.stream_id)
            assert info is not None
            assert info.phase is streammgr.Phase.WAITING
            assert server.sent == []
            manager.cancel(holder.id)
            with pytest.raises(streammgr.StreamCancelled):
                async for _ in holder:
                    pass
        await wait_until_done(server)
    assert server.start()["status"] == 200
    assert [round(t - start, 6) for t, _ in server.sent] == [12.5, 12.5, 12.5]
    assert server.bodies() == [b"data: 0a\n\ndata: 0b\n\n", b""]


async def test_keep_alives_before_the_first_item(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with StreamManager() as manager:
        server = FakeServer()
        start = trio.current_time()
        nursery.start_soon(
            server.run,
            EventStreamResponse(manager, reads, 1, 12.0, answer_within=1, keep_alive=5),
        )
        await wait_until_done(server)
    assert [t - start for t in server.times(KEEP_ALIVE)] == pytest.approx([1, 6, 11])
    assert server.bodies()[-2:] == [b"data: 0a\n\ndata: 0b\n\n", b""]


async def test_answer_within_zero_sends_the_headers_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with StreamManager() as manager:
        server = FakeServer()
        start = trio.current_time()
        nursery.start_soon(server.run, EventStreamResponse(manager, reads, 1, answer_within=0))
        await wait_until_done(server)
    assert server.sent[0][0] == start
    assert server.bodies()[0] == KEEP_ALIVE


@pytest.mark.parametrize("spec_version", ["2.1", "2.4"])
@pytest.mark.parametrize("phase", ["waiting", "before_first_item", "mid_stream"])
async def test_a_client_disconnect_ends_the_stream_in_every_phase(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    probe: Probe,
    phase: str,
    spec_version: str,
) -> None:
    # Whatever ASGI spec version the server reports: the response listens itself.
    limiter = CountingLimiter(max_streams=1)
    async with StreamManager(limiter=limiter) as manager:
        holder = manager.open(forever)
        if phase == "waiting":
            await holder.__aenter__()
        server = FakeServer(spec_version)
        interval = 100.0 if phase == "before_first_item" else 1.0
        response = EventStreamResponse(
            manager,
            probe.ticker,
            1000,
            interval,
            answer_within=10 if phase == "waiting" else 0,  # no byte while waiting
            keep_alive=0.3,
            encode=encode_ints,
        )
        nursery.start_soon(server.run, response)
        await trio.sleep(3.5)
        info = manager.get(response.stream_id)
        assert info is not None
        expected = {
            "waiting": streammgr.Phase.WAITING,
            "before_first_item": streammgr.Phase.CONNECTING,
            "mid_stream": streammgr.Phase.STREAMING,
        }
        assert info.phase is expected[phase]
        server.disconnect()
        await wait_until_done(server)
        info = manager.get(response.stream_id)
        assert info is not None
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert info.items == (3 if phase == "mid_stream" else 0)
        assert [s.id for s in manager.streams()] == ([holder.id] if phase == "waiting" else [])
        if phase == "waiting":
            assert probe.started == 0
            await holder.__aexit__(None, None, None)
        else:
            assert (probe.started, probe.cleanups) == (1, 1)
            assert limiter.releases == 1
        assert limiter.snapshot().active == 0
        assert manager.streams() == []
        if phase == "waiting":
            assert server.sent == []  # nothing before the status was known
        else:
            assert not server.ended()  # nobody to end the body for


async def test_over_the_limit_answers_429_before_any_byte(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with StreamManager(max_streams=1, max_waiting=0) as manager:
        async with manager.open(forever):
            server = FakeServer()
            response = EventStreamResponse(manager, reads, 1)
            nursery.start_soon(server.run, response)
            await wait_until_done(server)
    assert server.start()["status"] == 429
    headers = server.headers()
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"retry-after"]) >= 1
    assert int(headers[b"retry-after-ms"]) >= 1000
    assert headers[b"x-stream-id"] == response.stream_id.encode()
    body = json.loads(server.bodies()[0])
    assert body["error"]["type"] == "rate_limit_exceeded"
    assert body["error"]["code"] == "max_waiting"
    assert server.ended()
    info = manager.get(response.stream_id)
    assert info is not None
    assert info.close_reason is CloseReason.REJECTED


async def test_a_producer_failure_after_the_headers_is_an_error_event(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
) -> None:
    async def fails() -> AsyncIterator[str]:
        yield "one"
        raise RuntimeError("internal detail sk-secret")

    async with StreamManager() as manager:
        server = FakeServer()
        response = EventStreamResponse(manager, fails)
        nursery.start_soon(server.run, response)
        await wait_until_done(server)
    first, error = server.bodies()
    assert first == b"data: one\n\n"
    event = json.loads(error.removeprefix(b"data: "))
    assert event["error"]["type"] == "server_error"
    assert response.stream_id in event["error"]["message"]
    assert b"internal detail" not in error
    assert server.ended()
    info = manager.get(response.stream_id)
    assert info is not None
    assert (info.close_reason, info.items) == (CloseReason.PRODUCER_ERROR, 1)


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (
            streammgr.UpstreamStatusError(
                "upstream returned 429", status_code=429, body="", retry_after=7
            ),
            429,
            b"7",
        ),
        (streammgr.UpstreamConnectError("refused"), 502, None),
        (ValueError("a bug"), 500, None),
    ],
)
async def test_a_failure_before_the_headers_gets_its_status(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    error: Exception,
    status: int,
    retry_after: bytes | None,
) -> None:
    async def fails() -> AsyncIterator[str]:
        raise error
        yield "never"

    async with StreamManager() as manager:
        server = FakeServer()
        nursery.start_soon(server.run, EventStreamResponse(manager, fails))
        await wait_until_done(server)
    assert server.start()["status"] == status
    assert server.headers().get(b"retry-after") == retry_after
    assert "error" in json.loads(server.bodies()[0])


async def test_a_cancel_by_an_operator_is_told_in_band(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with StreamManager() as manager:
        server = FakeServer()
        response = EventStreamResponse(manager, reads, 10, answer_within=0)
        nursery.start_soon(server.run, response)
        await trio.sleep(1.2)
        assert manager.cancel(response.stream_id, reason="maintenance")
        await wait_until_done(server)
    event = json.loads(server.bodies()[-1].removeprefix(b"data: "))
    assert event["error"]["code"] == "cancelled"
    assert "maintenance" in event["error"]["message"]
    assert server.ended()


async def test_a_stalled_client_releases_the_stream_while_the_send_is_parked(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, probe: Probe
) -> None:
    limiter = CountingLimiter()
    async with StreamManager(limiter=limiter) as manager:
        server = FakeServer()
        response = EventStreamResponse(
            manager,
            probe.ticker,
            1000,
            0.1,
            answer_within=0,
            stall_timeout=2,
            keep_alive=None,
            encode=encode_ints,
        )
        closed = trio.Event()
        await nursery.start(watch_close, manager, response.stream_id, closed)
        nursery.start_soon(server.run, response)
        await trio.sleep(0.55)
        server.stalled = True
        stalled_at = trio.current_time()
        with trio.fail_after(100):
            await closed.wait()
        # Released while the response's own send is still parked (and shielded).
        assert server.parked
        assert 2.0 <= trio.current_time() - stalled_at <= 2.1
        info = manager.get(response.stream_id)
        assert info is not None
        assert info.close_reason is CloseReason.CLIENT_STALLED
        assert (probe.cleanups, limiter.releases) == (1, 1)
        assert manager.stats().active == 0
        server.unstall.set()
        await wait_until_done(server)


async def test_reader_timeout_releases_the_stream_while_the_send_is_parked(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, probe: Probe
) -> None:
    async with StreamManager(reader_timeout=1) as manager:
        server = FakeServer()
        response = EventStreamResponse(
            manager,
            probe.ticker,
            1000,
            0.1,
            answer_within=0,
            stall_timeout=None,
            encode=encode_ints,
        )
        closed = trio.Event()
        await nursery.start(watch_close, manager, response.stream_id, closed)
        nursery.start_soon(server.run, response)
        await trio.sleep(0.55)
        server.stalled = True
        with trio.fail_after(100):
            await closed.wait()
        assert server.parked
        info = manager.get(response.stream_id)
        assert info is not None
        assert info.close_reason is CloseReason.READER_TIMEOUT
        assert probe.cleanups == 1
        server.unstall.set()
        await wait_until_done(server)


async def test_a_push_producer_streams_its_batches(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def pushes(send: StreamSender[ServerSentEvent]) -> None:
        await send.send_batch([ServerSentEvent(data="a"), ServerSentEvent(event="x", data="b")])
        await trio.sleep(1)
        await send.send(ServerSentEvent(data="c"))

    async with StreamManager() as manager:
        server = FakeServer()
        nursery.start_soon(server.run, EventStreamResponse(manager, pushes))
        await wait_until_done(server)
    assert server.bodies() == [b"data: a\n\nevent: x\ndata: b\n\n", b"data: c\n\n", b""]


async def test_not_resumable_sends_no_id_or_retry(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    @streammgr.batched
    async def events() -> AsyncIterator[list[ServerSentEvent]]:
        yield [ServerSentEvent(data="a", id="1", retry=10)]
        # As SSESource.raw_batches hands them over: its bytes hold an id field...
        yield RawBatch([ServerSentEvent(data="b", id="2")], b"id: 2\ndata: b\n\n")
        # ...or not (the event keeps the last id, as the parser reports it).
        yield RawBatch([ServerSentEvent(data="c", id="2")], b"data: c\n\n")

    async with StreamManager() as manager:
        server = FakeServer()
        nursery.start_soon(server.run, EventStreamResponse(manager, events, resumable=False))
        await wait_until_done(server)
    assert server.bodies() == [b"data: a\n\n", b"data: b\n\n", b"data: c\n\n", b""]


def test_encode_batch() -> None:
    raw = RawBatch([ServerSentEvent(data="x")], b"data: x\r\n\r\n")
    assert encode_batch(raw) == b"data: x\r\n\r\n"  # forwarded unchanged
    assert encode_batch(["a", ServerSentEvent(data="b", id="7"), b"data: c\n\n"]) == (
        b"data: a\n\nid: 7\ndata: b\n\ndata: c\n\n"
    )
    with pytest.raises(TypeError, match="encode="):
        encode_batch([1])


def test_without_resume_fields_refuses_what_it_cannot_strip() -> None:
    encode = without_resume_fields(encode_batch)
    assert encode([b"data: ok\n\n"]) == b"data: ok\n\n"
    assert encode([ServerSentEvent(data="id: 5")]) == b"data: id: 5\n\n"
    with pytest.raises(ValueError, match="resumable=False"):
        encode([b"id: 1\ndata: x\n\n"])


async def test_bad_arguments_are_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with StreamManager() as manager:
        with pytest.raises(ValueError, match="keep_alive"):
            EventStreamResponse(manager, reads, 1, keep_alive=0)
        with pytest.raises(ValueError, match="answer_within"):
            EventStreamResponse(manager, reads, 1, answer_within=-1)
        with pytest.raises(TypeError, match="answer_within"):
            EventStreamResponse(manager, reads, 1, answer_within="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="stall_timeout"):
            EventStreamResponse(manager, reads, 1, stall_timeout=-1)
        with pytest.raises(ValueError, match="key"):
            EventStreamResponse(manager, reads, 1, key="")


async def test_only_http(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        response = EventStreamResponse(manager, reads, 1)
        server = FakeServer()
        server.scope["type"] = "websocket"
        with pytest.raises(TypeError, match="http"):
            await response(server.scope, server.receive, server.send)


# -- x-should-retry: what the openai SDK obeys before its own rule ---------------------------


def _cancelled(reason: CloseReason) -> streammgr.StreamCancelled:
    return streammgr.StreamCancelled("", close_reason=reason, stream_id="s1")


def _upstream_status(status: int) -> streammgr.UpstreamStatusError:
    return streammgr.UpstreamStatusError("refused", status_code=status, body="{}")


@pytest.mark.parametrize(
    ("error", "status", "should_retry"),
    [
        (
            streammgr.StreamLimitExceeded("over", limit="max_streams", retry_after=1, key="k"),
            429,
            b"true",
        ),
        (streammgr.ManagerClosed("closed"), 503, b"true"),
        (_cancelled(CloseReason.SHUTDOWN), 503, None),
        (_cancelled(CloseReason.CANCELLED), 503, b"false"),
        (_cancelled(CloseReason.CLIENT_STALLED), 503, b"false"),
        (_upstream_status(429), 429, b"true"),
        (_upstream_status(401), 502, b"false"),
        (_upstream_status(404), 502, b"false"),
        (_upstream_status(408), 502, None),
        (_upstream_status(503), 502, None),
        (RuntimeError("bug"), 500, None),
    ],
)
def test_answers_tell_the_client_whether_a_retry_can_help(
    error: BaseException, status: int, should_retry: bytes | None
) -> None:
    answer = error_answer(error, "s1", None)
    assert answer.status == status
    headers = dict(answer.headers())
    assert headers.get(b"x-should-retry") == should_retry


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b'data: {"id":"chatcmpl-1"}\n\n', False),
        (b"data: x\nid: 7\n\n", True),
        (b"data: x\rid\r\r", True),
        (b"id:1\ndata: x\n\n", True),
        (b"retry: 10\n\n", True),
        (b"data: x\r\nretry:5\r\n\r\n", True),
        (b"data: identity\n\n", False),
        (b"data: x\nidle: 1\n\n", False),  # a field named idle is not id
        (b": keep-alive\n\n", False),
    ],
)
def test_resume_fields_are_found_wherever_a_line_starts(data: bytes, found: bool) -> None:
    assert _has_resume_field(data) is found
    assert (_RESUME_FIELD.search(data) is not None) is found  # the full check agrees


# -- every refusal by a limit is a 429 (issue 13, item 8) ----------------------------------


class SlowLimiter(FairLimiter):
    """A limiter whose refusal comes ``late`` seconds after its timeout: a busy loop, or a
    remote limiter's round trip, as the header deadline sees it."""

    def __init__(self, late: float) -> None:
        super().__init__(max_streams=1)
        self.late = late
        self.timeouts: list[float | None] = []

    async def acquire(self, key: str, *, timeout: float | None = None) -> Permit:
        self.timeouts.append(timeout)
        try:
            return await super().acquire(key, timeout=timeout)
        except streammgr.StreamLimitExceeded:
            await trio.sleep(self.late)
            raise


def assert_refused_by_limit(server: FakeServer) -> None:
    """One 429 JSON answer naming the limit, with Retry-After; no stream byte."""
    assert server.start()["status"] == 429
    headers = server.headers()
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"retry-after"]) >= 1
    (body,) = server.bodies()
    assert json.loads(body)["error"]["code"] == "max_streams"
    assert server.ended()


@pytest.mark.parametrize(
    ("answer_within", "acquire_timeout", "refused_at"),
    [(0.5, 1.0, 0.5), (1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.0, None, 1.0), (0, 1.0, 0.0)],
)
async def test_every_refusal_by_a_limit_is_a_429(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    answer_within: float,
    acquire_timeout: float | None,
    refused_at: float,
) -> None:
    # answer_within shorter than, equal to, longer than the acquire timeout, or with
    # streams that would wait forever: the stream never waits past the moment its
    # status is due, and no header goes out while it waits.
    async with StreamManager(max_streams=1, acquire_timeout=acquire_timeout) as manager:
        async with manager.open(forever):
            server = FakeServer()
            response = EventStreamResponse(
                manager, reads, 1, answer_within=answer_within, keep_alive=0.1
            )
            start = trio.current_time()
            nursery.start_soon(server.run, response)
            await wait_until_done(server)
    assert_refused_by_limit(server)
    assert [round(at - start, 6) for at, _ in server.sent] == [refused_at, refused_at]
    info = manager.get(response.stream_id)
    assert info is not None
    assert info.close_reason is CloseReason.REJECTED


async def test_a_refusal_that_comes_after_answer_within_is_still_a_429(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # The race of issue 13 (2 of 724 refusals were 200 + an in-band error under load):
    # the header deadline and the acquire timeout fall at the same instant, and the
    # refusal reaches the response after the deadline. The order of decisions, not a
    # margin, makes it a 429: no header goes out while the stream waits.
    limiter = SlowLimiter(late=0.05)
    async with StreamManager(limiter=limiter, acquire_timeout=1) as manager:
        async with manager.open(forever):
            server = FakeServer()
            response = EventStreamResponse(manager, reads, 1, answer_within=1, keep_alive=5)
            start = trio.current_time()
            nursery.start_soon(server.run, response)
            await wait_until_done(server)
    assert_refused_by_limit(server)
    assert round(server.sent[0][0] - start, 6) == 1.05
    assert limiter.timeouts == [1.0, 1.0]


async def test_answer_within_none_waits_as_long_as_acquire_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # No deadline: the acquire timeout refuses (a 429, nothing sent before), and an
    # admitted stream without keep-alives sends its headers with its first batch,
    # however late.
    async with StreamManager(max_streams=1, acquire_timeout=30) as manager:
        async with manager.open(forever):
            server = FakeServer()
            response = EventStreamResponse(manager, reads, 1, answer_within=None)
            start = trio.current_time()
            nursery.start_soon(server.run, response)
            await wait_until_done(server)
        assert_refused_by_limit(server)
        assert round(server.sent[0][0] - start, 6) == 30.0
        server = FakeServer()
        start = trio.current_time()
        nursery.start_soon(
            server.run,
            EventStreamResponse(manager, reads, 1, 40.0, answer_within=None, keep_alive=None),
        )
        await wait_until_done(server)
    assert server.start()["status"] == 200
    assert [round(t - start, 6) for t, _ in server.sent] == [40.0, 40.0, 40.0]
    assert server.bodies() == [b"data: 0a\n\ndata: 0b\n\n", b""]


async def test_answer_within_none_sends_headers_at_the_first_keep_alive_after_admission(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # The status is decided at admission: a slow upstream (first item after 40 s)
    # must not leave the client without headers until then, behind proxies that
    # give up on a silent answer. They go with the first keep-alive.
    async with StreamManager(max_streams=1) as manager:
        server = FakeServer()
        start = trio.current_time()
        nursery.start_soon(
            server.run,
            EventStreamResponse(manager, reads, 1, 40.0, answer_within=None, keep_alive=15),
        )
        await wait_until_done(server)
    assert server.start()["status"] == 200
    assert [round(t - start, 6) for t, _ in server.sent] == [15.0, 15.0, 30.0, 40.0, 40.0]
    assert server.bodies() == [KEEP_ALIVE, KEEP_ALIVE, b"data: 0a\n\ndata: 0b\n\n", b""]


async def test_a_slot_freed_before_answer_within_streams(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # Admitted in time: the headers go out at answer_within (a keep-alive, the first
    # item not being there yet), then the stream.
    async with StreamManager(max_streams=1) as manager:
        holder = manager.open(forever)
        await holder.__aenter__()
        server = FakeServer()
        response = EventStreamResponse(manager, reads, 1, 3.0, answer_within=2, keep_alive=5)
        start = trio.current_time()
        nursery.start_soon(server.run, response)
        await trio.sleep(1)
        assert server.sent == []  # waiting: nothing is sent
        await holder.__aexit__(None, None, None)
        await wait_until_done(server)
    assert server.start()["status"] == 200
    assert [round(at - start, 6) for at, _ in server.sent] == [2.0, 2.0, 4.0, 4.0]
    assert server.bodies() == [KEEP_ALIVE, b"data: 0a\n\ndata: 0b\n\n", b""]


@pytest.mark.parametrize("direct", [False, True], ids=["wrapped", "direct"])
async def test_direct_body_writes_pass_the_start_through_every_layer(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, direct: bool
) -> None:
    # Behind DirectBodyWrites, the layers in between see the start (and may change
    # it) but not the bodies, which reach the server's send as they were.
    seen: list[str] = []

    def layer(app: Any) -> Any:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            async def noting(message: Message) -> None:
                seen.append(message["type"])
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message["headers"], (b"x-layer", b"1")]}
                await send(message)

            await app(scope, receive, noting)

        return wrapped

    async with StreamManager() as manager:
        server = FakeServer()
        response = EventStreamResponse(manager, reads, 2, 1.0, answer_within=None, keep_alive=None)
        app = layer(layer(response))
        if direct:
            app = DirectBodyWrites(app)
        await nursery.start(_run_app, server, app)
        await wait_until_done(server)
    assert server.headers()[b"x-layer"] == b"1"
    assert server.bodies() == [b"data: 0a\n\ndata: 0b\n\n", b"data: 1a\n\ndata: 1b\n\n", b""]
    messages = ["http.response.start"] + ([] if direct else ["http.response.body"] * 3)
    assert seen == [kind for kind in messages for _layer in range(2)]  # inner, then outer


async def _run_app(
    server: FakeServer, app: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    try:
        await app(server.scope, server.receive, server.send)
    finally:
        server.done.set()
