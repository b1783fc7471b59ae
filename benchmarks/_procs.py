"""Shared pieces of the process benchmarks (bench_gateway, bench_held_streams, bench_litellm).

Nothing here is timed in the orchestrating process: every server and every client
runs in its own process, started from this file, and the orchestrator only waits
for them and reads their CPU time and memory from ``/proc``.

Run as a script, it is one of those processes::

    python benchmarks/_procs.py sim --port P            # the stamping simulator
    python benchmarks/_procs.py relay --port P --upstream http://127.0.0.1:S/v1
    python benchmarks/_procs.py gateway-lib --port P [--upstream http://...]
    python benchmarks/_procs.py fastapi --port P --upstream http://127.0.0.1:S/v1
    python benchmarks/_procs.py client --spec spec.json --out result.json

- ``sim``: streammgr's :class:`~streammgr.simulate.SimulatedUpstream` served by
  hypercorn's trio worker, wrapped so that it stamps each body message with
  ``time.monotonic()`` just before handing it to ``send``, keyed by the request's
  ``streammgr_simulate.seed`` (every benchmark stream has its own seed). ``GET
  /bench/stamps`` returns and forgets them, ``GET /bench/stats`` returns the
  simulator's :class:`~streammgr.simulate.ConnectionStats`. ``CLOCK_MONOTONIC`` is
  one clock for every process of the machine, so a client can subtract a stamp
  from its own arrival time.
- ``relay``: the relay floor: the least a proxy on this stack (hypercorn on Trio,
  httpx) can do: read the request, open the upstream request with httpx, forward
  each upstream read in one ``send``. No manager, no parsing, no checks.
- ``gateway-lib``: streammgr's gateway, built as ``streammgr serve`` builds it, but
  with an httpx pool without a connection limit (the CLI's client keeps httpx's
  default of 100 connections; see docs/performance.md).
- ``fastapi``: the relay a user writes by hand on the asyncio stack
  (``benchmarks/_fastapi_relay.py``): a FastAPI route returning a
  ``StreamingResponse`` over httpx's ``client.stream(...).aiter_raw()``, served by
  uvicorn with uvloop (one process, h11 as its HTTP parser: uvicorn's ``httptools``
  is not installed; access log off, as the relay floor's). uvicorn and uvloop come
  with the ``bench`` extra.
- ``nginx`` (:func:`nginx_proc`, not a role of this script): Debian's nginx, one
  worker process, ``proxy_buffering off``, upstream connections kept alive; its CPU
  and RSS are the master's and the worker's together (``Proc(tree=True)``).
- ``client``: opens streams over raw Trio sockets (HTTP/1.1, a tiny chunked and
  SSE reader), records the arrival time of every ``data:`` event, writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- processes, as the orchestrator sees them -------------------------------------------


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    """A ``redis-server`` on a free port (no persistence, files in ``directory``);
    returns the process and its URL. The caller kills it."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    args = [executable, "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--save", "", "--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"redis://127.0.0.1:{port}/0"
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("redis-server did not start within 10 s")
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" that ends the command name: state is field 3, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """The live processes under ``pid`` (children, their children...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` and every live process under it."""
    total = cpu_seconds(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def tree_rss_kib(pid: int) -> int:
    """:func:`rss_kib` of ``pid`` and every live process under it."""
    total = rss_kib(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += rss_kib(child)
    return total


def rss_kib(pid: int) -> int:
    """Resident memory of a process now, KiB (``/proc/<pid>/statm``)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB


def established(port: int) -> int:
    """TCP connections in state ESTABLISHED with ``port`` as their local port."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                parts = line.split()
                local, state = parts[1], parts[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def load_average() -> str:
    """``uptime``'s three load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Proc:
    """A server process started by the orchestrator."""

    name: str
    args: list[str]
    port: int
    log: Path
    env: dict[str, str] | None = None
    start_timeout: float = 60.0
    # Count the processes it starts too (nginx's worker) in cpu() and rss().
    tree: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        """Start it and wait until its port accepts connections."""
        timeout = self.start_timeout
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode} before listening; "
                    f"its output ({self.log}):\n{self.log.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen on {self.port} in {timeout}s")
            time.sleep(0.05)  # polling a child process's port: nothing to wait on

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.popen is not None
        return self.popen.pid

    def cpu(self) -> float:
        """Its CPU seconds so far."""
        return tree_cpu_seconds(self.pid) if self.tree else cpu_seconds(self.pid)

    def rss(self) -> int:
        """Its resident memory now, KiB."""
        return tree_rss_kib(self.pid) if self.tree else rss_kib(self.pid)

    def stop(self) -> None:
        """SIGINT, then SIGKILL if it has not exited within 10 s."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def __enter__(self) -> Proc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sim_proc(workdir: Path, name: str = "sim") -> Proc:
    """The stamping simulator (not started)."""
    port = free_port()
    args = [PYTHON, str(HERE / "_procs.py"), "sim", "--port", str(port)]
    return Proc(name, args, port, workdir / f"{name}.log")


def relay_proc(workdir: Path, upstream: str) -> Proc:
    """The relay floor in front of ``upstream`` (not started)."""
    port = free_port()
    args = [PYTHON, str(HERE / "_procs.py"), "relay", "--port", str(port), "--upstream", upstream]
    return Proc("relay", args, port, workdir / "relay.log")


def fastapi_proc(workdir: Path, upstream: str) -> Proc:
    """The FastAPI relay on uvicorn + uvloop in front of ``upstream`` (not started)."""
    port = free_port()
    args = [PYTHON, str(HERE / "_procs.py"), "fastapi", "--port", str(port), "--upstream", upstream]
    return Proc("fastapi", args, port, workdir / "fastapi.log")


NGINX = "/usr/sbin/nginx"


def nginx_executable() -> str | None:
    """nginx's path, or None when it is not installed."""
    return shutil.which("nginx") or (NGINX if Path(NGINX).exists() else None)


def nginx_config(directory: Path, port: int, upstream_port: int) -> str:
    """nginx as a streaming reverse proxy on ``port`` in front of ``upstream_port``:
    one worker, ``proxy_buffering off``, upstream connections kept alive, no access
    log; every file it writes in ``directory``."""
    return f"""\
worker_processes 1;
worker_rlimit_nofile 65536;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    upstream simulator {{
        server 127.0.0.1:{upstream_port};
        keepalive 100;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def nginx_proc(workdir: Path, upstream: str) -> Proc | None:
    """nginx in front of ``upstream`` (``http://127.0.0.1:PORT/...``; not started), or
    None when nginx is not installed."""
    executable = nginx_executable()
    if executable is None:
        return None
    port = free_port()
    upstream_port = int(upstream.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    directory = workdir / "nginx"
    directory.mkdir(exist_ok=True)
    (directory / "nginx.conf").write_text(nginx_config(directory, port, upstream_port))
    args = [executable, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    args += ["-g", "daemon off;"]
    return Proc("nginx", args, port, workdir / "nginx.log", tree=True)


GATEWAY_FLAGS = (
    "--max-streams",
    "none",
    "--max-streams-per-key",
    "none",
    "--max-waiting",
    "none",
    "--log-format",
    "json",
)


def gateway_proc(workdir: Path, upstream: str | None, *, library: bool = False) -> Proc:
    """``python -m streammgr serve`` (or ``gateway-lib``, its pool unbounded), no limits."""
    port = free_port()
    if library:
        args = [PYTHON, str(HERE / "_procs.py"), "gateway-lib", "--port", str(port)]
        if upstream is not None:
            args += ["--upstream", upstream]
    else:
        args = [PYTHON, "-m", "streammgr", "serve", "--port", str(port), *GATEWAY_FLAGS]
        if upstream is not None:
            args += ["--upstream-url", upstream]
    name = "gateway-lib" if library else "gateway"
    return Proc(name, args, port, workdir / f"{name}.log")


def http_get_json(port: int, path: str) -> Any:
    """A GET on 127.0.0.1 (blocking; the orchestrator's own small requests)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body = ChunkedDecoder().feed(body)
    return json.loads(body)


# -- the client process ------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    """What one client process does: ``streams`` requests, each with its own seed."""

    port: int
    streams: int
    first_seed: int
    simulate: dict[str, Any]  # the streammgr_simulate field, without the seed
    connect_parallel: int = 64
    model: str = "sim-small"
    path: str = "/v1/chat/completions"
    hold: bool = False  # hold every stream until SIGUSR1, then leave mid-stream
    headers: tuple[tuple[str, str], ...] = ()
    include_usage: bool = False
    # Hold the connect slot until the response's headers (not just until the request
    # is sent): bounds the connections the server has not accepted yet, which
    # hypercorn's listen backlog (100) caps; past it the kernel drops them.
    parallel_until_headers: bool = False

    def to_json(self) -> str:
        """For the client process's ``--spec`` file."""
        return json.dumps({**self.__dict__, "headers": list(self.headers)})

    @staticmethod
    def from_json(text: str) -> ClientSpec:
        """From a ``--spec`` file."""
        data = json.loads(text)
        data["headers"] = tuple(tuple(pair) for pair in data["headers"])
        return ClientSpec(**data)


class ChunkedDecoder:
    """An incremental decoder of an HTTP/1.1 chunked body (trailers ignored)."""

    __slots__ = ("_buffer", "_left", "_need_crlf", "done")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._left = 0
        self._need_crlf = False
        self.done = False

    def feed(self, data: bytes | bytearray) -> bytes:
        """Body bytes decoded from ``data`` (with what was left from before)."""
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while not self.done:
            if self._left:
                take = min(self._left, len(buffer))
                out += buffer[:take]
                del buffer[:take]
                self._left -= take
                if self._left:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(buffer) < 2:
                    break
                del buffer[:2]
                self._need_crlf = False
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(buffer[:end]).split(b";")[0], 16)
            del buffer[: end + 2]
            if size == 0:
                self.done = True
            self._left = size
        return bytes(out)


@dataclass
class StreamResult:
    """One stream as the client saw it."""

    seed: int
    start: float = 0.0  # monotonic, just before connecting
    status: int = 0
    arrivals: list[float] = field(default_factory=list)  # one per data: event
    reads: int = 0  # socket reads that completed at least one data: event
    done: bool = False  # saw data: [DONE]
    errors: int = 0  # data events holding "error"
    retry_after: str | None = None
    failure: str | None = None


async def _read_head(stream: trio.SocketStream, head: bytearray) -> None:
    while head.find(b"\r\n\r\n") < 0:
        data = await stream.receive_some(65536)
        if not data:
            return
        head += data


async def _one_stream(
    spec: ClientSpec, seed: int, connect: trio.Semaphore, result: StreamResult
) -> None:
    simulate = {**spec.simulate, "seed": seed}
    payload: dict[str, Any] = {
        "model": spec.model,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "streammgr_simulate": simulate,
    }
    if spec.include_usage:
        payload["stream_options"] = {"include_usage": True}
    body = json.dumps(payload, separators=(",", ":")).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in spec.headers)
    request = (
        f"POST {spec.path} HTTP/1.1\r\nHost: 127.0.0.1:{spec.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
        f"Connection: close\r\n\r\n"
    ).encode() + body
    monotonic = time.monotonic
    arrivals = result.arrivals
    async with connect:
        result.start = monotonic()
        stream = await trio.open_tcp_stream("127.0.0.1", spec.port)
        await stream.send_all(request)
        head = bytearray()
        if spec.parallel_until_headers:
            await _read_head(stream, head)
    async with stream:
        if not spec.parallel_until_headers:
            await _read_head(stream, head)
        end = head.find(b"\r\n\r\n")
        if end < 0:
            result.failure = "closed before the headers"
            return
        rest = head[end + 4 :]
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        result.status = int(lines[0].split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        result.retry_after = headers.get("retry-after")
        if result.status != 200:  # keep the start of the error body
            while len(rest) < 2000 and (data := await stream.receive_some(65536)):
                rest += data
            result.failure = bytes(rest[:300]).decode("utf-8", "replace")
            return
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        decoder = ChunkedDecoder()
        pending = b""
        data = bytes(rest)
        while True:
            if data:
                now = monotonic()
                pending += decoder.feed(data) if chunked else data
                if b"\n\n" in pending:
                    *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
                    result.reads += 1
                    for event in events:
                        if event.startswith(b"data:"):
                            arrivals.append(now)
                            if b"[DONE]" in event:
                                result.done = True
                            elif b'"error"' in event:
                                result.errors += 1
                if chunked and decoder.done:
                    return
            data = await stream.receive_some(65536)
            if not data:
                if chunked and not decoder.done:
                    result.failure = "the body ended before its last chunk"
                return


async def run_client(spec: ClientSpec) -> list[StreamResult]:
    """Run every stream of ``spec`` at once (``connect_parallel`` connecting at a time)."""
    connect = trio.Semaphore(spec.connect_parallel)
    results = [StreamResult(spec.first_seed + index) for index in range(spec.streams)]

    async def guarded(result: StreamResult) -> None:
        try:
            await _one_stream(spec, result.seed, connect, result)
        except (OSError, trio.BrokenResourceError) as exc:
            result.failure = f"{type(exc).__name__}: {exc}"

    async def leave_on_signal(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                scope.cancel()  # every stream leaves mid-stream: its socket closes
                return

    async with trio.open_nursery() as outer:
        if spec.hold:
            outer.start_soon(leave_on_signal, outer.cancel_scope)
        async with trio.open_nursery() as nursery:
            for result in results:
                nursery.start_soon(guarded, result)
        outer.cancel_scope.cancel()
    return results


def client_proc_args(spec_path: Path, out_path: Path) -> list[str]:
    """The command line of a client process."""
    return [
        PYTHON,
        str(HERE / "_procs.py"),
        "client",
        "--spec",
        str(spec_path),
        "--out",
        str(out_path),
    ]


@dataclass
class ClientRun:
    """Client processes started together; :meth:`wait` collects their results."""

    popens: list[subprocess.Popen[bytes]]
    outs: list[Path]

    def signal(self, number: int) -> None:
        """Send a signal to every client process (SIGUSR1: leave every held stream)."""
        for popen in self.popens:
            if popen.poll() is None:
                popen.send_signal(number)

    def wait(self, timeout: float) -> list[StreamResult]:
        """Every stream's result, once every client process has exited."""
        results: list[StreamResult] = []
        for popen, out in zip(self.popens, self.outs, strict=True):
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
                raise RuntimeError(f"a client process ran past {timeout}s") from None
            if popen.returncode != 0:
                raise RuntimeError(f"a client process failed ({popen.returncode})")
            results += [StreamResult(**item) for item in json.loads(out.read_text())]
        return results


def start_clients(workdir: Path, specs: Sequence[ClientSpec], tag: str) -> ClientRun:
    """Start one client process per spec."""
    popens: list[subprocess.Popen[bytes]] = []
    outs: list[Path] = []
    for index, spec in enumerate(specs):
        spec_path = workdir / f"client-{tag}-{index}.json"
        out = workdir / f"result-{tag}-{index}.json"
        spec_path.write_text(spec.to_json())
        log = open(workdir / f"client-{tag}-{index}.log", "wb")  # noqa: SIM115
        popens.append(
            subprocess.Popen(client_proc_args(spec_path, out), stdout=log, stderr=log, cwd=ROOT)
        )
        log.close()
        outs.append(out)
    return ClientRun(popens, outs)


def split_specs(spec: ClientSpec, processes: int) -> list[ClientSpec]:
    """``spec``'s streams shared among ``processes`` clients (seeds kept distinct)."""
    specs: list[ClientSpec] = []
    base, extra = divmod(spec.streams, processes)
    seed = spec.first_seed
    for index in range(processes):
        count = base + (1 if index < extra else 0)
        if count:
            specs.append(ClientSpec(**{**spec.__dict__, "streams": count, "first_seed": seed}))
        seed += count
    return specs


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


# -- the server processes ---------------------------------------------------------------


class StampingApp:
    """The simulator, stamping every body message it sends (see the module docstring)."""

    def __init__(self) -> None:
        from streammgr.simulate import SimulatedUpstream

        self.upstream = SimulatedUpstream()
        self.stamps: dict[int, list[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/bench/"):
            await self._bench(scope, send)
            return
        if scope["type"] != "http":
            await self.upstream(scope, receive, send)
            return
        stamps: list[float] = []
        monotonic = time.monotonic

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not stamps:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    seed = json.loads(message["body"])["streammgr_simulate"]["seed"]
                    self.stamps[int(seed)] = stamps
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                stamps.append(monotonic())
            await send(message)

        await self.upstream(scope, receiving, sending)

    async def _bench(self, scope: Scope, send: Send) -> None:
        if scope["path"] == "/bench/stamps":
            stamps, self.stamps = self.stamps, {}
            body = json.dumps(stamps).encode()
        else:
            stats = self.upstream.stats()
            body = json.dumps({name: getattr(stats, name) for name in stats.__slots__}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def relay_app(upstream: str) -> App:
    """The relay floor (see the module docstring)."""
    import httpx

    client: httpx.AsyncClient | None = None
    url = upstream.rstrip("/") + "/chat/completions"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal client
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    client = httpx.AsyncClient(
                        timeout=None,
                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if client is not None:
                        await client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert client is not None
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        async with client.stream("POST", url, content=body, headers=headers) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _serve_hypercorn(app: App, port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    # As serve_service's: hypercorn's backlog of 100 drops a burst of connects (the
    # gateway opening 1,000 upstream connections at once), which then wait for a SYN
    # retransmission.
    config.backlog = 1024
    stop = trio.Event()

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def _serve_gateway_lib(port: int, upstream_url: str | None) -> None:
    """``streammgr serve``'s service with no limits, and an unbounded httpx pool."""
    import httpx
    import structlog

    import streammgr
    from streammgr.server import ServiceOptions, build_service_app, serve_service
    from streammgr.simulate import SimulatedTransport, SimulatedUpstream
    from streammgr.sources import SourceTimeouts

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    transport: httpx.AsyncBaseTransport | None = None
    if upstream_url is None:
        transport = SimulatedTransport(SimulatedUpstream())
        upstream_url = "http://simulated-upstream.invalid/v1"
    manager = streammgr.StreamManager(
        max_streams=None, max_streams_per_key=None, max_waiting=None, acquire_timeout=5.0
    )
    options = ServiceOptions(upstream_url=upstream_url, upstream_timeouts=SourceTimeouts(30.0))
    timeout = httpx.Timeout(connect=30.0, read=None, write=30.0, pool=30.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
    stop = trio.Event()

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                return

    async with (
        httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits) as client,
        trio.open_nursery() as nursery,
    ):
        app = build_service_app(manager, client, options, acquire_timeout=5.0)
        nursery.start_soon(on_signal)
        await serve_service(app, manager, port=port, shutdown_trigger=stop.wait, grace=1.0)
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    """The server and client processes' entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["sim", "relay", "gateway-lib", "fastapi", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream")
    parser.add_argument("--spec", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    raise_nofile()
    if args.role == "sim":
        trio.run(_serve_hypercorn, StampingApp(), args.port)
    elif args.role == "relay":
        trio.run(_serve_hypercorn, relay_app(args.upstream), args.port)
    elif args.role == "gateway-lib":
        trio.run(_serve_gateway_lib, args.port, args.upstream)
    elif args.role == "fastapi":
        import _fastapi_relay

        _fastapi_relay.serve(args.upstream, args.port)
    else:
        spec = ClientSpec.from_json(args.spec.read_text())
        results = trio.run(run_client, spec)
        args.out.write_text(json.dumps([result.__dict__ for result in results]))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
