"""Argument checks shared by the manager and the sources (messages name the argument)."""

from __future__ import annotations

import math

__all__ = ["check_seconds"]


def check_seconds(name: str, value: float | None) -> float | None:
    """``None``, or a positive, finite number of seconds as a float.

    Raises:
        TypeError: not a number (bools are refused too).
        ValueError: zero, negative, NaN or infinite.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not value > 0 or math.isinf(value):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds or None, got {value}"
        )
    return float(value)
