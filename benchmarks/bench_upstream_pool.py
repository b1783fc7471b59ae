"""The upstream pool alone: CPU to open a stream while 500 and 5,000 are held, httpx's
own pool against :class:`~streammgr.sources.ShardedTransport`.

Run it with::

    .venv/bin/python benchmarks/bench_upstream_pool.py             # 500 and 5,000 held, 3 repeats
    .venv/bin/python benchmarks/bench_upstream_pool.py --quick     # 200 and 2,000, 1 repeat
    .venv/bin/python benchmarks/bench_upstream_pool.py --held 500 5000 --opens 300 --repeats 5

The upstream is a tiny HTTP/1.1 server on raw Trio sockets, in its own process:
``/hold`` answers an event stream's headers and one event, then holds the stream
until the client leaves; ``/short`` answers one event and ends (keep-alive). Each
measurement runs in a fresh process (so tearing down thousands of streams is not
timed, and no contender inherits another's heap): it opens ``held`` streams on
one ``httpx.AsyncClient`` (no connection limit, every connection kept alive), then
opens ``--opens`` short streams one after another on the same client, each read to
its end and closed, and reports the process CPU per short stream (``time.process_time``,
garbage collection off during that loop: the pool is what is measured here, not the
collector, which bench_held_streams.py covers). The contenders take turns within
each repeat: ``plain`` (``httpx.AsyncClient(limits=...)``, one httpcore pool) and
``sharded`` (``ShardedTransport(limits=...)``, the same limits).

Printed: the median CPU per open for each contender and number held, and the ratio
open@max/open@min (the target for the whole gateway is 1.25x or less), and the
contenders' ratio at each number held. One run, one machine: compare ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
PYTHON = sys.executable

HOLD_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
)
CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
)
CHAT_HOLD_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    + f"{len(CHUNK):x}\r\n".encode()
    + CHUNK
    + b"\r\n"
)
CHAT_SHORT_BODY = CHUNK + b"data: [DONE]\n\n"
CHAT_SHORT = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    + f"content-length: {len(CHAT_SHORT_BODY)}\r\n\r\n".encode()
    + CHAT_SHORT_BODY
)
SHORT = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 9\r\n\r\ndata: 1\n\n"
)


def raise_nofile() -> None:
    """Raise this process's descriptor limit to its hard limit (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the upstream: its own process ---------------------------------------------------------


async def _upstream_connection(stream: trio.SocketStream) -> None:
    buffer = bytearray()
    with trio.move_on_after(3600):
        try:
            while True:
                while (end := buffer.find(b"\r\n\r\n")) < 0:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                body = bytes(buffer[:length])
                del buffer[:length]
                path = head.split(b" ", 2)[1]
                if path.endswith(b"/chat/completions"):  # through serve: the model says
                    hold = b'"hold"' in body
                    answer, held_head = CHAT_SHORT, CHAT_HOLD_HEAD
                else:
                    hold = path.startswith(b"/hold")
                    answer, held_head = SHORT, HOLD_HEAD
                if hold:
                    await stream.send_all(held_head)
                    while await stream.receive_some(65536):
                        pass  # held until the client leaves
                    return
                await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()


async def serve_upstream(port_file: Path) -> None:
    """Serve /hold and /short on a free port of 127.0.0.1; write the port to ``port_file``."""
    raise_nofile()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
    port = listeners[0].socket.getsockname()[1]
    await trio.Path(port_file).write_text(str(port))
    await trio.serve_listeners(_upstream_connection, listeners)


# -- one measurement: its own process ----------------------------------------------------


async def measure(contender: str, held: int, opens: int, port: int) -> dict[str, float]:
    """Hold ``held`` streams, then time ``opens`` short streams opened one at a time."""
    import httpx

    from streammgr.sources import ShardedTransport

    raise_nofile()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(60.0)
    if contender == "plain":
        client = httpx.AsyncClient(limits=limits, timeout=timeout)
    else:
        client = httpx.AsyncClient(transport=ShardedTransport(limits=limits), timeout=timeout)
    base = f"http://127.0.0.1:{port}"
    opened = 0
    all_open = trio.Event()

    async def hold(gate: trio.Semaphore) -> None:
        nonlocal opened
        async with gate:
            response = await client.send(client.build_request("GET", f"{base}/hold"), stream=True)
            chunks = response.aiter_raw()
            await chunks.__anext__()
        opened += 1
        if opened == held:
            all_open.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        gate = trio.Semaphore(200)  # connections in progress at once: no SYN overflow
        for _ in range(held):
            nursery.start_soon(hold, gate)
        started = time.monotonic()
        await all_open.wait()
        hold_seconds = time.monotonic() - started
        for _ in range(20):  # warm up: the short streams' connection, code paths
            await client.get(f"{base}/short")
        gc.collect()
        gc.disable()
        cpu = time.process_time()
        wall = time.monotonic()
        for _ in range(opens):
            async with client.stream("GET", f"{base}/short") as response:
                async for _chunk in response.aiter_raw():
                    pass
        cpu = time.process_time() - cpu
        wall = time.monotonic() - wall
        gc.enable()
        result = {
            "open_cpu_us": cpu / opens * 1e6,
            "open_wall_us": wall / opens * 1e6,
            "hold_seconds": hold_seconds,
        }
        print(json.dumps(result), flush=True)
        os._exit(0)  # tearing thousands of streams down is not measured
    raise AssertionError("unreachable")


# -- through streammgr serve: the orchestrator holds the streams, /proc gives serve's CPU --


SERVE_FLAGS = (
    "--max-streams",
    "none",
    "--max-streams-per-key",
    "none",
    "--max-waiting",
    "none",
    "--idle-timeout",
    "none",
    "--log-format",
    "json",
)


def chat_request(model: str, *, close: bool) -> bytes:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        + ("connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + body


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_serve(pid: int, port: int, held: int, opens: int) -> dict[str, float]:
    """Hold ``held`` chats through serve, then ``opens`` short chats one after another:
    serve's CPU per short chat."""
    hold_request = chat_request("hold", close=False)
    short_request = chat_request("short", close=True)
    opened = 0
    all_open = trio.Event()

    async def hold(gate: trio.Semaphore) -> None:
        nonlocal opened
        async with gate:  # hypercorn's listen backlog is 100
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(hold_request)
            seen = b""
            while b"data:" not in seen:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError(f"serve closed a held stream: {seen[:300]!r}")
                seen += data
        opened += 1
        if opened == held:
            all_open.set()
        async with stream:
            await trio.sleep_forever()

    async def short() -> None:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(short_request)
            seen = b""
            while data := await stream.receive_some(65536):
                seen += data
            if b"[DONE]" not in seen:
                raise RuntimeError(f"a short chat did not end well: {seen[:300]!r}")

    async with trio.open_nursery() as nursery:
        gate = trio.Semaphore(50)
        for _ in range(held):
            nursery.start_soon(hold, gate)
        started = time.monotonic()
        await all_open.wait()
        hold_seconds = time.monotonic() - started
        for _ in range(20):
            await short()
        cpu = cpu_seconds(pid)
        wall = time.monotonic()
        for _ in range(opens):
            await short()
        cpu = cpu_seconds(pid) - cpu
        wall = time.monotonic() - wall
        nursery.cancel_scope.cancel()
    return {
        "open_cpu_us": cpu / opens * 1e6,
        "open_wall_us": wall / opens * 1e6,
        "hold_seconds": hold_seconds,
    }


def run_serve_measurement(
    pythonpath: str, upstream_port: int, held: int, opens: int
) -> dict[str, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    command = [PYTHON, "-m", "streammgr", "serve", "--port", str(port)]
    command += ["--upstream-url", upstream_url, *SERVE_FLAGS]
    serve = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONPATH": pythonpath},
        cwd=pythonpath,  # `python -m` puts the working directory first on sys.path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise SystemExit("streammgr serve did not start") from None
                time.sleep(0.1)
        return trio.run(measure_serve, serve.pid, port, held, opens)
    finally:
        serve.kill()
        serve.wait()


def baseline_tree(revision: str) -> str:
    """A directory holding ``streammgr/`` as of ``revision`` (git archive)."""
    directory = Path(f"/tmp/bench_upstream_pool.base.{os.getpid()}")
    directory.mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "streammgr"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return str(directory)


# -- the orchestrator ----------------------------------------------------------------------


def run_measurement(contender: str, held: int, opens: int, port: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [PYTHON, str(HERE), "--measure", contender, str(held), str(opens), str(port)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{contender} @ {held} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, nargs="+", default=None)
    parser.add_argument("--opens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--through-serve",
        metavar="BASE_REVISION",
        help="measure `streammgr serve` instead of the pool alone: this tree against "
        "BASE_REVISION's (a git revision, e.g. main), serve's CPU from /proc",
    )
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--serve-upstream", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream is not None:
        trio.run(serve_upstream, args.serve_upstream)
        return
    if args.measure is not None:
        contender, held, opens, port = args.measure
        trio.run(measure, contender, int(held), int(opens), int(port))
        return
    held_counts = args.held or ([200, 2000] if args.quick else [500, 5000])
    repeats = 1 if args.quick else args.repeats
    raise_nofile()
    if args.through_serve is not None:
        paths = {"plain": baseline_tree(args.through_serve), "sharded": str(ROOT)}
        contenders = ["plain", "sharded"]  # serve at BASE_REVISION, serve here
    else:
        paths = {}
        contenders = ["plain", "sharded"]
    port_file = Path(f"/tmp/bench_upstream_pool.{os.getpid()}.port")
    upstream = subprocess.Popen([PYTHON, str(HERE), "--serve-upstream", str(port_file)])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise SystemExit("the upstream did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        with socket.create_connection(("127.0.0.1", port)):
            pass
        if paths:
            print(
                f"through streammgr serve: plain = {args.through_serve}'s serve "
                f"(httpx's pool), sharded = this tree's (ShardedTransport)"
            )
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load "
            f"{os.getloadavg()[0]:.2f}; {args.opens} opens per measurement, {repeats} repeat(s), "
            f"contenders taking turns"
        )
        results: dict[tuple[str, int], list[float]] = {}
        for repeat in range(repeats):
            for held in held_counts:
                for contender in contenders:
                    if paths:
                        result = run_serve_measurement(paths[contender], port, held, args.opens)
                    else:
                        result = run_measurement(contender, held, args.opens, port)
                    results.setdefault((contender, held), []).append(result["open_cpu_us"])
                    print(
                        f"  repeat {repeat + 1}: {contender:<8} {held:>6} held: "
                        f"{result['open_cpu_us']:8.0f} us CPU per open "
                        f"({result['open_wall_us']:.0f} us wall; held in "
                        f"{result['hold_seconds']:.1f}s)",
                        flush=True,
                    )
    finally:
        upstream.terminate()
        upstream.wait()
        port_file.unlink(missing_ok=True)
    low, high = min(held_counts), max(held_counts)
    print(f"\nCPU per open, median of {repeats} (range):")
    for contender in contenders:
        cells = []
        for held in held_counts:
            values = results[(contender, held)]
            cells.append(
                f"{held} held {statistics.median(values):7.0f} us "
                f"({min(values):.0f}-{max(values):.0f})"
            )
        ratio = statistics.median(results[(contender, high)]) / statistics.median(
            results[(contender, low)]
        )
        print(f"  {contender:<8} " + "; ".join(cells) + f"; open@{high}/open@{low} {ratio:.2f}x")
    for held in held_counts:
        ratio = statistics.median(results[("plain", held)]) / statistics.median(
            results[("sharded", held)]
        )
        print(f"  plain/sharded at {held} held: {ratio:.2f}x")


if __name__ == "__main__":
    main()
