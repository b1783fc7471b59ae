"""The multi-instance rig (tests/cluster_helpers.py): one simulator, instances of
``streammgr serve``, and Debian's nginx in front with ``proxy_buffering off``.

Checks what the cluster tests rely on: streams through nginx reach every instance,
a client leaving at nginx reaches the instance (the stream closes as
``client_disconnected``, the upstream request ends), tokens come through as they are
sent, and the simulator ends every response. Real processes; bounded waits.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from .cli_helpers import PATIENCE
from .cluster_helpers import Cluster, cluster_args, open_cluster
from .fault_helpers import raw_post, token_chat
from .redis_helpers import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name


async def _until_every_upstream_closed(cluster: Cluster, opened: int) -> dict[str, int]:
    stats: dict[str, int] = {}

    async def closed() -> bool:
        nonlocal stats
        stats = await cluster.simulator_stats()
        return stats["open"] == 0 and stats["opened"] >= opened

    with trio.fail_after(PATIENCE):
        while not await closed():  # noqa: ASYNC110 - counters over HTTP: polled
            await trio.sleep(0.05)  # the simulator's counters: nothing announces them
    assert stats["closed"] == stats["opened"]
    return stats


async def test_streams_through_nginx_reach_every_instance(tmp_path: Path) -> None:
    streams = 12
    async with open_cluster(tmp_path, instances=2) as cluster:

        async def one() -> None:
            # A client of its own: one connection to nginx per stream.
            async with httpx.AsyncClient(timeout=PATIENCE) as client:
                response = await client.post(
                    f"{cluster.url}/v1/chat/completions", json=token_chat(5, 0.0)
                )
                assert response.status_code == 200, response.text
                assert response.text.endswith("data: [DONE]\n\n")

        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one)
        per_instance = [(await cluster.instance_stats(index))["closed_total"] for index in range(2)]
        assert all(count >= 1 for count in per_instance), per_instance
        assert sum(per_instance) == streams
        stats = await _until_every_upstream_closed(cluster, streams)
        assert stats["completed"] == streams


async def test_a_client_leaving_at_nginx_reaches_the_instance(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, instances=2) as cluster:
        response = await raw_post(cluster.port, token_chat(2000, 0.05))
        await response.until(lambda answer: b"data: {" in answer.body)
        assert response.status == 200
        await response.stream.aclose()  # the client goes: nginx ends its upstream request

        async def disconnected() -> int:
            total = 0
            for index in range(2):
                stats = await cluster.instance_stats(index)
                total += stats["closed_by_reason"].get("client_disconnected", 0)
            return total

        with trio.fail_after(PATIENCE):
            while await disconnected() != 1:  # noqa: ASYNC110 - counters over HTTP
                await trio.sleep(0.05)  # the instances' counters: polled
        stats = await _until_every_upstream_closed(cluster, 1)
        assert stats["client_left"] == 1


async def test_tokens_come_through_nginx_as_they_are_sent(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, instances=1) as cluster:
        response = await raw_post(cluster.port, token_chat(20, 0.2))
        await response.until(lambda answer: b"data: {" in answer.body)
        # The first token is here while the simulator still holds the response:
        # neither nginx nor the gateway waited for the end.
        assert (await cluster.simulator_stats())["open"] == 1
        await response.until(lambda answer: b"data: [DONE]" in answer.body)
        await response.stream.aclose()
        assert response.body.count(b'"content"') >= 20
        await _until_every_upstream_closed(cluster, 1)


async def test_each_instance_gets_its_own_serve_flags(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # The seam the cluster tests use: --redis-url, limits, --workers, per instance.
    serve_args = [["--workers", "2", *cluster_args(redis_server.url)], ["--max-streams", "3"]]
    async with open_cluster(tmp_path, instances=2, serve_args=serve_args) as cluster:
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            limits = [
                (await client.get(f"http://127.0.0.1:{port}/admin/limits")).json()
                for port in cluster.instance_ports
            ]
            assert limits[0]["max_streams"] == 100
            assert limits[1]["max_streams"] == 3
            for _ in range(4):  # round robin: both instances, the first's workers
                response = await client.post(
                    f"{cluster.url}/v1/chat/completions", json=token_chat(3, 0.0)
                )
                assert response.text.endswith("data: [DONE]\n\n")
        await _until_every_upstream_closed(cluster, 4)
