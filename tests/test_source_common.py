"""sources/_common.py: the one list of credential names, and URLs shown without secrets."""

from __future__ import annotations

import pytest

from streammgr.sources._common import (
    header_secrets,
    is_credential_name,
    redact_url,
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
