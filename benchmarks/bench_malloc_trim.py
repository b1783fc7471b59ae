"""What one glibc ``malloc_trim(0)`` costs (``serve --malloc-trim``), by heap size.

Run: ``.venv/bin/python benchmarks/bench_malloc_trim.py`` (Linux with glibc only).

For each heap size it builds the worst case for a trim: 64 KiB blocks (a socket read's
buffer) each followed by a small block that stays alive, then frees a seeded half of
the 64 KiB blocks, so the heap is full of holes that neither ``free`` nor the heap's
top can give back. Printed: the first trim's wall and CPU time (it ``madvise``\\s
every hole: while it runs, glibc holds that heap's lock, so an allocation on another
thread waits), the RSS it gave back, and the median of the next trims (nothing new to
give back: the cost of the walk itself, what a steady server pays every interval).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _allocator import allocator_stats

from streammgr._malloc import find_malloc_trim

BLOCK = 64 * 1024 - 64  # a 64 KiB malloc chunk with its header
PIN = 700  # above pymalloc's 512 bytes: from malloc, between the blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,200,800", help="heap sizes, MiB")
    parser.add_argument("--repeats", type=int, default=5, help="trims after the first")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    trim = find_malloc_trim()
    if trim is None:
        print("no malloc_trim here (not glibc): nothing to measure")
        return 1
    rng = random.Random(args.seed)
    print("heap MiB  first trim ms (CPU)  RSS given back MiB  later trims ms (median)")
    for size in (int(part) for part in args.sizes.split(",")):
        blocks: list[bytearray | None] = []
        pins = []
        for _ in range(size * 16):
            blocks.append(bytearray(BLOCK))
            pins.append(bytearray(PIN))
        for index in range(len(blocks)):
            if rng.random() < 0.5:
                blocks[index] = None
        before = allocator_stats()["rss_anon"]
        wall, cpu = time.perf_counter(), time.thread_time()
        trim(0)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        given_back = before - allocator_stats()["rss_anon"]
        later = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            trim(0)
            later.append(time.perf_counter() - began)
        print(
            f"{size:>8}  {wall * 1000:8.2f} ({cpu * 1000:.2f})  {given_back / 2**20:18.1f}  "
            f"{statistics.median(later) * 1000:8.2f}"
        )
        del blocks, pins
        trim(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
