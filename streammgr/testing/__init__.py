"""Helpers for testing code that embeds streammgr, as ``trio.testing`` is for Trio.

- :func:`checked_manager` / :func:`find_leaks`: a manager that fails with a
  :class:`LeakError` listing each :class:`Leak` (an open stream, a held slot, a
  task, a watchdog entry, a change feed) left behind;
- :class:`TrackingTransport`: an httpx transport wrapper that checks every upstream
  response is closed exactly once;
- :class:`FdBaseline`: file descriptors before and after (Linux);
- :class:`SimulatedProvider` / :func:`simulated_client`: the simulated
  OpenAI-compatible upstream (:mod:`streammgr.simulate`) on a tracked transport;
- :func:`stress`: many streams at once, with seeded early exits, reader errors,
  operator cancels, slow readers and timeouts, every invariant checked after.

The pytest plugin (``streammgr.testing._plugin``, loaded through the ``pytest11``
entry point) adds the fixtures ``stream_manager``, ``simulated_upstream``,
``track_transport`` and ``fd_baseline``. See docs/testing.md.
"""

from ._checked import ManagerOptions as ManagerOptions
from ._checked import checked_manager as checked_manager
from ._fds import FdBaseline as FdBaseline
from ._fds import open_fds as open_fds
from ._leaks import Leak as Leak
from ._leaks import LeakError as LeakError
from ._leaks import find_leaks as find_leaks
from ._leaks import format_leaks as format_leaks
from ._simulated import SimulatedProvider as SimulatedProvider
from ._simulated import simulated_client as simulated_client
from ._stress import StressAction as StressAction
from ._stress import StressError as StressError
from ._stress import StressReport as StressReport
from ._stress import stress as stress
from ._transport import TrackedResponse as TrackedResponse
from ._transport import TrackingTransport as TrackingTransport

__all__ = [
    "FdBaseline",
    "Leak",
    "LeakError",
    "ManagerOptions",
    "SimulatedProvider",
    "StressAction",
    "StressError",
    "StressReport",
    "TrackedResponse",
    "TrackingTransport",
    "checked_manager",
    "find_leaks",
    "format_leaks",
    "open_fds",
    "simulated_client",
    "stress",
]
