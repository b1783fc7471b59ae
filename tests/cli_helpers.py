"""What the command line's tests share: a ``streammgr`` process run in a nursery, whose
JSON log lines are read as they come.

Real time: every wait is bounded by ``PATIENCE``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

PATIENCE = 20.0  # seconds: a new interpreter imports trio, httpx, starlette, hypercorn


class CliProcess:
    """A ``streammgr`` process whose JSON log lines are read as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, object]] = []
        self._pending = b""

    async def until(self, event: str) -> dict[str, object]:
        """Read the log (bounded) until a line with ``event``; return it."""
        found = await self.until_lines(lambda line: line.get("event") == event, 1, event)
        return found[0]

    async def until_lines(
        self, matches: Callable[[dict[str, object]], bool], count: int, what: str
    ) -> list[dict[str, object]]:
        """Read the log (bounded) until ``count`` lines match; return them."""
        stderr = self.process.stderr
        assert stderr is not None
        with trio.fail_after(PATIENCE):
            while True:
                found = [line for line in self.events if matches(line)]
                if len(found) >= count:
                    return found
                data = await stderr.receive_some(65536)
                if not data:
                    raise AssertionError(f"the process ended before {what}: {self.events}")
                self._pending += data
                *lines, self._pending = self._pending.split(b"\n")
                for line_bytes in lines:
                    if line_bytes.startswith(b"{"):
                        self.events.append(json.loads(line_bytes))

    async def stop(self) -> int:
        """SIGINT, then the exit code (bounded)."""
        self.process.send_signal(signal.SIGINT)
        await self.until(self.events_stopped_name)
        with trio.fail_after(PATIENCE):
            return await self.process.wait()

    events_stopped_name = "gateway.stopped"


@asynccontextmanager
async def started(nursery: trio.Nursery, *argv: str, **env: str) -> AsyncIterator[CliProcess]:
    process: trio.Process = await nursery.start(
        partial_run_process,
        [sys.executable, "-m", "streammgr", *argv, "--port", "0", "--log-format", "json"],
        {**os.environ, **env},
    )
    running = CliProcess(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(PATIENCE):
                await process.wait()


async def partial_run_process(
    command: list[str],
    env: dict[str, str],
    *,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.run_process(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        task_status=task_status,
    )
