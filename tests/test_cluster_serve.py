"""``streammgr serve --redis-url``: cluster mode from the command line.

Real processes and a real ``redis-server`` (tests/redis_helpers.py); every wait is
bounded and ends on a log line or on the state it waits for.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest
import trio

from streammgr.cli import main

from .cli_helpers import PATIENCE, started
from .redis_helpers import RedisServer, redis_client, redis_server

__all__ = ["redis_server"]  # the fixture, used by name

PASSWORD = "pw-Cluster-5521"


def test_serve_help_names_the_cluster_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ["--redis-url", "--lease-ttl", "--instance-id", "--redis-fault-policy"]:
        assert flag in out
    assert "STREAMMGR_REDIS_URL" in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["serve", "--lease-ttl", "0"], "--lease-ttl"),
        (["serve", "--redis-url", f"http://:{PASSWORD}@redis:6379"], "--redis-url"),
        (["serve", "--redis-fault-policy", "open"], "--redis-fault-policy"),
    ],
)
def test_a_bad_cluster_flag_is_a_one_line_error(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert named in line
    assert PASSWORD not in line


def test_serve_exits_non_zero_when_redis_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    result = subprocess.run(
        [sys.executable, "-m", "streammgr", "serve", "--port", "0", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
        env={**os.environ, "STREAMMGR_REDIS_URL": url},
    )
    assert result.returncode == 1, result.stderr[-500:]
    assert "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (failed,) = [event for event in events if event["event"] == "gateway.limiter_unavailable"]
    assert "--redis-url" in failed["error"]
    assert PASSWORD not in result.stderr
    assert "redis://:***@127.0.0.1" in failed["error"]


async def test_serve_shares_its_limits_through_redis_and_says_when_it_is_lost(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """An instance joins Redis under its --instance-id, serves a stream against a lease,
    and answers /readyz 503 degraded once Redis is gone (running on fail-closed)."""
    async with started(
        nursery,
        "serve",
        "--redis-url",
        redis_server.url,
        "--instance-id",
        "gw-1",
        "--lease-ttl",
        "3",
        "--max-streams",
        "2",
    ) as running:
        listening = await running.until("gateway.listening")
        url = str(listening["urls"][0])  # type: ignore[index]
        async with redis_client(redis_server.url) as admin:
            assert await admin.zscore("streammgr:instances", "gw-1") is not None
            assert await admin.hget("streammgr:limits", "max_streams") == "2"
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            body = {
                "model": "sim-small",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "streammgr_simulate": {"tokens": 3, "first_token_latency": 0, "token_latency": 0},
            }
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert (await client.get(f"{url}/readyz")).json() == {"status": "ready"}
            redis_server.kill()
            refused = await client.post(f"{url}/v1/chat/completions", json=body)
            assert refused.status_code == 503
            assert refused.headers["x-should-retry"] == "true"
            assert "retry-after" in refused.headers
            ready: list[httpx.Response] = []

            async def probe() -> None:
                ready.append(await client.get(f"{url}/readyz"))

            async def degraded() -> bool:
                await probe()
                return ready[-1].status_code == 503

            with trio.fail_after(PATIENCE):
                while not await degraded():  # noqa: ASYNC110 - probing, as a balancer does
                    await trio.sleep(0.05)
            assert ready[-1].json() == {"status": "degraded"}
            metrics = (await client.get(f"{url}/admin/metrics")).text
            assert "streammgr_limiter_degraded 1.0" in metrics
        assert await running.stop() == 0
