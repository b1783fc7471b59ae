"""A manager started outside Trio (asyncio, uvicorn) fails with one clear message.

FastAPI users type ``uvicorn app:app``; streammgr's nursery, cancel scopes and
timeouts are Trio's, so the first thing that needs Trio (entering the manager, the
app's lifespan) says so and names the two ways to serve the app on Trio, instead of
an ``AttributeError`` from Trio's internals.
"""

from __future__ import annotations

import asyncio

import pytest

import streammgr
from streammgr.server import manager_lifespan


def assert_says_how_to_serve(error: RuntimeError) -> None:
    message = str(error)
    assert "streammgr runs on Trio" in message
    assert "asyncio" in message  # what it found instead
    assert "hypercorn --worker-class trio" in message
    assert "streammgr.server.serve" in message


def test_entering_a_manager_under_asyncio_says_to_use_trio() -> None:
    async def main() -> None:
        async with streammgr.StreamManager(max_streams=1):
            pass

    with pytest.raises(RuntimeError) as caught:
        asyncio.run(main())
    assert_says_how_to_serve(caught.value)


def test_manager_lifespan_under_asyncio_says_to_use_trio() -> None:
    manager = streammgr.StreamManager()

    async def main() -> None:
        async with manager_lifespan(manager)(object()):
            pass

    with pytest.raises(RuntimeError) as caught:
        asyncio.run(main())
    assert_says_how_to_serve(caught.value)
    # The manager was not half-entered: it can still run on Trio afterwards.
    assert manager.stats().active == 0


async def test_the_check_lets_trio_through() -> None:
    async with manager_lifespan(streammgr.StreamManager(max_streams=1))(object()) as entered:
        assert entered is None
