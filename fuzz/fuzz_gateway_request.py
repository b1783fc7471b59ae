#!/usr/bin/env python3
"""Fuzz the parsing of a chat-completions request: the gateway's and the simulator's.

Each input is one control byte and the rest. With the control byte even, the rest is
the request body as it came; odd, the rest drives the building of a JSON object with
the fields both parsers read (``model``, ``messages``, ``stream``, ``stream_options``,
``n``, ``max_tokens``, ``streammgr_simulate``...) and values of every JSON type, strings
with escapes of any code point included, which is then serialised as the body. It asserts:

- ``parse_chat_request`` (streammgr/server/_chat_request.py) returns the request object or
  raises its typed bad request (a 400 naming the field), never anything else; a
  request it accepts can be sent upstream (encoded as UTF-8 JSON, as httpx does);
- ``plan_request`` (streammgr/simulate/_scenario.py) returns a scenario or raises
  ``InvalidRequest`` (a 400), never anything else;
- ``caller_key`` gives a short key for any ``authorization`` and key header values:
  the key header's value cut to 128 characters, a hash of the credential, or
  ``anonymous``; never the credential itself.

Run it (libFuzzer flags; a corpus directory is read, and new inputs are written to it):

    python fuzz/fuzz_gateway_request.py -runs=100000 fuzz/corpus/gateway_request
    python fuzz/fuzz_gateway_request.py -max_total_time=600 -artifact_prefix=/tmp/ /tmp/corpus-gw

See docs/sse.md, "Robustness".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Protocol

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(
    include=[
        "streammgr.server._chat_request",
        "streammgr.simulate._scenario",
        "streammgr._validate",
    ]
):
    from starlette.datastructures import Headers

    from streammgr.server._chat_request import BadRequest, caller_key, parse_chat_request
    from streammgr.simulate._scenario import Behaviour, InvalidRequest, Scenario, plan_request

KEYS = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "include_usage",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "streammgr_simulate",
    "role",
    "content",
    "text",
    "tokens",
    "fault",
    "fault_after",
    "status",
    "retry_after",
    "stall",
    "seed",
    "jitter",
    "first_token_latency",
    "token_latency",
)
WORDS = ("user", "drop_mid_stream", "no_done", "http_error", "rate_limited", "stall_mid_stream")


class DataProvider(Protocol):
    """What this target uses of ``atheris.FuzzedDataProvider`` (atheris ships no types)."""

    def ConsumeBool(self) -> bool: ...
    def ConsumeBytes(self, count: int) -> bytes: ...
    def ConsumeFloat(self) -> float: ...
    def ConsumeInt(self, byte_count: int) -> int: ...
    def ConsumeIntInRange(self, low: int, high: int) -> int: ...
    def ConsumeUnicode(self, count: int) -> str: ...
    def PickValueInList(self, values: list[str]) -> str: ...


HASHED = re.compile(r"key-[0-9a-f]{16}")
DEFAULTS = Behaviour()


def json_value(fdp: DataProvider, depth: int) -> object:
    """A JSON value drawn from ``fdp``; containers only above ``depth`` 0."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth > 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-3, 200_000)
    if kind == 3:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 80))
    if kind == 4:
        return fdp.ConsumeFloat()  # inf and nan too: json.dumps writes Infinity, NaN
    if kind == 5:
        return fdp.PickValueInList(list(WORDS + KEYS))
    if kind == 6:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 12))  # surrogates too
    if kind == 7:
        return [json_value(fdp, depth - 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {json_key(fdp): json_value(fdp, depth - 1) for _ in range(fdp.ConsumeIntInRange(0, 6))}


def json_key(fdp: DataProvider) -> str:
    """Mostly a key that the parsers read; sometimes any string."""
    if fdp.ConsumeIntInRange(0, 7):
        return fdp.PickValueInList(list(KEYS))
    return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 6))


def request_body(fdp: DataProvider) -> bytes:
    """A request object drawn from ``fdp``, mostly well formed, as JSON bytes."""
    body: dict[str, object] = {}
    if fdp.ConsumeIntInRange(0, 7):
        body["model"] = (
            fdp.PickValueInList(["sim", "gpt-4o", ""])
            if fdp.ConsumeBool()
            else (json_value(fdp, 1))
        )
    if fdp.ConsumeIntInRange(0, 7):
        body["messages"] = [
            {"role": "user", "content": json_value(fdp, 2)}
            if fdp.ConsumeBool()
            else (json_value(fdp, 2))
            for _ in range(fdp.ConsumeIntInRange(0, 3))
        ]
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        body[json_key(fdp)] = json_value(fdp, 3)
    return json.dumps(body, ensure_ascii=fdp.ConsumeBool()).encode("utf-8", "surrogatepass")


def check_gateway(body: bytes) -> None:
    try:
        payload = parse_chat_request(body)
    except BadRequest as exc:
        refused: BadRequest = exc
    else:
        check_request(payload)
        return
    assert refused.status == 400, refused.status
    assert str(refused), "an empty message"
    assert refused.param is None or isinstance(refused.param, str)


def check_request(payload: dict[str, object]) -> None:
    """What the gateway relies on in a request it accepted."""
    assert isinstance(payload, dict)
    assert isinstance(payload["model"], str)
    assert payload["model"]
    assert isinstance(payload["messages"], list)
    assert payload["messages"]
    assert all(isinstance(message, dict) for message in payload["messages"])
    # What the gateway sends upstream for stream: false: httpx's json= encoding.
    json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()


def check_simulator(body: bytes) -> None:
    try:
        scenario = plan_request(body, DEFAULTS)
    except InvalidRequest as exc:
        refused: InvalidRequest = exc
    else:
        assert isinstance(scenario, Scenario)
        assert len(scenario.token_delays) == max(len(scenario.tokens) - 1, 0)
        return
    assert refused.status == 400, refused.status
    assert refused.message, "an empty message"


def check_caller_key(fdp: DataProvider) -> None:
    authorization = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    named = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
    key_header = (None, "x-caller", "X-Caller", "authorization")[fdp.ConsumeIntInRange(0, 3)]
    # As an ASGI server hands them over: raw bytes, decoded by Starlette as latin-1.
    headers = Headers(raw=[(b"authorization", authorization), (b"x-caller", named)])
    key = caller_key(headers, key_header)
    assert isinstance(key, str)
    assert key
    if key_header == "authorization":  # named like a credential: hashed, as without it
        assert key == caller_key(headers), key
    elif key_header is not None and headers.get(key_header, "").strip():
        assert key == headers[key_header].strip()[:128]
    else:
        assert key == "anonymous" or HASHED.fullmatch(key), key


def test_one_input(data: bytes) -> None:
    """One fuzzer input: a control byte, then a body or what builds one."""
    if not data:
        return
    if data[0] % 2:
        fdp = atheris.FuzzedDataProvider(data[1:])
        body = request_body(fdp)
        check_caller_key(fdp)
    else:
        body = data[1:]
    check_gateway(body)
    check_simulator(body)


def main() -> None:
    """Run the fuzzer with the command line's libFuzzer flags."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
