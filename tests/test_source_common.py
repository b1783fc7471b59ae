"""sources/_common.py: the one list of credential names, URLs shown without secrets,
error-body excerpts, and Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from streammgr.sources._common import (
    body_excerpt,
    excerpt_margin,
    header_secrets,
    is_credential_name,
    redact_url,
    retry_after,
    url_secrets,
)


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "Cookie",
        "X-Api-Key",
        "X-Auth-Token",
        "Session-Id",
        "X-Amz-Signature",
        "sig",
        "X-Goog-Credential",
        "X-Passwd",
        "client_secret",
    ],
)
def test_credential_names(name: str) -> None:
    assert is_credential_name(name)
    assert is_credential_name(name.upper())


@pytest.mark.parametrize("name", ["Accept", "Content-Type", "X-Request-Id", "sv", "channel"])
def test_other_names(name: str) -> None:
    assert not is_credential_name(name)


def test_header_secrets() -> None:
    assert header_secrets([("Authorization", "Bearer abcd1234")]) == [
        "Bearer abcd1234",
        "abcd1234",
    ]
    # A credential scheme counts whatever the header is called; short values do not.
    assert header_secrets([("X-Forwarded", "Token zyxw9876"), ("X-Api-Key", "abc")]) == ["zyxw9876"]


def test_url_secrets_are_written_and_decoded() -> None:
    secrets = url_secrets("https://u:p%40ss@h/x?sig=a%2Bb%2F&q=visible&t=ab")
    assert secrets == ["p%40ss", "p@ss", "a%2Bb%2F", "a+b/"]
    assert url_secrets("wss://h/x?q=visible&t=ab", every_query_value=True) == ["visible"]


def test_redact_url_keeps_the_shape() -> None:
    assert redact_url("https://h/a/b?x=1&flag&empty=&q=v#top", []) == (
        "https://h/a/b?x=1&flag&empty=&q=v#top"
    )
    assert redact_url("https://ghp_abcdef123@h/x", []) == "https://[REDACTED]@h/x"
    assert redact_url("https://h/x#frag%2Fsecret", ["frag/secret"]) == "https://h/x#[REDACTED]"
    assert redact_url("https://h/x?q=Bearer%20abcdef", []) == "https://h/x?q=[REDACTED]"


# -- Retry-After (RFC 9110, 10.2.3), one parser for every source ------------------------

NOW = datetime(2024, 11, 25, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (b"7", 7.0),  # a WebSocket handshake's header arrives as bytes
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),  # never a negative wait
        ("86400", 86_400.0),  # a day or more is returned: max_delay decides, not the parser
        ("604800", 604_800.0),
        # The three HTTP-date formats a recipient must accept, counted from NOW.
        ("Mon, 25 Nov 2024 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Monday, 25-Nov-24 12:01:00 GMT", 60.0),  # RFC 850
        ("Mon Nov 25 13:00:00 2024", 3600.0),  # asctime: no zone, GMT
        ("Tue, 26 Nov 2024 12:00:00 GMT", 86_400.0),
        (b"Mon, 25 Nov 2024 12:00:30 GMT", 30.0),
        ("Mon, 25 Nov 2024 11:00:00 GMT", 0.0),  # in the past: no wait
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
    ],
)
def test_retry_after(value: str | bytes, seconds: float) -> None:
    assert retry_after(value, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "-inf", "Mon, 99 Foo 2024"])
def test_retry_after_that_says_nothing(value: str | None) -> None:
    assert retry_after(value, NOW) is None


def test_retry_after_date_is_counted_from_the_clock_given() -> None:
    date = "Mon, 25 Nov 2024 12:10:00 GMT"
    assert retry_after(date, NOW) == 600
    assert retry_after(date, NOW + timedelta(minutes=5)) == 300
    # Any timezone-aware clock: the same instant gives the same answer.
    assert retry_after(date, NOW.astimezone(timezone(timedelta(hours=-5)))) == 600


# -- error-body excerpts -----------------------------------------------------------------


def test_body_excerpt_redacts_a_secret_across_the_limit_before_the_cut() -> None:
    secret = "kQ7vR2mX9pL4wN8sT1yB6hJ3dF5gZ0cV"
    body = b"x" * 10 + secret.encode() + b" is not valid"
    assert body_excerpt(body, 20, [secret], whole=True) == "x" * 10 + "[REDACTED]"
    # The marker would straddle the cut: cut before it, no fragment of either.
    assert body_excerpt(body, 15, [secret], whole=True) == "x" * 10
    assert body_excerpt(b"short", 20, [], whole=True) == "short"
    assert body_excerpt("é".encode() + b"\xff", 20, [], whole=True) == "é\ufffd"


def test_body_excerpt_of_a_body_read_only_in_part() -> None:
    wanted = 5 + excerpt_margin([])
    # More than limit + margin was read: the body counts as cut, whatever the caller says.
    assert body_excerpt(b"a" * (wanted + 1), 5, [], whole=True) == "aaaaa"
    assert body_excerpt(b"abc", 5, [], whole=False) == "abc"
