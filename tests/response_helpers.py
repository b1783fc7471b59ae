"""What the streaming response's tests share: a limiter that counts releases, the
keep-alive comment, an encoder of ints, and a producer that never yields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from streammgr import FairLimiter, Permit


class CountingLimiter(FairLimiter):
    """A FairLimiter that counts releases, to check a slot goes back exactly once."""

    def __init__(self, max_streams: int | None = None, max_waiting: int | None = None) -> None:
        super().__init__(max_streams, None, max_waiting)
        self.releases = 0

    def release(self, permit: Permit) -> None:
        if not permit.released:
            self.releases += 1
        super().release(permit)


KEEP_ALIVE = b": keep-alive\n\n"


def encode_ints(batch: list[int]) -> bytes:
    """The probe's ticker yields ints."""
    return b"".join(b"data: %d\n\n" % item for item in batch)


async def forever() -> AsyncIterator[str]:
    await trio.sleep_forever()
    yield "never"
