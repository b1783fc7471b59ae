"""The demo: many streams against a simulated upstream, limits enforced, registry shown.

``python -m streammgr demo`` opens a burst of chat-completion streams from several
tenants with :class:`~streammgr.sources.OpenAIChat`, against an in-process
simulated OpenAI-compatible upstream (an httpx transport: no network, no API key).
Some readers leave early, one upstream hangs, an operator cancels a tenant. It
prints the registry while it runs and the totals at the end, and checks that the
limits were never exceeded.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import structlog
import trio

from ._errors import StreamCancelled, StreamLimitExceeded
from ._manager import StreamManager
from .sources import OpenAIChat, collect_chat

WORDS = ["streams", "close", "deterministically", "when", "their", "readers", "leave", "early"]


class _SimulatedBody(httpx.AsyncByteStream):
    """One streaming response body: OpenAI-style chunks, paced like a real model."""

    def __init__(self, upstream: SimulatedUpstream, tokens: int, hang: bool) -> None:
        self.upstream = upstream
        self.tokens = tokens
        self.hang = hang
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        rng = self.upstream.random
        await trio.sleep(rng.uniform(0.05, 0.2))  # time to first token
        for index in range(self.tokens):
            if self.closed:
                raise httpx.StreamClosed()  # like a real connection read after its close
            if self.hang and index == 3:
                await trio.sleep_forever()  # the upstream stops sending: a hung provider
            await trio.sleep(rng.uniform(0.01, 0.08))
            delta = {"content": (" " if index else "") + WORDS[index % len(WORDS)]}
            chunk = {"id": "sim", "model": "sim-1", "choices": [{"index": 0, "delta": delta}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.upstream.open_connections -= 1
            self.upstream.closed_connections += 1


class SimulatedUpstream:
    """An in-process stand-in for an OpenAI-compatible provider (an httpx transport).

    It streams chat completions over Server-Sent Events and counts its open
    connections, so the demo can show that none is ever left open.
    """

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.open_connections = 0
        self.max_open_connections = 0
        self.closed_connections = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one ``POST /chat/completions`` with a stream."""
        body = json.loads(request.content)
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        stream = _SimulatedBody(
            self, body["max_tokens"], request.headers.get("x-simulate") == "hang"
        )
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


def render(manager: StreamManager, start: float) -> str:
    """A compact table of the registry."""
    now = trio.current_time()
    streams = manager.streams()
    by_phase = Counter(str(info.phase) for info in streams)
    stats = manager.stats()
    phases = dict(sorted(by_phase.items()))
    lines = [
        f"t={now - start:5.2f}s  active={stats.active}/{stats.max_streams}  "
        f"waiting={stats.waiting}  closed={stats.closed_total}  phases={phases}"
    ]
    for info in sorted(streams, key=lambda info: info.created_at)[:6]:
        lines.append(
            f"    {info.id:<10} {info.key:<9} {info.phase!s:<10} items={info.items:<3} "
            f"age={info.duration(now):5.2f}s"
        )
    if len(streams) > 6:
        lines.append(f"    ... and {len(streams) - 6} more")
    return "\n".join(lines)


async def run_demo(streams: int = 60, seed: int = 7, verbose: bool = False) -> int:
    """Run the demo; returns a process exit code (0 when every check held)."""
    level = logging.INFO if verbose else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    rng = random.Random(seed)
    upstream = SimulatedUpstream(seed)
    answers: list[str] = []
    outcomes: Counter[str] = Counter()
    max_streams, max_per_key = 10, 4
    print(
        f"streammgr demo: {streams} streams from 4 tenants, max_streams={max_streams}, "
        f"max_streams_per_key={max_per_key}, max_waiting=20, acquire_timeout=2s, idle_timeout=1s"
    )
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle)) as http,
        StreamManager(
            max_streams=max_streams,
            max_streams_per_key=max_per_key,
            max_waiting=20,
            acquire_timeout=2.0,
            idle_timeout=1.0,
        ) as manager,
    ):
        start = trio.current_time()

        async def client(index: int) -> None:
            tenant = f"tenant-{'abcd'[index % 4]}"
            hang = index == 1  # this upstream stops sending: idle_timeout cuts it
            leaves_early = not hang and rng.random() < 0.2
            await trio.sleep(0 if index < 12 else rng.uniform(0, 1.5))
            chat = OpenAIChat(
                http,
                base_url="http://simulated-llm.local/v1",
                api_key="sk-demo-not-a-real-key",
                model="sim-1",
                messages=[{"role": "user", "content": f"prompt {index}"}],
                max_tokens=rng.randint(5, 30),
                headers={"x-simulate": "hang"} if hang else None,
            )
            try:
                async with manager.open(chat, key=tenant, labels={"model": "sim-1"}) as stream:
                    if leaves_early:
                        received = 0
                        async for _chunk in stream:
                            received += 1
                            if received == 3:
                                break
                    else:
                        answer = await collect_chat(stream)
                        answers.append(answer.text)
                outcomes["left early" if leaves_early else "completed"] += 1
            except StreamLimitExceeded as exc:
                outcomes[f"rejected ({exc.limit})"] += 1
            except StreamCancelled as exc:
                outcomes[f"cancelled ({exc.close_reason})"] += 1

        async def operator() -> None:
            await trio.sleep(1.0)
            cancelled = manager.cancel_key("tenant-d", reason="operator suspended tenant-d")
            print(f"-- operator cancels tenant-d: {cancelled} streams")

        async def monitor(done: trio.Event) -> None:
            while not done.is_set():
                print(render(manager, start))
                with trio.move_on_after(0.5):
                    await done.wait()

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor, done)
            async with trio.open_nursery() as clients:
                clients.start_soon(operator)
                for index in range(streams):
                    clients.start_soon(client, index)
            done.set()
        stats = manager.stats()
    print("\nfinished in %.2fs" % (trio.current_time() - start))
    print("readers saw:", dict(sorted(outcomes.items())))
    if answers:
        print(f"a complete answer (OpenAIChat + collect_chat): {answers[0]!r}")
    print("registry closed by reason:", {k: v for k, v in stats.closed_by_reason.items() if v})
    print(
        f"upstream connections: most open at once {upstream.max_open_connections} "
        f"(limit {max_streams}), still open {upstream.open_connections}, "
        f"closed {upstream.closed_connections}"
    )
    checks = {
        "limit never exceeded": upstream.max_open_connections <= max_streams,
        "no upstream connection left open": upstream.open_connections == 0,
        "registry empty": not manager.streams(),
        "every stream accounted for": stats.closed_total == streams,
    }
    for name, held in checks.items():
        print(f"  [{'ok' if held else 'FAILED'}] {name}")
    return 0 if all(checks.values()) else 1
