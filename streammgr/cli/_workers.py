"""``streammgr serve --workers N``: N worker processes accepting on one port, supervised.

The parent binds the listening socket(s) once, so ``--port 0`` and a port in use are
answered once, then starts N fresh interpreters (``python -m streammgr.cli._workers``)
that inherit the sockets (``pass_fds``) and accept on them: each new connection goes
to one worker waiting in ``accept``. Fresh interpreters, not ``fork``: the parent runs
Trio, and a forked child would inherit its run loop. Not ``SO_REUSEPORT``: it needs a
port chosen before binding (no ``--port 0``), and any process of the same user could
join the group.

Between the parent and a worker, over the worker's stdin and stdout:

- the parent writes one JSON line (the settings, the inherited descriptors, the
  worker's number) and keeps stdin open: its end, seen by the worker, means the
  parent is gone, and the worker stops gracefully as on SIGTERM;
- the worker writes ``listening`` on stdout once it accepts connections.

Workers run in their own session, so a terminal's Ctrl-C reaches the parent only,
which sends one SIGTERM to each worker: each runs the gateway's graceful shutdown.
A second signal to the parent sends a second SIGTERM (each worker stops at once) and
the exit code is 1. A worker that exits while serving is logged
(``workers.worker_exited``) and replaced after :data:`RESTART_DELAY`; one that ends
before it listens (at start, or a replacement) stops every worker: exit code 1.

Each worker's logs carry ``worker`` (its number) and ``pid``; its inspection API
answers for that worker alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import structlog
import trio

from ._logging import configure_logging
from ._run import ServeSettings, first_leaf, listen_error_message, run_serve

__all__ = ["RESTART_DELAY", "available_cores", "check_workers", "run_workers", "worker_settings"]

RESTART_DELAY = 1.0
"""Seconds before a worker that exited while serving is replaced (bounds a crash loop
to one start a second)."""

START_TIMEOUT = 60.0
"""Seconds a worker may take to import and listen (a loaded machine is slow)."""

_STOP_TIMEOUT = 5.0  # after the workers' own grace: then they are killed
_WORKER_MODULE = "streammgr.cli._workers"
_LISTENING = b"listening\n"
_BACKLOG = 1024  # as serve_service's: a burst of connects is not dropped


def check_workers(workers: int, redis_url: str | None) -> None:
    """Refuse ``--workers`` above 1 without ``--redis-url``.

    Raises:
        ValueError: one line naming ``--redis-url`` (the command line exits with 2).
    """
    if workers > 1 and redis_url is None:
        raise ValueError(
            f"--workers {workers} needs --redis-url: without Redis each worker would "
            f"enforce its own limits ({workers} times --max-streams); pass "
            f"--redis-url redis://HOST:PORT, or use --workers 1"
        )


def worker_settings(settings: ServeSettings, workers: int, number: int) -> ServeSettings:
    """Worker ``number``'s settings: with several workers, a given ``--instance-id``
    becomes ``<id>-w<number>`` (one id for N instances would make one snapshot
    overwrite the others in the cluster registry, count N instances as one, and send
    a cancel of a sibling's stream nowhere). The default (``None``: ``host:pid``) is
    already distinct per worker."""
    if workers <= 1 or settings.instance_id is None:
        return settings
    return dataclasses.replace(settings, instance_id=f"{settings.instance_id}-w{number}")


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _WorkerFailedError(Exception):
    """A worker ended before it listened."""

    def __init__(self, number: int, code: int | None) -> None:
        super().__init__(f"worker {number} ended before it listened (exit code {code})")
        self.number = number
        self.code = code


def _url(sock: trio.socket.SocketType, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    return (
        f"{scheme}://[{host}]:{port}"
        if sock.family == socket.AF_INET6
        else f"{scheme}://{host}:{port}"
    )


class _Supervisor:
    """The parent's side: starts, watches, replaces and stops the workers."""

    def __init__(self, settings: ServeSettings, workers: int, fds: list[int]) -> None:
        self.settings = settings
        self.workers = workers
        self.fds = fds
        self.processes: dict[int, trio.Process] = {}
        self.stopping = False
        self.failed = False
        self.log = structlog.get_logger("streammgr.cli")

    def payload(self, number: int) -> bytes:
        fields = dataclasses.asdict(worker_settings(self.settings, self.workers, number))
        line = json.dumps({"settings": fields, "fds": self.fds, "worker": number})
        return line.encode() + b"\n"

    def signal_all(self, number: int) -> None:
        for process in list(self.processes.values()):
            if process.returncode is None:
                process.send_signal(number)

    async def start(self, number: int) -> trio.Process:
        """One worker, once it listens.

        Raises:
            _WorkerFailedError: it ended (or hung) before it listened.
        """
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", _WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=self.fds,
            start_new_session=True,  # Ctrl-C reaches the parent only
        )
        self.processes[number] = process
        assert process.stdin is not None
        assert process.stdout is not None
        line = b""
        with trio.move_on_after(START_TIMEOUT):
            try:
                await process.stdin.send_all(self.payload(number))
                while not line.endswith(b"\n"):
                    data = await process.stdout.receive_some(64)
                    if not data:
                        break
                    line += data
            except trio.BrokenResourceError:
                pass
        if line != _LISTENING:
            with trio.CancelScope(shield=True):
                process.kill()
                await _close(process)
            self.processes.pop(number, None)
            raise _WorkerFailedError(number, process.returncode)
        await process.stdout.aclose()
        return process

    async def keep(self, number: int, task_status: trio.TaskStatus[int]) -> None:
        """Run worker ``number`` until the parent stops; replace it when it exits."""
        started = False
        while not (started and self.stopping):  # stopping while replacing it: done
            try:
                process = await self.start(number)
            except _WorkerFailedError:
                if self.stopping:
                    return
                raise
            if not started:
                task_status.started(process.pid)
                started = True
            else:
                self.log.info("workers.worker_replaced", worker=number, pid=process.pid)
            if self.stopping:  # a signal came while it started
                process.send_signal(signal.SIGTERM)
            try:
                code = await process.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await self.stop_one(number, process)
            if self.stopping:
                if code != 0:
                    self.failed = True
                    self.log.error(
                        "workers.worker_failed", worker=number, pid=process.pid, code=code
                    )
                return
            self.log.error(
                "workers.worker_exited",
                worker=number,
                pid=process.pid,
                code=code,
                replaced_in=RESTART_DELAY,
            )
            await trio.sleep(RESTART_DELAY)

    async def stop_one(self, number: int, process: trio.Process) -> None:
        """Make sure the worker has exited (terminated, then killed), pipes closed."""
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.settings.shutdown_grace + _STOP_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            process.kill()
        await _close(process)
        self.processes.pop(number, None)


async def _close(process: trio.Process) -> None:
    """Close a process's pipes and reap it (killed or exited already)."""
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            await pipe.aclose()
    await process.wait()


async def run_workers(settings: ServeSettings, workers: int) -> int:
    """``streammgr serve --workers N`` (N above 1): the supervising parent.

    Binds ``settings.host`` and ``settings.port`` once, starts ``workers`` worker
    processes accepting on them, and serves until SIGINT or SIGTERM (see the module's
    docstring).

    Returns:
        The exit code: 0 when every worker stopped gracefully, 1 otherwise (the
        address could not be listened on, a worker failed to start, a second signal).
    """
    configure_logging(settings.log_format)
    log = structlog.get_logger("streammgr.cli")
    cores = available_cores()
    if workers > cores:
        log.warning("workers.more_than_cores", workers=workers, cores=cores)
    try:
        listeners = await trio.open_tcp_listeners(
            settings.port, host=settings.host, backlog=_BACKLOG
        )
    except OSError as exc:
        message = listen_error_message(exc, settings.host, settings.port)
        log.error("gateway.cannot_listen", error=message)  # noqa: TRY400 - no traceback
        return 1
    sockets = [listener.socket for listener in listeners]
    supervisor = _Supervisor(settings, workers, [sock.fileno() for sock in sockets])
    forced = False
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    nonlocal forced
                    async for number in signals:
                        name = signal.Signals(number).name
                        if not supervisor.stopping:
                            log.info("workers.stopping", signal=name)
                            supervisor.stopping = True
                            for sock in sockets:  # nothing queues for no one
                                sock.close()
                        else:
                            log.warning("workers.stopped_at_once", signal=name)
                            forced = True
                        supervisor.signal_all(signal.SIGTERM)

                nursery.start_soon(watch_signals)
                try:
                    async with trio.open_nursery() as keeping:
                        pids: dict[int, int] = {}

                        async def start_one(number: int) -> None:
                            pids[number] = await keeping.start(supervisor.keep, number)

                        async with trio.open_nursery() as starting:  # all at once
                            for number in range(workers):
                                starting.start_soon(start_one, number)
                        if not supervisor.stopping:
                            scheme = "http" if settings.certfile is None else "https"
                            urls = [_url(sock, scheme) for sock in sockets]
                            log.info("workers.listening", urls=urls, workers=sorted(pids.values()))
                except* _WorkerFailedError as group:
                    failure = first_leaf(group)  # nested: the starting nursery's
                    assert isinstance(failure, _WorkerFailedError)
                    log.error(  # noqa: TRY400 - the code says it: no traceback
                        "workers.failed", worker=failure.number, code=failure.code
                    )
                    supervisor.failed = True
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for number, process in list(supervisor.processes.items()):
                await supervisor.stop_one(number, process)
        for sock in sockets:
            sock.close()
    if forced or supervisor.failed:
        return 1
    log.info("workers.stopped")
    return 0


# -- the worker's side -----------------------------------------------------------------


def _announce(urls: list[str]) -> None:
    """Tell the parent this worker listens; stdout is not used after."""
    os.write(1, _LISTENING)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


async def _watch_parent() -> None:
    """Stop gracefully (as on SIGTERM) when the parent's end of stdin closes."""
    async with trio.lowlevel.FdStream(os.dup(0)) as parent:
        while await parent.receive_some(4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


async def _serve_as_worker(
    settings: ServeSettings, sockets: Sequence[socket.socket], number: int
) -> int:
    structlog.contextvars.bind_contextvars(worker=number, pid=os.getpid())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_parent)
        code = await run_serve(settings, sockets=sockets, on_listening=_announce)
        nursery.cancel_scope.cancel()
    return code


def _settings(fields: dict[str, Any]) -> ServeSettings:
    as_given: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()
    }
    return ServeSettings(**as_given)


def worker_main() -> int:
    """A worker's entry point: the parent's JSON line on stdin, then the gateway."""
    line = sys.stdin.buffer.readline()
    if not line:
        print("streammgr: a worker is started by streammgr serve --workers", file=sys.stderr)
        return 2
    payload = json.loads(line)
    sockets = [socket.socket(fileno=fd) for fd in payload["fds"]]
    return trio.run(_serve_as_worker, _settings(payload["settings"]), sockets, payload["worker"])


if __name__ == "__main__":
    sys.exit(worker_main())
