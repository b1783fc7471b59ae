"""Hundreds of streams at once through the real gateway, with clients that leave and
operator cancels: no limit is ever exceeded and every answer is intact or told.

The rig of tests/fault_helpers.py (the simulator on its own loopback port, the
service under ``serve_service``). 400 raw clients start together, under 16 tenants
(``x-tenant``), against ``max_streams=40`` and ``max_streams_per_key=6``; a seeded
random plan makes some leave (before any byte, or mid-stream), some get cancelled
by ``DELETE /admin/streams/{id}``, some ask for ``stream: false``. The limits are
checked twice, independently: from the registry (``manager.stats()`` at every
registry change) and at the simulator (its peak of responses open at once). Every
answer that completed holds exactly the simulator's deterministic text in order;
every other stream has its close reason recorded. The rig then checks that nothing
is left (registry, limiter, simulator, descriptors).

No timing assertion: the figures are in benchmarks/load_gateway.py.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio

from streammgr import CloseReason

from .fault_helpers import (
    Rig,
    chat,
    data_events,
    expected_text,
    is_complete,
    open_rig,
    raw_request,
    receive_until,
    streamed_text,
    unchunked,
)
from .server_helpers import RawResponse

CLIENTS = 400
TENANTS = 16
MAX_STREAMS = 40
MAX_PER_KEY = 6
SEED = 20261201
CONNECTING = 50
PATIENCE_UNDER_LOAD = 30.0  # seconds a client may wait for its slot and its whole answer


@dataclass
class Plan:
    """What one client does."""

    index: int
    tenant: str
    body: dict[str, Any]
    action: str  # "read", "leave_at_once", "leave_mid_stream", "cancel", "whole"


@dataclass
class Outcome:
    plan: Plan
    stream_id: str | None = None
    response: RawResponse | None = None
    cancel_status: int | None = None


def plans(rng: random.Random) -> list[Plan]:
    actions = ["read"] * 60 + ["leave_at_once"] * 8 + ["leave_mid_stream"] * 12
    actions += ["cancel"] * 10 + ["whole"] * 10
    out = []
    for index in range(CLIENTS):
        action = rng.choice(actions)
        tokens = rng.randint(3, 12)
        options: dict[str, Any] = {"tokens": tokens, "seed": index}
        if action in ("leave_mid_stream", "cancel"):
            options.update(tokens=200, token_latency=0.01)
        body = chat(action != "whole", **options)
        out.append(Plan(index, f"tenant-{index % TENANTS}", body, action))
    return out


async def run_client(
    rig: Rig, plan: Plan, outcome: Outcome, connecting: trio.CapacityLimiter
) -> None:
    # At most CONNECTING connects at once: the server's accept queue stays short, and
    # no client waits for the kernel's SYN retries.
    async with connecting:
        response = await rig.post(plan.body, headers=f"x-tenant: {plan.tenant}\r\n")
    outcome.response = response
    try:
        if plan.action == "leave_at_once":
            return
        if plan.action == "whole":  # its answer comes whole, once the stream has run
            await receive_until(response, is_complete, PATIENCE_UNDER_LOAD)
            outcome.stream_id = response.headers.get("x-stream-id")
            return
        # Every wait on the server under load has the load's patience: on a slow CI
        # machine 400 clients can keep the accept loop busy for more than 5 s.
        await receive_until(
            response, lambda response: b"\r\n\r\n" in response.received, PATIENCE_UNDER_LOAD
        )
        outcome.stream_id = response.headers.get("x-stream-id")
        if plan.action == "leave_mid_stream":
            await receive_until(
                response,
                lambda response: b'"content":"' in response.body or is_complete(response),
                PATIENCE_UNDER_LOAD,
            )
            return
        if plan.action == "cancel":
            await receive_until(
                response,
                lambda response: b'"content":"' in response.body or is_complete(response),
                PATIENCE_UNDER_LOAD,
            )
            admin = await raw_request(rig.port, "DELETE", f"/admin/streams/{outcome.stream_id}")
            await receive_until(admin, is_complete, PATIENCE_UNDER_LOAD)
            await admin.stream.aclose()
            outcome.cancel_status = admin.status
        await receive_until(response, is_complete, PATIENCE_UNDER_LOAD)
    finally:
        await response.stream.aclose()


async def test_hundreds_of_streams_never_exceed_the_limits_and_arrive_intact() -> None:
    rng = random.Random(SEED)
    work = plans(rng)
    options = {"max_streams": MAX_STREAMS, "max_streams_per_key": MAX_PER_KEY}
    async with open_rig(
        manager_options=options,
        upstream_options={"first_token_latency": 0.01, "token_latency": 0.004},
        key_header="x-tenant",
        answer_within=None,  # queued as long as it takes; the headers at admission
        keep_alive=1.0,
    ) as rig:
        overshoots: list[str] = []
        peaks = Counter[str]()

        async def sample(task_status: trio.TaskStatus[None]) -> None:
            # At every registry change (opened, admitted, closed): the limiter's counts.
            async with rig.manager.watch(max_buffer=100_000) as events:
                task_status.started()
                async for event in events:
                    assert event.kind != "overflow"
                    stats = rig.manager.stats()
                    peaks["active"] = max(peaks["active"], stats.active)
                    if stats.active > MAX_STREAMS:
                        overshoots.append(f"{stats.active} streams active")
                    for key, active in stats.active_by_key.items():
                        peaks["per_key"] = max(peaks["per_key"], active)
                        if active > MAX_PER_KEY:
                            overshoots.append(f"{active} streams of {key}")

        outcomes = [Outcome(plan) for plan in work]
        async with trio.open_nursery() as sampling:
            await sampling.start(sample)
            connecting = trio.CapacityLimiter(CONNECTING)
            async with trio.open_nursery() as clients:
                for outcome in outcomes:
                    clients.start_soon(run_client, rig, outcome.plan, outcome, connecting)
            await rig.until(lambda: not rig.manager.streams())
            sampling.cancel_scope.cancel()

        assert overshoots == []
        assert peaks["active"] == MAX_STREAMS  # saturated: the check had something to check
        assert peaks["per_key"] == MAX_PER_KEY
        assert 0 < rig.upstream.stats().max_open <= MAX_STREAMS

        history = {info.id: info for info in rig.manager.history()}
        assert len(history) == rig.manager.stats().closed_total  # nothing fell out
        seen: Counter[str] = Counter()
        for outcome in outcomes:
            plan, response = outcome.plan, outcome.response
            assert response is not None
            if plan.action == "leave_at_once":
                # It may have been read by the gateway or not: if so, it is recorded.
                continue
            assert outcome.stream_id is not None, response.received[:300]
            info = history[outcome.stream_id]
            reason = info.close_reason
            seen[f"{plan.action}:{reason}"] += 1
            if plan.action == "leave_mid_stream":
                assert reason in (CloseReason.CLIENT_DISCONNECTED, CloseReason.COMPLETED)
                continue
            payload, ended = unchunked(response.body)
            if plan.action == "whole":
                assert reason is CloseReason.COMPLETED
                answer = json.loads(response.body)
                text = answer["choices"][0]["message"]["content"]
                assert text == expected_text(rig.upstream, plan.body)
                continue
            assert ended, response.body[-200:]
            events = data_events(payload)
            if plan.action == "cancel" and outcome.cancel_status == 200:
                assert reason is CloseReason.CANCELLED
                assert json.loads(events[-1])["error"]["code"] == "cancelled"
                assert expected_text(rig.upstream, plan.body).startswith(streamed_text(events))
                continue
            # Read to the end (or cancelled too late: 409, it had completed).
            assert reason is CloseReason.COMPLETED, (plan, reason, events[-1:])
            assert events[-1] == "[DONE]"
            assert streamed_text(events) == expected_text(rig.upstream, plan.body)
        # Every plan kind happened, and the reasons add up with the registry's counts.
        assert {key.partition(":")[0] for key in seen} == {
            "read",
            "leave_mid_stream",
            "cancel",
            "whole",
        }
        assert seen["cancel:cancelled"] > 0
        reasons = rig.reasons()
        assert set(reasons) <= {
            CloseReason.COMPLETED,
            CloseReason.CLIENT_DISCONNECTED,
            CloseReason.CANCELLED,
        }
        assert sum(reasons.values()) == len(history)
