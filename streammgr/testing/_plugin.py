"""The pytest plugin of streammgr.testing (the ``pytest11`` entry point ``streammgr``).

Fixtures only: a test that uses none of them runs exactly as it would without
the plugin. The fixtures are async (pytest-trio runs them), so use them from
trio tests (``trio_mode = true``, or ``@pytest.mark.trio``); pair them with
pytest-trio's ``autojump_clock`` to run every timeout instantly.

- ``stream_manager``: a running, checked :class:`~streammgr.StreamManager`
  (:func:`~streammgr.testing.checked_manager`); configure it with
  ``@pytest.mark.streammgr(max_streams=2, reader_timeout=5.0)``. The test fails
  at teardown with a :class:`~streammgr.testing.LeakError` if anything of a stream
  was left;
- ``simulated_upstream``: a :class:`~streammgr.testing.SimulatedProvider` whose
  responses must all be closed exactly once by the end of the test;
- ``track_transport``: wraps any httpx transport in a
  :class:`~streammgr.testing.TrackingTransport` checked at teardown;
- ``fd_baseline``: a :class:`~streammgr.testing.FdBaseline` taken before the test
  and checked after it (nothing is checked where ``/proc/self/fd`` is missing).

Only this module imports pytest; it imports nothing of ``streammgr.server``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from .._manager import StreamManager
from ._checked import checked_manager
from ._fds import FdBaseline
from ._simulated import SimulatedProvider
from ._transport import TrackingTransport

__all__ = ["fd_baseline", "simulated_upstream", "stream_manager", "track_transport"]

_MARKER = "streammgr"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``streammgr`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): StreamManager keyword arguments for the stream_manager "
        f"fixture of streammgr.testing",
    )


@pytest.fixture
async def stream_manager(request: pytest.FixtureRequest) -> AsyncIterator[StreamManager]:
    """A running :class:`~streammgr.StreamManager` that fails the test if anything is left.

    Its keyword arguments come from ``@pytest.mark.streammgr(...)``, if any.
    """
    marker = request.node.get_closest_marker(_MARKER)
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    async with checked_manager(**options) as manager:
        yield manager


@pytest.fixture
async def simulated_upstream() -> AsyncIterator[SimulatedProvider]:
    """A simulated OpenAI-compatible provider; its responses are checked at teardown."""
    provider = SimulatedProvider()
    yield provider
    provider.check()


@pytest.fixture
def track_transport() -> Iterator[Callable[[httpx.AsyncBaseTransport], TrackingTransport]]:
    """``track_transport(inner)`` wraps a transport; every one is checked at teardown."""
    made: list[TrackingTransport] = []

    def track(inner: httpx.AsyncBaseTransport) -> TrackingTransport:
        transport = TrackingTransport(inner)
        made.append(transport)
        return transport

    yield track
    for transport in made:
        transport.check()


@pytest.fixture
def fd_baseline() -> Iterator[FdBaseline]:
    """The file descriptors open before the test; checked after it."""
    baseline = FdBaseline.take()
    yield baseline
    baseline.check()
