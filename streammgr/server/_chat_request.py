"""The gateway's chat request: who asks, what they ask, and how a refusal is told.

What a chat route (``POST /v1/chat/completions``, ``/v1/chat/ws``) needs before
and around its stream: the caller's admission key (:func:`caller_key`), OpenAI's
error body (:func:`openai_error`), reading the body (:func:`read_body`, bounded),
JSON loading and the request's checks (:func:`parse_chat_request`,
:func:`check_chat_request`, raising :class:`BadRequest`), the answer of a failed
completion (:func:`completion_error`), and the gateway's settings
(:class:`GatewaySettings`: the upstream request of a chat, its headers).

"Change what a chat request may contain" starts here. This module holds no
routes and starts no tasks: the routes live in ``_gateway.py`` and
``_chat_ws.py``, which both import this one (and never each other).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from .._errors import UpstreamStatusError
from .._validate import json_type, unpaired_surrogate
from ..sources import OpenAIChat, SourceTimeouts
from ..sources._common import api_url, is_credential_name, redact_url, url_secrets
from ._answers import ErrorAnswer, error_answer

__all__ = [
    "MAX_REQUEST_SIZE",
    "BadRequest",
    "GatewaySettings",
    "caller_key",
    "check_chat_request",
    "completion_error",
    "load_json",
    "openai_error",
    "parse_chat_request",
    "read_body",
]

MAX_REQUEST_SIZE = 8 * 1024 * 1024
"""The largest request body the gateway reads, in bytes (a larger one gets a 413)."""

_ANONYMOUS = "anonymous"
_KEY_HEADER_LIMIT = 128  # characters of a configured key header's value used as the key
# A stream: false answer is assembled from a stream; the key sent when none is set.
_NO_API_KEY = "no-key"


# -- the caller -------------------------------------------------------------------------


def caller_key(headers: Mapping[str, str], key_header: str | None = None) -> str:
    """The admission key of a request: who the per-key limit counts.

    The value of ``key_header`` when it is configured and present (cut to 128
    characters: an id set by a trusted proxy in front, not a secret), hashed like
    a credential when the header is named like one (``x-api-key``,
    ``x-auth-token``); else the caller's credential (``Authorization: Bearer
    ...``, or the whole header for another scheme) hashed: ``key-`` and the first
    16 hex digits of its SHA-256, so the registry, logs and limits never hold the
    credential itself; else ``"anonymous"``.

    Args:
        headers: the request's headers (case-insensitive, as Starlette's).
        key_header: the name of a header that names the caller, or ``None``.
    """
    credential_header = "authorization"
    if key_header is not None:
        value = headers.get(key_header, "").strip()
        if value and not is_credential_name(key_header):
            return value[:_KEY_HEADER_LIMIT]
        if value:
            credential_header = key_header  # a credential: hashed as the bearer token is
    credential = headers.get(credential_header, "").strip()
    scheme, _, token = credential.partition(" ")
    if scheme.lower() == "bearer":
        credential = token.strip()
    if not credential:
        return _ANONYMOUS
    return "key-" + hashlib.sha256(credential.encode()).hexdigest()[:16]


def openai_error(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON answer in OpenAI's error format: ``{"error": {message, type, param, code}}``."""
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return Response(
        json.dumps({"error": error}, separators=(",", ":")),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


# -- the request ------------------------------------------------------------------------


class BadRequest(Exception):
    """The request is not a chat-completions request the gateway can send (a 400, or 413).

    Within the server package only: a route answers it (:func:`openai_error`, or a
    WebSocket error message); it never reaches a user of streammgr.

    Args:
        message: what was wrong and what to send instead.
        param: the field at fault, as OpenAI's ``param``, or ``None``.
        status: the HTTP status of the answer.
    """

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


def _not_a_number(text: str) -> float:
    """``json.loads`` hook: NaN and Infinity, which Python reads but JSON has not
    (httpx could not send them upstream: ``allow_nan=False``)."""
    raise BadRequest(f"the request body has {text}, which is not a JSON number; send a number")


def _finite(text: str) -> float:
    """``json.loads`` hook: a number with a fraction or exponent, refused if it
    overflows to infinity (as NaN and Infinity are)."""
    value = float(text)
    if math.isinf(value):
        raise BadRequest(
            f"the request body has the number {text[:40]}, too large for a double; send a "
            f"finite number"
        )
    return value


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """The request's JSON object, with the fields the gateway relies on checked.

    Only what the gateway itself reads is checked (``model``, ``messages``,
    ``stream``, ``stream_options``, ``n``); the upstream checks the rest.

    Raises:
        BadRequest: naming the field.
    """
    try:
        # Strict UTF-8 (RFC 8259): json.loads(bytes) would also take UTF-16 and 32, and
        # surrogates encoded as UTF-8, which nothing can encode again.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid UTF-8 (byte {exc.start}); send JSON in UTF-8"
        ) from None
    try:
        payload = load_json(text)
    except (ValueError, RecursionError):
        raise BadRequest(
            "the request body is not valid JSON; send a chat-completions request object"
        ) from None
    if not isinstance(payload, dict):
        raise BadRequest(
            f"the request body must be a JSON object, got {json_type(payload)}; send a "
            f"chat-completions request object"
        )
    return check_chat_request(payload, body)


def load_json(text: str) -> Any:
    """``json.loads`` refusing NaN, Infinity and numbers that overflow to infinity
    (with :class:`BadRequest`): nothing could encode them again for the upstream."""
    return json.loads(text, parse_constant=_not_a_number, parse_float=_finite)


def check_chat_request(payload: dict[str, Any], encoded: bytes | None) -> dict[str, Any]:
    """``payload`` (a decoded request object) with the fields the gateway reads checked.

    The rules of :func:`parse_chat_request`, shared with the WebSocket route.
    ``encoded`` is the JSON text it was decoded from, as strict UTF-8 (searched for
    surrogate escapes); ``None``: the caller has checked for them.

    Raises:
        BadRequest: naming the field.
    """
    where = None if encoded is None else unpaired_surrogate(encoded, payload)
    if where is not None:
        raise BadRequest(
            f"{where or 'a key of the request body'} has an unpaired surrogate escape "
            f"(\\ud800 to \\udfff without its pair), which is not text; send the "
            f"character itself or both halves of its pair",
            where or None,
        )
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        what = "missing" if model is None else f"{json_type(model)}"
        raise BadRequest(f"model must be a non-empty string, got {what}", "model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        what = "missing" if messages is None else json_type(messages)
        if isinstance(messages, list):
            what = "an empty array"
        raise BadRequest(f"messages must be a non-empty array, got {what}", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"messages[{index}] must be an object, got {json_type(message)}",
                f"messages[{index}]",
            )
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, got {json_type(stream)}", "stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(
            f"stream_options must be an object, got {json_type(options)}", "stream_options"
        )
    choices = payload.get("n")
    if choices is not None and (isinstance(choices, bool) or not isinstance(choices, int)):
        raise BadRequest(f"n must be an integer, got {json_type(choices)}", "n")
    if not stream and choices not in (None, 1):
        raise BadRequest(
            f"n must be 1 with stream: false through this gateway, got {choices}; "
            f"stream the answer (stream: true) for several choices",
            "n",
        )
    return payload


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes.

    Raises:
        BadRequest: (413) the body is larger.
    """
    parts: list[bytes] = []
    size = 0
    # aclosing: a body refused half-read leaves no unfinished generator to the collector.
    async with aclosing(request.stream()) as chunks:
        async for part in chunks:
            size += len(part)
            if size > limit:
                raise BadRequest(
                    f"the request body is larger than {limit} bytes; send less", status=413
                )
            parts.append(part)
    return b"".join(parts)


# -- a failed completion ------------------------------------------------------------------


_NOT_PASSED_ON = frozenset({401, 403, 407, 429})  # the gateway's own key, or handled


def completion_error(error: BaseException, stream_id: str, recorded: str | None) -> ErrorAnswer:
    """The answer of a failed chat request (``stream: false``, a refusal before a
    stream's headers, or a WebSocket request's final message).

    :func:`~streammgr.server.error_answer`'s table, except an upstream's client
    error (a 4xx other than 401, 403, 407 and 429), passed on with its status so
    that a client's mistake is not retried as a server error.

    Args:
        error: what ended the stream.
        stream_id: the stream's id.
        recorded: the error text the registry recorded (redacted), or ``None``.
    """
    if (
        isinstance(error, UpstreamStatusError)
        and 400 <= error.status_code < 500
        and error.status_code not in _NOT_PASSED_ON
    ):
        text = recorded if recorded is not None else "the upstream refused the request"
        return ErrorAnswer(
            error.status_code, "invalid_request_error", "upstream_refused", text, None
        )
    return error_answer(error, stream_id, recorded)


# -- the settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySettings:
    """What the gateway's routes share: the upstream client and the options.

    Built once by :func:`~streammgr.server.gateway_app` from its (checked)
    arguments; the routes read it and never change it.

    Attributes:
        upstream: the client that reaches the upstream.
        upstream_url: the upstream's API root (``https://api.openai.com/v1``).
        api_key: the key sent to the upstream, or ``None``.
        key_header: the header naming the caller, or ``None`` (see :func:`caller_key`).
        upstream_timeouts: the upstream requests' timeouts.
        answer_within: the most seconds before a streaming answer's status is
            decided (``None``: as long as the manager's ``acquire_timeout``).
        keep_alive: seconds without a write before a keep-alive comment.
        stall_timeout: the most seconds one write may wait for a client.
        max_request_size: the largest request body (and WebSocket message), in bytes.
        chat_url, models_url: the upstream's endpoints (derived).
        secrets: what to redact from the upstream's text (derived: the API key,
            and the credentials written in ``upstream_url``, its userinfo or a
            query value named like a key).
    """

    upstream: httpx.AsyncClient
    upstream_url: str
    api_key: str | None
    key_header: str | None
    upstream_timeouts: SourceTimeouts
    answer_within: float | None
    keep_alive: float | None
    stall_timeout: float | None
    max_request_size: int
    chat_url: str = field(init=False)
    models_url: str = field(init=False)
    secrets: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # Derived once: every request reads them.
        object.__setattr__(self, "chat_url", api_url(self.upstream_url, "/chat/completions"))
        object.__setattr__(self, "models_url", api_url(self.upstream_url, "/models"))
        written = (self.api_key,) if self.api_key else ()
        object.__setattr__(
            self, "secrets", tuple(dict.fromkeys((*written, *url_secrets(self.upstream_url))))
        )

    def __repr__(self) -> str:
        # Never the key, nor a credential written in the URL.
        key = "set" if self.api_key else "none"
        return (
            f"GatewaySettings(upstream_url={redact_url(self.upstream_url, self.secrets)!r}, "
            f"api_key={key}, key_header={self.key_header!r}, "
            f"upstream_timeouts={self.upstream_timeouts!r}, "
            f"answer_within={self.answer_within!r}, keep_alive={self.keep_alive!r}, "
            f"stall_timeout={self.stall_timeout!r}, max_request_size={self.max_request_size!r})"
        )

    def chat_source(self, payload: dict[str, Any], not_forwarded: frozenset[str]) -> OpenAIChat:
        """The upstream request of a checked chat request, with usage asked for.

        The caller's fields (but ``not_forwarded``) go to the upstream's body only:
        never as OpenAIChat's own arguments (``headers=``, ``api_key=``...).

        Args:
            payload: a request checked by :func:`check_chat_request`.
            not_forwarded: the fields the route reads itself.
        """
        return OpenAIChat(
            self.upstream,
            api_key=self.api_key or _NO_API_KEY,
            model=payload["model"],
            messages=payload["messages"],
            base_url=self.upstream_url,
            include_usage=True,
            timeouts=self.upstream_timeouts,
            extra_body={
                name: value for name, value in payload.items() if name not in not_forwarded
            },
        )

    def upstream_headers(self) -> dict[str, str]:
        """The headers of a streaming chat request to the upstream (its key, never the caller's)."""
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers
