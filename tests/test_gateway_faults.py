"""The real gateway under faults: nothing leaks, no limit is exceeded, every end is told.

Each case runs the service (gateway and inspection API, ``build_service_app`` under
``serve_service``) in front of the simulator served on its own loopback port
(tests/fault_helpers.py). At the end of every case the rig checks that the registry
holds no stream, the limiter is at zero, the simulator holds no response, the open
descriptors are the baseline plus the idle pooled upstream connections (counted) and,
once the rig is closed, exactly the baseline with no ``ResourceWarning``. Each case
asserts the close reasons recorded, and what the client received.

Real time over loopback: every wait is on an event or a condition, bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpcore
import httpx
import pytest
import trio

import streammgr
from streammgr import CloseReason, Phase, StreamManager
from streammgr.cli import main
from streammgr.server import serve
from streammgr.simulate import SimulatedUpstream
from streammgr.sources import SourceTimeouts, SSESource

from .fault_helpers import (
    Rig,
    chat,
    data_events,
    describe,
    error_of,
    expected_text,
    is_complete,
    new_descriptors,
    open_fds,
    open_rig,
    raw_request,
    streamed_text,
    unchunked,
)
from .pool_helpers import CancelAfterConnect
from .server_helpers import PATIENCE, RawResponse, quiet_hypercorn, read_until_closed, wait_until

KEEP_ALIVE = b": keep-alive\n\n"
# Headers and keep-alives out at once, so that every phase has a client that reads.
EARLY: dict[str, Any] = {"answer_within": 0.05, "keep_alive": 0.05}
# The same, for streams that wait for a slot: nothing is sent while a stream waits,
# and it waits at most answer_within (then a 429).
QUEUED: dict[str, Any] = {"answer_within": 30.0, "keep_alive": 0.05}
ENDLESS: dict[str, Any] = {"tokens": 100000, "token_latency": 0.02}
FLOOD: dict[str, Any] = {"tokens": 100000, "token_latency": 0, "first_token_latency": 0}


def has_content(response: RawResponse) -> bool:
    return b'"content":"' in response.received


def has_keep_alive(response: RawResponse) -> bool:
    return KEEP_ALIVE in response.received


def in_band_error(response: RawResponse) -> dict[str, Any]:
    """A streamed answer that ended with an error event and a whole chunked body."""
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payload, ended = unchunked(response.body)
    assert ended, f"the chunked body was cut: {response.body[-200:]!r}"
    events = data_events(payload)
    assert "[DONE]" not in events
    last: dict[str, Any] = json.loads(events[-1])
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "code", "param"}
    return last


def assert_intact(rig: Rig, body: dict[str, Any], response: RawResponse) -> None:
    """A streamed answer that arrived whole: the simulator's text, then [DONE]."""
    assert response.status == 200
    payload, ended = unchunked(response.body)
    assert ended
    events = data_events(payload)
    assert events[-1] == "[DONE]"
    assert streamed_text(events) == expected_text(rig.upstream, body)


async def finish(response: RawResponse) -> RawResponse:
    await response.until(is_complete)
    await response.stream.aclose()
    return response


# -- the client goes away, in every phase --------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "stream_false"])
@pytest.mark.parametrize("phase", ["waiting", "before_first_byte", "mid_stream"])
async def test_a_client_that_leaves_frees_everything(phase: str, stream: bool) -> None:
    options = {"max_streams": 1, "acquire_timeout": 30.0}
    async with open_rig(
        manager_options=options, **(QUEUED if phase == "waiting" else EARLY)
    ) as rig:
        holder = None
        if phase == "waiting":
            holder = await rig.post(chat(**ENDLESS))
            await holder.until(has_content)
        simulate = {"first_token_latency": 30.0} if phase == "before_first_byte" else ENDLESS
        response = await rig.post(chat(stream, **simulate))
        if phase == "waiting":
            await rig.until(lambda: rig.manager.stats().waiting == 1)
        elif phase == "before_first_byte":
            await rig.until(lambda: rig.upstream.stats().open == 1)
        elif stream:
            await response.until(has_content)
        else:
            await rig.until(lambda: any(info.items >= 3 for info in rig.manager.streams()))
        if stream and phase != "waiting":  # (no byte while waiting)
            await response.until(lambda response: b"\r\n\r\n" in response.received)
        await response.stream.aclose()
        info = await rig.watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        assert (info.admitted_at is None) is (phase == "waiting")
        if holder is not None:
            assert rig.manager.stats().active == 1  # the holder's slot only
            await holder.stream.aclose()
        await rig.until(lambda: rig.upstream.stats().open == 0)
        stats = rig.upstream.stats()
        assert (stats.opened, stats.client_left) == (1, 1)  # the waiter never reached it
        closes = 2 if holder is not None else 1
        assert rig.reasons() == Counter({CloseReason.CLIENT_DISCONNECTED: closes})


async def test_a_client_that_leaves_while_keep_alives_wait_for_the_first_token() -> None:
    # The first token is slow: keep-alives flow, and a client leaving is noticed there.
    async with open_rig(**EARLY) as rig:
        response = await rig.post(chat(first_token_latency=30.0))
        await response.until(lambda response: response.received.count(KEEP_ALIVE) >= 2)
        (info,) = rig.manager.streams()
        assert info.phase is Phase.FIRST_ITEM
        await response.stream.aclose()
        closed = await rig.watcher.next_close()
        assert closed.close_reason is CloseReason.CLIENT_DISCONNECTED
        await rig.until(lambda: rig.upstream.stats().client_left == 1)
        assert rig.reasons() == Counter({CloseReason.CLIENT_DISCONNECTED: 1})


async def test_a_slow_first_token_is_preceded_by_keep_alives_then_arrives_intact() -> None:
    async with open_rig(**EARLY) as rig:
        body = chat(tokens=5, first_token_latency=0.4)
        response = await finish(await rig.post(body))
        assert response.body.count(KEEP_ALIVE) >= 2
        assert_intact(rig, body, response)
        assert rig.reasons() == Counter({CloseReason.COMPLETED: 1})


# -- clients that read slowly, stop reading, never read ------------------------------------


async def test_a_slow_reader_gets_every_byte() -> None:
    async with open_rig() as rig:
        body = chat(tokens=400, token_latency=0, first_token_latency=0)
        response = await rig.post(body, receive_buffer=4096)
        with trio.fail_after(PATIENCE * 2):
            while not is_complete(response):
                data = await response.stream.receive_some(512)
                assert data, "closed early"
                response.received += data
                await trio.sleep(0.0005)  # pacing the reader, not waiting for anything
        await response.stream.aclose()
        assert_intact(rig, body, response)
        assert rig.reasons() == Counter({CloseReason.COMPLETED: 1})


@pytest.mark.parametrize("reads_first", [True, False], ids=["stops_reading", "never_reads"])
async def test_a_client_that_stops_reading_is_cut_off_as_stalled(reads_first: bool) -> None:
    async with open_rig(stall_timeout=0.2) as rig:
        response = await rig.post(chat(**FLOOD), receive_buffer=4096)
        if reads_first:
            await response.until(has_content)
        info = await rig.watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_STALLED
        assert rig.manager.stats().active == 0  # the slot went while the socket is open
        await read_until_closed(response.stream)  # and the gateway closed the connection
        await rig.until(lambda: rig.upstream.stats().client_left == 1)
        assert rig.reasons() == Counter({CloseReason.CLIENT_STALLED: 1})


async def test_a_stalled_client_under_a_reader_timeout_frees_its_slot() -> None:
    # No stall_timeout: the manager's reader_timeout ends the stream while the
    # response is parked in hypercorn's shielded write.
    options = {"reader_timeout": 0.2}
    async with open_rig(manager_options=options, stall_timeout=None) as rig:
        response = await rig.post(chat(**FLOOD), receive_buffer=4096)
        info = await rig.watcher.next_close()
        assert info.close_reason is CloseReason.READER_TIMEOUT
        assert rig.manager.stats().active == 0
        await rig.until(lambda: rig.upstream.stats().client_left == 1)
        await response.stream.aclose()  # the write parked until send_timeout ends now
        assert rig.reasons() == Counter({CloseReason.READER_TIMEOUT: 1})


async def test_many_connections_opened_and_abandoned_at_once() -> None:
    count = 60
    options = {"max_streams": 10, "acquire_timeout": 30.0}
    async with open_rig(manager_options=options, **QUEUED) as rig:
        whole = json.dumps(chat(first_token_latency=30.0)).encode()  # in flight, cheaply
        responses: list[RawResponse] = []
        bare: list[trio.SocketStream] = []
        for index in range(count):
            kind = index % 3
            if kind == 0:  # a whole request
                responses.append(await rig.post(whole))
            elif kind == 1:  # half a request
                stream = await trio.open_tcp_stream("127.0.0.1", rig.port)
                await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n")
                bare.append(stream)
            else:  # a connection and nothing else
                bare.append(await trio.open_tcp_stream("127.0.0.1", rig.port))
        await rig.until(lambda: len(rig.manager.streams()) == count // 3)
        assert rig.manager.stats().active == 10
        for response in responses:
            await response.stream.aclose()
        for stream in bare:
            await stream.aclose()
        await rig.until(lambda: rig.manager.stats().closed_total == count // 3)
        assert rig.reasons() == Counter({CloseReason.CLIENT_DISCONNECTED: count // 3})
        assert rig.upstream.stats().opened <= 10 + count // 3


# -- the upstream fails, seen through the gateway -------------------------------------------


@pytest.mark.parametrize(
    ("simulate", "stream", "status", "error_type", "retry_after"),
    [
        ({"fault": "http_error", "status": 400}, True, 400, "invalid_request_error", None),
        ({"fault": "http_error", "status": 400}, False, 400, "invalid_request_error", None),
        ({"fault": "http_error", "status": 404}, False, 404, "invalid_request_error", None),
        ({"fault": "http_error", "status": 503}, True, 502, "upstream_error", None),
        ({"fault": "http_error", "status": 500}, False, 502, "upstream_error", None),
        ({"fault": "rate_limited", "retry_after": 7}, True, 429, "rate_limit_exceeded", "7"),
        ({"fault": "rate_limited", "retry_after": 7}, False, 429, "rate_limit_exceeded", "7"),
        ({"fault": "stall_before_first_byte"}, False, 504, "upstream_error", None),
    ],
    ids=[
        "400_stream",
        "400_stream_false",
        "404_stream_false",
        "503_stream",
        "500_stream_false",
        "429_stream",
        "429_stream_false",
        "stall_before_first_byte_stream_false",
    ],
)
async def test_an_upstream_error_status_is_passed_on_as_an_openai_error(
    simulate: dict[str, Any],
    stream: bool,
    status: int,
    error_type: str,
    retry_after: str | None,
) -> None:
    timeouts = SourceTimeouts(connect=0.3)
    async with open_rig(upstream_timeouts=timeouts) as rig:
        response = await finish(await rig.post(chat(stream, **simulate)))
        assert response.status == status
        assert response.headers["content-type"] == "application/json"
        error = error_of(response)
        assert set(error) == {"message", "type", "code", "param"}
        assert error["type"] == error_type
        assert response.headers.get("retry-after") == retry_after
        if retry_after is not None:
            assert response.headers["retry-after-ms"] == "7000"
        expected = (
            CloseReason.UPSTREAM_CONNECT_TIMEOUT
            if simulate["fault"] == "stall_before_first_byte"
            else CloseReason.UPSTREAM_ERROR
        )
        assert rig.reasons() == Counter({expected: 1})


@pytest.mark.parametrize(
    ("simulate", "code", "quoted"),
    [
        ({"fault": "drop_mid_stream"}, "upstream_error", "upstream"),
        ({"fault": "stall_mid_stream"}, "upstream_idle_timeout", ""),
        ({"fault": "malformed_chunk"}, "upstream_error", "malformed chunk"),
        ({"fault": "error_in_stream"}, "upstream_error", "fault error_in_stream"),
        ({"fault": "no_done"}, "upstream_truncated", "[DONE]"),
        ({"fault": "no_done", "fault_after": 2}, "upstream_truncated", "[DONE]"),
        ({"fault": "stall_before_first_byte"}, "upstream_connect_timeout", ""),
    ],
    ids=[
        "drop",
        "stall_mid_stream",
        "malformed",
        "error_in_stream",
        "no_done",
        "no_done_early",
        "stall_before_first_byte",
    ],
)
async def test_an_upstream_failure_after_the_headers_ends_in_band(
    simulate: dict[str, Any], code: str, quoted: str
) -> None:
    timeouts = SourceTimeouts(connect=0.3, idle=0.2)
    async with open_rig(upstream_timeouts=timeouts, **EARLY) as rig:
        body = chat(tokens=8, **simulate)
        response = await finish(await rig.post(body))
        error = in_band_error(response)["error"]
        assert error["code"] == code
        assert quoted in error["message"]
        delivered = streamed_text(data_events(unchunked(response.body)[0]))
        assert expected_text(rig.upstream, body).startswith(delivered)
        if simulate["fault"] == "stall_before_first_byte":
            assert has_keep_alive(response)  # the wait for the first byte was not silent
        assert rig.reasons() == Counter({CloseReason(code): 1})


# -- bad input at the edge, with a stream in flight -----------------------------------------


def _request(method: str, path: str, body: bytes, headers: str = "") -> Callable[[Rig], Any]:
    async def send(rig: Rig) -> RawResponse:
        return await raw_request(rig.port, method, path, body, headers=headers)

    return send


async def _raw_bytes(rig: Rig, data: bytes) -> RawResponse:
    stream = await trio.open_tcp_stream("127.0.0.1", rig.port)
    await stream.send_all(data)
    return RawResponse(stream)


async def _huge(rig: Rig) -> RawResponse:
    # Past the gateway's limit (8 MiB): it answers 413 without reading the rest.
    size = 9 * 1024 * 1024
    stream = await trio.open_tcp_stream("127.0.0.1", rig.port)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n"
        f"content-type: application/json\r\ncontent-length: {size}\r\n\r\n"
    )
    await stream.send_all(head.encode())
    with trio.move_on_after(PATIENCE):
        try:
            for _ in range(size // 65536):
                await stream.send_all(b" " * 65536)
        except trio.BrokenResourceError:  # the server answered and closed: as it should
            pass
    return RawResponse(stream)


CHAT = "/v1/chat/completions"
BAD_REQUESTS: dict[str, tuple[Callable[[Rig], Awaitable[RawResponse]], int, str | None]] = {
    "not_json": (_request("POST", CHAT, b'{"model": "sim-small",'), 400, None),
    "not_an_object": (_request("POST", CHAT, b"[1, 2]"), 400, None),
    "model_a_number": (_request("POST", CHAT, b'{"model": 3, "messages": []}'), 400, "model"),
    "messages_a_string": (
        _request("POST", CHAT, b'{"model": "m", "messages": "hi"}'),
        400,
        "messages",
    ),
    "stream_a_string": (
        _request(
            "POST",
            CHAT,
            b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}',
        ),
        400,
        "stream",
    ),
    "huge_body": (_huge, 413, None),
    "unknown_route": (_request("POST", "/v1/embeddings", b"{}"), 404, None),
    "wrong_method": (_request("GET", CHAT, b""), 405, None),
    "bad_content_length": (
        lambda rig: _raw_bytes(
            rig, b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: x\r\n\r\n"
        ),
        400,
        None,
    ),
    "header_without_colon": (
        lambda rig: _raw_bytes(
            rig, b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nno colon here\r\n\r\n"
        ),
        400,
        None,
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
async def test_a_bad_request_is_refused_and_disturbs_nothing(name: str) -> None:
    send, status, param = BAD_REQUESTS[name]
    async with open_rig() as rig:
        body = chat(tokens=200, token_latency=0.002)
        in_flight = await rig.post(body)
        await in_flight.until(has_content)
        bad = await send(rig)
        await bad.until(lambda response: b"\r\n\r\n" in response.received)
        assert bad.status == status
        if name not in ("bad_content_length", "header_without_colon"):  # hypercorn's own
            await bad.until(is_complete)
            error = error_of(bad)
            assert error["param"] == param
            assert error["type"] == "invalid_request_error"
            if status == 404:
                assert error["code"] == "unknown_url"
        await read_until_closed(bad.stream)
        assert_intact(rig, body, await finish(in_flight))
        assert rig.reasons() == Counter({CloseReason.COMPLETED: 1})


BAD_COMMAND_LINES: dict[str, tuple[list[str], dict[str, str], str]] = {
    "flag_negative_count": (["serve", "--max-streams", "-5"], {}, "--max-streams"),
    "flag_bad_seconds": (["serve", "--reader-timeout", "soon"], {}, "--reader-timeout"),
    "env_not_a_number": (["serve"], {"STREAMMGR_MAX_STREAMS": "many"}, "STREAMMGR_MAX_STREAMS"),
    "env_port_out_of_range": (["serve"], {"STREAMMGR_PORT": "99999"}, "STREAMMGR_PORT"),
    "env_negative_timeout": (
        ["serve"],
        {"STREAMMGR_ACQUIRE_TIMEOUT": "-1"},
        "STREAMMGR_ACQUIRE_TIMEOUT",
    ),
    "env_bad_log_format": (["serve"], {"STREAMMGR_LOG_FORMAT": "xml"}, "STREAMMGR_LOG_FORMAT"),
    "env_bad_url": (["serve"], {"STREAMMGR_UPSTREAM_URL": "ftp://x"}, "STREAMMGR_UPSTREAM_URL"),
}


@pytest.mark.parametrize("name", list(BAD_COMMAND_LINES))
async def test_a_bad_flag_or_environment_value_is_one_line_and_disturbs_nothing(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, environment, named = BAD_COMMAND_LINES[name]
    for variable in [variable for variable in os.environ if variable.startswith("STREAMMGR_")]:
        monkeypatch.delenv(variable)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    async with open_rig() as rig:
        body = chat(tokens=200, token_latency=0.002)
        in_flight = await rig.post(body)
        await in_flight.until(has_content)
        # The command line in another thread (it runs its own Trio loop when it starts).
        code = await trio.to_thread.run_sync(main, argv)
        assert_intact(rig, body, await finish(in_flight))
        assert rig.reasons() == Counter({CloseReason.COMPLETED: 1})
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("streammgr: error: ")
    assert named in line or named.removeprefix("STREAMMGR_").lower().replace("_", "-") in line


# -- the operator ------------------------------------------------------------------------------


async def _admin(rig: Rig, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    response = await finish(await raw_request(rig.port, method, f"/admin{path}", data))
    assert response.status == 200, response.received
    return json.loads(unchunked(response.body)[0] if b"chunked" in response.head else response.body)


@pytest.mark.parametrize("phase", ["waiting", "streaming"])
async def test_an_operator_cancel_ends_the_stream_in_band(phase: str) -> None:
    # In band once streaming; a waiting stream has sent nothing: its answer is a 503.
    options = {"max_streams": 1, "acquire_timeout": 30.0}
    async with open_rig(manager_options=options, **QUEUED) as rig:
        holder = await rig.post(chat(**ENDLESS))
        await holder.until(has_content)
        if phase == "waiting":
            response = await rig.post(chat(**ENDLESS))
            await rig.until(lambda: rig.manager.stats().waiting == 1)
            (target,) = [info for info in rig.manager.streams() if info.phase is Phase.WAITING]
        else:
            response = holder
            (target,) = rig.manager.streams()
        answer = await _admin(rig, "DELETE", f"/streams/{target.id}")
        assert answer["cancelled"] is True
        await response.until(is_complete)
        await response.stream.aclose()
        if phase == "waiting":
            assert response.status == 503
            error = error_of(response)
        else:
            error = in_band_error(response)["error"]
        assert (error["type"], error["code"]) == ("stream_cancelled", "cancelled")
        if phase == "waiting":
            await holder.stream.aclose()
            expected = {CloseReason.CANCELLED: 1, CloseReason.CLIENT_DISCONNECTED: 1}
        else:
            expected = {CloseReason.CANCELLED: 1}
        await rig.until(lambda: len(rig.manager.history()) == len(expected))
        assert rig.reasons() == Counter(expected)
        assert rig.upstream.stats().opened == 1


async def test_limits_lowered_and_raised_while_saturated_are_never_exceeded() -> None:
    options = {"max_streams": 4, "acquire_timeout": 30.0}
    async with open_rig(manager_options=options, **QUEUED) as rig:
        overshoots: list[str] = []

        async def sample(task_status: trio.TaskStatus[None]) -> None:
            async with rig.manager.watch() as events:
                task_status.started()
                # Lowering the limit cancels nobody: more may be active than the new
                # limit until they finish. What must never happen is an admission
                # beyond the limit in force.
                async for event in events:
                    if event.kind != "admitted":
                        continue
                    stats = rig.manager.stats()
                    if stats.max_streams is not None and stats.active > stats.max_streams:
                        overshoots.append(f"{stats.active} > {stats.max_streams}")

        async with trio.open_nursery() as nursery:
            await nursery.start(sample)
            gate = trio.Event()
            bodies = [chat(tokens=30, token_latency=0.01, seed=index) for index in range(10)]
            responses = [await rig.post(body) for body in bodies[:6]]
            await rig.until(lambda: rig.manager.stats().waiting == 2)
            assert rig.manager.stats().active == 4
            limits = await _admin(rig, "PUT", "/limits", {"max_streams": 2})
            assert limits["max_streams"] == 2
            assert rig.manager.stats().active == 4  # lowering cancels nobody
            # The waiters wait until fewer than 2 are active: then one at a time.
            await rig.until(lambda: rig.manager.stats().closed_total >= 3)
            assert rig.manager.stats().active <= 2
            responses += [await rig.post(body) for body in bodies[6:]]
            await _admin(rig, "PUT", "/limits", {"max_streams": 8})
            for body, response in zip(bodies, responses, strict=True):
                assert_intact(rig, body, await finish(response))
            gate.set()
            nursery.cancel_scope.cancel()
        assert overshoots == []
        assert rig.upstream.stats().max_open <= 8
        assert rig.reasons() == Counter({CloseReason.COMPLETED: 10})


# -- shutdown -----------------------------------------------------------------------------------


async def test_shutdown_with_streams_in_every_phase_is_prompt_and_told_in_band() -> None:
    grace, close_timeout = 0.2, 1.0
    options = {"max_streams": 3, "acquire_timeout": 30.0}
    timeouts = SourceTimeouts(connect=30.0)
    async with open_rig(
        manager_options=options,
        grace=grace,
        close_timeout=close_timeout,
        upstream_timeouts=timeouts,
        **QUEUED,
    ) as rig:
        streaming = await rig.post(chat(**ENDLESS))
        connecting = await rig.post(chat(fault="stall_before_first_byte"))
        stalled = await rig.post(chat(**FLOOD), receive_buffer=4096)
        await streaming.until(has_content)
        await rig.until(lambda: len(rig.manager.streams()) == 3)
        waiting = await rig.post(chat(**ENDLESS))
        await rig.until(lambda: rig.manager.stats().waiting == 1)
        phases = Counter(info.phase for info in rig.manager.streams())
        assert phases[Phase.WAITING] == 1
        assert phases[Phase.CONNECTING] == 1
        started = trio.current_time()
        rig.stop.set()
        for response in (streaming, connecting, waiting):
            await response.until(is_complete)
            # In band once the headers are out; the waiting stream (and the connecting
            # one: answer_within is long here) had sent nothing: a 503.
            error = (
                in_band_error(response)["error"] if response is streaming else error_of(response)
            )
            assert response.status == (200 if response is streaming else 503)
            assert error["code"] == "shutdown"
            assert "shutting down" in error["message"]
        with trio.fail_after(grace + close_timeout + 2.0):
            await rig.stopped.wait()
        assert trio.current_time() - started < grace + close_timeout + 2.0
        for response in (streaming, connecting, waiting):
            await response.stream.aclose()
        await read_until_closed(stalled.stream)  # cut by the server: it reads nothing
        assert rig.reasons() == Counter({CloseReason.SHUTDOWN: 4})


async def test_a_client_that_leaves_during_the_shutdown_grace() -> None:
    async with open_rig(grace=30.0, close_timeout=1.0) as rig:
        response = await rig.post(chat(**ENDLESS))
        await response.until(has_content)
        rig.stop.set()
        await rig.until(lambda: rig.manager.stats().closing)
        await response.stream.aclose()
        info = await rig.watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        with trio.fail_after(PATIENCE):  # nothing left to wait for: the server stops
            await rig.stopped.wait()
        assert rig.reasons() == Counter({CloseReason.CLIENT_DISCONNECTED: 1})


async def test_shutdown_with_a_stream_false_request_in_flight_answers_503() -> None:
    async with open_rig(grace=0.1, close_timeout=1.0) as rig:
        response = await rig.post(chat(False, **ENDLESS))
        await rig.until(lambda: any(info.items >= 3 for info in rig.manager.streams()))
        rig.stop.set()
        await finish(response)
        assert response.status == 503
        error = error_of(response)
        assert (error["type"], error["code"]) == ("stream_cancelled", "shutdown")
        with trio.fail_after(PATIENCE):
            await rig.stopped.wait()
        assert rig.reasons() == Counter({CloseReason.SHUTDOWN: 1})


# -- sockets: an upstream request cancelled after connecting, a client gone before its request


async def test_a_request_cancelled_right_after_it_connected_leaves_no_pooled_connection(
    nursery: trio.Nursery,
) -> None:
    # httpcore 1.0.9 (encode/httpcore#1093): a request cancelled after the pool gave it a
    # new connection, before it used it, leaves that connection in the pool for ever:
    # never idle, never closed, owned by no request. Each one held a socket and a pool
    # slot; max_connections of them and every upstream request waited for the pool.
    upstream = SimulatedUpstream(first_token_latency=0, token_latency=0)
    stop = trio.Event()
    (url,) = await nursery.start(
        partial(serve, upstream, port=0, shutdown_trigger=stop.wait, config=quiet_hypercorn())
    )
    before = open_fds()
    transport = httpx.AsyncHTTPTransport()
    async with httpx.AsyncClient(transport=transport) as http, StreamManager() as manager:
        stream_ids: list[str] = []
        pool = httpcore.AsyncConnectionPool(
            network_backend=CancelAfterConnect(lambda: manager.cancel(stream_ids[0]))
        )
        transport._pool = pool
        source = SSESource(http, f"{url}/v1/chat/completions", method="POST", json=chat(tokens=3))
        async with manager.open(source) as stream:
            stream_ids.append(stream.id)
            with pytest.raises(streammgr.StreamCancelled):
                async for _ in stream:
                    pass  # pragma: no cover
        assert pool.connections == []
        with contextlib.suppress(trio.TooSlowError):  # the simulator's end closes once it sees ours
            await wait_until(lambda: not new_descriptors(before))
        assert describe(new_descriptors(before)) == []
    stop.set()


@pytest.mark.parametrize(
    "sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"]
)
async def test_a_connection_closed_before_its_request_frees_its_socket_at_once(
    nursery: trio.Nursery, sent: bytes
) -> None:
    # hypercorn 0.18 kept the server's end of such a connection open (CLOSE_WAIT) until
    # keep_alive_timeout: clients that connect and go held a descriptor each.
    config = quiet_hypercorn()
    config.keep_alive_timeout = 600
    stop = trio.Event()
    upstream = SimulatedUpstream()
    (url,) = await nursery.start(
        partial(serve, upstream, port=0, shutdown_trigger=stop.wait, config=config)
    )
    before = open_fds()
    clients = [
        await trio.open_tcp_stream("127.0.0.1", int(url.rpartition(":")[2])) for _ in range(5)
    ]
    for client in clients:
        await client.send_all(sent)
    with contextlib.suppress(trio.TooSlowError):  # the five accepted
        await wait_until(lambda: len(new_descriptors(before)) >= 10)
    for client in clients:
        await client.aclose()
    with contextlib.suppress(trio.TooSlowError):
        await wait_until(lambda: not new_descriptors(before))
    assert describe(new_descriptors(before)) == []
    assert upstream.stats().opened == 0
    stop.set()
