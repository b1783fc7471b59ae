"""OpenAIChat: typed chunks, [DONE], in-stream errors, truncation, and the API key."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import streammgr
from streammgr import CloseReason, StreamManager
from streammgr.sources import ChatChunk, OpenAIChat, ToolCall, Usage, collect_chat
from streammgr.sources._openai import _chunks_of, _MalformedChunk

from .secret_helpers import assert_no_fragment, recorded_text

API_KEY = "sk-proj-abcdefghijklmnop0123456789"
BASE = "http://llm.local/v1"


def chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
    payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


def transport(
    *bodies: Sequence[bytes], status: int = 200, content_type: str = "text/event-stream"
) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    requests: list[httpx.Request] = []
    queue = list(bodies)

    async def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(
            status, headers={"content-type": content_type}, content=b"".join(queue.pop(0))
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(handle)), requests


def chat(client: httpx.AsyncClient, **params: Any) -> OpenAIChat:
    return OpenAIChat(
        client,
        api_key=API_KEY,
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        base_url=BASE,
        **params,
    )


USAGE = (
    b'data: {"id": "chatcmpl-1", "model": "gpt-test", "choices": [], "usage": '
    b'{"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}\n\n'
)
HELLO = [
    b": OPENROUTER PROCESSING\n\n",
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, finish="stop"),
    USAGE,
    b"data: [DONE]\n\n",
]


async def test_typed_chunks_and_request_body(autojump_clock: trio.abc.Clock) -> None:
    client, requests = transport(HELLO)
    async with client, StreamManager() as manager:
        source = chat(client, include_usage=True, temperature=0.2)
        async with manager.open(source) as stream:
            chunks = [item async for item in stream]
        info = manager.get(stream.id)
        assert info is not None
        assert info.close_reason is CloseReason.COMPLETED
        assert info.bytes == sum(len(part) for part in HELLO)
    assert [c.content for c in chunks] == ["", "Hel", "lo", None, None]
    assert chunks[0].role == "assistant"
    assert chunks[3].finish_reason == "stop"
    assert chunks[4].usage == Usage(5, 2, 7)
    assert isinstance(chunks[1], ChatChunk)
    (request,) = requests
    assert str(request.url) == f"{BASE}/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = json.loads(request.content)
    assert body == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
    }


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.test/v1", "https://api.test/v1/chat/completions"),
        ("https://api.test/v1/", "https://api.test/v1/chat/completions"),
        (
            "https://azure.test/openai/deployments/d?api-version=2024-10-21",
            "https://azure.test/openai/deployments/d/chat/completions?api-version=2024-10-21",
        ),
    ],
)
async def test_the_base_url_keeps_its_query_string(
    autojump_clock: trio.abc.Clock, base_url: str, expected: str
) -> None:
    client, requests = transport(HELLO)
    async with client, StreamManager() as manager:
        source = OpenAIChat(
            client,
            api_key=API_KEY,
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            base_url=base_url,
        )
        async with manager.open(source) as stream:
            assert len([item async for item in stream]) == 5
        (closed,) = manager.history()
    assert str(requests[0].url) == expected
    assert closed.notes == {
        "finish_reason": "stop",
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
    }


async def test_collect_text_and_tool_calls(autojump_clock: trio.abc.Clock) -> None:
    tool_stream = [
        chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}},
                              {"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "now", "arguments": "{}"}}]}),
        chunk({}, finish="tool_calls"),
        b"data: [DONE]\n\n",
    ]  # fmt: skip
    client, _ = transport(HELLO, tool_stream)
    async with client, StreamManager() as manager:
        async with manager.open(chat(client)) as stream:
            answer = await collect_chat(stream)
        assert (answer.text, answer.role, answer.finish_reason) == ("Hello", "assistant", "stop")
        assert answer.usage == Usage(5, 2, 7)
        async with manager.open(chat(client)) as stream:
            answer = await collect_chat(stream)
        assert answer.finish_reason == "tool_calls"
        assert answer.tool_calls == (
            ToolCall("call_1", "function", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_2", "function", "now", "{}"),
        )


@pytest.mark.parametrize(
    "body",
    [
        [chunk({"content": "Hel"}), chunk({"content": "lo"})],  # cut mid-answer
        [chunk({"role": "assistant"})],
    ],
)
async def test_truncated_stream_is_not_success(
    autojump_clock: trio.abc.Clock, body: list[bytes]
) -> None:
    client, _ = transport(body)
    async with client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamTruncated, match="incomplete"):
            async with manager.open(chat(client)) as stream:
                await collect_chat(stream)
        (info,) = manager.history()
        assert info.close_reason is CloseReason.UPSTREAM_TRUNCATED


async def test_finish_reason_without_done_is_complete(autojump_clock: trio.abc.Clock) -> None:
    client, _ = transport([chunk({"content": "ok"}), chunk({}, finish="stop")])
    async with client, StreamManager() as manager, manager.open(chat(client)) as stream:
        assert (await collect_chat(stream)).text == "ok"


@pytest.mark.parametrize(
    "error_event",
    [
        b'data: {"error": {"message": "The server had an error", "type": "server_error", '
        b'"code": "500"}}\n\n',
        b'event: error\ndata: {"message": "The server had an error", "type": "server_error", '
        b'"code": "500"}\n\n',
    ],
)
async def test_in_stream_error_object(autojump_clock: trio.abc.Clock, error_event: bytes) -> None:
    client, _ = transport([chunk({"content": "par"}), error_event])
    async with client, StreamManager() as manager:
        received = []
        with pytest.raises(streammgr.UpstreamAPIError, match="The server had an error") as caught:
            async with manager.open(chat(client)) as stream:
                async for item in stream:
                    received.append(item.content)
        assert received == ["par"]
        assert (caught.value.error_type, caught.value.code) == ("server_error", "500")
        (info,) = manager.history()
        assert info.close_reason is CloseReason.UPSTREAM_ERROR


async def test_data_that_is_not_json(autojump_clock: trio.abc.Clock) -> None:
    client, _ = transport([b"data: <html>oops</html>\n\n"])
    async with client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamProtocolError, match="not JSON"):
            async with manager.open(chat(client)) as stream:
                await collect_chat(stream)


async def test_status_error_names_the_upstream_message(autojump_clock: trio.abc.Clock) -> None:
    body = json.dumps(
        {"error": {"message": f"Incorrect API key provided: {API_KEY[:8]}***", "code": "x"}}
    ).encode()
    client, _ = transport([body], status=401, content_type="application/json")
    async with client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamStatusError) as caught:
            async with manager.open(chat(client)) as stream:
                await collect_chat(stream)
    assert caught.value.status_code == 401
    assert "Incorrect API key provided" in str(caught.value)
    assert "check the API key" in str(caught.value)


async def test_api_key_never_leaks(autojump_clock: trio.abc.Clock) -> None:
    """Search every log line, error message, snapshot and repr for the key."""
    structlog_errors = [
        [f'data: {{"error": {{"message": "bad key {API_KEY}"}}}}\n\n'.encode()],
        [f"data: not json {API_KEY}\n\n".encode()],
    ]
    client, _ = transport(*structlog_errors, HELLO)
    texts: list[str] = []
    with capture_logs() as logs:
        async with client, StreamManager() as manager:
            source = chat(client)
            for _ in range(2):
                with pytest.raises(streammgr.UpstreamError) as caught:
                    async with manager.open(source) as stream:
                        await collect_chat(stream)
                texts += [str(caught.value), repr(caught.value), caught.value.url]
            async with manager.open(source) as stream:
                texts.append(repr(stream))
                texts.append(repr(await collect_chat(stream)))
            texts += [repr(source), repr(manager.history()), repr(manager.stats())]
    texts.append(repr(logs))
    assert any("[REDACTED]" in text for text in texts)
    for text in texts:
        assert API_KEY not in text
        assert API_KEY[3:] not in text


def test_bad_arguments_are_named() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="api_key must be a non-empty str"):
        OpenAIChat(client, api_key="", model="m", messages=[{"role": "user"}])
    with pytest.raises(ValueError, match="messages must hold"):
        OpenAIChat(client, api_key="k", model="m", messages=[])
    with pytest.raises(ValueError, match="always streams"):
        OpenAIChat(client, api_key="k", model="m", messages=[{"a": 1}], stream=False)


@pytest.mark.parametrize(
    "payload",
    [
        b'data: {"choices": ["oops"]}\n\n',
        b'data: {"choices": [{"index": null, "delta": {}}]}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": null}}\n\n',
    ],
)
async def test_malformed_chunk_is_a_protocol_error(
    autojump_clock: trio.abc.Clock, payload: bytes
) -> None:
    client, _ = transport([payload])
    async with client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamProtocolError, match="malformed chunk"):
            async with manager.open(chat(client)) as stream:
                await collect_chat(stream)


HEX_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"  # an Azure-style key: no credential shape


@pytest.mark.parametrize("cut_into", [1, 16, 31])
async def test_a_key_at_the_excerpt_cut_does_not_leak(
    autojump_clock: trio.abc.Clock, cut_into: int
) -> None:
    """The upstream echoes the key where the 200-character excerpt is cut."""
    data = "x" * (200 - cut_into) + HEX_KEY + " is not valid"
    client, _ = transport([f"data: {data}\n\n".encode()])
    async with client, StreamManager() as manager:
        source = OpenAIChat(
            client, api_key=HEX_KEY, model="m", messages=[{"role": "user"}], base_url=BASE
        )
        with pytest.raises(streammgr.UpstreamProtocolError) as caught:
            async with manager.open(source) as stream:
                await collect_chat(stream)
        history = recorded_text(manager)
    assert "not JSON" in str(caught.value)
    assert_no_fragment(HEX_KEY, str(caught.value), history)


async def test_a_key_in_a_malformed_chunk_does_not_leak(autojump_clock: trio.abc.Clock) -> None:
    # int() quotes the value it could not read in its own error message.
    body = f'data: {{"choices": [{{"index": "{HEX_KEY}", "delta": {{}}}}]}}\n\n'.encode()
    client, _ = transport([body])
    async with client, StreamManager() as manager:
        source = OpenAIChat(
            client, api_key=HEX_KEY, model="m", messages=[{"role": "user"}], base_url=BASE
        )
        with pytest.raises(streammgr.UpstreamProtocolError) as caught:
            async with manager.open(source) as stream:
                await collect_chat(stream)
    assert "malformed chunk" in str(caught.value)
    assert_no_fragment(HEX_KEY, str(caught.value))


@pytest.mark.parametrize("offset", [0, 10, 30])
async def test_a_key_in_a_wrongly_typed_field_does_not_leak_at_any_cut(
    autojump_clock: trio.abc.Clock, offset: int
) -> None:
    # The wrong value is quoted in the message; the key sits where a cut of the value
    # alone would fall: the message must be redacted before anything is cut.
    value = "x" * offset + HEX_KEY
    body = f'data: {{"choices": [{{"index": 0, "delta": {{"role": ["{value}"]}}}}]}}\n\n'
    client, _ = transport([body.encode()])
    async with client, StreamManager() as manager:
        source = OpenAIChat(
            client, api_key=HEX_KEY, model="m", messages=[{"role": "user"}], base_url=BASE
        )
        with pytest.raises(streammgr.UpstreamProtocolError, match="role") as caught:
            async with manager.open(source) as stream:
                await collect_chat(stream)
        history = recorded_text(manager)
    assert_no_fragment(HEX_KEY, str(caught.value), history)


def test_an_encoded_password_in_base_url_is_redacted() -> None:
    source = OpenAIChat(
        httpx.AsyncClient(),
        api_key=API_KEY,
        model="m",
        messages=[{"role": "user"}],
        base_url="https://proxy:pa%2Bss%2Fw0rd%3D@gateway.example/v1",
    )
    assert source.url == "https://proxy:[REDACTED]@gateway.example/v1/chat/completions"
    assert "[REDACTED]@gateway.example" in repr(source)


async def test_deeply_nested_json_is_a_protocol_error(autojump_clock: trio.abc.Clock) -> None:
    client, _ = transport([b"data: " + b"[" * 100_000 + b"\n\n"])
    async with client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamProtocolError, match="nested too deeply"):
            async with manager.open(chat(client)) as stream:
                await collect_chat(stream)
        (info,) = manager.history()
        assert info.close_reason is CloseReason.UPSTREAM_ERROR


def choice_with(**fields: object) -> dict[str, object]:
    return {"index": 0, "delta": {}, "finish_reason": None, **fields}


def tool_call_with(**fields: object) -> dict[str, object]:
    call: dict[str, object] = {"index": 0, "id": "call_1", "type": "function"}
    call["function"] = {"name": "f", "arguments": "{}"}
    call.update(fields)
    return call


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"id": 7, "choices": []}, "id must be a string, got an integer"),
        ({"model": ["m"], "choices": []}, "model must be a string, got an array"),
        ({"choices": {"0": {}}}, "choices must be an array or null, got an object"),
        ({"choices": [choice_with(delta={"content": 5})]},
         "choices[0].delta.content must be a string or null, got an integer (5)"),
        ({"choices": [choice_with(delta={"role": True})]},
         "choices[0].delta.role must be a string or null, got a boolean"),
        ({"choices": [choice_with(delta="hi")]},
         "choices[0].delta must be an object or null, got a string"),
        ({"choices": [choice_with(), choice_with(index="1")]},
         "choices[1].index must be an integer, got a string"),
        ({"choices": [choice_with(index=True)]}, "choices[0].index must be an integer"),
        ({"choices": [choice_with(finish_reason=1.5)]},
         "choices[0].finish_reason must be a string or null, got a number"),
        ({"choices": [choice_with(delta={"tool_calls": {}})]},
         "choices[0].delta.tool_calls must be an array or null"),
        ({"choices": [choice_with(delta={"tool_calls": [None]})]},
         "choices[0].delta.tool_calls[0] must be an object, got null"),
        ({"choices": [choice_with(delta={"tool_calls": [tool_call_with(index=None)]})]},
         "choices[0].delta.tool_calls[0].index must be an integer, got null"),
        ({"choices": [choice_with(delta={"tool_calls": [tool_call_with(id=1)]})]},
         "choices[0].delta.tool_calls[0].id must be a string or null"),
        ({"choices": [choice_with(delta={"tool_calls": [tool_call_with(type={})]})]},
         "choices[0].delta.tool_calls[0].type must be a string or null"),
        ({"choices": [choice_with(delta={"tool_calls": [tool_call_with(function="f")]})]},
         "choices[0].delta.tool_calls[0].function must be an object or null"),
        ({"choices": [choice_with(delta={"tool_calls": [tool_call_with(function={"name": 2})]})]},
         "choices[0].delta.tool_calls[0].function.name must be a string or null"),
        ({"choices": [choice_with(delta={"tool_calls": [
            tool_call_with(function={"arguments": {"city": "Paris"}})]})]},
         "choices[0].delta.tool_calls[0].function.arguments must be a string or null"),
        ({"choices": [], "usage": 12}, "usage must be an object or null, got an integer"),
        ({"choices": [], "usage": {"prompt_tokens": "5"}},
         "usage.prompt_tokens must be an integer, got a string"),
        ({"choices": [], "usage": {"completion_tokens": 2.0}}, "usage.completion_tokens"),
        ({"choices": [], "usage": {"total_tokens": False}}, "usage.total_tokens"),
    ],
)  # fmt: skip
async def test_every_chunk_field_is_type_checked(
    autojump_clock: trio.abc.Clock, payload: dict[str, object], message: str
) -> None:
    body = f"data: {json.dumps(payload)}\n\n".encode()
    client, _ = transport([chunk({"content": "fine"}), body, chunk({}, finish="stop")])
    async with client, StreamManager() as manager:
        with pytest.raises(streammgr.UpstreamProtocolError, match="malformed chunk") as caught:
            async with manager.open(chat(client)) as stream:
                await collect_chat(stream)
        assert message in str(caught.value)
        (info,) = manager.history()
        assert info.close_reason is CloseReason.UPSTREAM_ERROR  # never "completed"


async def test_nulls_the_api_allows_are_accepted(autojump_clock: trio.abc.Clock) -> None:
    nulls = [
        chunk({"role": "assistant", "content": None, "tool_calls": None, "refusal": None}),
        chunk({"tool_calls": [{"index": 0, "id": None, "type": None, "function": None}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": None, "arguments": None}}]}),
        chunk({"content": "ok"}, usage=None),
        b'data: {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": null}]}\n\n',
        b'data: {"id": "chatcmpl-1", "choices": null, "error": null}\n\n',
        chunk({}, finish="stop"),
        b"data: [DONE]\n\n",
    ]
    client, _ = transport(nulls)
    async with client, StreamManager() as manager, manager.open(chat(client)) as stream:
        answer = await collect_chat(stream)
    assert (answer.text, answer.finish_reason, answer.usage) == ("ok", "stop", None)
    assert answer.tool_calls == (ToolCall("", "function", "", ""),)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=2)
        | st.dictionaries(st.sampled_from(["index", "content", "name", "x"]), children, max_size=2)
    ),
    max_leaves=4,
)
VALID = {
    "id": "chatcmpl-1",
    "model": "m",
    "choices": [
        {
            "index": 0,
            "delta": {
                "role": "assistant",
                "content": "hi",
                "tool_calls": [
                    {"index": 0, "id": "c", "type": "function",
                     "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "finish_reason": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}  # fmt: skip


def paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every place in ``value`` a field or an item can be replaced."""
    found: list[tuple[object, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*prefix, key))
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found.append((*prefix, position))
            found += paths(item, (*prefix, position))
    return found


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(paths(VALID)), value=JSON_VALUES)
def test_any_field_of_any_json_type_is_typed_or_refused(
    path: tuple[object, ...], value: object
) -> None:
    payload = copy.deepcopy(VALID)
    target: Any = payload
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    try:
        chunks = _chunks_of(payload)
    except _MalformedChunk as exc:
        refused = str(exc)
        chunks = []
    else:
        refused = ""
    if refused:  # names the field, what it must be and what came
        assert re.fullmatch(r"[a-z_.\[\]0-9]+ must be (a|an) [a-z ]+, got .+", refused)
    for item in chunks:
        assert isinstance(item.id, str)
        assert isinstance(item.model, str)
        assert type(item.index) is int
        for name in ("role", "content", "finish_reason"):
            assert getattr(item, name) is None or isinstance(getattr(item, name), str)
        for call in item.tool_calls:
            assert type(call.index) is int
            for name in ("id", "type", "name", "arguments"):
                assert getattr(call, name) is None or isinstance(getattr(call, name), str)
        if item.usage is not None:
            usage = item.usage
            counts = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
            assert all(type(count) is int for count in counts)


class Reads(httpx.AsyncByteStream):
    """A response body that arrives in the given reads."""

    def __init__(self, reads: Sequence[bytes]) -> None:
        self.reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for read in self.reads:
            await trio.lowlevel.checkpoint()
            yield read


def streaming(reads: Sequence[bytes]) -> httpx.AsyncClient:
    async def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=Reads(reads)
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_the_chunks_of_one_read_are_one_batch(autojump_clock: trio.abc.Clock) -> None:
    reads = [
        b"".join(HELLO[:3]),  # a comment, the role chunk, "Hel"
        HELLO[3],
        b": keep-alive\n\n",  # no chunk: no batch
        b"".join(HELLO[4:]),  # finish, usage, [DONE]
    ]
    async with streaming(reads) as client, StreamManager() as manager:
        async with manager.open(chat(client)) as stream:
            batches = [batch async for batch in stream.batches()]
        (info,) = manager.history()
    assert [[chunk.content for chunk in batch] for batch in batches] == [
        ["", "Hel"],
        ["lo"],
        [None, None],
    ]
    assert batches[2][1].usage == Usage(5, 2, 7)
    assert info.close_reason is CloseReason.COMPLETED
    assert info.items == 5


async def test_chunks_read_with_an_error_are_delivered_before_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    error = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    reads = [chunk({"content": "a"}) + chunk({"content": "b"}) + error + chunk({"content": "c"})]
    async with streaming(reads) as client, StreamManager() as manager:
        async with manager.open(chat(client)) as stream:
            assert [item.content for item in await stream.batches().__anext__()] == ["a", "b"]
            with pytest.raises(streammgr.UpstreamAPIError, match="overloaded"):
                await stream.__anext__()


async def test_collect_chat_on_the_iterator_and_on_a_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    reads = [b"".join(HELLO[:3]), b"".join(HELLO[3:])]
    async with streaming(reads) as client, StreamManager() as manager:
        chunks = chat(client)()
        assert isinstance(chunks, streammgr.BatchIterator)
        async with aclosing(chunks):
            direct = await collect_chat(chunks)
        async with manager.open(chat(client)) as stream:
            managed = await collect_chat(stream)
    assert direct == managed
    assert (direct.text, direct.finish_reason, direct.usage) == ("Hello", "stop", Usage(5, 2, 7))
