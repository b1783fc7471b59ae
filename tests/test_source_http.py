"""SSESource against httpx.MockTransport: parsing, checks, reconnect, timeouts, closing."""

from __future__ import annotations

import base64
import gc
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing

import httpx
import pytest
import trio
import trio.testing

import streammgr
from streammgr import CloseReason, Phase, StreamManager
from streammgr.sources import Reconnect, SourceTimeouts, SSESource
from streammgr.sse import ServerSentEvent, SSEParser

from .secret_helpers import assert_no_fragment, recorded_text

API_KEY = "sk-test-secret-0123456789"
SSE = {"content-type": "text/event-stream"}


class Body(httpx.AsyncByteStream):
    """A response body of chunks; ``None`` in the script blocks forever, an
    exception is raised, a float sleeps. Records whether it was closed."""

    def __init__(self, upstream: Upstream, script: Sequence[object]) -> None:
        self.upstream = upstream
        self.script = script

    async def __aiter__(self) -> AsyncIterator[bytes]:
        closed = self.upstream.closed
        for step in self.script:
            if self.upstream.closed != closed:
                raise httpx.StreamClosed()  # like a real body read after its close
            if step is None:
                await trio.sleep_forever()
            elif isinstance(step, float | int):
                await trio.sleep(step)
            elif isinstance(step, BaseException):
                raise step
            else:
                assert isinstance(step, bytes)
                await trio.lowlevel.checkpoint()  # a real socket read is a checkpoint
                yield step

    async def aclose(self) -> None:
        self.upstream.closed += 1


class Upstream:
    """A scripted upstream: one response per request, from a list of handlers."""

    def __init__(self, *responses: Callable[[httpx.Request], Awaitable[httpx.Response]]) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self.opened = 0
        self.closed = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(trio.current_time())
        handler = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        return await handler(request)

    def stream(
        self, *script: object, status: int = 200, headers: dict[str, str] | None = None
    ) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
        async def respond(request: httpx.Request) -> httpx.Response:
            self.opened += 1
            return httpx.Response(
                status, headers=SSE if headers is None else headers, stream=Body(self, script)
            )

        return respond

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


def fail(error: Exception) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    async def respond(request: httpx.Request) -> httpx.Response:
        raise error

    return respond


async def read_all(manager: StreamManager, source: object) -> list[ServerSentEvent]:
    try:
        async with manager.open(source) as stream:  # type: ignore[call-overload]
            return [event async for event in stream]
    finally:
        # Any body generator left suspended would now be collected while Trio runs,
        # and Trio's ResourceWarning would fail the test (filterwarnings = error).
        gc.collect()


async def test_events_split_across_chunks(autojump_clock: trio.abc.Clock) -> None:
    body = b'data: {"a": 1}\n\nid: 7\nevent: tick\ndata: x\ndata: y\n\n: keep-alive\n\n'
    upstream = Upstream()
    upstream.responses.append(upstream.stream(*[body[i : i + 3] for i in range(0, len(body), 3)]))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://upstream/feed")
        async with manager.open(source) as stream:
            events = [event async for event in stream]
        assert events == [
            ServerSentEvent(data='{"a": 1}'),
            ServerSentEvent(event="tick", data="x\ny", id="7"),
        ]
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.COMPLETED
        assert (info.items, info.bytes) == (2, len(body))
    assert upstream.requests[0].headers["accept"] == "text/event-stream"
    assert (upstream.opened, upstream.closed) == (1, 1)


async def test_phase_first_item_after_headers(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(5.0, b"data: late\n\n"))
    async with upstream.client() as client, StreamManager() as manager:
        async with manager.open(SSESource(client, "http://upstream/")) as stream:
            await trio.sleep(1)
            assert stream.info().phase is Phase.FIRST_ITEM
            assert [event.data async for event in stream] == ["late"]


async def test_error_status_carries_the_upstreams_message(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(
            b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request"}}',
            status=401,
            headers={"content-type": "application/json"},
        )
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(
            client, "http://upstream/", headers={"authorization": f"Bearer {API_KEY}"}
        )
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
        error = caught.value
        assert error.status_code == 401
        assert "Incorrect API key provided" in str(error)
        assert "check the API key" in str(error)
        assert '"type": "invalid_request"' in error.body
        (info,) = manager.history()
        assert info.close_reason is CloseReason.UPSTREAM_ERROR
        assert "401" in (info.error or "")
    assert (upstream.opened, upstream.closed) == (1, 1)


async def test_wrong_content_type(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(b"<html>login</html>", headers={"content-type": "text/html"})
    )
    async with upstream.client() as client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamProtocolError, match="not text/event-stream"):
            await read_all(manager, SSESource(client, "http://upstream/"))
    assert (upstream.opened, upstream.closed) == (1, 1)


async def test_reconnect_with_last_event_id_and_server_retry(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses += [
        upstream.stream(
            b"retry: 2500\nid: 1\ndata: a\n\n", b"id: 2\ndata: b\n\n", httpx.ReadError("reset")
        ),
        upstream.stream(b"id: 3\ndata: c\n\n"),
    ]
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://upstream/", reconnect=Reconnect(jitter=0))
        received = []
        async with manager.open(source) as stream:
            async for event in stream:
                received.append(event.data)
                if event.data == "c":
                    break
    assert received == ["a", "b", "c"]
    assert "last-event-id" not in upstream.requests[0].headers
    assert upstream.requests[1].headers["last-event-id"] == "2"
    assert upstream.times[1] - upstream.times[0] == pytest.approx(2.5)
    assert upstream.opened == upstream.closed == 2


async def test_backoff_doubles_then_gives_up(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream(fail(httpx.ConnectError("connection refused")))
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(max_attempts=3, initial_delay=1, multiplier=2, jitter=0)
        with pytest.raises(streammgr.UpstreamConnectError, match="connection refused"):
            await read_all(manager, SSESource(client, "http://upstream/", reconnect=policy))
    gaps = [
        later - earlier for earlier, later in zip(upstream.times, upstream.times[1:], strict=False)
    ]
    assert gaps == pytest.approx([1, 2, 4])


async def test_backoff_is_capped_and_jitter_bounded(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream(fail(httpx.ConnectError("refused")))
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(max_attempts=6, initial_delay=1, max_delay=5, jitter=0.5)
        with pytest.raises(streammgr.UpstreamConnectError):
            await read_all(manager, SSESource(client, "http://upstream/", reconnect=policy))
    gaps = [
        later - earlier for earlier, later in zip(upstream.times, upstream.times[1:], strict=False)
    ]
    for gap, base in zip(gaps, [1, 2, 4, 5, 5, 5], strict=True):
        assert base <= gap <= base * 1.5


async def test_no_reconnect_after_204(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(status=204, headers={}))
    async with upstream.client() as client, StreamManager() as manager:
        events = await read_all(manager, SSESource(client, "http://up/", reconnect=Reconnect()))
    assert events == []
    assert len(upstream.requests) == 1
    assert upstream.opened == upstream.closed == 1


async def test_fatal_status_is_not_retried(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"nope", status=403, headers={}))
    async with upstream.client() as client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamStatusError):
            await read_all(manager, SSESource(client, "http://up/", reconnect=Reconnect()))
    assert len(upstream.requests) == 1


async def test_retryable_status_honours_retry_after(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses += [
        upstream.stream(b"busy", status=503, headers={"retry-after": "7"}),
        upstream.stream(b"data: ok\n\n"),
    ]
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=Reconnect(jitter=0))
        async with manager.open(source) as stream:
            assert (await stream.__anext__()).data == "ok"
    assert upstream.times[1] - upstream.times[0] == pytest.approx(7)
    assert upstream.opened == upstream.closed == 2


async def test_clean_end_without_reconnect_completes(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"data: only\n\n"))
    async with upstream.client() as client, StreamManager() as manager:
        assert [e.data for e in await read_all(manager, SSESource(client, "http://up/"))] == [
            "only"
        ]
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("script", "timeouts", "error", "reason", "elapsed"),
    [
        ([None], SourceTimeouts(first_event=10), streammgr.UpstreamFirstEventTimeout,
         CloseReason.UPSTREAM_FIRST_EVENT_TIMEOUT, 10),
        ([b"data: a\n\n", b": ping\n\n", None], SourceTimeouts(idle=4),
         streammgr.UpstreamIdleTimeout, CloseReason.UPSTREAM_IDLE_TIMEOUT, 4),
        ([b"data: a\n\n", 1.0, b"data: b\n\n", 1.0, b"data: c\n\n", None],
         SourceTimeouts(first_event=5, idle=3), streammgr.UpstreamIdleTimeout,
         CloseReason.UPSTREAM_IDLE_TIMEOUT, 5),
        ([b"data: a\n\n", 1.0] * 100, SourceTimeouts(total=5.5),
         streammgr.UpstreamDeadlineExceeded, CloseReason.UPSTREAM_DEADLINE, 5.5),
    ],
)  # fmt: skip
async def test_stream_timeouts(
    autojump_clock: trio.abc.Clock,
    script: list[object],
    timeouts: SourceTimeouts,
    error: type[streammgr.UpstreamTimeout],
    reason: CloseReason,
    elapsed: float,
) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(*script))
    async with upstream.client() as client, StreamManager() as manager:
        start = trio.current_time()
        with pytest.raises(error) as caught:
            await read_all(manager, SSESource(client, "http://up/", timeouts=timeouts))
        assert trio.current_time() - start == pytest.approx(elapsed)
        assert caught.value.timeout > 0
        (info,) = manager.history()
        assert info.close_reason is reason
    assert upstream.opened == upstream.closed == 1


async def test_connect_timeout(autojump_clock: trio.abc.Clock) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    upstream = Upstream(hang)
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", timeouts=SourceTimeouts(connect=3))
        with pytest.raises(streammgr.UpstreamConnectTimeout):
            await read_all(manager, source)
        assert trio.current_time() == pytest.approx(3)
        (info,) = manager.history()
        assert info.close_reason is CloseReason.UPSTREAM_CONNECT_TIMEOUT


async def test_httpx_errors_are_mapped(autojump_clock: trio.abc.Clock) -> None:
    for raised, expected in [
        (httpx.ConnectTimeout("slow"), streammgr.UpstreamConnectTimeout),
        (httpx.ReadTimeout("slow"), streammgr.UpstreamConnectTimeout),
        (httpx.ConnectError("refused"), streammgr.UpstreamConnectError),
        (httpx.RemoteProtocolError("bad"), streammgr.UpstreamConnectError),
    ]:
        upstream = Upstream(fail(raised))
        async with upstream.client() as client, StreamManager() as manager:
            with pytest.raises(expected) as caught:
                await read_all(manager, SSESource(client, "http://up/"))
            assert isinstance(caught.value.__cause__, httpx.HTTPError)
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"data: a\n\n", httpx.ReadTimeout("idle")))
    async with upstream.client() as client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamIdleTimeout):
            await read_all(manager, SSESource(client, "http://up/"))


async def test_oversized_event_is_a_protocol_error(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"data: " + b"x" * 5000 + b"\n\n"))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", max_event_size=1024)
        with pytest.raises(streammgr.UpstreamProtocolError, match="max_event_size"):
            await read_all(manager, source)
    assert upstream.opened == upstream.closed == 1


async def test_response_closed_when_reader_leaves_or_is_cancelled(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(*([b"data: x\n\n", 0.5] * 1000)))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/")
        async with manager.open(source) as stream:
            async for _ in stream:
                break
        assert upstream.closed == 1  # before the block's exit returned
        with pytest.raises(streammgr.StreamCancelled):
            async with manager.open(source) as stream:
                async for _ in stream:
                    manager.cancel(stream.id, reason="operator")
        assert upstream.closed == 2
        with trio.move_on_after(3):
            async with manager.open(source) as stream:
                async for _ in stream:
                    pass
        assert upstream.opened == upstream.closed == 3
        gc.collect()  # no body generator was left suspended (see read_all)


async def test_secrets_never_leak(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(f"bad key {API_KEY} second-secret-value".encode(), status=401, headers={})
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(
            client,
            "http://up/feed?api_key=querysecret1",
            headers={
                "Authorization": f"Bearer {API_KEY}",
                "X-Api-Key": "second-secret-value",
                "Accept": "text/event-stream",
            },
        )
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
        assert "second-secret-value" not in str(caught.value)
        text = " ".join(
            [
                str(caught.value),
                caught.value.body,
                caught.value.url,
                repr(source),
                repr(manager.history()),
            ]
        )
    for secret in (API_KEY, "querysecret1"):
        assert secret not in text
    assert upstream.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_bad_arguments_are_named() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(TypeError, match=r"client must be an httpx\.AsyncClient"):
        SSESource("http://x", "http://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either json= or content="):
        SSESource(client, "http://x", json={}, content=b"")
    with pytest.raises(ValueError, match=r"timeouts\.idle must be a positive"):
        SourceTimeouts(idle=0)
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        Reconnect(max_attempts=0)
    with pytest.raises(ValueError, match="jitter must be between 0 and 1"):
        Reconnect(jitter=2)
    with pytest.raises(ValueError, match="max_event_size"):
        SSESource(client, "http://x", max_event_size=0)
    with pytest.raises(TypeError, match="secrets must be a list of str"):
        SSESource(client, "http://x", secrets="sk-one-key")  # not split into characters
    with pytest.raises(ValueError, match="error_body_limit must be a non-negative int"):
        SSESource(client, "http://x", error_body_limit=-1)


async def test_raw_events_hand_over_the_original_bytes(autojump_clock: trio.abc.Clock) -> None:
    body = (
        b": hello\r\n\r\n"
        b'data: {"x": 1}\r\n\r\n'
        b"event: tick\nid: 9\ndata: a\ndata: b\n\n"
        b": keep-alive\n\n"
        b"data: [DONE]\n\n"
    )
    upstream = Upstream()
    upstream.responses.append(upstream.stream(*[body[i : i + 5] for i in range(0, len(body), 5)]))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/")
        async with manager.open(source.raw_events) as stream:
            pairs = [pair async for pair in stream]
        info = manager.get(stream.id)
        assert info is not None
        assert info.bytes == len(body)
    events = [event for event, _ in pairs]
    assert [event.data for event in events] == ['{"x": 1}', "a\nb", "[DONE]"]
    assert [raw for _, raw in pairs] == [
        b'data: {"x": 1}\r\n\r\n',
        b"event: tick\nid: 9\ndata: a\ndata: b\n\n",
        b"data: [DONE]\n\n",
    ]
    # Forwarded as they are, the bytes give a client the same events.
    assert SSEParser().feed(b"".join(raw for _, raw in pairs)) == events


async def test_time_parked_behind_a_slow_reader_is_not_upstream_idleness(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(*[b"data: x\n\n" for _ in range(5)]))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", timeouts=SourceTimeouts(idle=5))
        count = 0
        async with manager.open(source) as stream:
            async for _ in stream:
                count += 1
                await trio.sleep(6)  # slower than the idle timeout, every time
    assert count == 5


# A body that fails to decode raises inside httpx's aiter_bytes, which ends that
# generator while the aiter_raw under it stays suspended: unless the source closes
# it, Trio finalizes it and warns, which filterwarnings = error turns into a failure.
@pytest.mark.parametrize("reconnect", [None, Reconnect(max_attempts=1)])
async def test_undecodable_body_and_redirect_loops_are_mapped(
    autojump_clock: trio.abc.Clock, reconnect: Reconnect | None
) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(b"data: ", b"not gzip at all", headers={**SSE, "content-encoding": "gzip"})
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=reconnect)
        with pytest.raises(streammgr.UpstreamProtocolError, match="Content-Encoding") as caught:
            await read_all(manager, source)
        assert "gzip" in str(caught.value)
        assert isinstance(caught.value.__cause__, httpx.DecodingError)
    assert len(upstream.requests) == 1  # a corrupt body is not worth another try
    assert upstream.opened == upstream.closed == 1

    async def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": str(request.url)})

    looping = httpx.AsyncClient(transport=httpx.MockTransport(redirect), follow_redirects=True)
    async with looping, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamProtocolError, match="TooManyRedirects"):
            await read_all(manager, SSESource(looping, "http://up/"))


async def test_undecodable_error_body_leaves_no_generator_behind(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(b"\x1f\x8b", b"not gzip", status=500, headers={"content-encoding": "gzip"})
    )
    async with upstream.client() as client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, SSESource(client, "http://up/"))
        assert caught.value.status_code == 500
    assert upstream.opened == upstream.closed == 1


async def test_large_error_body_leaves_no_generator_behind(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(*[b"x" * 1000 for _ in range(20)], status=500, headers={})
    )
    async with upstream.client() as client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, SSESource(client, "http://up/", error_body_limit=2048))
        assert len(caught.value.body) == 2048
    assert upstream.opened == upstream.closed == 1


def test_signed_url_parameters_are_redacted() -> None:
    client = httpx.AsyncClient()
    source = SSESource(
        client,
        "http://up/feed",
        params={"X-Amz-Signature": "abcdef123456", "key": "AIzaSyABCDEF", "q": "visible"},
    )
    assert "abcdef123456" not in repr(source)
    assert "AIzaSyABCDEF" not in source.url
    assert "q=visible" in source.url


# -- secrets: encoded in the URL, at the excerpt's cut, in headers ---------------------------

KEY32 = "kQ7vR2mX9pL4wN8sT1yB6hJ3dF5gZ0cV"  # no credential shape: known, never guessed


async def test_encoded_url_secrets_are_redacted(autojump_clock: trio.abc.Clock) -> None:
    url = (
        "https://user:p%40ss%2Bw0rd@acct.blob.example/c/path%2Fsecret%2B1"
        "?sv=2022-11-02&sig=Ab%2Bcd%2Fef0123%3D&X-Goog-Signature=9f%2F8e7d6c5&key=AIza%2BSyQ"
    )
    decoded = ["p@ss+w0rd", "path/secret+1", "Ab+cd/ef0123=", "9f/8e7d6c5", "AIza+SyQ", "k y/z=42"]
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(
            # The upstream echoes the signature decoded, and the URL as it was sent.
            f"bad signature Ab+cd/ef0123= for {url}".encode(),
            status=403,
            headers={},
        )
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, url, params={"api_key": "k y/z=42"}, secrets=["path/secret+1"])
        assert source.url == (
            "https://user:[REDACTED]@acct.blob.example/c/[REDACTED]?sv=2022-11-02"
            "&sig=[REDACTED]&X-Goog-Signature=[REDACTED]&key=[REDACTED]&api_key=[REDACTED]"
        )
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
        texts = [
            source.url,
            repr(source),
            caught.value.url,
            str(caught.value),
            caught.value.body,
            recorded_text(manager),
        ]
    assert "bad signature [REDACTED] for " in caught.value.body
    for secret in decoded:
        assert_no_fragment(secret.replace("+", "").replace("/", "").replace("=", ""), *texts)
    assert "sig=Ab%2Bcd%2Fef0123%3D" in str(upstream.requests[0].url)  # sent as given


@pytest.mark.parametrize("cut_into", [1, 16, 31])
async def test_a_secret_at_the_body_limit_is_redacted_whole(
    autojump_clock: trio.abc.Clock, cut_into: int
) -> None:
    """The upstream echoes the key so that the 2048-byte limit falls inside it."""
    before = "x" * (2048 - cut_into)
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(f"{before}{KEY32} is not a valid key".encode(), status=401, headers={})
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/v1", headers={"Authorization": f"Bearer {KEY32}"})
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
        history = recorded_text(manager)
    # Redacted first, the text is shorter: the marker fits unless the cut splits it.
    shown = f"{before}[REDACTED] is not a valid key"[:2048]
    assert caught.value.body == (before if cut_into < len("[REDACTED]") else shown)
    assert_no_fragment(KEY32, caught.value.body, str(caught.value), history)


async def test_a_secret_cut_by_the_read_limit_leaves_no_fragment(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Redaction shortens the text below the limit, so the end of what was read
    (the middle of a key) is the end of the excerpt: the key's beginning goes."""
    upstream = Upstream()
    upstream.responses.append(upstream.stream(f"{KEY32} ".encode() * 200, status=401, headers={}))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/v1", secrets=[KEY32])
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
    body = caught.value.body
    assert body.startswith("[REDACTED] [REDACTED] ")
    assert body.replace("[REDACTED]", "").strip() == ""
    assert len(body) <= 2048


@pytest.mark.parametrize(
    "name", ["Session-Id", "X-Signature", "X-Passwd", "X-Goog-Credential", "Proxy-Authorization"]
)
async def test_credential_headers_are_scrubbed(autojump_clock: trio.abc.Clock, name: str) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(f"unknown {name}: {KEY32}".encode(), status=401, headers={})
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/v1", headers={name: KEY32})
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
    assert caught.value.body == f"unknown {name}: [REDACTED]"


async def test_the_password_of_basic_credentials_is_scrubbed(
    autojump_clock: trio.abc.Clock,
) -> None:
    credentials = base64.b64encode(b"alice:hunter2-correct-horse").decode()
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(b"wrong password hunter2-correct-horse for alice", status=401, headers={})
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(
            client, "http://up/v1", headers={"Authorization": f"Basic {credentials}"}
        )
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
    assert caught.value.body == "wrong password [REDACTED] for alice"


def fail_with_cause(
    error: Exception, cause: Exception
) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    async def respond(request: httpx.Request) -> httpx.Response:
        raise error from cause

    return respond


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("connection refused"), streammgr.UpstreamConnectError),
        (httpx.ConnectTimeout("slow"), streammgr.UpstreamConnectTimeout),
        (httpx.ReadTimeout("slow"), streammgr.UpstreamConnectTimeout),
    ],
)
async def test_giving_up_raises_the_last_error_with_its_cause(
    autojump_clock: trio.abc.Clock, raised: httpx.HTTPError, expected: type[Exception]
) -> None:
    root = ConnectionRefusedError(111, "Connection refused")
    upstream = Upstream(fail_with_cause(raised, root))
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(max_attempts=2, jitter=0)
        with pytest.raises(expected) as caught:
            await read_all(manager, SSESource(client, "http://up/", reconnect=policy))
    assert len(upstream.requests) == 3
    assert caught.value.__cause__ is raised  # the upstream's own error, not a wrapper
    assert raised.__cause__ is root  # with its chain intact


async def test_giving_up_mid_stream_keeps_the_cause(autojump_clock: trio.abc.Clock) -> None:
    broken = httpx.ReadError("connection reset by peer")
    upstream = Upstream()
    upstream.responses.append(upstream.stream(broken))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=Reconnect(max_attempts=1, jitter=0))
        with pytest.raises(streammgr.UpstreamConnectError, match="broke mid-stream") as caught:
            await read_all(manager, source)
    assert caught.value.__cause__ is broken
    assert upstream.opened == upstream.closed == 2


async def test_no_time_left_to_reconnect_names_the_last_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    refused = httpx.ConnectError("connection refused")
    upstream = Upstream(fail(refused))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(
            client,
            "http://up/",
            timeouts=SourceTimeouts(total=2),
            reconnect=Reconnect(initial_delay=1, jitter=0),
        )
        with pytest.raises(streammgr.UpstreamDeadlineExceeded) as caught:
            await read_all(manager, source)
    assert isinstance(caught.value.__cause__, streammgr.UpstreamConnectError)
    assert caught.value.__cause__.__cause__ is refused


async def test_a_reconnect_storm_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    # retry: 0 and one event per connection used to reset the attempt count with no
    # delay at all: a tight loop of reconnections that max_attempts never ended.
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"retry: 0\n\ndata: x\n\n"))
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(max_attempts=3, jitter=0)
        source = SSESource(client, "http://up/", reconnect=policy)
        received = 0
        with pytest.raises(streammgr.UpstreamConnectError, match="healthy_after") as caught:
            async with manager.open(source) as stream:
                async for _ in stream:
                    received += 1
                    if received > 20:
                        break  # a storm: pytest.raises fails
        (info,) = manager.history()
        assert info.close_reason is CloseReason.UPSTREAM_ERROR
    assert "gave up after 3 reconnections" in str(caught.value)
    assert (len(upstream.requests), received) == (4, 4)
    gaps = [later - earlier for earlier, later in itertools.pairwise(upstream.times)]
    # The floor under the server's retry: 0, doubled per attempt in a row.
    assert gaps == pytest.approx([policy.min_delay, 2 * policy.min_delay, 4 * policy.min_delay])
    assert upstream.opened == upstream.closed == 4


async def test_a_connection_that_stayed_up_resets_the_attempt_count(
    autojump_clock: trio.abc.Clock,
) -> None:
    # One event, then up for healthy_after seconds, then a drop: a healthy connection
    # each time, so even max_attempts=1 reconnects as long as the upstream does this.
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"data: x\n\n", 6.0, httpx.ReadError("reset")))
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(max_attempts=1, initial_delay=1, healthy_after=6, jitter=0)
        source = SSESource(client, "http://up/", reconnect=policy)
        received = 0
        async with manager.open(source) as stream:
            async for _ in stream:
                received += 1
                if received == 10:
                    break
    assert len(upstream.requests) == 10
    gaps = [later - earlier for earlier, later in itertools.pairwise(upstream.times)]
    assert gaps == pytest.approx([7.0] * 9)  # 6 s up, then initial_delay, never doubled


async def test_a_connection_that_dropped_too_soon_does_not_reset_the_count(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"data: x\n\n", 4.0, httpx.ReadError("reset")))
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(max_attempts=2, initial_delay=1, healthy_after=5, jitter=0)
        source = SSESource(client, "http://up/", reconnect=policy)
        with pytest.raises(streammgr.UpstreamConnectError, match="reset") as caught:
            await read_all(manager, source)
    assert isinstance(caught.value.__cause__, httpx.ReadError)
    gaps = [later - earlier for earlier, later in itertools.pairwise(upstream.times)]
    assert gaps == pytest.approx([4 + 1, 4 + 2])


async def test_retry_after_above_max_delay_gives_up_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(b"overloaded", status=503, headers={"retry-after": "3000"})
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=Reconnect(max_delay=30))
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            await read_all(manager, source)
    assert len(upstream.requests) == 1
    assert trio.current_time() == 0  # no 3,000 s wait, and no early retry either
    error = caught.value
    assert (error.status_code, error.retry_after, error.body) == (503, 3000, "overloaded")
    message = str(error)
    assert "3000s" in message
    assert "max_delay" in message
    assert "overloaded" in message


async def test_retry_after_zero_waits_min_delay(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses += [
        upstream.stream(b"busy", status=429, headers={"retry-after": "0"}),
        upstream.stream(b"data: ok\n\n"),
    ]
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(min_delay=0.25, initial_delay=1, jitter=0)
        source = SSESource(client, "http://up/", reconnect=policy)
        async with manager.open(source) as stream:
            assert (await stream.__anext__()).data == "ok"
    assert upstream.times[1] - upstream.times[0] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"min_delay": 0}, ValueError, "min_delay must be a positive"),
        ({"min_delay": None}, TypeError, "min_delay must be a number of seconds, got None"),
        ({"min_delay": 2, "initial_delay": 1}, ValueError, "initial_delay .* below min_delay"),
        ({"min_delay": 40, "initial_delay": 50}, ValueError, "min_delay .* above max_delay"),
        ({"healthy_after": 0}, ValueError, "healthy_after must be a positive"),
        ({"initial_delay": None}, TypeError, "initial_delay must be a number of seconds"),
        ({"max_delay": None}, TypeError, "max_delay must be a number of seconds"),
    ],
)
def test_reconnect_delays_are_checked(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Reconnect(**arguments)  # type: ignore[arg-type]


# -- events that travel together: one batch per upstream read ----------------------------


async def test_the_events_of_one_read_reach_the_reader_as_one_batch(
    autojump_clock: trio.abc.Clock,
) -> None:
    reads = [
        b"data: a\n\ndata: b\n\nda",  # two events, and the start of a third
        b"ta: c\n\n",
        b": keep-alive\n\n",  # completes no event: no batch
        b"id: 4\ndata: d\n\ndata: e\n\n",
    ]
    upstream = Upstream()
    upstream.responses.append(upstream.stream(*reads))
    async with upstream.client() as client, StreamManager() as manager:
        async with manager.open(SSESource(client, "http://up/")) as stream:
            batches = [batch async for batch in stream.batches()]
        info = manager.get(stream.id)
    assert [[event.data for event in batch] for batch in batches] == [["a", "b"], ["c"], ["d", "e"]]
    assert batches[2][1] == ServerSentEvent(data="e", id="4")  # the id carries over
    assert info is not None
    assert (info.items, info.bytes) == (5, sum(map(len, reads)))


async def test_a_source_iterated_directly_yields_one_event_at_a_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(b"data: a\n\ndata: b\n\n", b"data: c\n\n"))
    async with upstream.client() as client:
        events = SSESource(client, "http://up/")()
        assert isinstance(events, streammgr.BatchIterator)
        async with aclosing(events):
            assert [event.data async for event in events] == ["a", "b", "c"]
        # Read a batch at a time, as the manager does; mixed with single items.
        events = SSESource(client, "http://up/")()
        async with aclosing(events):
            assert (await events.__anext__()).data == "a"
            assert [event.data for event in await events.anext_batch()] == ["b"]
            assert [event.data for event in await events.anext_batch()] == ["c"]
            with pytest.raises(StopAsyncIteration):
                await events.anext_batch()
    assert upstream.opened == upstream.closed == 2


async def test_raw_events_hand_over_one_batch_per_read(autojump_clock: trio.abc.Clock) -> None:
    reads = [b"data: a\n\n: ping\n\ndata: b\n\n", b"id: 2\n\n", b"data: c\n\n"]
    upstream = Upstream()
    upstream.responses.append(upstream.stream(*reads))
    async with upstream.client() as client, StreamManager() as manager:
        async with manager.open(SSESource(client, "http://up/").raw_events) as stream:
            batches = [batch async for batch in stream.batches()]
    assert [[(event.data, raw) for event, raw in batch] for batch in batches] == [
        [("a", b"data: a\n\n"), ("b", b"data: b\n\n")],
        [("c", b"id: 2\n\ndata: c\n\n")],  # the id-only block leads the next event
    ]


async def test_raw_batches_carry_each_reads_bytes_in_one_piece(
    autojump_clock: trio.abc.Clock,
) -> None:
    reads = [
        b"data: a\n\n: ping\n\ndata: b\n\n",
        b": only a keep-alive\n\n",
        b"id: 2\n\ndata: c\n\n",
    ]
    upstream = Upstream()
    upstream.responses += [upstream.stream(*reads), upstream.stream(*reads)]
    async with upstream.client() as client, StreamManager() as manager:
        async with manager.open(SSESource(client, "http://up/").raw_batches) as stream:
            batches = [batch async for batch in stream.batches()]
        assert manager.history()[0].items == 3  # events, not batches
        # Iterated item by item, the same source yields the events.
        async with manager.open(SSESource(client, "http://up/").raw_batches) as stream:
            assert [event.data async for event in stream] == ["a", "b", "c"]
    raw_batches = [batch for batch in batches if isinstance(batch, streammgr.sse.RawBatch)]
    assert raw_batches == batches
    assert [[event.data for event in batch] for batch in batches] == [["a", "b"], ["c"]]
    # One write per read: the bytes of its events, the keep-alive between them dropped.
    assert [batch.raw for batch in raw_batches] == [
        b"data: a\n\ndata: b\n\n",
        b"id: 2\n\ndata: c\n\n",
    ]


async def test_reconnect_sends_the_last_id_of_the_last_batch(
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses += [
        upstream.stream(b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n", httpx.ReadError("reset")),
        upstream.stream(b"data: c\n\n"),
    ]
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=Reconnect(jitter=0))
        async with manager.open(source) as stream:
            assert [(await stream.__anext__()).data for _ in range(3)] == ["a", "b", "c"]
    assert upstream.requests[1].headers["last-event-id"] == "2"


# -- Retry-After: both forms, any length ---------------------------------------------------


async def test_retry_after_of_a_day_is_final(autojump_clock: trio.abc.Clock) -> None:
    # Before: a wait of a day or more was read as no Retry-After at all, and retried
    # after the backoff, against the upstream's explicit wish.
    upstream = Upstream()
    upstream.responses.append(
        upstream.stream(b"maintenance", status=503, headers={"retry-after": "86400"})
    )
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=Reconnect(max_delay=30))
        with pytest.raises(streammgr.UpstreamStatusError, match="86400s") as caught:
            await read_all(manager, source)
    assert len(upstream.requests) == 1
    assert caught.value.retry_after == 86_400


async def test_retry_after_as_an_http_date(autojump_clock: trio.abc.Clock) -> None:
    upstream = Upstream()
    upstream.responses += [
        # In the past (any clock reading this test): retry after min_delay.
        upstream.stream(
            b"busy", status=503, headers={"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}
        ),
        # Far ahead: longer than max_delay, so final.
        upstream.stream(
            b"later", status=503, headers={"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}
        ),
    ]
    async with upstream.client() as client, StreamManager() as manager:
        policy = Reconnect(min_delay=0.25, initial_delay=1, jitter=0)
        source = SSESource(client, "http://up/", reconnect=policy)
        with pytest.raises(streammgr.UpstreamStatusError, match="max_delay") as caught:
            await read_all(manager, source)
    assert upstream.times[1] - upstream.times[0] == pytest.approx(0.25)
    assert caught.value.body == "later"
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 100 * 365 * 86_400


def test_a_url_httpx_cannot_parse_is_a_value_error() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="url is not a valid URL") as caught:
        SSESource(client, "http://[::1")
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    ("raised", "expected", "retried"),
    [
        (httpx.ConnectTimeout("slow"), streammgr.UpstreamConnectTimeout, True),
        (httpx.PoolTimeout("full"), streammgr.UpstreamConnectTimeout, True),
        (httpx.WriteTimeout("slow"), streammgr.UpstreamConnectTimeout, True),
        (httpx.ConnectError("refused"), streammgr.UpstreamConnectError, True),
        (httpx.ProxyError("no proxy"), streammgr.UpstreamConnectError, True),
        (httpx.UnsupportedProtocol("gopher"), streammgr.UpstreamConnectError, True),
        (httpx.TooManyRedirects("loop"), streammgr.UpstreamProtocolError, False),
    ],
)
async def test_every_httpx_error_of_a_request_is_mapped(
    raised: httpx.HTTPError,
    expected: type[streammgr.UpstreamError],
    retried: bool,
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream(fail(raised))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=Reconnect(max_attempts=1))
        with pytest.raises(expected) as caught:
            await read_all(manager, source)
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert len(upstream.requests) == (2 if retried else 1)


@pytest.mark.parametrize(
    ("raised", "expected", "retried"),
    [
        (httpx.ReadTimeout("idle"), streammgr.UpstreamIdleTimeout, True),
        (httpx.ReadError("reset"), streammgr.UpstreamConnectError, True),
        (httpx.RemoteProtocolError("bad chunk"), streammgr.UpstreamConnectError, True),
        (httpx.DecodingError("bad gzip"), streammgr.UpstreamProtocolError, False),
        (httpx.StreamClosed(), streammgr.UpstreamProtocolError, False),
    ],
)
async def test_every_httpx_error_of_a_body_read_is_mapped(
    raised: httpx.HTTPError,
    expected: type[streammgr.UpstreamError],
    retried: bool,
    autojump_clock: trio.abc.Clock,
) -> None:
    upstream = Upstream()
    upstream.responses.append(upstream.stream(raised))
    async with upstream.client() as client, StreamManager() as manager:
        source = SSESource(client, "http://up/", reconnect=Reconnect(max_attempts=1))
        with pytest.raises(expected) as caught:
            await read_all(manager, source)
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert len(upstream.requests) == (2 if retried else 1)
    assert upstream.opened == upstream.closed
