"""Sans-IO: a chat-completions request and a seed in, a deterministic plan out.

:func:`plan_request` reads an OpenAI ``POST /v1/chat/completions`` body (``model``,
``messages``, ``max_tokens``, ``stream``, ``stream_options.include_usage`` and the
extra field :data:`EXTRA_FIELD`) and returns a :class:`Scenario`: the answer's token
texts, the delays before each of them and the fault to inject, all frozen. Nothing
here awaits, sleeps or logs; :mod:`._response` turns a scenario into bytes and
pauses, and the ASGI app and the httpx transport carry those out.

Determinism: the text and the delays come from two random generators seeded with a
hash of the seed, the model and the messages, so the same request with the same
seed always gets the same answer, a different seed a different one, and changing a
latency never changes the text.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from .._validate import json_type, unpaired_surrogate

__all__ = [
    "CREATED",
    "EXTRA_FIELD",
    "MID_STREAM_FAULTS",
    "Behaviour",
    "Fault",
    "InvalidRequest",
    "Scenario",
    "plan_request",
]

EXTRA_FIELD = "streammgr_simulate"
"""The request body field through which a request picks its own behaviour."""

CREATED = 1_700_000_000
"""The ``created`` timestamp of every simulated completion (fixed, so bytes repeat)."""

MAX_TOKENS_PER_ANSWER = 100_000
"""The longest answer a request may ask for (a plan holds every token in memory)."""

# What the answers are made of: plain words, so a transcript reads as text.
_WORDS = (
    "stream", "token", "upstream", "reader", "close", "cancel", "limit", "quota",
    "tenant", "event", "chunk", "model", "answer", "prompt", "latency", "timeout",
    "deterministic", "nursery", "scope", "registry", "gateway", "request", "response",
    "socket", "buffer", "signal", "queue", "permit", "retry", "backoff", "simulated",
    "early", "late", "fast", "slow", "steady", "quiet", "bright", "careful", "simple",
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "with", "for", "on",
)  # fmt: skip


class Fault(enum.StrEnum):
    """What can go wrong with a simulated response (the value is its name on the wire)."""

    HTTP_ERROR = "http_error"
    """An error status (``status``, default 500) with an OpenAI error body."""
    RATE_LIMITED = "rate_limited"
    """429 with ``Retry-After`` and ``retry-after-ms`` headers (``retry_after`` seconds)."""
    DROP_MID_STREAM = "drop_mid_stream"
    """The connection breaks after ``fault_after`` tokens (an incomplete chunked body)."""
    STALL_BEFORE_FIRST_BYTE = "stall_before_first_byte"
    """Nothing, not even the status line, for ``stall`` seconds (``null``: forever)."""
    STALL_MID_STREAM = "stall_mid_stream"
    """After ``fault_after`` tokens, nothing for ``stall`` seconds (``null``: forever)."""
    MALFORMED_CHUNK = "malformed_chunk"
    """After ``fault_after`` tokens, a ``data:`` line that is not JSON; then the rest."""
    ERROR_IN_STREAM = "error_in_stream"
    """After ``fault_after`` tokens, a ``data: {"error": {...}}`` event; then the end."""
    NO_DONE = "no_done"
    """The body ends cleanly after ``fault_after`` tokens without ``data: [DONE]``
    (by default after the whole answer, finish reason and usage included)."""


MID_STREAM_FAULTS = frozenset(
    {
        Fault.DROP_MID_STREAM,
        Fault.STALL_MID_STREAM,
        Fault.MALFORMED_CHUNK,
        Fault.ERROR_IN_STREAM,
        Fault.NO_DONE,
    }
)
"""The faults that strike inside a stream body: they need ``"stream": true``."""

# Each option that only some faults read, and those faults: giving one to a request
# whose fault ignores it is refused, so a typo'd scenario cannot pass silently.
_FAULT_OPTIONS: dict[str, frozenset[Fault]] = {
    "fault_after": MID_STREAM_FAULTS,
    "status": frozenset({Fault.HTTP_ERROR}),
    "retry_after": frozenset({Fault.RATE_LIMITED}),
    "stall": frozenset({Fault.STALL_BEFORE_FIRST_BYTE, Fault.STALL_MID_STREAM}),
}


class InvalidRequest(Exception):
    """A request the simulated upstream refuses, as OpenAI would (an HTTP 400).

    Attributes:
        message: what was wrong and what to send instead.
        param: the offending field (``"messages"``, ``"streammgr_simulate.tokens"``),
            or ``None`` when the body as a whole is wrong.
        status: the HTTP status to answer with.
    """

    def __init__(self, message: str, *, param: str | None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


class _BadOption(ValueError):
    """Internal: one behaviour option is wrong; ``name`` says which."""

    def __init__(self, name: str, message: str, *, wrong_type: bool = False) -> None:
        super().__init__(message)
        self.name = name
        self.wrong_type = wrong_type


def _shown(value: object) -> str:
    """A value as it would appear in JSON, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(minimum: int, maximum: int | None = None) -> Callable[[str, object], object]:
    def check(name: str, value: object) -> object:
        if not _is_int(value):
            raise _BadOption(
                name, f"{name} must be an integer, got {json_type(value)}", wrong_type=True
            )
        assert isinstance(value, int)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise _BadOption(name, f"{name} must be {bound}, got {value}")
        return value

    return check


def _seconds(*, positive: bool = False, forever: bool = False) -> Callable[[str, object], object]:
    def check(name: str, value: object) -> object:
        if value is None and forever:
            return None
        what = "a number of seconds" + (" or null (forever)" if forever else "")
        if not _is_number(value):
            raise _BadOption(name, f"{name} must be {what}, got {_shown(value)}", wrong_type=True)
        assert isinstance(value, int | float)
        if value < 0 or (positive and value == 0):
            sign = "positive" if positive else "zero or more"
            raise _BadOption(name, f"{name} must be {sign} ({what}), got {value}")
        return float(value)

    return check


def _fault(name: str, value: object) -> object:
    if value is None or isinstance(value, Fault):
        return value
    if isinstance(value, str) and value in Fault._value2member_map_:
        return Fault(value)
    names = ", ".join(fault.value for fault in Fault)
    raise _BadOption(
        name,
        f"{name} must be null or one of {names}; got {_shown(value)}",
        wrong_type=not isinstance(value, str),
    )


def _optional_count(name: str, value: object) -> object:
    return None if value is None else _count(0)(name, value)


def _seed(name: str, value: object) -> object:
    if not _is_int(value):
        raise _BadOption(
            name, f"{name} must be an integer, got {json_type(value)}", wrong_type=True
        )
    return value


# Every option of a Behaviour, with the check that turns a JSON value into its field.
_OPTION_CHECKS: dict[str, Callable[[str, object], object]] = {
    "tokens": _count(0, MAX_TOKENS_PER_ANSWER),
    "first_token_latency": _seconds(),
    "token_latency": _seconds(),
    "jitter": _seconds(),
    "fault": _fault,
    "fault_after": _optional_count,
    "status": _count(400, 599),
    "retry_after": _seconds(positive=True),
    "stall": _seconds(forever=True),
    "seed": _seed,
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulated upstream answers: the server's defaults, or one request's.

    The field names are the keys of the extra body field :data:`EXTRA_FIELD`.

    Attributes:
        tokens: how many tokens an answer has (``max_tokens`` may cut it).
        first_token_latency: seconds before the first chunk.
        token_latency: seconds between two tokens.
        jitter: each delay is moved by a uniform amount in ``[-jitter, +jitter]``
            (never below zero).
        fault: the :class:`Fault` to inject, or ``None``.
        fault_after: for a mid-stream fault, how many tokens are sent before it
            strikes (at least the whole answer: after the finish and usage chunks,
            just before ``[DONE]``); ``None``: half the answer (``no_done``: all of it).
        status: the status of ``http_error`` (400 to 599).
        retry_after: the seconds ``rate_limited`` asks the client to wait.
        stall: seconds a stall lasts; ``None``: forever.
        seed: mixed with the request into the random generators.

    Raises:
        TypeError, ValueError: an option has the wrong type or is out of range
            (the message names it).
    """

    tokens: int = 16
    first_token_latency: float = 0.1
    token_latency: float = 0.02
    jitter: float = 0.0
    fault: Fault | None = None
    fault_after: int | None = None
    status: int = 500
    retry_after: float = 1.0
    stall: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for field in fields(self):
            try:
                value = _OPTION_CHECKS[field.name](field.name, getattr(self, field.name))
            except _BadOption as exc:
                raise (TypeError if exc.wrong_type else ValueError)(str(exc)) from None
            object.__setattr__(self, field.name, value)

    def with_options(self, options: object, *, where: str = EXTRA_FIELD) -> Behaviour:
        """This behaviour with a request's options (the JSON object of ``where``) applied.

        Args:
            options: the decoded JSON value of the extra field (``None``: no options).
            where: the field's name, for messages and the error's ``param``.

        Returns:
            The new behaviour (``self`` when there are no options).

        Raises:
            InvalidRequest: not an object, an unknown key, a wrong type or range, or an
                option that the chosen fault does not read.
        """
        if options is None:
            return self
        if not isinstance(options, dict):
            raise InvalidRequest(
                f"{where} must be an object, got {json_type(options)}", param=where
            )
        unknown = sorted(set(options) - set(_OPTION_CHECKS))
        if unknown:
            known = ", ".join(_OPTION_CHECKS)
            raise InvalidRequest(
                f"{where} has unknown option {unknown[0]!r}; the options are {known}",
                param=f"{where}.{unknown[0]}",
            )
        changes: dict[str, object] = {}
        for name, value in options.items():
            try:
                changes[name] = _OPTION_CHECKS[name](f"{where}.{name}", value)
            except _BadOption as exc:
                raise InvalidRequest(str(exc), param=exc.name) from None
        fault = changes.get("fault", self.fault)
        for name, faults in _FAULT_OPTIONS.items():
            if name in changes and fault not in faults:
                wanted = ", ".join(sorted(faults))
                raise InvalidRequest(
                    f"{where}.{name} applies only to the fault {wanted}, but the fault "
                    f"is {fault or 'none'}; remove it or pick one of those faults",
                    param=f"{where}.{name}",
                )
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Scenario:
    """The plan for one chat completion: what to send, when, and what goes wrong.

    Attributes:
        completion_id: the ``id`` of every chunk (``chatcmpl-`` and a hash).
        model: the model named by the request (echoed back).
        stream: the request asked for a stream.
        include_usage: a usage chunk ends the stream (``stream_options.include_usage``).
        tokens: the answer's token texts, in order, as sent.
        finish_reason: ``"stop"``, or ``"length"`` when ``max_tokens`` cut the answer.
        prompt_tokens: the prompt's size (its words) for ``usage``.
        first_token_delay: seconds before the first chunk, jitter applied.
        token_delays: seconds before each token after the first, jitter applied.
        fault: the fault to inject, or ``None``.
        fault_after: for a mid-stream fault, tokens sent before it strikes (resolved
            from the behaviour's default).
        behaviour: the behaviour the plan was made from (status, retry_after, stall).
    """

    completion_id: str
    model: str
    stream: bool
    include_usage: bool
    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    first_token_delay: float
    token_delays: tuple[float, ...]
    fault: Fault | None
    fault_after: int
    behaviour: Behaviour

    @property
    def text(self) -> str:
        """The whole answer."""
        return "".join(self.tokens)


def _field(
    payload: Mapping[str, object],
    name: str,
    accepts: Callable[[object], bool],
    expected: str,
) -> object:
    """``payload[name]`` (``None`` if absent), refused unless ``accepts`` it."""
    value = payload.get(name)
    if value is not None and not accepts(value):
        raise InvalidRequest(
            f"{name} must be {expected}, got {json_type(value)} ({_shown(value)})", param=name
        )
    return value


def _messages_of(payload: Mapping[str, object]) -> list[dict[str, object]]:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        got = "an empty array" if messages == [] else json_type(messages)
        raise InvalidRequest(
            f"messages must be a non-empty array of message objects, got {got}; send at "
            f'least [{{"role": "user", "content": "..."}}]',
            param="messages",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"{where} must be an object, got {json_type(message)}", param=where
            )
        if not isinstance(message.get("role"), str):
            raise InvalidRequest(
                f"{where}.role must be a string (such as 'user'), got "
                f"{json_type(message.get('role'))}",
                param=f"{where}.role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"{where}.content must be a string, an array of parts or null, got "
                f"{json_type(content)}",
                param=f"{where}.content",
            )
    return messages


def _prompt_words(messages: list[dict[str, object]]) -> int:
    """The prompt's size in words: what ``usage.prompt_tokens`` reports."""
    words = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    words += len(part["text"].split())
    return words


def _random(label: str, seed: int, model: str, messages: list[dict[str, object]]) -> random.Random:
    """A generator seeded by the seed, the request and ``label`` (one per use)."""
    conversation = json.dumps(messages, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{label}\0{seed}\0{model}\0{conversation}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _delay(rng: random.Random, base: float, jitter: float) -> float:
    return max(0.0, base + rng.uniform(-jitter, jitter)) if jitter else base


def plan_request(body: bytes, defaults: Behaviour) -> Scenario:
    """Plan the answer to one ``POST /v1/chat/completions`` body.

    Args:
        body: the request body (JSON).
        defaults: the server's behaviour; the extra field :data:`EXTRA_FIELD`
            overrides it for this request.

    Returns:
        The request's :class:`Scenario`: the same for the same body and defaults.

    Raises:
        InvalidRequest: the body is not JSON in UTF-8, a field is missing or has the wrong
            type (the message and ``param`` name it), a string has an unpaired
            surrogate escape, or a mid-stream fault was asked of a request that does
            not stream.
    """
    try:
        # Strict UTF-8, as OpenAI's: json.loads(bytes) would also take UTF-16 and 32,
        # and surrogates encoded as UTF-8, which the seed's hash cannot encode again.
        payload = json.loads(body.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(
            f"the request body is not valid JSON ({exc}); send a JSON object with model "
            f"and messages",
            param=None,
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest(
            f"the request body must be a JSON object, got {json_type(payload)}", param=None
        )
    where = unpaired_surrogate(body, payload)
    if where is not None:
        raise InvalidRequest(
            f"{where or 'a key of the request body'} has an unpaired surrogate escape "
            f"(\\ud800 to \\udfff without its pair), which is not text; send the "
            f"character itself or both halves of its pair",
            param=where or None,
        )
    model = payload.get("model")
    if model is None:
        raise InvalidRequest(
            "model is required: name any model (the simulator answers every name; "
            "GET /v1/models lists a few)",
            param="model",
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            f"model must be a non-empty string, got {_shown(model)}", param="model"
        )
    messages = _messages_of(payload)
    stream = _field(payload, "stream", lambda value: isinstance(value, bool), "a boolean") is True
    options = _field(payload, "stream_options", lambda value: isinstance(value, dict), "an object")
    include_usage = False
    if isinstance(options, dict):
        if not stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise InvalidRequest(
                f"stream_options.include_usage must be a boolean, got {json_type(usage)}",
                param="stream_options.include_usage",
            )
        include_usage = usage is True
    limits = [
        _field(payload, name, lambda value: _is_int(value) and value >= 1, "an integer >= 1")  # type: ignore[operator]
        for name in ("max_tokens", "max_completion_tokens")
    ]
    behaviour = defaults.with_options(payload.get(EXTRA_FIELD))
    fault = behaviour.fault
    if fault in MID_STREAM_FAULTS and not stream:
        raise InvalidRequest(
            f"{EXTRA_FIELD}.fault {fault} strikes inside a stream: send it with "
            f'"stream": true, or pick http_error, rate_limited or stall_before_first_byte',
            param=f"{EXTRA_FIELD}.fault",
        )

    count = behaviour.tokens
    finish_reason = "stop"
    for limit in limits:
        if isinstance(limit, int) and limit < count:
            count, finish_reason = limit, "length"
    words = _random("text", behaviour.seed, model, messages)
    tokens = tuple(
        (" " if index else "") + words.choice(_WORDS) for index in range(count)
    )  # fmt: skip
    timing = _random("timing", behaviour.seed, model, messages)
    jitter = behaviour.jitter
    first_token_delay = _delay(timing, behaviour.first_token_latency, jitter)
    token_delays = tuple(
        _delay(timing, behaviour.token_latency, jitter) for _ in range(max(count - 1, 0))
    )
    if behaviour.fault_after is not None:
        fault_after = behaviour.fault_after
    else:
        fault_after = count if fault is Fault.NO_DONE else count // 2
    identity = _random("id", behaviour.seed, model, messages).getrandbits(96)
    return Scenario(
        completion_id=f"chatcmpl-sim{identity:024x}",
        model=model,
        stream=stream,
        include_usage=include_usage,
        tokens=tokens,
        finish_reason=finish_reason,
        prompt_tokens=_prompt_words(messages),
        first_token_delay=first_token_delay,
        token_delays=token_delays,
        fault=fault,
        fault_after=fault_after,
        behaviour=behaviour,
    )
