"""Items that travel together: one hand-off for everything one upstream read produced.

A Trio channel hand-off costs more than everything else streammgr does per item,
and an upstream read typically carries about ten events. So a producer can hand
over a *batch* (a list of items) in one hand-off:

- a push producer calls ``await send.send_batch(items)``;
- a pull producer returns a :class:`BatchIterator`: an async iterator of items
  that also has ``anext_batch()``. The :func:`batched` decorator makes one from an
  async generator function that yields lists. The manager reads it batch by batch;
  anyone else iterating it gets the items one at a time, as from any iterator.

On the channel a batch travels inside a :class:`_Batch` envelope, so the reader
can tell it from an item that happens to be a list; the reader's
``ManagedStream.batches()`` gets it back as the very list that was handed over.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar

import trio
import trio.lowlevel

__all__ = ["BatchIterator", "batched"]

T = TypeVar("T")
P = ParamSpec("P")


class _Batch:
    """The channel envelope of a batch (private): one small object per hand-off."""

    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items


_DONE: Any = object()  # next()'s default: the cursor is exhausted


class BatchIterator(Generic[T]):
    """An async iterator of items that can also be read a batch at a time.

    Wraps an async iterator of lists (typically an async generator yielding, per
    upstream read, the list of what it parsed). ``async for item in it`` yields the
    items one by one; ``await it.anext_batch()`` returns the next non-empty list
    whole. The manager uses the latter, so the items of one read reach the reader
    in one hand-off. ``aclose()`` closes the wrapped iterator.

    Args:
        batches: the async iterator of lists to wrap. Empty lists are skipped.
    """

    __slots__ = ("_batches", "_cursor", "_loop")

    def __init__(self, batches: AsyncIterator[list[T]]) -> None:
        self._batches = batches
        # Where item-by-item reading is in the current list: a list iterator shared
        # by __anext__, the ``async for`` loop and anext_batch(), so each sees what
        # the others took (and the loop pays nothing per item for keeping it).
        self._cursor: Iterator[T] | None = None
        self._loop: AsyncGenerator[T, None] | None = None

    def __aiter__(self) -> AsyncIterator[T]:
        # ``async for`` gets an async generator over the same cursor: resuming one is
        # C code, where a Python ``__anext__`` costs a coroutine per item (1.6x the
        # items/s, measured). One generator per iterator, closed by aclose().
        loop = self._loop
        if loop is None:
            loop = self._loop = self._items()
        return loop

    async def _items(self) -> AsyncGenerator[T, None]:
        while True:
            cursor = self._cursor
            if cursor is None:
                try:
                    batch = await self._next_list()
                except StopAsyncIteration:
                    return
                cursor = self._cursor = iter(batch)
            for item in cursor:
                yield item
            if self._cursor is cursor:
                self._cursor = None

    async def __anext__(self) -> T:
        cursor = self._cursor
        if cursor is not None:
            item = next(cursor, _DONE)
            if item is not _DONE:
                return item
            self._cursor = None
        cursor = self._cursor = iter(await self._next_list())
        return next(cursor)

    async def anext_batch(self) -> list[T]:
        """The next non-empty list of items (what is left of one, after ``__anext__``).

        Raises:
            StopAsyncIteration: the wrapped iterator is exhausted.
        """
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            rest = list(cursor)
            if rest:
                return rest
        return await self._next_list()

    async def _next_list(self) -> list[T]:
        next_batch = self._batches.__anext__
        while True:
            batch = await next_batch()
            if batch:
                return batch
            # A read that completed nothing: let other tasks run, even if the wrapped
            # iterator reached no checkpoint of its own (an in-memory upstream).
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the wrapped iterator (its ``finally`` blocks run now)."""
        self._cursor = None
        if self._loop is not None:
            await self._loop.aclose()
        aclose = getattr(self._batches, "aclose", None)
        if aclose is not None:
            await aclose()

    def __repr__(self) -> str:
        return f"<BatchIterator over {self._batches!r}>"


def batched(
    function: Callable[P, AsyncIterator[list[T]]],
) -> Callable[P, BatchIterator[T]]:
    """Make an async generator function that yields lists into a batch producer.

    ``manager.open(producer)`` then hands each yielded list to the reader in one
    hand-off (``stream.batches()`` gets it whole, ``async for item in stream`` one
    item at a time); called directly, ``producer()`` iterates item by item::

        @streammgr.batched
        async def events(client, url):
            parser = streammgr.sse.SSEParser()
            async with client.stream("GET", url) as response:
                async for chunk in response.aiter_bytes():
                    yield parser.feed(chunk)  # everything one read carried
    """

    @functools.wraps(function)
    def producer(*args: P.args, **kwargs: P.kwargs) -> BatchIterator[T]:
        return BatchIterator(function(*args, **kwargs))

    return producer
