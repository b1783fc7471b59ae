"""The inspection API's OpenAPI document, checked by schemathesis against a live server.

The admin app runs under :func:`streammgr.server.serve` (hypercorn's trio worker) on
127.0.0.1, in a thread of its own running ``trio.run``: schemathesis's in-process
ASGI mode runs an app on asyncio, which a Trio app cannot use. The server has a
token, so every case also goes through authentication, and streams in flight
(held-open producers, one of them waiting for a slot), so the stream endpoints
have data.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.core.failures
import trio
from hypothesis import settings

import streammgr
from streammgr import StreamManager
from streammgr.server import admin_app, serve

from .server_helpers import PATIENCE, quiet_hypercorn

TOKEN = "schema-token-Vw42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = {"max_streams": 3, "max_streams_per_key": 2, "max_waiting": 10}
HELD = [("tenant-alpha", {"model": "m1"}), ("tenant-alpha", {"model": "m2"})]
HELD += [("tenant/beta", {"model": "m1", "tier": "free"}), ("tenant-gamma", {})]
FEED = "/admin/streams/events"


async def forever() -> AsyncIterator[str]:
    await trio.sleep_forever()
    yield "never"


class FeedCounter:
    """ASGI middleware: how many events-feed requests the app is serving now (a
    feed gives its slot back before its request returns)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.open = 0
        self.changed = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != FEED:
            await self.app(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.changed.set()
            self.changed = trio.Event()


class LiveAdmin:
    """``admin_app`` served on 127.0.0.1 in a thread running ``trio.run``.

    Four held-open streams (three admitted, one waiting: ``max_streams=3``); each
    holder opens its stream again when a case cancels it, so that cases never
    leave the next ones without data.
    """

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._manager = StreamManager()
        self._nursery: trio.Nursery | None = None
        self._feeds = FeedCounter(None)
        self._thread = threading.Thread(target=self._run, name="live-admin", daemon=True)

    def __enter__(self) -> LiveAdmin:
        self._thread.start()
        if not self._ready.wait(PATIENCE) or not self.url:
            raise AssertionError(f"the admin server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(PATIENCE)
        assert not self._thread.is_alive(), "the admin server did not stop"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with (
            StreamManager(
                max_streams=LIMITS["max_streams"],
                max_streams_per_key=LIMITS["max_streams_per_key"],
                max_waiting=LIMITS["max_waiting"],
            ) as manager,
            trio.open_nursery() as nursery,
        ):
            self._manager, self._nursery = manager, nursery
            self._feeds = app = FeedCounter(admin_app(manager, token=TOKEN, max_watchers=2))
            for key, labels in HELD:
                nursery.start_soon(self._hold, manager, key, labels)
            await self._all_held()
            (self.url,) = await nursery.start(
                partial(
                    serve,
                    app,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=self._stop.wait,
                    config=quiet_hypercorn(),
                )
            )
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _until(self, condition: Callable[[StreamManager], bool]) -> None:
        manager = self._manager
        with trio.fail_after(PATIENCE):
            async with manager.watch() as events:
                if condition(manager):
                    return
                async for _ in events:
                    if condition(manager):
                        return

    async def _all_held(self) -> None:
        await self._until(lambda manager: len(manager.streams()) == len(HELD))

    def until(self, condition: Callable[[StreamManager], bool]) -> None:
        """Wait (bounded) until ``condition(manager)``, checked at every change."""
        assert self._token is not None
        trio.from_thread.run(self._until, condition, trio_token=self._token)

    def feeds_closed(self) -> None:
        """Wait until the server has ended every events feed a client closed."""

        async def closed() -> None:
            with trio.fail_after(PATIENCE):
                while self._feeds.open:
                    await self._feeds.changed.wait()

        assert self._token is not None
        trio.from_thread.run(closed, trio_token=self._token)

    def shut_down_manager(self) -> None:
        """Start the manager's shutdown (with a long grace: it stays closing)."""
        assert self._token is not None
        assert self._nursery is not None
        manager, nursery = self._manager, self._nursery

        async def start() -> None:
            nursery.start_soon(partial(manager.aclose, grace=60))
            with trio.fail_after(PATIENCE):
                while not manager.stats().closing:  # it closes at its first step
                    await trio.lowlevel.checkpoint()

        trio.from_thread.run(start, trio_token=self._token)

    @staticmethod
    async def _hold(manager: StreamManager, key: str, labels: dict[str, str]) -> None:
        while True:
            try:
                async with manager.open(forever, key=key, labels=labels) as stream:
                    async for _ in stream:
                        pass
            except streammgr.ManagerClosed:
                return
            except streammgr.StreamError:
                continue  # cancelled by a case: open it again


@pytest.fixture(scope="module")
def live() -> Iterator[LiveAdmin]:
    with LiveAdmin() as server:
        yield server


# The document is built without I/O at collection (schemathesis parametrizes then);
# test_the_live_server_serves_this_document proves the live server serves the same.
DOCUMENT = admin_app(StreamManager(), token=TOKEN).openapi()
# A 400 is this API's answer to schema-valid input it refuses on its meaning (a cursor
# it never gave, limits a custom limiter refuses): accepted for schema-valid cases.
POSITIVE_STATUSES = ["2xx", "400", "401", "404", "409", "429", "503"]
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        # Schemathesis sends the token itself, and leaves it out (or spoils it) in the
        # cases that must be refused with a 401.
        "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
        "checks": {
            "positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES},
            # The 503 while shutting down is an answer the document declares, not a crash.
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path=FEED, method="GET")


@schema.hook
def map_case(context: Any, case: Any) -> Any:
    """A cancel's reason comes as ?reason= or in the body, never both (a 422 that
    OpenAPI cannot express across two locations; test_server_admin.py tests it)."""
    body = case.body
    if isinstance(body, dict) and "reason" in body and isinstance(case.query, dict):
        case.query.pop("reason", None)
    return case


@schema.parametrize()
@settings(max_examples=20, derandomize=True, deadline=None, database=None)
def test_every_operation_conforms(case: Any, live: LiveAdmin) -> None:
    case.call_and_validate(base_url=live.url, timeout=PATIENCE)
    if case.method == "PUT" and case.path == "/admin/limits":
        reset = httpx.put(f"{live.url}/admin/limits", json=LIMITS, headers=AUTH, timeout=PATIENCE)
        assert reset.status_code == 200, reset.text


def operation(path: str, method: str) -> Any:
    """An operation for explicit cases (they do not get the configured token: pass
    ``headers=AUTH``)."""
    return schema[path][method]


def get_json(live: LiveAdmin, path: str, **params: Any) -> Any:
    response = httpx.get(f"{live.url}{path}", params=params, headers=AUTH, timeout=PATIENCE)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_live_server_serves_this_document(live: LiveAdmin) -> None:
    assert get_json(live, "/admin/openapi.json") == DOCUMENT


def test_streams_in_flight_conform(live: LiveAdmin) -> None:
    """The cases above rarely name a real stream: these do, with every check."""
    live.until(lambda manager: len(manager.streams()) == len(HELD))
    closed_before = get_json(live, "/admin/history")["total"]
    listed = get_json(live, "/admin/streams")
    assert listed["total"] == len(HELD)
    page = operation("/admin/streams", "GET").Case(query={"limit": 1, "label": ["model:m1"]})
    first = page.call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE).json()
    assert first["total"] == 2
    assert first["next_cursor"] is not None
    after = operation("/admin/streams", "GET").Case(query={"cursor": first["next_cursor"]})
    after.call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE)

    stream_id = listed["streams"][0]["id"]
    one = operation("/admin/streams/{stream_id}", "GET")
    cancel = operation("/admin/streams/{stream_id}", "DELETE")
    found = one.Case(path_parameters={"stream_id": stream_id})
    assert (
        found.call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE).status_code
        == 200
    )
    cancelled = cancel.Case(path_parameters={"stream_id": stream_id}, query={"reason": "céé ✓"})
    assert (
        cancelled.call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE).status_code
        == 200
    )
    # Closed now (its holder opens another): in the history, and a 409 to cancel again.
    closed = one.Case(path_parameters={"stream_id": stream_id})
    closed_stream = closed.call_and_validate(
        base_url=live.url, headers=AUTH, timeout=PATIENCE
    ).json()
    assert closed_stream["phase"] in {"closing", "closed"}
    again = cancel.Case(path_parameters={"stream_id": stream_id}, body={"reason": "again"})
    assert (
        again.call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE).status_code
        == 409
    )

    by_key = operation("/admin/keys/{key}/streams", "DELETE")
    slash = by_key.Case(path_parameters={"key": "tenant/beta"})
    assert slash.call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE).json() == {
        "key": "tenant/beta",
        "cancelled": 1,
    }
    live.until(lambda manager: len(manager.history()) >= closed_before + 2)
    history = operation("/admin/history", "GET").Case(query={"reason": ["cancelled"]})
    assert (
        history.call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE).json()["total"]
        >= 2
    )
    for path in ("/admin/stats", "/admin/metrics", "/admin/healthz", "/admin/limits"):
        operation(path, "GET").Case().call_and_validate(
            base_url=live.url, headers=AUTH, timeout=PATIENCE
        )


def test_events_feed_conforms_with_a_bounded_read(live: LiveAdmin) -> None:
    """The feed never ends: schemathesis reads a stream for at most ``timeout``
    seconds of silence (or 20 events), then judges what came, with every check."""
    feed = operation(FEED, "GET")
    response = feed.Case().call_and_validate(base_url=live.url, headers=AUTH, timeout=1.0)
    assert response.status_code == 200
    assert response.headers["content-type"][0].startswith("text/event-stream")
    assert response.content.startswith(b"event: snapshot\n")
    live.feeds_closed()  # schemathesis closed it: its slot is free again
    # max_watchers=2: with two feeds open, the third is a 429 with Retry-After.
    url = f"{live.url}{FEED}"
    with (
        httpx.stream("GET", url, headers=AUTH, timeout=PATIENCE) as first,
        httpx.stream("GET", url, headers=AUTH, timeout=PATIENCE) as second,
    ):
        assert (first.status_code, second.status_code) == (200, 200)
        refused = feed.Case().call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"][0]) > 0
    live.feeds_closed()


def test_shutting_down_conforms() -> None:
    """While the manager shuts down: the 503s of the health check and the feed."""
    with LiveAdmin() as server:
        server.shut_down_manager()
        for path in ("/admin/healthz", FEED):
            case = operation(path, "GET").Case()
            response = case.call_and_validate(base_url=server.url, headers=AUTH, timeout=PATIENCE)
            assert response.status_code == 503, path
            assert int(response.headers["retry-after"][0]) > 0


def broken(document: dict[str, Any], path: str, status: str, content: dict[str, Any]) -> Any:
    """A copy of the document with one response declared wrong."""
    copied = copy.deepcopy(document)
    copied["paths"][path]["get"]["responses"][status]["content"] = content
    return schemathesis.openapi.from_dict(copied, config=CONFIG)


def test_the_checks_catch_a_wrong_document(live: LiveAdmin) -> None:
    """The checks can fail: a wrong body schema, a wrong content type, a header
    declared but not sent are each caught against the same live server."""
    wrong_schema = {"application/json": {"schema": {"type": "array"}}}
    with pytest.raises(schemathesis.core.failures.FailureGroup, match="Response violates schema"):
        case = broken(DOCUMENT, "/admin/limits", "200", wrong_schema)["/admin/limits"]["GET"]
        case.Case().call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE)
    wrong_type = {"application/json": {"schema": {"type": "string"}}}
    with pytest.raises(schemathesis.core.failures.FailureGroup, match="Undocumented Content-Type"):
        case = broken(DOCUMENT, "/admin/metrics", "200", wrong_type)["/admin/metrics"]["GET"]
        case.Case().call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE)
    feed_events = DOCUMENT["paths"][FEED]["get"]["responses"]["200"]["content"]
    no_snapshot = copy.deepcopy(feed_events)
    no_snapshot["text/event-stream"]["schema"]["oneOf"].pop(0)
    with pytest.raises(schemathesis.core.failures.FailureGroup, match="SSE event violates"):
        case = broken(DOCUMENT, FEED, "200", no_snapshot)[FEED]["GET"]
        case.Case().call_and_validate(base_url=live.url, headers=AUTH, timeout=1.0)
    copied = copy.deepcopy(DOCUMENT)
    declared = copied["paths"]["/admin/stats"]["get"]["responses"]["200"]
    declared["headers"] = {"X-Missing": {"required": True, "schema": {"type": "string"}}}
    missing = schemathesis.openapi.from_dict(copied, config=CONFIG)["/admin/stats"]["GET"]
    with pytest.raises(
        schemathesis.core.failures.FailureGroup, match="Missing required response headers"
    ):
        missing.Case().call_and_validate(base_url=live.url, headers=AUTH, timeout=PATIENCE)
