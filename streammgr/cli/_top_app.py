"""``streammgr top``'s terminal app (Textual, on asyncio; httpx for the admin API).

The I/O around :class:`~streammgr.cli._top.TopModel`: one task follows the events
feed (parsed by :class:`streammgr.sse.SSEParser`), reconnecting with a backoff when
it drops; one polls ``GET /admin/streams`` and ``GET /admin/stats`` every
``refresh`` seconds for what the feed does not carry (later phases, items, bytes,
limits). With ``cluster``, no feed: each poll reads ``GET /admin/cluster/streams`` and
``GET /admin/cluster/stats`` (every instance's streams). Only this module imports
Textual: ``streammgr top`` says which extra to install when it is missing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote

import httpx
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from ..sse import SSEParser
from ._top import COLUMNS, Backoff, Column, FeedProtocolError, TopModel

__all__ = ["CANCEL_REASON", "ConfirmCancel", "TopApp", "TopSettings", "run_top"]

CANCEL_REASON = "cancelled from streammgr top"
"""The reason sent with a cancel (the registry records it as the stream's detail)."""

MAX_PAGES = 20
"""The most pages of 1000 streams one poll reads."""

# Fixed widths: measuring a column again after a cell shrank costs a pass over every
# row of it (per cell updated: quadratic at a thousand rows changing each refresh).
# Longer values are cut; the confirmation of a cancel shows the whole id and key.
_WIDTHS: dict[Column, int] = {
    "id": 14,
    "key": 24,
    "phase": 10,
    "age": 7,
    "items": 10,
    "bytes": 10,
    "rate": 10,
    "instance": 16,
}

_FEED_TIMEOUT = httpx.Timeout(10.0, read=90.0)  # keep-alives come every 15 s by default


@dataclass(frozen=True, slots=True)
class TopSettings:
    """What ``streammgr top`` was started with.

    Attributes:
        url: the admin API's base URL, e.g. ``http://127.0.0.1:8000/admin``.
        token: the admin bearer token, or ``None``; never shown.
        sort: the column sorted by at start.
        reverse: flip that column's natural order.
        refresh: seconds between two polls of the counts and limits.
        cluster: every instance's streams (``GET /admin/cluster/...``), polled.
    """

    url: str
    token: str | None = None
    sort: Column = "age"
    reverse: bool = False
    refresh: float = 1.0
    cluster: bool = False

    def __repr__(self) -> str:
        token = "set" if self.token else "none"
        return (
            f"TopSettings(url={self.url!r}, token={token}, sort={self.sort!r}, "
            f"reverse={self.reverse!r}, refresh={self.refresh!r}, cluster={self.cluster!r})"
        )


class _Unauthorized(Exception):
    """The admin API answered 401."""


class _Refused(Exception):
    """The admin API answered with an error status; the message says which."""


class ConfirmCancel(ModalScreen[bool]):
    """Asks before a stream is cancelled: ``y`` cancels it, ``n`` or Escape does not."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes, cancel it"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmCancel { align: center middle; }
    ConfirmCancel > Static {
        width: auto; max-width: 80%; padding: 1 2; border: thick $error; background: $surface;
    }
    """

    def __init__(self, stream_id: str, key: str) -> None:
        super().__init__()
        self.stream_id = stream_id
        self.key = key

    def compose(self) -> ComposeResult:
        """The question."""
        yield Static(
            f"Cancel stream {self.stream_id} (key {self.key})?\n\ny: cancel it    n: keep it",
            id="question",
            markup=False,
        )

    def action_answer(self, yes: bool) -> None:
        """Close the question with the answer."""
        self.dismiss(yes)


class TopApp(App[int]):
    """A live table of a server's streams in flight, and its limit usage.

    Args:
        settings: the URL, token, sort order and refresh interval.
        transport: the httpx transport (tests; default: the network).
    """

    TITLE = "streammgr top"
    CSS = """
    #limits { height: auto; padding: 0 1; background: $boost; }
    #status { height: auto; padding: 0 1; color: $warning; }
    DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("c", "cancel_stream", "Cancel stream"),
        Binding("s", "next_sort", "Sort column"),
        Binding("r", "reverse", "Reverse"),
        *(
            Binding(str(number), f"sort_by({column!r})", f"Sort by {column}", show=False)
            for number, column in enumerate(COLUMNS, start=1)
        ),
    ]

    def __init__(
        self, settings: TopSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self.model = TopModel(settings.sort, reverse=settings.reverse, cluster=settings.cluster)
        self.feed_status = "connecting"
        """What the feed task last said: ``live``, or why it is not."""
        self.poll_status = ""
        """What the poll task last said when it failed ("" when it worked)."""
        self.notice = ""
        """The outcome of the last action (a cancel)."""
        self.redraws = 0
        self._redrawn = asyncio.Event()
        self._redraw_pending = False
        self._shown: dict[str, tuple[str, ...]] = {}
        headers = {"accept": "application/json"}
        if settings.token:
            headers["authorization"] = f"Bearer {settings.token}"
        self._http = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(10.0),
            transport=transport,
        )

    # -- layout --------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        """The limits line, the table, the status line and the keys."""
        with Vertical():
            yield Static("", id="limits", markup=False)
            yield DataTable(id="streams", cursor_type="row", zebra_stripes=True)
            yield Static("", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        """Set up the columns and start the feed and the poll."""
        table = self.query_one(DataTable)
        for column in self.model.columns:
            table.add_column(column, key=column, width=_WIDTHS[column])
        if self.settings.cluster:
            self.feed_status = f"cluster: every instance, polled every {self.settings.refresh:g}s"
        else:
            self.run_worker(self._follow_feed(), name="feed", exit_on_error=False)
        self.run_worker(self._poll(), name="poll", exit_on_error=False)
        self._redraw()

    async def on_unmount(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()

    # -- what the tests and the keys use -------------------------------------------

    async def wait_redrawn(self) -> None:
        """Return after the next redraw of the table."""
        await self._redrawn.wait()

    def selected_id(self) -> str | None:
        """The id of the stream under the cursor, or ``None``."""
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        row_key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
        return row_key.value

    def action_sort_by(self, column: Column) -> None:
        """Sort by a column (again: flip the order)."""
        self.model.sort_by(column)
        self._changed()

    def action_next_sort(self) -> None:
        """Sort by the next column."""
        columns = self.model.columns
        index = (columns.index(self.model.sort) + 1) % len(columns)
        self.model.sort_by(columns[index])
        self._changed()

    def action_reverse(self) -> None:
        """Flip the sort order."""
        self.model.reverse = not self.model.reverse
        self._changed()

    def action_cancel_stream(self) -> None:
        """Ask, then cancel the stream under the cursor."""
        stream_id = self.selected_id()
        if stream_id is None:
            self.notice = "no stream selected"
            self._changed()
            return
        row = self.model.streams.get(stream_id)
        key = row.key if row is not None else "?"

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._cancel(stream_id), name="cancel", exit_on_error=False)

        self.push_screen(ConfirmCancel(stream_id, key), answered)

    # -- drawing -------------------------------------------------------------------

    def _changed(self) -> None:
        """Redraw soon, once for everything changed until then."""
        if not self._redraw_pending:
            self._redraw_pending = True
            self.call_later(self._redraw)

    def _redraw(self) -> None:
        # In place: rows added and removed, changed cells updated, then one sort by
        # the model's order (clearing and refilling the table costs more and loses
        # the cursor). Cells are Text, never markup: a key is the caller's data.
        self._redraw_pending = False
        table = self.query_one(DataTable)
        selected = self.selected_id()
        rows = self.model.rows(time.monotonic())
        shown = self._shown
        wanted = {row.id for row in rows}
        for stream_id in [stream_id for stream_id in shown if stream_id not in wanted]:
            table.remove_row(stream_id)
            del shown[stream_id]
        columns = self.model.columns
        cluster = self.model.cluster
        for row in rows:
            cells = row.cluster_cells() if cluster else row.cells()
            before = shown.get(row.id)
            if before is None:
                table.add_row(*map(Text, cells), key=row.id)
            elif before != cells:
                for column, old, new in zip(columns, before, cells, strict=True):
                    if old != new:
                        table.update_cell(row.id, column, Text(new))
            shown[row.id] = cells
        order = {row.id: index for index, row in enumerate(rows)}
        current = [row.key.value for row in table.ordered_rows]
        if current != [row.id for row in rows]:
            table.sort("id", key=lambda cell: order[str(cell)])
        if selected is not None and selected in order:
            table.move_cursor(row=order[selected], animate=False)
        self.query_one("#limits", Static).update(
            f"{self.model.limits_line()}    {len(rows)} streams, {self.model.sort_label()}"
        )
        parts = [f"feed: {self.feed_status}"]
        if self.poll_status:
            parts.append(f"poll: {self.poll_status}")
        if self.notice:
            parts.append(self.notice)
        self.query_one("#status", Static).update(self._clean("  |  ".join(parts)))
        self.redraws += 1
        self._redrawn.set()
        self._redrawn = asyncio.Event()

    def _clean(self, text: str) -> str:
        token = self.settings.token
        return text.replace(token, "<token>") if token else text

    # -- I/O -----------------------------------------------------------------------

    def _describe(self, exc: Exception) -> str:
        url = self.settings.url
        if isinstance(exc, _Unauthorized):
            return (
                f"401 unauthorized at {url}: the admin token is missing or wrong; "
                f"pass it with --token or STREAMMGR_ADMIN_TOKEN"
            )
        if isinstance(exc, _Refused):
            return str(exc)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return f"cannot reach {url} ({exc or type(exc).__name__}); is the server running?"
        if isinstance(exc, httpx.TimeoutException):
            return f"{url} did not answer in time"
        if isinstance(exc, FeedProtocolError):
            return f"{url} sent something unexpected: {exc}"
        return f"the connection to {url} failed ({type(exc).__name__}: {exc})"

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        if response.status_code == 401:
            raise _Unauthorized
        await response.aread()
        try:
            error = response.json()["error"]
            what = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            what = response.text[:200]
        raise _Refused(f"{response.status_code} from {response.url.path}: {what}")

    async def _follow_feed(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async with self._http.stream(
                    "GET", "/streams/events", timeout=_FEED_TIMEOUT
                ) as response:
                    await self._check(response)
                    parser = SSEParser()
                    async for chunk in response.aiter_bytes():
                        now = time.monotonic()
                        for event in parser.feed(chunk):
                            self.model.apply(event, now)
                            if event.event == "snapshot":
                                backoff.reset()
                                self.feed_status = "live"
                        self._changed()
                ended = self.model.ended
                problem = (
                    f"the server's manager closed ({ended})"
                    if ended is not None
                    else "the server ended the feed"
                )
            except _Unauthorized as exc:
                self.feed_status = f"{self._describe(exc)}; not retrying"
                self._changed()
                return
            except (httpx.HTTPError, _Refused, FeedProtocolError) as exc:
                problem = self._describe(exc)
            delay = backoff.next()
            self.feed_status = f"{problem}; reconnecting in {delay:.1f}s (rows may be stale)"
            self._changed()
            await asyncio.sleep(delay)

    async def _poll(self) -> None:
        while True:
            cluster = self.settings.cluster
            try:
                streams = await self._list_streams()
                response = await self._http.get("/cluster/stats" if cluster else "/stats")
                await self._check(response)
                now = time.monotonic()
                if cluster:
                    self.model.apply_cluster_listing(streams, now)
                    self.model.apply_cluster_stats(response.json())
                else:
                    self.model.apply_listing(streams, now)
                    self.model.apply_stats(response.json())
                self.poll_status = ""
            except _Unauthorized as exc:
                self.poll_status = self._describe(exc)
            except (httpx.HTTPError, _Refused, FeedProtocolError, ValueError) as exc:
                self.poll_status = self._describe(exc)
            self._changed()
            await asyncio.sleep(self.settings.refresh)

    async def _list_streams(self) -> list[object]:
        streams: list[object] = []
        params: dict[str, str | int] = {"limit": 1000}
        path = "/cluster/streams" if self.settings.cluster else "/streams"
        for _ in range(MAX_PAGES):
            response = await self._http.get(path, params=params)
            await self._check(response)
            page = response.json()
            if not isinstance(page, dict) or not isinstance(page.get("streams"), list):
                raise FeedProtocolError(f"GET {path} answered no 'streams' list")
            streams.extend(page["streams"])
            cursor = page.get("next_cursor")
            if not isinstance(cursor, str):
                break
            params["cursor"] = cursor
        return streams

    async def _cancel(self, stream_id: str) -> None:
        try:
            response = await self._http.delete(
                f"/streams/{quote(stream_id, safe='')}", params={"reason": CANCEL_REASON}
            )
            await self._check(response)
            self.notice = f"cancelled {stream_id}"
        except (httpx.HTTPError, _Unauthorized, _Refused) as exc:
            self.notice = f"could not cancel {stream_id}: {self._describe(exc)}"
        self._changed()


def run_top(settings: TopSettings) -> int:
    """Run the app in this terminal until ``q``; returns the exit code."""
    result = TopApp(settings).run()
    return 0 if result is None else result
