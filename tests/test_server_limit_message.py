"""The 429 an API client gets when a limit refuses its stream speaks to that client.

The limiter's own message ends with advice for Python callers ("raise the limit
with manager.set_limits()"), which an HTTP client can do nothing with: the answer
names the server's limit that was hit and how long to wait, and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

import streammgr
from streammgr.server._answers import error_answer


def manager_for(limit: str) -> streammgr.StreamManager:
    """A manager whose second stream for key ``k`` (or another key) meets ``limit``."""
    if limit == "max_streams":
        return streammgr.StreamManager(max_streams=1, acquire_timeout=0.5)
    if limit == "max_streams_per_key":
        return streammgr.StreamManager(max_streams_per_key=1, acquire_timeout=0.5)
    return streammgr.StreamManager(max_streams=1, max_waiting=0)


async def refusal(limit: str) -> streammgr.StreamLimitExceeded:
    """A real refusal by the in-memory limiter, for ``limit``."""
    async with manager_for(limit) as manager:
        parked = trio.Event()

        async def hold() -> AsyncIterator[str]:
            await parked.wait()
            yield "never"  # pragma: no cover

        async with manager.open(hold, key="k"):
            try:
                async with manager.open(hold, key="k" if limit != "max_streams" else "other"):
                    pass
            except streammgr.StreamLimitExceeded as exc:
                parked.set()
                return exc
    raise AssertionError("not refused")


@pytest.mark.parametrize("limit", ["max_streams", "max_streams_per_key", "max_waiting"])
async def test_a_limit_answer_tells_the_client_what_to_do(
    limit: str, autojump_clock: trio.abc.Clock
) -> None:
    error = await refusal(limit)
    assert error.limit == limit
    assert "manager.set_limits()" in str(error)  # Python callers keep their advice

    answer = error_answer(error, "s-1", None)

    assert answer.status == 429
    assert answer.code == limit
    message = json.loads(answer.json())["error"]["message"]
    assert "set_limits" not in message
    assert "manager" not in message
    assert limit in message
    assert f"retry after {error.retry_after:g}s" in message
    assert answer.retry_after == error.retry_after
