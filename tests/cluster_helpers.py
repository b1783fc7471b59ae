"""What the cluster tests share: the flags that make instances share their limits, and
a rig of real processes: one simulator, K ``streammgr serve`` instances and Debian's
nginx as the load balancer in front of them.

The simulator is the benchmarks' (``benchmarks/_procs.py sim``): streammgr's
``SimulatedUpstream`` served alone, with ``GET /bench/stats`` returning its
``ConnectionStats`` (responses held, and how each ended), which ``streammgr simulate``
does not serve.

Real time and real processes: every wait is bounded by ``PATIENCE``; everything the
rig starts is stopped in ``finally`` and checked gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from .cli_helpers import PATIENCE
from .server_helpers import free_port, missing_server

NGINX = "/usr/sbin/nginx"
SIMULATOR = Path(__file__).resolve().parent.parent / "benchmarks" / "_procs.py"


def cluster_args(redis_url: str) -> list[str]:
    """The ``serve`` flags that make instances (or workers) share their limits through
    the Redis at ``redis_url`` (a test's ``redis_server`` fixture: tests/redis_helpers.py)."""
    return ["--redis-url", redis_url]


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


async def start_cli(nursery: trio.Nursery, argv: Sequence[str], log: Path) -> trio.Process:
    """``python -m streammgr *argv`` in its own process, its stderr (the log) in ``log``."""
    with log.open("wb") as stderr:
        process: trio.Process = await nursery.start(
            _run_process, [sys.executable, "-m", "streammgr", *argv], stderr.fileno()
        )
    return process


async def _run_process(
    command: list[str],
    stderr: int,
    *,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.run_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        check=False,
        task_status=task_status,
    )


async def stop_process(process: trio.Process, number: int = signal.SIGTERM) -> int:
    """Signal a process, wait (bounded), kill it if it is still there; its exit code."""
    if process.returncode is None:
        process.send_signal(number)
        with trio.move_on_after(PATIENCE):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    code = process.returncode
    assert code is not None
    return code


# -- nginx in front ------------------------------------------------------------------------


def nginx_config(directory: Path, port: int, upstreams: Sequence[int]) -> str:
    """nginx's configuration as docs/cluster.md gives it, on ``port``, in front of the
    instances on ``upstreams``, every path (pid, logs, temp files) in ``directory``."""
    servers = "".join(f"        server 127.0.0.1:{upstream};\n" for upstream in upstreams)
    return f"""\
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    upstream streammgr {{
{servers}        keepalive 32;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://streammgr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def require_nginx() -> None:
    """Skip when Debian's nginx is missing (``python3 dev.py test`` installs it as root)."""
    if not Path(NGINX).exists() and shutil.which("nginx") is None:
        missing_server("nginx is not installed: apt-get install nginx-light (dev.py test does)")


@dataclass
class Cluster:
    """The running rig: the simulator, the instances, nginx in front."""

    directory: Path
    simulator_port: int
    instance_ports: list[int]
    port: int  # nginx's
    simulator: trio.Process
    instances: list[trio.Process]
    nginx: trio.Process

    @property
    def url(self) -> str:
        """The load balancer's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def simulator_stats(self) -> dict[str, int]:
        """The simulator's ``ConnectionStats``: responses held and how they ended."""
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.get(f"http://127.0.0.1:{self.simulator_port}/bench/stats")
            response.raise_for_status()
            stats: dict[str, int] = response.json()
            return stats

    async def instance_stats(self, index: int) -> dict[str, Any]:
        """One instance's ``GET /admin/stats`` (asked directly, not through nginx)."""
        port = self.instance_ports[index]
        async with httpx.AsyncClient(timeout=PATIENCE) as client:
            response = await client.get(f"http://127.0.0.1:{port}/admin/stats")
            response.raise_for_status()
            stats: dict[str, Any] = response.json()
            return stats


async def _wait_listening(port: int, process: trio.Process) -> None:
    with trio.fail_after(PATIENCE):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"a rig process exited ({process.returncode}) on {port}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)  # a child's port: nothing to wait on but polling
            else:
                await stream.aclose()
                return


@asynccontextmanager
async def open_cluster(
    directory: Path,
    instances: int = 2,
    serve_args: Sequence[Sequence[str]] = (),
) -> AsyncIterator[Cluster]:
    """Start the rig; stop everything in ``finally`` and assert nothing is left.

    Args:
        directory: where nginx's configuration, pid, logs and temp files and the
            processes' logs go.
        instances: how many ``streammgr serve`` instances.
        serve_args: extra ``serve`` flags per instance (``cluster_args()``, limits),
            one sequence per instance; missing ones get none.
    """
    require_nginx()
    simulator_port = free_port()
    ports = [free_port() for _ in range(instances)]
    port = free_port()
    upstream = f"http://127.0.0.1:{simulator_port}/v1"
    processes: list[trio.Process] = []
    async with trio.open_nursery() as nursery:
        try:
            simulator: trio.Process = await nursery.start(
                _run_process,
                [sys.executable, str(SIMULATOR), "sim", "--port", str(simulator_port)],
                subprocess.DEVNULL,
            )
            processes.append(simulator)
            running = []
            for index, instance_port in enumerate(ports):
                extra = list(serve_args[index]) if index < len(serve_args) else []
                argv = [
                    "serve",
                    "--port",
                    str(instance_port),
                    "--upstream-url",
                    upstream,
                    "--log-format",
                    "json",
                    "--allowed-host",
                    f"127.0.0.1:{port}",
                    *extra,
                ]
                instance = await start_cli(nursery, argv, directory / f"serve-{index}.log")
                processes.append(instance)
                running.append(instance)
            (directory / "nginx.conf").write_text(nginx_config(directory, port, ports))
            nginx: trio.Process = await nursery.start(
                _run_nginx, [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")]
            )
            processes.append(nginx)
            await _wait_listening(simulator_port, simulator)
            for instance_port, instance in zip(ports, running, strict=True):
                await _wait_listening(instance_port, instance)
            await _wait_listening(port, nginx)
            yield Cluster(directory, simulator_port, ports, port, simulator, running, nginx)
        finally:
            with trio.CancelScope(shield=True):
                for process in reversed(processes):  # nginx, instances, simulator
                    await stop_process(process, signal.SIGTERM)
                nursery.cancel_scope.cancel()
    left = [pid for pid in (process.pid for process in processes) if pid_alive(pid)]
    assert not left, f"rig processes still running: {left}"
    assert not (directory / "nginx.pid").exists(), "nginx did not remove its pid file"


async def _run_nginx(
    command: list[str], *, task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED
) -> None:
    await trio.run_process(
        [*command, "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        env={**os.environ},
        task_status=task_status,
    )
