"""The inspection API's OpenAPI document, checked by schemathesis against a live server.

The admin app runs under :func:`streammgr.server.serve` (hypercorn's trio worker) on
127.0.0.1, in a thread of its own running ``trio.run``: schemathesis's in-process
ASGI mode runs an app on asyncio, which a Trio app cannot use. The server has a
token, so every case also goes through authentication, and streams in flight
(held-open producers, one of them waiting for a slot), so the stream endpoints
have data.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import pytest
import requests
import trio

import streammgr
from streammgr import StreamManager
from streammgr.server import admin_app, serve

from .server_helpers import PATIENCE, quiet_hypercorn

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

TOKEN = "schema-token-Vw42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = {"max_streams": 3, "max_streams_per_key": 2, "max_waiting": 10}
HELD = [("tenant-alpha", {"model": "m1"}), ("tenant-alpha", {"model": "m2"})]
HELD += [("tenant/beta", {"model": "m1", "tier": "free"}), ("tenant-gamma", {})]
FEED = "/admin/streams/events"


async def forever() -> AsyncIterator[str]:
    await trio.sleep_forever()
    yield "never"


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
        self._thread = threading.Thread(target=self._run, name="live-admin", daemon=True)

    def __enter__(self) -> LiveAdmin:
        self._thread.start()
        if not self._ready.wait(PATIENCE) or not self.url:
            raise AssertionError(f"the admin server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None and self._stop is not None
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
        async with StreamManager(**LIMITS) as manager, trio.open_nursery() as nursery:
            app = admin_app(manager, token=TOKEN, max_watchers=2)
            for key, labels in HELD:
                nursery.start_soon(self._hold, manager, key, labels)
            with trio.fail_after(PATIENCE):
                async with manager.watch() as events:
                    async for _ in events:
                        if len(manager.streams()) == len(HELD):
                            break
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

    @staticmethod
    async def _hold(manager: StreamManager, key: str, labels: dict[str, str]) -> None:
        while True:
            with contextlib.suppress(streammgr.StreamError):
                async with manager.open(forever, key=key, labels=labels) as stream:
                    async for _ in stream:
                        pass


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
        "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}},
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
@hypothesis.settings(max_examples=20, derandomize=True, deadline=None)
def test_every_operation_conforms(case: Any, live: LiveAdmin) -> None:
    case.call_and_validate(base_url=live.url, timeout=PATIENCE)
    if case.method == "PUT" and case.path == "/admin/limits":
        reset = requests.put(f"{live.url}/admin/limits", json=LIMITS, headers=AUTH, timeout=PATIENCE)
        assert reset.status_code == 200, reset.text
