"""The gateway's error answers (``server/_answers.py``) as the openai SDK reads them:
every 429 carries ``Retry-After`` and ``retry-after-ms``, and ``x-should-retry`` says
retry only where retrying may go better.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from streammgr import StreamManager
from streammgr.server import gateway_app

from .server_helpers import GATEWAY_UPSTREAM_KEY, PATIENCE, Server

MESSAGES = [{"role": "user", "content": "hi"}]

# -- Retry-After on every 429 ----------------------------------------------------------------


@pytest.mark.parametrize("upstream_headers", [{}, {"retry-after-ms": "1500"}])
@pytest.mark.parametrize("stream", [True, False])
async def test_every_429_carries_retry_after_and_retry_after_ms(
    nursery: trio.Nursery, upstream_headers: dict[str, str], stream: bool
) -> None:
    # docs/gateway.md: "sends both on every 429". An upstream 429 without a
    # Retry-After (or with only retry-after-ms) is passed on with neither.
    error = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=upstream_headers, json=error)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http,
        StreamManager() as manager,
    ):
        app = gateway_app(
            manager, http, upstream_url="http://sim.local/v1", api_key=GATEWAY_UPSTREAM_KEY
        )
        server = await Server().start(nursery, app)
        body = {"model": "m", "messages": MESSAGES, "stream": stream}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.post(f"{server.url}/v1/chat/completions", json=body)
        server.stop.set()
    assert response.status_code == 429
    assert "retry-after" in response.headers
    assert "retry-after-ms" in response.headers
