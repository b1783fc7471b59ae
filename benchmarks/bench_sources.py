"""Sources benchmark: an OpenAI-style SSE response through streammgr's source layer.

Run it with::

    .venv/bin/python benchmarks/bench_sources.py [--quick]

Every row streams the same in-memory upstream: an ``httpx.MockTransport`` that
answers each request with a ``text/event-stream`` response whose body is an
``httpx.AsyncByteStream`` yielding a pre-built chat completion stream (a role
chunk, content chunks, a ``finish_reason`` chunk, a few ``: keep-alive`` comments
and ``data: [DONE]``) in 1-4 KiB chunks, as TCP reads would. No network. Rows:

1. ``SSESource`` read directly (``async for event in SSESource(client, url)()``);
2. ``SSESource`` through a ``StreamManager``: the full path, registry counting included;
2B. the same, read with ``stream.batches()``: the events of one upstream read arrive
   as one list, in one hand-off (the source hands over a batch per read either way);
F. for information, the floor under row 2: row 1's generator in a nursery task, in its
   own cancel scope, handing each event to the reader over a bare Trio memory channel;
3. ``SSESource.raw_events`` through a manager (raw mode, for proxies), if
   ``SSEParser.feed_raw`` exists; 3B. read with ``stream.batches()``; 3C.
   ``SSESource.raw_batches`` with ``stream.batches()``: each read's bytes in one piece;
4. ``OpenAIChat`` through a manager: JSON decoding and typed ``ChatChunk`` items;
   4B. read with ``stream.batches()``;
5. httpx-sse: ``aconnect_sse(client, "GET", url)`` + ``event_source.aiter_sse()``;
6. the openai SDK's own streaming (``AsyncOpenAI(http_client=...)``,
   ``chat.completions.create(..., stream=True)``), under Trio when it works there,
   else under asyncio (and labelled so; ``--openai-on asyncio`` forces that).

Everything runs under ``trio.run``, in one run: the rows take turns within each
repeat, so that a slow spell of the machine does not fall on one of them only.
Before timing, it checks that every row delivers the same events. structlog is
configured as production apps run it (filtering below WARNING).

Printed: the median of several repeats per row (events/s, MB/s), and time ratios:
manager/direct (2/1 and 2B/1), manager/bare channel (2/F), batches/items (2B/2),
raw/parsed (3/2), streammgr/httpx-sse (2/5, 2B/5 and 1/5) and OpenAIChat/openai SDK
(4/6 and 4B/6). One run, one machine: compare ratios,
not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import platform
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import httpx
import structlog
import trio

import streammgr
from streammgr.sources import OpenAIChat, SSESource
from streammgr.sse import ServerSentEvent, SSEParser

try:
    import openai
    from httpx_sse import aconnect_sse
except ImportError as exc:  # pragma: no cover
    sys.exit(f"{exc}: install the benchmark extras first: pip install -e '.[dev,bench]'")

BASE_URL = "http://llm.local/v1"
URL = BASE_URL + "/chat/completions"
API_KEY = "sk-test"
MODEL = "gpt-4o-mini"
DONE = "[DONE]"
KEEP_ALIVE = b": keep-alive\n\n"

TOKENS = (
    "Hello",
    " world",
    ",",
    " the",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " über",
    " naïve",
    " 日本語",
    " 🚀",
    "\n\n",
    ' "quoted"',
    " a",
    ".",
)


# -- the upstream ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    """The pre-built response: its bytes, cut into chunks, and what it holds."""

    body: bytes
    chunks: tuple[bytes, ...]
    data: tuple[str, ...]  # the data of every event, data: [DONE] included
    text: str  # the answer's text, joined from the content deltas


def build_upstream(events: int, seed: int = 1) -> Upstream:
    """A chat completion of ``events`` chunk events, then ``data: [DONE]``.

    The first event carries the role, the last the finish reason, the rest one
    token of content each; a keep-alive comment comes every 1,000 events.
    """
    rng = random.Random(seed)
    parts: list[bytes] = []
    data: list[str] = []
    text: list[str] = []
    for index in range(events):
        if index % 1000 == 500:
            parts.append(KEEP_ALIVE)
        delta: dict[str, str] = {}
        finish_reason: str | None = None
        if index == 0:
            delta = {"role": "assistant", "content": ""}
        elif index == events - 1:
            finish_reason = "stop"
        else:
            delta = {"content": rng.choice(TOKENS)}
            text.append(delta["content"])
        chunk = {
            "id": "chatcmpl-9xQ2bLr7Tz1kVh3sYc0mDnPq",
            "object": "chat.completion.chunk",
            "created": 1732530000 + index // 50,
            "model": MODEL,
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        payload = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
        data.append(payload)
        parts.append(b"data: " + payload.encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    data.append(DONE)
    body = b"".join(parts)
    split = random.Random(seed + 1)
    chunks: list[bytes] = []
    offset = 0
    while offset < len(body):
        size = split.randint(1024, 4096)
        chunks.append(body[offset : offset + size])
        offset += size
    return Upstream(body, tuple(chunks), tuple(data), "".join(text))


class ChunkStream(httpx.AsyncByteStream):
    """A response body that yields pre-built chunks, as reads from a socket would."""

    def __init__(self, chunks: tuple[bytes, ...]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def mock_transport(upstream: Upstream) -> httpx.MockTransport:
    """Every request gets a fresh event stream of ``upstream``'s chunks."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream; charset=utf-8"},
            stream=ChunkStream(upstream.chunks),
        )

    return httpx.MockTransport(handler)


# -- the rows: each streams the whole response and returns what it received -------------


@dataclass(slots=True)
class Env:
    """What the rows share: one httpx client, one openai client, and under Trio one
    manager and one nursery (``None`` when row 6 runs alone under asyncio)."""

    client: httpx.AsyncClient
    openai: openai.AsyncOpenAI
    manager: streammgr.StreamManager | None = None
    nursery: trio.Nursery | None = None

    def managed(self) -> streammgr.StreamManager:
        assert self.manager is not None
        return self.manager


# A row reads the whole response. With ``keep`` it returns the items (to check them),
# else only their count; the timed runs count.
Row = Callable[[Env, bool], Awaitable[list[object] | int]]


def chat_source(env: Env) -> OpenAIChat:
    return OpenAIChat(
        env.client,
        api_key=API_KEY,
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        base_url=BASE_URL,
    )


async def row_direct(env: Env, keep: bool) -> list[object] | int:
    kept: list[object] = []
    count = 0
    async with aclosing(SSESource(env.client, URL)()) as events:
        async for event in events:
            count += 1
            if keep:
                kept.append(event)
    return kept if keep else count


async def row_managed(env: Env, keep: bool) -> list[object] | int:
    kept: list[object] = []
    count = 0
    async with env.managed().open(SSESource(env.client, URL)) as stream:
        async for event in stream:
            count += 1
            if keep:
                kept.append(event)
    return kept if keep else count


async def read_batches(env: Env, producer: object, keep: bool) -> list[object] | int:
    """Read a managed stream a batch at a time (``stream.batches()``)."""
    kept: list[object] = []
    count = 0
    async with env.managed().open(producer) as stream:  # type: ignore[call-overload]
        async for batch in stream.batches():
            count += len(batch)
            if keep:
                kept.extend(batch)
    return kept if keep else count


async def row_managed_batches(env: Env, keep: bool) -> list[object] | int:
    return await read_batches(env, SSESource(env.client, URL), keep)


async def row_managed_raw_batches(env: Env, keep: bool) -> list[object] | int:
    return await read_batches(env, SSESource(env.client, URL).raw_events, keep)


async def row_managed_raw_one_piece(env: Env, keep: bool) -> list[object] | int:
    """raw_batches with batches(): what a proxy forwards in one write per read."""
    kept: list[object] = []
    count = 0
    source = SSESource(env.client, URL)
    async with env.managed().open(source.raw_batches) as stream:
        async for batch in stream.batches():
            count += len(batch)
            if keep:
                kept.extend(zip(batch, [batch.raw] + [b""] * (len(batch) - 1), strict=True))  # type: ignore[attr-defined]
    return kept if keep else count


async def row_openai_chat_batches(env: Env, keep: bool) -> list[object] | int:
    return await read_batches(env, chat_source(env), keep)


async def row_managed_raw(env: Env, keep: bool) -> list[object] | int:
    kept: list[object] = []
    count = 0
    async with env.managed().open(SSESource(env.client, URL).raw_events) as stream:
        async for pair in stream:
            count += 1
            if keep:
                kept.append(pair)
    return kept if keep else count


async def row_bare_channel(env: Env, keep: bool) -> list[object] | int:
    """The floor under row 2: row 1's generator run in a task of a shared nursery,
    in its own cancel scope, handing each event over a Trio memory channel (size 0,
    as the manager's default), with nothing of streammgr's manager around it."""
    assert env.nursery is not None
    send, receive = trio.open_memory_channel[ServerSentEvent](0)
    scope = trio.CancelScope()

    async def produce() -> None:
        with scope:
            async with send, aclosing(SSESource(env.client, URL)()) as events:
                async for event in events:
                    await send.send(event)

    env.nursery.start_soon(produce)
    kept: list[object] = []
    count = 0
    try:
        async with receive:
            async for event in receive:
                count += 1
                if keep:
                    kept.append(event)
    finally:
        scope.cancel()
    return kept if keep else count


async def row_openai_chat(env: Env, keep: bool) -> list[object] | int:
    kept: list[object] = []
    count = 0
    async with env.managed().open(chat_source(env)) as stream:
        async for chunk in stream:
            count += 1
            if keep:
                kept.append(chunk)
    return kept if keep else count


async def row_httpx_sse(env: Env, keep: bool) -> list[object] | int:
    kept: list[object] = []
    count = 0
    async with aconnect_sse(env.client, "GET", URL) as event_source:
        async for event in event_source.aiter_sse():
            count += 1
            if keep:
                kept.append(event)
    return kept if keep else count


async def row_openai_sdk(env: Env, keep: bool) -> list[object] | int:
    kept: list[object] = []
    count = 0
    stream = await env.openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}], stream=True
    )
    async with stream:
        async for chunk in stream:
            count += 1
            if keep:
                kept.append(chunk)
    return kept if keep else count


@dataclass(frozen=True, slots=True)
class RowSpec:
    id: str
    name: str
    run: Row
    # How the row's items are checked: "sse" (events with .data, [DONE] included),
    # "raw" ((event, bytes) pairs), "chat" (typed chunks, [DONE] consumed).
    kind: str


ROWS = {
    spec.id: spec
    for spec in (
        RowSpec("1", "SSESource direct", row_direct, "sse"),
        RowSpec("2", "SSESource + manager", row_managed, "sse"),
        RowSpec("2B", "SSESource + manager, batches()", row_managed_batches, "sse"),
        RowSpec("F", "bare Trio channel (floor of 2)", row_bare_channel, "sse"),
        RowSpec("3", "raw_events + manager", row_managed_raw, "raw"),
        RowSpec("3B", "raw_events + manager, batches()", row_managed_raw_batches, "raw"),
        RowSpec("3C", "raw_batches + manager, batches()", row_managed_raw_one_piece, "raw"),
        RowSpec("4", "OpenAIChat + manager", row_openai_chat, "chat"),
        RowSpec("4B", "OpenAIChat + manager, batches()", row_openai_chat_batches, "chat"),
        RowSpec("5", "httpx-sse aiter_sse", row_httpx_sse, "sse"),
        RowSpec("6", "openai SDK stream", row_openai_sdk, "chat"),
    )
}


def check_items(spec: RowSpec, items: list[object], upstream: Upstream) -> str | None:
    """Why ``items`` are not what ``upstream`` sent, or ``None`` if they are."""
    expected = list(upstream.data)
    if spec.kind == "sse":
        got = [event.data for event in items]  # type: ignore[attr-defined]
        if got != expected:
            return f"{len(got)} events, expected {len(expected)} (or different data)"
    elif spec.kind == "raw":
        got = [pair[0].data for pair in items]  # type: ignore[index]
        if got != expected:
            return f"{len(got)} events, expected {len(expected)} (or different data)"
        raw = b"".join(pair[1] for pair in items)  # type: ignore[index]
        if raw != upstream.body.replace(KEEP_ALIVE, b""):
            return "the raw bytes joined are not the body (without its comments)"
    else:
        if len(items) != len(expected) - 1:  # data: [DONE] ends the stream, no chunk
            return f"{len(items)} chunks, expected {len(expected) - 1}"
        text = "".join(_content(chunk) for chunk in items)
        if text != upstream.text:
            return "the joined content differs from the answer sent"
        last = items[-1]
        if _finish_reason(last) != "stop":
            return f"last chunk's finish_reason is {_finish_reason(last)!r}, not 'stop'"
    return None


def _content(chunk: object) -> str:
    if isinstance(chunk, streammgr.sources.ChatChunk):
        return chunk.content or ""
    return chunk.choices[0].delta.content or ""  # type: ignore[attr-defined]


def _finish_reason(chunk: object) -> str | None:
    if isinstance(chunk, streammgr.sources.ChatChunk):
        return chunk.finish_reason
    return chunk.choices[0].finish_reason  # type: ignore[attr-defined,no-any-return]


# -- running -----------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    seconds: list[float]
    count: int
    loop: str = "trio"


def open_clients(upstream: Upstream) -> tuple[httpx.AsyncClient, openai.AsyncOpenAI]:
    """An httpx client for rows 1-5 and an openai SDK client, both on the mock upstream."""
    transport = mock_transport(upstream)
    client = httpx.AsyncClient(transport=transport)
    sdk = openai.AsyncOpenAI(
        # Recent SDKs are typed for httpx2's client but accept an httpx one at run time.
        http_client=httpx.AsyncClient(transport=transport),  # type: ignore[arg-type,unused-ignore]
        api_key=API_KEY,
        base_url=BASE_URL,
        max_retries=0,
    )
    return client, sdk


async def measure(
    rows: list[RowSpec], upstream: Upstream, repeats: int, buffer_size: int | None = None
) -> tuple[dict[str, Result], dict[str, str]]:
    """Check every row, then time the rows that passed, taking turns.

    Returns the results, and why each failed row was left out.
    """
    client, sdk = open_clients(upstream)
    failed: dict[str, str] = {}
    results: dict[str, Result] = {}
    async with (
        client,
        sdk,
        (
            streammgr.StreamManager(max_streams=100, max_streams_per_key=10)
            if buffer_size is None
            else streammgr.StreamManager(
                max_streams=100, max_streams_per_key=10, buffer_size=buffer_size
            )
        ) as manager,
        trio.open_nursery() as nursery,
    ):
        env = Env(client, sdk, manager, nursery)
        timed: list[RowSpec] = []
        for spec in rows:
            try:
                items = await spec.run(env, True)
            except Exception as exc:
                failed[spec.id] = f"{type(exc).__name__}: {exc!r}"
                continue
            assert isinstance(items, list)
            problem = check_items(spec, items, upstream)
            if problem is not None:
                sys.exit(f"row {spec.id} ({spec.name}) disagrees with the upstream: {problem}")
            timed.append(spec)
            results[spec.id] = Result([], len(items))
        for _ in range(repeats):
            for spec in timed:
                gc.collect()
                start = time.perf_counter()
                count = await spec.run(env, False)
                elapsed = time.perf_counter() - start
                assert count == results[spec.id].count, (spec.id, count)
                results[spec.id].seconds.append(elapsed)
    return results, failed


async def measure_openai_asyncio(upstream: Upstream, repeats: int) -> Result:
    """Row 6 under asyncio, for when the SDK does not run under Trio."""
    client, sdk = open_clients(upstream)
    spec = ROWS["6"]
    async with client, sdk:
        env = Env(client, sdk)
        items = await spec.run(env, True)
        assert isinstance(items, list)
        problem = check_items(spec, items, upstream)
        if problem is not None:
            sys.exit(f"row 6 (under asyncio) disagrees with the upstream: {problem}")
        result = Result([], len(items), loop="asyncio")
        for _ in range(repeats):
            gc.collect()
            start = time.perf_counter()
            await spec.run(env, False)
            result.seconds.append(time.perf_counter() - start)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="the manager's buffer_size (default: the manager's own default, 16)",
    )
    parser.add_argument("--events", type=int, default=5000, help="chunk events in the stream")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row")
    parser.add_argument(
        "--openai-on",
        choices=("trio", "asyncio"),
        default="trio",
        help="run row 6 under this event loop (asyncio is the fallback if Trio fails)",
    )
    options = parser.parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    repeats = options.repeats or (5 if options.quick else 15)
    upstream = build_upstream(options.events)
    events = len(upstream.data) - 1  # the chunk events; data: [DONE] is the terminator

    rows = dict(ROWS)
    notes: list[str] = []
    if not hasattr(SSEParser, "feed_raw"):
        del rows["3"], rows["3B"], rows["3C"]
        notes.append("row 3 skipped: SSEParser.feed_raw does not exist yet")
    if options.openai_on == "asyncio":
        del rows["6"]

    results, failed = trio.run(measure, list(rows.values()), upstream, repeats, options.buffer_size)
    if "6" in failed or options.openai_on == "asyncio":
        if "6" in failed:
            notes.append(f"row 6 failed under Trio ({failed.pop('6')}): ran it under asyncio")
        try:
            results["6"] = asyncio.run(measure_openai_asyncio(upstream, repeats))
        except Exception as exc:
            notes.append(f"row 6 skipped: it fails under asyncio too: {exc!r}")
    for row, why in failed.items():
        notes.append(f"row {row} skipped: it failed: {why}")

    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}) "
        f"on {platform.machine()}; trio {trio.__version__}, httpx {httpx.__version__}, "
        f"openai {openai.__version__}"
    )
    print(
        f"stream: {events:,} chunk events + [DONE], {len(upstream.body):,} bytes in "
        f"{len(upstream.chunks)} chunks of 1-4 KiB; median of {repeats} runs per row;\n"
        f"every row checked first to deliver the same {events:,} events"
    )
    print(
        f"\n  {'row':<37} {'loop':<7} {'median ms':>9} {'events/s':>9} {'MB/s':>6} "
        f"{'items':>6} {'time/row 1':>10}"
    )
    medians = {row: statistics.median(result.seconds) for row, result in results.items()}
    for row, spec in ROWS.items():
        if row not in results:
            continue
        result = results[row]
        elapsed = medians[row]
        vs_first = f"{elapsed / medians['1']:.2f}x" if "1" in medians else "n/a"
        print(
            f"  {row:<2} {spec.name:<34} {result.loop:<7} {elapsed * 1e3:>9.2f} "
            f"{events / elapsed:>9,.0f} {len(upstream.body) / elapsed / 1e6:>6.1f} "
            f"{result.count:>6,} {vs_first:>10}"
        )
    print(
        "\n  items: the SSE rows pass data: [DONE] on as an event (+1), the chat rows consume"
        " it.\n  events/s: the stream's chunk events over each row's time. Row F (information):"
        " row 1\n  handed over a bare Trio memory channel from a nursery task, no streammgr"
        " manager.\n"
    )

    def ratio(what: str, ours: str, theirs: str) -> None:
        if ours not in medians or theirs not in medians:
            print(f"  {what:<50} {'n/a':>5} (a row was skipped)")
            return
        print(
            f"  {what:<50} {medians[ours] / medians[theirs]:5.2f}x the time "
            f"({medians[theirs] / medians[ours]:.2f}x the events/s)"
        )

    ratio("row 2 / row 1  the manager's overhead", "2", "1")
    ratio("row 2B / row 1 the manager's overhead, batches()", "2B", "1")
    ratio("row 2 / row F  manager vs bare Trio channel", "2", "F")
    ratio("row 2B / row 2 batches() vs item by item", "2B", "2")
    ratio("row 3 / row 2  raw mode vs parsed", "3", "2")
    ratio("row 3B / row 2B raw mode vs parsed, batches()", "3B", "2B")
    ratio("row 3C / row 2B one piece per read vs parsed", "3C", "2B")
    ratio("row 2 / row 5  streammgr vs httpx-sse", "2", "5")
    ratio("row 2B / row 5 streammgr batches() vs httpx-sse", "2B", "5")
    ratio("row 1 / row 5  SSESource alone vs httpx-sse", "1", "5")
    ratio("row 4 / row 6  OpenAIChat vs openai SDK", "4", "6")
    ratio("row 4B / row 6 OpenAIChat batches() vs openai SDK", "4B", "6")
    for note in notes:
        print(f"\nnote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
