"""The probes at the service's root: ``/healthz`` (alive) and ``/readyz`` (the manager
runs and admits streams), unauthenticated, any Host; ``/admin/healthz`` stays.

In-process (``httpx.ASGITransport``, the lifespan run by hand) on the mock clock.
"""

from __future__ import annotations

import httpx
import trio
import trio.testing

from streammgr import StreamManager
from streammgr.server import ServiceOptions, admin_app, build_service_app
from streammgr.simulate import SimulatedTransport

from .lifespan_helpers import running_lifespan
from .server_helpers import fast_upstream

BASE = "http://simulated.local/v1"
TOKEN = "admin-token-Health-7731"


async def test_readyz_follows_the_managers_life(autojump_clock: trio.testing.MockClock) -> None:
    manager = StreamManager()
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as upstream:
        admin = admin_app(manager, token=TOKEN, prefix="")
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE), admin=admin)
        transport = httpx.ASGITransport(app=app)
        # A kubelet names the pod's IP as Host, and sends no token.
        async with httpx.AsyncClient(transport=transport, base_url="http://10.1.2.3:8000") as probe:
            seen = [await probe.get("/readyz")]  # the lifespan has not started the manager
            async with running_lifespan(app):
                seen.append(await probe.get("/readyz"))
                alive = await probe.get("/healthz")
                head = await probe.head("/readyz")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(manager.aclose)  # a signal came: the drain begins
                    await trio.testing.wait_all_tasks_blocked()
                    seen.append(await probe.get("/readyz"))
                    alive_while_draining = await probe.get("/healthz")
            seen.append(await probe.get("/readyz"))  # stopped
    assert [(answer.status_code, answer.json()) for answer in seen] == [
        (503, {"status": "starting"}),
        (200, {"status": "ready"}),
        (503, {"status": "draining"}),
        (503, {"status": "draining"}),
    ]
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert alive.headers["cache-control"] == "no-store"
    assert "x-request-id" in alive.headers
    assert head.status_code == 200
    assert alive_while_draining.status_code == 200


async def test_admin_healthz_stays_behind_the_token(autojump_clock: trio.testing.MockClock) -> None:
    manager = StreamManager()
    async with httpx.AsyncClient(transport=SimulatedTransport(fast_upstream())) as upstream:
        admin = admin_app(manager, token=TOKEN, prefix="")
        app = build_service_app(manager, upstream, ServiceOptions(upstream_url=BASE), admin=admin)
        transport = httpx.ASGITransport(app=app)
        async with (
            running_lifespan(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
        ):
            anonymous = await client.get("/admin/healthz")
            operator = await client.get(
                "/admin/healthz", headers={"authorization": f"Bearer {TOKEN}"}
            )
            wrong_method = await client.post("/readyz")
    assert anonymous.status_code == 401
    assert operator.status_code == 200
    assert operator.json()["status"] == "ok"
    assert "active" in operator.json()
    assert wrong_method.status_code == 405
