"""Run a manager for an ASGI app's lifetime: :func:`manager_lifespan`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .._manager import StreamManager, require_trio

__all__ = ["manager_lifespan"]


def manager_lifespan(
    manager: StreamManager,
) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """A lifespan that runs ``manager`` while the app runs: Starlette's ``lifespan=``.

    ``Starlette(routes=..., lifespan=manager_lifespan(manager))`` enters the manager
    when the server starts the app and leaves it when the server stops it: active
    streams get the manager's ``shutdown_grace``, then the rest are cancelled, and the
    app's shutdown completes only when every producer has finished. The manager's
    nursery lives in the lifespan's task, which on Trio (hypercorn's trio worker,
    Starlette through anyio) spans the app's whole life.

    The app must run on Trio: served by uvicorn (asyncio), the lifespan's start
    fails at once with a ``RuntimeError`` that says so and how to serve it.

    Args:
        manager: a manager not entered yet (a manager is entered once).

    Returns:
        A callable taking the app and returning an async context manager.
    """

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        require_trio()  # before anything else the app's start-up would do
        async with manager:
            yield

    return lifespan
