#!/usr/bin/env python3
"""Fuzz both SSE parsers: any bytes, any chunking, any limit.

Each input is two control bytes and a stream: the first picks ``max_event_size``, the
second how the stream is cut into chunks (a fixed size, and maybe also inside every
CRLF pair, byte order mark and UTF-8 sequence, or cut points drawn from the input).
:func:`tests.sse_invariants.check_stream` then feeds it, whole and cut, to
``SSEParser.feed``, ``SSEParser.feed_raw``, ``RawSSEParser.feed`` and
``RawSSEParser.feed_pairs``, and asserts: no exception but ``SSEEventTooLarge``; the
same events, last event ID, retry and error whatever the chunking; the four in
agreement (and with a naive transcription of the standard when the limit cannot be
reached); what each parser holds after every call bounded by its limit.

Run it (libFuzzer flags; a corpus directory is read, and new inputs are written to it):

    python fuzz/fuzz_sse.py -runs=100000 fuzz/corpus/sse
    python fuzz/fuzz_sse.py -max_total_time=600 -artifact_prefix=/tmp/ /tmp/corpus-sse

See docs/sse.md, "Robustness".
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["streammgr.sse"]):  # not the checks themselves
    from tests.sse_invariants import check_stream

# max_event_size: tiny ones reach every size check; the default, none at all.
LIMITS = (1, 2, 3, 4, 5, 7, 8, 11, 16, 24, 32, 64, 100, 256, 1024, 1_048_576)


def cut_points(stream: bytes, plan: int, seed: bytes) -> list[int]:
    """Where to cut ``stream``: every ``plan % 32 + 1`` bytes; with ``plan & 32`` also
    inside every CRLF, BOM and UTF-8 sequence; with ``plan & 64`` at offsets read
    from ``seed`` (the input's control bytes and the stream's first bytes)."""
    size = plan % 32 + 1
    offsets = list(range(size, len(stream), size))
    if plan & 32:
        offsets += [
            index
            for index in range(1, len(stream))
            if stream[index - 1 : index + 1] == b"\r\n" or 0x80 <= stream[index] < 0xC0
        ]
    if plan & 64 and stream:
        offsets += [byte * 7 % (len(stream) + 1) for byte in seed]
    return sorted(set(offsets))


def test_one_input(data: bytes) -> None:
    """One fuzzer input: control bytes, then the stream."""
    if len(data) < 2:
        return
    limit = LIMITS[data[0] % len(LIMITS)]
    stream = data[2:]
    check_stream(stream, cut_points(stream, data[1], data[:16]), limit)


def main() -> None:
    """Run the fuzzer with the command line's libFuzzer flags."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
