"""A soak's quiet points and the growth fitted over them (``load_gateway.py --soak``,
``bench_gc.py compare``).

A quiet point is taken when nothing is in flight: what the gateway holds then is
what a leak would grow. The first quiet points are the warm-up, left out of the
fit: until the registry's history of closed streams is full (``history_size``,
1,000 by default in ``serve``: about 1.3 KiB a closed stream, bounded by design)
and, at least, the first fifth of the soak (the allocator's arenas, the pools).
The growth is the least-squares slope over the rest, in MiB an hour and in % of
the value at the end of the warm-up an hour; RSS (what the kernel charges:
Python objects, malloc's arenas and their fragmentation, tracemalloc's own
tables when it traces) beside the Python allocations tracemalloc counts, so
that a growth of the one without the other says which it is.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HISTORY_SIZE = 1000
"""``serve``'s registry history (the manager's ``history_size`` default): warm until full."""

STEP = 2**20
"""An RSS rise between two quiet points at least this large is reported as a step."""

SOAK_FILE = "soak.json"
"""Where ``load_gateway.py --tracemalloc DIR`` writes the quiet points, for ``compare``."""


@dataclass
class QuietPoint:
    """The gateway at one quiet point of a soak."""

    seconds: float  # since the soak began
    rss: int  # bytes
    fds: int
    closed: int  # streams closed since the gateway started
    traced: int | None = None  # bytes tracemalloc traces (None: not tracing)
    gen2_objects: int | None = None  # objects in the oldest generation
    snapshot: int | None = None  # the number of its tracemalloc snapshot
    allocator: dict[str, int] | None = None  # memory by layer (benchmarks/_allocator.py)


def warm_up_end(points: list[QuietPoint], history_size: int = HISTORY_SIZE) -> int:
    """The index of the first quiet point after the warm-up: the history full and
    the first fifth of the soak over (``len(points)`` if it never ended)."""
    if not points:
        return 0
    fifth = points[-1].seconds / 5
    for index, point in enumerate(points):
        if point.closed >= history_size and point.seconds >= fifth:
            return index
    return len(points)


def slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def growth(points: list[QuietPoint], values: list[float]) -> tuple[float, float]:
    """The slope of ``values`` (bytes) over the points' hours, in MiB/hour and in %
    of the first value an hour."""
    hours = [point.seconds / 3600 for point in points]
    per_hour = slope(hours, values)
    return per_hour / 2**20, 100 * per_hour / values[0] if values[0] else float("nan")


def report(points: list[QuietPoint], history_size: int = HISTORY_SIZE) -> list[str]:
    """Every quiet point, then the slopes after the warm-up."""
    start = warm_up_end(points, history_size)
    lines = [
        "quiet points (* warm-up: until the history holds "
        f"{history_size} closed streams and the first fifth is over):",
        "      time  closed  RSS MiB  traced MiB  gen-2 objects  fds",
    ]
    for index, point in enumerate(points):
        traced = "" if point.traced is None else f"{point.traced / 2**20:.2f}"
        gen2 = "" if point.gen2_objects is None else str(point.gen2_objects)
        lines.append(
            f"  {'*' if index < start else ' '}{point.seconds / 60:6.1f}m {point.closed:>7} "
            f"{point.rss / 2**20:>8.1f} {traced:>11} {gen2:>14} {point.fds:>4}"
        )
    steady = points[start:]
    if len(steady) < 3:
        lines.append(
            f"too few quiet points after the warm-up ({len(steady)}) for a slope: "
            "run the soak longer"
        )
        return lines
    minutes = (steady[-1].seconds - steady[0].seconds) / 60
    rss, rss_pct = growth(steady, [point.rss for point in steady])
    lines.append(
        f"after the warm-up ({len(steady)} quiet points over {minutes:.1f} min, "
        f"{steady[-1].closed - steady[0].closed} streams closed): RSS {rss:+.2f} MiB/hour "
        f"({rss_pct:+.2f}%/hour of {steady[0].rss / 2**20:.1f} MiB)"
    )
    steps = [
        f"{(after.rss - before.rss) / 2**20:+.1f} MiB at {after.seconds / 60:.1f} min"
        for before, after in itertools.pairwise(steady)
        if after.rss - before.rss >= STEP
    ]
    if steps:
        # The allocator's high-water mark rises with a new peak of memory in flight
        # and stays: a line through a step is not a growth rate.
        lines.append(f"  RSS rose in steps of at least 1 MiB: {', '.join(steps)}")
    if all(point.traced is not None for point in steady):
        traced_values = [float(point.traced or 0) for point in steady]
        python, python_pct = growth(steady, traced_values)
        lines.append(
            f"  Python allocations (tracemalloc) {python:+.2f} MiB/hour "
            f"({python_pct:+.1f}%/hour of {traced_values[0] / 2**20:.2f} MiB traced; "
            f"{100 * python * 2**20 / steady[0].rss:+.2f}% of RSS an hour)"
        )
    lines.extend(layers_report(steady))
    if all(point.gen2_objects is not None for point in steady):
        hours = [point.seconds / 3600 for point in steady]
        objects = slope(hours, [float(point.gen2_objects or 0) for point in steady])
        lines.append(
            f"  oldest generation {objects:+.0f} objects/hour "
            f"(cycles waiting for a full collection would grow it)"
        )
    return lines


LAYERS: dict[str, Callable[[dict[str, int]], int]] = {
    "anonymous (heaps)": lambda stats: stats["rss_anon"],
    "file-backed (code)": lambda stats: stats["rss_file"],
    "pymalloc arenas": lambda stats: stats["pymalloc_arenas"] * 2**20,
    "malloc from the system": lambda stats: stats["malloc_system"],
    "malloc free in its heaps": lambda stats: stats["malloc_free"],
    "malloc in use": lambda stats: stats["malloc_system"] - stats["malloc_free"],
    "malloc mmap blocks": lambda stats: stats["malloc_mmap"],
}
"""How a quiet point's memory splits, from the probe's ``allocator`` stats."""


def layers_report(steady: list[QuietPoint]) -> list[str]:
    """The slope of each memory layer after the warm-up, where the probe reported them."""
    stats = [point.allocator for point in steady]
    if not all(stats):
        return []
    lines = ["  by layer (first -> last quiet point after the warm-up, slope):"]
    for name, value in LAYERS.items():
        try:
            values = [float(value(item or {})) for item in stats]
        except KeyError:
            continue
        per_hour, _ = growth(steady, values)
        lines.append(
            f"    {name:<26} {values[0] / 2**20:7.2f} -> {values[-1] / 2**20:7.2f} MiB, "
            f"{per_hour:+.2f} MiB/hour"
        )
    arenas = [(item or {}).get("malloc_arenas") for item in stats]
    lines.append(f"    glibc arenas: {arenas[0]} -> {arenas[-1]}")
    return lines


def save(directory: Path, points: list[QuietPoint]) -> None:
    """Write the quiet points where ``compare`` finds them."""
    (directory / SOAK_FILE).write_text(json.dumps([asdict(point) for point in points]))


def load(directory: Path) -> list[QuietPoint] | None:
    """The quiet points ``save`` wrote, or ``None``."""
    path = directory / SOAK_FILE
    if not path.exists():
        return None
    return [QuietPoint(**point) for point in json.loads(path.read_text())]
