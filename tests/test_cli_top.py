"""``streammgr top``: the sans-IO model (feed events, polls, sorting, rates, limits,
backoff), the command's flags, and the Textual app driven by its test pilot against
a real service served over loopback (in a thread running ``trio.run``).

The app runs on asyncio (Textual's loop), so its tests are plain sync tests calling
``asyncio.run``. Real sockets and real time: every wait is on a redraw of the app
or an event of the server, bounded by ``PATIENCE``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from streammgr import StreamManager
from streammgr.cli import main
from streammgr.cli._top import COLUMNS, Backoff, FeedProtocolError, TopModel
from streammgr.cli._top_app import CANCEL_REASON, ConfirmCancel, TopApp, TopSettings
from streammgr.server import ServiceOptions, admin_app
from streammgr.simulate import SimulatedUpstream
from streammgr.sse import ServerSentEvent, SSEParser, encode

from .server_helpers import running_service
from .top_helpers import PATIENCE, run, shown_text, stream, table_rows, until

TOKEN = "s3cret-admin-token-for-top"


# -- the model ------------------------------------------------------------------------------


def event(kind: str, data: object) -> ServerSentEvent:
    return ServerSentEvent(event=kind, data=json.dumps(data))


def feed_bytes(*events: ServerSentEvent) -> bytes:
    return b"".join(encode(each) for each in events)


def ids(model: TopModel, now: float = 0.0) -> list[str]:
    return [row.id for row in model.rows(now)]


def test_a_snapshot_then_opened_admitted_closed_give_the_registry() -> None:
    model = TopModel()
    # As the server writes it, parsed by streammgr's own parser in one odd chunking.
    body = feed_bytes(
        event("snapshot", {"reason": "start", "streams": [stream("a", age=5.0)]}),
        event("opened", stream("b", phase="waiting", age=0.0, created_at=104.0)),
        event("admitted", stream("b", phase="connecting", age=0.5, created_at=104.0)),
        event("closed", {**stream("a", phase="closed", age=5.5), "close_reason": "completed"}),
        event("opened", stream("c", phase="waiting", age=0.0, created_at=105.0)),
    )
    parser = SSEParser()
    for offset in range(0, len(body), 7):
        for parsed in parser.feed(body[offset : offset + 7]):
            model.apply(parsed, now=0.0)
    assert sorted(model.streams) == ["b", "c"]
    assert model.streams["b"].phase == "connecting"
    assert model.streams["c"].phase == "waiting"
    assert model.snapshots == 1
    # A new snapshot (after an overflow, or a reconnect) replaces everything.
    model.apply(event("snapshot", {"reason": "overflow", "streams": [stream("d")]}), 0.0)
    assert list(model.streams) == ["d"]
    assert model.snapshots == 2


def test_end_unknown_and_malformed_events() -> None:
    model = TopModel()
    model.apply(event("snapshot", {"reason": "start", "streams": []}), 0.0)
    model.apply(ServerSentEvent(event="something-new", data="not json"), 0.0)  # ignored
    model.apply(event("end", {"reason": "manager_closed"}), 0.0)
    assert model.ended == "manager_closed"
    with pytest.raises(FeedProtocolError, match="not JSON"):
        model.apply(ServerSentEvent(event="opened", data="{"), 0.0)
    with pytest.raises(FeedProtocolError, match="'items' is not an integer"):
        model.apply(event("opened", {**stream("x"), "items": "3"}), 0.0)
    with pytest.raises(FeedProtocolError, match="no 'streams' list"):
        model.apply(event("snapshot", {"reason": "start"}), 0.0)


def test_a_poll_updates_known_rows_only_and_never_goes_back_in_time() -> None:
    model = TopModel()
    model.apply(event("snapshot", {"reason": "start", "streams": [stream("a", age=1.0)]}), 0.0)
    model.apply(event("admitted", stream("b", phase="connecting", age=0.0, created_at=101)), 0)
    model.apply(event("closed", stream("z", phase="closed")), 0.0)
    model.apply_listing(
        [
            stream("a", age=2.0, items=10, size=300),
            stream("b", phase="waiting", age=-0.5, created_at=101),  # taken before the admission
            stream("z", items=4),  # closed since the poll was taken
            stream("new"),  # opened after the feed's snapshot: the feed will tell
        ],
        now=1.0,
    )
    assert sorted(model.streams) == ["a", "b"]
    assert (model.streams["a"].items, model.streams["a"].bytes) == (10, 300)
    assert model.streams["b"].phase == "connecting"
    # An opened event for an id the feed already closed cannot bring it back either.
    model.apply(event("opened", stream("z", phase="waiting")), 0.0)
    assert "z" not in model.streams


def test_rate_is_items_per_second_of_server_time_between_samples() -> None:
    model = TopModel()
    # No earlier sample: the average since the first item (10 items in 2 s).
    first = stream("a", created_at=100.0, age=3.0, items=10, first_item_at=101.0)
    model.apply(event("snapshot", {"reason": "start", "streams": [first]}), 0.0)
    assert model.streams["a"].rate == pytest.approx(5.0)
    # Then what came between two samples: 30 items in 0.5 s.
    model.apply_listing([stream("a", created_at=100.0, age=3.5, items=40)], now=0.5)
    assert model.streams["a"].rate == pytest.approx(60.0)
    # A sample at the same server time keeps the rate (no division by zero).
    model.apply_listing([stream("a", created_at=100.0, age=3.5, items=40)], now=0.6)
    assert model.streams["a"].rate == pytest.approx(60.0)
    # Nothing delivered yet: no rate.
    model.apply(event("admitted", stream("b", phase="connecting", age=0.1)), 0.0)
    assert model.streams["b"].rate is None
    assert model.streams["b"].cells()[COLUMNS.index("rate")] == "-"
    assert model.streams["a"].cells()[COLUMNS.index("rate")] == "60.0/s"


def sort_fixture() -> TopModel:
    model = TopModel()
    streams = [
        stream("s-1", key="beta", phase="streaming", age=9.0, items=5, size=50),
        stream("s-2", key="alpha", phase="waiting", age=3.0, items=0, size=0),
        stream("s-3", key="gamma", phase="connecting", age=6.0, items=20, size=10),
    ]
    model.apply(event("snapshot", {"reason": "start", "streams": streams}), 0.0)
    model.apply_listing(
        [{**streams[0], "age": 10.0, "items": 25}, {**streams[2], "age": 7.0, "items": 21}], 1.0
    )
    return model


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("age", ["s-1", "s-3", "s-2"]),  # oldest first
        ("id", ["s-1", "s-2", "s-3"]),
        ("key", ["s-2", "s-1", "s-3"]),  # alpha, beta, gamma
        ("phase", ["s-2", "s-3", "s-1"]),  # waiting, connecting, streaming: the lifecycle
        ("items", ["s-1", "s-3", "s-2"]),  # 25, 21, 0
        ("bytes", ["s-1", "s-3", "s-2"]),  # 50, 10, 0
        ("rate", ["s-1", "s-3", "s-2"]),  # 20/s, 1/s, none
    ],
)
def test_every_column_sorts_and_reverses(column: Any, expected: list[str]) -> None:
    model = sort_fixture()
    model.sort_by(column)
    if column == "age":  # the default: choosing it again flips it
        model.sort_by("id")
        model.sort_by("age")
    assert ids(model, 1.0) == expected
    model.sort_by(column)
    assert ids(model, 1.0) == expected[::-1]
    assert TopModel(column, reverse=True).reverse


def test_ages_move_on_with_the_callers_clock_between_samples() -> None:
    model = TopModel()
    model.apply(event("snapshot", {"reason": "start", "streams": [stream("a", age=4.0)]}), 10.0)
    (row,) = model.rows(12.5)
    assert row.age == pytest.approx(6.5)
    assert row.cells()[COLUMNS.index("age")] == "6.5s"


def test_the_limits_line() -> None:
    model = TopModel()
    model.apply(event("snapshot", {"reason": "start", "streams": [stream("a")]}), 0.0)
    assert model.limits_line() == "active 1  waiting 0  (no stats yet)"
    model.apply_stats(
        {
            "active": 3,
            "waiting": 1,
            "max_streams": 100,
            "max_streams_per_key": 10,
            "max_waiting": None,
            "active_by_key": {"tenant-b": 1, "tenant-a": 2},
            "waiting_by_key": {"tenant-a": 1},
            "closing": False,
        }
    )
    assert model.limits_line() == (
        "active 3/100  waiting 1/-  per key max 10: tenant-a 2 (+1 waiting), tenant-b 1"
    )
    with pytest.raises(FeedProtocolError):
        model.apply_stats([])


def test_bad_sort_columns_and_backoff() -> None:
    with pytest.raises(ValueError, match="sort must be one of id, key"):
        TopModel("cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="column must be one of"):
        TopModel().sort_by("cpu")  # type: ignore[arg-type]
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5
    with pytest.raises(ValueError, match="initial"):
        Backoff(0)


# -- the command ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "named", "accepts"),
    [
        (["top", "--url", "127.0.0.1:8000/admin"], "--url", "http://"),
        (["top", "--refresh", "0"], "--refresh", "positive number of seconds"),
        (["top", "--refresh", "nan"], "--refresh", "positive number of seconds"),
        (["top", "--sort", "cpu"], "--sort", "rate"),
    ],
)
def test_a_bad_flag_is_a_one_line_error(
    argv: list[str], named: str, accepts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert named in lines[0]
    assert accepts in lines[0]


def test_help_names_the_flags_and_the_token_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ["--url", "--token", "--sort", "--reverse", "--refresh", "STREAMMGR_ADMIN_TOKEN"]:
        assert flag in out


def test_without_textual_it_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "streammgr.cli._top_app")
    monkeypatch.setitem(sys.modules, "textual", None)  # import textual: ImportError
    monkeypatch.setitem(sys.modules, "textual.app", None)
    with pytest.raises(SystemExit) as exited:
        main(["top"])
    message = str(exited.value.code)
    assert "pip install 'streammgr[top]'" in message
    assert "\n" not in message


# -- the app against a real service ----------------------------------------------------------


class Service:
    """The service (gateway + inspection API over the simulator) served on loopback by
    ``trio.run`` in a thread; chats held open on request."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self.failure: BaseException | None = None

    def __enter__(self) -> Service:
        self._thread.start()
        assert self._ready.wait(PATIENCE), "the service did not start"
        if self.failure is not None:
            raise self.failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop = self._stop
        assert stop is not None
        trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(PATIENCE)
        assert not self._thread.is_alive(), "the service did not stop"
        if self.failure is not None:
            raise self.failure

    async def _main(self) -> None:
        try:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            manager = StreamManager(max_streams=10, max_streams_per_key=5)
            upstream = SimulatedUpstream(first_token_latency=0, token_latency=0)
            options = ServiceOptions(upstream_url="http://sim/v1", key_header="x-tenant")
            admin = admin_app(manager, token=TOKEN, prefix="")
            async with (
                trio.open_nursery() as nursery,
                running_service(
                    nursery,
                    manager,
                    options,
                    upstream=upstream,
                    acquire_timeout=None,
                    admin=admin,
                    grace=0.1,
                    close_timeout=2.0,
                ) as (server, _),
            ):
                self._nursery = nursery
                self.url = server.url
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            self._ready.set()

    async def _hold_chat(self, tenant: str, task_status: trio.TaskStatus[None]) -> None:
        # Two tokens, then the upstream stalls for good: the stream stays open
        # (streaming) until it is cancelled or the server shuts down.
        body = {
            "model": "sim-small",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "streammgr_simulate": {"fault": "stall_mid_stream", "fault_after": 2, "stall": None},
        }
        async with (
            # No read timeout: the stall is the point.
            httpx.AsyncClient(
                base_url=self.url, timeout=httpx.Timeout(PATIENCE, read=None)
            ) as client,
            client.stream(
                "POST", "/v1/chat/completions", json=body, headers={"x-tenant": tenant}
            ) as response,
        ):
            assert response.status_code == 200
            chunks = response.aiter_bytes()
            started = False
            async for chunk in chunks:
                if not started and b'"content":"' in chunk:
                    started = True
                    task_status.started()
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _open(self, tenant: str) -> None:
        assert self._nursery is not None
        with trio.fail_after(PATIENCE):
            await self._nursery.start(self._hold_chat, tenant)

    async def open_chat(self, tenant: str) -> None:
        """Hold a chat of ``tenant`` open (returns once its first token came)."""
        await asyncio.to_thread(self.open_chat_now, tenant)

    def open_chat_now(self, tenant: str) -> None:
        """:meth:`open_chat`, from a thread running no event loop."""
        trio.from_thread.run(self._open, tenant, trio_token=self._token)

    async def history(self) -> list[dict[str, Any]]:
        """The server's recently closed streams (the registry's record)."""
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers) as client:
            response = await client.get("/admin/history")
        assert response.status_code == 200
        streams: list[dict[str, Any]] = response.json()["streams"]
        return streams


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with Service() as running:
        yield running


def test_top_shows_sorts_and_cancels_streams_of_a_real_server(service: Service) -> None:
    service.open_chat_now("tenant-c")  # before top starts: in the feed's snapshot

    async def scenario() -> None:
        settings = TopSettings(url=f"{service.url}/admin", token=TOKEN, refresh=0.2)
        app = TopApp(settings)
        async with app.run_test(size=(150, 30)) as pilot:
            await until(
                app, pilot, lambda: [r["key"] for r in table_rows(app)] == ["tenant-c"], "c"
            )
            assert app.feed_status == "live"
            await service.open_chat("tenant-a")  # opened, admitted: from the feed's changes
            await service.open_chat("tenant-b")

            def all_streaming() -> bool:
                rows = table_rows(app)
                return len(rows) == 3 and all(
                    row["phase"] == "streaming" and int(row["items"]) > 0 for row in rows
                )

            # The feed says connecting; the poll of GET /admin/streams says streaming.
            await until(app, pilot, all_streaming, "three streaming streams with items")
            keys = [row["key"] for row in table_rows(app)]
            assert keys == ["tenant-c", "tenant-a", "tenant-b"]  # by age, oldest first
            await until(
                app,
                pilot,
                lambda: "active 3/10" in shown_text(app) and "tenant-a 1" in shown_text(app),
                "the limits line",
            )

            await pilot.press("2")  # sort by key
            await pilot.pause()
            assert [row["key"] for row in table_rows(app)] == ["tenant-a", "tenant-b", "tenant-c"]
            await pilot.press("2")  # again: reversed
            await pilot.pause()
            assert [row["key"] for row in table_rows(app)] == ["tenant-c", "tenant-b", "tenant-a"]
            await pilot.press("r")
            await pilot.pause()
            assert [row["key"] for row in table_rows(app)] == ["tenant-a", "tenant-b", "tenant-c"]
            assert "sorted by key (A to Z)" in shown_text(app)

            # The cursor followed its stream (tenant-c's, the first row at the start)
            # through the sorts. Select tenant-b's; answering no keeps it.
            assert app.selected_id() == table_rows(app)[2]["id"]
            await pilot.press("up", "up", "up", "down")
            await pilot.pause()
            target = app.selected_id()
            assert target == table_rows(app)[1]["id"]
            await pilot.press("c")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmCancel)
            assert f"Cancel stream {target} (key tenant-b)?" in shown_text(app)
            await pilot.press("n")
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmCancel)
            # The cursor stays on the same stream across redraws.
            await app.wait_redrawn()
            assert app.selected_id() == target

            await pilot.press("c", "y")
            await until(
                app,
                pilot,
                lambda: [row["key"] for row in table_rows(app)] == ["tenant-a", "tenant-c"],
                "the cancelled stream gone",
            )
            assert f"cancelled {target}" in app.notice
            closed = {stream["id"]: stream for stream in await service.history()}
            assert closed[target]["close_reason"] == "cancelled"
            assert closed[target]["detail"] == CANCEL_REASON
            assert closed[target]["key"] == "tenant-b"
            assert TOKEN not in shown_text(app)
            await pilot.press("q")
        assert app.return_value is None

    run(scenario)


def test_a_wrong_token_is_a_clear_message_without_the_token(service: Service) -> None:
    wrong = "not-the-token-12345"

    async def scenario() -> None:
        app = TopApp(TopSettings(url=f"{service.url}/admin", token=wrong, refresh=0.2))
        async with app.run_test(size=(150, 30)) as pilot:
            await until(app, pilot, lambda: "401" in app.feed_status, "the 401")
            assert "not retrying" in app.feed_status
            await until(app, pilot, lambda: "401" in app.poll_status, "the poll's 401")
            text = shown_text(app)
            assert "--token or STREAMMGR_ADMIN_TOKEN" in text
            assert wrong not in text
            assert wrong not in repr(app.settings)
            await pilot.press("q")

    run(scenario)


def test_an_unreachable_server_is_a_clear_message_and_top_keeps_retrying() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/admin"

    async def scenario() -> None:
        app = TopApp(TopSettings(url=url, refresh=0.2))
        async with app.run_test(size=(150, 30)) as pilot:
            await until(app, pilot, lambda: "reconnecting in 1.0s" in app.feed_status, "retry 2")
            assert f"cannot reach {url}" in app.feed_status
            assert "cannot reach" in shown_text(app)
            await pilot.press("q")

    run(scenario)


def test_keys_are_shown_as_text_and_an_ended_feed_reconnects() -> None:
    # Through httpx.MockTransport: each feed request answers a snapshot and the end.
    evil = stream("x-1", key="[red]tenant[/red]", phase="streaming", items=3)
    feeds: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if request.url.path == "/admin/streams/events":
            feeds.append(1)
            body = feed_bytes(
                event("snapshot", {"reason": "start", "streams": [evil]}),
                event("end", {"reason": "manager_closed"}),
            )
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        if request.url.path == "/admin/streams":
            return httpx.Response(200, json={"streams": [evil], "total": 1, "next_cursor": None})
        assert request.url.path == "/admin/stats"
        return httpx.Response(200, json={"active": 1, "waiting": 0, "max_streams": 4})

    async def scenario() -> None:
        settings = TopSettings(url="http://admin.test/admin", token=TOKEN, refresh=0.2)
        app = TopApp(settings, transport=httpx.MockTransport(answer))
        async with app.run_test(size=(150, 30)) as pilot:
            await until(app, pilot, lambda: len(feeds) >= 2, "a second feed request")
            assert table_rows(app)[0]["key"] == "[red]tenant[/red]"
            assert "[red]tenant[/red]" in shown_text(app)
            await until(app, pilot, lambda: "manager closed" in app.feed_status, "the end")
            assert "manager_closed" in app.feed_status
            assert "reconnecting in" in app.feed_status
            await until(app, pilot, lambda: "active 1/4" in shown_text(app), "the limits")
            await pilot.press("q")

    run(scenario)
