"""The cluster registry, cluster cancel and cluster limits against a real redis-server.

Several instances (a RedisLimiter, a StreamManager, a ClusterRegistry and the admin
app each) in one Trio run, on one Redis; requests go to each instance's admin app in
process (httpx.ASGITransport: every answer here is plain JSON). Real clock (Redis
keeps its own time): every wait is bounded and ends on the state it waits for. The
``redis_server`` fixture fails any test that leaves a key without an expiry.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from streammgr import CloseReason, StreamCancelled, StreamManager
from streammgr.cluster import ClusterRegistry, RedisLimiter
from streammgr.cluster._registry_scripts import REFRESH
from streammgr.server import admin_app
from tests.admin_helpers import error_of
from tests.cli_helpers import started
from tests.redis_helpers import RedisServer, keys_without_ttl, redis_client, redis_server
from tests.server_helpers import PATIENCE

__all__ = ["redis_server"]  # the fixture, used by name

TTL = 1.2


@dataclass
class Instance:
    name: str
    manager: StreamManager
    limiter: RedisLimiter
    registry: ClusterRegistry
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def instance(
    url: str,
    name: str,
    *,
    max_streams: int | None = None,
    answer_within: float = 2.0,
    token: str | None = None,
) -> AsyncIterator[Instance]:
    """One instance named ``name``: limiter, manager, registry, admin app (as serve)."""
    limiter = RedisLimiter(url, instance_id=name, lease_ttl=TTL, max_streams=max_streams)
    manager = StreamManager(limiter=limiter, id_prefix=name)
    registry = ClusterRegistry(
        manager,
        limiter.connection,
        ttl=TTL,
        interval=0.3,
        min_interval=0.02,
        answer_within=answer_within,
    )
    async with limiter, manager, registry:
        app = admin_app(manager, cluster=registry, token=token)
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers
        ) as http:
            yield Instance(name, manager, limiter, registry, http)


async def forever() -> AsyncIterator[str]:
    while True:
        await trio.sleep(0.05)
        yield "token"


async def poll(
    http: httpx.AsyncClient, path: str, condition: Callable[[Any], bool], **params: Any
) -> Any:
    """GET ``path`` until ``condition(body)`` (bounded): the registry lags by design."""
    with trio.fail_after(PATIENCE):
        while True:
            response = await http.get(path, params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            if condition(body):
                return body
            await trio.sleep(0.02)


async def test_a_stream_on_one_instance_is_listed_by_another(
    redis_server: RedisServer,
) -> None:
    async with (
        instance(redis_server.url, "a") as a,
        instance(redis_server.url, "b") as b,
        a.manager.open(forever, key="k1", labels={"model": "m"}) as first,
        a.manager.open(forever, key="k2") as second,
        b.manager.open(forever, key="k1") as third,
    ):
        body = await poll(b.http, "/admin/cluster/streams", lambda body: body["total"] == 3)
        where = {stream["id"]: stream["instance"] for stream in body["streams"]}
        assert where == {first.id: "a", second.id: "a", third.id: "b"}
        one = next(stream for stream in body["streams"] if stream["id"] == first.id)
        assert (one["key"], one["labels"], one["phase"]) == ("k1", {"model": "m"}, "connecting")
        # Filters, as GET /admin/streams has them, plus the instance.
        of_a = (await b.http.get("/admin/cluster/streams", params={"instance": "a"})).json()
        assert {stream["id"] for stream in of_a["streams"]} == {first.id, second.id}
        of_key = (await b.http.get("/admin/cluster/streams", params={"key": "k1"})).json()
        assert {stream["id"] for stream in of_key["streams"]} == {first.id, third.id}
        labelled = await b.http.get("/admin/cluster/streams", params={"label": "model:m"})
        assert [stream["id"] for stream in labelled.json()["streams"]] == [first.id]
        # Pages of one, in creation order, each stream once.
        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 1}
            if cursor is not None:
                params["cursor"] = cursor
            page = (await a.http.get("/admin/cluster/streams", params=params)).json()
            seen += [stream["id"] for stream in page["streams"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [first.id, second.id, third.id]
        bad = await a.http.get("/admin/cluster/streams", params={"cursor": "nope"})
        assert error_of(bad) == (400, "invalid_cursor")
        # Ids name their instance: unique across instances.
        assert re.fullmatch(r"a-[0-9a-f]{4}-1", first.id)
        assert re.fullmatch(r"b-[0-9a-f]{4}-1", third.id)


async def test_cluster_stats_per_instance_and_in_total(redis_server: RedisServer) -> None:
    async with (
        instance(redis_server.url, "a", max_streams=5) as a,
        instance(redis_server.url, "b") as b,
        a.manager.open(forever, key="k"),
        a.manager.open(forever, key="k"),
    ):
        body = await poll(b.http, "/admin/cluster/stats", lambda body: body["active"] == 2)
        assert [one["instance"] for one in body["instances"]] == ["a", "b"]
        per = {one["instance"]: one for one in body["instances"]}
        assert (per["a"]["active"], per["b"]["active"]) == (2, 0)
        # b adopted the limits a wrote first (the cluster's).
        assert per["a"]["max_streams"] == per["b"]["max_streams"] == 5
        assert body["streams"] == 2
        assert all(0 <= one["seen_ago"] < TTL for one in body["instances"])
        assert keys_without_ttl(redis_server) == []  # while running, too


async def test_a_stopped_instance_leaves_and_a_dead_one_expires_within_the_ttl(
    redis_server: RedisServer,
) -> None:
    async with instance(redis_server.url, "b") as b:
        async with instance(redis_server.url, "a"):
            await poll(b.http, "/admin/cluster/stats", lambda body: len(body["instances"]) == 2)
        # Stopped cleanly: gone at once.
        instances = (await b.http.get("/admin/cluster/stats")).json()["instances"]
        assert [one["instance"] for one in instances] == ["b"]
        # A dead instance: its last snapshot, never refreshed again.
        snapshot = json.dumps(
            {
                "format": 1,
                "wall": 0.0,
                "stats": dict.fromkeys(("active", "waiting"), 0)
                | {
                    "max_streams": None,
                    "max_streams_per_key": None,
                    "max_waiting": None,
                    "opened_total": 0,
                    "closed_total": 0,
                    "closing": False,
                },
                "streams": [],
            }
        )
        await b.registry.connection.run(
            REFRESH,
            ["streammgr:registry", "streammgr:registry:ghost"],
            [int(TTL * 1000), "ghost", snapshot],
        )
        written = trio.current_time()
        await poll(b.http, "/admin/cluster/stats", lambda body: len(body["instances"]) == 2)
        await poll(b.http, "/admin/cluster/stats", lambda body: len(body["instances"]) == 1)
        assert trio.current_time() - written < TTL + 0.5


async def test_delete_on_one_instance_cancels_a_stream_on_another(
    redis_server: RedisServer,
) -> None:
    async with (
        instance(redis_server.url, "a") as a,
        instance(redis_server.url, "b") as b,
        a.manager.open(forever, key="k") as stream,
    ):
        await poll(b.http, "/admin/cluster/streams", lambda body: body["total"] == 1)
        response = await b.http.delete(
            f"/admin/streams/{stream.id}", params={"reason": "runaway prompt"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["cancelled"] is True
        assert body["stream"]["id"] == stream.id
        assert body["stream"]["detail"] == "runaway prompt"
        with pytest.raises(StreamCancelled) as caught:
            async for _ in stream:
                pass
        assert caught.value.reason == "runaway prompt"
        assert caught.value.close_reason is CloseReason.CANCELLED
        record = a.manager.get(stream.id)
        assert record is not None
        assert (record.close_reason, record.detail) == (CloseReason.CANCELLED, "runaway prompt")
        # Closed now: on a, a 409; on b, gone from the registry: a 404.
        again = await a.http.delete(f"/admin/streams/{stream.id}")
        assert error_of(again) == (409, "stream_closed")
        await poll(b.http, "/admin/cluster/streams", lambda body: body["total"] == 0)
        gone = await b.http.delete(f"/admin/streams/{stream.id}")
        assert error_of(gone) == (404, "stream_not_found")
        unknown = await b.http.delete("/admin/streams/nope-1")
        assert error_of(unknown) == (404, "stream_not_found")
        assert "any instance" in unknown.json()["error"]["message"]


async def test_a_cancel_reason_is_redacted_where_it_enters_then_carried_to_the_owner(
    redis_server: RedisServer,
) -> None:
    token = "b-admin-token-0123456789"
    async with (
        instance(redis_server.url, "a", token="a-admin-token-0123456789") as a,
        instance(redis_server.url, "b", token=token) as b,
        a.manager.open(forever, key="k") as stream,
    ):
        await poll(b.http, "/admin/cluster/streams", lambda body: body["total"] == 1)
        response = await b.http.delete(
            f"/admin/streams/{stream.id}", params={"reason": f"leaked {token}"}
        )
        assert response.status_code == 200, response.text
        assert token not in response.text
        with pytest.raises(StreamCancelled) as caught:
            async for _ in stream:
                pass
        assert caught.value.reason == "leaked [REDACTED]"
        record = a.manager.get(stream.id)
        assert record is not None
        assert record.detail == "leaked [REDACTED]"


async def test_a_cancel_for_an_owner_that_does_not_listen_is_a_503(
    redis_server: RedisServer,
) -> None:
    async with instance(redis_server.url, "b", answer_within=0.5) as b:
        row = [
            "ghost-1",
            "k",
            {},
            "streaming",
            0,
            0,
            None,
            None,
            None,
            0,
            0,
            None,
            None,
            None,
            0.0,
            {},
            1.0,
            0.5,
        ]
        snapshot = {"format": 1, "wall": 0.0, "stats": {}, "streams": [row]}
        await b.registry.connection.run(
            REFRESH,
            ["streammgr:registry", "streammgr:registry:ghost"],
            [int(TTL * 1000), "ghost", json.dumps(snapshot)],
        )
        response = await b.http.delete("/admin/streams/ghost-1")
        assert error_of(response) == (503, "instance_unreachable")
        assert "'ghost'" in response.json()["error"]["message"]
        assert response.headers["Retry-After"]
        # One that listens but never answers: a 504 after answer_within.
        async with (
            redis_client(redis_server.url) as client,
            client.pubsub(channels=["streammgr:cancel:ghost"]) as silent,
        ):
            del silent
            started = trio.current_time()
            response = await b.http.delete("/admin/streams/ghost-1")
            assert error_of(response) == (504, "instance_no_answer")
            assert 0.5 <= trio.current_time() - started < PATIENCE


async def test_cancel_a_key_across_the_cluster(redis_server: RedisServer) -> None:
    async with (
        instance(redis_server.url, "a") as a,
        instance(redis_server.url, "b") as b,
        a.manager.open(forever, key="k") as on_a,
        b.manager.open(forever, key="k") as on_b,
        a.manager.open(forever, key="other") as other,
    ):
        response = await b.http.delete("/admin/keys/k/streams", params={"reason": "key revoked"})
        assert response.status_code == 200, response.text
        assert response.json() == {"key": "k", "cancelled": 2, "by_instance": {"a": 1, "b": 1}}
        for stream in (on_a, on_b):
            with pytest.raises(StreamCancelled, match="key revoked"):
                async for _ in stream:
                    pass
        info = a.manager.get(other.id)
        assert info is not None
        assert info.close_reason is None


async def test_put_limits_on_one_instance_applies_on_every_instance(
    redis_server: RedisServer,
) -> None:
    async with (
        instance(redis_server.url, "a", max_streams=10) as a,
        instance(redis_server.url, "b", max_streams=10) as b,
    ):
        response = await a.http.put("/admin/limits", json={"max_streams": 3})
        assert response.status_code == 200, response.text
        await poll(b.http, "/admin/limits", lambda body: body["max_streams"] == 3)
        assert b.limiter.snapshot().max_streams == 3
        # An instance that starts later reads them (its own flag says 10).
        async with instance(redis_server.url, "c", max_streams=10) as c:
            assert c.limiter.snapshot().max_streams == 3
            # And b's change reaches a and c; removing a limit too.
            await b.http.put("/admin/limits", json={"max_streams": None})
            await poll(a.http, "/admin/limits", lambda body: body["max_streams"] is None)
            await poll(c.http, "/admin/limits", lambda body: body["max_streams"] is None)


async def test_limits_whose_announcement_was_missed_apply_at_the_next_heartbeat(
    redis_server: RedisServer,
) -> None:
    """A change written while an instance's pub/sub link was down (here: written with
    no announcement at all) reaches it within a heartbeat (lease_ttl / 3)."""
    async with instance(redis_server.url, "a", max_streams=10) as a:
        async with redis_client(redis_server.url) as client:
            await client.hset("streammgr:limits", {"max_streams": "4"})
        with trio.fail_after(PATIENCE):
            while a.limiter.snapshot().max_streams != 4:  # noqa: ASYNC110 - no event to wait on
                await trio.sleep(0.02)
        # A local change is never undone by a read of the hash before it is written.
        a.manager.set_limits(max_streams=6)
        await a.limiter.heartbeat()
        assert a.limiter.snapshot().max_streams == 6
        await poll(a.http, "/admin/limits", lambda body: body["max_streams"] == 6)
        # The write to Redis is the limiter's background job: it lands, and is not
        # undone by the heartbeat's read (a loaded machine runs the job later).
        async with redis_client(redis_server.url) as client:
            with trio.fail_after(PATIENCE):
                while await client.hget("streammgr:limits", "max_streams") != "6":  # noqa: ASYNC110
                    await trio.sleep(0.02)
            await a.limiter.heartbeat()
            assert a.limiter.snapshot().max_streams == 6


async def test_cluster_routes_are_a_404_without_cluster_mode() -> None:
    async with StreamManager() as manager:
        transport = httpx.ASGITransport(app=admin_app(manager))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            for path in ("/admin/cluster/streams", "/admin/cluster/stats"):
                response = await http.get(path)
                assert error_of(response) == (404, "cluster_off")
                assert "--redis-url" in response.json()["error"]["message"]


async def test_serve_with_a_redis_url_publishes_its_streams_and_answers_for_the_cluster(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """``serve --redis-url`` runs the registry on the limiter's connection: its admin API
    lists itself under its --instance-id, and it leaves the registry when it stops."""
    async with started(
        nursery, "serve", "--redis-url", redis_server.url, "--instance-id", "gw-1"
    ) as running:
        listening = await running.until("gateway.listening")
        url = str(listening["urls"][0])  # type: ignore[index]
        async with httpx.AsyncClient(base_url=f"{url}/admin", timeout=PATIENCE) as http:
            stats = (await http.get("/cluster/stats")).json()
            assert [one["instance"] for one in stats["instances"]] == ["gw-1"]
            listed = await http.get("/cluster/streams")
            assert listed.json() == {"streams": [], "total": 0, "next_cursor": None}
        assert await running.stop() == 0
    async with redis_client(redis_server.url) as client:
        assert await client.exists(["streammgr:registry:gw-1"]) == 0


def test_a_bad_id_prefix_is_refused() -> None:
    for bad in ("", "tab\there", 3):
        with pytest.raises(ValueError, match="id_prefix"):
            StreamManager(id_prefix=bad)  # type: ignore[arg-type]
