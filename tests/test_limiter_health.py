"""A degraded limiter (its Redis lost) shows in ``/readyz``, ``/admin/healthz`` and the
metrics (``streammgr_limiter_degraded``, ``streammgr_leases_lost_total``).

In-process (``httpx.ASGITransport``, the lifespan run by hand) on the mock clock, with a
stand-in limiter whose status the test sets: the real one is tested against Redis in
test_cluster_limiter.py.
"""

from __future__ import annotations

import httpx
import trio
import trio.testing

from streammgr import FairLimiter, LimiterStatus, StreamManager
from streammgr.server import ServiceOptions, admin_app, build_service_app
from streammgr.simulate import SimulatedTransport

from .lifespan_helpers import running_lifespan
from .server_helpers import fast_upstream

BASE = "http://simulated.local/v1"
TOKEN = "admin-token-Degraded-4410"


class SettableLimiter(FairLimiter):
    """A FairLimiter whose status the test sets (as Redis lost and back would)."""

    def __init__(self) -> None:
        super().__init__(10)
        self.current = LimiterStatus()

    def status(self) -> LimiterStatus:
        return self.current


async def test_a_degraded_limiter_shows_in_probes_healthz_and_metrics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = SettableLimiter()
    manager = StreamManager(limiter=limiter)
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as upstream:
        admin = admin_app(manager, token=TOKEN, prefix="")
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE), admin=admin)
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
            running_lifespan(app),
        ):
            healthy = [
                await client.get("/readyz"),
                await client.get("/admin/healthz", headers=auth),
            ]
            healthy_metrics = (await client.get("/admin/metrics", headers=auth)).text
            limiter.current = LimiterStatus(
                degraded=True,
                detail="Redis at redis://:***@redis:6379/0 is unreachable; new streams are "
                "refused (fail-closed)",
                leases_lost=3,
            )
            ready = await client.get("/readyz")
            health = await client.get("/admin/healthz", headers=auth)
            metrics = (await client.get("/admin/metrics", headers=auth)).text
            alive = await client.get("/healthz")
    assert [answer.status_code for answer in healthy] == [200, 200]
    assert healthy[1].json()["limiter_degraded"] is False
    assert "streammgr_limiter_degraded 0.0" in healthy_metrics
    assert (ready.status_code, ready.json()) == (503, {"status": "degraded"})
    assert health.status_code == 200  # the instance answers; it says what is wrong
    assert health.json()["status"] == "degraded"
    assert health.json()["limiter_degraded"] is True
    assert "fail-closed" in health.json()["limiter_detail"]
    assert health.json()["leases_lost"] == 3
    assert "streammgr_limiter_degraded 1.0" in metrics
    assert "streammgr_leases_lost_total 3.0" in metrics
    assert alive.status_code == 200
