"""Sans-IO: what the simulated upstream sends, as data: status, headers, then steps.

:func:`respond` routes a request (method, path, body) to a
:class:`SimulatedResponse`: its status and headers, how long to wait before them,
then a list of steps, :class:`Write` (bytes to send) and :class:`Pause` (seconds to
wait, or forever), and whether the connection breaks after the last step. The ASGI
app and the httpx transport carry the steps out with ``trio.sleep``, so the mock
clock drives them, and neither decides anything of its own.

The bytes follow OpenAI's wire format: ``chat.completion.chunk`` objects as
``data:`` lines (compact JSON, one event per line, never an ``id:`` or ``retry:``
field), the role in the first delta, the finish reason in the last, a usage chunk
with empty ``choices`` when asked for, then ``data: [DONE]``; a request that does not
stream gets one ``chat.completion`` object. Errors use OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._scenario import CREATED, Behaviour, Fault, InvalidRequest, Scenario, plan_request

__all__ = [
    "DEFAULT_MODELS",
    "Pause",
    "SimulatedResponse",
    "Write",
    "error_response",
    "models_response",
    "render",
    "respond",
]

DEFAULT_MODELS = ("sim-small", "sim-large")
"""The models ``GET /v1/models`` lists (every other name is answered too)."""

_FINGERPRINT = "fp_streammgr_sim"
_SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
)
_JSON_HEADERS = (("content-type", "application/json"),)
_CHAT_PATH = "/v1/chat/completions"
_MODELS_PATH = "/v1/models"
_ROUTES = {_CHAT_PATH: "POST", _MODELS_PATH: "GET"}
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Write:
    """Send these bytes (one read for the client, one SSE event in a stream)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait this many seconds before the next step; ``None``: forever."""

    seconds: float | None


@dataclass(frozen=True, slots=True)
class SimulatedResponse:
    """One response, planned: the I/O layers carry it out as it says.

    Attributes:
        status: the HTTP status.
        headers: the response headers (lower-case names).
        head_delay: seconds to wait before the status and headers; ``None``: they
            are never sent (a stall before the first byte that lasts forever).
        steps: what follows the headers, in order.
        drops: the connection breaks after the last step, instead of the body
            ending cleanly.
        fault: the fault the response carries, or ``None``.
        scenario: the chat completion's plan, or ``None`` for other responses.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    head_delay: float | None
    steps: tuple[Write | Pause, ...]
    drops: bool = False
    fault: Fault | None = None
    scenario: Scenario | None = None

    @property
    def body(self) -> bytes:
        """Every byte the steps send, joined (what a patient client receives)."""
        return b"".join(step.data for step in self.steps if isinstance(step, Write))


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_response(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    fault: Fault | None = None,
) -> SimulatedResponse:
    """An error answer in OpenAI's format: ``{"error": {message, type, param, code}}``.

    Args:
        status: the HTTP status.
        message: what was wrong and what to do.
        error_type: the error's ``type``.
        param: the offending request field, or ``None``.
        code: the error's ``code``, or ``None``.
        headers: extra headers (``allow``, ``retry-after``...).
        fault: the fault this error simulates, if it is one.

    Returns:
        The response, sent at once.
    """
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return SimulatedResponse(
        status,
        (*_JSON_HEADERS, *headers),
        0.0,
        (Write(_dumps({"error": error})),),
        fault=fault,
    )


def models_response(models: Sequence[str]) -> SimulatedResponse:
    """``GET /v1/models``: the listed models, in OpenAI's list format."""
    data = [
        {"id": model, "object": "model", "created": CREATED, "owned_by": "streammgr"}
        for model in models
    ]
    return SimulatedResponse(
        200, _JSON_HEADERS, 0.0, (Write(_dumps({"object": "list", "data": data})),)
    )


def _chunk(scenario: Scenario, delta: dict[str, object], finish_reason: str | None = None) -> bytes:
    """One ``data:`` event holding a ``chat.completion.chunk`` with one choice."""
    chunk: dict[str, object] = {
        "id": scenario.completion_id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": scenario.model,
        "system_fingerprint": _FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if scenario.include_usage:
        chunk["usage"] = None  # as OpenAI: every chunk but the last has "usage": null
    return b"data: " + _dumps(chunk) + b"\n\n"


def _usage(scenario: Scenario) -> dict[str, int]:
    completion = len(scenario.tokens)
    return {
        "prompt_tokens": scenario.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": scenario.prompt_tokens + completion,
    }


def _fault_error(message: str) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": "server_error",
            "param": None,
            "code": "simulated_fault",
        }
    }


def _stream_steps(scenario: Scenario) -> tuple[list[Write | Pause], bool]:
    """The steps of a streamed answer, with its fault; and whether it drops."""
    # The answer as (delay before, event) pairs, faults aside.
    events: list[tuple[float, bytes]] = [
        (scenario.first_token_delay, _chunk(scenario, {"role": "assistant", "content": ""}))
    ]
    for index, token in enumerate(scenario.tokens):
        delay = scenario.token_delays[index - 1] if index else 0.0
        events.append((delay, _chunk(scenario, {"content": token})))
    events.append((0.0, _chunk(scenario, {}, scenario.finish_reason)))
    if scenario.include_usage:
        usage_chunk = {
            "id": scenario.completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": scenario.model,
            "system_fingerprint": _FINGERPRINT,
            "choices": [],
            "usage": _usage(scenario),
        }
        events.append((0.0, b"data: " + _dumps(usage_chunk) + b"\n\n"))
    events.append((0.0, _DONE))

    fault = scenario.fault
    # Where a mid-stream fault strikes: after the role chunk and fault_after tokens;
    # at least the whole answer means after the finish and usage chunks, before [DONE].
    tokens = len(scenario.tokens)
    cut = 1 + scenario.fault_after if scenario.fault_after < tokens else len(events) - 1
    before, after = events[:cut], events[cut:]
    drops = False
    if fault is Fault.DROP_MID_STREAM:
        after, drops = [], True
    elif fault is Fault.STALL_MID_STREAM:
        stall = scenario.behaviour.stall
        # A stall that lasts forever is the last step: nothing after it is reachable.
        after = [(math.inf, b"")] if stall is None else [(stall, b""), *after]
    elif fault is Fault.MALFORMED_CHUNK:
        # A data line cut inside its JSON: what a broken proxy or a buggy server sends.
        broken = f'data: {{"id":"{scenario.completion_id}","choices":[{{"index":0,"delta":'
        after = [(0.0, broken.encode() + b'{"content":"unterminated\n\n'), *after]
    elif fault is Fault.ERROR_IN_STREAM:
        message = "the simulated upstream failed mid-stream (fault error_in_stream)"
        after = [(0.0, b"data: " + _dumps(_fault_error(message)) + b"\n\n")]
    elif fault is Fault.NO_DONE:
        after = []
    else:
        before, after = events, []

    steps: list[Write | Pause] = []
    for delay, data in [*before, *after]:
        if delay:
            steps.append(Pause(None if math.isinf(delay) else delay))
        if data:
            steps.append(Write(data))
    return steps, drops


def render(scenario: Scenario) -> SimulatedResponse:
    """The response a scenario plans: a stream, a whole completion, or its fault.

    Args:
        scenario: the plan, from :func:`~streammgr.simulate.plan_request`.

    Returns:
        The response, ready for an I/O layer to carry out.
    """
    behaviour = scenario.behaviour
    fault = scenario.fault
    if fault is Fault.HTTP_ERROR:
        status = behaviour.status
        return error_response(
            status,
            f"the simulated upstream failed with HTTP {status} (fault http_error)",
            error_type="server_error" if status >= 500 else "invalid_request_error",
            code="simulated_fault",
            fault=fault,
        )
    if fault is Fault.RATE_LIMITED:
        seconds = behaviour.retry_after
        return error_response(
            429,
            f"rate limit reached (fault rate_limited); retry after {seconds:g} seconds",
            error_type="requests",
            code="rate_limit_exceeded",
            headers=(
                ("retry-after", str(max(1, math.ceil(seconds)))),
                ("retry-after-ms", str(round(seconds * 1000))),
            ),
            fault=fault,
        )
    head_delay: float | None = 0.0
    if fault is Fault.STALL_BEFORE_FIRST_BYTE:
        head_delay = behaviour.stall
    if scenario.stream:
        steps, drops = _stream_steps(scenario)
        return SimulatedResponse(
            200, _SSE_HEADERS, head_delay, tuple(steps), drops, fault, scenario
        )
    completion = {
        "id": scenario.completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": scenario.model,
        "system_fingerprint": _FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": scenario.text, "refusal": None},
                "logprobs": None,
                "finish_reason": scenario.finish_reason,
            }
        ],
        "usage": _usage(scenario),
    }
    generation = scenario.first_token_delay + sum(scenario.token_delays)
    written: tuple[Write | Pause, ...] = (Write(_dumps(completion)),)
    if generation:
        written = (Pause(generation), *written)
    return SimulatedResponse(200, _JSON_HEADERS, head_delay, written, False, fault, scenario)


def respond(
    method: str,
    path: str,
    body: bytes,
    *,
    behaviour: Behaviour,
    models: Sequence[str] = DEFAULT_MODELS,
) -> SimulatedResponse:
    """Route one request to its response, as the simulated upstream answers it.

    ``POST /v1/chat/completions`` answers any model; ``GET /v1/models`` lists
    ``models``; another method on those paths is a 405, any other path a 404, a body
    that is not a valid request a 400 naming the field, all in OpenAI's error format.

    Args:
        method: the HTTP method.
        path: the URL path (without the query).
        body: the request body.
        behaviour: the server's defaults (a request's extra field overrides them).
        models: what ``GET /v1/models`` lists.

    Returns:
        The response to carry out.
    """
    path = path.rstrip("/") or "/"
    allowed = _ROUTES.get(path)
    if allowed is None:
        return error_response(
            404,
            f"unknown request URL: {method} {path}; the simulated upstream serves "
            f"POST {_CHAT_PATH} and GET {_MODELS_PATH}",
            code="unknown_url",
        )
    if method.upper() != allowed:
        return error_response(
            405,
            f"{method} is not allowed on {path}; use {allowed}",
            code="method_not_allowed",
            headers=(("allow", allowed),),
        )
    if path == _MODELS_PATH:
        return models_response(models)
    try:
        scenario = plan_request(body, behaviour)
    except InvalidRequest as exc:
        return error_response(exc.status, exc.message, param=exc.param)
    return render(scenario)
