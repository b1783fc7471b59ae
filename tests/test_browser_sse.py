"""The pages' one SSE parser (``streammgr/server/static/common/sse.js``) in a real
Chromium, against the reference parser (tests/sse_reference.py).

Both pages serve the same file as their ``./sse.js`` (the dashboard at
``/admin/static/sse.js``, the chat page at ``/chat/sse.js``), so it is tested once, here:
fixtures fed whole, byte by byte, cut at every offset and at every pair of offsets; a
seeded corpus of hostile streams (the pieces of the parser's property tests: CR, LF,
BOMs, NULs, split and invalid UTF-8) in random chunkings; the bounds; and
``readEvents``, the driver of a fetch ``Response``. Each chunking's events, last event ID
and retry must be the reference's.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import httpx
import trio
from starlette.applications import Starlette

from streammgr import StreamManager
from streammgr.server import admin_app, chat_page_routes
from tests.browser_helpers import Chromium, chat_page_origin, chromium, page_of
from tests.sse_reference import SSE_BYTES, chunkings, reference_parse

__all__ = ["chromium"]  # the fixture, used by name

# Streams that split wherever a chunk can cut: CRLF, a lone CR at a chunk's end, a BOM,
# multi-byte UTF-8 (2, 3 and 4 bytes), comments, ids, retry, event types, no space.
FIXTURES = [
    b'data: {"choices":[{"delta":{"content":"h\xc3\xa9llo \xe2\x82\xac"}}]}\n\ndata: [DONE]\n\n',
    b'\xef\xbb\xbfdata: first\r\ndata: second\r\n\r\nevent: error\r\ndata: {"error":{}}\r\n\r\n',
    b": keep-alive\r\rdata:no space\rid: 7\r\rretry: 1500\ndata: \xf0\x9f\x98\x80 emoji\n\n",
    b"data\n\nid: a\x00b\ndata: x\n\nevent: ping\n\ndata: tail without its blank line",
    b"data: line\r\n\r\n" * 3 + b"data: \xe4\xb8\xad\xe6\x96\x87\r\n\r\n",
    # The admin feed's shape: keep-alives, a snapshot, typed events, an unfinished tail.
    b": keep-alive\r\n\r\n"
    b'event: snapshot\r\ndata: {"streams": []}\r\n\r\n'
    b'event: opened\ndata: {"key": "caf\xc3\xa9 \xe2\x82\xac\xf0\x9f\x98\x80"}\n\n'
    b"data: first\rdata:second\r\rid: 7\nevent: closed\ndata\n\n"
    b"data: unfinished at the end",
    # Short ones, cut at every pair of offsets too.
    b"\xef\xbb\xbf\xef\xbb\xbfdata: a\r\n\r\n",  # the second BOM is a field name's
    b"data:  two\r\rdata\n\n",  # one space dropped, not two; a bare field name
    b"retry: 10a\nretry:\nretry: 250\ndata: r\n\n",  # only digits count
    b"id: 9\n\nid\ndata: cleared\n\n",  # a blank line sets the last id; an empty id
    b"event: only\n\n:c\rdata: \xe2\x82\n\n",  # no data, no event; a cut character
    b"data: \xff\xfe\xed\xa0\x80 \xf0\x9f\x98\n\n",  # invalid UTF-8: U+FFFD as the spec
    b"dat\x00a: x\nDATA: y\ndata : z\n\n",  # unknown fields are ignored
    b"\r\n\r\n\n\r",
    b"",
]

# Parse each stream in each of its chunkings (lists of chunks); per stream, each
# distinct outcome once, with the first chunking that gave it.
PARSE = """async ([streams, chunkings]) => {
    const { SSEParser } = await import("./chat/sse.js");
    const parse = (chunks) => {
        const parser = new SSEParser();
        const events = [];
        try {
            for (const chunk of chunks) events.push(...parser.feed(new Uint8Array(chunk)));
            events.push(...parser.close());
        } catch (error) {
            return JSON.stringify({ error: String(error) });
        }
        return JSON.stringify({ events, lastEventId: parser.lastEventId, retry: parser.retry });
    };
    return streams.map((_, index) => {
        const outcomes = {};
        for (const chunks of chunkings[index]) {
            const outcome = parse(chunks);
            if (!(outcome in outcomes)) outcomes[outcome] = chunks;
        }
        return outcomes;
    });
}"""


def expected(stream: bytes) -> dict[str, Any]:
    """What the reference parser makes of ``stream``, as the page's parser says it."""
    outcome = reference_parse(stream)
    return {
        "events": [
            {"event": event.event, "data": event.data, "id": event.id, "retry": event.retry}
            for event in outcome.events
        ],
        "lastEventId": outcome.last_event_id,
        "retry": outcome.retry,
    }


# The property tests' pieces, and a few that make a valid retry or id more likely.
PIECES = [*SSE_BYTES, b"\nretry: ", b"\nid: ", b"9"]


def corpus(count: int, seed: int) -> list[bytes]:
    """``count`` streams of ``PIECES`` and random bytes, from ``seed``."""
    rng = random.Random(seed)
    streams = []
    for _ in range(count):
        pieces = [
            rng.choice(PIECES) if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 4))
            for _ in range(rng.randint(0, 40))
        ]
        streams.append(b"".join(pieces))
    return streams


def random_chunkings(stream: bytes, rng: random.Random, count: int) -> list[list[bytes]]:
    """Whole, byte by byte, and ``count`` chunkings cut at random offsets."""
    found = [[stream], [stream[index : index + 1] for index in range(len(stream))]]
    for _ in range(count):
        offsets = sorted(rng.choices(range(len(stream) + 1), k=rng.randint(1, 8)))
        bounds = [0, *offsets, len(stream)]
        found.append([stream[start:end] for start, end in itertools.pairwise(bounds)])
    return found


async def in_page(nursery: trio.Nursery, chromium: Chromium, script: str, argument: Any) -> Any:
    """``script(argument)`` evaluated in the chat page (which can import ``chat/sse.js``);
    its result. No error may reach the page's console meanwhile."""
    async with chat_page_origin(nursery) as origin:

        def run(browser: Any) -> tuple[Any, list[str]]:
            errors: list[str] = []
            with page_of(browser) as page:
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on(
                    "console",
                    lambda message: (
                        errors.append(message.text) if message.type == "error" else None
                    ),
                )
                page.goto(f"{origin.url}/chat")
                return page.evaluate(script, argument), errors

        result, errors = await chromium.run(run)
    assert errors == []
    return result


def assert_each_chunking_as_the_reference(
    streams: list[bytes], chunkings_of: list[list[list[bytes]]], results: list[dict[str, Any]]
) -> None:
    """Each stream gave one outcome over all its chunkings: the reference's."""
    for stream, chunkings_tried, outcomes in zip(streams, chunkings_of, results, strict=True):
        assert len(outcomes) >= 1, stream
        want = expected(stream)
        for outcome, chunks in outcomes.items():
            assert json.loads(outcome) == want, (stream, [bytes(chunk) for chunk in chunks])
        assert sum(1 for _ in outcomes) <= len(chunkings_tried)


async def test_every_chunking_of_the_fixtures_parses_as_the_reference(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    # Whole, byte by byte, two chunks cut anywhere, three chunks when short.
    chunkings_of = [list(chunkings(stream)) for stream in FIXTURES]
    assert sum(len(each) for each in chunkings_of) > 3000
    arguments = [
        [list(stream) for stream in FIXTURES],
        [[list(chunk) for chunk in each] for each in chunkings_of],
    ]
    results = await in_page(nursery, chromium, PARSE, arguments)
    assert_each_chunking_as_the_reference(FIXTURES, chunkings_of, results)
    # The fixtures do reach what they are about.
    opened = expected(FIXTURES[5])["events"][1]
    assert opened["data"] == '{"key": "caf\u00e9 \u20ac\U0001f600"}'
    assert expected(FIXTURES[2])["retry"] == 1500
    assert "\ufffd" in expected(FIXTURES[11])["events"][0]["data"]


async def test_a_random_corpus_in_random_chunkings_parses_as_the_reference(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    rng = random.Random(7)
    streams = corpus(400, seed=2026)
    chunkings_of = [random_chunkings(stream, rng, 6) for stream in streams]
    arguments = [
        [list(stream) for stream in streams],
        [[list(chunk) for chunk in each] for each in chunkings_of],
    ]
    results = await in_page(nursery, chromium, PARSE, arguments)
    assert_each_chunking_as_the_reference(streams, chunkings_of, results)
    # The corpus is not trivially empty: events, ids and retries all occur.
    outcomes = [expected(stream) for stream in streams]
    assert sum(len(outcome["events"]) for outcome in outcomes) > 200
    assert any(outcome["lastEventId"] for outcome in outcomes)
    assert any(outcome["retry"] is not None for outcome in outcomes)


BOUNDS = """async () => {
    const { SSEParser } = await import("./chat/sse.js");
    const encoder = new TextEncoder();
    // Each case: its chunks (text), fed whole then byte by byte, with maxEventSize 10.
    const outcome = (chunks) => {
        const parser = new SSEParser({ maxEventSize: 10 });
        const events = [];
        try {
            for (const chunk of chunks) events.push(...parser.feed(encoder.encode(chunk)));
            events.push(...parser.close());
        } catch (error) {
            let again;
            try {
                parser.feed(encoder.encode("\\n\\n"));
            } catch (next) {
                again = next.message;
            }
            return { events: events.map((event) => event.data), error: error.message, again };
        }
        return { events: events.map((event) => event.data) };
    };
    const cases = {
        lineAtTheBound: "data:01234\\n\\n",
        lineOverTheBound: "data:012345\\n\\n",
        unfinishedLineOverTheBound: "data: 1\\n\\ndata:012345",
        commentOverTheBound: ":0123456789\\n",
        dataAtTheBound: "data:abcd\\ndata:abcde\\n\\n",
        dataOverTheBound: "data:abc\\ndata:abc\\ndata:abc\\n\\n",
        longStreamOfShortEvents: "data:0123\\n\\n".repeat(50),
    };
    const results = {};
    for (const [name, text] of Object.entries(cases)) {
        results[name] = [outcome([text]), outcome([...text])];
    }
    const refusals = [];
    for (const maxEventSize of [0, -1, 1.5, "10", null]) {
        try {
            new SSEParser({ maxEventSize });
            refusals.push(null);
        } catch (error) {
            refusals.push(`${error.name}: ${error.message}`);
        }
    }
    return { results, refusals };
}"""


def refused(what: str) -> str:
    """The parser's message for ``what`` over ``maxEventSize`` 10."""
    return (
        f"{what} is longer than maxEventSize=10: not an event stream? "
        "raise maxEventSize if the server sends events this large"
    )


def stopped(events: list[str], message: str) -> dict[str, Any]:
    """An outcome: ``events``, then the error ``message``, and the same error again."""
    return {
        "events": events,
        "error": message,
        "again": f"the event stream was already refused: {message}",
    }


async def test_a_line_or_an_event_over_the_bound_stops_the_parser(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    answer = await in_page(nursery, chromium, BOUNDS, None)
    line = refused("a line of 11 characters")
    unfinished = refused("an unfinished line of 11 characters")
    data = refused("the data of an event of 11 characters")
    # Each case, fed whole and byte by byte: at the bound is parsed, over it refused
    # (byte by byte, the line is refused before its end; events that earlier feeds
    # completed were delivered by them).
    assert answer["results"] == {
        "lineAtTheBound": [{"events": ["01234"]}] * 2,
        "lineOverTheBound": [stopped([], line), stopped([], unfinished)],
        "unfinishedLineOverTheBound": [stopped([], unfinished), stopped(["1"], unfinished)],
        "commentOverTheBound": [stopped([], line), stopped([], unfinished)],
        "dataAtTheBound": [{"events": ["abcd\nabcde"]}] * 2,
        "dataOverTheBound": [stopped([], data)] * 2,
        "longStreamOfShortEvents": [{"events": ["0123"] * 50}] * 2,
    }
    assert answer["refusals"] == [
        f"RangeError: maxEventSize must be a positive integer, got {shown}"
        for shown in ["0", "-1", "1.5", "10", "null"]
    ]


READ_EVENTS = """async () => {
    const { readEvents } = await import("./chat/sse.js");
    const encoder = new TextEncoder();
    // A Response whose body gives `chunks` one read at a time, then ends or fails.
    const body = (chunks, failure) => {
        const log = { cancelled: null, reads: 0 };
        const stream = new ReadableStream({
            pull(controller) {
                if (log.reads < chunks.length) {
                    controller.enqueue(encoder.encode(chunks[log.reads++]));
                } else if (failure) {
                    controller.error(new Error(failure));
                } else {
                    controller.close();
                }
            },
            cancel(reason) {
                log.cancelled = String(reason);
            },
        }, { highWaterMark: 0 });
        return { response: new Response(stream), log };
    };
    const run = async (chunks, onEvent, failure, options) => {
        const { response, log } = body(chunks, failure);
        const seen = [];
        let outcome = "resolved";
        try {
            await readEvents(response, (event) => {
                seen.push([event.event, event.data, event.id]);
                return onEvent(event);
            }, options);
        } catch (error) {
            outcome = `rejected: ${error.message}`;
        }
        return { seen, outcome, cancelled: log.cancelled !== null, locked: response.body.locked };
    };
    const FEED = [
        "id: 1\\nevent: snapshot\\ndata: a\\r",
        "\\n\\r\\ndata: b\\n\\ndata: c\\n",
        "\\ndata: tail",
    ];
    return {
        ended: await run(FEED, () => {}),
        stopped: await run(FEED, (event) => event.data !== "b"),
        thrown: await run(FEED, (event) => {
            if (event.data === "b") throw new Error("not wanted");
        }),
        failed: await run(FEED.slice(0, 2), () => {}, "connection reset"),
        refused: await run(FEED, () => {}, null, { maxEventSize: 4 }),
    };
}"""


async def test_read_events_drives_a_fetch_body_and_stops_it(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    answer = await in_page(nursery, chromium, READ_EVENTS, None)
    events = [["snapshot", "a", "1"], ["message", "b", "1"], ["message", "c", "1"]]
    # To its end: every event, the unfinished tail dropped; the body released each time.
    assert answer["ended"] == {
        "seen": events,
        "outcome": "resolved",
        "cancelled": False,
        "locked": False,
    }
    # onEvent returning false: resolves at once, the body cancelled, nothing more read.
    assert answer["stopped"] == {
        "seen": events[:2],
        "outcome": "resolved",
        "cancelled": True,
        "locked": False,
    }
    # onEvent throwing, the body failing, a line over the bound: rejects, body stopped.
    assert answer["thrown"]["seen"] == events[:2]
    assert answer["thrown"]["outcome"] == "rejected: not wanted"
    assert answer["thrown"]["cancelled"] is True
    assert answer["failed"]["seen"] == events[:2]
    assert answer["failed"]["outcome"] == "rejected: connection reset"
    assert answer["refused"]["seen"] == []
    assert answer["refused"]["outcome"].startswith(
        "rejected: a line of 5 characters is longer than maxEventSize=4"
    )
    assert answer["refused"]["cancelled"] is True
    assert not any(answer[case]["locked"] for case in answer)


async def test_both_pages_serve_the_one_file() -> None:
    # Each route serves the shared file itself: either may be mounted alone.
    static = Path(__file__).parent.parent / "streammgr/server/static"
    shared = (static / "common/sse.js").read_bytes()
    admin = admin_app(StreamManager())
    chat = Starlette(routes=chat_page_routes())
    for app, path in [(admin, "/admin/static/sse.js"), (chat, "/chat/sse.js")]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            answer = await client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.content == shared, path
    # No page keeps a parser of its own.
    assert sorted(static.rglob("sse*.js")) == [static / "common/sse.js"]
