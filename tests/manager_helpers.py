"""What the manager's tests share besides conftest's ``Probe``: a BaseException that
is not an Exception, and a producer whose cleanup takes time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio


class Abort(BaseException):
    """A custom BaseException: by convention, not for ``except Exception``."""


async def slow_cleanup() -> AsyncIterator[int]:
    """Ticks forever; its cleanup takes a second (closing an upstream connection)."""
    try:
        while True:
            await trio.sleep(1)
            yield 0
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(1)
