"""The FastAPI relay: the streaming proxy a user writes by hand on the asyncio stack.

bench_gateway.py's ``fastapi`` target (``python benchmarks/_procs.py fastapi``): a
FastAPI route that reads the request's body, opens the upstream request with httpx
and returns a ``StreamingResponse`` over ``client.stream(...).aiter_raw()``, served
by uvicorn on uvloop. No parsing, no limits, no registry: what streammgr's gateway
is compared with. Its own module so that FastAPI resolves the route's annotations
(``request: Request``) from the module's globals, as in a user's app file.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def build_app(upstream: str) -> FastAPI:
    """The relay in front of ``upstream`` (``http://host:port/v1``)."""
    url = upstream.rstrip("/") + "/chat/completions"
    clients: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # No connection cap, as the relay floor's and the gateway's pools.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=None, limits=limits) as client:
            clients.append(client)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.body()

        async def relay() -> AsyncIterator[bytes]:
            headers = {"content-type": "application/json"}
            async with clients[0].stream("POST", url, content=body, headers=headers) as response:
                async for chunk in response.aiter_raw():
                    yield chunk

        return StreamingResponse(relay(), media_type="text/event-stream")

    return app


def serve(upstream: str, port: int) -> None:
    """Serve the relay on 127.0.0.1:``port`` with uvicorn (uvloop, h11) until SIGINT."""
    # uvicorn and uvloop are in the bench extra only: mypy's override in
    # pyproject.toml lets benchmarks/ type-check without them (the dev extra).
    import uvicorn

    uvicorn.run(
        build_app(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="h11",  # as hypercorn's; uvicorn's faster httptools is not installed
        lifespan="on",
        access_log=False,  # as the relay floor's
        log_level="warning",
        backlog=1024,
    )
