"""One instance's link to Redis: the client, the instance id, the pub/sub listener.

A :class:`RedisConnection` is shared by everything cluster mode runs on one
instance (the limiter now; the cluster registry and cancel later): one coredis
client (its pool and its task group), one pub/sub connection dispatching each
channel to the callbacks subscribed to it, one instance id. It is the only place
that imports coredis and the only place that maps coredis' errors
(:class:`RedisLost`). The URL's password never leaves it: ``url`` and ``repr``
show it as ``***``, and ``secrets`` lists it for the manager's redaction.

It must not hold limiter or registry logic: those are callers of ``run`` and
``subscribe``.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import coredis
import coredis.exceptions
import coredis.retry
import trio

from .._logging import get_logger, redact

__all__ = ["RedisConnection", "RedisLost", "default_instance_id", "redact_url"]

# coredis' own errors, the socket's, and its timeouts (builtin TimeoutError).
_REDIS_ERRORS = (coredis.exceptions.RedisError, OSError, TimeoutError)


class RedisLost(Exception):
    """Redis could not be reached or did not answer in time (message redacted)."""


def default_instance_id() -> str:
    """``host:pid``, the default name of an instance."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _query_passwords(query: str) -> list[str]:
    """The values of ``password`` in a URL's query (coredis honours ``?password=``)."""
    return [
        value
        for name, _, value in (piece.partition("=") for piece in query.split("&"))
        if urllib.parse.unquote_plus(name) == "password" and value
    ]


def redact_url(url: str) -> str:
    """``url`` with its password (and a username alone, which Redis takes as the
    password; and a ``password`` in the query) replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if _query_passwords(parts.query):
        query = "&".join(
            "password=***"
            if urllib.parse.unquote_plus(piece.partition("=")[0]) == "password"
            else piece
            for piece in parts.query.split("&")
        )
        parts = parts._replace(query=query)
    if parts.password is None and not parts.username:
        if not parts.netloc:  # unix:///path: urlunsplit would drop the empty netloc
            return f"{parts.scheme}://" + urllib.parse.urlunsplit(parts)[len(parts.scheme) + 1 :]
        return urllib.parse.urlunsplit(parts)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username if parts.password is not None and parts.username else ""
    netloc = f"{user}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _url_secrets(url: str) -> tuple[str, ...]:
    parts = urllib.parse.urlsplit(url)
    found = [parts.password, parts.username if parts.password is None else None]
    values: list[str] = []
    for value, unquoted in [
        *((value, urllib.parse.unquote(value or "")) for value in found),
        *((value, urllib.parse.unquote_plus(value)) for value in _query_passwords(parts.query)),
    ]:
        if value:
            values.append(value)
            if unquoted != value:
                values.append(unquoted)
    return tuple(values)


def _check_readable(parts: urllib.parse.SplitResult) -> None:
    """Refuse a URL whose netloc a stray ``/ ? #`` in the password cut short, without
    echoing any of it (the cut-off half of the password would be in the message)."""
    try:
        parts.port  # noqa: B018 - urllib parses the port lazily; this is the check
        readable = parts.scheme == "unix" or bool(parts.hostname)
    except ValueError:
        readable = False
    if not readable:
        raise ValueError(
            f"url is not a readable {parts.scheme}:// URL (no host, or a port that is not a "
            "number): if the password holds any of @ / : ? # % or spaces, percent-encode it "
            "(urllib.parse.quote(password, safe='')); the URL is not shown, it may hold the "
            "password"
        )


def _unwrap(error: BaseException) -> BaseException:
    """The lone error inside coredis' task-group exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class RedisConnection:
    """The Redis client, instance id and pub/sub listener of one instance.

    Enter it (``async with``) to connect; entries nest (the limiter and the
    registry may both enter the one connection: the first entry connects, the last
    exit disconnects).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``,
            ``unix://``). Its password is a secret: never shown.
        instance_id: this instance's name in Redis; default ``host:pid``.
        namespace: the prefix of every key and channel.
        timeout: seconds a connection attempt or one command may take before Redis
            counts as lost.
    """

    def __init__(
        self,
        url: str,
        *,
        instance_id: str | None = None,
        namespace: str = "streammgr",
        timeout: float = 1.0,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError("url must be a redis:// URL (the --redis-url flag), got nothing")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"url must start with redis://, rediss:// or unix://, got {redact_url(url)!r}"
            )
        _check_readable(parts)
        if instance_id is not None and (not isinstance(instance_id, str) or not instance_id):
            raise ValueError(f"instance_id must be a non-empty string, got {instance_id!r}")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
        if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._url = url
        self.url = redact_url(url)
        """The URL with its password as ``***``."""
        self.secrets = _url_secrets(url)
        """The URL's password (as written and unquoted), for the manager's redaction."""
        self.instance_id = instance_id or default_instance_id()
        """This instance's name in Redis."""
        self.namespace = namespace
        """The prefix of every key and channel."""
        self.timeout = float(timeout)
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._entries = 0
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: coredis.Redis[str] | None = None
        self._scripts: dict[str, coredis.commands.Script[str]] = {}
        self._random = random.Random()
        self.subscribed = trio.Event()
        """Set once the listener has subscribed (tests and callers wait on it)."""

    def __repr__(self) -> str:
        return f"RedisConnection(url={self.url!r}, instance_id={self.instance_id!r})"

    def key(self, *parts: str) -> str:
        """The Redis key (or channel) named ``namespace:part:part...``."""
        return ":".join((self.namespace, *parts))

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(message)`` for each message on ``channel`` (a full name,
        from :meth:`key`). Subscribe before entering the connection."""
        if self._entries:
            raise RuntimeError(
                f"subscribe to {channel!r} before entering the RedisConnection, not while open"
            )
        self._handlers.setdefault(channel, []).append(callback)

    # -- lifetime --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._entries += 1
        if self._entries > 1:
            return self
        stack = contextlib.AsyncExitStack()
        try:
            client: coredis.Redis[str] = coredis.Redis.from_url(
                self._url,
                decode_components=True,  # a percent-encoded password, as the docs ask
                decode_responses=True,
                retry_policy=coredis.retry.NoRetryPolicy(),
                connect_timeout=self.timeout,
                stream_timeout=self.timeout,
            )
            await stack.enter_async_context(client)
            with trio.fail_after(self.timeout * 2):
                await client.ping()
            self._client = client
            if self._handlers:
                nursery = await stack.enter_async_context(trio.open_nursery())
                stack.callback(nursery.cancel_scope.cancel)
                nursery.start_soon(self._listen, name="streammgr-redis-listener")
        except BaseException as exc:
            self._entries -= 1
            self._client = None
            # Not inside a cancel scope: the stack exits scopes entered outside one.
            await stack.aclose()
            error = _unwrap(exc)
            if isinstance(error, (*_REDIS_ERRORS, trio.TooSlowError)):
                raise RedisLost(self._describe(error)) from None
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._entries -= 1
        if self._entries:
            return
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            # Not inside a cancel scope of ours: the stack exits the pool's task group
            # and the listener's nursery, entered outside any (trio would see the
            # scopes interleaved). Both are cancelled first, so this does not wait.
            try:
                await stack.aclose()
            except BaseExceptionGroup as group:
                error = _unwrap(group)
                if not isinstance(error, _REDIS_ERRORS):
                    raise
            except _REDIS_ERRORS:
                pass  # closing a link that is already lost

    # -- commands --------------------------------------------------------------------

    async def run(self, script: str, keys: Sequence[str], args: Sequence[str | int]) -> object:
        """Run a Lua script (EVALSHA, loading it when Redis does not know it).

        Raises:
            RedisLost: Redis is unreachable, or did not answer within ``timeout``.
        """
        client = self._client
        if client is None:
            raise RedisLost(f"the connection to Redis at {self.url} is not open")
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = client.register_script(script)
        try:
            with trio.fail_after(self.timeout * 2):
                return await registered(keys=list(keys), args=list(args))
        except (*_REDIS_ERRORS, trio.TooSlowError) as exc:
            raise RedisLost(self._describe(exc)) from None
        except BaseExceptionGroup as group:
            error = _unwrap(group)
            if isinstance(error, _REDIS_ERRORS):
                raise RedisLost(self._describe(error)) from None
            raise

    def _describe(self, error: BaseException) -> str:
        text = redact(f"{type(error).__name__}: {error}", self.secrets)
        return f"Redis at {self.url} is unreachable or too slow ({text})"

    # -- pub/sub ---------------------------------------------------------------------

    async def _listen(self) -> None:
        """Dispatch messages until cancelled; reconnect with jittered backoff when the
        link breaks (callers poll meanwhile: a lost message only delays a wake-up)."""
        log = get_logger()
        client = self._client
        assert client is not None
        backoff = 0.05
        while True:
            try:
                async with client.pubsub(
                    channels=list(self._handlers),
                    ignore_subscribe_messages=True,
                    retry_policy=None,
                ) as pubsub:
                    self.subscribed.set()
                    backoff = 0.05
                    async for message in pubsub:
                        if message["type"] != "message":
                            continue
                        for handler in self._handlers.get(str(message["channel"]), ()):
                            handler(str(message["data"]))
            except (*_REDIS_ERRORS, BaseExceptionGroup) as exc:
                error = _unwrap(exc)
                if not isinstance(error, _REDIS_ERRORS):
                    raise
                log.debug("cluster.listener_lost", error=self._describe(error))
            await trio.sleep(backoff * self._random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, self.timeout)
