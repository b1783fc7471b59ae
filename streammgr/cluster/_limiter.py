"""``RedisLimiter``: admission limits held across every instance on one Redis.

Each slot is a lease in Redis (see ``_scripts.py``): taken and checked against
both limits in one script, renewed by a heartbeat every ``lease_ttl / 3``, given
back by a background task (``release`` must not block), and gone by itself within
``lease_ttl`` when its holder dies. Waiting is local: a FIFO queue per key, whose
head alone asks Redis (one contender per key per instance); a release publishes
its key and wakes one waiter per instance, and heads also poll with jitter, since
an expired lease publishes nothing.

It must not import the server or the CLI; it talks to Redis only through its
:class:`~._connection.RedisConnection`.
"""

from __future__ import annotations

import contextlib
import math
import random
import secrets
from collections import OrderedDict
from typing import Literal, Self, cast

import trio
import trio.lowlevel

from .._errors import LimiterUnavailable, StreamLimitExceeded
from .._limits import Limiter, LimiterSnapshot, LimiterStatus, Permit, mean_hold, refusal, resized
from .._logging import get_logger
from .._validate import UNSET, _Unset, check_lease_ttl, check_limit
from . import _scripts
from ._connection import RedisConnection, RedisLost

__all__ = ["FAULT_POLICIES", "FaultPolicy", "RedisLimiter"]

FaultPolicy = Literal["fail-closed", "local"]
FAULT_POLICIES: tuple[FaultPolicy, ...] = ("fail-closed", "local")
"""What a limiter does while Redis is lost: refuse new streams, or admit against a
share of each limit."""

_GLOBAL, _PER_KEY = 1, 2  # why the acquire script said no
_RELEASE_BATCH = 200  # leases released in one script at most
_LIMITS_JOBS = ("limits", "read-limits")  # jobs that are not a lease to release


class _Lease(Permit):
    __slots__ = ("lease_id",)

    def __init__(self, key: str, acquired_at: float, lease_id: str) -> None:
        super().__init__(key, acquired_at)
        self.lease_id = lease_id


class _Waiter:
    __slots__ = ("blocked_by", "key", "seq", "wake")

    def __init__(self, key: str, seq: int) -> None:
        self.key = key
        self.seq = seq
        self.wake = trio.Event()
        self.blocked_by = _GLOBAL


class RedisLimiter(Limiter):
    """Admission limits shared by every instance that uses the same Redis.

    An async context manager: entering it connects to Redis (raising
    :class:`~streammgr.LimiterUnavailable` when it cannot) and starts the lease
    heartbeat, the release task and the pub/sub listener; ``StreamManager(limiter=
    ...)`` enters it too (entries nest), so either form works::

        async with StreamManager(limiter=RedisLimiter(url, max_streams=100)) as manager:
            ...

    Args:
        url: the Redis URL (``redis://[:password@]host:port/db``); its password is
            never shown (``secrets`` lists it for the manager's redaction).
        max_streams: the most slots held at once across every instance.
        max_streams_per_key: the most slots one key holds across every instance.
        max_waiting: the most callers queued on this instance.
        lease_ttl: seconds a lease lives without renewal: a dead instance's slots
            come back within it; renewed every ``lease_ttl / 3``.
        instance_id: this instance's name in Redis (default ``host:pid``).
        fault_policy: while Redis is lost, ``"fail-closed"`` refuses new streams
            (:class:`~streammgr.LimiterUnavailable`), ``"local"`` admits against
            ``ceil(limit / instances last seen)`` of each limit. Running streams
            continue either way.
        namespace: the prefix of every Redis key and channel.
        connection: a :class:`RedisConnection` shared with other cluster parts
            (instead of ``url`` / ``instance_id`` / ``namespace``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        max_streams: int | None = None,
        max_streams_per_key: int | None = None,
        max_waiting: int | None = None,
        lease_ttl: float = 3.0,
        instance_id: str | None = None,
        fault_policy: FaultPolicy = "fail-closed",
        namespace: str = "streammgr",
        connection: RedisConnection | None = None,
    ) -> None:
        lease_ttl = check_lease_ttl(lease_ttl)
        if fault_policy not in FAULT_POLICIES:
            raise ValueError(
                f"fault_policy must be 'fail-closed' or 'local' (--redis-fault-policy), "
                f"got {fault_policy!r}"
            )
        if connection is None:
            if url is None:
                raise ValueError("pass url (the Redis URL) or connection")
            connection = RedisConnection(
                url,
                instance_id=instance_id,
                namespace=namespace,
                timeout=min(1.0, max(lease_ttl / 3, 0.05)),
            )
        elif url is not None or instance_id is not None:
            raise ValueError("pass either url (and instance_id) or connection, not both")
        self._max_streams = check_limit("max_streams", max_streams)
        self._max_per_key = check_limit("max_streams_per_key", max_streams_per_key)
        self._max_waiting = check_limit("max_waiting", max_waiting)
        self.lease_ttl = float(lease_ttl)
        """Seconds a lease lives without renewal."""
        self.fault_policy: FaultPolicy = fault_policy
        """What happens while Redis is lost."""
        self.connection = connection
        """The link to Redis (shareable with the cluster registry)."""
        self._ttl_ms = max(int(self.lease_ttl * 1000), 1)
        self._epoch_key = connection.key("epoch")
        self._fence_key = connection.key("fence")
        self._instances_key = connection.key("instances")
        self._global_key = connection.key("leases")
        self._limits_key = connection.key("limits")
        self._released_channel = connection.key("released")
        connection.subscribe(self._released_channel, self._on_released)
        # Limits set on another instance: read them from the hash and adopt them.
        connection.subscribe(self._limits_key, self._on_limits_changed)
        self._held: dict[str, _Lease] = {}
        self._held_by_key: dict[str, int] = {}
        self._queues: dict[str, OrderedDict[int, _Waiter]] = {}
        self._waiting = 0
        self._seq = 0
        self._mean_hold: float | None = None
        self._epoch = ""
        self._degraded: str | None = None
        self._re_add = False
        self._limits_writes = 0  # local changes not yet written: a read must not undo them
        self._leases_lost = 0
        self._instances_seen = 1
        self._cluster_active = 0
        self._entries = 0
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._jobs_send, self._jobs_receive = trio.open_memory_channel[tuple[str, str]](math.inf)
        self._jobs_pending = 0
        self._jobs_idle = trio.Event()
        self._jobs_idle.set()
        self._random = random.Random()
        self._log = get_logger()

    def __repr__(self) -> str:
        return (
            f"RedisLimiter(url={self.connection.url!r}, instance_id="
            f"{self.connection.instance_id!r}, active={len(self._held)}, "
            f"waiting={self._waiting}, max_streams={self._max_streams}, "
            f"max_streams_per_key={self._max_per_key}, degraded={self._degraded is not None})"
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """The Redis URL's password (as written and unquoted): the manager scrubs it."""
        return self.connection.secrets

    @property
    def instances_seen(self) -> int:
        """Live instances (this one included) at the last heartbeat."""
        return self._instances_seen

    @property
    def cluster_active(self) -> int:
        """Leases held across the cluster at the last heartbeat or admission."""
        return self._cluster_active

    # -- lifetime ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._entries += 1
        if self._entries > 1:
            return self
        try:
            await self.connection.__aenter__()
        except RedisLost as exc:
            self._entries -= 1
            raise LimiterUnavailable(
                f"{exc}; cannot start the Redis limiter: check --redis-url "
                f"(STREAMMGR_REDIS_URL) and that Redis is running",
                retry_after=self.lease_ttl,
            ) from None
        try:
            result = cast(
                "list[object]",
                await self.connection.run(
                    _scripts.JOIN,
                    [self._epoch_key, self._fence_key, self._instances_key, self._limits_key],
                    [
                        self._ttl_ms,
                        self.connection.instance_id,
                        secrets.token_hex(8),
                        _limit_arg(self._max_streams),
                        _limit_arg(self._max_per_key),
                    ],
                ),
            )
            self._epoch = str(result[0])
            self._instances_seen = max(int(cast("int", result[1])), 1)
            # The cluster's limits, when an instance set them before this one started.
            await self._read_limits()
            stack = contextlib.AsyncExitStack()
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            self._stack = stack
        except BaseException as exc:
            self._entries -= 1
            await self.connection.__aexit__(None, None, None)
            if isinstance(exc, RedisLost):
                raise LimiterUnavailable(
                    f"{exc}; cannot start the Redis limiter: check --redis-url", retry_after=1.0
                ) from None
            raise
        self._nursery.start_soon(self._heartbeat, name="streammgr-lease-heartbeat")
        self._nursery.start_soon(self._run_jobs, name="streammgr-lease-releaser")
        self._log.info(
            "limiter.started",
            url=self.connection.url,
            instance_id=self.connection.instance_id,
            lease_ttl=self.lease_ttl,
            fault_policy=self.fault_policy,
            instances=self._instances_seen,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._entries -= 1
        if self._entries:
            return
        for lease in list(self._held.values()):
            self.release(lease)
        nursery, stack = self._nursery, self._stack
        self._nursery = self._stack = None
        try:
            # Give the last leases back (bounded: a lost Redis lets them expire).
            with trio.CancelScope(shield=True), trio.move_on_after(self.connection.timeout * 2):
                await self._jobs_idle.wait()
                # Leave: the others' local share (fault policy) counts one instance less.
                with contextlib.suppress(RedisLost):
                    await self.connection.run(
                        _scripts.LEAVE, [self._instances_key], [self.connection.instance_id]
                    )
        finally:
            try:
                if nursery is not None and stack is not None:
                    nursery.cancel_scope.cancel()
                    await stack.aclose()
            finally:
                await self.connection.__aexit__(None, None, None)

    # -- the interface -----------------------------------------------------------------

    async def acquire(self, key: str, *, timeout: float | None = None) -> Permit:
        if self._nursery is None:
            raise RuntimeError("enter the RedisLimiter (async with) before acquiring slots")
        if key not in self._queues:
            lease, _ = await self._try(key)
            if lease is not None:
                return lease
        if self._max_waiting is not None and self._waiting >= self._max_waiting:
            raise self._rejection(
                key,
                "max_waiting",
                f"admission queue of instance {self.connection.instance_id!r} is full "
                f"({self._waiting} of max_waiting={self._max_waiting} waiting)",
            )
        if timeout is not None and timeout <= 0:
            raise self._blocked_rejection(key, _GLOBAL, timeout)
        self._seq += 1
        waiter = _Waiter(key, self._seq)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = OrderedDict()
        queue[waiter.seq] = waiter
        self._waiting += 1
        lease = None
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                lease = await self._contend(waiter)
        except BaseException:
            if lease is not None:
                self.release(lease)
            raise
        finally:
            self._forget(waiter)
        if lease is None:
            raise self._blocked_rejection(key, waiter.blocked_by, timeout)
        return lease

    def release(self, permit: Permit) -> None:
        if permit.released:
            return
        permit.released = True
        if not isinstance(permit, _Lease) or self._held.pop(permit.lease_id, None) is None:
            return
        key = permit.key
        remaining = self._held_by_key[key] - 1
        if remaining:
            self._held_by_key[key] = remaining
        else:
            del self._held_by_key[key]
        hold = trio.current_time() - permit.acquired_at
        mean = self._mean_hold
        self._mean_hold = mean_hold(mean, hold)
        self._give_back(permit.lease_id, key)
        if self._degraded is not None:
            self._on_released(key)  # Redis will not tell: the local share freed a slot

    def resize(
        self,
        *,
        max_streams: int | _Unset | None = UNSET,
        max_streams_per_key: int | _Unset | None = UNSET,
        max_waiting: int | _Unset | None = UNSET,
    ) -> None:
        """Change this instance's limits now, and record them in Redis (the hash
        ``{namespace}:limits``, announced on the channel ``{namespace}:limits``)."""
        self._max_streams, self._max_per_key, self._max_waiting = resized(
            (self._max_streams, self._max_per_key, self._max_waiting),
            max_streams,
            max_streams_per_key,
            max_waiting,
        )
        if self._nursery is not None:
            self._limits_writes += 1
        self._queue_job("limits")
        for queue in self._queues.values():
            next(iter(queue.values())).wake.set()

    def snapshot(self) -> LimiterSnapshot:
        """This instance's view: the slots it holds and the callers it queues
        (``cluster_active`` and ``instances_seen`` give the cluster's)."""
        return LimiterSnapshot(
            active=len(self._held),
            waiting=self._waiting,
            max_streams=self._max_streams,
            max_streams_per_key=self._max_per_key,
            max_waiting=self._max_waiting,
            active_by_key=dict(self._held_by_key),
            waiting_by_key={key: len(queue) for key, queue in self._queues.items()},
        )

    def status(self) -> LimiterStatus:
        """Degraded while Redis is lost (with what the fault policy does)."""
        return LimiterStatus(
            degraded=self._degraded is not None,
            detail=self._degraded,
            leases_lost=self._leases_lost,
        )

    # -- admission -----------------------------------------------------------------

    async def _contend(self, waiter: _Waiter) -> _Lease | None:
        """Wait in line; as the head of its key's queue, ask Redis until admitted."""
        poll = self.lease_ttl / 3
        just_tried = True  # acquire() asked once before queueing (or the key was busy)
        while True:
            wait = math.inf
            if next(iter(self._queues[waiter.key])) == waiter.seq:
                if not just_tried:
                    waiter.wake = trio.Event()
                    lease, blocked = await self._try(waiter.key)
                    if lease is not None:
                        return lease
                    waiter.blocked_by = blocked
                    if blocked < 0:  # fenced for -blocked ms
                        poll_here = min(-blocked / 1000, poll)
                        wait = poll_here * self._random.uniform(0.8, 1.2)
                    else:
                        wait = poll * self._random.uniform(0.5, 1.0)
                else:
                    wait = poll * self._random.uniform(0.5, 1.0)
            just_tried = False
            with trio.move_on_after(wait):
                await waiter.wake.wait()
            waiter.wake = trio.Event() if waiter.wake.is_set() else waiter.wake

    async def _try(self, key: str) -> tuple[_Lease | None, int]:
        """Ask for one slot now: ``(lease, 0)``, or ``(None, why)`` (``_GLOBAL``,
        ``_PER_KEY``, or minus the fence's remaining ms)."""
        if self._degraded is not None:
            return self._try_degraded(key)
        lease_id = secrets.token_hex(12)
        admitted = False
        try:
            # Shielded: a cancelled EVALSHA would still run on the server and keep
            # its lease; waiting for the answer (at most the command timeout) lets
            # the lease be given back below, or handed to the caller.
            with trio.CancelScope(shield=True):
                result = cast(
                    "list[int]",
                    await self.connection.run(
                        _scripts.ACQUIRE,
                        [
                            self._epoch_key,
                            self._fence_key,
                            self._global_key,
                            self._key_set(key),
                        ],
                        [
                            self._ttl_ms,
                            lease_id,
                            _limit_arg(self._max_streams),
                            _limit_arg(self._max_per_key),
                            secrets.token_hex(8),
                        ],
                    ),
                )
            # A caller cancelled meanwhile gets Cancelled, and the lease goes back.
            await trio.lowlevel.checkpoint_if_cancelled()
            outcome, detail = int(result[0]), int(result[1])
            if outcome == 1:
                admitted = True
                self._cluster_active = detail
                return self._hold(key, lease_id), 0
            if outcome == -1:
                return None, -max(detail, 1)
            return None, detail
        except RedisLost as exc:
            self._enter_degraded(str(exc))
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller: Cancelled
            return self._try_degraded(key)
        finally:
            if not admitted:
                self._give_back(lease_id, key)  # it may have run on the server

    def _try_degraded(self, key: str) -> tuple[_Lease | None, int]:
        """Redis is lost: refuse (fail-closed), or admit against this instance's
        share of each limit (local)."""
        if self.fault_policy == "fail-closed":
            raise LimiterUnavailable(
                f"admission is refused while Redis is lost ({self._degraded}); "
                f"running streams continue; this instance retries Redis every "
                f"{self.lease_ttl / 3:g}s",
                retry_after=self.lease_ttl,
            )
        instances = max(self._instances_seen, 1)
        if self._max_streams is not None and len(self._held) >= math.ceil(
            self._max_streams / instances
        ):
            return None, _GLOBAL
        if self._max_per_key is not None and self._held_by_key.get(key, 0) >= math.ceil(
            self._max_per_key / instances
        ):
            return None, _PER_KEY
        return self._hold(key, secrets.token_hex(12)), 0

    def _hold(self, key: str, lease_id: str) -> _Lease:
        lease = _Lease(key, trio.current_time(), lease_id)
        self._held[lease_id] = lease
        self._held_by_key[key] = self._held_by_key.get(key, 0) + 1
        return lease

    def _forget(self, waiter: _Waiter) -> None:
        """Take a waiter out of its queue (admitted, timed out or cancelled) and let
        the next one of its key contend at once."""
        queue = self._queues.get(waiter.key)
        if queue is None or queue.pop(waiter.seq, None) is None:
            return
        self._waiting -= 1
        if queue:
            next(iter(queue.values())).wake.set()
        else:
            del self._queues[waiter.key]

    def _on_released(self, key: str) -> None:
        """A slot of ``key`` was released somewhere: wake one waiter that may use it
        (its key's head, else the oldest head blocked by max_streams)."""
        queue = self._queues.get(key)
        if queue:
            next(iter(queue.values())).wake.set()
            return
        oldest: _Waiter | None = None
        for queue in self._queues.values():
            head = next(iter(queue.values()))
            if head.blocked_by != _PER_KEY and (oldest is None or head.seq < oldest.seq):
                oldest = head
        if oldest is not None:
            oldest.wake.set()

    def _key_set(self, key: str) -> str:
        return self.connection.key("key", key)

    # -- limits set on another instance -----------------------------------------------

    def _on_limits_changed(self, instance_id: str) -> None:
        if instance_id != self.connection.instance_id:
            self._queue_job("read-limits")

    def _queue_job(self, kind: str) -> None:
        if self._nursery is None:
            return
        self._jobs_pending += 1
        if self._jobs_idle.is_set():
            self._jobs_idle = trio.Event()
        self._jobs_send.send_nowait((kind, ""))

    async def _read_limits(self) -> None:
        """Adopt the limits last set on any instance (the hash ``{namespace}:limits``);
        ``max_waiting`` stays this instance's own."""
        values = cast(
            "list[str | None]",
            await self.connection.run(_scripts.READ_LIMITS, [self._limits_key], []),
        )
        if values[0] is None or values[1] is None or self._limits_writes:
            return  # never set; or a local change is on its way to the hash
        max_streams, max_per_key = (None if int(v) < 0 else int(v) for v in values if v)
        if (max_streams, max_per_key) == (self._max_streams, self._max_per_key):
            return
        self._log.info(
            "limiter.limits_adopted",
            max_streams=max_streams,
            max_streams_per_key=max_per_key,
            previous_max_streams=self._max_streams,
            previous_max_streams_per_key=self._max_per_key,
        )
        self._max_streams, self._max_per_key = max_streams, max_per_key
        for queue in self._queues.values():
            next(iter(queue.values())).wake.set()

    # -- background ----------------------------------------------------------------

    def _give_back(self, lease_id: str, key: str) -> None:
        if self._nursery is None:
            return  # closed: the lease expires within lease_ttl
        self._jobs_pending += 1
        if self._jobs_idle.is_set():
            self._jobs_idle = trio.Event()
        self._jobs_send.send_nowait((lease_id, key))

    async def _run_jobs(self) -> None:
        """Release leases (and write limits) in the order asked, off the caller's path:
        every release waiting is sent in one script (one round trip for many: one by
        one, releases capped admission at one per round trip)."""
        receive = self._jobs_receive
        async for first in receive:
            jobs = [first]
            while len(jobs) < _RELEASE_BATCH:
                try:
                    jobs.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            releases = [job for job in jobs if job[0] not in _LIMITS_JOBS]
            kinds = {job[0] for job in jobs}
            try:
                if releases:
                    await self.connection.run(
                        _scripts.RELEASE,
                        [
                            self._global_key,
                            self._released_channel,
                            *(self._key_set(key) for _, key in releases),
                        ],
                        [item for job in releases for item in job],
                    )
                if "limits" in kinds:
                    await self.connection.run(
                        _scripts.LIMITS,
                        [self._limits_key, self.connection.key("limits")],
                        [
                            self._ttl_ms,
                            self.connection.instance_id,
                            _limit_arg(self._max_streams),
                            _limit_arg(self._max_per_key),
                        ],
                    )
                if "read-limits" in kinds:
                    await self._read_limits()
            except RedisLost as exc:
                # Not renewed any more: the leases expire within lease_ttl.
                self._log.debug("limiter.release_failed", error=str(exc))
            finally:
                self._limits_writes -= sum(1 for job in jobs if job[0] == "limits")
                self._jobs_pending -= len(jobs)
                if not self._jobs_pending:
                    self._jobs_idle.set()

    async def _heartbeat(self) -> None:
        """Renew every held lease each ``lease_ttl / 3``; notice Redis lost and back,
        and data lost (the epoch)."""
        while True:
            await trio.sleep(self.lease_ttl / 3)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew the leases now (the heartbeat task calls it every ``lease_ttl / 3``)."""
        held = list(self._held.values())
        re_add = self._re_add
        try:
            result = cast(
                "list[object]",
                await self.connection.run(
                    _scripts.HEARTBEAT,
                    [
                        self._epoch_key,
                        self._fence_key,
                        self._instances_key,
                        self._global_key,
                        self._limits_key,
                        *(self._key_set(lease.key) for lease in held),
                    ],
                    [
                        self._ttl_ms,
                        self.connection.instance_id,
                        self._epoch,
                        secrets.token_hex(8),
                        1 if re_add else 0,
                        *(lease.lease_id for lease in held),
                    ],
                ),
            )
        except RedisLost as exc:
            self._enter_degraded(str(exc))
            return
        epoch = str(result[0])
        epoch_changed = epoch != self._epoch
        self._instances_seen = max(int(cast("int", result[1])), 1)
        self._cluster_active = int(cast("int", result[2]))
        missing = [str(lease_id) for lease_id in result[3:]]
        if missing:
            # A lease released while the script was on its way may have been removed
            # first: not lost; and if the script added it back, give it back again.
            keys = {lease.lease_id: lease.key for lease in held}
            gone = [lease_id for lease_id in missing if lease_id not in self._held]
            if re_add or epoch_changed:
                for lease_id in gone:
                    self._give_back(lease_id, keys[lease_id])
            missing = [lease_id for lease_id in missing if lease_id in self._held]
        if epoch_changed:
            self._log.warning(
                "limiter.epoch_changed",
                detail="Redis lost its data (restart, FLUSHALL or failover): leases re-added, "
                "new admissions fenced for one lease period",
                leases=len(held),
            )
            self._epoch = epoch
        if missing:
            self._leases_lost += len(missing)
            self._log.warning(
                "limiter.leases_lost",
                count=len(missing),
                re_added=re_add or epoch_changed,
            )
        self._re_add = False
        # Read the cluster's limits at each heartbeat too: a change announced while the
        # pub/sub link was down (or Redis lost) reaches this instance all the same.
        self._queue_job("read-limits")
        if self._degraded is not None:
            self._degraded = None
            self._log.warning(
                "limiter.recovered",
                url=self.connection.url,
                leases=len(held),
                missing=len(missing),
            )
            for queue in self._queues.values():
                next(iter(queue.values())).wake.set()

    def _enter_degraded(self, error: str) -> None:
        self._re_add = True
        if self._degraded is not None:
            return
        if self.fault_policy == "fail-closed":
            what = "new streams are refused (fail-closed); running streams continue"
        else:
            what = (
                f"admitting against 1/{self._instances_seen} of each limit (local); "
                f"running streams continue"
            )
        self._degraded = f"{error}; {what}"
        self._log.error(
            "limiter.degraded",
            error=error,
            fault_policy=self.fault_policy,
            instances=self._instances_seen,
        )

    # -- rejections ----------------------------------------------------------------

    def _blocked_rejection(
        self, key: str, blocked: int, timeout: float | None
    ) -> StreamLimitExceeded:
        within = f"no slot freed within acquire_timeout={timeout}s"
        if blocked == _PER_KEY:
            return self._rejection(
                key,
                "max_streams_per_key",
                f"key {key!r} holds max_streams_per_key={self._max_per_key} slots across "
                f"the cluster; {within}",
            )
        if blocked < 0:
            return self._rejection(
                key,
                "max_streams",
                f"admission is fenced for one lease period after Redis lost its data; {within}",
            )
        return self._rejection(
            key,
            "max_streams",
            f"max_streams={self._max_streams} slots are held across the cluster; {within}",
        )

    def _rejection(self, key: str, limit: str, what: str) -> StreamLimitExceeded:
        if limit == "max_streams_per_key":
            queue = self._queues.get(key)
            ahead, capacity = (len(queue) if queue else 0), self._max_per_key
        else:
            ahead, capacity = self._waiting, self._max_streams
        return refusal(key, limit, what, hold=self._mean_hold, ahead=ahead, capacity=capacity)


def _limit_arg(limit: int | None) -> int:
    return -1 if limit is None else limit
