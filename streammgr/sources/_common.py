"""What the sources share, once, so that the SSE and the WebSocket source cannot
drift apart: which parts of a request are credentials, how a URL and an error body
are shown without them, and how long a ``Retry-After`` header asks to wait.

One list of words (:data:`CREDENTIAL_WORDS`) decides which header and query
parameter names carry credentials, for every source. Secrets are compared decoded,
and :func:`~streammgr._logging.redact` matches them in any encoding, so a value
written percent-encoded in a URL (``sig=ab%2Bcd%3D``) is found as surely as a plain
one. Nothing here does I/O or reads a clock: :func:`retry_after` is given the time.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

import httpx

from .._logging import excerpt, redact

__all__ = [
    "CREDENTIAL_SCHEMES",
    "CREDENTIAL_WORDS",
    "MIN_SECRET_LENGTH",
    "api_url",
    "body_excerpt",
    "excerpt_margin",
    "header_secrets",
    "is_credential_name",
    "redact_url",
    "retry_after",
    "url_secrets",
]

CREDENTIAL_WORDS = (
    "auth",  # Authorization, Proxy-Authorization, X-Auth-Token
    "cookie",
    "credential",  # X-Amz-Credential, X-Goog-Credential
    "key",  # X-Api-Key, api-key, ?key= (Google)
    "pass",  # password, passwd, passphrase
    "secret",
    "session",  # session ids, X-Amz-Security-Token's siblings
    "sig",  # sig= (Azure SAS), X-Amz-Signature, X-Goog-Signature
    "token",
)
"""A header or query parameter whose name contains one of these words (in any
case) carries a credential."""

CREDENTIAL_SCHEMES = frozenset({"basic", "bearer", "digest", "token"})
"""Authorization schemes: in a header value ``"<scheme> <credential>"``, the
credential is a secret whatever the header's name."""

MIN_SECRET_LENGTH = 4
"""Values found in a request that are shorter than this are not scrubbed from
free text (they would match everywhere); they are still hidden in the URL."""

_EXCERPT_MARGIN = 256  # bytes, for credentials no one named (``sk-...``, ``Bearer ...``)
_LONGEST_FORM = 9  # characters a character may take in text: "%E2%82%AC" for "€"

_CREDENTIAL_NAME = re.compile("|".join(CREDENTIAL_WORDS), re.IGNORECASE)
_REDACTED = "[REDACTED]"


def api_url(base_url: str, path: str) -> str:
    """``path`` (``"/chat/completions"``) under an API root such as the openai SDK's
    ``base_url``, keeping the root's query string (Azure's ``?api-version=...``).

    Raises:
        ValueError: ``base_url`` is not a URL.
    """
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}") from None
    return str(url.copy_with(path=url.path.rstrip("/") + path))


def excerpt_margin(secrets: Iterable[str]) -> int:
    """How many bytes past an excerpt's limit to read, so that a secret (one of
    ``secrets`` in any encoding, or a credential-shaped token) that straddles the
    limit is seen whole, and redacted, before the excerpt is cut."""
    longest = max((len(secret) for secret in secrets), default=0)
    return max(_EXCERPT_MARGIN, _LONGEST_FORM * longest)


def body_excerpt(body: bytes, limit: int, secrets: Sequence[str], *, whole: bool) -> str:
    """Up to ``limit`` characters of an upstream's (error) body, for an error message.

    Decoded leniently, redacted, then cut (:func:`~streammgr._logging.excerpt`): the
    caller reads up to ``limit + excerpt_margin(secrets)`` bytes, so that a secret the
    upstream echoed across the limit is recognised whole before the cut.

    Args:
        body: the bytes read (more than needed is fine).
        limit: the longest excerpt, in characters.
        secrets: the values to scrub.
        whole: ``body`` is the entire body (nothing was left unread).
    """
    wanted = limit + excerpt_margin(secrets)
    text = body[:wanted].decode("utf-8", "replace")
    return excerpt(text, limit, secrets, complete=whole and len(body) <= wanted)


def retry_after(value: str | bytes | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (RFC 9110, 10.2.3).

    Both forms: delta-seconds (``"120"``; a decimal is accepted too) and an
    HTTP-date in any of the three formats RFC 9110 says a recipient must accept
    (``"Sun, 06 Nov 1994 08:49:37 GMT"``, RFC 850, asctime), counted from ``now``.
    Long waits are returned as they are (a day or more too): whether to wait that
    long is the caller's decision. A negative delta or a date in the past is ``0``.

    Args:
        value: the header's value (``bytes`` are decoded as Latin-1), or ``None``.
        now: the current wall-clock time, timezone-aware (``datetime.now(UTC)``);
            an argument, so that tests are deterministic.

    Returns:
        The seconds, or ``None`` when there is no header or it is neither form.
    """
    if value is None:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # asctime and "-0000" dates: HTTP-dates are GMT
    return max((when - now).total_seconds(), 0.0)


def is_credential_name(name: str) -> bool:
    """Whether a header or query parameter called ``name`` carries a credential."""
    return _CREDENTIAL_NAME.search(name) is not None


def header_secrets(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The secret parts of request headers: the whole value of a header named like
    a credential, and the credential of any ``<scheme> <credential>`` value (plus
    the password inside a ``Basic`` one)."""
    found: list[str] = []
    for name, value in headers:
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if is_credential_name(name):
            found.append(value)
        if credential and (scheme.lower() in CREDENTIAL_SCHEMES or is_credential_name(name)):
            found.append(credential)
            if scheme.lower() == "basic":
                found.extend(_basic_parts(credential))
    return [value for value in found if len(value) >= MIN_SECRET_LENGTH]


def _basic_parts(credential: str) -> list[str]:
    """The password of a ``Basic`` credential (``base64(user:password)``)."""
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return []
    _, _, password = decoded.partition(":")
    return [password] if password else []


def url_secrets(url: str, *, every_query_value: bool = False) -> list[str]:
    """The secret parts of a URL, as written and decoded: the userinfo (password,
    or a lone user name, which is a token in ``https://<token>@host``) and the
    values of query parameters named like a credential (or every query value, with
    ``every_query_value``). A value written with fewer than
    :data:`MIN_SECRET_LENGTH` characters is left out (it is still hidden in the URL
    by :func:`redact_url`)."""
    parts = urllib.parse.urlsplit(url)
    written: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        written.append(password if colon else user)
    written += [
        value
        for name, value in _query_pairs(parts.query)
        if every_query_value or is_credential_name(urllib.parse.unquote_plus(name))
    ]
    found = []
    for value in written:
        if len(value) >= MIN_SECRET_LENGTH:
            found += [value, urllib.parse.unquote_plus(value), urllib.parse.unquote(value)]
    return [value for value in dict.fromkeys(found) if value]


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``(name, value)`` of each ``name=value`` of a query, still encoded."""
    return [(name, value) for name, _, value in (part.partition("=") for part in query.split("&"))]


def _shown_parameter(part: str, every_query_value: bool, hides: Callable[[str, str], bool]) -> str:
    """One ``name=value`` of a query, its value ``[REDACTED]`` if it is a secret."""
    name, equals, value = part.partition("=")
    if not value:
        return part
    if (
        (every_query_value and len(value) >= MIN_SECRET_LENGTH)
        or is_credential_name(urllib.parse.unquote_plus(name))
        or hides(value, urllib.parse.unquote_plus(value))
    ):
        return f"{name}{equals}{_REDACTED}"
    return part


def redact_url(url: str, secrets: Sequence[str], *, every_query_value: bool = False) -> str:
    """``url`` as it may be shown: in errors, reprs, logs and the registry.

    The userinfo's password (or a lone user name) and the values of query
    parameters named like a credential (every value of :data:`MIN_SECRET_LENGTH`
    characters or more, with ``every_query_value``) become ``[REDACTED]``; so does
    any path segment, query value or fragment that holds one of ``secrets`` once
    decoded, or anything :func:`~streammgr.redact` finds. Secrets are looked for
    decoded because a URL writes them encoded (``+`` as ``%2B``, a space as ``+``).
    """
    parts = urllib.parse.urlsplit(url)

    def hides(raw: str, decoded: str) -> bool:
        return redact(decoded, secrets) != decoded or redact(raw, secrets) != raw

    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon and not hides(user, urllib.parse.unquote(user)):
            netloc = f"{user}:{_REDACTED}@{host}"
        else:
            netloc = f"{_REDACTED}@{host}"
    path = "/".join(
        _REDACTED if segment and hides(segment, urllib.parse.unquote(segment)) else segment
        for segment in parts.path.split("/")
    )
    query = "&".join(
        _shown_parameter(part, every_query_value, hides) for part in parts.query.split("&")
    )
    fragment = parts.fragment
    if fragment and hides(fragment, urllib.parse.unquote(fragment)):
        fragment = _REDACTED
    shown = urllib.parse.urlunsplit((parts.scheme, netloc, path, query, fragment))
    return redact(shown, secrets)
