"""``streammgr top``'s state, sans-IO: the streams in flight built from the events feed,
counts refreshed from polls, sorting, rates, the limits line, and the reconnect backoff.

No I/O, no clock and no terminal library here: :class:`TopModel` is fed parsed
events (``GET /admin/streams/events``, through :class:`streammgr.sse.SSEParser`),
pages of ``GET /admin/streams`` and ``GET /admin/stats`` answers, each with the
caller's monotonic ``now``; it answers the rows to show. The Textual app in
``_top_app.py`` does the I/O and the drawing.

What the feed carries: a snapshot, then only changes of *membership and admission*
(``opened`` → ``waiting``, ``admitted`` → ``connecting``, ``closed``). A stream's
later phases (``first_item``, ``streaming``, ``draining``, ``closing``) and its
``items`` / ``bytes`` change without an event, so they come from polling
``GET /admin/streams`` (``--refresh``). Which streams exist is the feed's word
alone: a poll only updates rows the feed knows (a poll answer may be older than an
``opened`` or ``closed`` that arrived first), and a sample older, on the server's
clock, than the one a row has is ignored.

In cluster mode (``top --cluster``) there is no feed: each poll of ``GET
/admin/cluster/streams`` says which streams exist on every instance, with an
``instance`` column, and ``GET /admin/cluster/stats`` gives the limits line.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

from ..sse import ServerSentEvent

__all__ = [
    "CLUSTER_COLUMNS",
    "COLUMNS",
    "Backoff",
    "Column",
    "FeedProtocolError",
    "Row",
    "TopModel",
    "format_age",
    "format_bytes",
    "format_rate",
]

Column = Literal["id", "key", "phase", "age", "items", "bytes", "rate", "instance"]
"""A column of the table, and a sort key (``instance``: in cluster mode)."""

COLUMNS: tuple[Column, ...] = get_args(Column)[:-1]
"""The table's columns, in order."""

CLUSTER_COLUMNS: tuple[Column, ...] = ("instance", *COLUMNS)
"""The table's columns in cluster mode, in order."""

# Text columns sort A to Z by default, numbers largest first (as top does);
# ``reverse`` flips either.
_LARGEST_FIRST = frozenset({"age", "items", "bytes", "rate"})

# The lifecycle's order, so that sorting by phase reads as the life of a stream.
_PHASE_ORDER = {
    phase: index
    for index, phase in enumerate(
        ("waiting", "connecting", "first_item", "streaming", "draining", "closing", "closed")
    )
}

_REMEMBERED_CLOSES = 4096
"""How many closed ids a model remembers, so that a late poll cannot bring one back."""


class FeedProtocolError(ValueError):
    """The events feed sent something that is not what docs/http-api.md describes."""


@dataclass(slots=True)
class Row:
    """One stream in flight as the model knows it.

    Attributes:
        id: the stream id.
        key: the admission key.
        phase: its phase at the last sample.
        age: seconds since creation at the last sample.
        items: items delivered to the reader at the last sample.
        bytes: bytes delivered to the reader at the last sample.
        rate: items per second (see :meth:`TopModel.rows`), or ``None`` before any
            item or before there is time to measure one.
        server_time: the server's clock at the last sample (``created_at + age``).
        seen_at: the caller's ``now`` when the last sample arrived.
        instance: the instance that runs it (cluster mode; ``""`` otherwise).
    """

    id: str
    key: str
    phase: str
    age: float
    items: int
    bytes: int
    rate: float | None
    server_time: float
    seen_at: float
    instance: str = ""

    def cells(self) -> tuple[str, ...]:
        """The row as the table shows it, one string per column of :data:`COLUMNS`."""
        return (
            self.id,
            self.key,
            self.phase,
            format_age(self.age),
            str(self.items),
            format_bytes(self.bytes),
            format_rate(self.rate),
        )

    def cluster_cells(self) -> tuple[str, ...]:
        """The row in cluster mode, one string per column of :data:`CLUSTER_COLUMNS`."""
        return (self.instance, *self.cells())


def _text(data: Mapping[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise FeedProtocolError(f"a stream object's {name!r} is not a string: {value!r}")
    return value


def _whole(data: Mapping[str, object], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FeedProtocolError(f"a stream object's {name!r} is not an integer: {value!r}")
    return value


def _number(data: Mapping[str, object], name: str) -> float:
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise FeedProtocolError(f"a stream object's {name!r} is not a number: {value!r}")
    return float(value)


_Sample = tuple[str, str, str, float, int, int, float, float | None, str]
"""(id, key, phase, age, items, bytes, server time, first item time, instance) of one
object."""


def _sample(data: object) -> _Sample:
    if not isinstance(data, Mapping):
        raise FeedProtocolError(f"a stream object is not a JSON object: {data!r}")
    age = _number(data, "age")
    first = data.get("first_item_at")
    return (
        _text(data, "id"),
        _text(data, "key"),
        _text(data, "phase"),
        age,
        _whole(data, "items"),
        _whole(data, "bytes"),
        _number(data, "created_at") + age,
        float(first) if isinstance(first, int | float) else None,
        str(data.get("instance") or ""),
    )


class TopModel:
    """The streams in flight and the limits, from the feed and from polls (sans-IO).

    Args:
        sort: the column to sort by.
        reverse: flip the column's natural order (A to Z for text, largest first
            for numbers).
        cluster: every instance's streams, from :meth:`apply_cluster_listing` and
            :meth:`apply_cluster_stats` (no feed).

    Raises:
        ValueError: ``sort`` is not one of :attr:`columns`.
    """

    def __init__(
        self, sort: Column = "age", *, reverse: bool = False, cluster: bool = False
    ) -> None:
        self.cluster = cluster
        self.columns = CLUSTER_COLUMNS if cluster else COLUMNS
        """The table's columns, in order."""
        if sort not in self.columns:
            raise ValueError(f"sort must be one of {', '.join(self.columns)}; got {sort!r}")
        self.sort: Column = sort
        self.reverse = reverse
        self.streams: dict[str, Row] = {}
        self.stats: dict[str, object] | None = None
        self.ended: str | None = None
        """The reason of the feed's ``end`` event (the server's manager closed), if any."""
        self.snapshots = 0
        """Snapshots applied (the first one, and one per overflow or reconnect)."""
        self._closed_ids: set[str] = set()
        self._closed_order: deque[str] = deque()

    # -- the feed ------------------------------------------------------------------

    def apply(self, event: ServerSentEvent, now: float) -> None:
        """Apply one event of ``GET /admin/streams/events``.

        ``snapshot`` replaces every row; ``opened`` and ``admitted`` add or update
        one; ``closed`` removes it; ``end`` records its reason. Unknown event types
        are ignored (a newer server may send more).

        Args:
            event: the parsed event.
            now: the caller's monotonic clock, in seconds.

        Raises:
            FeedProtocolError: the event's data is not the JSON described.
        """
        kind = event.event
        if kind not in ("snapshot", "opened", "admitted", "closed", "end"):
            return
        try:
            data = json.loads(event.data)
        except ValueError as exc:
            raise FeedProtocolError(f"a {kind!r} event's data is not JSON: {exc}") from None
        if kind == "snapshot":
            streams = data.get("streams") if isinstance(data, dict) else None
            if not isinstance(streams, list):
                raise FeedProtocolError("a snapshot event has no 'streams' list")
            rows = [self._row(sample, now, None) for sample in map(_sample, streams)]
            self.streams = {row.id: row for row in rows}
            self.ended = None
            self.snapshots += 1
        elif kind == "end":
            reason = data.get("reason") if isinstance(data, dict) else None
            self.ended = reason if isinstance(reason, str) else "unknown"
        elif kind == "closed":
            stream_id = _sample(data)[0]
            self.streams.pop(stream_id, None)
            self._remember_closed(stream_id)
        else:
            self._update(_sample(data), now, create=True)

    # -- polls ---------------------------------------------------------------------

    def apply_listing(self, streams: Iterable[object], now: float) -> None:
        """Refresh phases and counts from a page of ``GET /admin/streams``.

        Only rows the feed knows are updated (the feed alone says which streams
        exist), and only with a sample newer on the server's clock than theirs.

        Args:
            streams: the page's ``streams`` list.
            now: the caller's monotonic clock, in seconds.

        Raises:
            FeedProtocolError: an object is not a stream object.
        """
        for data in streams:
            self._update(_sample(data), now, create=False)

    def apply_stats(self, stats: object) -> None:
        """Keep ``GET /admin/stats``'s answer for :meth:`limits_line`.

        Raises:
            FeedProtocolError: the answer is not a JSON object.
        """
        if not isinstance(stats, dict):
            raise FeedProtocolError(f"the stats answer is not a JSON object: {stats!r}")
        self.stats = stats

    def apply_cluster_listing(self, streams: Iterable[object], now: float) -> None:
        """Apply every page of ``GET /admin/cluster/streams`` (cluster mode): the
        listing says which streams exist; a row's rate comes from its last sample.

        Raises:
            FeedProtocolError: an object is not a stream object.
        """
        samples = [_sample(data) for data in streams]
        previous = self.streams
        self.streams = {}
        for sample in samples:
            before = previous.get(sample[0])
            if before is not None and sample[6] < before.server_time:
                self.streams[sample[0]] = before  # older than what the row shows
            else:
                self.streams[sample[0]] = self._row(sample, now, before)

    def apply_cluster_stats(self, stats: object) -> None:
        """Keep ``GET /admin/cluster/stats``'s answer for :meth:`limits_line`.

        Raises:
            FeedProtocolError: the answer is not a JSON object with ``instances``.
        """
        if not isinstance(stats, dict) or not isinstance(stats.get("instances"), list):
            raise FeedProtocolError(f"the cluster stats answer has no instances: {stats!r}")
        self.stats = stats

    # -- what to show --------------------------------------------------------------

    def sort_by(self, column: Column) -> None:
        """Sort by ``column``; choosing the column already sorted by flips the order.

        Raises:
            ValueError: ``column`` is not one of :data:`COLUMNS`.
        """
        if column not in self.columns:
            raise ValueError(f"column must be one of {', '.join(self.columns)}; got {column!r}")
        if column == self.sort:
            self.reverse = not self.reverse
        else:
            self.sort, self.reverse = column, False

    def rows(self, now: float) -> list[Row]:
        """The rows to show, sorted, with ages moved on to ``now``.

        A row's age grows with the caller's clock between samples (the server's
        clock and the caller's both count seconds). Ties keep the oldest first.

        Args:
            now: the caller's monotonic clock, in seconds.
        """
        shown = [
            Row(
                row.id,
                row.key,
                row.phase,
                row.age + max(0.0, now - row.seen_at),
                row.items,
                row.bytes,
                row.rate,
                row.server_time,
                row.seen_at,
                row.instance,
            )
            for row in self.streams.values()
        ]
        shown.sort(key=lambda row: -row.age)  # the tie-break: oldest first
        column = self.sort
        descending = (column in _LARGEST_FIRST) != self.reverse
        if column == "phase":
            shown.sort(key=lambda row: _PHASE_ORDER.get(row.phase, len(_PHASE_ORDER)))
        elif column == "rate":
            # No rate yet sorts below every rate.
            shown.sort(key=lambda row: -1.0 if row.rate is None else row.rate)
        else:
            shown.sort(key=lambda row: getattr(row, column))
        if descending:
            shown.reverse()
        return shown

    def sort_label(self) -> str:
        """``"sorted by age (largest first)"`` and the like."""
        descending = (self.sort in _LARGEST_FIRST) != self.reverse
        if self.sort in _LARGEST_FIRST:
            order = "largest first" if descending else "smallest first"
        else:
            order = "Z to A" if descending else "A to Z"
        return f"sorted by {self.sort} ({order})"

    def limits_line(self) -> str:
        """Limit usage from the last stats: active/max, waiting/max, and per key.

        ``"active 3/100  waiting 0/100  per key max 10: tenant-a 2, tenant-b 1"``;
        from the rows alone before any stats came.
        """
        stats = self.stats
        if stats is None:
            waiting = sum(1 for row in self.streams.values() if row.phase == "waiting")
            return f"active {len(self.streams) - waiting}  waiting {waiting}  (no stats yet)"

        def usage(count: object, limit: object) -> str:
            return f"{count}/{'-' if limit is None else limit}"

        if self.cluster:
            return _cluster_line(stats, usage)

        parts = [
            f"active {usage(stats.get('active'), stats.get('max_streams'))}",
            f"waiting {usage(stats.get('waiting'), stats.get('max_waiting'))}",
        ]
        by_key = stats.get("active_by_key")
        waiting_by_key = stats.get("waiting_by_key")
        if isinstance(by_key, dict) and by_key:
            per_key = stats.get("max_streams_per_key")
            listed = sorted(by_key.items(), key=lambda item: (-_count(item[1]), item[0]))
            shown = []
            for key, count in listed[:5]:
                waits = waiting_by_key.get(key) if isinstance(waiting_by_key, dict) else None
                shown.append(f"{key} {count}" + (f" (+{waits} waiting)" if waits else ""))
            more = f", {len(listed) - 5} more" if len(listed) > 5 else ""
            limit = "-" if per_key is None else per_key
            parts.append(f"per key max {limit}: {', '.join(shown)}{more}")
        if stats.get("closing"):
            parts.append("CLOSING (not admitting)")
        return "  ".join(parts)

    # -- inside --------------------------------------------------------------------

    def _row(
        self,
        sample: _Sample,
        now: float,
        previous: Row | None,
    ) -> Row:
        stream_id, key, phase, age, items, size, server_time, first_item, instance = sample
        rate: float | None = None
        if previous is not None and server_time > previous.server_time:
            # Items since the previous sample, over the server time between them.
            rate = (items - previous.items) / (server_time - previous.server_time)
        elif previous is not None:
            rate = previous.rate
        elif first_item is not None and server_time > first_item:
            # No earlier sample: the average since the first item.
            rate = items / (server_time - first_item)
        if rate is not None and not math.isfinite(rate):
            rate = None
        return Row(stream_id, key, phase, age, items, size, rate, server_time, now, instance)

    def _update(
        self,
        sample: _Sample,
        now: float,
        *,
        create: bool,
    ) -> None:
        stream_id = sample[0]
        previous = self.streams.get(stream_id)
        if previous is None:
            if create and stream_id not in self._closed_ids:
                self.streams[stream_id] = self._row(sample, now, None)
            return
        if sample[6] < previous.server_time:
            return  # older than what the row shows
        self.streams[stream_id] = self._row(sample, now, previous)

    def _remember_closed(self, stream_id: str) -> None:
        if stream_id in self._closed_ids:
            return
        self._closed_ids.add(stream_id)
        self._closed_order.append(stream_id)
        if len(self._closed_order) > _REMEMBERED_CLOSES:
            self._closed_ids.discard(self._closed_order.popleft())


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def _cluster_line(stats: Mapping[str, object], usage: Callable[[object, object], str]) -> str:
    """``"cluster 2 instances  active 3/10  waiting 0  a 2/10, b 1/10"``."""
    instances = [one for one in cast("list[object]", stats["instances"]) if isinstance(one, dict)]
    limit = instances[0].get("max_streams") if instances else None
    parts = [
        f"cluster {len(instances)} instance{'' if len(instances) == 1 else 's'}",
        f"active {usage(stats.get('active'), limit)}",
        f"waiting {stats.get('waiting')}",
    ]
    shown = [
        f"{one.get('instance')} {one.get('active')}"
        + (f" (+{one.get('waiting')} waiting)" if one.get("waiting") else "")
        + (" CLOSING" if one.get("closing") else "")
        for one in instances[:8]
    ]
    more = f", {len(instances) - 8} more" if len(instances) > 8 else ""
    if shown:
        parts.append(f"per instance: {', '.join(shown)}{more}")
    return "  ".join(parts)


class Backoff:
    """Delays between reconnects: ``initial``, doubling up to ``maximum``; :meth:`reset`
    once a connection worked.

    Args:
        initial: the first delay, in seconds.
        maximum: the longest delay, in seconds.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 10.0) -> None:
        if not (initial > 0 and math.isfinite(initial)):
            raise ValueError(f"initial must be a positive number of seconds, got {initial!r}")
        if not (maximum >= initial and math.isfinite(maximum)):
            raise ValueError(f"maximum must be at least initial ({initial}), got {maximum!r}")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt (each call doubles the one after)."""
        delay = self._next
        self._next = min(self.maximum, delay * 2)
        return delay

    def reset(self) -> None:
        """A connection worked: the next delay is ``initial`` again."""
        self._next = self.initial


def format_age(seconds: float) -> str:
    """``"4.2s"``, ``"3m07s"``, ``"2h05m"``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_bytes(size: int) -> str:
    """``"512B"``, ``"1.5KiB"``, ``"2.0MiB"``."""
    if size < 1024:
        return f"{size}B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f}{unit}"


def format_rate(rate: float | None) -> str:
    """Items per second: ``"12.5/s"``, or ``"-"`` when there is none yet."""
    return "-" if rate is None else f"{rate:.1f}/s"
