"""Lifecycle logging with structlog, and secret redaction.

streammgr never configures logging: it asks ``structlog.get_logger("streammgr")``
for a logger and emits dotted events (``stream.opened``, ``stream.admitted``,
``stream.rejected``, ``stream.closed``) with data in keys. Applications configure
structlog; :func:`redact_secrets` is a processor they can add so that nothing that
looks like a credential reaches their log sink, whoever logged it.

What streammgr itself logs is built to be secret-free: ids, keys, labels, close
reasons, counts, and error text that has passed through :func:`redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

__all__ = ["MAX_ERROR_TEXT", "describe_error", "get_logger", "redact", "redact_secrets"]

MAX_ERROR_TEXT = 500
"""Error text kept in the registry and logs is cut to this many characters."""

_REDACTED = "[REDACTED]"
_PATTERNS = re.compile(
    r"(?i)(bearer\s+)[^\s\"',;]+"  # Authorization: Bearer <token>
    r"|(basic\s+)[A-Za-z0-9+/=]{8,}"  # Authorization: Basic <base64>
    r"|\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys
    r"|((?:api[_-]?key|access[_-]?token|token|secret|password|passwd|authorization)"
    r"[\"']?\s*[=:]\s*[\"']?)(?!bearer\s|basic\s)[^\s\"'&,;]+"  # key=value, "key": "v"
)
_SECRET_KEYS = frozenset(
    {"authorization", "api_key", "apikey", "password", "secret", "token", "access_token"}
)


def _replace(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(2) or match.group(4)
    return f"{prefix}{_REDACTED}" if prefix else _REDACTED


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with credentials replaced by ``[REDACTED]``.

    Replaces every occurrence of the given ``secrets`` (exact values, e.g. an API
    key the application knows), then anything shaped like a credential: bearer and
    basic authorization values, ``sk-...`` keys, and ``api_key=...`` /
    ``"token": "..."`` pairs.

    Args:
        text: the text to clean.
        secrets: exact secret values to remove (empty strings are ignored).
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return _PATTERNS.sub(_replace, text)


def describe_error(error: BaseException, secrets: Iterable[str] = ()) -> str:
    """``"ErrorType: message"``, redacted and cut to :data:`MAX_ERROR_TEXT`.

    Never raises: an exception whose ``__str__`` fails (a common application bug)
    is described as ``"ErrorType: <str() raised AttributeError>"``.
    """
    try:
        message = str(error)
    except Exception as exc:  # an application's __str__ bug must not break a close
        message = f"<str() raised {type(exc).__name__}>"
    text = redact(f"{type(error).__name__}: {message}", secrets)
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 3] + "..."
    return text


def redact_secrets(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor that redacts credentials in every string value.

    Values under keys that name a secret (``authorization``, ``api_key``,
    ``password``, ``token``...) are replaced whole. Add it to your structlog
    processors before the renderer::

        structlog.configure(processors=[streammgr.redact_secrets, ...])
    """
    for name, value in event_dict.items():
        event_dict[name] = _REDACTED if name.lower() in _SECRET_KEYS else _redact_value(value)
    return event_dict


def _redact_value(value: object, depth: int = 0) -> object:
    """Redact strings, also inside dicts, lists and tuples (a few levels deep)."""
    if isinstance(value, str):
        return redact(value)
    if depth >= 4:
        return value
    if isinstance(value, dict):
        return {
            key: _REDACTED
            if isinstance(key, str) and key.lower() in _SECRET_KEYS
            else _redact_value(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(item, depth + 1) for item in value)
    return value


def get_logger() -> Any:
    """The logger streammgr logs to (``structlog.get_logger("streammgr")``)."""
    return structlog.get_logger("streammgr")
