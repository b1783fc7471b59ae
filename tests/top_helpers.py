"""Helpers of the ``streammgr top`` tests: stream objects as the admin API sends
them, and reading and waiting on the Textual app's screen (asyncio, real time)."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable
from typing import Any

from streammgr.cli._top_app import TopApp

__all__ = ["PATIENCE", "run", "shown_text", "stream", "table_rows", "until"]

PATIENCE = 10.0


def stream(
    stream_id: str,
    *,
    key: str = "k",
    phase: str = "streaming",
    created_at: float = 100.0,
    age: float = 1.0,
    items: int = 0,
    size: int = 0,
    first_item_at: float | None = None,
) -> dict[str, Any]:
    """A stream object as the admin API sends it (the fields the model reads, and more)."""
    return {
        "id": stream_id,
        "key": key,
        "labels": {},
        "phase": phase,
        "created_at": created_at,
        "admitted_at": created_at,
        "first_item_at": first_item_at,
        "last_item_at": None,
        "closed_at": None,
        "items": items,
        "bytes": size,
        "close_reason": None,
        "detail": None,
        "error": None,
        "created_wall": 1.7e9,
        "age": age,
        "idle": None,
    }


def table_rows(app: TopApp) -> list[dict[str, str]]:
    """The table as the screen shows it: one dict per row, by column name."""
    from textual.widgets import DataTable

    table = app.query_one(DataTable)
    return [
        dict(zip(app.model.columns, map(str, table.get_row_at(index)), strict=True))
        for index in range(table.row_count)
    ]


def shown_text(app: TopApp) -> str:
    """Everything on the screen, as text: the rendered SVG screenshot's text, one
    line per SVG text element run."""
    svg = app.export_screenshot()
    return html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")


async def until(app: TopApp, pilot: Any, check: Callable[[], bool], what: str) -> None:
    """Wait, redraw by redraw, until ``check()``; fail after ``PATIENCE`` seconds."""
    try:
        async with asyncio.timeout(PATIENCE):
            while not check():
                await app.wait_redrawn()
                await pilot.pause()
    except TimeoutError:
        status = app.query_one("#status").render()
        raise AssertionError(
            f"waited {PATIENCE}s for {what}; the table: {table_rows(app)}; status: {status}"
        ) from None


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())
