"""Notes: what a producer records about its own stream (finish reason, token counts).

``ProducerContext.annotate`` in the core; the OpenAI source and the gateway's raw
forwarding record an answer's ``finish_reason`` and usage; the inspection API and the
metrics show them. Notes stay bounded and carry no secret whatever an upstream sends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import streammgr
from streammgr import CloseReason, StreamManager, current_producer
from streammgr.server import gateway_app
from streammgr.server._gateway import _has_outcome, _note_outcome_of
from streammgr.server._metrics import AdminMetrics
from streammgr.simulate import SimulatedTransport, SimulatedUpstream
from streammgr.sources import OpenAIChat, SourceTimeouts

from .server_helpers import Server

BASE = "http://simulated.local/v1"
MESSAGES = [{"role": "user", "content": "hello there"}]


async def annotating(*notes: dict[str, Any]) -> AsyncIterator[str]:
    producer = streammgr.current_producer()
    assert producer is not None
    for note in notes:
        producer.annotate(**note)
        yield "item"


# -- the core ------------------------------------------------------------------------------


async def test_notes_appear_in_snapshots_and_stay_in_history() -> None:
    noted = trio.Event()
    go_on = trio.Event()

    async def producer() -> AsyncIterator[str]:
        context = streammgr.current_producer()
        assert context is not None
        context.annotate(finish_reason="length", tokens=1)
        noted.set()
        await go_on.wait()
        context.annotate(finish_reason="stop", tokens=3, cached=None)
        yield "item"

    async with StreamManager() as manager:
        async with manager.open(producer) as stream:
            await noted.wait()
            assert dict(stream.info().notes) == {"finish_reason": "length", "tokens": 1}
            go_on.set()
            assert [item async for item in stream] == ["item"]
        (closed,) = manager.history()
    assert closed.close_reason is CloseReason.COMPLETED
    assert dict(closed.notes) == {"finish_reason": "stop", "tokens": 3, "cached": None}
    assert closed.to_dict()["notes"] == {"finish_reason": "stop", "tokens": 3, "cached": None}
    with pytest.raises(TypeError):
        closed.notes["tokens"] = 4  # type: ignore[index]


@pytest.mark.parametrize(
    ("note", "error", "words"),
    [
        ({"usage": {"prompt_tokens": 1}}, TypeError, "must be a str, int, float, bool or None"),
        ({"text": "x" * 257}, ValueError, "257 characters long; the most is 256"),
        ({f"n{i}": i for i in range(33)}, ValueError, "at most 32 notes"),
    ],
)
async def test_a_bad_note_is_a_clear_error_of_the_producer(
    note: dict[str, Any], error: type[Exception], words: str
) -> None:
    async with StreamManager() as manager, manager.open(annotating, note) as stream:
        with pytest.raises(error, match=words):
            await anext(stream)
    (closed,) = manager.history()
    assert closed.close_reason is CloseReason.PRODUCER_ERROR
    assert closed.notes == {}


async def test_notes_after_the_close_are_ignored() -> None:
    saved: list[streammgr.ProducerContext] = []

    async def producer() -> AsyncIterator[int]:
        context = streammgr.current_producer()
        assert context is not None
        saved.append(context)
        yield 1

    async with StreamManager() as manager:
        async with manager.open(producer) as stream:
            assert [item async for item in stream] == [1]
        saved[0].annotate(late=True)
        (closed,) = manager.history()
    assert closed.notes == {}


# -- the OpenAI source ---------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_chat_notes_the_finish_reason_and_usage(include_usage: bool) -> None:
    upstream = SimulatedUpstream(first_token_latency=0, token_latency=0)
    async with (
        httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http,
        StreamManager() as manager,
    ):
        chat = OpenAIChat(
            http,
            api_key="sk-test",
            model="sim-small",
            messages=MESSAGES,
            base_url=BASE,
            include_usage=include_usage,
            extra_body={"max_tokens": 4},
        )
        async with manager.open(chat) as stream:
            chunks = [chunk async for chunk in stream]
        (closed,) = manager.history()
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    expected: dict[str, Any] = {"finish_reason": "length"}
    if include_usage:
        (counts,) = usage
        assert counts.completion_tokens == 4
        expected |= {
            "prompt_tokens": counts.prompt_tokens,
            "completion_tokens": 4,
            "total_tokens": counts.total_tokens,
        }
    else:
        assert usage == []
    assert dict(closed.notes) == expected


# -- the gateway ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "noted"),
    [
        ('{"choices":[{"delta":{"content":"a"},"finish_reason":null}],"usage":null}', False),
        ('{"choices":[{"delta":{},"finish_reason":"stop"}]}', True),
        ('{"choices": [{"delta": {}, "finish_reason" :  "stop"}]}', True),
        ('{"choices":[],"usage":{"prompt_tokens":1}}', True),
        ('{"choices":[{"delta":{"content":"\\"finish_reason\\": \\"stop\\""}}]}', False),
        ('{"choices":[{"delta":{"content":"b"}}]}', False),
    ],
)
def test_the_gateway_looks_inside_only_chunks_with_an_outcome(data: str, noted: bool) -> None:
    assert json.loads(data)  # each case is a JSON chunk
    assert _has_outcome(data) is noted


@pytest.mark.parametrize("stream", [True, False])
async def test_the_gateway_records_the_outcome_of_each_answer(
    nursery: trio.Nursery, stream: bool
) -> None:
    upstream = SimulatedUpstream(first_token_latency=0.001, token_latency=0.001)
    async with (
        httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http,
        StreamManager() as manager,
    ):
        metrics = AdminMetrics(manager)
        await nursery.start(metrics.run_feed)
        app = gateway_app(
            manager, http, upstream_url=BASE, upstream_timeouts=SourceTimeouts(connect=2.0)
        )
        server = await Server().start(nursery, app)
        body: dict[str, Any] = {
            "model": "sim-small",
            "messages": MESSAGES,
            "stream": stream,
            "max_tokens": 3,
            "stream_options": {"include_usage": True},
        }
        if not stream:
            del body["stream_options"]  # stream: false always asks for usage
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{server.url}/v1/chat/completions", json=body)
            plain = dict(body, stream_options={"include_usage": False}) if stream else body
            await client.post(f"{server.url}/v1/chat/completions", json=plain)
        assert answer.status_code == 200
        await trio.testing.wait_all_tasks_blocked()
        with_usage, second = manager.history()
        rendered = metrics.render().decode()
        server.stop.set()
    assert with_usage.notes["finish_reason"] == "length"
    assert with_usage.notes["completion_tokens"] == 3
    prompt = with_usage.notes["prompt_tokens"]
    assert isinstance(prompt, int)
    assert prompt > 0
    assert with_usage.notes["total_tokens"] == prompt + 3
    if stream:  # without include_usage the upstream sends no counts: only the reason
        assert dict(second.notes) == {"finish_reason": "length"}
    assert 'streammgr_request_success_total{finished_reason="length"} 2.0' in rendered
    generated = 3.0 if stream else 6.0
    assert f"streammgr_generation_tokens_total {generated}" in rendered
    expected_prompt = 2 * prompt if not stream else prompt
    assert f"streammgr_prompt_tokens_total {float(expected_prompt)}" in rendered


# -- notes from odd chunks: bounded, never failing the stream, never a secret --------------

HOSTILE_CHUNKS = [
    '{"choices":[{"index":0,"delta":{},"finish_reason":5}]}',
    '{"choices":[{"index":0,"delta":{},"finish_reason":{"a":1}}]}',
    '{"choices":[{"index":0,"delta":{},"finish_reason":"' + "s" * 100_000 + '"}]}',
    '{"choices":[],"usage":{"prompt_tokens":-5,"completion_tokens":true,"total_tokens":1.5}}',
    '{"choices":[],"usage":{"prompt_tokens":' + "9" * 400 + ',"completion_tokens":1}}',
    '{"choices":[],"usage":{"prompt_tokens":' + "9" * 5000 + "}}",  # over int's digit limit
    '{"choices":[],"usage":[1,2,3]}',
    '{"choices":[],"usage":"lots"}',
    '{"choices":' + json.dumps([{"finish_reason": str(n)} for n in range(10_000)]) + "}",
    '{"content":"\\"usage\\": {","choices":[]}',
    '{"content":"\\"finish_reason\\": \\"stop\\"","choices":[]}',
    '{"usage": {',
    "[1,2]",
    '"usage"',
]


async def test_hostile_chunks_never_fail_the_raw_path_and_keep_notes_bounded() -> None:
    async with StreamManager() as manager:

        async def producer() -> AsyncIterator[str]:
            for chunk in HOSTILE_CHUNKS * 3:  # usage in every chunk, too
                if _has_outcome(chunk):
                    _note_outcome_of(chunk)
                yield chunk

        async with manager.open(producer) as stream:
            assert len([chunk async for chunk in stream]) == len(HOSTILE_CHUNKS) * 3
        (info,) = manager.history()
    assert info.close_reason is CloseReason.COMPLETED
    assert set(info.notes) <= {
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    }
    assert all(len(value) <= 64 for value in info.notes.values() if isinstance(value, str))


@pytest.mark.parametrize(
    "chunk",
    [
        '{"choices":[{"index":0,"delta":{},"logprobs":{"finish_reason":null},'
        '"finish_reason":"stop"}]}',
        '{"meta":{"usage":null},"choices":[],"usage":{"prompt_tokens":3}}',
    ],
)
def test_an_outcome_after_a_nested_null_of_the_same_name_is_seen(chunk: str) -> None:
    # The cheap check looked at the first occurrence of the name only.
    assert _has_outcome(chunk)


async def test_annotating_in_a_tight_loop_and_on_a_cancelled_stream() -> None:
    async with StreamManager() as manager:
        done = trio.Event()

        async def producer() -> AsyncIterator[int]:
            context = current_producer()
            assert context is not None
            for number in range(10_000):
                context.annotate(step=number)
            yield 1
            done.set()
            await trio.sleep_forever()
            yield 2

        async with manager.open(producer) as stream:
            async for _ in stream:
                await done.wait()
                manager.cancel(stream.id)
                break
        (info,) = manager.history()
    assert info.close_reason is CloseReason.CANCELLED
    assert info.notes == {"step": 9999}


async def test_a_note_never_carries_a_secret_of_the_manager(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="streammgr")
    secret = "sk-manager-secret-0123456789"
    seen: list[Any] = []
    async with StreamManager(secrets=[secret]) as manager:

        async def producer() -> AsyncIterator[int]:
            context = current_producer()
            assert context is not None
            context.annotate(finish_reason=f"the key {secret} was refused", model="m-1")
            seen.append(manager.streams()[0].notes)  # the live registry too
            yield 1

        async with manager.open(producer) as stream:
            async for _ in stream:
                pass
        (info,) = manager.history()
    assert info.notes["model"] == "m-1"
    assert "refused" in str(info.notes["finish_reason"])
    for text in (json.dumps(info.to_dict()), json.dumps(dict(seen[0])), caplog.text):
        assert secret not in text


# -- notes in the metrics ------------------------------------------------------------------


async def test_huge_token_counts_do_not_break_the_metrics_feed() -> None:
    # An upstream's usage with a 400-digit count is a valid int: noted, and the
    # metrics feed (run in the admin app's lifespan) must count it or skip it, not die.
    async with StreamManager() as manager:

        async def producer() -> AsyncIterator[str]:
            _note_outcome_of(HOSTILE_CHUNKS[4])
            yield "x"

        metrics = AdminMetrics(manager)
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.run_feed)
            async with manager.open(producer) as stream:
                async for _ in stream:
                    pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        (info,) = manager.history()
        assert info.notes["prompt_tokens"] == int("9" * 400)
        assert b"streammgr_completion_tokens_total 1.0" in metrics.render().replace(
            b"generation", b"completion"
        )


async def test_finish_reasons_of_a_hostile_upstream_keep_the_metrics_labels_bounded() -> None:
    async with StreamManager() as manager:
        metrics = AdminMetrics(manager)
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.run_feed)
            for number in range(200):

                async def producer(number: int = number) -> AsyncIterator[str]:
                    reason = f"reason-{number}" if number else "stop"
                    _note_outcome_of(
                        json.dumps({"choices": [{"finish_reason": reason}], "usage": None})
                    )
                    yield "x"

                async with manager.open(producer) as stream:
                    async for _ in stream:
                        pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    lines = [
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith("streammgr_finished_reason") or "finished_reason=" in line
    ]
    counted = [line for line in lines if not line.startswith("#") and "_created" not in line]
    assert sorted(line.split('"')[1] for line in counted) == ["other", "stop"]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 200
