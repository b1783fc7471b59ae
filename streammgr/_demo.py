"""The demo: many streams against a simulated upstream, limits enforced, registry shown.

``python -m streammgr demo`` opens a burst of chat-completion streams from several
tenants with :class:`~streammgr.sources.OpenAIChat`, against an in-process
simulated OpenAI-compatible upstream (:mod:`streammgr.simulate`'s httpx transport:
no network, no API key). Some readers leave early, one upstream hangs (a
``stall_mid_stream`` fault), an operator cancels a tenant. It prints the registry
while it runs and the totals at the end, and checks that the limits were never
exceeded and that no upstream connection was left open.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import httpx
import structlog
import trio

from ._errors import StreamCancelled, StreamLimitExceeded
from ._manager import StreamManager
from .simulate import SimulatedTransport, SimulatedUpstream
from .sources import OpenAIChat, collect_chat


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
    # Paced like a real model: 0.085-0.155 s to the first token, 0.01-0.08 s between tokens.
    upstream = SimulatedUpstream(
        seed=seed, first_token_latency=0.12, token_latency=0.045, jitter=0.035
    )
    answers: list[str] = []
    outcomes: Counter[str] = Counter()
    max_streams, max_per_key = 10, 4
    print(
        f"streammgr demo: {streams} streams from 4 tenants, max_streams={max_streams}, "
        f"max_streams_per_key={max_per_key}, max_waiting=20, acquire_timeout=2s, idle_timeout=1s"
    )
    async with (
        httpx.AsyncClient(transport=SimulatedTransport(upstream)) as http,
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
            behaviour: dict[str, object] = {"tokens": rng.randint(5, 30)}
            if hang:  # three tokens, then nothing: a hung provider
                behaviour |= {"fault": "stall_mid_stream", "fault_after": 3}
            chat = OpenAIChat(
                http,
                base_url="http://simulated-llm.local/v1",
                api_key="sk-demo-not-a-real-key",
                model="sim-1",
                messages=[{"role": "user", "content": f"prompt {index}"}],
                streammgr_simulate=behaviour,  # the simulator's extra body field
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
    connections = upstream.stats()
    print(
        f"upstream connections: most open at once {connections.max_open} "
        f"(limit {max_streams}), still open {connections.open}, "
        f"closed {connections.closed}"
    )
    checks = {
        "limit never exceeded": connections.max_open <= max_streams,
        "no upstream connection left open": connections.open == 0,
        "registry empty": not manager.streams(),
        "every stream accounted for": stats.closed_total == streams,
    }
    for name, held in checks.items():
        print(f"  [{'ok' if held else 'FAILED'}] {name}")
    return 0 if all(checks.values()) else 1
