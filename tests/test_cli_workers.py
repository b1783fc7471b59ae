"""``streammgr serve --workers N``: N processes on one port, supervised by the parent.

Real processes over loopback; every wait is on a log line or a condition, bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

import httpx
import pytest
import trio

from streammgr.cli import main

from .cli_helpers import PATIENCE, CliProcess, started
from .cluster_helpers import cluster_args, pid_alive
from .fault_helpers import chat
from .redis_helpers import RedisServer, redis_server
from .server_helpers import wait_until

__all__ = ["redis_server"]  # the fixture, used by name

QUICK: dict[str, Any] = {"tokens": 3, "first_token_latency": 0, "token_latency": 0}


async def _listening(running: CliProcess) -> tuple[str, list[int]]:
    line = await running.until("workers.listening")
    urls, pids = line["urls"], line["workers"]
    assert isinstance(urls, list)
    assert isinstance(pids, list)
    return str(urls[0]), [int(pid) for pid in pids]


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["serve", "--workers", "2"], {}), (["serve"], {"STREAMMGR_WORKERS": "3"})],
)
def test_workers_above_one_without_redis_url_is_refused(
    argv: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("streammgr: error: --workers ")
    assert "needs --redis-url" in line


def test_workers_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "0", *cluster_args("redis://127.0.0.1:1/0")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--workers" in line
    assert "at least 1" in line


async def test_two_workers_serve_one_port_and_both_answer(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    async with started(
        nursery, "serve", "--workers", "2", *cluster_args(redis_server.url)
    ) as running:
        running.events_stopped_name = "workers.stopped"
        url, pids = await _listening(running)
        assert len(set(pids)) == 2
        assert os.getpid() not in pids
        # Each new connection goes to one worker waiting in accept: open batches of
        # streams at once, each on its own connection, until both have served one.
        sent = 0
        served: set[object] = set()
        with trio.fail_after(PATIENCE):
            while served != set(pids):
                async with trio.open_nursery() as batch:
                    for _ in range(8):
                        batch.start_soon(_one_stream, url)
                sent += 8
                closed = await running.until_lines(
                    lambda line: line.get("event") == "stream.closed", sent, "streams closed"
                )
                served = {line.get("pid") for line in closed}
        assert await running.stop() == 0
    for pid in pids:
        assert not pid_alive(pid)


async def _one_stream(url: str) -> None:
    async with httpx.AsyncClient(timeout=PATIENCE) as client:
        response = await client.post(f"{url}/v1/chat/completions", json=chat(**QUICK))
        assert response.status_code == 200
        assert response.text.endswith("data: [DONE]\n\n")


async def test_sigterm_drains_every_worker_and_exits_zero(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    argv = ["serve", "--workers", "2", "--shutdown-grace", "20", *cluster_args(redis_server.url)]
    async with started(nursery, *argv) as running:
        url, pids = await _listening(running)
        slow: dict[str, Any] = {"tokens": 15, "first_token_latency": 0, "token_latency": 0.1}
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            request = client.build_request("POST", f"{url}/v1/chat/completions", json=chat(**slow))
            response = await client.send(request, stream=True)
            chunks = response.aiter_text()
            text = await chunks.__anext__()  # the stream is in flight
            running.process.send_signal(signal.SIGTERM)
            await running.until("workers.stopping")
            async for chunk in chunks:
                text += chunk
            await response.aclose()
        # The stream in flight finished within the grace: drained, not cut.
        assert text.endswith("data: [DONE]\n\n")
        assert '"error"' not in text
        with trio.fail_after(PATIENCE):
            assert await running.process.wait() == 0
        await running.until("workers.stopped")
        stopped = await running.until_lines(
            lambda line: line.get("event") == "gateway.stopped", 2, "both workers stopped"
        )
        assert {line["pid"] for line in stopped} == set(pids)
    for pid in pids:
        assert not pid_alive(pid)


async def test_a_worker_that_dies_is_logged_and_replaced(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    async with started(
        nursery, "serve", "--workers", "2", *cluster_args(redis_server.url)
    ) as running:
        running.events_stopped_name = "workers.stopped"
        url, pids = await _listening(running)
        os.kill(pids[0], signal.SIGKILL)
        exited = await running.until("workers.worker_exited")
        assert exited["pid"] == pids[0]
        assert exited["code"] == -signal.SIGKILL
        replaced = await running.until("workers.worker_replaced")
        assert replaced["pid"] not in pids
        for _ in range(4):
            await _one_stream(url)
        assert await running.stop() == 0
    assert not pid_alive(int(str(replaced["pid"])))


async def test_workers_stop_when_their_parent_is_killed(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    async with started(
        nursery, "serve", "--workers", "2", *cluster_args(redis_server.url)
    ) as running:
        _, pids = await _listening(running)
        running.process.kill()  # no forwarding: each worker sees its stdin end
        stopped = await running.until_lines(
            lambda line: line.get("event") == "gateway.stopped", 2, "both workers stopped"
        )
        assert {line["pid"] for line in stopped} == set(pids)
        await wait_until(lambda: not any(pid_alive(pid) for pid in pids))


async def test_a_port_in_use_is_one_line_and_exit_one(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--workers", "2", *cluster_args(redis_server.url), "--port", str(port)]
        process = await trio.run_process(
            [sys.executable, "-m", "streammgr", *argv, "--log-format", "json"],
            capture_stderr=True,
            check=False,
        )
    assert process.returncode == 1
    assert b"gateway.cannot_listen" in process.stderr
    assert str(port).encode() in process.stderr


async def test_a_worker_that_ends_before_listening_stops_all_with_exit_one(
    redis_server: RedisServer,
) -> None:
    # Each worker runs `python -m this` instead: it prints the Zen of Python and exits
    # without ever listening, as a worker that fails at start would.
    script = (
        "import sys; import streammgr.cli._workers as workers; "
        "workers._WORKER_MODULE = 'this'; "
        "from streammgr.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [
        "serve",
        "--workers",
        "2",
        *cluster_args(redis_server.url),
        "--port",
        "0",
        "--log-format",
        "json",
    ]
    with trio.fail_after(PATIENCE):
        process = await trio.run_process(
            [sys.executable, "-c", script, *argv], capture_stderr=True, check=False
        )
    assert process.returncode == 1
    assert b'"workers.failed"' in process.stderr
    assert b'"workers.listening"' not in process.stderr
    assert b"Traceback" not in process.stderr


async def test_each_log_line_is_one_write() -> None:
    # The parent and its workers share one stderr: a line written in two pieces (the
    # text, then its newline) interleaves with another process's line.
    script = (
        "import io, json, sys\n"
        "writes = []\n"
        "class Recorder(io.TextIOBase):\n"
        "    def write(self, text):\n"
        "        writes.append(text)\n"
        "        return len(text)\n"
        "sys.stderr = Recorder()\n"
        "import structlog\n"
        "from streammgr.cli._logging import configure_logging\n"
        "configure_logging('json')\n"
        "structlog.get_logger('streammgr.cli').info('gateway.listening', urls=['u'])\n"
        "structlog.get_logger('streammgr.cli').warning('workers.worker_exited', code=-9)\n"
        "print(json.dumps(writes))\n"
    )
    with trio.fail_after(PATIENCE):
        process = await trio.run_process(
            [sys.executable, "-c", script], capture_stdout=True, check=True
        )
    writes = json.loads(process.stdout)
    assert len(writes) == 2, writes
    assert all(text.endswith("\n") and text.count("\n") == 1 for text in writes)
