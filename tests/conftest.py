"""Shared fixtures: producers that record what happened to them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel


class Probe:
    """Records a producer's life: started, items yielded, cleanup runs."""

    def __init__(self) -> None:
        self.started = 0
        self.cleanups = 0
        self.live = 0
        self.max_live = 0
        self.cancelled = 0

    async def ticker(self, count: int, interval: float = 1.0) -> AsyncIterator[int]:
        """Yield ``count`` ints, one every ``interval`` seconds; cleanup awaits."""
        self.started += 1
        self.live += 1
        self.max_live = max(self.max_live, self.live)
        try:
            for index in range(count):
                await trio.sleep(interval)
                yield index
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.live -= 1
            # An await in cleanup (like closing an httpx response) must run.
            with trio.CancelScope(shield=True):
                await trio.lowlevel.checkpoint()
            self.cleanups += 1


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture(autouse=True)
def quiet_structlog() -> None:
    """Tests log through structlog's defaults; drop info lines so output stays short.

    (The library never configures structlog; test_logging.py captures events.)
    """
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
