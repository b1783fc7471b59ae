"""OpenAI-compatible streaming chat completions, as typed chunks.

``manager.open(OpenAIChat(client, api_key=..., model=..., messages=[...]))`` streams
:class:`ChatChunk` items: content deltas, role, tool-call deltas, finish reason and
usage. It stops at ``data: [DONE]``, turns an error object inside the stream into
:class:`~streammgr.UpstreamAPIError`, and reports a stream that ends without
``[DONE]`` or a finish reason as :class:`~streammgr.UpstreamTruncated`, never as
success. :func:`collect_chat` assembles the whole answer. The chunks of one upstream read
reach the reader in one hand-off (a :class:`~streammgr.BatchIterator`), as
:class:`~streammgr.sources.SSESource`'s events do.

The API key goes only into the ``Authorization`` header: it is scrubbed from every
error message and never appears in a repr, a log line or the registry.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from .._batch import BatchIterator
from .._errors import UpstreamAPIError, UpstreamError, UpstreamProtocolError, UpstreamTruncated
from .._logging import excerpt, redact
from .._stream import current_producer
from ..sse import OPENAI_DONE, ServerSentEvent
from ._common import api_url
from ._http import SourceTimeouts, SSESource
from ._http_connection import PARSED

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
        extra_body: more API parameters as a mapping, for names that are also this
            class's arguments or come from someone else (a proxy passes its
            caller's fields here: they can never become headers or options).
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
        extra_body: Mapping[str, object] | None = None,
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
            **(extra_body or {}),
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
            api_url(base_url, "/chat/completions"),
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

    def __call__(self) -> BatchIterator[ChatChunk]:
        """Stream the completion's chunks (a fresh request per call): the chunks of
        one upstream read reach the manager in one hand-off; iterated directly, one
        chunk at a time."""
        return BatchIterator(self._batches())

    async def _batches(self) -> AsyncGenerator[list[ChatChunk], None]:
        """The chunks of each upstream read, as one list; the end checked."""
        done = finished = False
        # aclosing: an inner async generator is never left for the GC to finalize.
        async with aclosing(self._source._batches(PARSED)) as reads:
            async for events in reads:
                chunks: list[ChatChunk] = []
                failure: UpstreamError | None = None
                try:
                    for event in events:
                        if event.data == OPENAI_DONE:
                            done = True
                            break
                        chunks += self._chunks_of_event(event)
                except UpstreamError as error:
                    failure = error
                if chunks:
                    for chunk in chunks:
                        if chunk.finish_reason is not None or chunk.usage is not None:
                            finished = finished or chunk.finish_reason is not None
                            note_outcome(chunk.finish_reason, chunk.usage)
                    # What came before an error in the same read is delivered first,
                    # as it would be if the events had come in reads of their own.
                    yield chunks
                if failure is not None:
                    try:
                        raise failure
                    finally:
                        # Its traceback holds this frame: no reference cycle left.
                        failure = None
                if done:
                    await read_body_end(reads.__anext__)
                    break
        if not done and not finished:
            raise UpstreamTruncated(
                "the upstream ended the stream without data: [DONE] or a finish reason: the "
                "answer is incomplete; retry the request",
                url=self.url,
            )

    def _chunks_of_event(self, event: ServerSentEvent) -> list[ChatChunk]:
        """The typed chunks of one event (most often one).

        Raises:
            UpstreamAPIError: the event is an error object.
            UpstreamProtocolError: the event is not a chunk object.
        """
        url = self.url
        data = event.data
        if event.event == "error":
            raise self._api_error(_loads(data, url, self._secrets), url)
        payload = _loads(data, url, self._secrets)
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(
                f"upstream sent {type(payload).__name__} where a chunk object was "
                f"expected: {self._excerpt(data)}",
                url=url,
            )
        if payload.get("error") is not None:
            raise self._api_error(payload, url)
        try:
            return _chunks_of(payload)
        except _MalformedChunk as exc:
            raise UpstreamProtocolError(
                f"upstream sent a malformed chunk: {self._excerpt(str(exc))}, in "
                f"{self._excerpt(data)!r}; check that base_url points at an "
                f"OpenAI-compatible API",
                url=url,
            ) from None

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
    except RecursionError:  # json's decoder recurses once per nested array or object
        raise UpstreamProtocolError(
            f"upstream sent JSON nested too deeply to decode ({len(data)} characters): "
            f"{excerpt(data, _EXCERPT, secrets)!r}; no chat chunk is nested like this",
            url=url,
        ) from None


class _MalformedChunk(Exception):
    """Internal: a field of a chunk has the wrong JSON type (the message names it)."""

    def __init__(self, where: str, expected: str, value: object) -> None:
        got = _JSON_TYPES.get(value.__class__, value.__class__.__name__)
        shown = "" if value is None else f" ({_shown(value)})"
        super().__init__(f"{where} must be {expected}, got {got}{shown}")


_JSON_TYPES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}
_EMPTY: dict[str, Any] = {}


def _shown(value: object) -> str:
    # Not cut here: the whole message is redacted, then cut, where it is raised, so
    # that no fragment of a secret in the value survives a cut.
    return json.dumps(value)


# The checks below are the hot path of OpenAIChat (one chunk per event): plain
# ``__class__ is`` tests (bool is not accepted as an integer), and the field's name is
# only built when one fails. Missing fields take the default the API implies; null
# is accepted where the API sends it.


def _chunks_of(payload: dict[str, Any]) -> list[ChatChunk]:
    """The typed chunks of one ``chat.completion.chunk`` object.

    Raises:
        _MalformedChunk: a field has a type that the API never sends there.
    """
    completion_id = payload.get("id", "")
    if completion_id.__class__ is not str:
        raise _MalformedChunk("id", "a string", completion_id)
    model = payload.get("model", "")
    if model.__class__ is not str:
        raise _MalformedChunk("model", "a string", model)
    raw_usage = payload.get("usage")
    usage = None if raw_usage is None else _usage_of(raw_usage)
    choices = payload.get("choices")
    if choices is None:
        choices = ()
    elif choices.__class__ is not list:
        raise _MalformedChunk("choices", "an array or null", choices)
    if not choices:
        if usage is None:
            return []
        return [ChatChunk(completion_id, model, 0, None, None, (), None, usage)]
    chunks = []
    for position, choice in enumerate(choices):
        if choice.__class__ is not dict:
            raise _MalformedChunk(f"choices[{position}]", "an object", choice)
        index = choice.get("index", 0)
        if index.__class__ is not int:
            raise _MalformedChunk(f"choices[{position}].index", "an integer", index)
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None and finish_reason.__class__ is not str:
            raise _MalformedChunk(
                f"choices[{position}].finish_reason", "a string or null", finish_reason
            )
        delta = choice.get("delta")
        if delta is None:
            delta = _EMPTY
        elif delta.__class__ is not dict:
            raise _MalformedChunk(f"choices[{position}].delta", "an object or null", delta)
        role = delta.get("role")
        if role is not None and role.__class__ is not str:
            raise _MalformedChunk(f"choices[{position}].delta.role", "a string or null", role)
        content = delta.get("content")
        if content is not None and content.__class__ is not str:
            raise _MalformedChunk(f"choices[{position}].delta.content", "a string or null", content)
        raw_calls = delta.get("tool_calls")
        tool_calls = () if raw_calls is None else _tool_calls_of(raw_calls, position)
        chunks.append(
            ChatChunk(completion_id, model, index, role, content, tool_calls, finish_reason, usage)
        )
    return chunks


def _usage_of(raw_usage: object) -> Usage:
    """The token counts of a ``usage`` object (a missing count is 0)."""
    if raw_usage.__class__ is not dict:
        raise _MalformedChunk("usage", "an object or null", raw_usage)
    assert isinstance(raw_usage, dict)
    counts = []
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        count = raw_usage.get(name, 0)
        if count.__class__ is not int:
            raise _MalformedChunk(f"usage.{name}", "an integer", count)
        counts.append(count)
    return Usage(*counts)


def _tool_calls_of(raw_calls: object, position: int) -> tuple[ToolCallDelta, ...]:
    """The tool-call pieces of ``choices[position].delta.tool_calls``."""
    where = f"choices[{position}].delta.tool_calls"
    if raw_calls.__class__ is not list:
        raise _MalformedChunk(where, "an array or null", raw_calls)
    assert isinstance(raw_calls, list)
    calls = []
    for number, call in enumerate(raw_calls):
        if call.__class__ is not dict:
            raise _MalformedChunk(f"{where}[{number}]", "an object", call)
        index = call.get("index", 0)
        if index.__class__ is not int:
            raise _MalformedChunk(f"{where}[{number}].index", "an integer", index)
        function = call.get("function")
        if function is None:
            function = _EMPTY
        elif function.__class__ is not dict:
            raise _MalformedChunk(f"{where}[{number}].function", "an object or null", function)
        fields = (
            ("id", call.get("id")),
            ("type", call.get("type")),
            ("function.name", function.get("name")),
            ("function.arguments", function.get("arguments")),
        )
        for name, value in fields:
            if value is not None and value.__class__ is not str:
                raise _MalformedChunk(f"{where}[{number}].{name}", "a string or null", value)
        calls.append(ToolCallDelta(index, *(value for _, value in fields)))
    return tuple(calls)


def note_outcome(finish_reason: str | None, usage: Usage | None) -> None:
    """Record a finish reason and token counts in the running stream's notes
    (``finish_reason``, ``prompt_tokens``, ``completion_tokens``, ``total_tokens``);
    nothing outside a producer run by a manager."""
    producer = current_producer()
    if producer is None:
        return
    if finish_reason is not None:
        producer.annotate(finish_reason=finish_reason[:64])
    if usage is not None:
        producer.annotate(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


BODY_END_GRACE = 0.1
"""Seconds a stream waits, after ``[DONE]``, for the upstream's body to end (see
:func:`read_body_end`)."""


async def read_body_end(next_read: Callable[[], Awaitable[object]]) -> None:
    """After ``data: [DONE]``: read the upstream's body to its end, briefly.

    An upstream sends the body's end right after ``[DONE]``. Reading it returns the
    connection to the client's pool; closing the response before it closes the
    connection, and the next stream pays a new TCP (and TLS) handshake: at 100
    streams, the gateway opened an upstream connection per stream. ``next_read``
    is the source's next read; it is awaited once, at most :data:`BODY_END_GRACE`
    seconds. Whatever comes instead of the end (an event after ``[DONE]``, an error,
    nothing in time) is dropped, and the caller closes the response as before.
    """
    with trio.move_on_after(BODY_END_GRACE):
        try:
            await next_read()
        except StopAsyncIteration:
            pass
        except UpstreamError:
            pass  # the answer is complete: a failure after [DONE] is not the client's


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
