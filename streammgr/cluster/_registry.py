"""``ClusterRegistry``: every instance's streams in Redis, and cancels across instances.

Each instance publishes one compact JSON snapshot of its streams and counters to
Redis (``{ns}:registry:<instance>``, with the registry TTL), every ``interval``
seconds and at most ``min_interval`` after a stream opens, is admitted or closes
(driven by ``manager.watch()``: nothing runs per item). A dead instance's snapshot
expires within the TTL; one that stops cleanly removes its own at once.

A cancel for a stream another instance runs is published on that instance's
channel; the owner cancels it through its own manager (the same redaction, the
same close reason as a local cancel) and answers on the asker's reply channel.

It must not import the server or the CLI; it talks to Redis only through its
:class:`~._connection.RedisConnection`.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Self, cast

import trio

from .._logging import get_logger
from .._manager import StreamManager
from .._registry import StreamInfo
from .._states import Phase
from . import _registry_scripts as _scripts
from ._connection import RedisConnection, RedisLost

__all__ = [
    "STREAM_FIELDS",
    "CancelOutcome",
    "ClusterRegistry",
    "ClusterSnapshot",
    "InstanceSnapshot",
]

STREAM_FIELDS = (
    "id",
    "key",
    "labels",
    "phase",
    "created_at",
    "admitted_at",
    "first_item_at",
    "last_item_at",
    "closed_at",
    "items",
    "bytes",
    "close_reason",
    "detail",
    "error",
    "created_wall",
    "notes",
    "age",
    "idle",
)
"""The order of a stream's values in a snapshot (a list per stream: names once)."""

_FORMAT = 1
_MAX_PENDING_REPLIES = 1024


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    """One instance's last published snapshot.

    Attributes:
        instance: its instance id.
        last_seen: Unix time of the snapshot, by that instance's clock.
        seen_ago: seconds since Redis stored it, by Redis' clock.
        stats: ``active``, ``waiting``, ``max_streams``, ``max_streams_per_key``,
            ``max_waiting``, ``opened_total``, ``closed_total``, ``closing``.
        streams: its streams, each a dict of :data:`STREAM_FIELDS` (times ending in
            ``_at`` on that instance's monotonic clock; ``age`` and ``idle`` as of
            the snapshot).
    """

    instance: str
    last_seen: float
    seen_ago: float
    stats: Mapping[str, object]
    streams: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Every live instance's snapshot, as read from Redis at one moment."""

    instances: list[InstanceSnapshot]

    def find(self, stream_id: str) -> tuple[str, dict[str, object]] | None:
        """``(instance, stream)`` of the instance that holds ``stream_id``."""
        for snapshot in self.instances:
            for stream in snapshot.streams:
                if stream["id"] == stream_id:
                    return snapshot.instance, stream
        return None


Outcome = Literal["cancelled", "closed", "ending", "not_found", "unreachable", "no_answer"]


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What a cancel sent across the cluster did.

    Attributes:
        outcome: ``cancelled``; ``closed`` or ``ending`` (nothing to cancel);
            ``not_found`` (no instance holds it); ``unreachable`` (its owner does not
            listen: it stopped or lost Redis); ``no_answer`` (no answer in time).
        instance: the owner (``None`` when not found).
        stream: the owner's snapshot of the stream after the cancel, if it sent one.
        close_reason: for ``closed``, why it had closed.
        phase: for ``ending``, its phase.
    """

    outcome: Outcome
    instance: str | None = None
    stream: dict[str, object] | None = None
    close_reason: str | None = None
    phase: str | None = None


class ClusterRegistry:
    """One instance's part of the cluster registry, and its cluster cancels.

    An async context manager: entering it connects (or shares the connection the
    limiter entered), publishes a first snapshot, and starts publishing and answering
    cancels; exiting removes this instance's snapshot.

    Args:
        manager: this instance's manager.
        connection: this instance's link to Redis (shared with the limiter).
            Create the registry before entering the connection: it subscribes to
            its cancel channels.
        ttl: seconds a snapshot lives: a dead instance vanishes within it.
        interval: seconds between two snapshots when nothing changes.
        min_interval: the least seconds between two snapshots (a change is
            published at most this late).
        answer_within: seconds a cancel waits for the owner's answer.
    """

    unavailable: ClassVar[type[Exception]] = RedisLost
    """What reading or asking raises when Redis is lost (for callers that do not
    import the cluster package's modules)."""

    def __init__(
        self,
        manager: StreamManager,
        connection: RedisConnection,
        *,
        ttl: float = 3.0,
        interval: float = 1.0,
        min_interval: float = 0.25,
        answer_within: float = 2.0,
    ) -> None:
        for name, value in (
            ("ttl", ttl),
            ("interval", interval),
            ("min_interval", min_interval),
            ("answer_within", answer_within),
        ):
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if interval >= ttl:
            raise ValueError(
                f"interval ({interval}s) must be shorter than ttl ({ttl}s), or a live "
                f"instance's snapshot would expire between two refreshes"
            )
        self.manager = manager
        self.connection = connection
        self.instance_id = connection.instance_id
        """This instance's name in the registry."""
        self.ttl = float(ttl)
        self.interval = float(interval)
        self.min_interval = min(float(min_interval), self.interval)
        self.answer_within = float(answer_within)
        self._ttl_ms = max(int(self.ttl * 1000), 1)
        self._set_key = connection.key("registry")
        self._prefix = connection.key("registry", "")
        self._own_key = connection.key("registry", self.instance_id)
        self._reply_channel = connection.key("cancel-reply", self.instance_id)
        connection.subscribe(connection.key("cancel", self.instance_id), self._on_cancel)
        connection.subscribe(self._reply_channel, self._on_reply)
        self._changed = trio.Event()
        self._pending: dict[str, tuple[trio.Event, list[dict[str, object]]]] = {}
        self._replies_send, self._replies_receive = trio.open_memory_channel[tuple[str, str]](
            _MAX_PENDING_REPLIES
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._failing = False
        self._log = get_logger()

    def __repr__(self) -> str:
        return f"ClusterRegistry(instance_id={self.instance_id!r}, ttl={self.ttl})"

    # -- lifetime ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connection.__aenter__()
        stack = contextlib.AsyncExitStack()
        try:
            try:
                await self.refresh()
            except RedisLost as exc:  # the publisher retries every interval
                self._failing = True
                self._log.warning("cluster.registry_refresh_failed", error=str(exc))
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            nursery.start_soon(self._publish, name="streammgr-registry-publisher")
            nursery.start_soon(self._send_replies, name="streammgr-registry-replies")
        except BaseException:
            await stack.aclose()
            await self.connection.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
            # Leave at once (bounded: a lost Redis lets the snapshot expire instead).
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(self.connection.timeout * 2),
                contextlib.suppress(RedisLost),
            ):
                await self.connection.run(
                    _scripts.LEAVE, [self._set_key, self._own_key], [self.instance_id]
                )
        finally:
            await self.connection.__aexit__(None, None, None)

    # -- publishing ----------------------------------------------------------------

    def snapshot_json(self) -> str:
        """This instance's snapshot, as published (compact JSON)."""
        manager = self.manager
        now = trio.current_time()
        stats = manager.stats()
        return json.dumps(
            {
                "format": _FORMAT,
                "wall": time.time(),
                "stats": {
                    "active": stats.active,
                    "waiting": stats.waiting,
                    "max_streams": stats.max_streams,
                    "max_streams_per_key": stats.max_streams_per_key,
                    "max_waiting": stats.max_waiting,
                    "opened_total": stats.opened_total,
                    "closed_total": stats.closed_total,
                    "closing": stats.closing,
                },
                "streams": [_row(info, now) for info in manager.streams()],
            },
            separators=(",", ":"),
        )

    async def refresh(self) -> None:
        """Publish this instance's snapshot now.

        Raises:
            RedisLost: Redis is unreachable or too slow.
        """
        await self.connection.run(
            _scripts.REFRESH,
            [self._set_key, self._own_key],
            [self._ttl_ms, self.instance_id, self.snapshot_json()],
        )

    async def _publish(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_changes)
            while True:
                last = trio.current_time()
                with trio.move_on_after(self.interval):
                    await self._changed.wait()
                self._changed = trio.Event()
                await trio.sleep_until(last + self.min_interval)
                try:
                    await self.refresh()
                except RedisLost as exc:
                    if not self._failing:
                        self._log.warning("cluster.registry_refresh_failed", error=str(exc))
                    self._failing = True
                else:
                    if self._failing:
                        self._log.info("cluster.registry_refreshed")
                    self._failing = False

    async def _watch_changes(self) -> None:
        # A stream opened, admitted or closed: publish soon (never per item).
        async with self.manager.watch(max_buffer=16) as changes:
            async for _ in changes:
                self._changed.set()

    # -- reading -------------------------------------------------------------------

    async def read(self) -> ClusterSnapshot:
        """Every live instance's last snapshot (this one's included).

        Raises:
            RedisLost: Redis is unreachable or too slow.
        """
        result = cast(
            "list[object]",
            await self.connection.run(_scripts.READ, [self._set_key], [self._ttl_ms, self._prefix]),
        )
        now_ms = int(cast("int", result[0]))
        instances: list[InstanceSnapshot] = []
        for index in range(1, len(result) - 2, 3):
            instance = str(result[index])
            seen_ms = int(cast("int", result[index + 1]))
            try:
                data = json.loads(str(result[index + 2]))
                rows = data["streams"]
                instances.append(
                    InstanceSnapshot(
                        instance=instance,
                        last_seen=float(data["wall"]),
                        seen_ago=max(now_ms - seen_ms, 0) / 1000,
                        stats=dict(data["stats"]),
                        streams=[dict(zip(STREAM_FIELDS, row, strict=True)) for row in rows],
                    )
                )
            except (ValueError, KeyError, TypeError):
                self._log.warning("cluster.registry_unreadable", instance=instance)
        instances.sort(key=lambda snapshot: snapshot.instance)
        return ClusterSnapshot(instances)

    # -- cancel, the asker's side ---------------------------------------------------

    async def cancel(self, stream_id: str, reason: str) -> CancelOutcome:
        """Cancel ``stream_id`` on the instance that holds it; wait for its answer.

        The caller cancels a stream this instance holds itself, through its manager:
        this is for the others (a stream the registry lists under this instance's
        own id has closed since: ``not_found``).

        Raises:
            RedisLost: Redis is unreachable or too slow.
        """
        found = (await self.read()).find(stream_id)
        if found is None or found[0] == self.instance_id:
            return CancelOutcome("not_found")
        owner = found[0]
        answers = await self._ask([owner], {"op": "stream", "target": stream_id, "reason": reason})
        answer = answers.get(owner)
        if answer is None:
            return CancelOutcome("no_answer", owner)
        if not answer:
            return CancelOutcome("unreachable", owner)
        stream = answer.get("stream")
        return CancelOutcome(
            cast("Outcome", answer["outcome"]),
            owner,
            stream=cast("dict[str, object]", stream) if isinstance(stream, dict) else None,
            close_reason=cast("str | None", answer.get("close_reason")),
            phase=cast("str | None", answer.get("phase")),
        )

    async def cancel_key(self, key: str, reason: str) -> tuple[dict[str, int], list[str]]:
        """Cancel every stream of ``key`` on every other live instance.

        Returns:
            ``(cancelled per instance that answered, instances that did not answer
            in time)``; an instance that no longer listens is left out of both.

        Raises:
            RedisLost: Redis is unreachable or too slow.
        """
        others = [
            snapshot.instance
            for snapshot in (await self.read()).instances
            if snapshot.instance != self.instance_id
        ]
        answers = await self._ask(others, {"op": "key", "target": key, "reason": reason})
        counts = {
            instance: int(cast("int", answer.get("count", 0)))
            for instance, answer in answers.items()
            if answer
        }
        return counts, sorted(set(others) - set(answers))

    async def _ask(
        self, instances: list[str], request: dict[str, object]
    ) -> dict[str, dict[str, object]]:
        """Send ``request`` to each instance and wait (at most ``answer_within``) for
        the answers: ``{instance: answer}``, ``{}`` for one that does not listen, and
        no entry for one that did not answer in time."""
        answers: dict[str, dict[str, object]] = {}
        pending: dict[str, tuple[str, trio.Event, list[dict[str, object]]]] = {}
        try:
            for instance in instances:
                request_id = secrets.token_hex(8)
                event, box = trio.Event(), cast("list[dict[str, object]]", [])
                self._pending[request_id] = (event, box)
                pending[instance] = (request_id, event, box)
                message = json.dumps(
                    {**request, "request": request_id, "reply": self.instance_id},
                    separators=(",", ":"),
                )
                receivers = await self.connection.run(
                    _scripts.PUBLISH, [self.connection.key("cancel", instance)], [message]
                )
                if not receivers:
                    answers[instance] = {}
                    del pending[instance]
            with trio.move_on_after(self.answer_within):
                for instance, (_, event, box) in pending.items():
                    await event.wait()
                    answers[instance] = box[0]
        finally:
            for request_id, _, _ in pending.values():
                self._pending.pop(request_id, None)
        return answers

    def _on_reply(self, message: str) -> None:
        try:
            answer = json.loads(message)
            event, box = self._pending[answer["request"]]
        except (ValueError, KeyError, TypeError):
            return  # an answer that came too late, or not ours
        box.append(answer)
        event.set()

    # -- cancel, the owner's side ----------------------------------------------------

    def _on_cancel(self, message: str) -> None:
        """Carry out a cancel asked by another instance (the listener calls it: no
        await here; the answer goes out on the replies task)."""
        try:
            request = json.loads(message)
            op, target, reason = request["op"], str(request["target"]), str(request["reason"])
            reply_to, request_id = str(request["reply"]), str(request["request"])
        except (ValueError, KeyError, TypeError):
            self._log.warning("cluster.cancel_unreadable")
            return
        answer: dict[str, object] = {"request": request_id, "instance": self.instance_id}
        manager = self.manager
        if op == "key":
            count = manager.cancel_key(target, reason=reason)
            answer.update(outcome="cancelled", count=count)
            self._log.info(
                "cluster.cancelled_key", key=target, cancelled=count, requested_by=reply_to
            )
        else:
            info = manager.get(target)
            if info is None:
                answer["outcome"] = "not_found"
            elif info.phase is Phase.CLOSED:
                close_reason = None if info.close_reason is None else info.close_reason.value
                answer.update(outcome="closed", close_reason=close_reason)
            elif not manager.cancel(target, reason=reason):
                answer.update(outcome="ending", phase=info.phase.value)
            else:
                after = manager.get(target) or info
                answer.update(outcome="cancelled", stream=after.to_dict(trio.current_time()))
                self._log.info("cluster.cancelled", stream_id=target, requested_by=reply_to)
        try:
            self._replies_send.send_nowait(
                (self.connection.key("cancel-reply", reply_to), json.dumps(answer))
            )
        except trio.WouldBlock:
            self._log.warning("cluster.cancel_reply_dropped", requested_by=reply_to)

    async def _send_replies(self) -> None:
        async for channel, message in self._replies_receive:
            try:
                await self.connection.run(_scripts.PUBLISH, [channel], [message])
            except RedisLost as exc:
                self._log.warning("cluster.cancel_reply_failed", error=str(exc))


def _row(info: StreamInfo, now: float) -> list[object]:
    """One stream's values in :data:`STREAM_FIELDS` order."""
    closed_at = info.closed_at
    last = info.last_item_at if info.last_item_at is not None else info.admitted_at
    close_reason = info.close_reason
    return [
        info.id,
        info.key,
        dict(info.labels),
        info.phase.value,
        info.created_at,
        info.admitted_at,
        info.first_item_at,
        info.last_item_at,
        closed_at,
        info.items,
        info.bytes,
        None if close_reason is None else close_reason.value,
        info.detail,
        info.error,
        info.created_wall,
        dict(info.notes),
        (closed_at if closed_at is not None else now) - info.created_at,
        None if last is None or closed_at is not None else now - last,
    ]
