"""Benchmark: streammgr's SSE parser against httpx-sse, the openai SDK and a floor.

Run it with::

    .venv/bin/python benchmarks/bench_sse.py

It builds one OpenAI-style chat completion stream in memory (``data: {json}`` events,
LF line endings, a few ``: keep-alive`` comments, ``data: [DONE]`` at the end), splits
it the way a TCP read would (1-4 KiB chunks) and into tiny chunks (7-16 bytes), and
times, for each chunking, the median of several runs of:

1. ``streammgr.sse.SSEParser.feed``; for information, ``feed_raw`` too (the raw mode
   for proxies, which also returns each event's original bytes), and ``raw-batch``:
   ``RawSSEParser.feed``, which returns the bytes of a call's events in one piece;
2. httpx-sse's pipeline exactly as ``EventSource.aiter_sse`` runs it: httpx's
   ``TextDecoder`` (incremental UTF-8) and ``TextChunker``, then
   ``httpx_sse._decoders.SSELineDecoder`` and ``SSEDecoder``, driven synchronously;
3. the openai SDK's ``openai._streaming.SSEDecoder.iter_bytes``, as ``Stream`` runs it;
4. a floor: ``buffer += chunk; while b"\\n\\n" in buffer: split``, which finds the raw
   event blocks and parses no field;
5. for information, a tighter floor that splits each buffer once (``floor-split``).

Before timing, it checks that 1-3 return the same events with equal data, and that
``feed_raw`` and ``raw-batch`` return the same events and, joined, the stream without its
keep-alive comments. The targets
(streammgr at least 2x httpx-sse and at least 0.5x the floor, on both chunkings) are
printed as met or MISSED; ``--check`` makes a miss exit with status 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from streammgr.sse import RawSSEParser, SSEParser

try:
    from httpx._decoders import TextChunker, TextDecoder
    from httpx_sse import ServerSentEvent as HttpxSSEEvent
    from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
    from httpx_sse._decoders import SSELineDecoder
    from openai._streaming import SSEDecoder as OpenAISSEDecoder
except ImportError as exc:  # pragma: no cover
    sys.exit(f"{exc}: install the benchmark extras first: pip install -e '.[dev,bench]'")

TOKENS = (
    "Hello",
    " world",
    ",",
    " the",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " über",
    " naïve",
    " 日本語",
    " 🚀",
    "\n\n",
    ' "quoted"',
    " a",
    ".",
)

Runner = Callable[[Sequence[bytes]], int]
KEEP_ALIVE = b": keep-alive\n\n"


def build_stream(events: int, seed: int = 1) -> bytes:
    """Build a chat completion stream of ``events`` chunks plus ``data: [DONE]``."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    for index in range(events):
        if index % 1000 == 500:
            parts.append(KEEP_ALIVE)
        chunk = {
            "id": "chatcmpl-9xQ2bLr7Tz1kVh3sYc0mDnPq",
            "object": "chat.completion.chunk",
            "created": 1732530000 + index // 50,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": rng.choice(TOKENS)},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        payload = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)
        parts.append(b"data: " + payload.encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def split_stream(stream: bytes, smallest: int, largest: int, seed: int = 2) -> list[bytes]:
    """Cut ``stream`` into chunks of random sizes between ``smallest`` and ``largest``."""
    rng = random.Random(seed)
    chunks: list[bytes] = []
    offset = 0
    while offset < len(stream):
        size = rng.randint(smallest, largest)
        chunks.append(stream[offset : offset + size])
        offset += size
    return chunks


# -- the contenders: each takes the chunks and returns the list of event data ---------


def data_streammgr(chunks: Sequence[bytes]) -> list[str]:
    parser = SSEParser()
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return [event.data for event in events]


def data_streammgr_raw(chunks: Sequence[bytes]) -> tuple[list[str], bytes]:
    """The data of the events and the concatenation of their raw bytes."""
    parser = SSEParser()
    pairs = []
    for chunk in chunks:
        pairs.extend(parser.feed_raw(chunk))
    parser.close()
    return [event.data for event, _raw in pairs], b"".join(raw for _event, raw in pairs)


def data_streammgr_batch(chunks: Sequence[bytes]) -> tuple[list[str], bytes]:
    """The data of the events and the concatenation of the batches' bytes."""
    parser = RawSSEParser()
    data: list[str] = []
    forwarded: list[bytes] = []
    for chunk in chunks:
        batch = parser.feed(chunk)
        data += [event.data for event in batch]
        forwarded.append(batch.raw)
    parser.close()
    return data, b"".join(forwarded)


def data_httpx_sse(chunks: Sequence[bytes]) -> list[str]:
    return [event.data for event in iter_httpx_sse(chunks)]


def data_openai(chunks: Sequence[bytes]) -> list[str]:
    return [event.data for event in OpenAISSEDecoder().iter_bytes(iter(chunks))]


def iter_httpx_sse(chunks: Sequence[bytes]) -> Iterator[HttpxSSEEvent]:
    """httpx-sse 0.4.3 ``EventSource.aiter_sse`` + ``_aiter_sse_lines``, made sync."""
    # Response.aiter_text():
    text_decoder = TextDecoder(encoding="utf-8")
    chunker = TextChunker(chunk_size=None)
    # _aiter_sse_lines() and aiter_sse():
    line_decoder = SSELineDecoder()
    decoder = HttpxSSEDecoder()
    for chunk in chunks:
        for text in chunker.decode(text_decoder.decode(chunk)):
            for line in line_decoder.decode(text):
                sse = decoder.decode(line.rstrip("\n"))
                if sse is not None:
                    yield sse
    for text in chunker.decode(text_decoder.flush()):
        for line in line_decoder.decode(text):  # pragma: no cover
            sse = decoder.decode(line.rstrip("\n"))
            if sse is not None:
                yield sse
    for text in chunker.flush():
        for line in line_decoder.decode(text):
            sse = decoder.decode(line.rstrip("\n"))
            if sse is not None:
                yield sse
    for line in line_decoder.flush():
        sse = decoder.decode(line.rstrip("\n"))
        if sse is not None:
            yield sse


def run_streammgr(chunks: Sequence[bytes]) -> int:
    parser = SSEParser()
    feed = parser.feed
    count = 0
    for chunk in chunks:
        for _event in feed(chunk):
            count += 1
    parser.close()
    return count


def run_streammgr_raw(chunks: Sequence[bytes]) -> int:
    parser = SSEParser()
    feed_raw = parser.feed_raw
    count = 0
    for chunk in chunks:
        for _event, _raw in feed_raw(chunk):
            count += 1
    parser.close()
    return count


def run_streammgr_batch(chunks: Sequence[bytes]) -> int:
    parser = RawSSEParser()
    feed = parser.feed
    count = 0
    for chunk in chunks:
        for _event in feed(chunk):
            count += 1
    parser.close()
    return count


def run_httpx_sse(chunks: Sequence[bytes]) -> int:
    count = 0
    for _event in iter_httpx_sse(chunks):
        count += 1
    return count


def run_openai(chunks: Sequence[bytes]) -> int:
    count = 0
    for _event in OpenAISSEDecoder().iter_bytes(iter(chunks)):
        count += 1
    return count


def run_floor(chunks: Sequence[bytes]) -> int:
    """Raw event blocks (comments included), no field parsing: the cost floor."""
    count = 0
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            _block, buffer = buffer.split(b"\n\n", 1)
            count += 1
    return count


def run_floor_split(chunks: Sequence[bytes]) -> int:
    """A tighter floor, for information: one ``bytes.split`` per chunk."""
    count = 0
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        blocks = buffer.split(b"\n\n")
        buffer = blocks.pop()
        count += len(blocks)
    return count


CONTENDERS: dict[str, Runner] = {
    "streammgr": run_streammgr,
    "feed_raw": run_streammgr_raw,
    "raw-batch": run_streammgr_batch,
    "httpx-sse": run_httpx_sse,
    "openai": run_openai,
    "floor": run_floor,
    "floor-split": run_floor_split,
}


def check_agreement(chunks: Sequence[bytes]) -> int:
    """Check that the three parsers, and the raw modes, return the same events; return how many."""
    ours = data_streammgr(chunks)
    raw_data, forwarded = data_streammgr_raw(chunks)
    batch_data, batch_forwarded = data_streammgr_batch(chunks)
    for name, theirs in (
        ("httpx-sse", data_httpx_sse(chunks)),
        ("openai", data_openai(chunks)),
        ("feed_raw", raw_data),
        ("raw-batch", batch_data),
    ):
        if theirs != ours:
            sys.exit(f"{name} disagrees with streammgr: {len(theirs)} vs {len(ours)} events")
    without_keep_alives = b"".join(chunks).replace(KEEP_ALIVE, b"")
    for name, sent in (("feed_raw", forwarded), ("raw-batch", batch_forwarded)):
        if sent != without_keep_alives:
            sys.exit(f"{name}'s bytes are not the stream without its keep-alive comments")
    return len(ours)


def median_seconds(
    contenders: dict[str, Runner], chunks: Sequence[bytes], repeats: int
) -> dict[str, tuple[float, int]]:
    """Median wall time and event count of each contender.

    The contenders take turns within each repeat, so that a slow spell of the
    machine does not fall on one of them only.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    counts: dict[str, int] = {}
    for _ in range(repeats):
        for name, runner in contenders.items():
            gc.collect()
            start = time.perf_counter()
            counts[name] = runner(chunks)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), counts[name]) for name in contenders}


TARGETS = {"httpx-sse": 2.0, "floor": 0.5}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table.

    Returns:
        0, or 1 with ``--check`` if a target ratio is missed.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000, help="chunks in the stream")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per contender")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    stream = build_stream(args.events)
    chunkings = {
        "realistic 1-4 KiB": split_stream(stream, 1024, 4096),
        "tiny 7-16 B": split_stream(stream, 7, 16),
    }
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}) "
        f"on {platform.machine()}; stream of {len(stream):,} bytes; "
        f"median of {args.repeats} runs"
    )
    missed = 0
    for label, chunks in chunkings.items():
        events = check_agreement(chunks)
        print(f"\n{label}: {len(chunks):,} chunks, {events:,} events (1-3 agree)")
        print(
            f"  {'parser':<12} {'median ms':>10} {'events/s':>12} {'MB/s':>8} {'count':>7}"
            f"  {'streammgr/x':>11}"
        )
        results = median_seconds(CONTENDERS, chunks, args.repeats)
        ours = results["streammgr"][0]
        for name, (elapsed, count) in results.items():
            line = (
                f"  {name:<12} {elapsed * 1e3:>10.2f} {events / elapsed:>12,.0f} "
                f"{len(stream) / elapsed / 1e6:>8.1f} {count:>7,}"
            )
            if name != "streammgr":
                ratio = elapsed / ours
                line += f"  {ratio:>10.2f}x"
                if name in TARGETS:
                    met = ratio >= TARGETS[name]
                    missed += not met
                    line += f"  target >= {TARGETS[name]}x: {'met' if met else 'MISSED'}"
                elif name in ("floor-split", "feed_raw", "raw-batch"):
                    line += "  (information only)"
            print(line)
    print(
        "\nstreammgr is SSEParser.feed(); feed_raw is SSEParser.feed_raw(), which also returns"
        " each event's bytes;\nraw-batch is RawSSEParser.feed(), which returns the bytes of a"
        " call's events in one piece\n(their streammgr/x: their time over feed's)."
        "\nfloor and floor-split count raw blocks: their count includes the keep-alive"
        " comments.\nevents/s is the stream's events over each contender's time."
    )
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
