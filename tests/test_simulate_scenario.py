"""streammgr.simulate's sans-IO half: scenarios, rendered responses, routing, errors.

Everything here is pure: no Trio, no I/O. The bytes are parsed back with
streammgr's own SSE parser and checked against OpenAI's wire format.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from streammgr.simulate import (
    CREATED,
    EXTRA_FIELD,
    Behaviour,
    Fault,
    InvalidRequest,
    Pause,
    SimulatedResponse,
    SimulatedUpstream,
    Write,
    plan_request,
    respond,
)
from streammgr.sse import SSEParser

MESSAGES = [{"role": "user", "content": "tell me about streams"}]
CHAT = "/v1/chat/completions"


def request(**fields: Any) -> bytes:
    body: dict[str, Any] = {"model": "sim-small", "messages": MESSAGES, "stream": True}
    body.update(fields)
    return json.dumps(body).encode()


def answer(body: bytes, behaviour: Behaviour | None = None) -> SimulatedResponse:
    return respond("POST", CHAT, body, behaviour=behaviour or Behaviour())


def events(response: SimulatedResponse) -> list[str]:
    """The ``data`` of every event of a streamed response, in order."""
    parser = SSEParser()
    parsed = parser.feed(response.body)
    parser.close()
    return [event.data for event in parsed]


def chunks(response: SimulatedResponse) -> list[dict[str, Any]]:
    return [json.loads(data) for data in events(response) if data != "[DONE]"]


def contents(response: SimulatedResponse) -> list[str]:
    return [
        chunk["choices"][0]["delta"]["content"]
        for chunk in chunks(response)
        if chunk["choices"] and "content" in chunk["choices"][0]["delta"]
    ]


# -- determinism -------------------------------------------------------------------------


def test_the_same_request_and_seed_give_the_same_bytes() -> None:
    first = answer(request(), Behaviour(seed=3, jitter=0.01))
    second = answer(request(), Behaviour(seed=3, jitter=0.01))
    assert first == second
    assert first.body == second.body


def test_a_different_seed_gives_different_tokens() -> None:
    seeds = {plan_request(request(), Behaviour(seed=seed)).tokens for seed in range(5)}
    assert len(seeds) == 5


def test_the_extra_field_seed_overrides_the_servers() -> None:
    per_request = plan_request(request(**{EXTRA_FIELD: {"seed": 9}}), Behaviour(seed=1))
    assert per_request.tokens == plan_request(request(), Behaviour(seed=9)).tokens


def test_a_different_conversation_gives_different_tokens() -> None:
    other = [{"role": "user", "content": "something else"}]
    assert plan_request(request(), Behaviour()).tokens != (
        plan_request(request(messages=other), Behaviour()).tokens
    )


def test_latencies_never_change_the_text() -> None:
    slow = plan_request(request(), Behaviour(token_latency=1.0, jitter=0.5))
    fast = plan_request(request(), Behaviour(token_latency=0.0))
    assert slow.tokens == fast.tokens
    assert slow.completion_id == fast.completion_id


def test_jitter_stays_in_its_bounds_and_never_goes_negative() -> None:
    scenario = plan_request(
        request(), Behaviour(tokens=200, first_token_latency=0.05, token_latency=0.1, jitter=0.08)
    )
    assert 0.0 <= scenario.first_token_delay <= 0.13
    assert all(0.02 <= delay <= 0.18 for delay in scenario.token_delays)
    assert len(set(scenario.token_delays)) > 100  # they do vary
    no_jitter = plan_request(request(), Behaviour(tokens=5, token_latency=0.1))
    assert no_jitter.token_delays == (0.1,) * 4
    clipped = plan_request(request(), Behaviour(tokens=50, token_latency=0.01, jitter=1.0))
    assert min(clipped.token_delays) == 0.0


def test_the_steps_pace_the_answer() -> None:
    response = answer(
        request(**{EXTRA_FIELD: {"tokens": 3, "first_token_latency": 0.2, "token_latency": 0.01}})
    )
    kinds = [
        (type(step).__name__, step.seconds if isinstance(step, Pause) else None)
        for step in response.steps
    ]
    assert kinds == [
        ("Pause", 0.2),
        ("Write", None),  # role
        ("Write", None),  # token 0
        ("Pause", 0.01),
        ("Write", None),
        ("Pause", 0.01),
        ("Write", None),
        ("Write", None),  # finish
        ("Write", None),  # [DONE]
    ]


# -- OpenAI's wire format ------------------------------------------------------------------


def test_a_stream_follows_openais_chunk_format() -> None:
    response = answer(request(), Behaviour(tokens=4))
    assert response.status == 200
    assert dict(response.headers)["content-type"].startswith("text/event-stream")
    # Only data lines and the blank lines between events: never id: or retry:.
    for line in response.body.decode().split("\n"):
        assert line == "" or line.startswith("data: "), line
    data = events(response)
    assert data[-1] == "[DONE]"
    parsed = chunks(response)
    assert len(parsed) == 1 + 4 + 1
    for chunk in parsed:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"].startswith("chatcmpl-")
        assert chunk["id"] == parsed[0]["id"]
        assert chunk["created"] == CREATED
        assert chunk["model"] == "sim-small"
        assert "usage" not in chunk
        [choice] = chunk["choices"]
        assert choice["index"] == 0
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in parsed[:-1])
    assert parsed[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    texts = contents(response)[1:]
    assert len(texts) == 4
    assert texts[0] == texts[0].lstrip()
    assert all(text.startswith(" ") for text in texts[1:])


def test_the_model_is_echoed_whatever_its_name() -> None:
    response = answer(request(model="gpt-4o-mini"))
    assert {chunk["model"] for chunk in chunks(response)} == {"gpt-4o-mini"}
    # A character outside the BMP, escaped as a surrogate pair, is one character.
    response = answer(request(model="m\U0001f600"))
    assert {chunk["model"] for chunk in chunks(response)} == {"m\U0001f600"}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_answer_with_finish_reason_length(field: str) -> None:
    response = answer(request(**{field: 3}), Behaviour(tokens=10))
    assert len(contents(response)) == 1 + 3
    assert chunks(response)[-1]["choices"][0]["finish_reason"] == "length"
    uncut = answer(request(**{field: 10}), Behaviour(tokens=10))
    assert chunks(uncut)[-1]["choices"][0]["finish_reason"] == "stop"


def test_include_usage_adds_a_usage_chunk_with_empty_choices() -> None:
    response = answer(request(stream_options={"include_usage": True}), Behaviour(tokens=5))
    parsed = chunks(response)
    assert all(chunk["usage"] is None for chunk in parsed[:-1])
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"] == {
        "prompt_tokens": 4,  # "tell me about streams"
        "completion_tokens": 5,
        "total_tokens": 9,
    }
    assert events(response)[-1] == "[DONE]"


def test_a_request_that_does_not_stream_gets_one_completion() -> None:
    behaviour = Behaviour(tokens=6, first_token_latency=0.5, token_latency=0.1)
    response = answer(request(stream=False, max_tokens=4), behaviour)
    assert dict(response.headers)["content-type"] == "application/json"
    pause = response.steps[0]
    assert isinstance(pause, Pause)
    assert pause.seconds == pytest.approx(0.8)  # the whole generation
    completion = json.loads(response.body)
    assert completion["object"] == "chat.completion"
    assert completion["created"] == CREATED
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "".join(contents(answer(request(max_tokens=4), behaviour))),
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert completion["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


def test_content_parts_count_towards_the_prompt() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two three"}]},
        {"role": "assistant", "content": None},
    ]
    assert plan_request(request(messages=messages), Behaviour()).prompt_tokens == 5


# -- routing and errors --------------------------------------------------------------------


def error_of(response: SimulatedResponse) -> dict[str, Any]:
    assert dict(response.headers)["content-type"] == "application/json"
    payload = json.loads(response.body)
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = payload["error"]
    return error


def test_models_are_listed() -> None:
    response = respond("GET", "/v1/models", b"", behaviour=Behaviour(), models=("a", "b"))
    assert response.status == 200
    listed = json.loads(response.body)
    assert listed["object"] == "list"
    assert [model["id"] for model in listed["data"]] == ["a", "b"]
    default = SimulatedUpstream().respond("GET", "/v1/models/", b"")
    assert [model["id"] for model in json.loads(default.body)["data"]] == [
        "sim-small",
        "sim-large",
    ]


def test_an_unknown_path_is_a_404_in_openais_format() -> None:
    response = respond("POST", "/v1/completions", b"{}", behaviour=Behaviour())
    assert response.status == 404
    error = error_of(response)
    assert error["code"] == "unknown_url"
    assert "POST /v1/completions" in error["message"]
    assert "POST /v1/chat/completions" in error["message"]


def test_a_wrong_method_is_a_405_naming_the_right_one() -> None:
    response = respond("GET", CHAT, b"", behaviour=Behaviour())
    assert response.status == 405
    assert dict(response.headers)["allow"] == "POST"
    assert "use POST" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object, got an array"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model", "model is required"),
        (request(model=3), "model", "model must be a non-empty string, got 3"),
        (request(model=""), "model", "model must be a non-empty string"),
        (request(messages=[]), "messages", "got an empty array"),
        (request(messages="hi"), "messages", "got a string"),
        (request(messages=[3]), "messages[0]", "messages[0] must be an object"),
        (request(messages=[{"content": "x"}]), "messages[0].role", "must be a string"),
        (
            request(messages=[{"role": "user", "content": 5}]),
            "messages[0].content",
            "a string, an array of parts or null",
        ),
        (request(stream="yes"), "stream", "stream must be a boolean, got a string"),
        (request(stream_options=[]), "stream_options", "must be an object"),
        (
            request(stream=False, stream_options={"include_usage": True}),
            "stream_options",
            "only allowed when stream is true",
        ),
        (
            request(stream_options={"include_usage": "yes"}),
            "stream_options.include_usage",
            "must be a boolean",
        ),
        (request(max_tokens=0), "max_tokens", "an integer >= 1"),
        (request(max_tokens=True), "max_tokens", "an integer >= 1, got a boolean"),
        (request(max_completion_tokens=2.5), "max_completion_tokens", "an integer >= 1"),
        (request(**{EXTRA_FIELD: []}), EXTRA_FIELD, "must be an object, got an array"),
        (
            request(**{EXTRA_FIELD: {"token": 3}}),
            f"{EXTRA_FIELD}.token",
            "unknown option 'token'; the options are tokens,",
        ),
        (
            request(**{EXTRA_FIELD: {"tokens": -1}}),
            f"{EXTRA_FIELD}.tokens",
            f"{EXTRA_FIELD}.tokens must be 0 to 100000, got -1",
        ),
        (
            request(**{EXTRA_FIELD: {"tokens": "3"}}),
            f"{EXTRA_FIELD}.tokens",
            "must be an integer, got a string",
        ),
        (
            request(**{EXTRA_FIELD: {"token_latency": -0.5}}),
            f"{EXTRA_FIELD}.token_latency",
            "must be zero or more",
        ),
        (
            request(**{EXTRA_FIELD: {"jitter": "fast"}}),
            f"{EXTRA_FIELD}.jitter",
            'must be a number of seconds, got "fast"',
        ),
        (
            request(**{EXTRA_FIELD: {"fault": "explode"}}),
            f"{EXTRA_FIELD}.fault",
            "must be null or one of http_error, rate_limited,",
        ),
        (
            request(**{EXTRA_FIELD: {"fault": "http_error", "status": 200}}),
            f"{EXTRA_FIELD}.status",
            "must be 400 to 599, got 200",
        ),
        (
            request(**{EXTRA_FIELD: {"status": 503}}),
            f"{EXTRA_FIELD}.status",
            "applies only to the fault http_error, but the fault is none",
        ),
        (
            request(**{EXTRA_FIELD: {"fault": "rate_limited", "stall": 1}}),
            f"{EXTRA_FIELD}.stall",
            "applies only to the fault stall_before_first_byte, stall_mid_stream",
        ),
        (
            request(**{EXTRA_FIELD: {"fault": "rate_limited", "retry_after": 0}}),
            f"{EXTRA_FIELD}.retry_after",
            "must be positive",
        ),
        (
            request(stream=False, **{EXTRA_FIELD: {"fault": "drop_mid_stream"}}),
            f"{EXTRA_FIELD}.fault",
            'strikes inside a stream: send it with "stream": true',
        ),
        # Regressions (found by fuzz/fuzz_gateway_request.py): a \\ud800 escape without
        # its pair decodes to a str that cannot be encoded, and the plan's seed hash
        # raised UnicodeEncodeError (a 500 from the simulator).
        (request(model="\ud800"), "model", "model has an unpaired surrogate escape"),
        (
            request(messages=[{"role": "user", "content": [{"type": "text", "text": "a\udc00"}]}]),
            "messages[0].content[0].text",
            "send the character itself or both halves of its pair",
        ),
        (request(**{"\udfff": 1}), None, "a key of the request body has an unpaired surrogate"),
        # The same surrogate encoded as UTF-8 bytes, which json.loads(bytes) accepted.
        (request(model="\ud800").replace(b"\\ud800", b"\xed\xa0\x80"), None, "not valid JSON"),
        (request().decode().encode("utf-16"), None, "can't decode byte 0xff in position 0"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(body: bytes, param: str | None, says: str) -> None:
    response = answer(body)
    assert response.status == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]
    with pytest.raises(InvalidRequest) as caught:
        plan_request(body, Behaviour())
    assert caught.value.param == param


def test_a_request_can_turn_the_servers_fault_off() -> None:
    faulty = Behaviour(fault=Fault.HTTP_ERROR)
    assert answer(request(), faulty).status == 500
    assert answer(request(**{EXTRA_FIELD: {"fault": None}}), faulty).status == 200
    # ...and an option of the server's fault is accepted without naming the fault.
    assert answer(request(**{EXTRA_FIELD: {"status": 502}}), faulty).status == 502


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"tokens": -1}, ValueError, "tokens must be 0 to 100000, got -1"),
        ({"tokens": 2.0}, TypeError, "tokens must be an integer, got a number"),
        ({"jitter": None}, TypeError, "jitter must be a number of seconds"),
        ({"stall": -1.0}, ValueError, "stall must be zero or more"),
        ({"fault": "boom"}, ValueError, "fault must be None or one of http_error"),
        ({"fault": 3}, TypeError, "fault must be null or one of"),
        ({"seed": "7"}, TypeError, "seed must be an integer"),
        ({"models": "sim-small"}, TypeError, "models must be a sequence of model names"),
    ],
)
def test_bad_server_defaults_raise_naming_the_option(
    options: dict[str, Any], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        SimulatedUpstream(**options)


# -- faults, as planned --------------------------------------------------------------------


def faulty(fault: str, **options: Any) -> SimulatedResponse:
    simulate = {EXTRA_FIELD: {"fault": fault, **options}}
    return answer(request(stream_options={"include_usage": True}, **simulate), Behaviour(tokens=10))


def test_http_error_answers_its_status_with_an_openai_error() -> None:
    response = faulty("http_error", status=503)
    assert response.status == 503
    assert response.fault is Fault.HTTP_ERROR
    error = error_of(response)
    assert error["type"] == "server_error"
    assert "HTTP 503" in error["message"]
    assert faulty("http_error").status == 500
    assert error_of(faulty("http_error", status=401))["type"] == "invalid_request_error"


def test_rate_limited_sends_both_retry_after_headers() -> None:
    response = faulty("rate_limited", retry_after=2.5)
    assert response.status == 429
    headers = dict(response.headers)
    assert headers["retry-after"] == "3"
    assert headers["retry-after-ms"] == "2500"
    assert error_of(response)["code"] == "rate_limit_exceeded"
    assert dict(faulty("rate_limited").headers)["retry-after"] == "1"


def test_drop_mid_stream_drops_after_fault_after_tokens() -> None:
    response = faulty("drop_mid_stream", fault_after=4)
    assert response.drops
    assert len(contents(response)) == 1 + 4
    assert "[DONE]" not in events(response)
    assert len(contents(faulty("drop_mid_stream"))) == 1 + 5  # half by default


def test_a_fault_after_the_whole_answer_strikes_just_before_done() -> None:
    response = faulty("drop_mid_stream", fault_after=10)
    parsed = chunks(response)
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert parsed[-1]["usage"]["completion_tokens"] == 10
    assert events(response)[-1] != "[DONE]"
    assert faulty("drop_mid_stream", fault_after=99).body == response.body


def test_stall_before_first_byte_delays_the_head() -> None:
    assert faulty("stall_before_first_byte").head_delay is None
    response = faulty("stall_before_first_byte", stall=2.5)
    assert response.head_delay == 2.5
    assert events(response)[-1] == "[DONE]"
    not_streamed = answer(
        request(stream=False, **{EXTRA_FIELD: {"fault": "stall_before_first_byte", "stall": 1}})
    )
    assert not_streamed.head_delay == 1.0
    assert json.loads(not_streamed.body)["object"] == "chat.completion"


def test_stall_mid_stream_pauses_after_fault_after_tokens() -> None:
    forever = faulty("stall_mid_stream", fault_after=2)
    assert forever.steps[-1] == Pause(None)
    assert len(contents(forever)) == 1 + 2
    timed = faulty("stall_mid_stream", fault_after=2, stall=3.0)
    position = timed.steps.index(Pause(3.0))
    written = [step for step in timed.steps[:position] if isinstance(step, Write)]
    assert len(written) == 1 + 2
    assert events(timed)[-1] == "[DONE]"
    assert len(contents(timed)) == 1 + 10


def test_malformed_chunk_sends_a_data_line_that_is_not_json() -> None:
    response = faulty("malformed_chunk", fault_after=3)
    data = events(response)
    bad = [line for line in data if line != "[DONE]" and not _is_json(line)]
    assert len(bad) == 1
    assert data.index(bad[0]) == 1 + 3
    assert data[-1] == "[DONE]"  # the rest follows


def test_error_in_stream_sends_an_error_event_then_ends() -> None:
    response = faulty("error_in_stream", fault_after=2)
    data = events(response)
    assert len(data) == 1 + 2 + 1
    error = json.loads(data[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert not response.drops


def test_no_done_ends_cleanly_without_done() -> None:
    whole = faulty("no_done")
    assert not whole.drops
    assert events(whole)[-1] != "[DONE]"
    assert chunks(whole)[-2]["choices"][0]["finish_reason"] == "stop"  # then usage
    cut = faulty("no_done", fault_after=3)
    assert len(contents(cut)) == 1 + 3
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks(cut))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
