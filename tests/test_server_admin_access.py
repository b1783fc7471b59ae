"""Who may reach the inspection API: CORS for the gateway never opens the tokenless
admin API to a web page.
"""

from __future__ import annotations

import httpx
import trio

from streammgr import StreamManager
from streammgr.server import ServiceOptions, admin_app

from .server_helpers import PATIENCE, instant_upstream, running_service


async def test_cors_origins_do_not_open_the_tokenless_admin_api_to_any_web_page(
    nursery: trio.Nursery,
) -> None:
    # streammgr serve --cors-origin '*' on loopback (no --admin-token needed there):
    # the CORS middleware wraps /admin too, so any page the operator's browser opens
    # can read the registry and cancel streams (the preflight allows DELETE).
    manager = StreamManager()
    options = ServiceOptions(upstream_url="http://sim/v1", cors_origins=("*",))
    admin = admin_app(manager, prefix="")
    async with running_service(
        nursery, manager, options, upstream=instant_upstream(), acquire_timeout=None, admin=admin
    ) as (server, _):
        origin = {"origin": "http://evil.example"}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            read = await client.get(f"{server.url}/admin/streams", headers=origin)
            preflight = await client.options(
                f"{server.url}/admin/keys/anonymous/streams",
                headers={**origin, "access-control-request-method": "DELETE"},
            )
    assert "access-control-allow-origin" not in read.headers
    assert "access-control-allow-origin" not in preflight.headers
