"""Garbage-collection pauses and memory of held streams, through ``streammgr serve``.

Run it with::

    .venv/bin/python benchmarks/bench_gc.py                         # 1,000 and 10,000 held
    .venv/bin/python benchmarks/bench_gc.py --quick                 # 1,000 held
    .venv/bin/python benchmarks/bench_gc.py --streams 1000 --gc python --gc server
    .venv/bin/python benchmarks/bench_gc.py --memory --streams 1000 # where the memory goes

The gateway is the real ``streammgr serve`` (in front of its in-process simulated
upstream, or ``--upstream sim``: the stamping simulator of _procs.py on its own port,
which needs two descriptors a stream in the gateway), started through this file's
``probe`` role: ``gc.callbacks`` time every collection from its start to its stop,
by generation; SIGUSR2 makes it write what it saw since the last SIGUSR2 (and,
with ``--memory``, a tracemalloc snapshot and the gc-tracked objects by type) to a
file the orchestrator reads. Each ``--gc`` setting (``--gc-threshold`` of serve:
``python`` leaves the interpreter's collector as it is; then, after an ``@``, its
``--gc-interval``: ``2000,10,1000@off`` is what serve did before the timed young
collections) is one gateway process; the settings take turns for each stream count,
in one run.

Phases, each one's pauses apart: **opening** (the streams connecting, a few at a
time per client), **held** (``--hold`` seconds with every stream open and a churn
of short streams beside them: what a busy server does while holding), and
**leaving** (every client gone at once). A token every ``--token-interval``
seconds on every held stream.

``--memory`` (one setting, the first ``--gc``): tracemalloc (``--frames`` deep) in the
gateway from the end of the warm-up on; the growth until the streams are held, per
held stream, by component (the innermost frame of a known package: hypercorn, h11, httpx, httpcore,
trio, starlette, streammgr; trio's own allocations also charged to the package that
called into trio), and gc-tracked objects per stream by type.

``--cpu SECONDS`` (no probe: plain ``streammgr serve`` processes, the settings taking
turns ``--repeats`` times, their order rotating): the gateway's CPU per second idle
(after the warm-up, no stream), then with ``--cpu-streams`` (100) held streams, a token
each every ``--token-interval`` seconds, and RSS per held stream: what the timed
collections cost where they find little to do.

``compare DIR`` (with ``load_gateway.py --tracemalloc DIR``): the growth between the
soak's quiet points, by line, largest first.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs as procs
import _soak as soak
from _allocator import allocator_stats

HERE = Path(__file__).resolve().parent
PACKAGES = (
    "hypercorn",
    "h11",
    "wsproto",
    "httpx",
    "httpcore",
    "trio",
    "starlette",
    "structlog",
    "streammgr",
    "anyio",
    "sniffio",
)


# -- the probe: inside the gateway process --------------------------------------------------


class PauseRecorder:
    """Every collection's duration, by generation, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.started = self.started_cpu = 0.0
        self.pauses: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
        self.collected = 0
        # What the longest young collection of each generation looked at (see _young).
        self._young: tuple[int, str, int] = (0, "", 0)
        self.longest: dict[int, tuple[float, int, str, int, int]] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if phase == "start":
            if generation == 1:
                self._young = _young()  # counted before the clock starts
            self.started, self.started_cpu = time.perf_counter(), time.thread_time()
        else:
            wall = time.perf_counter() - self.started
            cpu = time.thread_time() - self.started_cpu
            self.pauses[generation].append((wall, cpu))
            self.collected += info["collected"]
            if generation == 1 and cpu > self.longest.get(1, (0.0,))[0]:
                objects, kind, referents = self._young
                self.longest[1] = (cpu, objects, kind, referents, info["collected"])

    def take(self) -> dict[str, Any]:
        """What was recorded since the last take, and start again."""
        pauses, self.pauses = self.pauses, {0: [], 1: [], 2: []}
        collected, self.collected = self.collected, 0
        longest, self.longest = self.longest, {}
        walls = sorted(wall for values in pauses.values() for wall, _ in values)
        cpus = sorted(cpu for values in pauses.values() for _, cpu in values)
        return {
            "collected": collected,
            # every collection's pause, whatever its generation: the 99th percentile
            "p99": _percentile(walls, 0.99),
            "p99_cpu": _percentile(cpus, 0.99),
            # the longest gen-1 collection: CPU s, young objects, the young container
            # with the most references (type, how many), objects it collected
            "longest_young": longest.get(1),
            "by_generation": {
                str(generation): {
                    "count": len(values),
                    "max": max((wall for wall, _ in values), default=0.0),
                    "max_cpu": max((cpu for _, cpu in values), default=0.0),
                    "total": sum(wall for wall, _ in values),
                    "total_cpu": sum(cpu for _, cpu in values),
                }
                for generation, values in pauses.items()
            },
        }


def _percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted ``values`` lie (nearest rank)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, int(fraction * len(values) + 0.5) - 1))]


def _young() -> tuple[int, str, int]:
    """The objects a gen-1 collection is about to visit, and the one among them with
    the most references (each one a visit, often a cache miss, into the old heap)."""
    young = gc.get_objects(0) + gc.get_objects(1)
    widest, most = "", 0
    for item in young:
        if isinstance(item, (list, dict, set, tuple, frozenset)) and len(item) > most:
            widest, most = type(item).__qualname__, len(item)
    return len(young), widest, most


def tracked_by_type() -> dict[str, int]:
    """How many gc-tracked objects of each type are alive (frozen ones left out)."""
    counts: collections.Counter[str] = collections.Counter()
    for item in gc.get_objects():
        kind = type(item)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return dict(counts)


def probe(argv: Sequence[str]) -> int:
    """Run ``streammgr ARGV`` with collections timed; SIGUSR2 writes a report."""
    parser = argparse.ArgumentParser(prog="bench_gc.py probe")
    parser.add_argument("--report", type=Path, required=True, help="SIGUSR2 writes N.json here")
    parser.add_argument(
        "--frames", type=int, default=0, help="tracemalloc frames from the first report (0: off)"
    )
    parser.add_argument("--objects", action="store_true", help="count objects by type")
    parser.add_argument("--garbage", action="store_true", help="keep cyclic garbage to count")
    parser.add_argument(
        "--trim",
        type=float,
        metavar="SECONDS",
        help="call glibc's malloc_trim(0) this often (a thread): an experiment on RSS",
    )
    own, _, command = _split(argv)
    args = parser.parse_args(own)
    args.report.mkdir(parents=True, exist_ok=True)
    recorder = PauseRecorder()
    gc.callbacks.append(recorder)
    if args.garbage:
        gc.set_debug(gc.DEBUG_SAVEALL)
    taken = 0
    trims: list[float] = []  # CPU seconds of each malloc_trim (--trim)

    def report(number: int, frame: object) -> None:
        nonlocal taken
        data = recorder.take()
        data["threshold"] = gc.get_threshold()
        data["stats"] = gc.get_stats()  # collections by generation since the start
        data["frozen"] = gc.get_freeze_count()
        # For a soak's slopes (load_gateway.py, compare): when, the process's RSS, the
        # objects in the oldest generation (what waits for a full collection: a
        # cycle per stream would grow it), and what tracemalloc traces and costs.
        data["at"] = time.monotonic()
        data["rss"] = _rss()
        data["gen2_objects"] = len(gc.get_objects(2))
        data["allocator"] = allocator_stats()
        if trims:
            data["trims"] = len(trims)
            data["trim_cpu_max"] = max(trims)
            data["trim_cpu_total"] = sum(trims)
        if tracemalloc.is_tracing():
            data["traced"] = tracemalloc.get_traced_memory()[0]
            data["tracemalloc_memory"] = tracemalloc.get_tracemalloc_memory()
        if args.objects:
            # Garbage not collected yet is not what a held stream keeps: collect it
            # first (untimed: this collection is not the server's own).
            gc.callbacks.remove(recorder)
            gc.collect()
            gc.callbacks.append(recorder)
            data["objects"] = tracked_by_type()
        if args.garbage:
            gc.collect()
            counts = collections.Counter(
                f"{type(item).__module__}.{type(item).__qualname__}" for item in gc.garbage
            )
            data["garbage"] = dict(counts)
            data["garbage_samples"] = _samples(gc.garbage)
            gc.garbage.clear()
        if args.frames:
            # Traced from the first report on (the imports and the warm-up untraced:
            # slow, and not what is measured); that first snapshot is empty.
            if not tracemalloc.is_tracing():
                tracemalloc.start(args.frames)
            tracemalloc.take_snapshot().dump(str(args.report / f"{taken}.snap"))
        (args.report / f"{taken}.json.part").write_text(json.dumps(data))
        (args.report / f"{taken}.json.part").rename(args.report / f"{taken}.json")
        taken += 1

    signal.signal(signal.SIGUSR2, report)
    from streammgr._malloc import find_malloc_trim

    trim_now = find_malloc_trim()
    if args.trim and trim_now is not None:
        every = args.trim

        def trim() -> None:
            while True:
                time.sleep(every)
                began = time.thread_time()
                trim_now(0)
                trims.append(time.thread_time() - began)

        threading.Thread(target=trim, name="bench-malloc-trim", daemon=True).start()
    from streammgr.cli import main

    return main(command)


def _rss() -> int:
    """This process's resident set, in bytes (0 where ``/proc`` has none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _samples(garbage: list[Any]) -> list[str]:
    """A few cyclic-garbage objects that name their origin: frames, functions, coroutines."""
    seen: collections.Counter[str] = collections.Counter()
    for item in garbage:
        code = getattr(item, "f_code", None) or getattr(item, "cr_code", None)
        code = code or getattr(item, "__code__", None)
        if code is not None:
            where = f"{code.co_filename}:{code.co_firstlineno}"
            seen[f"{type(item).__name__} {code.co_qualname} {where}"] += 1
        elif isinstance(item, BaseException):
            seen[f"exception {type(item).__qualname__}: {str(item)[:80]}"] += 1
    return [f"{count} {name}" for name, count in seen.most_common(40)]


def _split(argv: Sequence[str]) -> tuple[list[str], str, list[str]]:
    items = list(argv)
    if "--" not in items:
        raise SystemExit("bench_gc.py probe OPTIONS -- serve FLAGS")
    at = items.index("--")
    return items[:at], "--", items[at + 1 :]


# -- the orchestrator -------------------------------------------------------------------


@dataclass
class Prober:
    """A gateway started through the probe, and the reports it writes on SIGUSR2."""

    proc: procs.Proc
    reports: Path
    taken: int = 0

    def report(self, timeout: float = 600.0) -> dict[str, Any]:
        """Ask for a report and wait for it."""
        os.kill(self.proc.pid, signal.SIGUSR2)
        path = self.reports / f"{self.taken}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():  # another process's file: nothing to wait on
            if time.monotonic() > deadline:
                raise RuntimeError(f"no report from the gateway in {timeout}s")
            time.sleep(0.05)
        self.taken += 1
        data: dict[str, Any] = json.loads(path.read_text())
        data["snapshot"] = str(self.reports / f"{self.taken - 1}.snap")
        return data


def prober(
    workdir: Path,
    setting: str,
    upstream: str | None,
    *,
    frames: int = 0,
    objects: bool = False,
    garbage: bool = False,
) -> Prober:
    """The gateway (not started) with ``--gc-threshold setting``."""
    port = procs.free_port()
    reports = workdir / f"reports-{setting}-{port}"
    args = [procs.PYTHON, str(HERE / "bench_gc.py"), "probe", "--report", str(reports)]
    args += ["--frames", str(frames)] + (["--objects"] if objects else [])
    args += ["--garbage"] if garbage else []
    args += ["--", "serve", "--port", str(port), *procs.GATEWAY_FLAGS]
    threshold, _, interval = setting.partition("@")
    args += ["--gc-threshold", threshold] + (["--gc-interval", interval] if interval else [])
    if upstream is not None:
        args += ["--upstream-url", upstream]
    env = {**os.environ, "PYTHONPATH": str(procs.ROOT)}
    log = workdir / f"gateway-{setting}.log"
    proc = procs.Proc(f"gateway-{setting}", args, port, log, env)
    return Prober(proc, reports)


@dataclass
class Phase:
    """One phase's collections."""

    name: str
    seconds: float
    report: dict[str, Any]

    def cell(self) -> str:
        """The longest pause of each generation (ms, wall / CPU) and how many collections."""
        gens = self.report["by_generation"]
        return "  ".join(
            f"{gens[g]['max'] * 1000:6.1f}/{gens[g]['max_cpu'] * 1000:6.1f} ({gens[g]['count']:>4})"
            for g in ("0", "1", "2")
        )

    def total_cpu(self) -> float:
        """CPU seconds of every collection in the phase."""
        return sum(
            float(value.get("total_cpu", 0.0)) for value in self.report["by_generation"].values()
        )

    def longest(self, key: str = "max") -> float:
        """The longest pause of any generation, seconds (``max_cpu``: its CPU time)."""
        return max(float(value[key]) for value in self.report["by_generation"].values())


@dataclass
class Run:
    """One gateway process, one stream count."""

    setting: str
    streams: int
    established: int = 0
    rss_before: int = 0
    rss_held: int = 0
    phases: list[Phase] = field(default_factory=list)
    churned: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)


def churn_spec(port: int, streams: int, seed: int) -> procs.ClientSpec:
    """Short streams beside the held ones: a server's ordinary traffic."""
    return procs.ClientSpec(
        port=port,
        streams=streams,
        first_seed=seed,
        simulate={"tokens": 20, "first_token_latency": 0, "token_latency": 0.01},
        connect_parallel=20,
    )


def hold(workdir: Path, gateway: Prober, run: Run, args: argparse.Namespace) -> None:
    """Warm up, open ``run.streams``, hold them with a churn beside, leave."""
    port = gateway.proc.port
    warm = churn_spec(port, 200, 1)
    procs.start_clients(workdir, [warm], f"{run.setting}-warm").wait(600)
    time.sleep(1.0)  # the warm-up's connections closing before the baseline
    run.reports.append(gateway.report())
    run.rss_before = gateway.proc.rss()
    spec = procs.ClientSpec(
        port=port,
        streams=run.streams,
        first_seed=1_000_000,
        simulate={"tokens": 20, "first_token_latency": 0.0, "token_latency": args.token_interval},
        parallel_until_headers=True,
        connect_parallel=args.connect_parallel,
        hold=True,
    )
    start = time.monotonic()
    held = procs.start_clients(workdir, procs.split_specs(spec, args.clients), f"{run.setting}")
    try:
        _hold(workdir, gateway, run, args, held, start)
    finally:
        for popen in held.popens:
            if popen.poll() is None:
                popen.kill()
                popen.wait()


def _hold(
    workdir: Path,
    gateway: Prober,
    run: Run,
    args: argparse.Namespace,
    held: procs.ClientRun,
    start: float,
) -> None:
    port = gateway.proc.port
    deadline = start + args.open_timeout
    while procs.established(port) < run.streams and time.monotonic() < deadline:
        time.sleep(0.2)  # polling another process's sockets
    run.established = min(run.streams, procs.established(port))
    report = gateway.report()
    run.phases.append(Phase("opening", time.monotonic() - start, report))
    start = time.monotonic()
    seed = 2_000_000
    while time.monotonic() - start < args.hold:
        churn = churn_spec(port, args.churn, seed)
        seed += args.churn
        procs.start_clients(workdir, [churn], f"{run.setting}-churn").wait(300)
        run.churned += args.churn
    run.rss_held = gateway.proc.rss()
    report = gateway.report()
    run.reports.append(report)
    run.phases.append(Phase("held", time.monotonic() - start, report))
    start = time.monotonic()
    held.signal(signal.SIGUSR1)
    held.wait(300)
    deadline = time.monotonic() + 120
    while procs.established(port) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    run.phases.append(Phase("leaving", time.monotonic() - start, gateway.report()))


def component(frames: Sequence[tracemalloc.Frame], skip_trio: bool) -> str:
    """The known package of the innermost frame that has one (``skip_trio``: trio's
    own frames charged to the package that called it)."""
    for frame in reversed(frames):  # innermost first (tracemalloc lists oldest first)
        parts = frame.filename.replace("\\", "/").split("/")
        for package in PACKAGES:
            if package in parts and (package != "trio" or not skip_trio):
                return package
    return "other"


def where(frames: Sequence[tracemalloc.Frame]) -> str:
    """``package/file.py`` of the innermost frame of a known package (trio's charged
    to its caller)."""
    for frame in reversed(frames):  # innermost first
        parts = frame.filename.replace("\\", "/").split("/")
        for package in PACKAGES:
            if package in parts and package != "trio":
                return "/".join(parts[parts.index(package) :])
    return "other"


def where_line(frames: Sequence[tracemalloc.Frame]) -> str:
    """``package/file.py:line`` of the innermost frame of a known package (trio's
    charged to its caller)."""
    for frame in reversed(frames):  # innermost first
        parts = frame.filename.replace("\\", "/").split("/")
        for package in PACKAGES:
            if package in parts and package != "trio":
                return "/".join(parts[parts.index(package) :]) + f":{frame.lineno}"
    return "other"


def memory_report(before: str, held: str, streams: int) -> list[str]:
    """The growth between two snapshots per held stream, by component."""
    old = tracemalloc.Snapshot.load(before)
    new = tracemalloc.Snapshot.load(held)
    lines: list[str] = []
    for skip_trio in (False, True):
        sizes: collections.Counter[str] = collections.Counter()
        counts: collections.Counter[str] = collections.Counter()
        for stat in new.compare_to(old, "traceback"):
            name = component(list(stat.traceback), skip_trio)
            sizes[name] += stat.size_diff
            counts[name] += stat.count_diff
        total = sum(sizes.values())
        title = "trio charged to its caller" if skip_trio else "innermost known package"
        lines.append(f"\nPython allocations per held stream, by component ({title}):")
        lines.append(f"  {'component':<12} {'KiB/stream':>10} {'blocks/stream':>14}")
        for name, size in sizes.most_common():
            lines.append(
                f"  {name:<12} {size / 1024 / streams:>10.2f} {counts[name] / streams:>14.1f}"
            )
        lines.append(f"  {'total':<12} {total / 1024 / streams:>10.2f}")
    by_file: collections.Counter[str] = collections.Counter()
    for stat in new.compare_to(old, "traceback"):
        by_file[where(list(stat.traceback))] += stat.size_diff
    lines.append("\nBy file (the innermost frame of a known package), per held stream:")
    for name, size in by_file.most_common(30):
        lines.append(f"  {size / streams:>8.0f} B  {name}")
    by_line: collections.Counter[str] = collections.Counter()
    for stat in new.compare_to(old, "traceback"):
        by_line[where_line(list(stat.traceback))] += stat.size_diff
    lines.append("\nBy line (the innermost frame of a known package), per held stream:")
    for name, size in by_line.most_common(40):
        lines.append(f"  {size / streams:>8.0f} B  {name}")
    lines.append("\nThe largest lines (per held stream):")
    for stat in new.compare_to(old, "lineno")[:25]:
        frame = stat.traceback[0]
        lines.append(
            f"  {stat.size_diff / streams:>8.0f} B {stat.count_diff / streams:>6.1f} blocks  "
            f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        )
    return lines


def objects_report(before: dict[str, int], held: dict[str, int], streams: int) -> list[str]:
    """gc-tracked objects per held stream, by type."""
    growth = collections.Counter({name: held.get(name, 0) - before.get(name, 0) for name in held})
    total = sum(value for value in growth.values() if value > 0)
    lines = [f"\ngc-tracked objects per held stream: {total / streams:.1f}; by type:"]
    sockets = growth.get("socket.socket", 0)
    if sockets:
        # With --upstream sim a stream fully held has two sockets (its client's, its
        # upstream's): on a loaded machine some are still connecting upstream.
        lines.insert(
            0,
            f"\nsockets gained / 2: {sockets / 2:.0f} streams fully held (of {streams}): "
            f"{total / (sockets / 2):.1f} objects each",
        )
    for name, value in growth.most_common(30):
        if value / streams >= 0.5:
            lines.append(f"  {value / streams:>7.1f}  {name}")
    return lines


def compare(directory: Path) -> int:
    """A soak's growth: its quiet points and slopes (when ``load_gateway.py`` wrote
    them), the traced total at each snapshot, then the lines that grew most
    between the end of the warm-up and the last snapshot."""
    snaps = sorted(directory.glob("*.snap"), key=lambda path: int(path.stem))
    if len(snaps) < 2:
        raise SystemExit(f"{directory} holds fewer than two snapshots")
    points = soak.load(directory)
    # Tracing starts at the first quiet point (an empty snapshot). Without the
    # soak's points the second is the base (the first round of load is the
    # warm-up); with them, the first quiet point after the warm-up.
    base = snaps[1] if len(snaps) > 2 else snaps[0]
    if points:
        for line in soak.report(points):
            print(line)
        steady = points[soak.warm_up_end(points) :]
        if steady and steady[0].snapshot is not None:
            base = directory / f"{steady[0].snapshot}.snap"
    first = tracemalloc.Snapshot.load(str(base))
    print(f"\ntraced at each snapshot from {base.name} on (what tracemalloc counts):")
    last = first
    for path in snaps[snaps.index(base) + 1 :]:
        last = tracemalloc.Snapshot.load(str(path))
        total = sum(stat.size for stat in last.statistics("filename"))
        blocks = sum(stat.count for stat in last.statistics("filename"))
        print(f"  {path.name:>8}: {total / 2**20:8.2f} MiB, {blocks:>8} blocks")
    stats = last.compare_to(first, "lineno")
    total = sum(stat.size_diff for stat in stats)
    print(f"\n{base.name} -> {snaps[-1].name}: {total / 1024:+.1f} KiB traced; largest lines:")
    for stat in stats[:20]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / 1024:>+9.1f} KiB {stat.count_diff:>+7} blocks  "
            f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        )
    return 0


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every thread of ``pid`` (``/proc/<pid>/task/*/schedstat``:
    the clock-tick counts of ``/proc/<pid>/stat`` are too coarse for an idle process)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):  # a thread that just ended
            total += int(stat.read_text().split()[0])
    return total


@dataclass
class Cost:
    """One gateway's CPU idle and with streams held (``--cpu``)."""

    setting: str
    idle: float  # CPU seconds a second
    held: float
    per_stream: float  # RSS KiB a held stream


def cpu_cost(workdir: Path, setting: str, args: argparse.Namespace) -> Cost:
    """A plain gateway: warm up, CPU over ``args.cpu`` seconds idle, then with
    ``args.cpu_streams`` streams held."""
    port = procs.free_port()
    threshold, _, interval = setting.partition("@")
    command = [procs.PYTHON, "-m", "streammgr", "serve", "--port", str(port)]
    command += [*procs.GATEWAY_FLAGS, "--gc-threshold", threshold]
    command += ["--gc-interval", interval] if interval else []
    env = {**os.environ, "PYTHONPATH": str(procs.ROOT)}
    proc = procs.Proc(f"gateway-{setting}", command, port, workdir / "gateway-cpu.log", env)
    with proc:
        procs.start_clients(workdir, [churn_spec(port, 200, 1)], "cpu-warm").wait(600)
        time.sleep(2.0)  # the warm-up's connections closing
        before = cpu_ns(proc.pid)
        time.sleep(args.cpu)  # measuring an idle process: nothing to wait on
        idle = (cpu_ns(proc.pid) - before) / 1e9 / args.cpu
        rss = proc.rss()
        spec = procs.ClientSpec(
            port=port,
            streams=args.cpu_streams,
            first_seed=1_000_000,
            simulate={
                # enough for the measurement (the simulator makes them all at once)
                "tokens": int((args.cpu + 60) / args.token_interval),
                "first_token_latency": 0.0,
                "token_latency": args.token_interval,
            },
            parallel_until_headers=True,
            hold=True,
        )
        held = procs.start_clients(workdir, [spec], "cpu-held")
        try:
            deadline = time.monotonic() + 120
            while procs.established(port) < args.cpu_streams and time.monotonic() < deadline:
                time.sleep(0.1)  # polling another process's sockets
            time.sleep(1.0)  # the opening's work done
            before = cpu_ns(proc.pid)
            time.sleep(args.cpu)
            busy = (cpu_ns(proc.pid) - before) / 1e9 / args.cpu
            per_stream = (proc.rss() - rss) / args.cpu_streams
        finally:
            held.signal(signal.SIGUSR1)
            held.wait(120)
    return Cost(setting, idle, busy, per_stream)


def cpu_main(args: argparse.Namespace) -> int:
    """``--cpu``: every setting's costs, taking turns."""
    costs: dict[str, list[Cost]] = {setting: [] for setting in args.gc}
    with tempfile.TemporaryDirectory(prefix="bench-gc-cpu-") as tmp:
        for repeat in range(args.repeats):
            shift = repeat % len(args.gc)
            for setting in args.gc[shift:] + args.gc[:shift]:
                cost = cpu_cost(Path(tmp), setting, args)
                costs[setting].append(cost)
                print(
                    f"  repeat {repeat + 1} {setting:<20} idle {cost.idle * 1000:6.2f} ms/s  "
                    f"{args.cpu_streams} held {cost.held * 1000:6.1f} ms/s  "
                    f"RSS {cost.per_stream:5.1f} KiB a held stream",
                    flush=True,
                )
    print(
        f"\nmedian over {args.repeats} repeats: CPU ms a second idle, with "
        f"{args.cpu_streams} held streams (a token every {args.token_interval:g} s), "
        f"RSS KiB a held stream"
    )
    for setting, values in costs.items():
        idle = statistics.median(cost.idle for cost in values) * 1000
        held = statistics.median(cost.held for cost in values) * 1000
        per = statistics.median(cost.per_stream for cost in values)
        print(f"  {setting:<20} idle {idle:6.2f}  held {held:6.1f}  RSS {per:5.1f}")
    print(f"load average after: {procs.load_average()}")
    return 0


def main() -> int:
    """Parse the flags, run every setting for every stream count, print the tables."""
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        return probe(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        return compare(Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, action="append", help="1000 and 10000")
    parser.add_argument("--quick", action="store_true", help="1,000 streams only, held 5 s")
    parser.add_argument(
        "--gc",
        action="append",
        help="serve settings to compare: --gc-threshold (python, server, G0,G1,G2), "
        "optionally @--gc-interval (server@off, 2000,10,1000@off: before issue #15's "
        "second pass; server@0.05)",
    )
    parser.add_argument("--upstream", choices=["in-process", "sim"], default="in-process")
    parser.add_argument("--memory", action="store_true", help="tracemalloc and object counts")
    parser.add_argument("--frames", type=int, default=12, help="tracemalloc depth (--memory)")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--connect-parallel", type=int, default=16, help="per client")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds held, with churn")
    parser.add_argument("--churn", type=int, default=100, help="short streams per churn round")
    parser.add_argument("--token-interval", type=float, default=30.0, help="held streams")
    parser.add_argument("--open-timeout", type=float, default=900.0)
    parser.add_argument(
        "--cpu", type=float, help="SECONDS: CPU idle and with --cpu-streams held, no probe"
    )
    parser.add_argument("--cpu-streams", type=int, default=100, help="held streams (--cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="turns of every setting (--cpu)")
    args = parser.parse_args()
    if args.token_interval >= 60:
        parser.error("--token-interval must be below serve's --idle-timeout (60 s)")
    args.streams = args.streams or ([1000] if args.quick else [1000, 10_000])
    if args.quick:
        args.hold = min(args.hold, 5.0)
    args.gc = args.gc or ["python", "server"]
    if args.memory:
        args.gc = args.gc[:1]
    limit = procs.raise_nofile()
    if args.cpu:
        print(
            f"bench_gc --cpu: {platform.python_version()}, load average "
            f"{procs.load_average()}; settings {args.gc}"
        )
        return cpu_main(args)
    print(
        f"bench_gc: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, RLIMIT_NOFILE {limit}; load average {procs.load_average()}"
    )
    print(
        f"held streams {args.streams}, a token every {args.token_interval:g}s; held "
        f"{args.hold:g}s beside a churn of short streams ({args.churn} at a time); "
        f"upstream {args.upstream}; --gc-threshold {args.gc}\n"
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        workdir = Path(tmp)
        sim = procs.sim_proc(workdir) if args.upstream == "sim" else None
        if sim is not None:
            sim.start()
        try:
            upstream = None if sim is None else f"http://127.0.0.1:{sim.port}/v1"
            for streams in args.streams:
                for setting in args.gc:
                    gateway = prober(
                        workdir,
                        setting,
                        upstream,
                        frames=args.frames if args.memory else 0,
                        objects=args.memory,
                    )
                    run = Run(setting, streams)
                    with gateway.proc:
                        hold(workdir, gateway, run, args)
                    runs.append(run)
                    print_run(run)
                    if args.memory:
                        before, held = run.reports[0], run.reports[1]
                        per = max(1, run.established)
                        for line in memory_report(before["snapshot"], held["snapshot"], per):
                            print(line)
                        for line in objects_report(before["objects"], held["objects"], per):
                            print(line)
        finally:
            if sim is not None:
                sim.stop()
    print(
        "\nper phase: the longest pause of generation 0, 1, 2 in ms, wall clock / the "
        "gateway's CPU time (how many collections), then the longest of all and the 99th "
        "percentile of every collection's pause; wall clock "
        "is what every stream waits, CPU time is the collection's own work (the same "
        "on an idle machine)"
    )
    print(f"load average after: {procs.load_average()}")
    return 0


def print_run(run: Run) -> None:
    """One run's line per phase."""
    per_stream = (run.rss_held - run.rss_before) / max(1, run.established)
    print(
        f"--gc-threshold {run.setting}: {run.established}/{run.streams} held, RSS "
        f"{run.rss_before / 1024:.1f} -> {run.rss_held / 1024:.1f} MiB "
        f"({per_stream:.1f} KiB a held stream; with {run.churned} churned streams)"
    )
    for phase in run.phases:
        print(
            f"  {phase.name:<8} {phase.seconds:6.1f}s  {phase.cell()}  "
            f"longest {phase.longest() * 1000:.0f} ms ({phase.longest('max_cpu') * 1000:.0f} CPU)"
            f"  p99 {phase.report['p99'] * 1000:.1f} ms ({phase.report['p99_cpu'] * 1000:.1f} CPU)"
            f"; {phase.report['collected']} objects collected; collections' CPU "
            f"{phase.total_cpu() * 1000 / max(phase.seconds, 1e-9):.1f} ms/s"
        )
        young = phase.report.get("longest_young")
        if young:
            cpu, objects, kind, referents, collected = young
            print(
                f"           longest gen-1: {cpu * 1000:.1f} ms CPU over {objects} young "
                f"objects ({cpu * 1e9 / max(1, objects):.0f} ns each), widest young "
                f"container a {kind} of {referents}; {collected} collected"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.path.insert(0, str(procs.ROOT))
    sys.exit(main())
