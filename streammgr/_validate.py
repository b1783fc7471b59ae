"""Argument checks shared by the manager, the limiter and the sources, and the one
"argument not given" marker (messages name the argument and say what to pass)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "MIN_SECONDS",
    "UNSET",
    "check_count",
    "check_limit",
    "check_seconds",
    "check_strings",
    "json_type",
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
