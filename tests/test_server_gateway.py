"""The OpenAI-compatible gateway end to end: served by ``streammgr.server.serve`` on
127.0.0.1, in front of the built-in simulated upstream (in-process through its httpx
transport, or served on a socket of its own).

Real time over loopback: every wait is on an event or a condition bounded by
``fail_after``; latencies are hundredths of a second.
"""

from __future__ import annotations

import gc
import json
from functools import partial
from typing import Any

import httpx
import pytest
import trio

import streammgr
from streammgr import CloseReason, StreamManager
from streammgr.server import ServiceOptions, caller_key, gateway_app, serve
from streammgr.simulate import SimulatedTransport

from .fault_helpers import chat, data_events, raw_post
from .response_helpers import forever
from .server_helpers import (
    GATEWAY_BASE,
    GATEWAY_UPSTREAM_KEY,
    PATIENCE,
    CloseWatcher,
    Server,
    fast_upstream,
    instant_upstream,
    quiet_hypercorn,
    running_gateway,
    running_service,
    wait_until,
)

BASE = GATEWAY_BASE
MESSAGES = [{"role": "user", "content": "hello there"}]
UPSTREAM_KEY = GATEWAY_UPSTREAM_KEY
CALLER_KEY = "sk-caller-secret-9876543210"

# The openai SDK stops reading at [DONE] without closing its own SSE generators (nor
# httpx's and httpcore's under them); Trio warns when it collects them (see
# tests/test_simulate.py). Those warnings alone are let through.
SDK_WARNINGS = pytest.mark.filterwarnings(
    "ignore:Async generator 'openai.:ResourceWarning",
    "ignore:Async generator 'httpx.:ResourceWarning",
    "ignore:Async generator 'httpcore.:ResourceWarning",
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning",
)


# -- the official openai SDK, unmodified --------------------------------------------------


@SDK_WARNINGS
async def test_the_openai_sdk_streams_and_completes_through_the_gateway(
    nursery: trio.Nursery,
) -> None:
    import openai as sdk

    openai: Any = sdk  # untyped: this release annotates http_client with its own httpx fork
    async with running_gateway(nursery) as gateway:
        async with httpx.AsyncClient() as http:
            client = openai.AsyncOpenAI(
                api_key=CALLER_KEY, base_url=f"{gateway.url}/v1", http_client=http, max_retries=0
            )
            stream = await client.chat.completions.create(
                model="sim-large",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=5,
            )
            parts, finish, usage = [], None, None
            async with stream:
                async for chunk in stream:
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
                        finish = chunk.choices[0].finish_reason or finish
                    usage = chunk.usage or usage
            assert finish == "length"
            assert usage is not None
            assert usage.completion_tokens == 5

            completion = await client.chat.completions.create(
                model="sim-large", messages=MESSAGES, max_tokens=5
            )
            assert completion.object == "chat.completion"
            assert completion.choices[0].message.content == "".join(parts)
            assert completion.choices[0].finish_reason == "length"
            assert completion.usage.completion_tokens == 5

            models = [model.id async for model in await client.models.list()]
            assert models == ["sim-small", "sim-large"]

            with pytest.raises(openai.APIError, match="mid-stream"):
                broken = await client.chat.completions.create(
                    model="m",
                    messages=MESSAGES,
                    stream=True,
                    extra_body={"streammgr_simulate": {"fault": "error_in_stream"}},
                )
                async with broken:
                    async for _ in broken:
                        pass
            with pytest.raises(openai.APIError, match="DONE"):
                truncated = await client.chat.completions.create(
                    model="m",
                    messages=MESSAGES,
                    stream=True,
                    extra_body={"streammgr_simulate": {"fault": "no_done"}},
                )
                async with truncated:
                    async for _ in truncated:
                        pass
            with pytest.raises(openai.NotFoundError):
                await client.embeddings.create(model="m", input="hi")
    gc.collect()  # the SDK's abandoned generators, while the filter above applies
    assert gateway.upstream.stats().open == 0


@SDK_WARNINGS
async def test_the_openai_sdk_sees_a_429_with_retry_after_when_over_the_limit(
    nursery: trio.Nursery,
) -> None:
    import openai as sdk

    openai: Any = sdk
    options = {"max_streams": 1, "acquire_timeout": 0.05}
    async with running_gateway(nursery, manager_options=options) as gateway:
        holder = gateway.manager.open(forever)
        async with holder, httpx.AsyncClient() as http:
            client = openai.AsyncOpenAI(
                api_key=CALLER_KEY, base_url=f"{gateway.url}/v1", http_client=http, max_retries=0
            )
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            headers = limited.value.response.headers
            assert int(headers["retry-after"]) >= 1
            assert int(headers["retry-after-ms"]) >= 1000
            assert headers["x-request-id"]
            assert limited.value.body["code"] == "max_streams"
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="m", messages=MESSAGES)
            gateway.manager.cancel(holder.id)


@SDK_WARNINGS
@pytest.mark.parametrize("stream", [True, False])
async def test_the_openai_sdk_does_not_retry_what_a_retry_cannot_mend(
    nursery: trio.Nursery, stream: bool
) -> None:
    # The upstream refuses the gateway's own key: the 502 says x-should-retry:
    # false, so the SDK (2 retries by default) asks once, not three times.
    import openai as sdk

    openai: Any = sdk
    async with running_gateway(nursery) as gateway, httpx.AsyncClient() as http:
        client = openai.AsyncOpenAI(
            api_key=CALLER_KEY, base_url=f"{gateway.url}/v1", http_client=http
        )
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(
                model="m",
                messages=MESSAGES,
                stream=stream,
                extra_body={"streammgr_simulate": {"fault": "http_error", "status": 401}},
            )
        assert refused.value.status_code == 502
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert gateway.manager.stats().opened_total == 1


async def test_an_upstream_url_with_a_query_string_keeps_it(nursery: trio.Nursery) -> None:
    seen: list[httpx.URL] = []
    simulated = SimulatedTransport(fast_upstream())

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return await simulated.handle_async_request(request)

    url = "http://simulated.local/v1?api-version=2024-10-21"
    transport = httpx.MockTransport(handle)
    async with (
        running_gateway(nursery, transport=transport, upstream_url=url) as gateway,
        httpx.AsyncClient() as client,
    ):
        streamed = await client.post(f"{gateway.url}/v1/chat/completions", json=chat(True))
        whole = await client.post(f"{gateway.url}/v1/chat/completions", json=chat(False))
        await client.get(f"{gateway.url}/v1/models")
    assert data_events(streamed.content)[-1] == "[DONE]"
    assert whole.status_code == 200
    assert [(u.path, u.query) for u in seen] == [
        ("/v1/chat/completions", b"api-version=2024-10-21"),
        ("/v1/chat/completions", b"api-version=2024-10-21"),
        ("/v1/models", b"api-version=2024-10-21"),
    ]


# -- what goes over the wire ---------------------------------------------------------------


async def test_events_are_forwarded_as_the_upstream_sent_them(nursery: trio.Nursery) -> None:
    async with running_gateway(nursery) as gateway, httpx.AsyncClient() as client:
        body = chat(True, tokens=4)
        response = await client.post(f"{gateway.url}/v1/chat/completions", json=body)
        direct = gateway.upstream.respond("POST", "/v1/chat/completions", json.dumps(body).encode())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"].startswith("req_")
    assert response.content == direct.body  # byte for byte: nothing re-encoded
    assert data_events(response.content)[-1] == "[DONE]"


async def test_no_id_or_retry_field_reaches_the_client(nursery: trio.Nursery) -> None:
    seen: list[httpx.Request] = []
    chunk = '{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'
    upstream_body = f"retry: 3000\nid: 1\ndata: {chunk}\n\nid: 2\ndata: {chunk}\n\ndata: [DONE]\n\n"

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=upstream_body
        )

    transport = httpx.MockTransport(answer)
    async with running_gateway(nursery, transport=transport) as gateway:
        response = await raw_post(
            gateway.server.port, chat(True), headers=f"authorization: Bearer {CALLER_KEY}\r\n"
        )
        await response.until(lambda response: b"[DONE]" in response.body)
        await response.stream.aclose()
    lines = response.body.split(b"\n")
    assert not any(line.startswith((b"id:", b"retry:")) for line in lines)
    assert response.body.count(chunk.encode()) == 2
    # The upstream got the gateway's key, never the caller's, and the request as sent.
    (request,) = seen
    assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert json.loads(request.content) == chat(True)


@pytest.mark.parametrize(
    ("fault", "options", "code"),
    [
        ("drop_mid_stream", {}, "upstream_error"),
        ("stall_mid_stream", {}, "upstream_idle_timeout"),
        ("malformed_chunk", {}, "upstream_error"),
        ("error_in_stream", {}, "upstream_error"),
        ("no_done", {}, "upstream_truncated"),
        ("no_done", {"fault_after": 2}, "upstream_truncated"),
    ],
)
async def test_every_upstream_fault_mid_stream_ends_with_an_in_band_error(
    nursery: trio.Nursery, fault: str, options: dict[str, Any], code: str
) -> None:
    async with running_gateway(nursery) as gateway, httpx.AsyncClient() as client:
        body = chat(True, tokens=6, fault=fault, **options)
        response = await client.post(f"{gateway.url}/v1/chat/completions", json=body)
        assert response.status_code == 200
        events = data_events(response.content)
        assert "[DONE]" not in events
        last = json.loads(events[-1])
        assert set(last["error"]) == {"message", "type", "code", "param"}
        assert last["error"]["code"] == code
        assert len(events) >= 2  # what came before the fault was delivered
        (info,) = gateway.manager.history()
        assert str(info.close_reason) == code
        await wait_until(lambda: gateway.upstream.stats().open == 0)


async def test_upstream_errors_before_the_stream_get_their_status(
    nursery: trio.Nursery,
) -> None:
    async with running_gateway(nursery) as gateway, httpx.AsyncClient() as client:
        url = f"{gateway.url}/v1/chat/completions"
        limited = await client.post(url, json=chat(True, fault="rate_limited", retry_after=3))
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "3"  # the upstream's own
        assert limited.json()["error"]["type"] == "rate_limit_exceeded"
        for stream in (True, False):
            failed = await client.post(url, json=chat(stream, fault="http_error", status=503))
            assert failed.status_code == 502
            assert "503" in failed.json()["error"]["message"]
        # A client error is passed on as it is, streaming or not: not retried as a 5xx.
        for stream in (True, False):
            refused = await client.post(url, json=chat(stream, fault="http_error", status=404))
            assert refused.status_code == 404
            assert refused.json()["error"]["type"] == "invalid_request_error"
        # The gateway's own key refused upstream is the gateway's problem: a 502.
        denied = await client.post(url, json=chat(True, fault="http_error", status=401))
        assert denied.status_code == 502


async def test_stream_false_answers_the_assembled_completion(nursery: trio.Nursery) -> None:
    async with running_gateway(nursery) as gateway, httpx.AsyncClient() as client:
        url = f"{gateway.url}/v1/chat/completions"
        streamed = await client.post(url, json=chat(True, tokens=5))
        whole = await client.post(url, json=chat(False, tokens=5))
    text = "".join(
        choice["delta"].get("content") or ""
        for event in data_events(streamed.content)[:-1]
        for choice in json.loads(event)["choices"]
    )
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/json"
    answer = whole.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": text,
        "refusal": None,
    }
    assert answer["usage"]["completion_tokens"] == 5


# -- clients that leave ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_cancels_the_upstream_request(
    nursery: trio.Nursery, stream: bool
) -> None:
    upstream = fast_upstream(token_latency=0.05)
    async with running_gateway(nursery, upstream=upstream) as gateway:
        watcher = CloseWatcher(gateway.manager)
        await nursery.start(watcher.run)
        response = await raw_post(gateway.server.port, chat(stream, tokens=1000))
        if stream:
            await response.until(lambda response: b'"content":"' in response.body)
        else:
            await wait_until(lambda: upstream.stats().open == 1 and bool(gateway.manager.streams()))
        await response.stream.aclose()
        info = await watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        await wait_until(lambda: upstream.stats().open == 0)
        assert upstream.stats().client_left == 1


async def test_a_client_that_leaves_while_waiting_for_a_slot_holds_nothing(
    nursery: trio.Nursery,
) -> None:
    options = {"max_streams": 1, "acquire_timeout": 10.0}
    async with running_gateway(nursery, manager_options=options, answer_within=0.05) as gateway:
        watcher = CloseWatcher(gateway.manager)
        await nursery.start(watcher.run)
        async with gateway.manager.open(forever) as holder:
            response = await raw_post(gateway.server.port, chat(False))
            await wait_until(lambda: gateway.manager.stats().waiting == 1)
            await response.stream.aclose()
            info = await watcher.next_close(besides=(holder.id,))
            assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
            assert info.admitted_at is None
            gateway.manager.cancel(holder.id)
        assert gateway.upstream.stats().opened == 0


# -- keys and limits -----------------------------------------------------------------------------


async def test_the_caller_credential_is_hashed_and_never_stored(nursery: trio.Nursery) -> None:
    options = {"max_streams_per_key": 1, "acquire_timeout": 0.05}
    async with running_gateway(nursery, manager_options=options) as gateway:
        port = gateway.server.port
        first = await raw_post(
            port, chat(True, tokens=1000), headers=f"authorization: Bearer {CALLER_KEY}\r\n"
        )
        await first.until(lambda response: b'"content":"' in response.body)
        (info,) = gateway.manager.streams()
        assert info.key == caller_key({"authorization": f"Bearer {CALLER_KEY}"})
        assert info.key.startswith("key-")
        async with httpx.AsyncClient() as client:
            url = f"{gateway.url}/v1/chat/completions"
            same = await client.post(
                url, json=chat(True), headers={"authorization": f"Bearer {CALLER_KEY}"}
            )
            other = await client.post(
                url, json=chat(True), headers={"authorization": "Bearer sk-another-caller"}
            )
        assert same.status_code == 429
        assert same.json()["error"]["code"] == "max_streams_per_key"
        assert same.headers["retry-after"]
        assert other.status_code == 200
        seen = repr(gateway.manager.streams()) + repr(gateway.manager.history())
        assert CALLER_KEY not in seen
        assert CALLER_KEY not in same.text
        await first.stream.aclose()


def test_caller_keys() -> None:
    assert caller_key({}) == "anonymous"
    assert caller_key({"authorization": "Bearer abc"}) == caller_key(
        {"authorization": "bearer  abc"}
    )
    assert caller_key({"authorization": "Bearer abc"}) != caller_key(
        {"authorization": "Bearer abd"}
    )
    assert caller_key({"x-tenant": "acme", "authorization": "Bearer abc"}, "x-tenant") == "acme"
    assert caller_key({"authorization": "Bearer abc"}, "x-tenant").startswith("key-")


async def test_a_configured_key_header_names_the_caller(nursery: trio.Nursery) -> None:
    async with running_gateway(nursery, key_header="x-tenant") as gateway:
        async with httpx.AsyncClient() as client:
            await client.post(
                f"{gateway.url}/v1/chat/completions", json=chat(True), headers={"x-tenant": "acme"}
            )
        (info,) = gateway.manager.history()
        assert info.key == "acme"


# -- errors in OpenAI's format ---------------------------------------------------------------------


async def test_unknown_routes_and_bad_requests(nursery: trio.Nursery) -> None:
    async with running_gateway(nursery) as gateway, httpx.AsyncClient() as client:
        url = gateway.url

        async def error(response: httpx.Response, status: int) -> dict[str, Any]:
            assert response.status_code == status, response.text
            assert response.headers["x-request-id"]
            body = response.json()
            assert set(body["error"]) == {"message", "type", "param", "code"}
            return dict(body["error"])

        missing = await error(await client.post(f"{url}/v1/embeddings", json={}), 404)
        assert "POST /v1/embeddings" in missing["message"]
        await error(await client.get(f"{url}/elsewhere"), 404)
        wrong = await client.get(f"{url}/v1/chat/completions")
        assert (await error(wrong, 405))["code"] == "method_not_allowed"
        assert wrong.headers["allow"] == "POST"
        chat_url = f"{url}/v1/chat/completions"
        await error(await client.post(chat_url, content=b"{not json"), 400)
        cases = [
            ({"messages": MESSAGES}, "model"),
            ({"model": "m", "messages": "hi"}, "messages"),
            ({"model": "m", "messages": []}, "messages"),
            ({"model": "m", "messages": ["hi"]}, "messages[0]"),
            ({"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
            (
                {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": 1},
                "stream_options",
            ),
            ({"model": "m", "messages": MESSAGES, "n": 2}, "n"),
        ]
        for body, param in cases:
            bad = await error(await client.post(chat_url, json=body), 400)
            assert bad["param"] == param
            assert bad["type"] == "invalid_request_error"
        assert gateway.manager.stats().opened_total == 0
        # A request id the caller sent is kept.
        echoed = await client.get(f"{url}/elsewhere", headers={"x-request-id": "mine-1"})
        assert echoed.headers["x-request-id"] == "mine-1"


@pytest.mark.parametrize("stream", ["true", "false"])
async def test_what_cannot_be_sent_upstream_is_a_400_not_a_500(
    nursery: trio.Nursery, stream: str
) -> None:
    # Regressions (found by fuzz/fuzz_gateway_request.py): these bodies passed the
    # checks, then httpx could not encode the request upstream (stream: false: a lone
    # surrogate, escaped or encoded as UTF-8 bytes, is no UTF-8; NaN and infinities are
    # no JSON) or the simulator could not
    # hash it (stream: true): a 500 producer_error for the caller's mistake.
    start = b'{"model": "m", "stream": %b, ' % stream.encode()
    user = b'"messages": [{"role": "user"}]'
    bodies = [
        (start + b'"model": "\\ud800", ' + user + b"}", "model", "unpaired surrogate"),
        (
            start + b'"messages": [{"role": "user", "content": "a\\udfffb"}]}',
            "messages[0].content",
            "send the character itself or both halves of its pair",
        ),
        (start + user + b', "user": "\\udc00"}', "user", "unpaired surrogate"),
        (start + b'"model": "\xed\xa0\x80", ' + user + b"}", None, "not valid UTF-8 (byte"),
        (start + user + b', "temperature": NaN}', None, "NaN, which is not a JSON number"),
        (start + user + b', "top_p": -Infinity}', None, "-Infinity, which is not a JSON"),
        (start + user + b', "top_p": [1e999]}', None, "1e999, too large for a double"),
    ]
    async with running_gateway(nursery) as gateway, httpx.AsyncClient() as client:
        url = f"{gateway.url}/v1/chat/completions"
        for body, param, says in bodies:
            response = await client.post(url, content=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == param
            assert says in error["message"]
        assert gateway.manager.stats().opened_total == 0
        # A surrogate pair is one character, and goes through; so does a finite float.
        fine = start + b'"messages": [{"role": "user", "content": "\\ud83d\\ude00"}],'
        response = await client.post(url, content=fine + b' "temperature": 1.5e-3}')
        assert response.status_code == 200, response.text


# -- the service: CORS ----------------------------------------------------------------------------


async def test_cors_preflight_and_a_cross_origin_stream(nursery: trio.Nursery) -> None:
    options = ServiceOptions(upstream_url=BASE, cors_origins=["https://app.example"])
    async with (
        running_service(nursery, StreamManager(), options) as (server, _),
        httpx.AsyncClient() as client,
    ):
        url = f"{server.url}/v1/chat/completions"
        preflight = await client.options(
            url,
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
        response = await client.post(
            url, json=chat(True), headers={"origin": "https://app.example"}
        )
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in response.headers["access-control-expose-headers"]
        assert data_events(response.content)[-1] == "[DONE]"
        other = await client.options(
            url,
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert other.status_code == 400


# -- across a real socket --------------------------------------------------------------------------


async def test_in_front_of_the_simulator_served_on_its_own_socket(nursery: trio.Nursery) -> None:
    upstream = fast_upstream(token_latency=0.05)
    stop_upstream = trio.Event()
    (upstream_url,) = await nursery.start(
        partial(
            serve,
            upstream,
            port=0,
            shutdown_trigger=stop_upstream.wait,
            config=quiet_hypercorn(),
        )
    )
    transport = httpx.AsyncHTTPTransport()
    async with running_gateway(
        nursery, upstream=upstream, transport=transport, upstream_url=f"{upstream_url}/v1"
    ) as gateway:
        async with httpx.AsyncClient() as client:
            url = f"{gateway.url}/v1/chat/completions"
            whole = await client.post(url, json=chat(True, tokens=3, token_latency=0.001))
            assert data_events(whole.content)[-1] == "[DONE]"
            models = await client.get(f"{gateway.url}/v1/models")
            assert [model["id"] for model in models.json()["data"]] == ["sim-small", "sim-large"]
        watcher = CloseWatcher(gateway.manager)
        await nursery.start(watcher.run)
        response = await raw_post(gateway.server.port, chat(True, tokens=1000))
        await response.until(lambda response: b'"content":"' in response.body)
        await response.stream.aclose()
        info = await watcher.next_close()
        assert info.close_reason is CloseReason.CLIENT_DISCONNECTED
        # The upstream saw its connection end: the gateway closed it.
        await wait_until(lambda: upstream.stats().open == 0)
        assert upstream.stats().client_left == 1
    stop_upstream.set()


def test_bad_arguments_are_named() -> None:
    async def check() -> None:
        async with httpx.AsyncClient() as http:
            manager = StreamManager()
            with pytest.raises(ValueError, match="upstream_url"):
                gateway_app(manager, http, upstream_url="ftp://x")
            with pytest.raises(TypeError, match="upstream"):
                gateway_app(manager, object(), upstream_url=BASE)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="max_request_size"):
                gateway_app(manager, http, upstream_url=BASE, max_request_size=0)

    trio.run(check)
    assert streammgr.server.gateway_app is gateway_app


# -- stream: false: body fields are the upstream's, never OpenAIChat arguments ------------


class Recording(httpx.AsyncBaseTransport):
    """Records every request the gateway sends upstream, then passes it on."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


async def test_stream_false_body_field_headers_is_not_sent_as_upstream_http_headers(
    nursery: trio.Nursery,
) -> None:
    # The body's extra fields go to OpenAIChat(**params): a field named "headers"
    # becomes HTTP headers of the upstream request, with the gateway's API key.
    recording = Recording(SimulatedTransport(instant_upstream()))
    async with (
        httpx.AsyncClient(transport=recording) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(manager, http, upstream_url="http://sim.local/v1", api_key=UPSTREAM_KEY)
        server = await Server().start(nursery, app)
        body = {
            "model": "sim-small",
            "messages": MESSAGES,
            "headers": {"OpenAI-Project": "proj_someone_else", "Authorization": "Bearer x"},
        }
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            await client.post(f"{server.url}/v1/chat/completions", json=body)
        server.stop.set()
    (sent,) = recording.requests
    assert "openai-project" not in sent.headers
    assert sent.headers.get_list("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    # Everything else goes to the upstream as it is (docs/gateway.md): in the body.
    assert json.loads(sent.content).get("headers") == body["headers"]


@pytest.mark.parametrize("field", ["api_key", "base_url", "timeouts", "include_usage", "client"])
async def test_stream_false_body_field_named_like_an_openaichat_argument_is_no_500(
    nursery: trio.Nursery, field: str
) -> None:
    # OpenAIChat() got multiple values for keyword argument ...: an unhandled TypeError,
    # a plain-text 500 instead of an OpenAI-format answer.
    async with (
        httpx.AsyncClient(transport=SimulatedTransport(instant_upstream())) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(manager, http, upstream_url="http://sim.local/v1", api_key=UPSTREAM_KEY)
        server = await Server().start(nursery, app)
        body = {"model": "sim-small", "messages": MESSAGES, field: "http://elsewhere/v1"}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.post(f"{server.url}/v1/chat/completions", json=body)
        server.stop.set()
    assert response.status_code < 500
    assert response.headers["content-type"] == "application/json"
