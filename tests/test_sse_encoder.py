"""Tests for the server side of :mod:`streammgr.sse`: encode, encode_comment, is_done."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streammgr.sse import OPENAI_DONE, ServerSentEvent, encode, encode_comment, is_done

from .sse_reference import E, assert_parses, chunked, events_strategy, run

# -- encode ---------------------------------------------------------------------------


def test_encode() -> None:
    assert encode(E(data="hi")) == b"data: hi\n\n"
    assert encode(E(data="")) == b"data: \n\n"
    assert encode(E(event="message", data="x")) == b"data: x\n\n"
    assert encode(E(event="", data="x")) == b"data: x\n\n"
    assert (
        encode(E(event="update", data="a\nb", id="7", retry=2500))
        == b"event: update\nid: 7\nretry: 2500\ndata: a\ndata: b\n\n"
    )
    assert encode(E(data=" leading space")) == b"data:  leading space\n\n"
    assert encode(E(data="é")) == "data: é\n\n".encode()


def test_encode_treats_cr_and_crlf_in_data_as_line_breaks() -> None:
    encoded = encode(E(data="a\r\nb\rc\nd\r"))
    assert encoded == b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
    assert run([encoded]).events == [E(data="a\nb\nc\nd\n")]


@pytest.mark.parametrize(
    "event",
    [
        E(event="a\nb", data="x"),
        E(event="a\rb", data="x"),
        E(id="1\n", data="x"),
        E(id="1\r", data="x"),
        E(id="1\x002", data="x"),
        E(data="x", retry=-1),
    ],
    ids=repr,
)
def test_encode_rejects_injection(event: ServerSentEvent) -> None:
    with pytest.raises(ValueError, match="must"):
        encode(event)


def test_encode_rejects_text_that_is_not_utf8_encodable() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        encode(E(data="\ud800"))


def test_encode_comment() -> None:
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment() == b":\n\n"
    assert run([encode_comment("x"), encode(E(data="y")), encode_comment()]).events == [E(data="y")]
    for text in ("a\nb", "a\r"):
        with pytest.raises(ValueError, match="CR or LF"):
            encode_comment(text)


def test_encode_round_trips() -> None:
    events = [
        E(data="plain"),
        E(event="update", data="multi\nline\n\ndata", id="1", retry=10),
        E(data="", id="1"),
        E(event="x", data=" spaced ", id="2"),
        E(data="\u2028\u2029\x85\x0b\x0c", id="2"),
    ]
    stream = b"".join(map(encode, events))
    assert_parses(stream, events, last_event_id="2", retry=10)


def test_is_done() -> None:
    assert OPENAI_DONE == "[DONE]"
    assert is_done(E(data="[DONE]"))
    assert not is_done(E(data="[DONE] "))
    assert not is_done(E(data='{"done": true}'))
    assert run([b"data: [DONE]\n\n"]).events == [E(data=OPENAI_DONE)]


# -- properties -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(events=events_strategy, data=st.data())
def test_encoded_events_parse_back_under_any_chunking(
    events: list[ServerSentEvent], data: st.DataObject
) -> None:
    stream = b"".join(map(encode, events))
    expected = []
    last_id = ""
    for event in events:
        last_id = event.id or last_id  # an empty id is not sent, so the last one persists
        expected.append(
            E(
                event=event.event or "message",
                data=event.data.replace("\r\n", "\n").replace("\r", "\n"),
                id=last_id,
                retry=event.retry,
            )
        )
    assert run(chunked(data, stream)).events == expected
