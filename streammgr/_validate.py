"""Argument checks shared by the manager, the limiter and the sources, and the one
"argument not given" marker (messages name the argument and say what to pass)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "MIN_SECONDS",
    "UNSET",
    "check_count",
    "check_lease_ttl",
    "check_limit",
    "check_seconds",
    "check_strings",
    "json_type",
    "parse_seconds_or_off",
    "unpaired_surrogate",
]

MIN_SECONDS = 0.001
"""The shortest timeout accepted anywhere: one millisecond."""


def check_seconds(name: str, value: float | None) -> float | None:
    """``None``, or a finite number of seconds of at least :data:`MIN_SECONDS`, as a float.

    Raises:
        TypeError: not a number (bools are refused too).
        ValueError: zero, negative, NaN, infinite, or below :data:`MIN_SECONDS`.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not value > 0 or math.isinf(value):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds or None, got {value}"
        )
    if value < MIN_SECONDS:
        # Shorter is below what a scheduler can honour, and at a large clock value
        # ``now + value == now``: such a timeout could never be waited for.
        raise ValueError(
            f"{name} must be at least {MIN_SECONDS:g} seconds, got {value:g}; "
            f"use None for no timeout"
        )
    return float(value)


def parse_seconds_or_off(text: str, meaning: str) -> float | None:
    """A command-line value: a positive number of seconds, or ``off`` (also ``none``,
    ``0``: ``None``).

    Args:
        text: the value as given.
        meaning: what the seconds are, for the error (e.g. "seconds between young
            collections (a positive number, e.g. 0.1)").

    Raises:
        ValueError: anything else, saying what is accepted.
    """
    word = text.strip().lower()
    if word in ("off", "none", "0"):
        return None
    try:
        seconds = float(word)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"accepts {meaning} or off; got {text!r}")
    return seconds


def check_count(name: str, value: int, *, minimum: int) -> int:
    """An int of at least ``minimum`` (bools refused).

    Raises:
        TypeError: not an int.
        ValueError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        bound = "a positive" if minimum == 1 else "a non-negative" if minimum == 0 else "an"
        extra = "" if minimum in (0, 1) else f" of at least {minimum}"
        raise ValueError(f"{name} must be {bound} int{extra}, got {value}")
    return value


def check_strings(name: str, values: object) -> list[str]:
    """A list of the str values of an iterable; a lone str is refused, not split.

    Raises:
        TypeError: a str or bytes (``secrets="key"`` would otherwise be read one
            character at a time), not iterable, or holding something else than str.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(
            f"{name} must be a list of str (wrap a single one: {name}=[...]), "
            f"got {type(values).__name__}"
        )
    checked: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{name} must contain str values, got {type(value).__name__}")
        checked.append(value)
    return checked


class _Unset:
    """The type of :data:`UNSET`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""The one "argument not given" marker: use the manager's default (``open``), or
leave a limit as it is (``set_limits``, ``Limiter.resize``). Typed ``Any`` so that
``timeout: float | None = UNSET`` reads as the argument's real type."""


def check_limit(name: str, value: int | None) -> int | None:
    """Validate a limit argument: ``None`` or a non-negative int.

    Raises:
        ValueError / TypeError: naming the argument and the bad value.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and name != "max_waiting"):
        bound = "a non-negative" if name == "max_waiting" else "a positive"
        raise ValueError(f"{name} must be {bound} int or None, got {value}")
    return value


def check_lease_ttl(value: float) -> float:
    """Validate a cluster lease's time to live (``RedisLimiter(lease_ttl=)`` and
    ``serve --lease-ttl``): seconds from 0.05 to 3600.

    Raises:
        ValueError / TypeError: naming ``lease_ttl`` and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"lease_ttl must be a number of seconds, got {type(value).__name__}")
    if not 0.05 <= value <= 3600:
        raise ValueError(f"lease_ttl must be from 0.05 to 3600 seconds, got {value!r}")
    return float(value)


def json_type(value: object) -> str:
    """How a JSON value's type reads in a message: ``"a string"``, ``"null"``...
    (bools are not numbers; a tuple reads as an array)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# A JSON escape of a surrogate, \\uD800 to \\uDFFF: only bodies that have one are searched.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def unpaired_surrogate(body: bytes, value: object) -> str | None:
    """Where ``value``, decoded from the JSON ``body``, has an unpaired surrogate.

    ``json.loads`` turns a ``\\ud800`` escape without its pair into a lone surrogate,
    a ``str`` that no UTF-8 encoder accepts: a request holding one can be neither
    forwarded (httpx's ``json=`` encodes UTF-8) nor hashed. ``body`` must have been
    decoded as strict UTF-8, so that an escape is the only way to one: only a body
    with a surrogate escape is searched, and the usual request costs one regex scan.

    Returns:
        The path of a string holding one (``"model"``, ``"messages[0].content"``; for
        a key, the path of its object, ``""`` at the top), or ``None``.
    """
    if _SURROGATE_ESCAPE.search(body) is None:
        return None
    pending: list[tuple[str, object]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodes(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodes(key):
                    return path
                pending.append((f"{path}.{key}" if path else key, child))
        elif isinstance(item, list):
            pending.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
