"""The inspection API's Prometheus metrics: one registry per app, never the global one.

Two sources, so that several managers in one process (or one test) never collide:

- **at scrape time**, a custom collector reads ``manager.stats()`` and
  ``manager.streams()``: streams running and waiting (vLLM's
  ``num_requests_running`` / ``num_requests_waiting``), by phase, the limits, and the
  manager's own totals (opened, admitted, rejected, closed by reason). These are
  exact whenever they are scraped;
- **from the change feed**, histograms of what each closed stream took (end to
  end, queue time, time to first item) and counters of what it delivered. A task
  run by the app's lifespan (:meth:`AdminMetrics.run_feed`) watches
  ``manager.watch()``; were it ever to fall behind, the feed's ``overflow`` is
  counted in ``streammgr_metrics_feed_overflows_total`` (the samples lost with it
  are not guessed).

Names follow the LLM servers users already scrape (vLLM), with a ``streammgr_``
prefix and base units (seconds, bytes). docs/http-api.md lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._manager import StreamManager
from .._registry import NoteValue, StreamInfo
from .._states import CloseReason, Phase

__all__ = ["METRICS_CONTENT_TYPE", "AdminMetrics"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format that ``generate_latest`` writes."""

# Seconds, from a few milliseconds to half an hour: LLM streams last seconds to
# minutes; queue waits and first items are usually far shorter.
LATENCY_BUCKETS: tuple[float, ...] = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0)
LATENCY_BUCKETS += (30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)
FIRST_ITEM_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25)
FIRST_ITEM_BUCKETS += (0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
QUEUE_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
QUEUE_BUCKETS += (10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

PREFIX = "streammgr_"


FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
"""The finish reasons counted by name; any other is counted as ``other``."""

_MAX_COUNT = 2**53  # the largest count a float holds exactly


class _ManagerCollector(Collector):
    """What the manager knows now, read at every scrape."""

    def __init__(self, manager: StreamManager) -> None:
        self._manager = manager

    def describe(self) -> Iterable[Metric]:
        """The same families as :meth:`collect` (for the registry's name check)."""
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        """Families built from ``manager.stats()`` and ``manager.streams()`` now."""
        stats = self._manager.stats()
        yield GaugeMetricFamily(
            PREFIX + "num_requests_running",
            "Streams holding an admission slot (admitted, producer still running).",
            value=stats.active,
        )
        yield GaugeMetricFamily(
            PREFIX + "num_requests_waiting",
            "Streams queued for an admission slot.",
            value=stats.waiting,
        )
        by_phase = GaugeMetricFamily(
            PREFIX + "streams",
            "Streams in flight (in the registry, not yet closed), by phase.",
            labels=["phase"],
        )
        counts = dict.fromkeys(Phase, 0)
        for info in self._manager.streams():
            counts[info.phase] += 1
        for phase, count in counts.items():
            if phase is not Phase.CLOSED:
                by_phase.add_metric([phase.value], count)
        yield by_phase
        for name, limit, text in (
            ("max_streams", stats.max_streams, "the global admission limit"),
            ("max_streams_per_key", stats.max_streams_per_key, "the per-key admission limit"),
            ("max_waiting", stats.max_waiting, "the bound of the admission queue"),
        ):
            # A limit too large for a float is no limit, as far as a gauge can say.
            value = math.inf if limit is None or limit > 2**53 else limit
            yield GaugeMetricFamily(PREFIX + name, f"{text.capitalize()} (+Inf: none).", value)
        limiter = self._manager.limiter.status()
        yield GaugeMetricFamily(
            PREFIX + "limiter_degraded",
            "1 while the admission limiter's backend (Redis) is lost and it runs on its "
            "fault policy (--redis-fault-policy).",
            value=int(limiter.degraded),
        )
        yield CounterMetricFamily(
            PREFIX + "leases_lost",
            "Admission leases found missing in Redis while a stream held them.",
            value=limiter.leases_lost,
        )
        yield GaugeMetricFamily(
            PREFIX + "manager_closing",
            "1 once the manager has stopped admitting (shutting down or closed).",
            value=int(stats.closing),
        )
        for name, value, text in (
            ("requests_opened", stats.opened_total, "Streams that entered open()."),
            ("requests_admitted", stats.admitted_total, "Streams that got a slot."),
            (
                "requests_rejected",
                stats.rejected_total,
                "Streams refused by a limit (StreamLimitExceeded: queue full, wait timed out).",
            ),
        ):
            yield CounterMetricFamily(PREFIX + name, text, value=value)
        closed = CounterMetricFamily(
            PREFIX + "requests_closed",
            "Streams that finished, by close reason.",
            labels=["reason"],
        )
        for reason in CloseReason:
            closed.add_metric([reason.value], stats.closed_by_reason.get(reason.value, 0))
        yield closed


class AdminMetrics:
    """The metrics of one inspection app: its own registry, collector and histograms.

    Args:
        manager: the manager measured.
        event_feeds: how many events feeds the app has open now.
        feed_buffer: events the histogram feed may fall behind before it overflows.
    """

    def __init__(
        self,
        manager: StreamManager,
        *,
        event_feeds: Callable[[], int] = lambda: 0,
        feed_buffer: int = 10_000,
    ) -> None:
        self._manager = manager
        self._feed_buffer = feed_buffer
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ManagerCollector(manager))
        registry = self.registry
        self._e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Seconds from open() to close, per closed stream.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._queue = Histogram(
            PREFIX + "request_queue_time_seconds",
            "Seconds a stream waited for its slot, per admitted stream.",
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self._first_item = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Seconds from open() to the first item (a token, for an LLM stream) reaching "
            "the reader, per stream that delivered one.",
            buckets=FIRST_ITEM_BUCKETS,
            registry=registry,
        )
        self._items = Counter(
            PREFIX + "delivered_items",
            "Items delivered to readers by closed streams.",
            registry=registry,
        )
        self._bytes = Counter(
            PREFIX + "delivered_bytes",
            "Bytes delivered to readers by closed streams.",
            registry=registry,
        )
        self._prompt_tokens = Counter(
            PREFIX + "prompt_tokens",
            "Prompt tokens of closed streams, as their upstream reported them (notes).",
            registry=registry,
        )
        self._generation_tokens = Counter(
            PREFIX + "generation_tokens",
            "Generated (completion) tokens of closed streams, as their upstream reported "
            "them (notes).",
            registry=registry,
        )
        self._finished = Counter(
            PREFIX + "request_success",
            "Closed streams whose upstream gave a finish reason, by that reason.",
            labelnames=["finished_reason"],
            registry=registry,
        )
        self._overflows = Counter(
            PREFIX + "metrics_feed_overflows",
            "Times the histogram feed fell behind the change feed (samples were lost).",
            registry=registry,
        )
        Gauge(
            PREFIX + "admin_event_feeds",
            "Events feeds (GET /streams/events) open now.",
            registry=registry,
        ).set_function(event_feeds)
        self._feed_up = Gauge(
            PREFIX + "metrics_feed_up",
            "1 while the histogram feed runs (the app's lifespan started it), else 0.",
            registry=registry,
        )

    def observe(self, info: StreamInfo) -> None:
        """Record one closed stream in the histograms and counters."""
        if info.closed_at is None:
            return
        self._e2e.observe(max(info.closed_at - info.created_at, 0.0))
        if info.admitted_at is not None:
            self._queue.observe(max(info.admitted_at - info.created_at, 0.0))
        if info.first_item_at is not None:
            self._first_item.observe(max(info.first_item_at - info.created_at, 0.0))
        if info.items:
            self._items.inc(info.items)
        if info.bytes:
            self._bytes.inc(info.bytes)
        notes = info.notes
        if notes:
            self._count_tokens(notes)

    def _count_tokens(self, notes: Mapping[str, NoteValue]) -> None:
        prompt, generated = notes.get("prompt_tokens"), notes.get("completion_tokens")
        # An upstream's count beyond _MAX_COUNT (a float cannot hold a 400-digit int:
        # OverflowError would end the feed) is not counted.
        if isinstance(prompt, int) and not isinstance(prompt, bool) and 0 < prompt <= _MAX_COUNT:
            self._prompt_tokens.inc(prompt)
        if (
            isinstance(generated, int)
            and not isinstance(generated, bool)
            and 0 < generated <= _MAX_COUNT
        ):
            self._generation_tokens.inc(generated)
        finish_reason = notes.get("finish_reason")
        if isinstance(finish_reason, str) and finish_reason:
            # Label values stay a bounded set whatever an upstream sends.
            known = finish_reason if finish_reason in FINISH_REASONS else "other"
            self._finished.labels(known).inc()

    async def run_feed(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Observe every stream that closes, until the manager closes.

        A slow scrape never slows this: it only reads the feed and updates counters.
        """
        async with self._manager.watch(max_buffer=self._feed_buffer) as events:
            self._feed_up.set(1)
            task_status.started()
            try:
                async for event in events:
                    if event.kind == "closed" and event.stream is not None:
                        self.observe(event.stream)
                    elif event.kind == "overflow":
                        self._overflows.inc()
            finally:
                self._feed_up.set(0)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
