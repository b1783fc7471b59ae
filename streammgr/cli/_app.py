"""The ``streammgr`` command (cyclopts, async commands on Trio): serve, simulate, demo,
top (a Textual app on asyncio).

Every flag of ``serve`` can also be set through an environment variable named
``STREAMMGR_`` and the flag in capitals (``--max-streams`` → ``STREAMMGR_MAX_STREAMS``);
a flag on the command line wins. A bad value is a one-line error on stderr naming
the flag and what it accepts, with exit code 2.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from typing import Annotated, Literal

import cyclopts
from cyclopts import Parameter

from .. import __version__
from .._gc import parse_gc_interval, parse_gc_threshold
from .._malloc import parse_malloc_trim
from .._options import OPTIONS
from .._validate import check_lease_ttl, check_seconds
from ._logging import LogFormat
from ._top import Column

__all__ = ["UsageError", "app", "main"]


class UsageError(Exception):
    """A flag's value cannot be used (found after parsing): exit code 2."""


def _env(flag: str) -> Parameter:
    return Parameter(env_var=f"STREAMMGR_{flag.upper()}")


def _port(type_: object, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("Accepts a TCP port, 0 to 65535 (0: any free port)")


def _for_people(text: str) -> str:
    """An option's doc or message as the command line says it: ``None`` is "none"."""
    text = text.replace("``None``", "none").replace("None", "none").replace("``", "")
    return text[:1].upper() + text[1:]


def _option(name: str) -> Parameter:
    """The flag of a manager option: its variable, check and help come from its one
    definition in ``streammgr._options``, so the command refuses what the library
    would refuse, with the same words."""
    option = OPTIONS[name]

    def validate(type_: object, value: object) -> None:
        try:
            option.check(name, value)
        except (TypeError, ValueError) as exc:
            # "max_streams must be ...": the flag is named before it, by cyclopts.
            raise ValueError(_for_people(str(exc).removeprefix(f"{name} "))) from None

    return Parameter(
        env_var=f"STREAMMGR_{name.upper()}", validator=validate, help=_for_people(option.doc)
    )


def _seconds(type_: object, value: float | None) -> None:
    """A server setting in seconds, checked as the library checks every timeout."""
    try:
        check_seconds("value", value)
    except (TypeError, ValueError) as exc:
        raise ValueError(_for_people(str(exc).removeprefix("value "))) from None


def _url(type_: object, value: str | None) -> None:
    if value is None:
        return
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError(
            "Accepts an http:// or https:// base URL, as the openai SDK takes it, "
            "e.g. https://api.openai.com/v1"
        )


def _origin(type_: object, value: tuple[str, ...]) -> None:
    for origin in value:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(
                f"Accepts an origin such as https://app.example.com, or *; got {origin}"
            )


def _lease_ttl(type_: object, value: float) -> None:
    try:
        check_lease_ttl(value)  # the library's own check, with its words
    except (TypeError, ValueError) as exc:
        raise ValueError(_for_people(str(exc).removeprefix("lease_ttl "))) from None


_HOST_ENTRY = re.compile(r"\*|\[[0-9A-Fa-f:.]+\](:\d{1,5})?|[A-Za-z0-9_.-]+\.?(:\d{1,5})?")


def _allowed_host(type_: object, value: tuple[str, ...]) -> None:
    for host in value:
        if not _HOST_ENTRY.fullmatch(host):
            raise ValueError(
                f"Accepts a host name or address with an optional port, as clients write it "
                f"in the URL (api.example.com, api.example.com:8443, [fd00::5]), or *; got {host}"
            )


def _gc_threshold(type_: object, value: str) -> None:
    parse_gc_threshold(value)  # the library's own check, with its words


def _gc_interval(type_: object, value: str) -> None:
    parse_gc_interval(value)


def _malloc_trim(type_: object, value: str) -> None:
    parse_malloc_trim(value)


def _workers(type_: object, value: int) -> None:
    if value < 1:
        raise ValueError("Accepts a whole number of worker processes, at least 1")


app = cyclopts.App(
    name="streammgr",
    help="Run many streaming responses at once, safely.",
    version=__version__,
    backend="trio",
)


@app.command
async def serve(
    *,
    host: Annotated[str, _env("host")] = "127.0.0.1",
    port: Annotated[int, _env("port"), Parameter(validator=_port)] = 8000,
    upstream_url: Annotated[str | None, _env("upstream_url"), Parameter(validator=_url)] = None,
    upstream_api_key_env: Annotated[str | None, _env("upstream_api_key_env")] = None,
    # The manager's options (streammgr/_options.py): defaults as tests/test_options.py
    # checks them against the table.
    max_streams: Annotated[int | None, _option("max_streams")] = 100,
    max_streams_per_key: Annotated[int | None, _option("max_streams_per_key")] = 10,
    max_waiting: Annotated[int | None, _option("max_waiting")] = 100,
    acquire_timeout: Annotated[float | None, _option("acquire_timeout")] = 5.0,
    reader_timeout: Annotated[float | None, _option("reader_timeout")] = 30.0,
    idle_timeout: Annotated[float | None, _option("idle_timeout")] = 60.0,
    shutdown_grace: Annotated[float, _option("shutdown_grace")] = 5.0,
    key_header: Annotated[str | None, _env("key_header")] = None,
    admin_token: Annotated[str | None, _env("admin_token")] = None,
    cors_origin: Annotated[
        tuple[str, ...], _env("cors_origin"), Parameter(validator=_origin, negative="")
    ] = (),
    log_format: Annotated[LogFormat, _env("log_format")] = "console",
    allowed_host: Annotated[
        tuple[str, ...],
        Parameter(env_var="STREAMMGR_ALLOWED_HOSTS", validator=_allowed_host, negative=""),
    ] = (),
    access_log: Annotated[bool, _env("access_log"), Parameter(negative="")] = False,
    body_timeout: Annotated[
        float | None, _env("body_timeout"), Parameter(validator=_seconds)
    ] = 15.0,
    # Cluster mode (streammgr.cluster, extra cluster): not manager options of
    # streammgr/_options.py (no other layer takes them), so defined here.
    # Checked below, not by a validator: cyclopts would quote the value (a password).
    redis_url: Annotated[str | None, _env("redis_url")] = None,
    lease_ttl: Annotated[float, _env("lease_ttl"), Parameter(validator=_lease_ttl)] = 3.0,
    instance_id: Annotated[str | None, _env("instance_id")] = None,
    redis_fault_policy: Annotated[
        Literal["fail-closed", "local"], _env("redis_fault_policy")
    ] = "fail-closed",
    workers: Annotated[int, _env("workers"), Parameter(validator=_workers)] = 1,
    # The process's garbage collector (streammgr/_gc.py): not a manager option.
    gc_threshold: Annotated[str, _env("gc_threshold"), Parameter(validator=_gc_threshold)] = (
        "server"
    ),
    gc_interval: Annotated[str, _env("gc_interval"), Parameter(validator=_gc_interval)] = "0.05",
    malloc_trim: Annotated[str, _env("malloc_trim"), Parameter(validator=_malloc_trim)] = "10",
    certfile: Annotated[str | None, _env("certfile")] = None,
    keyfile: Annotated[str | None, _env("keyfile")] = None,
) -> int:
    """Serve the OpenAI-compatible gateway (POST /v1/chat/completions, GET /v1/models).

    With no flags: on 127.0.0.1:8000, in front of the built-in simulated upstream
    (no network, no API key). Stops gracefully on SIGINT or SIGTERM: streams get
    --shutdown-grace seconds, the rest end with an in-band shutdown error.

    Args:
        host: The address to listen on.
        port: The TCP port (0: any free port; the log says which).
        upstream_url: The upstream's API root, as the openai SDK's base_url takes it
            (e.g. https://api.openai.com/v1). Default: the built-in simulator, in-process.
        upstream_api_key_env: The name of the environment variable that holds the
            upstream's API key (e.g. OPENAI_API_KEY). Default: send no key.
        key_header: A request header whose value is the caller's key for the per-key
            limit (set by a trusted proxy). Default: the caller's bearer token, hashed.
        admin_token: The bearer token of the inspection API at /admin.
        cors_origin: An origin a browser may call the gateway from (repeat the flag
            for several; * for any).
        log_format: Logs on stderr as JSON lines (json) or for people (console).
        allowed_host: A Host name the service answers besides localhost, 127.0.0.1 and
            [::1] (repeat the flag for several; name:port for one port only; * for any),
            against DNS rebinding. On loopback, every route but /healthz and /readyz
            answers only these; beyond loopback, when given, too.
        access_log: Log every answer (http.request), not only error answers (http.error).
        body_timeout: Seconds a request may take to arrive whole, head and body (a
            connection's first request: from its accept); then a 408 and the
            connection closed (none: no bound).
        redis_url: Cluster mode: the Redis every instance shares (redis://[:password@]host:port/db);
            --max-streams and --max-streams-per-key then hold across all of them. The
            password is never logged.
        lease_ttl: Seconds a slot's lease lives in Redis without renewal (renewed every third
            of it): a dead instance's slots come back within it.
        instance_id: This instance's name in Redis. Default: host:pid.
        redis_fault_policy: While Redis is lost: refuse new streams with a 503 (fail-closed),
            or admit against ceil(limit / instances last seen) of each limit (local).
        workers: Worker processes serving the one port (more than 1 needs --redis-url,
            so that they share the limits); the parent supervises them.
        gc_threshold: The garbage collector, set once the app is built: server (the
            start-up's objects frozen, then gc.set_threshold(2000, 0, 36000): full
            collections, which stall every stream, become rare), python (the
            interpreter's, untouched), or GEN0,GEN1,GEN2 (frozen, then these).
        gc_interval: Seconds between the young collections a thread runs besides the
            interpreter's own (whose net count misses young objects made while as many
            old ones are freed, and lets them pile up into long pauses); a middle one
            after more than GEN1 young ones, a full one only after more than GEN2
            middle ones and when the memory grew by a quarter since the last. off:
            only the interpreter's, by count. Not with --gc-threshold python.
        malloc_trim: Seconds between two trims of the heap (glibc's malloc_trim on a
            worker thread): free memory that glibc keeps between long-lived blocks is
            given back to the system, so the resident memory does not creep up over
            hours. off: the heap left to glibc. Nothing where the C library is not glibc.
        certfile: Serve HTTPS with this PEM certificate (then any intermediates), with
            --keyfile; HTTP/2 is offered to browsers (many streams on one connection).
        keyfile: The PEM private key of --certfile (not encrypted).
    """
    from ._run import ServeSettings, run_serve
    from ._workers import check_workers

    try:
        check_workers(workers, redis_url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if (certfile is None) != (keyfile is None):
        given, missing = ("certfile", "keyfile") if keyfile is None else ("keyfile", "certfile")
        raise UsageError(
            f"--{given} was given without --{missing}: TLS needs both (the certificate "
            f"and its private key), or neither to serve plain HTTP"
        )
    if certfile is not None and keyfile is not None:
        code = _check_tls_files(certfile, keyfile)
        if code:
            return code

    try:
        from ..server import check_exposure
    except ImportError:
        pass  # run_serve says which extra is missing
    else:
        try:
            check_exposure(host, admin_token)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(
            "--redis-url accepts a redis://, rediss:// or unix:// URL, e.g. "
            "redis://redis:6379/0 (the value is not shown: it may hold a password)"
        )
    if redis_url is not None:
        try:
            from ..cluster import RedisConnection
        except ImportError:
            pass  # run_serve says which extra is missing
        else:
            try:
                RedisConnection(redis_url)  # no I/O: the URL's checks (never showing it)
            except ValueError as exc:
                raise UsageError(f"--redis-url (STREAMMGR_REDIS_URL): {exc}") from None
    api_key = None
    if upstream_api_key_env is not None:
        import os

        api_key = os.environ.get(upstream_api_key_env)
        if not api_key:
            raise UsageError(
                f"--upstream-api-key-env: the environment variable {upstream_api_key_env} "
                f"is not set or empty; export it, or leave the flag out to send no key"
            )
    settings = ServeSettings(
        host=host,
        port=port,
        upstream_url=upstream_url,
        api_key=api_key,
        max_streams=max_streams,
        max_streams_per_key=max_streams_per_key,
        max_waiting=max_waiting,
        acquire_timeout=acquire_timeout,
        reader_timeout=reader_timeout,
        idle_timeout=idle_timeout,
        shutdown_grace=shutdown_grace,
        key_header=key_header,
        admin_token=admin_token,
        cors_origins=cors_origin,
        log_format=log_format,
        allowed_hosts=allowed_host,
        access_log=access_log,
        body_timeout=body_timeout,
        redis_url=redis_url,
        lease_ttl=lease_ttl,
        instance_id=instance_id,
        redis_fault_policy=redis_fault_policy,
        gc_threshold=parse_gc_threshold(gc_threshold),
        gc_interval=parse_gc_interval(gc_interval),
        malloc_trim=parse_malloc_trim(malloc_trim),
        certfile=certfile,
        keyfile=keyfile,
    )
    if workers > 1:
        from ._workers import run_workers

        return await run_workers(settings, workers)
    return await run_serve(settings)


@app.command
async def simulate(
    *,
    host: Annotated[str, Parameter(env_var="STREAMMGR_SIMULATE_HOST")] = "127.0.0.1",
    port: Annotated[int, Parameter(env_var="STREAMMGR_SIMULATE_PORT", validator=_port)] = 8001,
    seed: Annotated[int, Parameter(env_var="STREAMMGR_SIMULATE_SEED")] = 0,
    log_format: Annotated[LogFormat, Parameter(env_var="STREAMMGR_LOG_FORMAT")] = "console",
) -> int:
    """Serve the simulated OpenAI-compatible upstream on its own (see docs/simulate.md).

    Point a client, or `streammgr serve --upstream-url http://HOST:PORT/v1`, at it.
    Stops on SIGINT or SIGTERM.

    Args:
        host: The address to listen on.
        port: The TCP port (0: any free port; the log says which).
        seed: The seed of its deterministic answers.
        log_format: Logs on stderr as JSON lines (json) or for people (console).
    """
    from ._run import run_simulate

    return await run_simulate(host=host, port=port, seed=seed, log_format=log_format)


def _streams(type_: object, value: int) -> None:
    if value < 1:
        raise ValueError("Accepts a whole number of at least 1")


@app.command
async def demo(
    *,
    streams: Annotated[int, Parameter(validator=_streams)] = 60,
    seed: int = 7,
    verbose: bool = False,
) -> int:
    """Many streams from several tenants against the simulated upstream, in-process:
    limits enforced, the registry shown, the checks printed.

    Args:
        streams: How many streams.
        seed: Fixes the plan (each client's tenant, arrival, answer length, early
            leave) and the simulated answers.
        verbose: Print lifecycle logs.
    """
    from .._demo import run_demo

    return await run_demo(streams, seed, verbose)


def _admin_url(type_: object, value: str) -> None:
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError(
            "Accepts the inspection API's http:// or https:// base URL, "
            "e.g. http://127.0.0.1:8000/admin"
        )


def _refresh(type_: object, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("Accepts a positive number of seconds")


def _check_tls_files(certfile: str, keyfile: str) -> int:
    """Load the certificate and key once before serving: a bad file is a one-line
    error naming the flag, and exit code 1 (the files, not the flags' syntax, are
    wrong)."""
    try:
        from ..server import tls_context
    except ImportError:
        return 0  # run_serve says which extra is missing
    try:
        tls_context(certfile, keyfile)
    except ValueError as exc:
        message = re.sub(r"\b(certfile|keyfile)\b", r"--\1", str(exc))
        print(f"streammgr: error: {message}", file=sys.stderr)
        return 1
    return 0


@app.command
def top(
    *,
    url: Annotated[str, Parameter(validator=_admin_url)] = "http://127.0.0.1:8000/admin",
    token: Annotated[str | None, Parameter(env_var="STREAMMGR_ADMIN_TOKEN")] = None,
    sort: Column = "age",
    reverse: bool = False,
    refresh: Annotated[float, Parameter(validator=_refresh)] = 1.0,
    cluster: bool = False,
) -> int:
    """A live table of a server's streams in flight and its limit usage (extra top).

    Fed by the inspection API's events feed; counts and limits are polled every
    --refresh seconds. Keys: 1-7 sort by a column (again: reverse), s next column,
    r reverse, c cancel the selected stream (asks first), q quit.

    Args:
        url: The inspection API's base URL.
        token: The admin bearer token (prefer the variable: a flag shows in ps).
        sort: The column to sort by (numbers largest first, text A to Z).
        reverse: Flip the sort order.
        refresh: Seconds between two polls of phases, counts and limits.
        cluster: Every instance's streams, with an instance column (a server started
            with --redis-url), polled every --refresh seconds.
    """
    try:
        from ._top_app import TopSettings, run_top
    except ImportError as exc:
        raise SystemExit(
            f"streammgr top needs the top extra ({exc.name} is missing): "
            f"pip install 'streammgr[top]'"
        ) from None
    settings = TopSettings(
        url=url, token=token, sort=sort, reverse=reverse, refresh=refresh, cluster=cluster
    )
    return run_top(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a bad flag or value).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(tokens, print_error=False, exit_on_error=False, result_action="return_value")
    except cyclopts.CycloptsError as exc:
        print(f"streammgr: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"streammgr: error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
