"""Where a process's resident memory lies, from inside it: for the soak's quiet points
(``bench_gc.py probe``), so that an RSS creep can be told apart by layer.

- ``rss_anon`` / ``rss_file``: anonymous memory (the heaps) versus pages of mapped
  files (code and data of the interpreter and its libraries, faulted in lazily as
  rarely used paths first run: growth there is no leak);
- ``pymalloc_arenas``: CPython's small-object arenas in use (1 MiB each on 64-bit
  CPython 3.10+), from ``sys._debugmallocstats``;
- ``malloc_*``: glibc's heaps (every arena: the main one and one per thread that
  allocated), from ``malloc_info``: bytes taken from the system, bytes free in them
  (fragmentation: free but not returned), bytes in ``mmap`` blocks; in use = system -
  free - nothing else.

Linux and glibc only; elsewhere the fields are left out.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import sys
import tempfile
from xml.etree import ElementTree

_LIBC_NAME = ctypes.util.find_library("c")


def _libc() -> ctypes.CDLL | None:
    if _LIBC_NAME is None:
        return None
    try:
        libc = ctypes.CDLL(_LIBC_NAME)
        libc.malloc_info  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def _status() -> dict[str, int]:
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def _pymalloc_arenas() -> int | None:
    """``# arenas allocated current`` from ``sys._debugmallocstats`` (written to the C
    stderr: fd 2 is pointed at a file for the call)."""
    debug = getattr(sys, "_debugmallocstats", None)
    if debug is None:
        return None
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            debug()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    found = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    return None if found is None else int(found.group(1).replace(",", ""))


def _malloc_info() -> dict[str, int]:
    libc = _libc()
    if libc is None:
        return {}
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as target:
        stream = libc.fopen(target.name.encode(), b"w")
        if not stream:
            return {}
        try:
            libc.malloc_info(0, stream)
        finally:
            libc.fclose(stream)
        root = ElementTree.parse(target.name).getroot()
    heaps = root.findall("heap")
    totals: dict[str, int] = {"malloc_arenas": len(heaps)}
    # The totals after the last heap: every arena together.
    for element in root:
        if element.tag == "total":
            totals[f"malloc_free_{element.get('type')}"] = int(element.get("size", "0"))
        elif element.tag == "system" and element.get("type") == "current":
            totals["malloc_system"] = int(element.get("size", "0"))
    totals["malloc_free"] = totals.get("malloc_free_fast", 0) + totals.get("malloc_free_rest", 0)
    totals["malloc_mmap"] = totals.pop("malloc_free_mmap", 0)
    # Each arena apart (0: the main one; the others: threads').
    for heap in heaps:
        number = heap.get("nr")
        for element in heap:
            if element.tag == "system" and element.get("type") == "current":
                totals[f"malloc_heap{number}_system"] = int(element.get("size", "0"))
            elif element.tag == "total" and element.get("type") in ("fast", "rest"):
                key = f"malloc_heap{number}_free"
                totals[key] = totals.get(key, 0) + int(element.get("size", "0"))
    return totals


def allocator_stats() -> dict[str, int]:
    """This process's memory by layer (see the module's docstring); best effort."""
    stats: dict[str, int] = {}
    status = _status()
    for key, name in (("VmRSS", "rss"), ("RssAnon", "rss_anon"), ("RssFile", "rss_file")):
        if key in status:
            stats[name] = status[key]
    arenas = _pymalloc_arenas()
    if arenas is not None:
        stats["pymalloc_arenas"] = arenas
    stats.update(_malloc_info())
    return stats
