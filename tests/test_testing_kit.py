"""streammgr.testing: the leak finder, the tracking transport, the fd baseline, the
simulated provider, the stress helper and the pytest plugin each catch what they
claim to catch (and stay quiet when nothing is wrong)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

import streammgr
import streammgr.testing
from streammgr import CloseReason, FairLimiter, Permit, StreamManager
from streammgr.sources import collect_chat
from streammgr.testing import (
    FdBaseline,
    LeakError,
    SimulatedProvider,
    StressAction,
    StressError,
    TrackingTransport,
    checked_manager,
    find_leaks,
    simulated_client,
    stress,
)


async def endless() -> AsyncIterator[int]:
    while True:
        await trio.sleep(1)
        yield 1


async def three() -> AsyncIterator[int]:
    for index in range(3):
        await trio.sleep(0.1)
        yield index


def test_every_public_name_is_documented() -> None:
    module = streammgr.testing
    assert module.__all__
    for name in module.__all__:
        value = getattr(module, name)
        assert inspect.getdoc(value), name
        if inspect.isclass(value):
            for attribute, member in vars(value).items():
                if not attribute.startswith("_") and callable(member):
                    assert inspect.getdoc(member), f"{name}.{attribute}"


# -- find_leaks / checked_manager ----------------------------------------------------


async def test_a_clean_run_reports_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with checked_manager(max_streams=2) as manager:
        async with manager.open(three) as stream:
            assert [item async for item in stream] == [0, 1, 2]
        assert find_leaks(manager) == []
    assert find_leaks(manager) == []


async def test_a_stream_left_open_fails_with_its_id_key_phase_labels_and_age(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended: list[BaseException] = []

    async def forgetful_endpoint(manager: StreamManager) -> None:
        try:
            async with manager.open(endless, key="tenant-a", labels={"route": "/chat"}) as stream:
                async for _ in stream:
                    pass
        except streammgr.StreamCancelled as exc:
            ended.append(exc)

    async with trio.open_nursery() as nursery:
        with pytest.raises(LeakError) as caught:
            async with checked_manager() as manager:
                nursery.start_soon(forgetful_endpoint, manager)
                await trio.sleep(2.5)
    assert sorted(leak.kind for leak in caught.value.leaks) == ["slot", "stream"]
    [leak] = [leak for leak in caught.value.leaks if leak.kind == "stream"]
    assert leak.key == "tenant-a"
    assert leak.labels == {"route": "/chat"}
    assert leak.phase == "streaming"
    assert leak.age == pytest.approx(2.5)
    message = str(caught.value)
    assert "2 leaks at the end of checked_manager" in message
    for part in (leak.stream_id, "key='tenant-a'", "phase=streaming", "/chat", "age=2.500s"):
        assert part is not None
        assert part in message
    # Shutdown still ended it; the report came first.
    [error] = ended
    assert isinstance(error, streammgr.StreamCancelled)
    assert error.close_reason is CloseReason.SHUTDOWN


async def test_a_waiting_caller_is_a_stream_and_a_waiter_leak(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def holder(manager: StreamManager, task_status: trio.TaskStatus[None]) -> None:
        async with manager.open(endless) as stream:
            task_status.started()
            async for _ in stream:
                pass

    async def waiter(manager: StreamManager) -> None:
        async with manager.open(endless):
            pass

    async with trio.open_nursery() as nursery:
        with pytest.raises(LeakError) as caught:
            async with checked_manager(max_streams=1) as manager:
                await nursery.start(_quiet, holder, manager)
                nursery.start_soon(_quiet, waiter, manager)
                await trio.testing.wait_all_tasks_blocked()
    kinds = sorted(leak.kind for leak in caught.value.leaks)
    assert kinds == ["slot", "stream", "stream", "waiter"]
    phases = sorted(str(leak.phase) for leak in caught.value.leaks if leak.kind == "stream")
    assert phases == ["connecting", "waiting"]  # endless has not yielded yet


async def _quiet(function: object, *args: object, task_status: object = None) -> None:
    """Run a reader that shutdown will cancel; its StreamCancelled is expected."""
    try:
        if task_status is None:
            await function(*args)  # type: ignore[operator]
        else:
            await function(*args, task_status=task_status)  # type: ignore[operator]
    except streammgr.StreamCancelled:
        pass


class ForgetfulLimiter(FairLimiter):
    """A limiter whose release forgets to give the slot back."""

    def release(self, permit: Permit) -> None:
        permit.released = True


async def test_a_slot_the_limiter_never_got_back_is_reported() -> None:
    with pytest.raises(LeakError, match=r"\[slot\] limiter still counts 1 active slot") as caught:
        async with checked_manager(limiter=ForgetfulLimiter(max_streams=3)) as manager:
            async with manager.open(three) as stream:
                async for _ in stream:
                    pass
    assert [leak.kind for leak in caught.value.leaks] == ["slot"]  # reported once


async def test_a_stray_task_in_the_nursery_and_a_watchdog_entry_are_reported() -> None:
    async with StreamManager() as manager:
        nursery = manager._runner.nursery
        assert nursery is not None
        nursery.start_soon(trio.sleep_forever, name="stray")
        await trio.testing.wait_all_tasks_blocked()
        async with manager.open(three) as stream:
            record = stream._record
            async for _ in stream:
                pass
        manager._runner.watchdog._heap.append([math.inf, -1, record])  # a forgotten entry
        leaks = find_leaks(manager)
        assert sorted(leak.kind for leak in leaks) == ["task", "watchdog"]
        assert "'stray'" in str(leaks[0]) + str(leaks[1])
        manager._runner.watchdog._heap.clear()
        nursery.cancel_scope.cancel()


async def test_an_open_change_feed_is_reported() -> None:
    async with StreamManager() as manager, manager.watch():
        assert [leak.kind for leak in find_leaks(manager)] == ["watcher"]


async def test_the_blocks_own_error_wins_with_the_leaks_as_a_note(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(ZeroDivisionError) as caught:
        async with checked_manager(limiter=ForgetfulLimiter()) as manager:
            async with manager.open(three) as stream:
                async for _ in stream:
                    pass
            raise ZeroDivisionError
    assert any("[slot]" in note for note in caught.value.__notes__)


# -- TrackingTransport ---------------------------------------------------------------


class Body(httpx.AsyncByteStream):
    """A streaming body (a ``content=`` body is read and closed by httpx at once)."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def sse_handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=Body(b"data: one\n\n", b"data: two\n\n"),
    )


async def test_a_preloaded_mock_response_counts_as_closed_once() -> None:
    transport = TrackingTransport(httpx.MockTransport(lambda request: httpx.Response(200)))
    async with httpx.AsyncClient(transport=transport) as http:
        await http.get("http://upstream.test/")
    [response] = transport.responses
    assert (response.closes, response.preloaded) == (1, True)
    transport.check()


async def test_tracking_counts_each_response_closed_once() -> None:
    transport = TrackingTransport(httpx.MockTransport(sse_handler))
    async with httpx.AsyncClient(transport=transport) as http:
        async with checked_manager(transports=[transport]) as manager:
            source = streammgr.sources.SSESource(http, "http://upstream.test/events")
            async with manager.open(source) as stream:
                assert [event.data async for event in stream] == ["one", "two"]
    assert (transport.opened, transport.closed, transport.open_responses) == (1, 1, [])
    transport.check()


async def test_tracking_reports_a_response_never_closed_and_one_closed_twice() -> None:
    transport = TrackingTransport(httpx.MockTransport(sse_handler))
    async with httpx.AsyncClient(transport=transport) as http:
        forgotten = await http.send(
            http.build_request("GET", "http://upstream.test/a"), stream=True
        )
        twice = await http.send(http.build_request("GET", "http://upstream.test/b"), stream=True)
        await twice.aclose()
        assert isinstance(twice.stream, httpx.AsyncByteStream)
        await twice.stream.aclose()  # behind httpx's back: a second close
        [left] = transport.open_responses
        assert left.url == "http://upstream.test/a"
        assert [response.url for response in transport.closed_twice] == ["http://upstream.test/b"]
        with pytest.raises(LeakError) as caught:
            transport.check()
        message = str(caught.value)
        assert "2 leaks in upstream responses" in message
        assert "response #1 200 to GET http://upstream.test/a never closed" in message
        assert "response #2 200 to GET http://upstream.test/b closed 2 times" in message
        await forgotten.aclose()
    assert transport.open_responses == []


async def test_tracking_leaves_credentials_out_of_its_report() -> None:
    transport = TrackingTransport(httpx.MockTransport(sse_handler))
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.send(
            http.build_request("GET", "http://user:hunter2@upstream.test/x?token=sk-secret"),
            stream=True,
        )
        text = str(transport.leaks()) + repr(transport)
        await response.aclose()
    assert "hunter2" not in text
    assert "sk-secret" not in text


def test_the_simulated_provider_names_the_faults() -> None:
    provider = SimulatedProvider()
    http = httpx.AsyncClient()
    with pytest.raises(ValueError, match="fault must be None or one of http_error, rate_limited"):
        provider.chat(http, fault="explode")


def test_tracking_refuses_what_is_not_an_async_transport() -> None:
    with pytest.raises(TypeError, match=r"inner must be an httpx\.AsyncBaseTransport"):
        TrackingTransport(httpx.HTTPTransport())  # type: ignore[arg-type]


# -- FdBaseline ------------------------------------------------------------------------


def test_fd_baseline_catches_an_open_file(tmp_path: Path) -> None:
    baseline = FdBaseline.take()
    if not baseline.supported:
        pytest.skip("no /proc/self/fd on this platform")
    assert baseline.leaks() == []
    with (tmp_path / "held").open("w") as held:
        [leak] = baseline.leaks()
        assert leak.kind == "fd"
        assert str(tmp_path / "held") in leak.what
        with pytest.raises(LeakError, match="in file descriptors"):
            baseline.check()
    assert held.closed
    baseline.check()


def test_fd_baseline_is_skipped_where_unsupported() -> None:
    baseline = FdBaseline(None)
    assert not baseline.supported
    assert baseline.leaks() == []
    baseline.check()


# -- the simulated provider ------------------------------------------------------------


async def test_the_simulated_provider_streams_and_checks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    async with provider.client() as http, checked_manager() as manager:
        async with manager.open(provider.chat(http, tokens=4)) as stream:
            answer = await collect_chat(stream)
        assert len(answer.text.split()) == 4
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            async with manager.open(provider.chat(http, fault="http_error", status=503)) as stream:
                await collect_chat(stream)
        assert caught.value.status_code == 503
    stats = provider.upstream.stats()
    assert (stats.open, stats.completed, stats.faulted) == (0, 1, 1)
    provider.check()


async def test_the_simulated_provider_reports_an_unclosed_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    http, transport = simulated_client()
    async with http:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        response = await http.send(http.build_request("POST", "/chat/completions", json=body),
                                   stream=True)  # fmt: skip
        with pytest.raises(LeakError, match="never closed"):
            transport.check()
        await response.aclose()
    transport.check()


# -- stress --------------------------------------------------------------------------


async def test_stress_runs_every_action_and_keeps_every_invariant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with checked_manager(max_streams=5, max_streams_per_key=2) as manager:
        report = await stress(manager, lambda number: three, streams=200, seed=7, max_items=2)
    assert report.violations == ()
    assert report.streams == 200
    assert set(report.actions) == {str(action) for action in StressAction}
    assert sum(report.close_reasons.values()) == 200
    for reason in ("completed", "reader_exit", "cancelled", "reader_timeout", "rejected"):
        assert report.close_reasons.get(reason, 0) > 0, (reason, report)
    assert report.max_active == 5
    stats = manager.stats()
    assert stats.closed_total == 200
    assert {reason: count for reason, count in stats.closed_by_reason.items() if count} == (
        report.close_reasons
    )


async def test_stress_repeats_itself_for_a_seed(autojump_clock: trio.testing.MockClock) -> None:
    reports = []
    for _ in range(2):
        async with checked_manager(max_streams=3) as manager:
            reports.append(await stress(manager, lambda number: three, streams=60, seed=11))
    assert reports[0].actions == reports[1].actions
    assert reports[0].streams == reports[1].streams


class OverAdmittingLimiter(FairLimiter):
    """A broken limiter: it reports max_streams=2 and admits everyone."""

    def __init__(self) -> None:
        super().__init__()

    def snapshot(self) -> streammgr.LimiterSnapshot:
        return dataclasses.replace(super().snapshot(), max_streams=2)


async def test_stress_catches_a_limit_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    async with checked_manager(limiter=OverAdmittingLimiter()) as manager:
        with pytest.raises(StressError, match="slots held, above max_streams=2") as caught:
            await stress(
                manager, lambda number: three, streams=10, actions={StressAction.READ_ALL: 1}
            )
    assert caught.value.report.max_active > 2


async def test_stress_accepts_the_producers_own_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    faults = [None, "drop_mid_stream", "error_in_stream", "no_done", "http_error"]
    async with provider.client() as http, checked_manager(max_streams=4) as manager:

        def producer(number: int) -> streammgr.sources.OpenAIChat:
            fault = faults[number % len(faults)]
            if fault in ("drop_mid_stream", "error_in_stream", "no_done"):
                return provider.chat(http, tokens=4, fault=fault, fault_after=2)
            return provider.chat(http, tokens=4, fault=fault)

        report = await stress(manager, producer, streams=50, seed=3)
    provider.check()
    assert report.close_reasons.get("upstream_error", 0) > 0
    assert report.close_reasons.get("upstream_truncated", 0) > 0


async def test_stress_refuses_bad_arguments() -> None:
    async with StreamManager() as manager:
        with pytest.raises(ValueError, match="streams and keys must be at least 1"):
            await stress(manager, lambda number: three, streams=0)
        with pytest.raises(ValueError, match="actions must give some action a positive weight"):
            await stress(manager, lambda number: three, actions={})


# -- the pytest plugin ---------------------------------------------------------------

PLUGIN_TESTS = """
import httpx
import pytest
import trio

import streammgr
from streammgr.sources import collect_chat


async def endless():
    while True:
        await trio.sleep(1)
        yield 1


async def test_untouched():
    pass


@pytest.mark.streammgr(max_streams=1)
async def test_configured(stream_manager, autojump_clock):
    assert stream_manager.stats().max_streams == 1


async def test_simulated(stream_manager, simulated_upstream, autojump_clock):
    async with simulated_upstream.client() as http:
        async with stream_manager.open(simulated_upstream.chat(http, tokens=3)) as stream:
            assert (await collect_chat(stream)).finish_reason == "stop"


class Body(httpx.AsyncByteStream):
    async def __aiter__(self):
        yield b"hello"


async def test_leaves_a_response_open(track_transport):
    mock = httpx.MockTransport(lambda request: httpx.Response(200, stream=Body()))
    transport = track_transport(mock)
    async with httpx.AsyncClient(transport=transport) as http:
        await http.send(http.build_request("GET", "http://upstream.test/forgotten"), stream=True)


def test_leaves_a_file_open(fd_baseline, tmp_path):
    test_leaves_a_file_open.held = (tmp_path / "held").open("w")


async def test_leaks_a_stream(stream_manager, autojump_clock):
    async def reader():
        try:
            async with stream_manager.open(endless, key="leaky") as stream:
                async for _ in stream:
                    pass
        except streammgr.StreamCancelled:
            pass  # shutdown, after the report

    stream_manager._runner.nursery.start_soon(reader)
    await trio.sleep(1.5)
"""


def test_the_plugin_provides_checked_fixtures_and_leaves_other_tests_alone(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntrio_mode = true\naddopts = --strict-markers -p no:cacheprovider\n"
        "filterwarnings = error\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-q", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    out = result.stdout
    assert "PASSED test_user.py::test_untouched" in out, out
    assert "PASSED test_user.py::test_configured" in out, out
    assert "PASSED test_user.py::test_simulated" in out, out
    assert "FAILED test_user.py::test_leaks_a_stream" in out, out
    assert "LeakError" in out
    assert "key='leaky'" in out
    assert "ERROR test_user.py::test_leaves_a_response_open" in out, out
    assert "GET http://upstream.test/forgotten never closed" in out
    if FdBaseline.take().supported:
        assert "ERROR test_user.py::test_leaves_a_file_open" in out, out
        assert "held opened and not closed" in out


# -- checked_manager: no false negatives, no false alarms ----------------------------------


async def _chunks() -> AsyncIterator[bytes]:
    yield b"data: hi\n\n"


def _streaming(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/moved":
        return httpx.Response(302, headers={"location": "/v1/x"}, stream=_Body())
    return httpx.Response(200, stream=_Body())


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: hi\n\n"


async def test_a_stream_opened_and_never_entered_holds_nothing() -> None:
    # Not a false negative: open() registers nothing until the stream is entered.
    async with checked_manager() as manager:
        manager.open(_chunks, key="forgotten")
        assert manager.streams() == []


async def test_checked_manager_catches_a_watcher_left_open_by_a_background_task(
    nursery: trio.Nursery,
) -> None:
    with pytest.raises(LeakError) as caught:
        async with checked_manager() as manager:

            async def watch(task_status: trio.TaskStatus[None]) -> None:
                async with manager.watch() as events:
                    task_status.started()
                    async for _ in events:
                        pass

            await nursery.start(watch)
    assert [leak.kind for leak in caught.value.leaks] == ["watcher"]


async def test_checked_manager_catches_an_unclosed_response_and_spares_httpxs_own_closes() -> None:
    transport = TrackingTransport(httpx.MockTransport(_streaming))
    async with httpx.AsyncClient(transport=transport, base_url="http://up.local") as client:
        # httpx reads and closes these itself: no false alarm.
        async with checked_manager(transports=[transport]):
            assert (await client.get("/v1/x")).text == "data: hi\n\n"
            assert (await client.get("/moved", follow_redirects=True)).status_code == 200
            async with client.stream("GET", "/v1/x"):
                pass  # never read: the context manager still closes it
        assert transport.opened == 4
        # A streamed response never closed is found.
        with pytest.raises(LeakError) as caught:
            async with checked_manager(transports=[transport]):
                request = client.build_request("GET", "/v1/x")
                leaked = await client.send(request, stream=True)
        assert [leak.kind for leak in caught.value.leaks] == ["response"]
        await leaked.aclose()


async def test_checked_manager_catches_a_leaked_socket() -> None:
    with pytest.raises(LeakError) as caught:
        async with checked_manager(fds=True):
            leaked = socket.socket()
    leaked.close()
    assert [leak.kind for leak in caught.value.leaks] == ["fd"]
    assert "socket:" in caught.value.leaks[0].what
