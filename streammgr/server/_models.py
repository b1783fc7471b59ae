"""The gateway's ``GET /v1/models``: :class:`ModelsRoute`.

The list of models is the same for every caller (the gateway asks with its own
key), so it is fetched once and shared:

- **cached**: a success is kept ``models_cache_ttl`` seconds (30 by default); an
  error answer :data:`MODELS_ERROR_TTL` seconds, so that a failing upstream is not
  asked again by every caller, nor told to stay failed for long;
- **single flight**: one upstream request at a time; callers that come while it is
  in flight wait for its answer. The models route therefore takes at most one
  connection of the upstream client's pool, whatever the number of callers: chats
  keep the rest (the pool is shared, sized to the chat limit by ``streammgr serve``);
- **bounded per key**: at most :data:`MODELS_PER_KEY` requests of one caller key
  wait for the upstream at once; beyond, a 429 with ``Retry-After``;
- **capped**: the upstream's answer is read up to :data:`MAX_MODELS_BODY` bytes;
  past it, the response is closed and the caller gets a 502 naming the cap;
- **redacted**: the upstream's text (its list, or its error's excerpt) goes
  through the same redaction as the chat routes' errors
  (:func:`~streammgr._logging.redact` with the gateway's secrets: its key in any
  encoding, base64 included).

It must not run a task of its own: the flight runs in the task of the caller that
started it; if that caller goes away, a waiting caller starts the next flight.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import httpx
import trio
from starlette.requests import Request
from starlette.responses import Response

from .._logging import get_logger, redact
from ..sources._common import body_excerpt, retry_after
from ._answers import ErrorAnswer
from ._chat_request import GatewaySettings, caller_key

__all__ = [
    "MAX_MODELS_BODY",
    "MODELS_CACHE_TTL",
    "MODELS_ERROR_TTL",
    "MODELS_PER_KEY",
    "ModelsRoute",
]

MAX_MODELS_BODY = 4 * 1024 * 1024
"""The most bytes of the upstream's ``/models`` answer read (decoded); past it, a 502.
OpenAI's own list is ~10 KiB; an endless body grew the gateway by 200-300 MiB."""

MODELS_CACHE_TTL = 30.0
"""Seconds a successful list is kept (``gateway_app(models_cache_ttl=...)``)."""

MODELS_ERROR_TTL = 1.0
"""Seconds an error answer is kept: at most one upstream request a second while the
upstream fails, and a mended upstream is seen a second later."""

MODELS_PER_KEY = 4
"""The most ``GET /v1/models`` requests of one caller key waiting for the upstream."""

_EXCERPT = 200
_CLOSE_TIMEOUT = 5.0  # seconds to close the upstream's answer, even when cancelled
_FINISH_PULLS = 4  # pulls of a closed answer's body before it is left to end
_PER_KEY_RETRY_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class _Answer:
    """A ``GET /v1/models`` answer, kept to be given to several callers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def from_error(cls, answer: ErrorAnswer) -> _Answer:
        return cls(answer.status, answer.json(), tuple(answer.headers()))

    def response(self) -> Response:
        response = Response(self.body, status_code=self.status)
        response.raw_headers.extend(self.headers)
        return response


class _Flight:
    """One upstream request in flight, and its answer once it came."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: _Answer | None = None  # None when done: its caller went away


class _BodyTooLarge(Exception):
    """Internal: the upstream's answer is longer than the cap."""


class _UnknownEncoding(Exception):
    """Internal: the upstream's answer is in an encoding read here without a bound."""

    def __init__(self, encoding: str) -> None:
        super().__init__(encoding)
        self.encoding = encoding


def _decoder(content_encoding: str) -> zlib._Decompress | None:
    """A zlib decoder for the answer's ``Content-Encoding`` (``None``: identity).

    Raises:
        _UnknownEncoding: another encoding (``br``, ``zstd``, several at once).
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib's header (or gzip's)
    raise _UnknownEncoding(content_encoding[:40])


class ModelsRoute:
    """``GET /v1/models`` of one gateway: cached, single flight, bounded per key.

    Built by :func:`~streammgr.server.gateway_app`; see the module's docstring.

    Args:
        settings: the gateway's settings (upstream client, URL, key, timeouts).
        cache_ttl: seconds a successful list is kept (``None``: not kept;
            concurrent callers still share one upstream request).
        per_key: the most requests of one key waiting for the upstream.
        max_body: the most bytes of the upstream's answer read.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        cache_ttl: float | None = MODELS_CACHE_TTL,
        per_key: int = MODELS_PER_KEY,
        max_body: int = MAX_MODELS_BODY,
    ) -> None:
        self._settings = settings
        self._cache_ttl = cache_ttl if cache_ttl is not None else 0.0
        self._per_key = per_key
        self._max_body = max_body
        self._answer: _Answer | None = None
        self._expires = -math.inf
        self._flight: _Flight | None = None
        self._waiting: dict[str, int] = {}

    async def endpoint(self, request: Request) -> Response:
        """The route (a Starlette endpoint)."""
        if self._answer is not None and trio.current_time() < self._expires:
            return self._answer.response()
        key = caller_key(request.headers, self._settings.key_header)
        waiting = self._waiting.get(key, 0)
        if waiting >= self._per_key:
            return _Answer.from_error(
                ErrorAnswer(
                    429,
                    "rate_limit_exceeded",
                    "models_per_key",
                    f"{waiting} GET /v1/models requests of this key are already waiting for "
                    f"the upstream's list (at most {self._per_key}); retry after "
                    f"{_PER_KEY_RETRY_AFTER:g}s",
                    _PER_KEY_RETRY_AFTER,
                    True,
                )
            ).response()
        self._waiting[key] = waiting + 1
        try:
            return (await self._shared_answer()).response()
        finally:
            left = self._waiting[key] - 1
            if left:
                self._waiting[key] = left
            else:
                del self._waiting[key]

    async def _shared_answer(self) -> _Answer:
        """The cached answer, the answer of the flight in progress, or a new flight's."""
        while True:
            if self._answer is not None and trio.current_time() < self._expires:
                return self._answer
            flight = self._flight
            if flight is not None:
                await flight.done.wait()
                if flight.answer is not None:
                    return flight.answer
                continue  # its caller went away before the answer: fly again
            flight = self._flight = _Flight()
            try:
                answer = await self._fetch()
                ttl = self._cache_ttl if answer.status < 400 else MODELS_ERROR_TTL
                self._answer, self._expires = answer, trio.current_time() + ttl
                flight.answer = answer
                return answer
            finally:
                self._flight = None
                flight.done.set()

    async def _fetch(self) -> _Answer:
        """Ask the upstream (one request), and make its answer one for the caller."""
        settings = self._settings
        # The list is small: asked uncompressed, so that nothing expands past the cap.
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        if settings.api_key:
            headers["authorization"] = f"Bearer {settings.api_key}"
        connect = settings.upstream_timeouts.connect
        with trio.move_on_after(connect if connect is not None else 30.0) as patience:
            try:
                async with settings.upstream.stream(
                    "GET", settings.models_url, headers=headers
                ) as answer:
                    body = await self._read(answer)
            except _UnknownEncoding as exc:
                return _Answer.from_error(
                    ErrorAnswer(
                        502,
                        "upstream_error",
                        "upstream_error",
                        f"the upstream answered GET /models in the encoding {exc.encoding!r}, "
                        f"which the gateway cannot read within its cap (it asks for identity; "
                        f"gzip and deflate are read too); check the upstream",
                    )
                )
            except zlib.error:
                get_logger().warning("gateway.models_failed", error="corrupt_encoding")
                return _Answer.from_error(
                    ErrorAnswer(
                        502,
                        "upstream_error",
                        "upstream_error",
                        "the upstream's compressed list of models is corrupt; check the upstream",
                    )
                )
            except _BodyTooLarge:
                get_logger().warning("gateway.models_too_large", max_body=self._max_body)
                return _Answer.from_error(
                    ErrorAnswer(
                        502,
                        "upstream_error",
                        "upstream_too_large",
                        f"the upstream's list of models is larger than {self._max_body} "
                        f"bytes (the gateway's cap); check the upstream",
                    )
                )
            except httpx.HTTPError as exc:
                get_logger().warning("gateway.models_failed", error=type(exc).__name__)
                return _Answer.from_error(
                    ErrorAnswer(
                        502,
                        "upstream_error",
                        "upstream_error",
                        f"could not reach the upstream ({type(exc).__name__}); retry later",
                    )
                )
        if patience.cancelled_caught:
            return _Answer.from_error(
                ErrorAnswer(
                    504,
                    "upstream_error",
                    "upstream_connect_timeout",
                    "the upstream did not list its models in time; retry later",
                )
            )
        return self._relayed(answer, body)

    async def _read(self, answer: httpx.Response) -> bytes:
        """The answer's body, decoded, at most the cap; past it, the answer is closed.

        A compressed body is decoded here, never more than the cap: httpx decodes
        each chunk whole (64 KiB of gzip can be 64 MiB), so 200 KiB of zeros once
        cost 270 MiB before the cap was looked at.

        Raises:
            _BodyTooLarge: past the cap.
            _UnknownEncoding: an encoding other than identity, gzip or deflate.
        """
        if answer.is_stream_consumed:  # read whole already (an in-process transport)
            if len(answer.content) > self._max_body:
                raise _BodyTooLarge
            return answer.content
        decoder = _decoder(answer.headers.get("content-encoding", ""))
        parts: list[bytes] = []
        size = 0
        chunks = cast("AsyncGenerator[bytes, None]", answer.aiter_raw())  # it is one
        try:
            async for raw in chunks:
                # At most one byte past the cap: zlib stops there, its tail unread.
                part = (
                    raw if decoder is None else decoder.decompress(raw, self._max_body - size + 1)
                )
                size += len(part)
                if size > self._max_body:
                    raise _BodyTooLarge
                parts.append(part)
        finally:
            await _close(answer, chunks)
        return b"".join(parts)

    def _relayed(self, answer: httpx.Response, body: bytes) -> _Answer:
        """The upstream's answer for the caller, its text redacted."""
        status = answer.status_code
        secrets = self._settings.secrets
        if 200 <= status < 300:
            text = body.decode("utf-8", "replace")
            cleaned = redact(text, secrets)
            content_type = answer.headers.get("content-type", "application/json")
            return _Answer(
                status,
                body if cleaned == text else cleaned.encode(),
                ((b"content-type", content_type.encode("latin-1", "replace")),),
            )
        shown = body_excerpt(body, _EXCERPT, secrets, whole=True)
        message = f"the upstream answered {status} to GET /models: {shown}"
        if status in (401, 403):
            return _Answer.from_error(
                ErrorAnswer(
                    502,
                    "upstream_error",
                    "upstream_error",
                    f"the upstream refused the gateway's credentials ({status})",
                    should_retry=False,  # the same on every try
                )
            )
        if status == 429:
            return _Answer.from_error(
                ErrorAnswer(
                    429, "rate_limit_exceeded", "upstream_error", message, _wait(answer), True
                )
            )
        if 400 <= status < 500:
            return _Answer.from_error(
                ErrorAnswer(status, "invalid_request_error", "upstream_refused", message)
            )
        return _Answer.from_error(ErrorAnswer(502, "upstream_error", "upstream_error", message))


async def _close(answer: httpx.Response, chunks: AsyncGenerator[bytes, None]) -> None:
    """Close the answer, then run its body's generators to their end.

    ``aiter_bytes()`` iterates ``aiter_raw()``, which iterates the transport's
    stream: closing the outer generator would leave the inner ones suspended (Trio
    warns when it collects them). Once the answer is closed, pulling again makes
    the innermost fail (or drain what it had buffered), which ends every layer.
    (The sources do the same for their bodies: ``_Body`` in ``_http_connection.py``.)
    """
    with trio.CancelScope(shield=True) as cleanup:
        cleanup.deadline = trio.current_time() + _CLOSE_TIMEOUT
        with contextlib.suppress(Exception):  # closing is best effort
            await answer.aclose()
        with contextlib.suppress(Exception):  # the end we want: StopAsyncIteration, a closed stream
            for _ in range(_FINISH_PULLS):
                await chunks.__anext__()
        with contextlib.suppress(Exception):
            await chunks.aclose()


def _wait(answer: httpx.Response) -> float:
    """The upstream's wait (``retry-after-ms``, else ``Retry-After``), else one second."""
    milliseconds = answer.headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            wait = float(milliseconds) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(wait) and wait >= 0:
                return wait
    given = retry_after(answer.headers.get("retry-after"), datetime.now(UTC))
    return given if given is not None else 1.0
