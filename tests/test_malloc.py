"""The heap's free memory given back to the system: ``trim_malloc`` (glibc's
``malloc_trim`` every interval, on a worker thread), ``find_malloc_trim`` (glibc only),
and ``serve --malloc-trim`` (applied at start-up, by flag and by variable, checked).

No timing is asserted here: ``benchmarks/load_gateway.py --soak`` measures the RSS
over time (docs/performance.md, "Growth over time").
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from functools import partial

import pytest
import trio
import trio.testing

import streammgr._malloc
from streammgr import MALLOC_TRIM_INTERVAL, trim_malloc
from streammgr._malloc import find_malloc_trim, parse_malloc_trim
from streammgr.cli import main

from .cli_helpers import started

GLIBC = platform.libc_ver()[0] == "glibc"


def test_malloc_trim_is_found_where_the_c_library_is_glibc() -> None:
    assert (find_malloc_trim() is not None) is GLIBC


# Run in a fresh interpreter, with glibc's malloc and free called directly: 64 KiB
# blocks (a socket read's buffer), each written, a small live block after each where
# glibc puts one there, and one surely above them all (allocated until its address
# is): so the freed blocks can never merge into the heap's top, which free() gives
# back by itself.
_FRAGMENT_AND_TRIM = """
import ctypes, json
from streammgr._malloc import find_malloc_trim

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def rss_anon():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

size, count = 64 * 1024, 1024  # 64 MiB in all
buffers, pins = [], []
for _ in range(count):
    buffer = libc.malloc(size)
    libc.memset(buffer, 1, size)  # every page resident
    buffers.append(buffer)
    pins.append(libc.malloc(600))
while True:  # a live block above every buffer
    pins.append(libc.malloc(600))
    if pins[-1] > max(buffers):
        break
held = rss_anon()
for buffer in buffers:
    libc.free(buffer)
freed = rss_anon()
released = find_malloc_trim()(0)
print(json.dumps([held, freed, rss_anon(), released]))
for pin in pins:
    libc.free(pin)
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_a_trim_gives_back_free_memory_held_between_live_blocks() -> None:
    """What the soak found, in small: blocks freed between blocks still alive stay
    resident (free() gives back only the heap's top); a trim frees their pages."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", _FRAGMENT_AND_TRIM],
        capture_output=True,
        text=True,
        check=True,
        env=env,  # glibc's own tunables, as it has them by default
    )
    held, freed, trimmed, released = json.loads(result.stdout)
    total = 64 * 1024 * 1024
    assert held - freed < total // 4, (held, freed)  # freed, yet still resident: the creep
    assert released == 1  # malloc_trim: "some memory was released"
    assert freed - trimmed > total // 2, (held, freed, trimmed)


@pytest.mark.parametrize(
    ("text", "expected"), [("10", 10.0), (" 0.5 ", 0.5), ("off", None), ("OFF", None), ("0", None)]
)
def test_the_flags_values(text: str, expected: float | None) -> None:
    assert parse_malloc_trim(text) == expected


@pytest.mark.parametrize("text", ["-1", "soon", "nan", "inf", ""])
def test_a_bad_value_is_a_one_line_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--malloc-trim", text]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--malloc-trim" in line
    assert "off" in line


async def test_it_trims_once_every_interval_on_a_worker_thread(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake tells the test (through the Trio loop) when it ran and on which thread;
    # the test waits on no deadline of its own, so the mock clock cannot jump on while
    # a trim runs.
    send, receive = trio.open_memory_channel[tuple[float, int, bool]](10)

    def fake_trim(pad: int) -> int:
        on_main = threading.current_thread() is threading.main_thread()
        trio.from_thread.run_sync(lambda: send.send_nowait((trio.current_time(), pad, on_main)))
        return 1

    monkeypatch.setattr(streammgr._malloc, "find_malloc_trim", lambda: fake_trim)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(partial(trim_malloc, 5.0)) is True
        calls = [await receive.receive() for _ in range(3)]
        nursery.cancel_scope.cancel()
    assert calls == [(5.0, 0, False), (10.0, 0, False), (15.0, 0, False)]


async def test_without_malloc_trim_it_returns_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streammgr._malloc, "find_malloc_trim", lambda: None)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(trim_malloc) is False
    assert trio.current_time() == 0  # no waiting: the task had nothing to do


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan"), float("inf")])
async def test_it_checks_its_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        await trim_malloc(interval)


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ((), {}, MALLOC_TRIM_INTERVAL),
        (("--malloc-trim", "off"), {}, None),
        ((), {"STREAMMGR_MALLOC_TRIM": "2.5"}, 2.5),
        (("--malloc-trim", "30"), {"STREAMMGR_MALLOC_TRIM": "off"}, 30.0),
    ],
)
async def test_serve_trims_as_configured(
    nursery: trio.Nursery, flags: tuple[str, ...], env: dict[str, str], expected: float | None
) -> None:
    async with started(nursery, "serve", *flags, **env) as running:
        tuned = await running.until("gateway.gc")
        await running.until("gateway.listening")
        assert tuned["malloc_trim"] == (expected if GLIBC else None)
        # The trimming task ends with the server: a task left would hang the exit.
        assert await running.stop() == 0
