"""The chat page (``GET /chat``) in a real Chromium: served from a second origin, it
streams whole answers over fetch and over the WebSocket route (with ``--cors-origin``;
refused without it); Stop and leaving the page end the stream as
``client_disconnected`` with its upstream closed (the simulator's counters); a 429 and
an in-band error are shown as messages; and over HTTPS a page holds eight streams at
once on one HTTP/2 connection. Its SSE parser, shared with the dashboard, is tested in
test_browser_sse.py.

Real time and real sockets: every wait is on a page condition or a counter, bounded by
``PATIENCE``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from streammgr import CloseReason, StreamManager
from streammgr.server import ServiceOptions

from .browser_helpers import Chromium, chat_page_origin, chromium
from .fault_helpers import chat, expected_text, open_rig
from .server_helpers import (
    GATEWAY_BASE,
    PATIENCE,
    fast_upstream,
    running_service,
    tls_files,
    wait_until,
)

__all__ = ["chromium"]  # the fixture, used by name

T = TypeVar("T")
WAIT_MS = PATIENCE * 1000
PROMPT = "hello there"


class Tab:
    """A page of its own browser context, driven from the Trio test; what the page
    logs as an error (a CSP refusal, an exception) is kept in ``errors``."""

    def __init__(self, chromium: Chromium, page: Any) -> None:
        self.chromium = chromium
        self.page = page
        self.errors: list[str] = []

    async def do(self, call: Callable[[Any], T]) -> T:
        """Run ``call(page)`` on the browser's thread."""
        return await self.chromium.run(lambda _browser: call(self.page))

    async def ask(
        self, prompt: str, *, transport: str = "http", options: dict[str, Any] | None = None
    ) -> None:
        """Type ``prompt`` and send it (Enter), with the page's transport and options."""

        def send(page: Any) -> None:
            page.select_option("#transport", transport)
            page.locator("#options").evaluate(
                "(box, text) => { box.value = text; }",
                (json.dumps(options) if options is not None else ""),
            )
            page.fill("#prompt", prompt)
            page.press("#prompt", "Enter")

        await self.do(send)

    async def until_state(self, *states: str) -> str:
        """Wait (bounded) until the page's state is one of ``states``; return it."""
        wanted = " , ".join(f'body[data-state="{state}"]' for state in states)
        return str(
            await self.do(
                lambda page: page.wait_for_selector(wanted, timeout=WAIT_MS).get_attribute(
                    "data-state"
                )
            )
        )

    async def last(self, role: str) -> str:
        """The text of the last message of ``role`` (user, assistant, error)."""
        return str(
            await self.do(lambda page: page.locator(f".message.{role} .text").last.text_content())
        )


@asynccontextmanager
async def open_tab(chromium: Chromium, **context_options: Any) -> AsyncIterator[Tab]:
    """A fresh browser context and page; closed at the end."""

    def new(browser: Any) -> Any:
        return browser.new_context(**context_options).new_page()

    page = await chromium.run(new)
    tab = Tab(chromium, page)

    def watch(page: Any) -> None:
        page.on("pageerror", lambda error: tab.errors.append(str(error)))
        page.on(
            "console",
            lambda message: tab.errors.append(message.text) if message.type == "error" else None,
        )

    await tab.do(watch)
    try:
        yield tab
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(PATIENCE):
            await chromium.run(lambda _browser: page.context.close())


def simulate(**options: Any) -> dict[str, Any]:
    """The page's extra request fields: the simulator's options for the answer."""
    return {"streammgr_simulate": options}


STALLED = simulate(
    tokens=40, first_token_latency=0, token_latency=0, fault="stall_mid_stream", fault_after=5
)


async def test_the_page_on_another_origin_streams_whole_answers_over_fetch_and_websocket(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    async with chat_page_origin(nursery) as origin:
        async with open_rig(cors_origins=(origin.url,)) as rig, open_tab(chromium) as tab:
            await tab.do(lambda page: page.goto(f"{origin.url}/chat?gateway={rig.url}"))
            await tab.until_state("idle")
            options = simulate(tokens=60, token_latency=0.003)
            await tab.ask(PROMPT, options=options)
            assert await tab.until_state("done", "error") == "done"
            first = await tab.last("assistant")
            messages = [{"role": "user", "content": PROMPT}]
            body = {"model": "sim-small", "messages": messages, **options}
            assert first == expected_text(rig.upstream, body)
            assert len(first.split()) > 20  # a whole answer, not a piece
            # The same page, over the WebSocket route, goes on with the conversation.
            await tab.ask("and again", transport="websocket", options=options)
            assert await tab.until_state("done", "error") == "done"
            messages += [
                {"role": "assistant", "content": first},
                {"role": "user", "content": "and again"},
            ]
            second = await tab.last("assistant")
            assert second == expected_text(rig.upstream, {**body, "messages": messages})
            await rig.until(lambda: len(rig.manager.history()) == 2)
            routes = [info.labels["route"] for info in rig.manager.history()]
            assert sorted(routes) == ["chat.completions", "chat.ws"], routes
            assert set(rig.reasons()) == {CloseReason.COMPLETED}
            assert tab.errors == []


async def test_without_cors_origin_the_gateway_refuses_the_other_origins_page(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    async with chat_page_origin(nursery) as origin:
        async with open_rig() as rig, open_tab(chromium) as tab:
            await tab.do(lambda page: page.goto(f"{origin.url}/chat?gateway={rig.url}"))
            await tab.until_state("idle")
            for transport in ("http", "websocket"):
                await tab.ask(PROMPT, transport=transport)
                assert await tab.until_state("error", "done") == "error"
                shown = await tab.last("error")
                assert "--cors-origin" in shown, shown
                assert origin.url in shown, shown
            assert rig.manager.history() == []  # nothing reached the manager
            assert rig.upstream.stats().opened == 0  # nor the upstream


@pytest.mark.parametrize("transport", ["http", "websocket"])
@pytest.mark.parametrize("how", ["stop", "leave"])
async def test_stop_or_leaving_mid_stream_closes_the_upstream(
    nursery: trio.Nursery, chromium: Chromium, transport: str, how: str
) -> None:
    async with chat_page_origin(nursery) as origin:
        async with open_rig(cors_origins=(origin.url,)) as rig, open_tab(chromium) as tab:
            await tab.do(lambda page: page.goto(f"{origin.url}/chat?gateway={rig.url}"))
            await tab.until_state("idle")
            await tab.ask(PROMPT, transport=transport, options=STALLED)
            # The first five tokens are on the page while the answer is still open.
            await tab.do(
                lambda page: page.wait_for_function(
                    "() => document.querySelector('.message.assistant .text')"
                    ".textContent.split(' ').length >= 5",
                    timeout=WAIT_MS,
                )
            )
            assert await tab.until_state("streaming") == "streaming"
            await rig.until(lambda: rig.upstream.stats().open == 1)
            if how == "stop":
                await tab.do(lambda page: page.click("#stop"))
                assert await tab.until_state("stopped") == "stopped"
                assert await tab.do(lambda page: page.text_content("#status")) == "Stopped."
            else:
                await tab.do(lambda page: page.goto("about:blank"))
            await rig.until(lambda: rig.upstream.stats().open == 0)
            await rig.until(lambda: len(rig.manager.history()) == 1)
            (info,) = rig.manager.history()
            assert info.close_reason == CloseReason.CLIENT_DISCONNECTED
            assert info.items >= 1
            assert rig.upstream.stats().client_left == 1


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_a_refusal_by_a_limit_is_shown_with_when_to_retry(
    nursery: trio.Nursery, chromium: Chromium, transport: str
) -> None:
    async with chat_page_origin(nursery) as origin:
        async with (
            open_rig(
                cors_origins=(origin.url,),
                manager_options={"max_streams": 1, "max_waiting": 0},
            ) as rig,
            open_tab(chromium) as tab,
        ):
            held = await rig.post(chat(fault="stall_mid_stream", fault_after=1))
            await rig.until(lambda: rig.manager.stats().active == 1)
            await tab.do(lambda page: page.goto(f"{origin.url}/chat?gateway={rig.url}"))
            await tab.until_state("idle")
            await tab.ask(PROMPT, transport=transport)
            assert await tab.until_state("error", "done") == "error"
            shown = await tab.last("error")
            assert shown.count("max_waiting") == 1, shown  # the limit, named once
            assert "retry after 1" in shown, shown
            await held.stream.aclose()


async def test_an_in_band_error_is_shown_after_the_tokens_before_it(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    async with chat_page_origin(nursery) as origin:
        async with open_rig(cors_origins=(origin.url,)) as rig, open_tab(chromium) as tab:
            await tab.do(lambda page: page.goto(f"{origin.url}/chat?gateway={rig.url}"))
            await tab.until_state("idle")
            for transport in ("http", "websocket"):
                await tab.ask(
                    PROMPT,
                    transport=transport,
                    options=simulate(fault="error_in_stream", fault_after=3),
                )
                assert await tab.until_state("error", "done") == "error"
                assert len((await tab.last("assistant")).split()) >= 1  # what came first stays
                shown = await tab.last("error")
                assert shown, "an in-band error must be shown"
            assert rig.upstream.stats().opened == 2


# From the page: ``count`` fetches of the gateway at once, each stalled after three
# tokens, their texts in ``window.streams[i].text``, each with its AbortController.
STALLED_FETCHES = """(count) => {
            window.streams = [];
            return import("./chat/sse.js").then(({ SSEParser }) => {
                for (let i = 0; i < count; i++) {
                    const stream = { controller: new AbortController(), text: "" };
                    window.streams.push(stream);
                    const body = JSON.stringify({
                        model: "sim-small", stream: true,
                        messages: [{ role: "user", content: `stream ${i}` }],
                        streammgr_simulate: {
                            tokens: 40, first_token_latency: 0, token_latency: 0,
                            fault: "stall_mid_stream", fault_after: 3 },
                    });
                    fetch("/v1/chat/completions", { method: "POST", body,
                        headers: { "content-type": "application/json" },
                        signal: stream.controller.signal,
                    }).then(async (response) => {
                        const reader = response.body.getReader();
                        const parser = new SSEParser();
                        for (;;) {
                            const { value, done } = await reader.read();
                            if (done) break;
                            for (const event of parser.feed(value)) {
                                const delta = JSON.parse(event.data).choices[0].delta;
                                stream.text += delta.content || "";
                            }
                        }
                    }).catch(() => {});
                }
            });
        }"""


async def test_over_https_a_page_holds_eight_streams_on_one_h2_connection(
    nursery: trio.Nursery, chromium: Chromium, tmp_path: Path
) -> None:
    tls = tls_files(tmp_path)
    manager = StreamManager(max_streams=20)
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    async with (
        running_service(
            nursery,
            manager,
            options,
            upstream=fast_upstream(),
            certfile=tls.certfile,
            keyfile=tls.keyfile,
        ) as (server, upstream),
        open_tab(chromium, ignore_https_errors=True) as tab,
    ):
        await tab.do(lambda page: page.goto(f"{server.url}/chat"))
        await tab.until_state("idle")
        # The page's own origin over TLS: its WebSocket route is wss:// (the CSP allows it).
        await tab.ask(PROMPT, transport="websocket", options=simulate(tokens=5))
        assert await tab.until_state("done", "error") == "done"
        assert len((await tab.last("assistant")).split()) == 5
        await wait_until(lambda: len(manager.history()) == 1)
        # Eight fetches from the page, each stalled after its first tokens: over HTTP/1.1
        # (six connections per host) the last two would not even start.
        await tab.do(lambda page: page.evaluate(STALLED_FETCHES, 8))
        await tab.do(
            lambda page: page.wait_for_function(
                "() => window.streams.every((stream) => stream.text.split(' ').length >= 3)",
                timeout=WAIT_MS,
            )
        )
        assert manager.stats().active == 8
        assert upstream.stats().open == 8
        assert upstream.stats().max_open == 8
        protocols = await tab.do(
            lambda page: page.evaluate(
                "() => performance.getEntries()"
                ".filter((entry) => entry.nextHopProtocol !== undefined)"
                ".map((entry) => [entry.name, entry.nextHopProtocol])"
            )
        )
        assert protocols, "no navigation or resource entries"
        assert {protocol for _, protocol in protocols} == {"h2"}, protocols
        # Stop one: HTTP/2 resets that stream alone; the seven others go on.
        await tab.do(lambda page: page.evaluate("() => window.streams[0].controller.abort()"))
        await wait_until(lambda: len(manager.history()) == 2)
        assert manager.stats().active == 7
        assert manager.history()[-1].close_reason == CloseReason.CLIENT_DISCONNECTED
        await tab.do(
            lambda page: page.evaluate(
                "() => window.streams.forEach((stream) => stream.controller.abort())"
            )
        )
        await wait_until(lambda: len(manager.history()) == 9)
        reasons = [info.close_reason for info in manager.history()]
        assert reasons == [CloseReason.COMPLETED] + [CloseReason.CLIENT_DISCONNECTED] * 8
        await wait_until(lambda: upstream.stats().open == 0)
        assert tab.errors == []


async def test_over_http_1_1_a_browser_runs_six_streams_and_the_rest_wait(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    """Why the HTTPS test matters: the same page over plain HTTP/1.1 gets six streams
    going, and a seventh leaves the browser only once one of the six has ended."""
    manager = StreamManager(max_streams=20)
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    async with (
        running_service(nursery, manager, options, upstream=fast_upstream()) as (
            server,
            upstream,
        ),
        open_tab(chromium) as tab,
    ):
        await tab.do(lambda page: page.goto(f"{server.url}/chat"))
        await tab.until_state("idle")
        await tab.do(lambda page: page.evaluate(STALLED_FETCHES, 8))
        started = "(count) => window.streams.filter((stream) => stream.text).length === count"

        def wait_started(page: Any, count: int) -> None:
            page.wait_for_function(started, arg=count, timeout=WAIT_MS)

        await tab.do(partial(wait_started, count=6))
        assert upstream.stats().open == 6  # the seventh and eighth wait inside the browser
        for count in (7, 8):  # end one of those going: the next waiting one goes out
            await tab.do(
                lambda page: page.evaluate(
                    "() => { const going = window.streams.find("
                    "(stream) => stream.text && !stream.ended);"
                    " going.ended = true; going.controller.abort(); }"
                )
            )
            await tab.do(partial(wait_started, count=count))
        assert upstream.stats().max_open == 6
        await tab.do(
            lambda page: page.evaluate(
                "() => window.streams.forEach((stream) => stream.controller.abort())"
            )
        )
        await wait_until(lambda: len(manager.history()) == 8)
        reasons = {info.close_reason for info in manager.history()}
        assert reasons == {CloseReason.CLIENT_DISCONNECTED}
        await wait_until(lambda: upstream.stats().open == 0)
