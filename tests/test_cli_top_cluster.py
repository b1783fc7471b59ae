"""``streammgr top --cluster``: every instance's streams with an instance column.

The sans-IO model fed cluster listings and stats, and the Textual app against an
``httpx.MockTransport`` answering ``GET /admin/cluster/streams`` and
``GET /admin/cluster/stats`` as a cluster-mode server does (no events feed).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from streammgr.cli import main
from streammgr.cli._top import CLUSTER_COLUMNS, FeedProtocolError, TopModel
from streammgr.cli._top_app import CANCEL_REASON, ConfirmCancel, TopApp, TopSettings

from .top_helpers import run, shown_text, stream, table_rows, until

TOKEN = "s3cret-admin-token-for-top-cluster"


def on(instance: str, stream_id: str, **fields: Any) -> dict[str, Any]:
    return {**stream(stream_id, **fields), "instance": instance}


STATS = {
    "active": 3,
    "waiting": 1,
    "streams": 4,
    "instances": [
        {"instance": "gw-1", "active": 2, "waiting": 1, "max_streams": 10, "closing": False},
        {"instance": "gw-2", "active": 1, "waiting": 0, "max_streams": 10, "closing": True},
    ],
}


def test_the_cluster_listing_says_which_streams_exist_on_which_instance() -> None:
    model = TopModel("instance", cluster=True)
    assert model.columns == CLUSTER_COLUMNS
    assert CLUSTER_COLUMNS[0] == "instance"
    model.apply_cluster_listing(
        [on("gw-2", "b-1", created_at=5.0, items=10), on("gw-1", "a-1", created_at=1.0)], 0.0
    )
    assert [(row.instance, row.id) for row in model.rows(0.0)] == [("gw-1", "a-1"), ("gw-2", "b-1")]
    assert model.rows(0.0)[0].cluster_cells()[:2] == ("gw-1", "a-1")
    # The next listing replaces membership: b-1 closed; the rate comes from two samples.
    model.apply_cluster_listing([on("gw-1", "a-1", created_at=1.0, age=3.0, items=20)], 1.0)
    (row,) = model.rows(1.0)
    assert (row.id, row.rate) == ("a-1", 10.0)
    with pytest.raises(FeedProtocolError):
        model.apply_cluster_listing([{"id": 1}], 2.0)
    with pytest.raises(FeedProtocolError):
        model.apply_cluster_stats({"active": 1})
    with pytest.raises(ValueError, match="instance"):
        TopModel("instance")  # not a column without --cluster


def test_the_cluster_limits_line() -> None:
    model = TopModel(cluster=True)
    model.apply_cluster_stats(STATS)
    line = model.limits_line()
    assert line.startswith("cluster 2 instances  active 3/10  waiting 1")
    assert "gw-1 2 (+1 waiting)" in line
    assert "gw-2 1 CLOSING" in line


def test_the_cluster_flag_is_named_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--help"]) == 0
    assert "--cluster" in capsys.readouterr().out


def test_top_cluster_polls_every_instances_streams_and_cancels_through_any() -> None:
    listed = [on("gw-2", "b-1", key="tenant-b", created_at=2.0), on("gw-1", "a-1", key="tenant-a")]
    asked: list[str] = []
    cancelled: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        path = request.url.path
        asked.append(path)
        if request.method == "DELETE":
            cancelled.append((path, request.url.params.get("reason")))
            return httpx.Response(200, json={"cancelled": True, "stream": listed[0]})
        if path == "/admin/cluster/streams":
            return httpx.Response(200, json={"streams": listed, "total": 2, "next_cursor": None})
        assert path == "/admin/cluster/stats"
        return httpx.Response(200, json=STATS)

    async def scenario() -> None:
        settings = TopSettings(
            url="http://admin.test/admin", token=TOKEN, refresh=0.1, cluster=True, sort="instance"
        )
        app = TopApp(settings, transport=httpx.MockTransport(answer))
        async with app.run_test(size=(160, 30)) as pilot:
            await until(app, pilot, lambda: len(table_rows(app)) == 2, "two rows")
            rows = table_rows(app)
            assert [(row["instance"], row["id"]) for row in rows] == [
                ("gw-1", "a-1"),
                ("gw-2", "b-1"),
            ]
            await until(app, pilot, lambda: "cluster 2 instances" in shown_text(app), "stats")
            assert "cluster: every instance" in app.feed_status
            assert "/admin/streams/events" not in asked  # no feed in cluster mode
            await pilot.press("down", "c")
            assert isinstance(app.screen, ConfirmCancel)
            await pilot.press("y")
            await until(app, pilot, lambda: bool(cancelled), "the cancel")
            assert cancelled == [("/admin/streams/b-1", CANCEL_REASON)]
            await pilot.press("q")

    run(scenario)
