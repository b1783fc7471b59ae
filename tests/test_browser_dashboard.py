"""The admin dashboard (``GET /admin/``) in a real Chromium, over a real manager.

The inspection API is served on loopback (real time); streams are opened in-test. The
browser runs on Playwright's thread (tests/browser_helpers.py) while the Trio test goes
on serving; every wait is on a page condition (``wait_for_function``, ``expect``) or a
registry condition, bounded by ``PATIENCE``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
import trio

import streammgr
from streammgr import CloseReason, StreamManager, StreamSender
from streammgr.cluster import ClusterRegistry, RedisLimiter
from streammgr.server import ServiceOptions, admin_app
from tests.browser_helpers import ARTEFACTS, Chromium, chromium
from tests.fault_helpers import token_chat
from tests.redis_helpers import RedisServer, redis_server
from tests.server_helpers import GATEWAY_BASE, PATIENCE, Server, running_service

__all__ = ["chromium", "redis_server"]  # the fixtures, used by name

T = TypeVar("T")
TOKEN = "dashboard-token-Xy7q2"
WAIT_MS = PATIENCE * 1000
VISIBLE_ROWS = "#streams .row:not([hidden])"


async def ticking(done: trio.Event) -> AsyncIterator[str]:
    """An item every 50 ms until ``done``."""
    while not done.is_set():
        yield "tick"
        with trio.move_on_after(0.05):
            await done.wait()


@dataclass
class Streams:
    """Streams held open in-test: each reads until its ``done`` is set or it is cancelled."""

    manager: StreamManager
    nursery: trio.Nursery
    done: dict[str, trio.Event] = field(default_factory=dict)

    async def open(self, key: str, labels: dict[str, str] | None = None) -> str:
        """Open a stream of ``key`` and return its id once it is admitted."""
        done = trio.Event()
        ids: list[str] = []
        admitted = trio.Event()

        async def read() -> None:
            with contextlib.suppress(streammgr.StreamError):
                async with self.manager.open(ticking, done, key=key, labels=labels) as stream:
                    ids.append(stream.id)
                    admitted.set()
                    async for _ in stream:
                        pass

        self.nursery.start_soon(read)
        with trio.fail_after(PATIENCE):
            await admitted.wait()
        self.done[ids[0]] = done
        return ids[0]

    def queue(self, key: str) -> None:
        """Open a stream of ``key`` that may wait for a slot (not waited for here)."""

        async def read() -> None:
            with contextlib.suppress(streammgr.StreamError):
                async with self.manager.open(ticking, trio.Event(), key=key) as stream:
                    async for _ in stream:
                        pass

        self.nursery.start_soon(read)

    def finish(self, stream_id: str) -> None:
        """Let the stream complete."""
        self.done[stream_id].set()


@dataclass
class Tab:
    """A page of the session's Chromium, driven from the Trio test."""

    chromium: Chromium
    page: Any
    url: str

    async def do(self, action: Callable[[Any], T]) -> T:
        """Run ``action(page)`` on Playwright's thread."""
        return await self.chromium.run(lambda _browser: action(self.page))

    async def until(self, condition: str, argument: object = None) -> None:
        """Wait (bounded) until the JS ``condition`` (a function of ``argument``) holds."""
        await self.do(lambda page: page.wait_for_function(condition, arg=argument, timeout=WAIT_MS))

    async def shown(self, count: int) -> None:
        """Wait until the table shows ``count`` rows."""
        await self.until(
            "([rows, n]) => document.querySelectorAll(rows).length === n", [VISIBLE_ROWS, count]
        )

    async def text(self, selector: str) -> str:
        """The text of the first element ``selector`` matches."""
        return str(await self.do(lambda page: page.locator(selector).first.inner_text()))


@asynccontextmanager
async def new_tab(chromium: Chromium, url: str) -> AsyncIterator[Tab]:
    """A tab in a fresh browser context (its own storage), not opened yet; at the end,
    closed, and no script error nor anything the page's CSP refused may have happened
    on it (a refusal is only a console message: uPlot's styles, say)."""
    context = await chromium.run(lambda browser: browser.new_context())
    errors: list[str] = []

    def refused(message: Any) -> None:
        if "Content Security Policy" in message.text:
            errors.append(message.text)

    def new_page(_browser: Any) -> Any:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", refused)
        return page

    try:
        yield Tab(chromium, await chromium.run(new_page), url)
    finally:
        await chromium.run(lambda _browser: context.close())
    assert errors == []


@asynccontextmanager
async def dashboard(
    nursery: trio.Nursery, chromium: Chromium, *, token: str | None = None, **options: Any
) -> AsyncIterator[tuple[Streams, Tab, httpx.AsyncClient]]:
    """A manager, its inspection API served on loopback, an API client, and a tab
    (not opened yet: ``tab.url`` is the dashboard's)."""
    async with StreamManager(**options) as manager, trio.open_nursery() as readers:
        server = await Server().start(nursery, admin_app(manager, token=token))
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        try:
            async with (
                new_tab(chromium, f"{server.url}/admin/") as tab,
                httpx.AsyncClient(
                    base_url=f"{server.url}/admin", headers=headers, timeout=PATIENCE
                ) as api,
            ):
                yield Streams(manager, readers), tab, api
        finally:
            readers.cancel_scope.cancel()
            server.stop.set()


async def open_page(tab: Tab) -> None:
    await tab.do(lambda page: page.goto(tab.url))
    await tab.until("() => document.getElementById('feed-status').dataset.state === 'live'")


async def test_rows_appear_and_leave_as_streams_open_and_close(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    async with dashboard(nursery, chromium) as (streams, tab, api):
        first = await streams.open("tenant-a", {"model": "sim-small"})
        await streams.open("tenant-b")
        await open_page(tab)
        await tab.shown(2)
        third = await streams.open("tenant-c", {"model": "sim-large"})
        await tab.shown(3)
        row = f"{VISIBLE_ROWS}:has-text('tenant-c')"
        assert "model=sim-large" in await tab.text(row)
        # The feed tells the admission; the rows on screen are refreshed for the rest.
        await tab.until(
            "() => [...document.querySelectorAll('#streams .row:not([hidden])')].every("
            "row => row.children[2].textContent === 'streaming' "
            "&& Number(row.children[4].textContent) > 0)"
        )

        streams.finish(first)
        await tab.shown(2)
        closes = "#history tr"
        await tab.until(
            "() => [...document.querySelectorAll('#history tr')]"
            ".some(row => row.textContent.includes('tenant-a'))"
        )
        closed = await tab.text(f"{closes}:has-text('tenant-a')")
        assert "completed" in closed
        # Counters and limit usage from /stats, items from the rows' refresh.
        await tab.until("() => document.getElementById('stat-opened').textContent === '3'")
        assert await tab.do(lambda page: page.locator("#chart canvas").count()) >= 1
        # Keys with streams are listed with their usage.
        await tab.until("() => document.getElementById('keys').textContent.includes('tenant-c')")

        path = ARTEFACTS / "dashboard.png"
        path.unlink(missing_ok=True)
        await tab.do(lambda page: page.screenshot(path=str(path), full_page=True))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (await api.get(f"/streams/{third}")).json()["phase"] != "closed"


async def test_cancel_a_stream_from_the_page(nursery: trio.Nursery, chromium: Chromium) -> None:
    async with dashboard(nursery, chromium) as (streams, tab, api):
        kept = await streams.open("tenant-keep")
        target = await streams.open("tenant-cancel")
        await open_page(tab)
        await tab.shown(2)
        await tab.do(
            lambda page: page.locator(f"{VISIBLE_ROWS}:has-text('tenant-cancel') button").click()
        )
        await tab.shown(1)
        answer = (await api.get(f"/streams/{target}")).json()
        assert answer["phase"] == "closed"
        assert answer["close_reason"] == CloseReason.CANCELLED
        assert answer["detail"] == "operator"
        assert "cancelled stream" in await tab.text("#action-result")
        assert (await api.get(f"/streams/{kept}")).json()["phase"] != "closed"


async def test_cancel_a_key_with_a_reason(nursery: trio.Nursery, chromium: Chromium) -> None:
    async with dashboard(nursery, chromium) as (streams, tab, api):
        for _ in range(3):
            await streams.open("tenant/noisy")  # a key with a slash: encoded in the path
        other = await streams.open("tenant-quiet")
        await open_page(tab)
        await tab.shown(4)

        def cancel_key(page: Any) -> None:
            page.fill("#cancel-key-name", "tenant/noisy")
            page.fill("#reason", "over quota")
            page.click("#cancel-key")

        await tab.do(cancel_key)
        await tab.shown(1)
        await tab.until(
            "() => document.getElementById('action-result').textContent.includes('cancelled 3')"
        )
        history = (await api.get("/history", params={"key": "tenant/noisy"})).json()
        assert [(s["close_reason"], s["detail"]) for s in history["streams"]] == [
            ("cancelled", "over quota")
        ] * 3
        assert (await api.get(f"/streams/{other}")).json()["phase"] != "closed"


async def test_change_a_limit_from_the_page(nursery: trio.Nursery, chromium: Chromium) -> None:
    async with dashboard(nursery, chromium, max_streams=1) as (streams, tab, api):
        await streams.open("tenant-first")
        streams.queue("tenant-second")
        await open_page(tab)
        # The waiting stream is listed, as waiting; the global limit is in use.
        await tab.until(
            "() => [...document.querySelectorAll('#streams .row:not([hidden])')].some("
            "row => row.textContent.includes('tenant-second') "
            "&& row.children[2].textContent === 'waiting')"
        )
        assert await tab.do(lambda page: page.input_value("#limit-max_streams")) == "1"
        await tab.until(
            "() => document.getElementById('usage-global-text').textContent"
            ".startsWith('1 active of 1, 1 waiting')"
        )

        def set_limits(page: Any) -> None:
            page.fill("#limit-max_streams_per_key", "7")
            page.fill("#limit-max_streams", "2")
            page.click("#limits button[type=submit]")

        await tab.do(set_limits)
        await tab.until(
            "() => document.getElementById('limits-result').textContent.startsWith('applied')"
        )
        limits = (await api.get("/limits")).json()
        assert limits == {"max_streams": 2, "max_streams_per_key": 7, "max_waiting": None}
        # Applied: the waiting stream got the new slot, and the page says so.
        await tab.until(
            "() => [...document.querySelectorAll('#streams .row:not([hidden])')]"
            ".every(row => row.children[2].textContent !== 'waiting')"
        )

        # A refused value: the API's message, nothing changed.
        await tab.do(lambda page: page.fill("#limit-max_streams", "2000000000"))
        await tab.do(lambda page: page.click("#limits button[type=submit]"))
        await tab.until("() => document.getElementById('limits-result').dataset.ok === 'false'")
        assert "max_streams" in await tab.text("#limits-result")
        assert (await api.get("/limits")).json()["max_streams"] == 2


async def test_a_wrong_token_shows_the_message_and_nothing_else(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    async with dashboard(nursery, chromium, token=TOKEN) as (streams, tab, api):
        await streams.open("tenant-secret", {"project": "hidden-project"})
        async with httpx.AsyncClient(timeout=PATIENCE) as anonymous:
            # The page holds no data: served without the token; the API is not.
            assert (await anonymous.get(tab.url)).status_code == 200
            assert (await anonymous.get(tab.url + "stats")).status_code == 401
        await tab.do(lambda page: page.goto(tab.url))
        await tab.until("() => !document.getElementById('login').hidden")
        assert "needs a token" in await tab.text("#message")

        def log_in(token: str) -> Callable[[Any], None]:
            def fill(page: Any) -> None:
                page.fill("#token", token)
                page.click("#login button[type=submit]")

            return fill

        await tab.do(log_in("not-the-token"))
        await tab.until("() => document.getElementById('message').textContent.includes('refused')")
        assert await tab.do(lambda page: page.locator("#dashboard").is_hidden())
        assert await tab.do(lambda page: page.locator(".vtable .row").count()) == 0
        body = await tab.do(lambda page: page.inner_text("body"))
        assert "tenant-secret" not in body
        assert "hidden-project" not in body
        stored = "() => sessionStorage.getItem('streammgr.admin.token')"
        assert await tab.do(lambda page: page.evaluate(stored)) is None

        await tab.do(log_in(TOKEN))
        await tab.shown(1)
        assert await tab.do(lambda page: page.evaluate(stored)) == TOKEN
        assert TOKEN not in await tab.do(lambda page: page.url)
        # A reload keeps the token (the tab's session storage): straight to the rows.
        await tab.do(lambda page: page.reload())
        await tab.shown(1)
        assert await tab.do(lambda page: page.locator("#login").is_hidden())
        assert (await api.get("/stats")).json()["active"] == 1


async def test_hostile_keys_and_labels_are_shown_as_text(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    label = "<img src=x onerror=window.__pwned=1>"
    key = "<script>window.__pwned=2</script><b>bold</b>"
    async with dashboard(nursery, chromium) as (streams, tab, api):
        hostile = await streams.open(key, {"note": label})
        await open_page(tab)
        await tab.shown(1)
        row = await tab.text(VISIBLE_ROWS)
        assert key in row
        assert f"note={label}" in row
        await tab.do(lambda page: page.fill("#reason", label))
        await tab.do(lambda page: page.locator(f"{VISIBLE_ROWS} button").click())
        await tab.until("key => document.getElementById('history').textContent.includes(key)", key)
        assert await tab.do(lambda page: page.evaluate("() => window.__pwned")) is None
        # No element came out of the text (the page's own <script> tags are in <head>).
        injected = ", ".join(
            f"{place} {tag}"
            for place in ("#streams", "#history", "#keys", "#action-result")
            for tag in ("img", "script", "b")
        )
        assert await tab.do(lambda page: page.locator(injected).count()) == 0
        assert (await api.get(f"/streams/{hostile}")).json()["detail"] == label

        # The page's headers: a strict policy, no sniffing; the Host check applies.
        page = await api.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        script = await api.get("/static/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["x-content-type-options"] == "nosniff"
        assert (await api.get("/static/nothing.js")).status_code == 404
        rebound = await api.get("/", headers={"host": "rebinding.example"})
        assert rebound.status_code == 403


@pytest.mark.timeout(120)  # 10,000 streams opened on a loaded machine: ~5-15 s
async def test_ten_thousand_streams(nursery: trio.Nursery, chromium: Chromium) -> None:
    count = 10_000
    async with dashboard(nursery, chromium) as (streams, tab, _):
        done = trio.Event()
        admitted = 0
        all_admitted = trio.Event()

        async def hold(index: int) -> None:
            nonlocal admitted
            async with streams.manager.open(
                ticking_never, done, key=f"tenant-{index % 100}", labels={"n": str(index)}
            ) as stream:
                admitted += 1
                if admitted == count:
                    all_admitted.set()
                async for _ in stream:
                    pass

        for index in range(count):
            streams.nursery.start_soon(hold, index)
        with trio.fail_after(PATIENCE * 3):
            await all_admitted.wait()

        await open_page(tab)
        await tab.until(
            "n => document.getElementById('row-count').textContent === `(${n} of ${n})`", count
        )
        # Only the rows on screen are in the DOM.
        in_dom = await tab.do(lambda page: page.locator("#streams .row").count())
        assert 0 < in_dom <= 60
        # An update is applied: one more stream, then the last rows scrolled to.
        extra = await streams.open("tenant-extra", {"n": "extra"})
        await tab.until(
            "n => document.getElementById('row-count').textContent === `(${n} of ${n})`",
            count + 1,
        )
        await tab.do(
            lambda page: page.eval_on_selector(
                "#streams", "element => { element.scrollTop = element.scrollHeight; }"
            )
        )
        await tab.until(
            "() => [...document.querySelectorAll('#streams .row:not([hidden])')]"
            ".some(row => row.textContent.includes('tenant-extra'))"
        )
        assert await tab.do(lambda page: page.locator("#streams .row").count()) <= 60
        streams.manager.cancel(extra)
        done.set()


async def ticking_never(send: StreamSender[str], done: trio.Event) -> None:
    """Nothing until ``done`` (10,000 of them cost no CPU)."""
    await done.wait()


async def test_the_cluster_view_shows_each_stream_instance(
    nursery: trio.Nursery, chromium: Chromium, redis_server: RedisServer
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        managers = {}
        for name in ("gw-a", "gw-b"):
            limiter = RedisLimiter(redis_server.url, instance_id=name, lease_ttl=2.0)
            manager = StreamManager(limiter=limiter, id_prefix=name)
            registry = ClusterRegistry(manager, limiter.connection, ttl=2.0, interval=0.2)
            for entered in (limiter, manager, registry):
                await stack.enter_async_context(entered)
            managers[name] = (manager, registry)
        readers = await stack.enter_async_context(trio.open_nursery())  # closed first
        manager, registry = managers["gw-a"]
        server = await Server().start(nursery, admin_app(manager, cluster=registry))
        here = await Streams(manager, readers).open("tenant-here")
        elsewhere = await Streams(managers["gw-b"][0], readers).open("tenant-elsewhere")
        async with new_tab(chromium, f"{server.url}/admin/") as tab:
            await open_page(tab)
            await tab.until("() => !document.getElementById('cluster-panel').hidden")
            rows = "#cluster-streams .row:not([hidden])"
            await tab.until(
                "rows => [...document.querySelectorAll(rows)].map(row => "
                "row.children[0].textContent + ' ' + row.children[1].textContent).sort()"
                ".join() === 'gw-a tenant-here,gw-b tenant-elsewhere'",
                rows,
            )
            await tab.until(
                "() => document.getElementById('instances').textContent.includes('gw-b')"
            )
            # Cancelled from instance a's page, on instance b.
            await tab.do(lambda page: page.locator(f"{rows}:has-text('gw-b') button").click())
            await tab.until(
                "() => document.getElementById('action-result').textContent"
                ".includes('cancelled stream')"
            )
        closed = managers["gw-b"][0].get(elsewhere)
        assert closed is not None
        assert (closed.close_reason, closed.detail) == (CloseReason.CANCELLED, "operator")
        info = manager.get(here)
        assert info is not None
        assert info.close_reason is None
        readers.cancel_scope.cancel()
        server.stop.set()


async def test_the_service_serves_it_beside_the_gateway(
    nursery: trio.Nursery, chromium: Chromium
) -> None:
    manager = StreamManager()
    options = ServiceOptions(upstream_url=GATEWAY_BASE)
    admin = admin_app(manager, prefix="")  # as streammgr serve mounts it
    async with (
        running_service(nursery, manager, options, admin=admin) as (server, _),
        httpx.AsyncClient(base_url=server.url, timeout=PATIENCE) as http,
        http.stream("POST", "/v1/chat/completions", json=token_chat(10_000, 0.02)) as answer,
        new_tab(chromium, f"{server.url}/admin") as tab,  # no slash: led to /admin/
    ):
        assert answer.status_code == 200
        await open_page(tab)
        assert await tab.do(lambda page: page.url) == f"{server.url}/admin/"
        await tab.shown(1)
        row = await tab.text(VISIBLE_ROWS)
        assert "model=sim-small" in row
        assert "route=chat.completions" in row
        # Cancelled from the page: the client's answer ends, the registry says why.
        await tab.do(lambda page: page.locator(f"{VISIBLE_ROWS} button").click())
        await tab.shown(0)
        with trio.fail_after(PATIENCE):
            body = b"".join([chunk async for chunk in answer.aiter_bytes()])
        assert b"operator" in body  # the in-band error names the reason
        (closed,) = manager.history()
        assert (closed.close_reason, closed.detail) == (CloseReason.CANCELLED, "operator")
