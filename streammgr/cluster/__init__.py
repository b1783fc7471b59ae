"""Cluster mode on Redis (extra ``cluster``): limits, registry and cancels shared by
every instance.

The only package that imports coredis. ``RedisLimiter`` plugs into
``StreamManager(limiter=...)``; ``RedisConnection`` is the one link to Redis that
an instance's cluster parts share.
"""

from ._connection import RedisConnection as RedisConnection
from ._limiter import FAULT_POLICIES as FAULT_POLICIES
from ._limiter import FaultPolicy as FaultPolicy
from ._limiter import RedisLimiter as RedisLimiter
from ._registry import CancelOutcome as CancelOutcome
from ._registry import ClusterRegistry as ClusterRegistry
from ._registry import ClusterSnapshot as ClusterSnapshot
from ._registry import InstanceSnapshot as InstanceSnapshot

__all__ = [
    "FAULT_POLICIES",
    "CancelOutcome",
    "ClusterRegistry",
    "ClusterSnapshot",
    "FaultPolicy",
    "InstanceSnapshot",
    "RedisConnection",
    "RedisLimiter",
]
