"""The inspection API (admin_app) served by serve() on 127.0.0.1 over a real manager.

Real time over loopback: every wait is on a registry change, a received byte or
all tasks being blocked, bounded by ``fail_after``; producers are in-test.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount
from structlog.testing import capture_logs

import streammgr
from streammgr import CloseReason, FairLimiter, StreamManager
from streammgr.server import admin_app, check_exposure, manager_lifespan
from streammgr.sse import SSEParser

from .admin_helpers import error_of
from .server_helpers import PATIENCE, RawResponse, Server

TOKEN = "admin-token-Zq81"


async def forever() -> AsyncIterator[str]:
    await trio.sleep_forever()
    yield "never"


async def words(count: int) -> AsyncIterator[str]:
    for index in range(count):
        await trio.lowlevel.checkpoint()
        yield f"word{index}"


async def until(manager: StreamManager, condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()``, re-checking at every registry change."""
    with trio.fail_after(PATIENCE):
        async with manager.watch() as events:
            if condition():
                return
            async for _ in events:
                if condition():
                    return
    raise AssertionError("the manager closed first")


async def quiesce() -> None:
    """Let every task (the metrics feed, the server) take what is ready for it."""
    with trio.fail_after(PATIENCE):
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)


async def serve_admin(nursery: trio.Nursery, manager: StreamManager, **options: Any) -> Server:
    return await Server().start(nursery, admin_app(manager, **options))


def client(server: Server, token: str | None = None) -> httpx.AsyncClient:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=PATIENCE)


async def queued(manager: StreamManager, key: str = "default") -> None:
    """A reader whose stream waits for a slot (until cancelled or shut down)."""
    with contextlib.suppress(streammgr.StreamError):
        async with manager.open(forever, key=key) as stream:
            async for _ in stream:
                pass


# -- listing, filters, pagination ------------------------------------------------------


async def test_list_streams_with_filters(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=3) as manager, contextlib.AsyncExitStack() as stack:
        server = await serve_admin(nursery, manager)
        a1 = await stack.enter_async_context(
            manager.open(forever, key="a", labels={"model": "m1", "tier": "free"})
        )
        a2 = await stack.enter_async_context(manager.open(forever, key="a", labels={"model": "m2"}))
        b1 = await stack.enter_async_context(manager.open(forever, key="b", labels={"model": "m1"}))
        nursery.start_soon(queued, manager, "b")
        await until(manager, lambda: manager.stats().waiting == 1)
        async with client(server) as http:
            everything = (await http.get("/admin/streams")).json()
            assert everything["total"] == 4
            assert everything["next_cursor"] is None
            ids = [stream["id"] for stream in everything["streams"]]
            assert ids[:3] == [a1.id, a2.id, b1.id]  # creation order
            first = everything["streams"][0]
            assert first["labels"] == {"model": "m1", "tier": "free"}
            assert first["phase"] == "connecting"
            assert first["age"] >= 0
            assert first["close_reason"] is None

            async def ids_of(**params: Any) -> list[str]:
                response = await http.get("/admin/streams", params=params)
                assert response.status_code == 200, response.text
                return [stream["id"] for stream in response.json()["streams"]]

            assert await ids_of(key="a") == [a1.id, a2.id]
            assert await ids_of(label="model:m1") == [a1.id, b1.id]
            assert await ids_of(label=["model:m1", "tier:free"]) == [a1.id]
            assert await ids_of(label="model:nope") == []
            assert await ids_of(phase="waiting") == [ids[3]]
            assert await ids_of(phase=["waiting", "connecting"]) == ids
            assert await ids_of(key="b", phase="connecting") == [b1.id]

            assert error_of(await http.get("/admin/streams", params={"label": "model"})) == (
                422,
                "validation_error",
            )
            bad_phase = await http.get("/admin/streams", params={"phase": "sleeping"})
            assert error_of(bad_phase) == (422, "validation_error")
            assert bad_phase.json()["error"]["details"][0]["loc"] == ["query", "phase", 0]
            too_big = await http.get("/admin/streams", params={"limit": 5000})
            assert error_of(too_big) == (422, "validation_error")
            assert "query limit" in too_big.json()["error"]["message"]
        manager.cancel_key("b")


async def test_pagination_with_a_cursor_survives_closes(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager, contextlib.AsyncExitStack() as stack:
        server = await serve_admin(nursery, manager)
        streams = [
            await stack.enter_async_context(manager.open(forever, key=f"k{index}"))
            for index in range(5)
        ]
        async with client(server) as http:
            page = (await http.get("/admin/streams", params={"limit": 2})).json()
            assert [stream["id"] for stream in page["streams"]] == [s.id for s in streams[:2]]
            assert page["total"] == 5
            cursor = page["next_cursor"]
            assert cursor
            # The stream the cursor points at closes before the next page is asked for.
            manager.cancel(streams[1].id)
            with pytest.raises(streammgr.StreamCancelled):
                async for _ in streams[1]:
                    pass
            await until(manager, lambda: len(manager.streams()) == 4)
            seen = []
            while cursor is not None:
                response = await http.get("/admin/streams", params={"limit": 2, "cursor": cursor})
                assert response.status_code == 200, response.text
                page = response.json()
                seen += [stream["id"] for stream in page["streams"]]
                cursor = page["next_cursor"]
            assert seen == [s.id for s in streams[2:]]  # nothing skipped, nothing twice

            bad = await http.get("/admin/streams", params={"cursor": "not-a-cursor"})
            assert error_of(bad) == (400, "invalid_cursor")
            assert "leave cursor out" in bad.json()["error"]["message"]


# -- one stream, cancelling ------------------------------------------------------------


async def test_get_one_stream_active_then_closed(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            async with manager.open(words, 3, key="k", labels={"model": "m"}) as stream:
                response = await http.get(f"/admin/streams/{stream.id}")
                assert response.status_code == 200
                assert response.json()["key"] == "k"
                assert [item async for item in stream] == ["word0", "word1", "word2"]
            done = (await http.get(f"/admin/streams/{stream.id}")).json()
            assert done["phase"] == "closed"
            assert (done["close_reason"], done["items"], done["bytes"]) == ("completed", 3, 15)
            assert done["idle"] is None
            missing = await http.get("/admin/streams/nope-1")
            assert error_of(missing) == (404, "stream_not_found")
            assert "GET /admin/history" in missing.json()["error"]["message"]
            unknown = await http.get("/admin/nothing-here")
            assert error_of(unknown) == (404, "not_found")
            wrong_method = await http.post("/admin/stats")
            assert error_of(wrong_method) == (405, "method_not_allowed")


async def test_cancel_a_stream_reader_gets_stream_cancelled(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager, token=TOKEN)
        async with client(server, TOKEN) as http:
            async with manager.open(forever, key="k") as stream:
                response = await http.delete(
                    f"/admin/streams/{stream.id}", params={"reason": "runaway prompt"}
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["cancelled"] is True
                assert body["stream"]["phase"] in {"closing", "closed"}
                assert body["stream"]["detail"] == "runaway prompt"
                with pytest.raises(streammgr.StreamCancelled) as caught:
                    async for _ in stream:
                        pass
                assert caught.value.reason == "runaway prompt"
                assert caught.value.close_reason is CloseReason.CANCELLED
            closed = (await http.get(f"/admin/streams/{stream.id}")).json()
            assert (closed["phase"], closed["close_reason"]) == ("closed", "cancelled")
            again = await http.delete(f"/admin/streams/{stream.id}")
            assert error_of(again) == (409, "stream_closed")
            missing = await http.delete("/admin/streams/nope-1")
            assert error_of(missing) == (404, "stream_not_found")

            async with manager.open(forever) as second:
                by_body = await http.request(
                    "DELETE", f"/admin/streams/{second.id}", json={"reason": "from the body"}
                )
                assert by_body.status_code == 200
                with pytest.raises(streammgr.StreamCancelled, match="from the body"):
                    async for _ in second:
                        pass
            async with manager.open(forever) as third:
                both = await http.request(
                    "DELETE",
                    f"/admin/streams/{third.id}",
                    params={"reason": "a"},
                    json={"reason": "b"},
                )
                assert error_of(both) == (422, "validation_error")
                typo = await http.request(
                    "DELETE", f"/admin/streams/{third.id}", json={"reasn": "typo"}
                )
                assert error_of(typo) == (422, "validation_error")
                long = await http.delete(f"/admin/streams/{third.id}", params={"reason": "x" * 501})
                assert error_of(long) == (422, "validation_error")
                # The token, pasted where it should not be, is not shown back.
                leaked = await http.delete(
                    f"/admin/streams/{third.id}", params={"reason": f"oops {TOKEN}"}
                )
                assert TOKEN not in leaked.text
                assert leaked.json()["stream"]["detail"] == "oops [REDACTED]"
                with pytest.raises(streammgr.StreamCancelled):
                    async for _ in third:
                        pass
            listed = await http.get("/admin/history")
            assert TOKEN not in listed.text


async def test_cancel_a_stream_that_is_ending_is_a_409(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def slow_cleanup() -> AsyncIterator[str]:
        try:
            await trio.sleep_forever()
            yield "never"
        finally:
            with trio.CancelScope(shield=True):
                await release.wait()

    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http, manager.open(slow_cleanup) as stream:
            first = await http.delete(f"/admin/streams/{stream.id}")
            assert first.json()["stream"]["phase"] == "closing"  # its cleanup runs
            ending = await http.delete(f"/admin/streams/{stream.id}")
            assert error_of(ending) == (409, "stream_ending")
            assert "close by itself" in ending.json()["error"]["message"]
            release.set()
            with pytest.raises(streammgr.StreamCancelled):
                async for _ in stream:
                    pass


async def test_cancel_every_stream_of_a_key(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=3) as manager, contextlib.AsyncExitStack() as stack:
        server = await serve_admin(nursery, manager)
        tenant = [
            await stack.enter_async_context(manager.open(forever, key="tenant/a")) for _ in range(2)
        ]
        other = await stack.enter_async_context(manager.open(forever, key="tenant-b"))
        nursery.start_soon(queued, manager, "tenant/a")  # waiting for a slot: cancelled too
        await until(manager, lambda: manager.stats().waiting == 1)
        async with client(server) as http:
            response = await http.delete(
                "/admin/keys/tenant/a/streams", params={"reason": "over budget"}
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"key": "tenant/a", "cancelled": 3}
            for stream in tenant:
                with pytest.raises(streammgr.StreamCancelled, match="over budget"):
                    async for _ in stream:
                        pass
            await until(manager, lambda: manager.stats().closed_total == 3)
            assert [info.id for info in manager.streams()] == [other.id]
            none = await http.delete("/admin/keys/nobody/streams")
            assert none.json() == {"key": "nobody", "cancelled": 0}


# -- history, stats, limits, health ------------------------------------------------------


async def test_history_newest_first_with_partial_accounting(nursery: trio.Nursery) -> None:
    async def fails_after_two() -> AsyncIterator[str]:
        yield "ab"
        yield "cd"
        raise RuntimeError("upstream said api_key=sk-abcdefghijklmnop is invalid")

    async with StreamManager(secrets=["hunter2"]) as manager:
        server = await serve_admin(nursery, manager)
        async with manager.open(words, 2, key="a") as done:
            async for _ in done:
                pass
        async with manager.open(fails_after_two, key="b") as failed:
            with pytest.raises(RuntimeError):
                async for _ in failed:
                    pass
        async with manager.open(words, 10, key="a") as cut:
            async for _ in cut:
                break  # reader_exit after one item
        async with client(server) as http:
            history = (await http.get("/admin/history")).json()
            assert history["total"] == 3
            assert [s["id"] for s in history["streams"]] == [cut.id, failed.id, done.id]
            cut_info, failed_info, done_info = history["streams"]
            assert (done_info["close_reason"], done_info["items"]) == ("completed", 2)
            assert (cut_info["close_reason"], cut_info["items"], cut_info["bytes"]) == (
                "reader_exit",
                1,
                5,
            )
            assert failed_info["close_reason"] == "producer_error"
            assert (failed_info["items"], failed_info["bytes"]) == (2, 4)
            assert failed_info["error"].startswith("RuntimeError: ")
            assert "sk-abcdefghijklmnop" not in json.dumps(history)

            by_key = (await http.get("/admin/history", params={"key": "a"})).json()
            assert [s["id"] for s in by_key["streams"]] == [cut.id, done.id]
            by_reason = await http.get(
                "/admin/history", params={"reason": ["completed", "producer_error"]}
            )
            assert [s["id"] for s in by_reason.json()["streams"]] == [failed.id, done.id]
            one = (await http.get("/admin/history", params={"limit": 1})).json()
            assert ([s["id"] for s in one["streams"]], one["total"]) == ([cut.id], 3)
            bad = await http.get("/admin/history", params={"reason": "bored"})
            assert error_of(bad) == (422, "validation_error")


async def test_stats_and_limits_at_runtime(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=1, max_streams_per_key=1) as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http, manager.open(forever, key="a"):
            nursery.start_soon(queued, manager, "b")
            await until(manager, lambda: manager.stats().waiting == 1)
            stats = (await http.get("/admin/stats")).json()
            assert (stats["active"], stats["waiting"], stats["opened_total"]) == (1, 1, 2)
            assert stats["active_by_key"] == {"a": 1}
            assert stats["waiting_by_key"] == {"b": 1}
            assert stats["closed_by_reason"]["completed"] == 0
            assert stats["closing"] is False
            limits = (await http.get("/admin/limits")).json()
            assert limits == {"max_streams": 1, "max_streams_per_key": 1, "max_waiting": None}

            raised = await http.put("/admin/limits", json={"max_streams": 2})
            assert raised.status_code == 200, raised.text
            # Only what was given changed; the waiter was admitted at once.
            assert raised.json() == {
                "max_streams": 2,
                "max_streams_per_key": 1,
                "max_waiting": None,
            }
            await until(manager, lambda: manager.stats().active == 2)
            removed = await http.put("/admin/limits", json={"max_streams_per_key": None})
            assert removed.json()["max_streams_per_key"] is None
            assert manager.stats().max_streams_per_key is None

            bodies: list[object] = [
                {"max_streams": 0},
                {"max_streams": -1},
                {"max_streams": "5"},
                {"max_streams": True},
                {"max_streams": 1.5},
                {"max_waiting": -1},
                {"max_stream": 3},
                [],
            ]
            for body in bodies:
                response = await http.put("/admin/limits", json=body)
                assert error_of(response) == (422, "validation_error"), body
            zero = await http.put("/admin/limits", json={"max_streams": 0})
            assert "body max_streams" in zero.json()["error"]["message"]
            assert "input" not in zero.json()["error"]["details"][0]  # values are not echoed
            broken = await http.put(
                "/admin/limits", content=b"{not json", headers={"content-type": "application/json"}
            )
            assert error_of(broken) == (422, "validation_error")
            assert manager.stats().max_streams == 2  # nothing changed
        manager.cancel_key("b")


class CappedLimiter(FairLimiter):
    """A limiter that refuses limits above 10, as a remote one might."""

    def resize(self, **limits: Any) -> None:
        if isinstance(limits.get("max_streams"), int) and limits["max_streams"] > 10:
            raise ValueError("max_streams may be at most 10 on this limiter")
        super().resize(**limits)


async def test_limits_refused_by_the_limiter_are_a_400(nursery: trio.Nursery) -> None:
    async with StreamManager(limiter=CappedLimiter(5)) as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            response = await http.put("/admin/limits", json={"max_streams": 50})
            assert error_of(response) == (400, "invalid_limits")
            assert "at most 10" in response.json()["error"]["message"]
            assert manager.stats().max_streams == 5


async def test_healthz_and_the_feed_answer_503_while_shutting_down(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            health = await http.get("/admin/healthz")
            assert health.status_code == 200
            assert health.json() == {
                "status": "ok",
                "active": 0,
                "waiting": 0,
                "limiter_degraded": False,
                "limiter_detail": None,
                "leases_lost": 0,
            }
            async with manager.open(forever) as stream:
                closing = trio.Event()

                async def close() -> None:
                    closing.set()
                    await manager.aclose(grace=PATIENCE)

                nursery.start_soon(close)
                await closing.wait()
                assert manager.stats().closing
                for path in ("/admin/healthz", "/admin/streams/events"):
                    response = await http.get(path)
                    assert error_of(response) == (503, "shutting_down"), path
                    assert int(response.headers["retry-after"]) > 0
                manager.cancel(stream.id)
                with pytest.raises(streammgr.StreamCancelled):
                    async for _ in stream:
                        pass


# -- metrics ---------------------------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(found: dict[str, Any], name: str, **labels: str) -> float:
    for family in found.values():
        for each in family.samples:
            if each.name == name and each.labels == labels:
                return float(each.value)
    raise AssertionError(f"no sample {name} {labels}")


async def scrape(http: httpx.AsyncClient) -> dict[str, Any]:
    await quiesce()
    response = await http.get("/admin/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return families(response.text)


async def test_metrics_from_the_manager_and_the_feed(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=1, max_waiting=1) as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            async with manager.open(words, 4, key="a") as stream:
                async for _ in stream:
                    pass
            async with manager.open(forever, key="a") as held:
                nursery.start_soon(queued, manager, "b")
                await until(manager, lambda: manager.stats().waiting == 1)
                with pytest.raises(streammgr.StreamLimitExceeded):
                    async with manager.open(forever, key="c"):
                        pass
                found = await scrape(http)
                assert sample(found, "streammgr_num_requests_running") == 1
                assert sample(found, "streammgr_num_requests_waiting") == 1
                assert sample(found, "streammgr_streams", phase="waiting") == 1
                assert sample(found, "streammgr_streams", phase="connecting") == 1
                assert sample(found, "streammgr_requests_opened_total") == 4
                assert sample(found, "streammgr_requests_admitted_total") == 2
                assert sample(found, "streammgr_requests_rejected_total") == 1
                assert sample(found, "streammgr_requests_closed_total", reason="completed") == 1
                assert sample(found, "streammgr_requests_closed_total", reason="rejected") == 1
                assert sample(found, "streammgr_max_streams") == 1
                assert sample(found, "streammgr_max_streams_per_key") == float("inf")
                assert sample(found, "streammgr_max_waiting") == 1
                assert sample(found, "streammgr_manager_closing") == 0
                # The histograms: two closed streams (completed, rejected).
                assert sample(found, "streammgr_e2e_request_latency_seconds_count") == 2
                assert sample(found, "streammgr_request_queue_time_seconds_count") == 1
                assert sample(found, "streammgr_time_to_first_token_seconds_count") == 1
                assert sample(found, "streammgr_delivered_items_total") == 4
                assert sample(found, "streammgr_delivered_bytes_total") == 20
                assert sample(found, "streammgr_metrics_feed_up") == 1
                assert sample(found, "streammgr_metrics_feed_overflows_total") == 0
                ttft = found["streammgr_time_to_first_token_seconds"]
                assert found["streammgr_e2e_request_latency_seconds"].type == "histogram"
                assert ttft.documentation.startswith("Seconds from open() to the first item")
                manager.cancel(held.id)
                with pytest.raises(streammgr.StreamCancelled):
                    async for _ in held:
                        pass
            manager.cancel_key("b")
            await until(manager, lambda: manager.stats().closed_total == 4)
            found = await scrape(http)
            assert sample(found, "streammgr_requests_closed_total", reason="cancelled") == 2
            assert sample(found, "streammgr_e2e_request_latency_seconds_count") == 4
            assert sample(found, "streammgr_num_requests_running") == 0


async def test_two_apps_in_one_process_do_not_collide(nursery: trio.Nursery) -> None:
    async with StreamManager() as first, StreamManager() as second:
        one = await serve_admin(nursery, first)
        two = await serve_admin(nursery, second)
        async with first.open(words, 2) as stream:
            async for _ in stream:
                pass
        async with client(one) as http_one, client(two) as http_two:
            found_one, found_two = await scrape(http_one), await scrape(http_two)
        assert sample(found_one, "streammgr_requests_opened_total") == 1
        assert sample(found_two, "streammgr_requests_opened_total") == 0
        assert sample(found_one, "streammgr_delivered_items_total") == 2
        assert sample(found_two, "streammgr_delivered_items_total") == 0
        # Nothing went to prometheus_client's global registry.
        global_names = {family.name for family in prometheus_client.REGISTRY.collect()}
        assert not any(name.startswith("streammgr") for name in global_names)


async def test_a_huge_limit_accepted_by_put_limits_does_not_break_metrics(
    nursery: trio.Nursery,
) -> None:
    # LimitsUpdate has no upper bound: a 400-digit max_streams is a 200, then every
    # GET /metrics is a 500 (OverflowError: int too large to convert to float).
    async with StreamManager() as manager:
        server = await Server().start(nursery, admin_app(manager, token="admin-token"))
        headers = {"authorization": "Bearer admin-token", "content-type": "application/json"}
        async with httpx.AsyncClient(headers=headers, timeout=PATIENCE) as client:
            put = await client.put(
                f"{server.url}/admin/limits", content='{"max_streams": ' + "9" * 400 + "}"
            )
            metrics = await client.get(f"{server.url}/admin/metrics")
        server.stop.set()
    assert put.status_code in (200, 400, 422)
    assert metrics.status_code == 200


# -- authentication ----------------------------------------------------------------------


async def test_bearer_token_required_and_compared_in_constant_time(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager, token=TOKEN)
        paths = ["/admin/streams", "/admin/stats", "/admin/metrics", "/admin/openapi.json"]
        with capture_logs() as logs:
            async with client(server) as http:
                for path in paths:
                    missing = await http.get(path)
                    assert error_of(missing) == (401, "unauthorized"), path
                    assert missing.headers["www-authenticate"] == "Bearer"
                wrong = await http.get("/admin/stats", headers={"authorization": "Bearer nope-x"})
                assert error_of(wrong) == (401, "unauthorized")
                assert "wrong" in wrong.json()["error"]["message"]
                basic = await http.get("/admin/stats", headers={"authorization": f"Basic {TOKEN}"})
                assert error_of(basic) == (401, "unauthorized")
                assert (await http.put("/admin/limits", json={"max_streams": 1})).status_code == 401
            assert compared == [(b"nope-x", TOKEN.encode())]
            async with client(server, TOKEN) as http:
                for path in paths:
                    assert (await http.get(path)).status_code == 200, path
        assert compared[-1] == (TOKEN.encode(), TOKEN.encode())
        unauthorized = [log for log in logs if log["event"] == "admin.unauthorized"]
        assert len(unauthorized) == len(paths) + 3
        assert {log["problem"] for log in unauthorized} == {"missing", "wrong"}
        assert unauthorized[0]["path"] == "/admin/streams"
        assert "nope-x" not in repr(logs)
        assert TOKEN not in repr(logs)
        assert manager.stats().max_streams is None


def test_check_exposure_refuses_public_addresses_without_a_token() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        check_exposure(host, None)
    for host in ("0.0.0.0", "::", "", "192.0.2.10", "example.com"):
        check_exposure(host, "a-token")
        with pytest.raises(ValueError, match="refusing to serve the admin API on") as caught:
            check_exposure(host, None)
        assert "--admin-token" in str(caught.value)
    with pytest.raises(
        ValueError, match=r"refusing to serve the admin API on 0\.0\.0\.0 without --admin-token"
    ):
        check_exposure("0.0.0.0", "")
    with pytest.raises(ValueError, match="without ADMIN_TOKEN"):
        check_exposure("0.0.0.0", None, option="ADMIN_TOKEN")


def test_admin_app_checks_its_arguments() -> None:
    manager = StreamManager()
    with pytest.raises(ValueError, match="prefix must be"):
        admin_app(manager, prefix="admin")
    with pytest.raises(ValueError, match="prefix must be"):
        admin_app(manager, prefix="/admin/")
    with pytest.raises(ValueError, match="token must be"):
        admin_app(manager, token="")
    with pytest.raises(ValueError, match="max_watchers"):
        admin_app(manager, max_watchers=0)
    with pytest.raises(ValueError, match="keep_alive"):
        admin_app(manager, keep_alive=-1)


# -- the events feed -------------------------------------------------------------------


async def raw_get(
    server: Server, path: str, *, token: str | None = None, receive_buffer: int | None = None
) -> RawResponse:

    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    auth = "" if token is None else f"authorization: Bearer {token}\r\n"
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n".encode())
    return RawResponse(stream)


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The complete chunks of a chunked body, and whether its last chunk came."""
    parts: list[bytes] = []
    position = 0
    while True:
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            return b"".join(parts), False
        size = int(body[position:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(parts), True
        start = line_end + 2
        if len(body) < start + size + 2:
            return b"".join(parts), False
        parts.append(body[start : start + size])
        position = start + size + 2


def feed_events(response: RawResponse) -> list[tuple[str, Any]]:
    data, _ = dechunk(response.body)
    return [(event.event, json.loads(event.data)) for event in SSEParser().feed(data)]


def has(kinds: list[tuple[str, str | None]]) -> Callable[[RawResponse], bool]:
    """Until these (kind, stream id) events have come, in this order."""

    def wanted(response: RawResponse) -> bool:
        seen = [(kind, data.get("id")) for kind, data in feed_events(response)]
        return all(item in seen for item in kinds)

    return wanted


async def test_events_feed_starts_with_a_snapshot_then_changes(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=1) as manager:
        server = await serve_admin(nursery, manager, token=TOKEN, keep_alive=0.05)
        async with manager.open(forever, key="held", labels={"model": "m"}) as held:
            feed = await raw_get(server, "/admin/streams/events", token=TOKEN)
            await feed.until(lambda response: b"event: snapshot" in response.body)
            assert feed.status == 200
            assert feed.headers["content-type"].startswith("text/event-stream")
            assert feed.headers["cache-control"] == "no-cache"
            kind, snapshot = feed_events(feed)[0]
            assert kind == "snapshot"
            assert snapshot["reason"] == "start"
            assert [(s["id"], s["labels"]) for s in snapshot["streams"]] == [
                (held.id, {"model": "m"})
            ]

            async def reader() -> None:
                async with manager.open(words, 2, key="next") as stream:
                    async for _ in stream:
                        pass

            nursery.start_soon(reader)
            await until(manager, lambda: manager.stats().waiting == 1)
            waiting_id = manager.streams()[1].id
            await feed.until(has([("opened", waiting_id)]))
            manager.cancel(held.id)
            with pytest.raises(streammgr.StreamCancelled):
                async for _ in held:
                    pass
        await feed.until(
            has([("closed", held.id), ("admitted", waiting_id), ("closed", waiting_id)])
        )
        events = feed_events(feed)
        kinds = [(kind, data.get("id")) for kind, data in events]
        assert kinds == [
            ("snapshot", None),
            ("opened", waiting_id),
            ("closed", held.id),
            ("admitted", waiting_id),
            ("closed", waiting_id),
        ]
        closed = dict(events)["closed"]  # the last closed event: the reader's stream
        assert (closed["close_reason"], closed["items"]) == ("completed", 2)
        # Nothing else to tell: keep-alives.
        await feed.until(lambda response: response.body.count(b": keep-alive") >= 2)
        await feed.stream.aclose()


async def test_events_feed_ends_on_disconnect_and_when_the_manager_closes(
    nursery: trio.Nursery,
) -> None:
    manager = StreamManager()
    async with manager:
        server = await serve_admin(nursery, manager, max_watchers=1)
        async with client(server) as http:
            first = await raw_get(server, "/admin/streams/events")
            await first.until(lambda response: b"event: snapshot" in response.body)
            refused = await http.get("/admin/streams/events")
            assert error_of(refused) == (429, "too_many_watchers")
            assert int(refused.headers["retry-after"]) > 0
            await first.stream.aclose()
            await quiesce()
            found = families((await http.get("/admin/metrics")).text)
            assert sample(found, "streammgr_admin_event_feeds") == 0
            # Its slot went back: a new feed is served.
            second = await raw_get(server, "/admin/streams/events")
            await second.until(lambda response: b"event: snapshot" in response.body)
    # The manager closed: the feed says so and its body ends.
    await second.until(lambda response: dechunk(response.body)[1])
    assert feed_events(second)[-1] == ("end", {"reason": "manager_closed"})
    await second.stream.aclose()


async def test_a_slow_watcher_never_slows_the_manager(nursery: trio.Nursery) -> None:
    big_labels = {"padding": "x" * 20_000}  # every event carries them: sockets fill fast
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager, events_buffer=4)
        feed = await raw_get(server, "/admin/streams/events", receive_buffer=4096)
        await feed.until(lambda response: b"event: snapshot" in response.body)
        # The client reads nothing now. The manager runs 300 streams regardless.
        with trio.fail_after(PATIENCE):
            for _ in range(300):
                async with manager.open(words, 1, labels=big_labels) as stream:
                    async for _ in stream:
                        pass
        assert manager.stats().closed_total == 300
        # Reading again, the client is told it fell behind: a fresh snapshot.
        await feed.until(
            lambda response: any(
                kind == "snapshot" and data["reason"] == "overflow"
                for kind, data in feed_events(response)
            )
        )
        await feed.stream.aclose()


# -- odd input: label filters, 405s, integral floats, unreadable bodies, odd keys, the feed ---


async def test_label_filters_are_declared_and_checked_as_name_value(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            document = (await http.get("/admin/openapi.json")).json()
            (label,) = [
                p
                for p in document["paths"]["/admin/streams"]["get"]["parameters"]
                if p["name"] == "label"
            ]
            items = label["schema"]["anyOf"][0]["items"]
            assert items == {"type": "string", "pattern": "^[^:]+:"}
            for bad in ("", "model", ":value", "ünïcode"):
                response = await http.get("/admin/streams", params={"label": bad})
                assert error_of(response) == (422, "validation_error"), bad
                assert "query label" in response.json()["error"]["message"]
            for good in ("model:", "model:a:b", "ünï:cödé ✓"):
                response = await http.get("/admin/streams", params={"label": good})
                assert response.status_code == 200, good


async def test_a_405_allows_every_method_of_its_path(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            for path, allowed in [
                ("/admin/streams/some-id", "DELETE, GET"),
                ("/admin/limits", "GET, PUT"),
                ("/admin/stats", "GET"),
                ("/admin/streams/events", "GET"),  # not /streams/{stream_id}'s DELETE too
            ]:
                response = await http.request("OPTIONS", path)
                assert error_of(response) == (405, "method_not_allowed"), path
                assert response.headers["allow"] == allowed, path
                assert f"(allowed: {allowed})" in response.json()["error"]["message"]


async def test_integral_floats_are_integers_for_put_limits(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=2) as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            # JSON Schema's "integer" includes 7.0; 7.5 stays a 422 (see the test above).
            response = await http.put(
                "/admin/limits", json={"max_streams": 7.0, "max_waiting": 0.0}
            )
            assert response.status_code == 200, response.text
            assert response.json()["max_streams"] == 7
            assert (manager.stats().max_streams, manager.stats().max_waiting) == (7, 0)
            for body in ({"max_streams": 7.5}, {"max_streams": 1e300}, {"max_waiting": -1.0}):
                response = await http.put("/admin/limits", json=body)
                assert error_of(response) == (422, "validation_error"), body
            assert manager.stats().max_streams == 7


async def test_an_unreadable_body_is_a_validation_error(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        headers = {"content-type": "application/json"}
        async with client(server) as http:
            for method, path in [
                ("DELETE", "/admin/streams/x"),
                ("DELETE", "/admin/keys/k/streams"),
                ("PUT", "/admin/limits"),
            ]:
                response = await http.request(method, path, content=b"k?6\xff", headers=headers)
                assert error_of(response) == (422, "validation_error"), path
                assert "UTF-8" in response.json()["error"]["message"]
                assert response.json()["error"]["details"][0]["loc"] == ["body"]


async def test_a_key_with_a_line_break_can_be_cancelled(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with manager.open(forever, key="tenant\r\n/a") as stream, client(server) as http:
            # Starlette's {key:path} stopped at a line break: this was a 404 not_found.
            response = await http.delete("/admin/keys/tenant%0D%0A/a/streams")
            assert response.status_code == 200, response.text
            assert response.json() == {"key": "tenant\r\n/a", "cancelled": 1}
            with pytest.raises(streammgr.StreamCancelled):
                async for _ in stream:
                    pass


async def test_odd_input_is_a_422_or_an_answer_never_a_500(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with (
            manager.open(forever, key="ключ ✓", labels={"モデル": "値"}),
            client(server) as http,
        ):
            for path, params in [
                ("/admin/streams", {"limit": str(10**30)}),
                ("/admin/streams", {"limit": "-1"}),
                ("/admin/streams", {"limit": "1e3"}),
                ("/admin/streams", {"phase": "nope"}),
                ("/admin/history", {"limit": "0"}),
                ("/admin/history", {"reason": "\x00"}),
            ]:
                response = await http.get(path, params=params)
                assert error_of(response) == (422, "validation_error"), params
            found = await http.get("/admin/streams", params={"key": "ключ ✓", "label": "モデル:値"})
            assert found.json()["total"] == 1
            cursor = await http.get("/admin/streams", params={"cursor": "é\x00" * 100})
            assert error_of(cursor) == (400, "invalid_cursor")
            for body in ({"max_streams": 10**30}, {"max_waiting": -(10**30)}):
                response = await http.put("/admin/limits", json=body)
                assert error_of(response) == (422, "validation_error"), body


async def test_the_feed_declares_each_event(nursery: trio.Nursery) -> None:
    async with StreamManager() as manager:
        server = await serve_admin(nursery, manager)
        async with client(server) as http:
            document = (await http.get("/admin/openapi.json")).json()
        declared = document["paths"]["/admin/streams/events"]["get"]["responses"]["200"]
        (event_schema,) = declared["content"].values()
        options = event_schema["schema"]["oneOf"]
        names = [option["properties"]["event"]["enum"] for option in options]
        assert names == [["snapshot"], ["opened", "admitted", "closed"], ["end"]]
        assert options[1]["properties"]["data"]["contentSchema"] == {
            "$ref": "#/components/schemas/Stream"
        }
        assert "type" not in event_schema["schema"]  # not FastAPI's bare string


# -- the OpenAPI document, mounting ------------------------------------------------------

EXPECTED_PATHS = {
    "/admin/streams": {"get"},
    "/admin/streams/events": {"get"},
    "/admin/streams/{stream_id}": {"get", "delete"},
    "/admin/keys/{key}/streams": {"delete"},
    "/admin/history": {"get"},
    "/admin/stats": {"get"},
    "/admin/limits": {"get", "put"},
    "/admin/healthz": {"get"},
    "/admin/metrics": {"get"},
    "/admin/cluster/streams": {"get"},
    "/admin/cluster/stats": {"get"},
}


def check(schema: dict[str, Any], value: object, document: dict[str, Any], where: str) -> None:
    """A small JSON Schema check (types, required, properties, items, anyOf, $ref, enum)."""
    if "$ref" in schema:
        name = schema["$ref"].rpartition("/")[2]
        check(document["components"]["schemas"][name], value, document, where)
        return
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            try:
                check(option, value, document, where)
            except AssertionError:
                continue
            return
        raise AssertionError(f"{where}: {value!r} matches no anyOf option")
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    types: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "array": list,
        "object": dict,
        "null": type(None),
    }
    if "type" in schema:
        assert isinstance(value, types[schema["type"]]), f"{where}: {value!r} not {schema}"
        if schema["type"] in {"integer", "number"}:
            assert not isinstance(value, bool), where
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}: {name} missing"
        for name, item in value.items():
            if name in schema.get("properties", {}):
                check(schema["properties"][name], item, document, f"{where}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                check(schema["additionalProperties"], item, document, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check(schema["items"], item, document, f"{where}[{index}]")


def check_response(document: dict[str, Any], path: str, response: httpx.Response) -> None:
    method = response.request.method.lower()
    declared = document["paths"][path][method]["responses"][str(response.status_code)]
    schema = declared["content"]["application/json"]["schema"]
    check(schema, response.json(), document, f"{method} {path} {response.status_code}")


async def test_openapi_document_matches_the_server(nursery: trio.Nursery) -> None:
    async with StreamManager(max_streams=2) as manager:
        server = await serve_admin(nursery, manager, token=TOKEN)
        async with client(server, TOKEN) as http:
            document = (await http.get("/admin/openapi.json")).json()
            paths = document["paths"]
            assert {path: set(operations) for path, operations in paths.items()} == EXPECTED_PATHS
            events = paths["/admin/streams/events"]["get"]["responses"]
            assert set(events["200"]["content"]) == {"text/event-stream"}
            assert set(paths["/admin/metrics"]["get"]["responses"]["200"]["content"]) == {
                "text/plain"
            }
            assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
            assert "HTTPValidationError" not in document["components"]["schemas"]
            retry_after = 0
            for path, operations in paths.items():
                for method, operation in operations.items():
                    assert operation["security"] == [{"HTTPBearer": []}], (path, method)
                    responses = operation["responses"]
                    assert "401" in responses, (path, method)
                    for status, declared in responses.items():
                        if int(status) >= 400:
                            assert set(declared["content"]) == {"application/json"}
                        if status in {"429", "503"}:
                            assert "Retry-After" in declared["headers"], (path, status)
                            retry_after += 1
                    parameters = [p["name"] for p in operation.get("parameters", [])]
                    if parameters or "requestBody" in operation:
                        assert "422" in responses, (path, method)
            assert (
                retry_after == 5
            )  # the feed's 429 and 503, healthz's 503, the cluster routes' 503s

            # Answers match what the document declares.
            async with manager.open(forever, key="k", labels={"a": "b"}) as stream:
                for path, url in [
                    ("/admin/streams", "/admin/streams"),
                    ("/admin/streams/{stream_id}", f"/admin/streams/{stream.id}"),
                    ("/admin/stats", "/admin/stats"),
                    ("/admin/limits", "/admin/limits"),
                    ("/admin/healthz", "/admin/healthz"),
                    ("/admin/history", "/admin/history"),
                    ("/admin/streams/{stream_id}", "/admin/streams/missing"),
                    ("/admin/streams", "/admin/streams?limit=0"),
                ]:
                    check_response(document, path, await http.get(url))
                check_response(
                    document,
                    "/admin/limits",
                    await http.put("/admin/limits", json={"max_streams": 3}),
                )
                check_response(
                    document,
                    "/admin/streams/{stream_id}",
                    await http.delete(f"/admin/streams/{stream.id}"),
                )
                check_response(
                    document,
                    "/admin/keys/{key}/streams",
                    await http.delete("/admin/keys/k/streams"),
                )
                with pytest.raises(streammgr.StreamCancelled):
                    async for _ in stream:
                        pass
        async with client(server) as http:
            check_response(document, "/admin/stats", await http.get("/admin/stats"))


async def test_mounted_in_a_bigger_app(nursery: trio.Nursery) -> None:
    manager = StreamManager()
    admin = admin_app(manager, prefix="")

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        async with manager_lifespan(manager)(app), admin.router.lifespan_context(admin):
            yield

    app = Starlette(routes=[Mount("/ops", admin)], lifespan=lifespan)
    server = await Server().start(nursery, app)
    async with client(server) as http:
        async with manager.open(words, 1) as stream:
            async for _ in stream:
                pass
        listed = await http.get("/ops/history")
        assert listed.status_code == 200
        assert [s["id"] for s in listed.json()["streams"]] == [stream.id]
        document = (await http.get("/ops/openapi.json")).json()
        assert document["servers"] == [{"url": "/ops"}]
        assert "/streams" in document["paths"]
        found = await scrape_at(http, "/ops/metrics")
        assert sample(found, "streammgr_metrics_feed_up") == 1
        assert sample(found, "streammgr_delivered_items_total") == 1
        assert (await http.get("/admin/streams")).status_code == 404
    server.stop.set()
    with trio.fail_after(PATIENCE):
        await server.stopped.wait()
    with pytest.raises(streammgr.ManagerClosed):
        async with manager.open(forever):
            pass


async def test_messages_name_the_paths_the_client_sees_when_mounted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Mounted at /ops with prefix="": "GET /streams" would send the reader to a 404.
    manager = StreamManager()
    app = Starlette(routes=[Mount("/ops", admin_app(manager, prefix=""))])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        missing = await http.get("/ops/streams/nope-1")
        cancel_missing = await http.delete("/ops/streams/nope-2")
        unknown = await http.get("/ops/nothing-here")
    for answer in (missing, cancel_missing):
        assert error_of(answer) == (404, "stream_not_found")
        message = answer.json()["error"]["message"]
        assert "GET /ops/streams or closed ones with GET /ops/history" in message
    assert "GET /ops/nothing-here" in unknown.json()["error"]["message"]


async def scrape_at(http: httpx.AsyncClient, path: str) -> dict[str, Any]:
    await quiesce()
    return families((await http.get(path)).text)
