"""The gateway's error answers (``server/_answers.py``) as the openai SDK reads them:
every 429 carries ``Retry-After`` and ``retry-after-ms``, and ``x-should-retry`` says
retry only where retrying may go better.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import trio

from streammgr import (
    CloseReason,
    IdleTimeout,
    LimiterError,
    ManagerClosed,
    StreamCancelled,
    StreamLimitExceeded,
    StreamManager,
    UpstreamStatusError,
    UpstreamTruncated,
)
from streammgr.server import gateway_app
from streammgr.server._answers import ErrorAnswer, error_answer

from .server_helpers import GATEWAY_UPSTREAM_KEY, PATIENCE, Server, assert_quiet, running_gateway

MESSAGES = [{"role": "user", "content": "hi"}]

# -- Retry-After on every 429 ----------------------------------------------------------------


@pytest.mark.parametrize("upstream_headers", [{}, {"retry-after-ms": "1500"}])
@pytest.mark.parametrize("stream", [True, False])
async def test_every_429_carries_retry_after_and_retry_after_ms(
    nursery: trio.Nursery, upstream_headers: dict[str, str], stream: bool
) -> None:
    # docs/gateway.md: "sends both on every 429". An upstream 429 without a
    # Retry-After (or with only retry-after-ms) is passed on with neither.
    error = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=upstream_headers, json=error)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(
            manager, http, upstream_url="http://sim.local/v1", api_key=GATEWAY_UPSTREAM_KEY
        )
        server = await Server().start(nursery, app)
        body = {"model": "m", "messages": MESSAGES, "stream": stream}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.post(f"{server.url}/v1/chat/completions", json=body)
        server.stop.set()
    assert response.status_code == 429
    assert "retry-after" in response.headers
    assert "retry-after-ms" in response.headers


# -- x-should-retry and Retry-After, as the openai SDK reads them --------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstreams_huge_retry_after_is_a_429_not_a_crash(
    nursery: trio.Nursery, stream: bool
) -> None:
    # A finite Retry-After near float's maximum: ``retry_after * 1000`` is infinite,
    # and the answer's headers must still be written.
    def limited(_: httpx.Request) -> httpx.Response:
        headers = {"retry-after": "1e308", "content-type": "application/json"}
        return httpx.Response(429, headers=headers, content=b'{"error":{"message":"slow"}}')

    async with (
        running_gateway(nursery, transport=httpx.MockTransport(limited)) as gateway,
        httpx.AsyncClient(base_url=gateway.server.url) as client,
    ):
        body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
        with trio.fail_after(PATIENCE):
            answer = await client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert answer.status_code == 429
        assert answer.json()["error"]["type"] == "rate_limit_exceeded"
        assert float(answer.headers["retry-after"]) > 60
        sdk = openai.AsyncOpenAI(api_key="x", base_url=gateway.server.url)
        # Longer than the SDK waits (its stubs name httpx2's Response: same class).
        assert sdk._should_retry(answer) is False  # type: ignore[arg-type]
        await sdk.close()
    assert_quiet(gateway)


def _sdk_retries(answer: ErrorAnswer) -> bool:
    headers = [(name.decode(), value.decode()) for name, value in answer.headers()]
    response = httpx.Response(answer.status, headers=headers)
    client = openai.OpenAI(api_key="x", base_url="http://gateway.local/v1")
    try:
        return client._should_retry(response)  # type: ignore[arg-type]  # httpx2 in its stubs
    finally:
        client.close()


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (StreamLimitExceeded("over", limit="max_streams", retry_after=0.05, key="k"), True),
        (StreamLimitExceeded("over", limit="max_per_key", retry_after=3600, key="k"), False),
        (ManagerClosed("closed"), True),
        (UpstreamStatusError("no", status_code=401, body="{}"), False),
        (UpstreamStatusError("no", status_code=403, body="{}"), False),
        (UpstreamStatusError("no", status_code=400, body="{}"), False),
        (UpstreamStatusError("no", status_code=429, body="{}"), True),
        (UpstreamStatusError("no", status_code=429, body="{}", retry_after=2.5), True),
        (UpstreamStatusError("no", status_code=500, body="{}"), True),
        (UpstreamStatusError("no", status_code=503, body="{}"), True),
        (UpstreamStatusError("no", status_code=408, body="{}"), True),
        (UpstreamTruncated("cut"), True),
        (StreamCancelled("op", close_reason=CloseReason.CANCELLED, stream_id="s"), False),
        (StreamCancelled("", close_reason=CloseReason.SHUTDOWN, stream_id="s"), True),
        (
            IdleTimeout("idle", close_reason=CloseReason.IDLE_TIMEOUT, stream_id="s", timeout=1),
            True,
        ),
    ],
)
def test_the_sdk_retries_what_may_go_better_and_only_that(
    error: BaseException, retried: bool
) -> None:
    assert _sdk_retries(error_answer(error, "s1", None)) is retried


def test_a_limiter_that_lost_its_backend_answers_503_with_retry_after() -> None:
    """Redis lost under fail-closed: 503, Retry-After from the limiter, x-should-retry:
    true (another instance, or this one a moment later, may admit); a limiter's other
    failure stays a bare 503."""
    lost = LimiterError("lost", key="k", stream_id="s", retry_after=3.0)
    answer = error_answer(lost, "s", None)
    headers = dict(answer.headers())
    assert (answer.status, answer.code) == (503, "limiter_error")
    assert headers[b"retry-after"] == b"3"
    assert headers[b"x-should-retry"] == b"true"
    other = error_answer(LimiterError("broke", key="k", stream_id="s"), "s", None)
    assert b"retry-after" not in dict(other.headers())
