"""OpenAI-compatible streaming chat completions, as typed chunks.

``manager.open(OpenAIChat(client, api_key=..., model=..., messages=[...]))`` streams
:class:`ChatChunk` items: content deltas, role, tool-call deltas, finish reason and
usage. It stops at ``data: [DONE]``, turns an error object inside the stream into
:class:`~streammgr.UpstreamAPIError`, and reports a stream that ends without
``[DONE]`` or a finish reason as :class:`~streammgr.UpstreamTruncated`, never as
success. :func:`collect_chat` assembles the whole answer.

The API key goes only into the ``Authorization`` header: it is scrubbed from every
error message and never appears in a repr, a log line or the registry.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from .._errors import UpstreamAPIError, UpstreamProtocolError, UpstreamTruncated
from .._logging import excerpt, redact
from ..sse import OPENAI_DONE
from ._http import SourceTimeouts, SSESource

__all__ = [
    "ChatChunk",
    "ChatCompletion",
    "OpenAIChat",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "collect_chat",
]

_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, when the upstream sends them (``include_usage=True``)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call: ``arguments`` arrive in fragments across chunks.

    Attributes:
        index: which tool call of the answer this piece belongs to.
        id: the call id (usually only in its first piece).
        type: ``"function"`` (usually only in its first piece).
        name: the function name (usually only in its first piece).
        arguments: a fragment of the JSON arguments.
    """

    index: int
    id: str | None
    type: str | None
    name: str | None
    arguments: str | None


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One streamed piece of a chat completion.

    Attributes:
        id: the completion id.
        model: the model that answered.
        index: the choice index (0 unless ``n > 1``).
        role: the role, in the first chunk (``"assistant"``), else ``None``.
        content: a piece of the answer's text, or ``None``.
        tool_calls: tool-call pieces in this chunk.
        finish_reason: ``"stop"``, ``"length"``, ``"tool_calls"``... in the last
            chunk of a choice, else ``None``.
        usage: token counts, in the usage chunk at the end, else ``None``.
    """

    id: str
    model: str
    index: int
    role: str | None
    content: str | None
    tool_calls: tuple[ToolCallDelta, ...]
    finish_reason: str | None
    usage: Usage | None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call, assembled by :func:`collect_chat`."""

    id: str
    type: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatCompletion:
    """A whole answer, assembled by :func:`collect_chat` (choice 0)."""

    id: str
    model: str
    role: str
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    usage: Usage | None


class OpenAIChat:
    """A producer of :class:`ChatChunk` from an OpenAI-compatible ``/chat/completions``.

    Args:
        client: the ``httpx.AsyncClient`` to send with.
        api_key: the bearer token (sent only in the ``Authorization`` header).
        model: the model name.
        messages: the conversation, as the API expects it.
        base_url: the API root, e.g. ``"https://api.openai.com/v1"`` or a local
            OpenAI-compatible server; ``/chat/completions`` is appended.
        include_usage: ask for token usage at the end
            (``stream_options.include_usage``).
        timeouts: the :class:`~streammgr.sources.SourceTimeouts` of the request.
        headers: extra request headers (e.g. an organisation id).
        **params: any other API parameters (``temperature``, ``tools``,
            ``max_tokens``...), passed through unchanged.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_key: str,
        model: str,
        messages: Sequence[Mapping[str, object]],
        base_url: str = "https://api.openai.com/v1",
        include_usage: bool = False,
        timeouts: SourceTimeouts | None = None,
        headers: Mapping[str, str] | None = None,
        **params: object,
    ) -> None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty str (read it from the environment)")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if not messages:
            raise ValueError("messages must hold at least one message")
        if "stream" in params:
            raise ValueError("do not pass stream=: OpenAIChat always streams")
        body: dict[str, object] = {
            **params,
            "model": model,
            "messages": list(messages),
            "stream": True,
        }
        if include_usage:
            options = dict(body.get("stream_options") or {})  # type: ignore[call-overload]
            options["include_usage"] = True
            body["stream_options"] = options
        self._model = model
        self._source = SSESource(
            client,
            base_url.rstrip("/") + "/chat/completions",
            method="POST",
            headers={**(headers or {}), "authorization": f"Bearer {api_key}"},
            json=body,
            timeouts=timeouts,
            secrets=(api_key,),
        )
        # The key and every other credential of the request (see SSESource).
        self._secrets = self._source._secrets

    @property
    def url(self) -> str:
        """The endpoint URL, credentials redacted."""
        return self._source.url

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self._model!r}, url={self.url!r})"

    def __call__(self) -> AsyncGenerator[ChatChunk, None]:
        """Stream the completion's chunks (a fresh request per call)."""
        return self._chunks()

    async def _chunks(self) -> AsyncGenerator[ChatChunk, None]:
        done = finished = False
        url = self.url
        # aclosing: an inner async generator is never left for the GC to finalize.
        async with aclosing(self._source()) as events:
            async for event in events:
                data = event.data
                if data == OPENAI_DONE:
                    done = True
                    break
                if event.event == "error":
                    raise self._api_error(_loads(data, url, self._secrets), url)
                payload = _loads(data, url, self._secrets)
                if not isinstance(payload, dict):
                    raise UpstreamProtocolError(
                        f"upstream sent {type(payload).__name__} where a chunk object was "
                        f"expected: {self._excerpt(data)}",
                        url=url,
                    )
                if "error" in payload:
                    raise self._api_error(payload, url)
                try:
                    chunks = _chunks_of(payload)
                except (TypeError, ValueError, AttributeError) as exc:
                    raise UpstreamProtocolError(
                        f"upstream sent a malformed chunk ({self._redact(str(exc))}): "
                        f"{self._excerpt(data)!r}",
                        url=url,
                    ) from None
                for chunk in chunks:
                    if chunk.finish_reason is not None:
                        finished = True
                    yield chunk
        if not done and not finished:
            raise UpstreamTruncated(
                "the upstream ended the stream without data: [DONE] or a finish reason: the "
                "answer is incomplete; retry the request",
                url=url,
            )

    def _excerpt(self, text: str) -> str:
        """``text`` redacted, then cut (so no part of a secret survives the cut)."""
        return excerpt(text, _EXCERPT, self._secrets)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _api_error(self, payload: object, url: str) -> UpstreamAPIError:
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        if not isinstance(error, dict):
            error = {"message": str(error)}
        message = self._redact(str(error.get("message") or "unknown error"))
        error_type = error.get("type")
        code = error.get("code")
        return UpstreamAPIError(
            f"the upstream reported an error mid-stream: {message}",
            error_type=None if error_type is None else str(error_type),
            code=None if code is None else str(code),
            url=url,
        )


def _loads(data: str, url: str, secrets: Sequence[str]) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise UpstreamProtocolError(
            f"upstream sent data that is not JSON: {excerpt(data, _EXCERPT, secrets)!r}; "
            f"check that base_url points at an OpenAI-compatible API",
            url=url,
        ) from None


def _chunks_of(payload: dict[str, Any]) -> list[ChatChunk]:
    """The typed chunks of one ``chat.completion.chunk`` object."""
    completion_id = str(payload.get("id", ""))
    model = str(payload.get("model", ""))
    raw_usage = payload.get("usage")
    usage = (
        Usage(
            int(raw_usage.get("prompt_tokens", 0)),
            int(raw_usage.get("completion_tokens", 0)),
            int(raw_usage.get("total_tokens", 0)),
        )
        if isinstance(raw_usage, dict)
        else None
    )
    choices = payload.get("choices") or []
    if not choices:
        if usage is None:
            return []
        return [ChatChunk(completion_id, model, 0, None, None, (), None, usage)]
    chunks = []
    for choice in choices:
        delta = choice.get("delta") or {}
        tool_calls = tuple(
            ToolCallDelta(
                int(call.get("index", 0)),
                call.get("id"),
                call.get("type"),
                (call.get("function") or {}).get("name"),
                (call.get("function") or {}).get("arguments"),
            )
            for call in delta.get("tool_calls") or ()
        )
        chunks.append(
            ChatChunk(
                completion_id,
                model,
                int(choice.get("index", 0)),
                delta.get("role"),
                delta.get("content"),
                tool_calls,
                choice.get("finish_reason"),
                usage,
            )
        )
    return chunks


async def collect_chat(chunks: AsyncIterable[ChatChunk]) -> ChatCompletion:
    """Assemble a whole answer (choice 0) from its chunks.

    Text pieces are joined; tool calls are assembled by index (id, type and name
    from their first pieces, arguments concatenated). Errors of the stream
    (``UpstreamTruncated``, ``UpstreamAPIError``...) propagate.
    """
    completion_id = model = ""
    role = "assistant"
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    finish_reason: str | None = None
    usage: Usage | None = None
    async for chunk in chunks:
        completion_id = completion_id or chunk.id
        model = model or chunk.model
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.index != 0:
            continue
        if chunk.role:
            role = chunk.role
        if chunk.content:
            text.append(chunk.content)
        for call in chunk.tool_calls:
            parts = calls.setdefault(call.index, ["", "function", "", ""])
            parts[0] = parts[0] or (call.id or "")
            parts[1] = call.type or parts[1]
            parts[2] = parts[2] or (call.name or "")
            parts[3] += call.arguments or ""
        if chunk.finish_reason is not None:
            finish_reason = chunk.finish_reason
    return ChatCompletion(
        completion_id,
        model,
        role,
        "".join(text),
        tuple(ToolCall(*calls[index]) for index in sorted(calls)),
        finish_reason,
        usage,
    )
