"""The inspection API's cluster routes: ``GET /cluster/streams``, ``GET /cluster/stats``,
and the cluster half of ``DELETE /streams/{id}`` and ``DELETE /keys/{key}/streams``.

They read the cluster registry (:class:`streammgr.cluster.ClusterRegistry`, every
instance's snapshot in Redis) and send cancels through it; without cluster mode the
two routes answer 404 ``cluster_off``. No coredis here: the registry is imported for
its type only, so the server runs without the cluster extra.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query

from ._admin_errors import AdminError, declared_error
from ._admin_models import (
    CancelResult,
    ClusterStats,
    ClusterStream,
    ClusterStreamPage,
    InstanceStats,
    KeyFilter,
    LabelFilter,
    PageCursor,
    PageSize,
    PhaseFilter,
    Stream,
)

if TYPE_CHECKING:
    from ..cluster import ClusterRegistry

__all__ = ["add_cluster_routes", "cancel_elsewhere", "cancel_key_elsewhere"]


def cluster_off() -> AdminError:
    """The 404 of a cluster route when cluster mode is off."""
    return AdminError(
        404,
        "cluster_off",
        "cluster mode is off: start streammgr serve with --redis-url (STREAMMGR_REDIS_URL) "
        "to see and control every instance's streams; GET /streams lists this instance's",
    )


def _unavailable(error: Exception, retry_after: int) -> AdminError:
    return AdminError(
        503,
        "cluster_unavailable",
        f"{error}; the cluster registry cannot be read: retry in {retry_after}s",
        {"Retry-After": str(retry_after)},
    )


def _cursor(stream: dict[str, object], instance: str) -> str:
    raw = json.dumps([stream["created_wall"], instance, stream["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[float, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_wall, instance, stream_id = json.loads(raw)
        if not (
            isinstance(created_wall, int | float)
            and isinstance(instance, str)
            and isinstance(stream_id, str)
        ):
            raise TypeError  # noqa: TRY301 - one message for every bad cursor
        return float(created_wall), instance, stream_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise AdminError(
            400,
            "invalid_cursor",
            "cursor is not one this server gave: pass the next_cursor of the previous "
            "page, or leave cursor out to start from the first page",
        ) from exc


def _labels(values: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for value in values:
        name, _, label = value.partition(":")
        wanted[name] = label
    return wanted


def _clean_stream(data: dict[str, object], clean: Callable[[str], str]) -> dict[str, object]:
    for name in ("detail", "error"):
        text = data.get(name)
        if isinstance(text, str):
            data[name] = clean(text)
    return data


def add_cluster_routes(
    router: APIRouter,
    cluster: ClusterRegistry | None,
    clean: Callable[[str], str],
    *,
    retry_after: int,
) -> None:
    """Add ``GET /cluster/streams`` and ``GET /cluster/stats`` to ``router``."""
    Responses = dict[int | str, dict[str, Any]]
    responses: Responses = {
        404: declared_error("Cluster mode is off: no --redis-url (cluster_off)."),
        503: declared_error("Redis is lost (cluster_unavailable).", retry_after=True),
        422: declared_error("A parameter is invalid (validation_error)."),
    }

    @router.get(
        "/cluster/streams",
        summary="List the streams of every instance (cluster mode)",
        responses={**responses, 400: declared_error("The cursor is not one this server gave.")},
    )
    async def cluster_streams(
        key: KeyFilter = None,
        phase: PhaseFilter = None,
        label: LabelFilter = None,
        instance: Annotated[str | None, Query(description="Only streams of this instance.")] = None,
        limit: PageSize = 100,
        cursor: PageCursor = None,
    ) -> ClusterStreamPage:
        if cluster is None:
            raise cluster_off()
        after = None if cursor is None else _read_cursor(cursor)
        wanted = _labels(label or [])
        phases = {value.value for value in phase or ()}
        try:
            snapshot = await cluster.read()
        except cluster.unavailable as exc:
            raise _unavailable(exc, retry_after) from None
        matching: list[tuple[tuple[float, str, str], str, dict[str, object]]] = []
        for one in snapshot.instances:
            if instance is not None and one.instance != instance:
                continue
            for stream in one.streams:
                labels = stream["labels"]
                if (
                    (key is None or stream["key"] == key)
                    and (not phases or stream["phase"] in phases)
                    and isinstance(labels, dict)
                    and all(labels.get(name) == value for name, value in wanted.items())
                ):
                    order = (float(str(stream["created_wall"])), one.instance, str(stream["id"]))
                    matching.append((order, one.instance, stream))
        matching.sort(key=lambda item: item[0])
        start = 0
        if after is not None:
            start = next(
                (index for index, item in enumerate(matching) if item[0] > after), len(matching)
            )
        page = matching[start : start + limit]
        more = start + limit < len(matching)
        return ClusterStreamPage(
            streams=[
                ClusterStream.model_validate(
                    {**_clean_stream(dict(stream), clean), "instance": name}
                )
                for _, name, stream in page
            ],
            total=len(matching),
            next_cursor=_cursor(page[-1][2], page[-1][1]) if more and page else None,
        )

    @router.get(
        "/cluster/stats",
        summary="Totals and each live instance (cluster mode)",
        responses={404: responses[404], 503: responses[503]},
    )
    async def cluster_stats() -> ClusterStats:
        if cluster is None:
            raise cluster_off()
        try:
            snapshot = await cluster.read()
        except cluster.unavailable as exc:
            raise _unavailable(exc, retry_after) from None
        instances = [
            InstanceStats.model_validate(
                {
                    **one.stats,
                    "instance": one.instance,
                    "last_seen": one.last_seen,
                    "seen_ago": one.seen_ago,
                }
            )
            for one in snapshot.instances
        ]
        return ClusterStats(
            active=sum(one.active for one in instances),
            waiting=sum(one.waiting for one in instances),
            streams=sum(len(one.streams) for one in snapshot.instances),
            instances=instances,
        )


async def cancel_elsewhere(
    cluster: ClusterRegistry,
    stream_id: str,
    reason: str,
    clean: Callable[[str], str],
    *,
    base: str,
    retry_after: int,
) -> tuple[CancelResult, str | None]:
    """Cancel a stream this instance does not hold on the one that does: the answer
    and the owner (or raise the :class:`AdminError` to answer)."""
    try:
        outcome = await cluster.cancel(stream_id, reason)
    except cluster.unavailable as exc:
        raise _unavailable(exc, retry_after) from None
    where = f"on instance {outcome.instance!r}"
    if outcome.outcome == "cancelled" and outcome.stream is not None:
        stream = Stream.model_validate(_clean_stream(outcome.stream, clean))
        return CancelResult(cancelled=True, stream=stream), outcome.instance
    if outcome.outcome == "closed":
        raise AdminError(
            409,
            "stream_closed",
            f"stream {stream_id!r} has already closed {where} ({outcome.close_reason}); "
            f"nothing to cancel",
        )
    if outcome.outcome == "ending":
        raise AdminError(
            409,
            "stream_ending",
            f"stream {stream_id!r} is already ending {where} (phase {outcome.phase}); it "
            f"will close by itself: watch GET {base}/cluster/streams",
        )
    if outcome.outcome == "unreachable":
        raise AdminError(
            503,
            "instance_unreachable",
            f"stream {stream_id!r} runs {where}, which does not listen for cancels (it "
            f"stopped or lost Redis; its streams leave the registry within its TTL); retry "
            f"in {retry_after}s",
            {"Retry-After": str(retry_after)},
        )
    if outcome.outcome == "no_answer":
        raise AdminError(
            504,
            "instance_no_answer",
            f"stream {stream_id!r} runs {where}, which did not answer the cancel within "
            f"{cluster.answer_within:g}s; it may still cancel it: check GET "
            f"{base}/cluster/streams, or retry",
        )
    raise AdminError(
        404,
        "stream_not_found",
        f"no stream {stream_id!r} on any instance of the cluster, in flight or in this "
        f"instance's recent history; list them with GET {base}/cluster/streams",
    )


async def cancel_key_elsewhere(
    cluster: ClusterRegistry, key: str, reason: str, *, retry_after: int
) -> dict[str, int]:
    """Cancel every stream of ``key`` on the other instances: counts per instance (or
    raise the :class:`AdminError` to answer)."""
    try:
        counts, silent = await cluster.cancel_key(key, reason)
    except cluster.unavailable as exc:
        raise _unavailable(exc, retry_after) from None
    if silent:
        done = sum(counts.values())
        raise AdminError(
            504,
            "instance_no_answer",
            f"instances {', '.join(silent)} did not answer within "
            f"{cluster.answer_within:g}s (they may still cancel the key's streams); "
            f"{done} cancelled on the others and on this one's own: retry to be sure",
        )
    return counts
