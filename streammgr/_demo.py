"""The demo: many streams against a simulated upstream, limits enforced, registry shown.

``python -m streammgr demo`` opens a burst of chat-completion streams from several
tenants with :class:`~streammgr.sources.OpenAIChat`, against an in-process
simulated OpenAI-compatible upstream (:mod:`streammgr.simulate`'s httpx transport:
no network, no API key). Some readers leave early, one upstream hangs (a
``stall_mid_stream`` fault), an operator cancels a tenant. It prints the registry
while it runs and the totals at the end, and checks that the limits were never
exceeded and that no upstream connection was left open.

What ``--seed`` fixes: the plan, drawn from the seed before any stream starts (each
client's tenant, arrival time, answer length and whether it leaves early, printed
as one line), and every simulated answer (text and pacing). On Trio's mock clock
that fixes the totals too (25 runs of seed 7 gave the same totals; the test runs it
twice). On the real clock, how long each step takes on this machine decides close
races (a stream waiting ``acquire_timeout`` for a slot that frees at about the same
moment), so a loaded machine can move a stream or two between "completed" and
"rejected" from run to run; the checks hold in every run.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """What one demo client does, drawn from the seed before anything runs.

    Attributes:
        index: the client's number.
        tenant: its caller key.
        arrival: seconds after the start at which it opens its stream.
        tokens: how many tokens the simulated upstream answers.
        hangs: its upstream stops after three tokens (``idle_timeout`` cuts it).
        leaves_early: it stops reading after three chunks.
    """

    index: int
    tenant: str
    arrival: float
    tokens: int
    hangs: bool
    leaves_early: bool


def plan_clients(streams: int, seed: int) -> list[ClientPlan]:
    """Every client's plan, from ``seed`` alone: the same seed gives the same plans.

    Drawn in index order before any task starts, so Trio's order of running the
    clients cannot change who gets which draw.
    """
    rng = random.Random(seed)
    plans = []
    for index in range(streams):
        hangs = index == 1
        leaves_early = not hangs and rng.random() < 0.2
        arrival = 0.0 if index < 12 else rng.uniform(0, 1.5)
        plans.append(
            ClientPlan(
                index=index,
                tenant=f"tenant-{'abcd'[index % 4]}",
                arrival=arrival,
                tokens=rng.randint(5, 30),
                hangs=hangs,
                leaves_early=leaves_early,
            )
        )
    return plans


def describe_plan(plans: list[ClientPlan], seed: int) -> str:
    """One line that two runs with the same seed print alike."""
    early = sum(plan.leaves_early for plan in plans)
    tokens = sum(plan.tokens for plan in plans)
    last = max((plan.arrival for plan in plans), default=0.0)
    return (
        f"plan (seed {seed}): {len(plans)} clients, {early} leave early, 1 upstream hangs, "
        f"{tokens} tokens asked in all, the last arrives at {last:.3f}s"
    )


async def run_demo(streams: int = 60, seed: int = 7, verbose: bool = False) -> int:
    """Run the demo; returns a process exit code (0 when every check held)."""
    level = logging.INFO if verbose else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    plans = plan_clients(streams, seed)
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
    print(describe_plan(plans, seed))
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

        async def client(plan: ClientPlan) -> None:
            index, tenant, leaves_early = plan.index, plan.tenant, plan.leaves_early
            await trio.sleep(plan.arrival)
            behaviour: dict[str, object] = {"tokens": plan.tokens}
            if plan.hangs:  # three tokens, then nothing: a hung provider
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
                for plan in plans:
                    clients.start_soon(client, plan)
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
