"""Lifecycle logging, and secret redaction.

streammgr never configures logging. When the application has configured structlog
(``structlog.is_configured()``), events go to ``structlog.get_logger("streammgr")``;
otherwise they go to the standard library's ``logging.getLogger("streammgr")``, which
stays silent at ``info`` until the application asks for it (the root logger is at
``WARNING``), so an application that configured neither sees only streammgr's
warnings. The choice is made each time :func:`get_logger` is called; the manager
calls it when it starts. Events are dotted (``stream.opened``, ``stream.admitted``,
``stream.rejected``, ``stream.closed``) with data in keys. :func:`redact_secrets` is
a structlog processor applications can add so that nothing that looks like a
credential reaches their log sink, whoever logged it.

What streammgr itself logs is built to be secret-free: ids, keys, labels, close
reasons, counts, and error text that has passed through :func:`redact` and, when it
is cut, :func:`excerpt` (redact first, then cut, so that no part of a secret
survives the cut).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

__all__ = [
    "MAX_ERROR_TEXT",
    "describe_error",
    "excerpt",
    "get_logger",
    "redact",
    "redact_secrets",
]

MAX_ERROR_TEXT = 500
"""Error text kept in the registry and logs is cut to this many characters."""

LOGGER_NAME = "streammgr"
"""The name of streammgr's logger, for structlog and for the standard library."""

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


@functools.lru_cache(maxsize=1024)
def _forms(character: str) -> tuple[str, ...]:
    """The ways ``character`` is written in text that quotes a secret: as itself,
    percent-encoded (upper or lower hex), ``+`` for a space (form encoding), and as
    JSON writes it: ``\\uXXXX`` (upper or lower hex; a surrogate pair beyond the
    BMP), ``\\/`` for a slash. A JSON client reads ``\\u0073\\u006b`` as ``sk``."""
    encoded = "".join(f"%{byte:02X}" for byte in character.encode("utf-8", "surrogatepass"))
    units = character.encode("utf-16-be", "surrogatepass")
    escaped = "".join(
        f"\\u{int.from_bytes(units[at : at + 2], 'big'):04X}" for at in range(0, len(units), 2)
    )
    forms = [character, encoded, encoded.lower(), escaped, escaped.lower()]
    if character == " ":
        forms.append("+")
    elif character == "/":
        forms.append("\\/")
    return tuple(dict.fromkeys(forms))


def _pattern_of(secret: str) -> str:
    return "".join(
        "(?:" + "|".join(re.escape(form) for form in _forms(character)) + ")"
        for character in secret
    )


@functools.lru_cache(maxsize=64)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str]:
    """Finds every start of any of ``secrets`` (longest first), in any of its forms.

    A lookahead, so that overlapping occurrences are all found and can be merged.
    """
    return re.compile("(?=(" + "|".join(_pattern_of(secret) for secret in secrets) + "))")


_MIN_BASE64_CORE = 8  # characters: a shorter run would match ordinary text
_URL_SAFE = str.maketrans("+/", "-_")


@functools.lru_cache(maxsize=256)
def _base64_cores(secret: str) -> tuple[str, ...]:
    """The base64 text found in every base64 encoding that holds ``secret``.

    An upstream that echoes ``Authorization`` base64-encoded (``Bearer <key>``, or
    the whole header) spells the key in base64 at one of three alignments. For each,
    the characters made of the secret's own bits alone (the first and last, which
    mix in the neighbouring bytes, are left out), in the standard and the URL-safe
    alphabet: one of them is in any such encoding, whatever surrounds the secret.
    """
    data = secret.encode("utf-8", "surrogatepass")
    cores: list[str] = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
        # Character i carries bits [6i, 6i + 6); the secret's bits are [8 offset, 8 (offset + n)).
        core = encoded[-(-8 * offset // 6) : 8 * (offset + len(data)) // 6]
        if len(core) >= _MIN_BASE64_CORE:
            cores += [core, core.translate(_URL_SAFE)]
    return tuple(dict.fromkeys(cores))


def _known(secrets: Iterable[str]) -> tuple[str, ...]:
    """The non-empty ``secrets`` and their base64 forms (:func:`_base64_cores`),
    longest first, without duplicates."""
    given = {secret for secret in secrets if secret}
    every = set(given)
    for secret in given:
        every.update(_base64_cores(secret))
    return tuple(sorted(every, key=lambda s: (-len(s), s)))


def _remove_secrets(text: str, secrets: tuple[str, ...]) -> str:
    spans: list[list[int]] = []
    for match in _secrets_pattern(secrets).finditer(text):
        start, end = match.span(1)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)  # overlapping: one marker for both
        else:
            spans.append([start, end])
    if not spans:
        return text
    pieces = []
    position = 0
    for start, end in spans:
        pieces.append(text[position:start])
        pieces.append(_REDACTED)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with credentials replaced by ``[REDACTED]``.

    Replaces every occurrence of the given ``secrets`` (exact values, e.g. an API
    key the application knows), also when written percent-encoded (``%2B`` or
    ``%2b`` for ``+``), form-encoded (``+`` for a space), JSON-escaped (``\\/``,
    ``\\u0073``: any character, upper or lower hex) or
    inside base64 (``base64("Bearer <key>")``: the part of the base64 text that
    spells the secret), and overlapping ones whole; then anything shaped like a
    credential: bearer and basic authorization values, ``sk-...`` keys, and
    ``api_key=...`` / ``"token": "..."`` pairs.

    Args:
        text: the text to clean.
        secrets: exact secret values to remove (empty strings are ignored).
    """
    known = _known(secrets)
    if known:
        text = _remove_secrets(text, known)
    return _PATTERNS.sub(_replace, text) if _may_hold_credential(text) else text


def _may_hold_credential(text: str) -> bool:
    """Whether ``_PATTERNS`` can match ``text``: each of its alternatives needs one of
    these words. The regular expression tries every position; these are fast scans,
    and most logged values (ids, keys, event names) hold none of them. Text that is
    not ASCII always goes to the expression (its case-insensitive matching knows
    letters such as U+0131 that ``lower()`` does not map)."""
    if not text.isascii():
        return True
    lower = text.lower()
    return (
        "k-" in lower  # sk-, pk-, rk- keys
        or "key" in lower  # api_key, api-key, apikey
        or "token" in lower  # token, access_token
        or "bearer" in lower
        or "basic" in lower
        or "secret" in lower
        or "passw" in lower  # password, passwd
        or "authorization" in lower
    )


@functools.lru_cache(maxsize=256)
def _starts(secret: str) -> tuple[dict[str, list[tuple[int, str]]], int]:
    """For :func:`_fragment_start`: the forms of each character of ``secret``, by
    their first character, and the longest text the whole secret can take."""
    by_first: dict[str, list[tuple[int, str]]] = {}
    longest = 0
    for index, character in enumerate(secret):
        forms = _forms(character)
        longest += max(len(form) for form in forms)
        for form in forms:
            by_first.setdefault(form[0], []).append((index, form))
    return by_first, longest


def _fragment_start(text: str, end: int, secret: str) -> int:
    """Where a beginning of ``secret`` (in any of its forms) that ends ``text[:end]``
    starts; ``end`` if ``text[:end]`` does not end with one.

    The text a cut leaves: ``"... key sk-abc"`` ends with the first characters of
    ``sk-abcdef``, and ``"... %2"`` with a begun ``%2B``.
    """
    by_first, longest = _starts(secret)
    low = max(0, end - longest)
    last = len(secret) - 1
    # spells[i - low]: the indexes j such that text[i:end] spells secret[j:j + m] for
    # some m >= 1, its last character possibly only begun ("%2" of "%2B").
    spells: list[set[int]] = [set() for _ in range(end - low + 1)]
    found = end
    for position in range(end - 1, low - 1, -1):
        here = spells[position - low]
        for index, form in by_first.get(text[position], ()):
            following = position + len(form)
            if following >= end:
                if text.startswith(form[: end - position], position):
                    here.add(index)  # the text ends in (or right after) this character
            elif (
                index < last
                and text.startswith(form, position)
                and index + 1 in spells[following - low]
            ):
                here.add(index)
        if 0 in here:
            found = position
    return found


def _safe_end(text: str, end: int, secrets: tuple[str, ...]) -> int:
    """Move a cut at ``end`` back so that it splits no ``[REDACTED]`` marker and
    leaves no beginning of a secret at the end."""
    while True:
        moved = end
        marker = text.find(_REDACTED, max(0, moved - len(_REDACTED) + 1))
        if 0 <= marker < moved < marker + len(_REDACTED):
            moved = marker
        for secret in secrets:
            moved = min(moved, _fragment_start(text, moved, secret))
        if moved == end:
            return end
        end = moved


def excerpt(
    text: str,
    limit: int,
    secrets: Iterable[str] = (),
    *,
    ellipsis: str = "",
    complete: bool = True,
) -> str:
    """``text`` redacted, then cut to at most ``limit`` characters.

    Redacting first means a secret that straddles the cut is replaced whole; the
    cut then never splits a ``[REDACTED]`` marker, and never leaves the beginning
    of one of ``secrets`` at the end of the excerpt.

    Args:
        text: the text to quote.
        limit: the most characters to return, ``ellipsis`` included.
        secrets: exact secret values (see :func:`redact`).
        ellipsis: appended when the text is cut (counted in ``limit``).
        complete: ``False`` when ``text`` is itself the start of something longer
            (a body read up to a limit): its end is then treated as a cut too.
    """
    known = _known(secrets)
    text = redact(text, known)
    if len(text) <= limit:
        if complete:
            return text
        return text[: _safe_end(text, len(text), known)]
    room = max(0, limit - len(ellipsis))
    return text[: _safe_end(text, room, known)] + ellipsis[:limit]


def describe_error(error: BaseException, secrets: Iterable[str] = ()) -> str:
    """``"ErrorType: message"``, redacted, then cut to :data:`MAX_ERROR_TEXT`
    (see :func:`excerpt`).

    Never raises: an exception whose ``__str__`` fails (a common application bug)
    is described as ``"ErrorType: <str() raised AttributeError>"``.
    """
    try:
        message = str(error)
    except (KeyboardInterrupt, SystemExit):
        raise  # the program is being stopped: not ours to describe away
    except BaseException as exc:  # an application's __str__ bug must not break a close
        message = f"<str() raised {type(exc).__name__}>"
    return excerpt(f"{type(error).__name__}: {message}", MAX_ERROR_TEXT, secrets, ellipsis="...")


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


# LogRecord attributes an ``extra`` key must not overwrite (logging raises KeyError).
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_BARE = re.compile(r"[^\s\"'=\\]+")  # a value logfmt shows without quotes


def _format(value: object) -> str:
    """One value of a rendered event, as logfmt would show it."""
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool | int) or value is None:
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


class _StdlibLogger:
    """streammgr's events through :mod:`logging`, for when structlog is not configured.

    Each event is one record of the ``"streammgr"`` logger: its message is the
    event rendered in logfmt style (``stream.closed stream_id=... reason=completed``),
    and the event's name and keys are attributes of the record (``record.event``,
    ``record.stream_id``...; a key that clashes with a ``LogRecord`` attribute gets a
    trailing ``_``), for formatters that emit structured output. Values pass through
    :func:`redact_secrets`. A level the logger does not emit costs one
    ``isEnabledFor`` check: nothing is rendered or redacted.
    """

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: Mapping[str, object] | None = None) -> None:
        self._logger = logger
        self._context: dict[str, object] = dict(context or {})

    def bind(self, **values: object) -> _StdlibLogger:
        """A logger that adds ``values`` to every event."""
        return _StdlibLogger(self._logger, {**self._context, **values})

    def debug(self, event: str, **values: object) -> None:
        """Log ``event`` at DEBUG."""
        if self._logger.isEnabledFor(logging.DEBUG):
            self._emit(logging.DEBUG, event, values)

    def info(self, event: str, **values: object) -> None:
        """Log ``event`` at INFO."""
        if self._logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, event, values)

    def warning(self, event: str, **values: object) -> None:
        """Log ``event`` at WARNING."""
        if self._logger.isEnabledFor(logging.WARNING):
            self._emit(logging.WARNING, event, values)

    def error(self, event: str, **values: object) -> None:
        """Log ``event`` at ERROR."""
        if self._logger.isEnabledFor(logging.ERROR):
            self._emit(logging.ERROR, event, values)

    def _emit(self, level: int, event: str, values: dict[str, object]) -> None:
        fields = redact_secrets(None, logging.getLevelName(level).lower(), self._context | values)
        rendered = " ".join(
            [event, *(f"{name}={_format(value)}" for name, value in fields.items())]
        )
        extra = {"event": event}
        for name, value in fields.items():
            extra[f"{name}_" if name in _RECORD_ATTRIBUTES else name] = value
        # stacklevel: the record names the line that logged the event, not this one.
        self._logger.log(level, rendered, extra=extra, stacklevel=3)


def get_logger() -> Any:
    """The logger streammgr logs to, chosen now: ``structlog.get_logger("streammgr")``
    if the application has configured structlog, else an adapter to the standard
    library's ``logging.getLogger("streammgr")`` (see :class:`_StdlibLogger`).

    Either has ``bind(**values)``, and ``debug`` / ``info`` / ``warning`` / ``error``
    taking an event name and keys.
    """
    if structlog.is_configured():
        return structlog.get_logger(LOGGER_NAME)
    return _StdlibLogger(logging.getLogger(LOGGER_NAME))
