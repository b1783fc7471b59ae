"""Cluster mode on Redis (extra ``cluster``): limits shared by every instance.

The only package that imports coredis. ``RedisLimiter`` plugs into
``StreamManager(limiter=...)``; ``RedisConnection`` is the one link to Redis that
an instance's cluster parts share.
"""

from ._connection import RedisConnection as RedisConnection
from ._limiter import FAULT_POLICIES as FAULT_POLICIES
from ._limiter import FaultPolicy as FaultPolicy
from ._limiter import RedisLimiter as RedisLimiter

__all__ = ["FAULT_POLICIES", "FaultPolicy", "RedisConnection", "RedisLimiter"]
