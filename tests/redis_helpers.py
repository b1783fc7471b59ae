"""A real ``redis-server`` for the cluster tests: started on a free port, stopped after.

``redis_server`` (a fixture) starts Debian's ``redis-server`` in a temporary
directory (no persistence), waits (bounded) until it answers PING, yields a
:class:`RedisServer`, and at teardown checks that no key lives without an expiry
(``SCAN`` + ``PTTL``: the cluster's promise) before stopping it. ``redis_client``
talks to it from a Trio test without sharing the limiter's client.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import coredis
import pytest

from tests.server_helpers import PATIENCE, free_port, missing_server

__all__ = ["RedisServer", "keys_without_ttl", "redis_client", "redis_server"]


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` (restartable on that port).

    Attributes:
        port: its TCP port.
        url: ``redis://127.0.0.1:port/0`` (with ``password``: ``redis://:pw@...``).
    """

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (empty) and wait until it answers PING (bounded)."""
        executable = shutil.which("redis-server")
        if executable is None:
            missing_server(
                "redis-server is not installed (python3 dev.py test installs it as root)"
            )
        args = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                if self.cli("PING").strip() == "PONG":
                    return
            except subprocess.CalledProcessError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.01)  # a process starting: nothing to wait on but its answer

    def kill(self) -> None:
        """SIGKILL it: every connection breaks, every key is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=PATIENCE)
            self.process = None

    def restart(self) -> None:
        """Kill it and start it again, empty, on the same port."""
        self.kill()
        self.start()

    def cli(self, *args: str) -> str:
        """Run one command with ``redis-cli`` (blocking: outside Trio, or briefly)."""
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *auth, *args],
            capture_output=True,
            check=True,
            timeout=PATIENCE,
        )
        return done.stdout.decode()


def keys_without_ttl(server: RedisServer) -> list[str]:
    """The keys that would live for ever (``PTTL`` -1)."""
    keys = [key for key in server.cli("--scan").split("\n") if key]
    return [key for key in keys if server.cli("PTTL", key).strip() == "-1"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server``; fails the test if a key is left without a TTL."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
        if server.process is not None:
            assert keys_without_ttl(server) == []
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[coredis.Redis[str]]:
    """A coredis client of the test's own (not the limiter's)."""
    client: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        yield client
