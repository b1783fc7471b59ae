"""The inspection API's typed bodies: FastAPI builds the OpenAPI document from them.

Plain pydantic models, one per JSON body the API sends or takes; no logic beyond
turning a :class:`StreamInfo` or :class:`ManagerStats` into one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from .._manager import ManagerStats
from .._registry import StreamInfo
from .._states import CloseReason, Phase

# -- The list routes' query parameters (GET /streams, GET /cluster/streams) ----------

MAX_PAGE = 1000
"""The largest page a list route answers."""
LABEL_PATTERN = r"^[^:]+:"
"""A label filter: a non-empty name, a colon, the value (which may be empty or hold colons)."""

KeyFilter = Annotated[str | None, Query(description="Only streams of this key.")]
PhaseFilter = Annotated[
    list[Phase] | None, Query(description="Only streams in these phases (repeat).")
]
LabelFilter = Annotated[
    list[Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]] | None,
    Query(description="Only streams with this label, as name:value (repeat: all)."),
]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
PageCursor = Annotated[str | None, Query(description="The next_cursor of the previous page.")]

__all__ = [
    "CancelBody",
    "CancelKeyResult",
    "CancelResult",
    "ClusterStats",
    "ClusterStream",
    "ClusterStreamPage",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "History",
    "InstanceStats",
    "Limits",
    "LimitsUpdate",
    "Stats",
    "Stream",
    "StreamPage",
    "stream_dict",
]

MAX_REASON = 500
"""The longest cancel reason taken (it is stored in the registry and logged)."""


class Stream(BaseModel):
    """One stream, as ``StreamInfo.to_dict(now)`` has it.

    Times ending in ``_at`` are on the server's monotonic (Trio) clock: compare them
    with each other, not with wall time; ``created_wall`` is Unix time.
    """

    id: str = Field(description="The stream id, unique within the manager.")
    key: str = Field(description="The admission key.")
    labels: dict[str, str] = Field(description="The labels given to open().")
    phase: Phase = Field(description="Where the stream is in its life.")
    created_at: float
    admitted_at: float | None
    first_item_at: float | None
    last_item_at: float | None
    closed_at: float | None
    items: int = Field(description="Items delivered to the reader.")
    bytes: int = Field(description="Bytes delivered to the reader.")
    close_reason: CloseReason | None = Field(description="Why it ended, once closed.")
    detail: str | None = Field(description="Free text about the close (a cancel's reason).")
    error: str | None = Field(description="'ErrorType: message' it failed with (redacted).")
    created_wall: float = Field(description="Unix time of creation.")
    notes: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="What the producer recorded about its stream: for a chat completion "
        "finish_reason, prompt_tokens, completion_tokens and total_tokens.",
    )
    age: float = Field(description="Seconds since creation (to the close, once closed).")
    idle: float | None = Field(description="Seconds since the last item (or the admission).")

    @classmethod
    def of(cls, info: StreamInfo, now: float, clean: Callable[[str], str]) -> Stream:
        """The model of one snapshot; ``clean`` redacts free text once more."""
        return cls.model_validate(stream_dict(info, now, clean))


def stream_dict(info: StreamInfo, now: float, clean: Callable[[str], str]) -> dict[str, object]:
    """One snapshot as the JSON object :class:`Stream` describes (the events feed
    sends it without building the model: it is on the feed's per-event path)."""
    data = info.to_dict(now)
    if info.detail is not None:
        data["detail"] = clean(info.detail)
    if info.error is not None:
        data["error"] = clean(info.error)
    return data


class StreamPage(BaseModel):
    """One page of ``GET /streams``."""

    streams: list[Stream]
    total: int = Field(description="Streams matching the filters, on every page.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class History(BaseModel):
    """Recently closed streams, newest first."""

    streams: list[Stream]
    total: int = Field(description="Closed streams remembered that match the filters.")


class CancelBody(BaseModel):
    """The optional JSON body of a cancel (the ``reason`` query parameter also works)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON,
        description="Recorded as the close detail and given to the reader's StreamCancelled.",
    )


class CancelResult(BaseModel):
    """What ``DELETE /streams/{id}`` did."""

    cancelled: bool = Field(description="Always true: a stream that could not be, is a 409.")
    stream: Stream = Field(description="The stream right after the cancel (phase closing).")


class CancelKeyResult(BaseModel):
    """What ``DELETE /keys/{key}/streams`` did."""

    key: str
    cancelled: int = Field(description="Streams cancelled (0 when the key had none).")
    by_instance: dict[str, int] | None = Field(
        default=None,
        description="In cluster mode: streams cancelled on each instance that answered.",
    )


class ClusterStream(Stream):
    """One stream of any instance, from that instance's last snapshot in Redis.

    Times ending in ``_at`` are on the owning instance's monotonic clock; ``age`` and
    ``idle`` are as of its snapshot (at most about a second old).
    """

    instance: str = Field(description="The instance that runs it (--instance-id).")


class ClusterStreamPage(BaseModel):
    """One page of ``GET /cluster/streams``, ordered by creation time (Unix)."""

    streams: list[ClusterStream]
    total: int = Field(description="Streams matching the filters, on every page.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class InstanceStats(BaseModel):
    """One live instance, as of its last snapshot."""

    instance: str
    active: int = Field(description="Streams holding a slot on it.")
    waiting: int = Field(description="Streams queued for a slot on it.")
    max_streams: int | None
    max_streams_per_key: int | None
    max_waiting: int | None
    opened_total: int
    closed_total: int
    closing: bool = Field(description="Whether it has stopped admitting.")
    last_seen: float = Field(description="Unix time of its last snapshot (its own clock).")
    seen_ago: float = Field(description="Seconds since Redis stored it (Redis' clock).")


class ClusterStats(BaseModel):
    """``GET /cluster/stats``: totals over the live instances, and each one."""

    active: int
    waiting: int
    streams: int = Field(description="Streams listed in every snapshot (open or closing).")
    instances: list[InstanceStats]


class Limits(BaseModel):
    """The admission limits (null: none)."""

    max_streams: int | None
    max_streams_per_key: int | None
    max_waiting: int | None


MAX_LIMIT = 1_000_000_000
"""The largest limit ``PUT /limits`` accepts (null removes a limit)."""


def _integral(value: object) -> object:
    """JSON Schema's ``integer`` includes ``3.0``: take it as ``3`` (strict mode
    still refuses ``3.5``, ``"3"`` and ``true``)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


_Count = Annotated[int | None, BeforeValidator(_integral)]


class LimitsUpdate(BaseModel):
    """A change of limits: fields left out stay as they are; null removes a limit."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_streams: _Count = Field(default=None, ge=1, le=MAX_LIMIT)
    max_streams_per_key: _Count = Field(default=None, ge=1, le=MAX_LIMIT)
    max_waiting: _Count = Field(default=None, ge=0, le=MAX_LIMIT, description="0: never queue.")


class Stats(BaseModel):
    """``manager.stats()``: counters and limits now."""

    active: int = Field(description="Streams holding a slot.")
    waiting: int = Field(description="Streams queued for a slot.")
    max_streams: int | None
    max_streams_per_key: int | None
    max_waiting: int | None
    opened_total: int
    admitted_total: int
    rejected_total: int
    closed_total: int
    closed_by_reason: dict[str, int]
    active_by_key: dict[str, int]
    waiting_by_key: dict[str, int]
    closing: bool = Field(description="Whether the manager has stopped admitting.")

    @classmethod
    def of(cls, stats: ManagerStats) -> Stats:
        """The model of ``manager.stats()``."""
        return cls(
            active=stats.active,
            waiting=stats.waiting,
            max_streams=stats.max_streams,
            max_streams_per_key=stats.max_streams_per_key,
            max_waiting=stats.max_waiting,
            opened_total=stats.opened_total,
            admitted_total=stats.admitted_total,
            rejected_total=stats.rejected_total,
            closed_total=stats.closed_total,
            closed_by_reason=dict(stats.closed_by_reason),
            active_by_key=dict(stats.active_by_key),
            waiting_by_key=dict(stats.waiting_by_key),
            closing=stats.closing,
        )


class Health(BaseModel):
    """``GET /healthz``."""

    status: str = Field(
        description="'ok', 'degraded' (the limiter's backend is lost), or 'shutting_down' "
        "(with a 503)."
    )
    active: int
    waiting: int
    limiter_degraded: bool = Field(
        default=False, description="The admission limiter's backend (Redis) is lost."
    )
    limiter_detail: str | None = Field(
        default=None, description="What the limiter does about it (its fault policy)."
    )
    leases_lost: int = Field(
        default=0, description="Leases found missing in Redis while a stream held them."
    )


class ErrorDetail(BaseModel):
    """What went wrong, with a stable code."""

    code: str = Field(description="Stable: match on it (stream_not_found, unauthorized...).")
    message: str = Field(description="What was wrong and what to do.")
    details: list[dict[str, object]] | None = Field(
        default=None, description="For validation_error: each invalid field."
    )


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail
